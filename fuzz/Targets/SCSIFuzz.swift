// CDB decoding and the SCSI task (CDB.swift, SCSITask.swift, Dispatch.swift and the handlers) over an
// in-memory store, as Tests/SCSITestSupport/SCSIHarness.swift drives it. Input: one byte choosing the LUNs, then
// raw SCSI Command PDUs (other opcodes are skipped): flags R/W, LUN, EDTL and CDB from the BHS, an extended-CDB
// AHS, immediate data as the start of the data-out stream (zeros after it). The low byte of the ITT, when its
// top bit is set, fails one store op of the command. The LUNs' state (reservations, unit attentions, mode
// pages) carries over from command to command.

import ISCSIWire
// The machines' internals are reachable only where Target is built for testing: debug, and fuzz/run's build.
#if DEBUG || FUZZING
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor

enum SCSIFuzz {
    static let maxPDUs = 128
    /// Steps one command may take before it counts as hung (the largest EDTL here in 512-byte pieces, twice over).
    static let maxStepsPerCommand = 100_000
    /// EDTL of a fuzzed command is cut to this, so one input cannot ask for gigabytes of data-out.
    static let maxTransferBytes = 1 << 20

    final class Store {
        let lun: LogicalUnit
        var bytes: [UInt8]
        var mapped: [Bool]
        init(_ lun: LogicalUnit) {
            self.lun = lun
            bytes = [UInt8](repeating: 0, count: Int(lun.byteCount))
            mapped = [Bool](repeating: true, count: Int(lun.blockCount))
        }
    }

    static func lun(_ n: UInt64, blockSize: Int, blocks: UInt64, _ caps: StoreCapabilities) -> LogicalUnit {
        var naa = [UInt8](repeating: 0, count: 16)
        naa[0] = 0x60; naa[15] = UInt8(truncatingIfNeeded: n + 1)
        return LogicalUnit(number: n, blockSize: blockSize, blockCount: blocks, capabilities: caps, serial: "FZ\(n)",
                           naa: naa, backing: .null, bstype: "rdwr", path: "/dev/null")
    }

    static func run(_ raw: UnsafeRawBufferPointer) {
        var input = FuzzInput(raw)
        let choice = input.byte()
        let thin = StoreCapabilities(canDiscard: true, discardZeroes: true, canReportMapping: true,
                                     readOnly: choice & 1 != 0, hasVolatileCache: choice & 2 != 0)
        let luns = [lun(0, blockSize: choice & 4 != 0 ? 4096 : 512, blocks: 64, thin),
                    lun(1, blockSize: 512, blocks: 16, StoreCapabilities(readOnly: choice & 8 != 0))]
        var stores: [UInt64: Store] = [:]
        for l in luns { stores[l.number] = Store(l) }
        let target = TargetRuntime(tid: 1, name: "iqn.2026-01.org.ringtgt:fuzz", luns: luns, acl: [.all], params: [:],
                                   lunGeneration: 1)
        let nexuses = [Nexus(initiatorName: "iqn.2026-01.fuzz:a", isid: 1, targetName: target.name, portalGroupTag: 1,
                             relativeTargetPortID: 1),
                       Nexus(initiatorName: "iqn.2026-01.fuzz:b", isid: 2, targetName: target.name, portalGroupTag: 1,
                             relativeTargetPortID: 1)]
        let bindings = nexuses.map { SessionBinding(target: target, nexus: $0) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: SCSITask.minimumBufferBytes, alignment: 4096)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0xEE)
        var stream = PDUStream(input)
        for _ in 0 ..< maxPDUs {
            guard let pdu = stream.next() else { break }
            guard pdu.opcode == ISCSIOpcode.scsiCommand else { continue }
            var cdb = Array(pdu.bhs[32 ..< 48])
            // An extended CDB AHS (type 1): 2-byte length, type, reserved, then the CDB bytes past the 16th.
            if pdu.ahs.count >= 4 && pdu.ahs[2] == 1 {
                let n = min(Int(pdu.ahs[0]) << 8 | Int(pdu.ahs[1]), pdu.ahs.count - 3) - 1
                if n > 0 { cdb += pdu.ahs[4 ..< 4 + n] }
            } else {
                cdb = Array(cdb[0 ..< cdbLength(cdb[0])])
            }
            let edtl = Int(min(pdu.u32(20), UInt32(maxTransferBytes)))
            let read = pdu.flags & 0x40 != 0
            let write = pdu.flags & 0x20 != 0
            let failing = pdu.bhs[19] & 0x80 != 0 ? (op: Int(pdu.bhs[19] & 7), error: Int(pdu.bhs[19] >> 3) & 7) : nil
            command(cdb, lunNumber: decodeLUN(UInt64(pdu.u32(8)) << 32 | UInt64(pdu.u32(12))), edtl: edtl,
                    read: read, write: write, immediate: pdu.data, failing: failing, target: target,
                    binding: bindings[Int(pdu.bhs[18] & 1)], stores: stores, buffer: buffer)
        }
    }

    /// The CDB length the opcode's group code gives (SAM-5 §5.2): the BHS always carries 16 bytes.
    static func cdbLength(_ opcode: UInt8) -> Int {
        switch opcode >> 5 {
        case 0: return 6
        case 1, 2: return 10
        case 5: return 12
        default: return 16
        }
    }

    static let errors: [StoreError] = [.mediumError, .noSpace, .writeProtected, .notSupported, .unavailable, .outOfRange]

    static func command(_ cdb: [UInt8], lunNumber: UInt64, edtl: Int, read: Bool, write: Bool, immediate: [UInt8],
                        failing: (op: Int, error: Int)?, target: TargetRuntime, binding: SessionBinding,
                        stores: [UInt64: Store], buffer: UnsafeMutableRawBufferPointer) {
        var task = SCSITask()
        defer { task.endCommand() }
        var dataIn = 0
        var dataOutEnd = 0
        var storeOps = 0
        var action = cdb.withUnsafeBytes { raw in
            task.start(cdb: raw, expectedLength: UInt32(edtl), readBit: read, writeBit: write, lunNumber: lunNumber,
                       lun: target.lun(lunNumber), session: binding, buffer: buffer)
        }
        for _ in 0 ..< maxStepsPerCommand {
            switch action {
            case .dataOut(let offset, let length):
                FuzzCheck.expect(write && offset >= 0 && length > 0 && offset + length <= edtl && length <= buffer.count,
                                 "data-out [\(offset), +\(length)) of an EDTL of \(edtl), W=\(write), CDB \(cdb)")
                FuzzCheck.expect(offset >= dataOutEnd || offset == 0, "data-out asked for again at \(offset), CDB \(cdb)")
                dataOutEnd = max(dataOutEnd, offset + length)
                for i in 0 ..< min(length, buffer.count) {
                    buffer[i] = offset + i < immediate.count ? immediate[offset + i] : 0
                }
                action = task.dataOutReceived(buffer: buffer)
            case .store(let op):
                let fail = failing.map { $0.op == storeOps } ?? false
                storeOps += 1
                let result = execute(op, own: lunNumber, stores: stores, buffer: buffer, cdb: cdb)
                action = task.storeCompleted(fail ? .failed(errors[failing!.error % errors.count]) : result, buffer: buffer)
            case .startJob:
                // The LU's sanitize job, run to its end here as the reactor would, with this buffer as its own.
                guard var job = task.beginSanitizeJob() else { action = task.sanitizeNotStarted(busy: false); continue }
                let started = task.sanitizeJobStarted()
                var end: SanitizeStep? = nil
                for _ in 0 ..< maxStepsPerCommand where end == nil {
                    guard case .store(let op) = job.next(buffer: buffer) else { end = .finished(failed: false); break }
                    end = job.completed(execute(op, own: lunNumber, stores: stores, buffer: buffer, cdb: cdb))
                }
                FuzzCheck.expect(end != nil, "a sanitize job did not end, CDB \(cdb)")
                action = started ?? task.storeCompleted(end == .finished(failed: false) ? .ok(0) : .failed(.mediumError),
                                                        buffer: buffer)
            case .dataIn(let length):
                FuzzCheck.expect(length > 0 && length <= buffer.count, "data-in piece of \(length), CDB \(cdb)")
                dataIn += length
                action = task.dataInSent(buffer: buffer)
            case .complete(let status, let n, let residual):
                FuzzCheck.expect(n >= 0 && n <= buffer.count, "final data-in of \(n), CDB \(cdb)")
                dataIn += n
                FuzzCheck.expect(dataIn <= (read ? edtl : 0), "\(dataIn) bytes of data-in, EDTL \(edtl) R=\(read), CDB \(cdb)")
                if status == SCSIStatus.checkCondition {
                    var sense = [UInt8](repeating: 0, count: task.senseLength)
                    if !sense.isEmpty { sense.withUnsafeMutableBytes { task.copySense(to: $0.baseAddress!) } }
                    // Fixed-format sense (SPC-4 §4.5.3) with its additional length, or descriptor format.
                    FuzzCheck.expect(sense.count >= 8 && (sense[0] & 0x7F == 0x70 && sense[7] == 10 && sense.count == 18
                                                          || sense[0] & 0x7F == 0x72 && sense.count == 8 + Int(sense[7])),
                                     "CHECK CONDITION with sense \(sense), CDB \(cdb)")
                    FuzzCheck.expect(sense.count < 3 || sense[2] & 0x0F != 0 || sense[0] & 0x7F == 0x72,
                                     "CHECK CONDITION with sense key NO SENSE, CDB \(cdb)")
                } else {
                    FuzzCheck.expect(task.senseLength == 0, "sense without CHECK CONDITION, CDB \(cdb)")
                }
                if case .underflow(let u) = residual {
                    FuzzCheck.expect(Int(u) <= edtl, "underflow \(u) beyond EDTL \(edtl), CDB \(cdb)")
                }
                return
            }
        }
        FuzzCheck.expect(false, "command did not complete in \(maxStepsPerCommand) steps, CDB \(cdb)")
    }

    /// Carries out a store op on the byte arrays; every op the task asks for stays inside its LUN and its buffer.
    static func execute(_ op: StoreOp, own: UInt64, stores: [UInt64: Store], buffer: UnsafeMutableRawBufferPointer,
                        cdb: [UInt8]) -> StoreResult {
        func store(_ t: StoreTarget) -> Store? {
            switch t { case .own: return stores[own]; case .other(let n): return stores[n] }
        }
        func inside(_ s: Store, _ offset: UInt64, _ length: UInt64) -> Bool {
            let ok = offset <= UInt64(s.bytes.count) && length <= UInt64(s.bytes.count) - offset
            FuzzCheck.expect(ok, "store op \(op) beyond the \(s.bytes.count)-byte LUN, CDB \(cdb)")
            return ok
        }
        switch op {
        case .read(let t, let offset, let length, let bo), .write(let t, let offset, let length, let bo, _):
            guard let s = store(t) else { return .failed(.unavailable) }
            FuzzCheck.expect(bo >= 0 && length >= 0 && bo + length <= buffer.count, "store op \(op) beyond the buffer, CDB \(cdb)")
            guard inside(s, offset, UInt64(length)), bo >= 0, length >= 0, bo + length <= buffer.count else { return .failed(.outOfRange) }
            if case .write = op {
                if s.lun.capabilities.readOnly { FuzzCheck.expect(false, "write to a read-only LUN, CDB \(cdb)") }
                for i in 0 ..< length { s.bytes[Int(offset) + i] = buffer[bo + i] }
                for b in Int(offset) / s.lun.blockSize ..< (Int(offset) + length + s.lun.blockSize - 1) / s.lun.blockSize {
                    s.mapped[b] = true
                }
            } else {
                for i in 0 ..< length { buffer[bo + i] = s.bytes[Int(offset) + i] }
            }
            return .ok(length)
        case .flush(let t), .shareState(let t, _), .compareSection(let t, _), .sharePortGroupState(let t, _, _):
            return store(t) == nil ? .failed(.unavailable) : .ok(0)
        case .discard(let t, let offset, let length):
            guard let s = store(t) else { return .failed(.unavailable) }
            guard inside(s, offset, length) else { return .failed(.outOfRange) }
            FuzzCheck.expect(!s.lun.capabilities.readOnly, "discard on a read-only LUN, CDB \(cdb)")
            for i in 0 ..< Int(length) { s.bytes[Int(offset) + i] = 0 }
            let bs = UInt64(s.lun.blockSize)
            if length > 0 { for b in Int((offset + bs - 1) / bs) ..< Int((offset + length) / bs) { s.mapped[b] = false } }
            return .ok(0)
        case .mapStatus(let t, let offset, let maxLength):
            guard let s = store(t) else { return .failed(.unavailable) }
            guard offset < UInt64(s.bytes.count) else { return .failed(.outOfRange) }
            let bs = UInt64(s.lun.blockSize)
            let first = Int(offset / bs)
            let end = min(UInt64(s.bytes.count), offset &+ maxLength < offset ? UInt64.max : offset + maxLength)
            var b = first
            while b + 1 < s.mapped.count && UInt64(b + 1) * bs < end && s.mapped[b + 1] == s.mapped[first] { b += 1 }
            return .extent(mapped: s.mapped[first], length: max(1, min(end, UInt64(b + 1) * bs) - offset))
        case .prefetch(let t, let offset, let length):
            guard let s = store(t) else { return .failed(.unavailable) }
            guard inside(s, offset, length) else { return .failed(.outOfRange) }
            return .ok(0)
        }
    }
}
#endif
