// The sheep side: reply headers and inode headers as they come off the wire (SheepProtocol), and the home
// core's allocation machine (Store/Sheep/SheepHome.swift) driven by an interleaving of requests and sheep
// replies, as SheepHomeMachineTests drives it. Input: one byte (bit 7: the parser half; else the machine with
// bit 0 a locked VDI and bits 1-3 the initial index), then events.

import SheepProtocol
// The machines' internals are reachable only where Target is built for testing: debug, and fuzz/run's build.
#if DEBUG || FUZZING
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor

enum SheepFuzz {
    static let slots = 16
    static let vid: UInt32 = 0x100
    static let maxEvents = 512
    /// Replies the final drain may give before the machine counts as stuck (each request needs at most a
    /// create, a slot write and a reload of a few steps).
    static let maxDrainSteps = 10_000
    static let results: [SheepResult] = [.success, .success, .readonly, .noSpace, .eio, .noObj, .vdiLocked, .noVDI,
                                         .waitForJoin, .invalidParms]
    static let data = UnsafeRawPointer(UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096))

    static func run(_ raw: UnsafeRawBufferPointer) {
        var input = FuzzInput(raw)
        let choice = input.byte()
        if choice & 0x80 != 0 { parsers(&input) } else { machine(&input, choice) }
    }

    /// A reply stream: 48-byte headers, each followed by its payload; a header re-encodes to its bytes, and a
    /// payload long enough for an inode header decodes to one that re-encodes consistently.
    static func parsers(_ input: inout FuzzInput) {
        for _ in 0 ..< maxEvents {
            let bytes = input.bytes(SheepWire.headerSizeBytes)
            guard bytes.count == SheepWire.headerSizeBytes else { return }
            let rsp = bytes.withUnsafeBytes { SheepResponseHeader(from: $0.baseAddress!) }
            FuzzCheck.expect(rsp.bytes == bytes, "response header does not re-encode to its bytes")
            let req = bytes.withUnsafeBytes { SheepRequestHeader(from: $0.baseAddress!) }
            FuzzCheck.expect(req.bytes == bytes, "request header does not re-encode to its bytes")
            let payload = input.bytes(Int(min(rsp.dataLength, 1 << 16)))
            if let inode = SheepInodeHeader(bytes: payload) {
                // At most one scalar per byte of the 256-byte fields: bytes that are not UTF-8 decode to U+FFFD
                // (three bytes of UTF-8 each), so the UTF-8 length is not the bound; encoding truncates to the field.
                FuzzCheck.expect(inode.name.unicodeScalars.count <= SheepWire.vdiNameBufferBytes
                                 && inode.tag.unicodeScalars.count <= SheepWire.vdiTagBufferBytes,
                                 "inode name or tag longer than its field")
            }
        }
    }

    final class Bench {
        var machine = SheepHomeMachine()
        let volume: SheepVolume
        /// Sends waiting for a reply: step id, header, destination.
        var outstanding: [(op: Int32, header: SheepRequestHeader, dest: UnsafeMutableRawPointer?, capacity: Int)] = []
        var answered: [UInt64: Int] = [:]
        var issued: [UInt64] = []
        var nextTag: UInt64 = 1
        /// The VIDs the machine was told of: its own, the parent snapshot's, and every one a reply named.
        var knownVIDs: Set<UInt32> = [SheepFuzz.vid, 0x50]

        init(locked: Bool, owners: UInt8) {
            let index = UnsafeMutablePointer<UInt32>.allocate(capacity: SheepFuzz.slots)
            index.initialize(repeating: 0, count: SheepFuzz.slots)
            volume = SheepVolume(spec: SheepBackingSpec(endpoint: .unix(path: "/nonexistent"), vdi: "vol"), name: "vol",
                                 byteCount: UInt64(SheepFuzz.slots) << 22, objectShift: 22, copies: 2, readOnly: false,
                                 lockedVID: locked ? SheepFuzz.vid : 0, vid: SheepFuzz.vid, homeCore: 0, endpointIndex: 0,
                                 index: index, indexSlots: SheepFuzz.slots)
            // Some objects ours, some a parent snapshot's (copy-on-write), the rest unallocated.
            for i in 0 ..< SheepFuzz.slots where owners & (1 << UInt8(i % 3)) != 0 {
                volume.setOwner(i, i % 2 == 0 ? SheepFuzz.vid : 0x50)
            }
        }

        func request(_ kind: SheepHomeRequest.Kind, readonlyVID: UInt32 = 0) {
            let tag = nextTag
            nextTag += 1
            issued.append(tag)
            machine.request(SheepHomeRequest(volume: volume, kind: kind, originCore: 0, waiter: .request(tag: tag),
                                             readonlyVID: readonlyVID))
            drain()
        }

        func drain() {
            while let a = machine.nextAction() {
                switch a {
                case .send(let op, let vol, let header, let payload, let length, let dest, let capacity):
                    FuzzCheck.expect(vol === volume, "a send for another volume")
                    check(header, payloadLength: length, hasPayload: payload != nil)
                    if header.opcode == .createAndWriteObj {
                        // Two creates of one object in flight lose data in sheep (SHEEPDOG-PROTOCOL.md §7.6).
                        FuzzCheck.expect(!outstanding.contains { $0.header.opcode == .createAndWriteObj && $0.header.oid == header.oid },
                                         "two creates of object 0x\(String(header.oid, radix: 16)) in flight")
                    }
                    outstanding.append((op, header, dest, capacity))
                case .answer(let req, _):
                    guard case .request(let tag) = req.waiter else { FuzzCheck.expect(false, "an answer without a tag"); continue }
                    answered[tag, default: 0] += 1
                    FuzzCheck.expect(answered[tag] == 1, "request \(tag) answered twice")
                case .log, .record, .liveness:
                    break
                }
            }
        }

        func check(_ h: SheepRequestHeader, payloadLength: Int, hasPayload: Bool) {
            let oidVID = SheepOID.vid(of: h.oid)
            if h.opcode == .writeObj || h.opcode == .createAndWriteObj {
                FuzzCheck.expect(hasPayload && Int(h.dataLength) == payloadLength, "write of \(h.dataLength) with a payload of \(payloadLength)")
                if h.oid == SheepOID.inode(vid: oidVID) {
                    // Index updates touch one 4-byte slot of the index, never the inode header.
                    let off = Int(h.objOffset)
                    FuzzCheck.expect(h.dataLength == 4 && off >= SheepInodeLayout.headerSizeBytes
                                     && (off - SheepInodeLayout.headerSizeBytes) / 4 < SheepFuzz.slots && off % 4 == 0,
                                     "inode write at \(off) of \(h.dataLength)")
                } else {
                    FuzzCheck.expect(h.oid & 0xFFFF_FFFF < UInt64(SheepFuzz.slots), "data object index beyond the volume")
                }
            }
        }

        /// Sheep's answer to one outstanding send.
        func reply(_ i: Int, result: SheepResult, failure: StoreError?, vdiID: UInt32, input: inout FuzzInput) {
            let s = outstanding.remove(at: i)
            if let dest = s.dest, result == .success, failure == nil {
                // A new working VDI's index: the first slots from the input, the rest is never read.
                for slot in 0 ..< SheepFuzz.slots {
                    let v: UInt32 = input.bool() ? [0, SheepFuzz.vid, 0x200, 0x50][Int(input.byte() & 3)] : volume.owner(slot)
                    dest.storeBytes(of: v.littleEndian, toByteOffset: slot * 4, as: UInt32.self)
                }
            }
            knownVIDs.insert(vdiID)
            machine.reply(s.op, result: result, failure: failure, vdiID: vdiID)
            drain()
        }
    }

    static func machine(_ input: inout FuzzInput, _ choice: UInt8) {
        let b = Bench(locked: choice & 1 != 0, owners: choice >> 1)
        for _ in 0 ..< maxEvents where !input.isEmpty {
            let event = input.byte()
            let idx = Int(input.byte()) % slots
            switch event % 5 {
            case 0:
                b.request(.write(index: idx, objectOffset: Int(input.byte()) * 512, length: 4096, data: data))
            case 1:
                b.request(.deallocate(index: idx))
            case 2:
                // The fast path's write found the VDI read-only: a snapshot was taken under it.
                b.request(.write(index: idx, objectOffset: 0, length: 512, data: data), readonlyVID: b.volume.vid)
            default:
                guard !b.outstanding.isEmpty else { continue }
                let which = idx % b.outstanding.count
                let failure: StoreError? = input.byte() & 7 == 0 ? .unavailable : nil
                let vdi: UInt32 = [0, b.volume.vid, b.volume.vid &+ 0x100, 0x50][Int(input.byte() & 3)]
                b.reply(which, result: results[Int(input.byte()) % results.count], failure: failure, vdiID: vdi, input: &input)
            }
        }
        // Every request is answered once sheep answers everything: no lost wake-ups, no leaked steps.
        var steps = 0
        while !b.outstanding.isEmpty && steps < maxDrainSteps {
            let s = b.outstanding[0]
            let lookup = s.header.opcode == .getVDIInfo || s.header.opcode == .lockVDI
            var none = FuzzInput(UnsafeRawBufferPointer(start: nil, count: 0))
            b.reply(0, result: .success, failure: nil, vdiID: lookup ? b.volume.vid &+ 1 : 0, input: &none)
            steps += 1
        }
        FuzzCheck.expect(b.outstanding.isEmpty && b.machine.stepsInFlight == 0,
                         "\(b.outstanding.count) sends, \(b.machine.stepsInFlight) steps left after \(steps) replies")
        for tag in b.issued {
            FuzzCheck.expect(b.answered[tag] == 1, "request \(tag) answered \(b.answered[tag] ?? 0) times")
        }
        for i in 0 ..< slots {
            let o = b.volume.owner(i)
            FuzzCheck.expect(o == 0 || b.knownVIDs.contains(o), "slot \(i) owned by VID 0x\(String(o, radix: 16)), never named")
        }
    }
}
#endif
