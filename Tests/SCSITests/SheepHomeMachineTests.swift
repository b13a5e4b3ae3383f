import Glibc
import SheepProtocol
import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import SCSITestSupport

/// The home core's decisions, driven by tables of sheep replies: what it sends, in which order, whom it answers,
/// and what the object index says afterwards. No socket, no ring, no sheep.
@Suite struct SheepHomeMachineTests {
    static let vid: UInt32 = 0x100
    static let newVID: UInt32 = 0x200
    static let parentVID: UInt32 = 0x50
    static let slots = 16
    static let data = UnsafeRawPointer(UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096))

    /// What came out of the machine since the last look.
    struct Out {
        var sends: [(op: Int32, header: SheepRequestHeader, payload: [UInt8], dest: UnsafeMutableRawPointer?)] = []
        var answers: [(tag: UInt64, failure: StoreError?)] = []
        var logs: [String] = []
        var records: [(record: SheepSCSIRecord, outcome: SheepSCSIRecordSync.Outcome)] = []
        /// Other gateways' dead ports reported to the LU (SheepHomeLiveness.swift).
        var deadPorts: [[UInt16]] = []
    }

    final class Bench {
        var machine = SheepHomeMachine()
        let volume: SheepVolume

        /// `hyper`: a hyper volume with an empty B-tree (its owner array is calloc'd, as open does).
        init(owners: [Int: UInt32] = [:], locked: Bool = false, hyper: SheepHyperIndex? = nil, coherent: Bool = false) {
            let index: UnsafeMutablePointer<UInt32>
            if hyper != nil {
                index = calloc(SheepHomeMachineTests.slots, 4)!.bindMemory(to: UInt32.self, capacity: SheepHomeMachineTests.slots)
            } else {
                index = .allocate(capacity: SheepHomeMachineTests.slots)
                index.initialize(repeating: 0, count: SheepHomeMachineTests.slots)
            }
            volume = makeTestSheepVolume(index: index, slots: SheepHomeMachineTests.slots, vid: SheepHomeMachineTests.vid,
                                         locked: locked, hyper: hyper, coherent: coherent)
            for (i, v) in owners { volume.setOwner(i, v) }
        }

        func write(_ index: Int, tag: UInt64 = 1) -> Out {
            machine.request(SheepHomeRequest(volume: volume, kind: .write(index: index, objectOffset: 512, length: 4096,
                                                                          data: SheepHomeMachineTests.data),
                                             originCore: 0, waiter: .request(tag: tag)))
            return drain()
        }

        func deallocate(_ index: Int, tag: UInt64 = 1) -> Out {
            machine.request(SheepHomeRequest(volume: volume, kind: .deallocate(index: index), originCore: 0,
                                             waiter: .request(tag: tag)))
            return drain()
        }

        func reply(_ op: Int32, _ result: SheepResult, vdiID: UInt32 = 0, failure: StoreError? = nil) -> Out {
            machine.reply(op, result: result, failure: failure, vdiID: vdiID)
            return drain()
        }

        func drain() -> Out {
            var out = Out()
            while let a = machine.nextAction() {
                switch a {
                case .send(let op, let vol, let header, let payload, let length, let dest, _):
                    #expect(vol === volume)
                    let bytes = payload.map { Array(UnsafeRawBufferPointer(start: $0, count: length)) } ?? []
                    out.sends.append((op, header, bytes, dest))
                case .answer(let req, let failure):
                    guard case .request(let tag) = req.waiter else { Issue.record("answer without a tag"); continue }
                    out.answers.append((tag, failure))
                case .log(_, let message):
                    out.logs.append(message)
                case .record(let vol, let record, let outcome):
                    #expect(vol === volume)
                    out.records.append((record, outcome))
                case .liveness(let vol, let dead):
                    #expect(vol === volume)
                    out.deadPorts.append(dead)
                }
            }
            return out
        }
    }

    static func le(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }

    /// Expects exactly one send: a CREATE_AND_WRITE of object `index` of `vid`, copy-on-write from `cow` (0 = none).
    static func expectCreate(_ out: Out, index: UInt32, vid: UInt32, cow: UInt64,
                             sourceLocation: SourceLocation = #_sourceLocation) -> Int32 {
        #expect(out.sends.count == 1, "\(out.sends.map { $0.header.opcode })", sourceLocation: sourceLocation)
        guard let s = out.sends.first else { return -1 }
        #expect(s.header.opcode == .createAndWriteObj, sourceLocation: sourceLocation)
        #expect(s.header.oid == SheepOID.data(vid: vid, index: index), sourceLocation: sourceLocation)
        #expect(s.header.cowOid == cow, sourceLocation: sourceLocation)
        #expect(s.header.objOffset == 512, sourceLocation: sourceLocation)
        return s.op
    }

    /// Expects exactly one send: the 4-byte index slot `index` of `vid`'s inode set to `value`.
    static func expectSlotWrite(_ out: Out, index: UInt32, vid: UInt32, value: UInt32,
                                sourceLocation: SourceLocation = #_sourceLocation) -> Int32 {
        #expect(out.sends.count == 1, "\(out.sends.map { $0.header.opcode })", sourceLocation: sourceLocation)
        guard let s = out.sends.first else { return -1 }
        #expect(s.header.opcode == .writeObj && s.header.oid == SheepOID.inode(vid: vid), sourceLocation: sourceLocation)
        #expect(s.header.objOffset == SheepInodeLayout.slotOffset(index), sourceLocation: sourceLocation)
        #expect(s.payload == le(value), sourceLocation: sourceLocation)
        return s.op
    }

    // MARK: - Allocation

    /// The data goes first, and only once it is in place is the index slot written (tgt d4622d1): a crash in
    /// between leaves an unreferenced object, never a slot pointing at nothing.
    @Test func anUnallocatedObjectIsCreatedThenRecorded() {
        let b = Bench()
        let create = Self.expectCreate(b.write(3), index: 3, vid: Self.vid, cow: 0)
        #expect(b.volume.owner(3) == 0)
        let slot = Self.expectSlotWrite(b.reply(create, .success), index: 3, vid: Self.vid, value: Self.vid)
        #expect(b.volume.owner(3) == 0, "recorded before the slot write succeeded")
        let done = b.reply(slot, .success)
        #expect(done.answers.map(\.tag) == [1] && done.answers[0].failure == nil && done.sends.isEmpty)
        #expect(b.volume.owner(3) == Self.vid)
        #expect(b.machine.stepsInFlight == 0)
    }

    @Test func anObjectOfTheParentIsCopiedOnWrite() {
        let b = Bench(owners: [3: Self.parentVID])
        let create = Self.expectCreate(b.write(3), index: 3, vid: Self.vid,
                                       cow: SheepOID.data(vid: Self.parentVID, index: 3))
        let slot = Self.expectSlotWrite(b.reply(create, .success), index: 3, vid: Self.vid, value: Self.vid)
        #expect(b.reply(slot, .success).answers.count == 1)
        #expect(b.volume.owner(3) == Self.vid)
    }

    /// A second write to an object being created waits, then goes as a plain write once the object is ours
    /// (two overlapping creates of one object lose data in sheep, §7.6).
    @Test func aSecondWriteWaitsForTheCreateThenWritesPlainly() {
        let b = Bench()
        let create = Self.expectCreate(b.write(3, tag: 1), index: 3, vid: Self.vid, cow: 0)
        #expect(b.write(3, tag: 2).sends.isEmpty, "a second create of the same object went out")
        let slot = Self.expectSlotWrite(b.reply(create, .success), index: 3, vid: Self.vid, value: Self.vid)
        let after = b.reply(slot, .success)
        #expect(after.answers.map(\.tag) == [1])
        #expect(after.sends.count == 1 && after.sends[0].header.opcode == .writeObj
                && after.sends[0].header.oid == SheepOID.data(vid: Self.vid, index: 3))
        #expect(b.reply(after.sends[0].op, .success).answers.map(\.tag) == [2])
        #expect(b.machine.stepsInFlight == 0)
    }

    /// Sheep's failures become the request's, and the object's waiters go on.
    @Test(arguments: [(SheepResult.noSpace, StoreError.noSpace), (.eio, .mediumError), (.vdiLocked, .mediumError)])
    func aFailedCreateAnswersItsRequestAndReleasesTheObject(result: SheepResult, expected: StoreError) {
        let b = Bench()
        let create = Self.expectCreate(b.write(3, tag: 1), index: 3, vid: Self.vid, cow: 0)
        _ = b.write(3, tag: 2)
        let out = b.reply(create, result)
        #expect(out.answers.count == 1 && out.answers[0].tag == 1 && out.answers[0].failure == expected)
        #expect(b.volume.owner(3) == 0)
        // The waiting write is now handled: a fresh create.
        _ = Self.expectCreate(out, index: 3, vid: Self.vid, cow: 0)
    }

    /// A send the channel could not make (table full, sheep gone for good) is answered like a failed reply.
    @Test func aSendThatCouldNotBeMadeFailsTheRequest() {
        let b = Bench()
        let create = Self.expectCreate(b.write(3), index: 3, vid: Self.vid, cow: 0)
        let out = b.reply(create, .eio, failure: .unavailable)
        #expect(out.answers.count == 1 && out.answers[0].failure == .unavailable)
        #expect(b.machine.stepsInFlight == 0)
    }

    @Test func deallocationZeroesTheSlotOfAnObjectWeOwnOnly() {
        let b = Bench(owners: [7: Self.vid, 8: Self.parentVID])
        let slot = Self.expectSlotWrite(b.deallocate(7), index: 7, vid: Self.vid, value: 0)
        #expect(b.reply(slot, .success).answers.count == 1)
        #expect(b.volume.owner(7) == 0)
        // The parent's object is not ours to deallocate: answered at once, nothing sent.
        let parent = b.deallocate(8)
        #expect(parent.sends.isEmpty && parent.answers.count == 1 && parent.answers[0].failure == nil)
        #expect(b.volume.owner(8) == Self.parentVID)
    }

    @Test func aStoppingCoreSendsNothing() {
        let b = Bench()
        b.machine.stopping = true
        let out = b.write(3)
        #expect(out.sends.isEmpty && out.answers.count == 1 && out.answers[0].failure == .unavailable)
    }

    // MARK: - Snapshots: READONLY, reload, reconcile

    /// Runs a reload to the end: the lookup (LOCK_VDI when the VDI was locked at open) answered with the new
    /// working VDI, then the read of its index, answered with `newIndex`. Returns what came out after the index.
    static func reload(_ b: Bench, _ out: Out, locked: Bool, newIndex: [Int: UInt32]) -> Out {
        #expect(out.sends.count == 1)
        guard let lookup = out.sends.first else { return Out() }
        #expect(lookup.header.opcode == (locked ? .lockVDI : .getVDIInfo))
        let read = b.reply(lookup.op, .success, vdiID: newVID)
        #expect(read.sends.count == 1)
        guard let r = read.sends.first, let dest = r.dest else { return Out() }
        #expect(r.header.opcode == .readObj && r.header.oid == SheepOID.inode(vid: newVID))
        #expect(r.header.objOffset == UInt32(SheepInodeLayout.headerSizeBytes))
        let slots = dest.assumingMemoryBound(to: UInt32.self)
        for i in 0..<SheepHomeMachineTests.slots { slots[i] = (newIndex[i] ?? 0).littleEndian }
        return b.reply(r.op, .success)
    }

    /// A snapshot taken while an object was being created: the create went to what is now a snapshot. The
    /// machine finds the new working VDI and creates the object there, copy-on-write from nothing (the create
    /// never reached the index).
    @Test(arguments: [false, true])
    func aSnapshotDuringACreateMovesTheCreateToTheNewWorkingVDI(locked: Bool) {
        let b = Bench(owners: [1: Self.vid], locked: locked)
        let create = Self.expectCreate(b.write(3), index: 3, vid: Self.vid, cow: 0)
        let afterIndex = Self.reload(b, b.reply(create, .readonly), locked: locked, newIndex: [1: Self.vid])
        #expect(b.volume.vid == Self.newVID)
        let create2 = Self.expectCreate(afterIndex, index: 3, vid: Self.newVID, cow: 0)
        let slot = Self.expectSlotWrite(b.reply(create2, .success), index: 3, vid: Self.newVID, value: Self.newVID)
        let done = b.reply(slot, .success)
        #expect(done.answers.count == 1 && done.answers[0].failure == nil)
        #expect(b.volume.owner(3) == Self.newVID && b.volume.owner(1) == Self.vid)
        #expect(b.machine.stepsInFlight == 0)
    }

    /// READONLY on a plain write to an object we own: after the reload the object belongs to the snapshot, so
    /// the write becomes a copy-on-write create in the new working VDI.
    @Test func readonlyDuringAPlainWriteBecomesACopyOnWrite() {
        let b = Bench(owners: [3: Self.vid])
        let first = b.write(3)
        #expect(first.sends.count == 1 && first.sends[0].header.opcode == .writeObj)
        let afterIndex = Self.reload(b, b.reply(first.sends[0].op, .readonly), locked: false, newIndex: [3: Self.vid])
        let create = Self.expectCreate(afterIndex, index: 3, vid: Self.newVID, cow: SheepOID.data(vid: Self.vid, index: 3))
        let slot = Self.expectSlotWrite(b.reply(create, .success), index: 3, vid: Self.newVID, value: Self.newVID)
        #expect(b.reply(slot, .success).answers.count == 1)
        #expect(b.volume.owner(3) == Self.newVID)
    }

    /// Our index knows slots the snapshot's copy lacks (their slot write reached the old inode after sheep copied
    /// it, sheepdog#331): each is written to the new working VDI before any waiting write goes on.
    @Test func reconcileWritesTheSlotsTheNewIndexLacksBeforeRedoingWrites() {
        let b = Bench(owners: [1: Self.vid, 5: Self.vid, 6: Self.parentVID, 9: Self.vid])
        let first = b.write(1)
        let afterIndex = Self.reload(b, b.reply(first.sends[0].op, .readonly), locked: false,
                                     newIndex: [1: Self.vid, 6: Self.parentVID])
        let slotWrites = afterIndex.sends
        #expect(slotWrites.count == 2, "\(slotWrites.map { $0.header.objOffset })")
        #expect(Set(slotWrites.map { $0.header.objOffset }) == [SheepInodeLayout.slotOffset(5), SheepInodeLayout.slotOffset(9)])
        #expect(slotWrites.allSatisfy { $0.header.oid == SheepOID.inode(vid: Self.newVID) && $0.payload == Self.le(Self.vid) })
        #expect(afterIndex.answers.isEmpty)
        #expect(b.reply(slotWrites[0].op, .success).sends.isEmpty, "the write went on before the reconcile ended")
        // A failed reconcile write is logged, and the reload still ends.
        let last = b.reply(slotWrites[1].op, .eio)
        _ = Self.expectCreate(last, index: 1, vid: Self.newVID, cow: SheepOID.data(vid: Self.vid, index: 1))
    }

    /// No new working VDI (the VDI was deleted, or the lookup failed): the waiting writes fail as write
    /// protected rather than go anywhere unsafe, and the index keeps its VID.
    @Test(arguments: [SheepResult.noVDI, .vdiLocked])
    func aReloadThatFindsNoWorkingVDIFailsTheWrites(result: SheepResult) {
        let b = Bench(owners: [3: Self.vid])
        let first = b.write(3, tag: 1)
        let lookup = b.reply(first.sends[0].op, .readonly)
        #expect(b.write(3, tag: 2).sends.isEmpty, "a write went out during the reload")
        let out = b.reply(lookup.sends[0].op, result)
        #expect(out.answers.map(\.tag).sorted() == [1, 2] && out.answers.allSatisfy { $0.failure == .writeProtected })
        #expect(b.volume.vid == Self.vid)
        #expect(!out.logs.isEmpty)
    }
}
