import Glibc
import SheepProtocol
import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import SCSITestSupport

/// Multipath over sheepdog (SHEEPDOG-PROTOCOL.md §7.10): the home core's answer to INODE_INVALIDATED — one
/// refresh read of the inode, the index adopted from it, then the waiting requests redone against it.
@Suite struct SheepCoherenceMachineTests {
    typealias T = SheepHomeMachineTests
    static let pieceBuffer = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)

    /// Expects exactly one send: sheep's refresh read of `vid`'s inode (offset 0, header + flat index), and
    /// fills its destination as sheep would: `slots` in the index, a snapshot's ctime when `snapshot`.
    static func answerRefresh(_ b: T.Bench, _ out: T.Out, vid: UInt32, slots: [Int: UInt32], snapshot: Bool = false,
                              sourceLocation: SourceLocation = #_sourceLocation) -> T.Out {
        #expect(out.sends.count == 1, "\(out.sends.map { $0.header.opcode })", sourceLocation: sourceLocation)
        guard let s = out.sends.first, let dest = s.dest else { return T.Out() }
        #expect(s.header.opcode == .readObj && s.header.oid == SheepOID.inode(vid: vid), sourceLocation: sourceLocation)
        #expect(s.header.objOffset == 0 && Int(s.header.dataLength) == SheepInodeLayout.clientInodeSizeBytes,
                sourceLocation: sourceLocation)
        memset(dest, 0, SheepInodeLayout.headerSizeBytes + T.slots * 4)
        if snapshot { dest.storeBytes(of: UInt64(7).littleEndian, toByteOffset: SheepInodeLayout.snapCTimeOffset, as: UInt64.self) }
        for (i, v) in slots { dest.storeBytes(of: v.littleEndian, toByteOffset: Int(SheepInodeLayout.slotOffset(UInt32(i))), as: UInt32.self) }
        return b.reply(s.op, .success)
    }

    /// Expects exactly one send: the read of index slot `index` of `vid`'s inode in sheep (4 bytes, with
    /// SD_FLAG_CMD_TGT), and answers it with `value` (or with `result` and nothing).
    static func answerSlot(_ b: T.Bench, _ out: T.Out, index: Int, vid: UInt32 = T.vid, value: UInt32,
                           result: SheepResult = .success, sourceLocation: SourceLocation = #_sourceLocation) -> T.Out {
        #expect(out.sends.count == 1, "\(out.sends.map { $0.header.opcode })", sourceLocation: sourceLocation)
        guard let s = out.sends.first, let dest = s.dest else { return T.Out() }
        #expect(s.header.opcode == .readObj && s.header.oid == SheepOID.inode(vid: vid), sourceLocation: sourceLocation)
        #expect(s.header.objOffset == SheepInodeLayout.slotOffset(UInt32(index)) && s.header.dataLength == 4,
                sourceLocation: sourceLocation)
        #expect(s.header.flags.contains(.tgt), sourceLocation: sourceLocation)
        if result == .success { dest.storeBytes(of: value.littleEndian, as: UInt32.self) }
        return b.reply(s.op, result)
    }

    static func invalidatedRead(_ b: T.Bench, _ index: Int, tag: UInt64) -> T.Out {
        let req = SheepHomeRequest(volume: b.volume, kind: .read(index: index, objectOffset: 512, length: 4096,
                                                                  dest: pieceBuffer),
                                   originCore: 0, waiter: .request(tag: tag))
        req.invalidated = true
        b.machine.request(req)
        return b.drain()
    }

    @Test func aCreateAnsweredInodeInvalidatedBecomesAWriteToTheObjectAnotherGatewayAllocated() {
        let b = T.Bench(locked: true, coherent: true)
        let w = Self.answerSlot(b, b.write(3), index: 3, value: 0)
        let create = T.expectCreate(w, index: 3, vid: T.vid, cow: 0)
        #expect(w.sends[0].header.flags.contains(.tgt))
        let refresh = b.reply(create, .inodeInvalidated)
        #expect(refresh.answers.isEmpty)
        // Another request meanwhile waits for the reload instead of going to sheep.
        #expect(b.write(5, tag: 2).sends.isEmpty)
        let redo = Self.answerRefresh(b, refresh, vid: T.vid, slots: [3: T.vid])
        #expect(b.volume.owner(3) == T.vid)
        #expect(redo.sends.count == 2)
        let plain = redo.sends.first { $0.header.oid == SheepOID.data(vid: T.vid, index: 3) }
        #expect(plain?.header.opcode == .writeObj && plain?.header.flags.contains(.tgt) == true)
        let slot5 = redo.sends.first { $0.header.oid == SheepOID.inode(vid: T.vid) }
        #expect(slot5?.header.objOffset == SheepInodeLayout.slotOffset(5))
        #expect(b.reply(plain!.op, .success).answers.map(\.tag) == [1])
    }

    /// Sheep revalidates a node after its refresh read, and another gateway invalidates the others before it
    /// writes the index: a refresh read in between leaves our index stale while sheep counts us valid. A write
    /// our index calls a hole therefore asks sheep for the slot first; an object another gateway made since is
    /// written into, never created again (a create would replace it, losing what that gateway wrote).
    @Test func aWriteToAnObjectAnotherGatewayMadeSinceOurReloadIsAWriteNotACreate() {
        let b = T.Bench(locked: true, coherent: true)
        let w = b.write(3, tag: 1)
        // A second write to the same object waits for the first one's decision.
        #expect(b.write(3, tag: 2).sends.isEmpty)
        let plain = Self.answerSlot(b, w, index: 3, value: T.vid)
        #expect(b.volume.owner(3) == T.vid)
        #expect(plain.sends.count == 2, "\(plain.sends.map { $0.header.opcode })")
        #expect(plain.sends.allSatisfy { $0.header.opcode == .writeObj && $0.header.oid == SheepOID.data(vid: T.vid, index: 3) })
        #expect(!plain.sends.contains { $0.header.opcode == .createAndWriteObj })
        for s in plain.sends { _ = b.reply(s.op, .success) }
        #expect(b.machine.stepsInFlight == 0)
    }

    /// The slot sheep names decides the copy-on-write source too: a parent's object is copied from it.
    @Test func aWriteCopiesFromTheOwnerSheepNames() {
        let b = T.Bench(locked: true, coherent: true)
        let w = Self.answerSlot(b, b.write(6), index: 6, value: T.parentVID)
        let create = T.expectCreate(w, index: 6, vid: T.vid, cow: SheepOID.data(vid: T.parentVID, index: 6))
        let slot = T.expectSlotWrite(b.reply(create, .success), index: 6, vid: T.vid, value: T.vid)
        #expect(b.reply(slot, .success).answers.map(\.tag) == [1])
    }

    /// The slot read itself answered INODE_INVALIDATED: reload, then ask again.
    @Test func aSlotReadAnsweredInodeInvalidatedReloadsFirst() {
        let b = T.Bench(locked: true, coherent: true)
        let refresh = Self.answerSlot(b, b.write(3), index: 3, value: 0, result: .inodeInvalidated)
        let again = Self.answerRefresh(b, refresh, vid: T.vid, slots: [:])
        let create = T.expectCreate(Self.answerSlot(b, again, index: 3, value: 0), index: 3, vid: T.vid, cow: 0)
        _ = create
    }

    @Test func anInvalidatedReadIsRedoneFromTheFreshOwnerOrAnsweredAsAHole() {
        let b = T.Bench(locked: true, coherent: true)
        let refresh = Self.invalidatedRead(b, 4, tag: 1)
        #expect(Self.invalidatedRead(b, 6, tag: 2).sends.isEmpty, "one reload for both")
        memset(Self.pieceBuffer, 0xAA, 4096)
        let redo = Self.answerRefresh(b, refresh, vid: T.vid, slots: [4: T.parentVID])
        // Neither is ours: each asks sheep for its slot (the reload may have run before an index write that
        // another gateway's invalidation announced). Object 6 is still a hole: zeros. Object 4 is read from
        // its owner into the piece's buffer.
        #expect(redo.sends.count == 2)
        guard redo.sends.count == 2 else { return }
        let six = Self.answerSlot(b, T.Out(sends: [redo.sends[1]]), index: 6, value: 0)
        #expect(six.answers.map(\.tag) == [2] && six.answers[0].failure == nil)
        #expect(Self.pieceBuffer.load(as: UInt8.self) == 0)
        let four = Self.answerSlot(b, T.Out(sends: [redo.sends[0]]), index: 4, value: T.parentVID)
        #expect(four.sends.count == 1)
        guard let read = four.sends.first else { return }
        #expect(read.header.opcode == .readObj && read.header.oid == SheepOID.data(vid: T.parentVID, index: 4))
        #expect(read.header.objOffset == 512 && read.dest == Self.pieceBuffer)
        let done = b.reply(read.op, .success)
        #expect(done.answers.map(\.tag) == [1] && done.answers[0].failure == nil)
        #expect(b.machine.stepsInFlight == 0)
    }

    /// A read our (reloaded) index calls a hole, for an object another gateway made and recorded after the
    /// reload read the inode: sheep's slot names it, and the read goes there, not to zeros.
    @Test func aReadAfterAReloadThatMissedAnIndexWriteReadsTheObjectSheepNames() {
        let b = T.Bench(locked: true, coherent: true)
        let redo = Self.answerRefresh(b, Self.invalidatedRead(b, 4, tag: 1), vid: T.vid, slots: [:])
        let read = Self.answerSlot(b, redo, index: 4, value: T.vid)
        #expect(read.sends.count == 1 && read.answers.isEmpty)
        guard let r = read.sends.first else { return }
        #expect(r.header.opcode == .readObj && r.header.oid == SheepOID.data(vid: T.vid, index: 4) && r.dest == Self.pieceBuffer)
        #expect(b.reply(r.op, .success).answers.map(\.tag) == [1])
    }

    @Test func aSlotThisCoreWroteDuringTheReloadIsNotUndoneByIt() {
        let b = T.Bench(locked: true, coherent: true)
        let create = T.expectCreate(Self.answerSlot(b, b.write(2, tag: 1), index: 2, value: 0), index: 2, vid: T.vid, cow: 0)
        let slot = T.expectSlotWrite(b.reply(create, .success), index: 2, vid: T.vid, value: T.vid)
        let refresh = Self.invalidatedRead(b, 9, tag: 2)
        #expect(b.reply(slot, .success).answers.map(\.tag) == [1])
        // Sheep executed the refresh read before our slot write: it shows slot 2 empty.
        _ = Self.answerRefresh(b, refresh, vid: T.vid, slots: [9: T.parentVID])
        #expect(b.volume.owner(2) == T.vid)
        #expect(b.volume.owner(9) == T.parentVID)
    }

    @Test func aVDIThatBecameASnapshotMovesToTheWorkingVDIAndKeepsTheOtherGatewaysSlots() {
        let b = T.Bench(owners: [1: T.vid], locked: true, coherent: true)
        let refresh = b.reply(T.expectCreate(Self.answerSlot(b, b.write(3), index: 3, value: 0), index: 3, vid: T.vid, cow: 0),
                              .inodeInvalidated)
        let lookup = Self.answerRefresh(b, refresh, vid: T.vid, slots: [1: T.vid, 2: T.vid], snapshot: true)
        #expect(b.volume.owner(2) == T.vid)
        #expect(lookup.sends.count == 1 && lookup.sends.first?.header.opcode == .lockVDI)
        #expect(lookup.sends.first?.header.lockType == .shared)
        guard let l = lookup.sends.first else { return }
        let read = b.reply(l.op, .success, vdiID: T.newVID)
        // The new working VDI's inode is read with the refresh read (it validates this node there too).
        #expect(read.sends.count == 1)
        guard let r = read.sends.first, let dest = r.dest else { return }
        #expect(r.header.oid == SheepOID.inode(vid: T.newVID) && r.header.objOffset == 0)
        #expect(Int(r.header.dataLength) == SheepInodeLayout.clientInodeSizeBytes)
        memset(dest, 0, SheepInodeLayout.headerSizeBytes + T.slots * 4)
        for (i, v) in [1: T.vid, 2: T.vid, 3: T.newVID] {
            dest.storeBytes(of: v.littleEndian, toByteOffset: Int(SheepInodeLayout.slotOffset(UInt32(i))), as: UInt32.self)
        }
        // Before any write is redone, a no-op write into the old inode's index (0 to the last slot, past the
        // end of the VDI, without SD_FLAG_CMD_TGT) invalidates the snapshot's other participants.
        let announce = b.reply(r.op, .success)
        #expect(announce.sends.count == 1)
        guard let an = announce.sends.first else { return }
        #expect(an.header.opcode == .writeObj && an.header.oid == SheepOID.inode(vid: T.vid))
        #expect(an.header.objOffset == SheepInodeLayout.slotOffset(UInt32(SheepInodeLayout.dataIndexSlots - 1)))
        #expect(an.payload == [0, 0, 0, 0] && !an.header.flags.contains(.tgt))
        // The other gateway already allocated object 3 in the new working VDI: ours is a plain write to it.
        let redo = b.reply(an.op, .success)
        #expect(b.volume.vid == T.newVID && b.volume.owner(3) == T.newVID)
        #expect(redo.sends.count == 1)
        #expect(redo.sends.first?.header.opcode == .writeObj)
        #expect(redo.sends.first?.header.oid == SheepOID.data(vid: T.newVID, index: 3))
    }

    @Test func aRequestInvalidatedAgainAndAgainFailsInsteadOfLooping() {
        let b = T.Bench(locked: true, coherent: true)
        var out = Self.invalidatedRead(b, 4, tag: 1)
        for _ in 0..<SheepHomeLimits.invalidationsMax {
            let redo = Self.answerRefresh(b, out, vid: T.vid, slots: [4: T.vid])
            guard let read = redo.sends.first else { Issue.record("no read after the reload"); return }
            out = b.reply(read.op, .inodeInvalidated)
        }
        #expect(out.answers.map(\.tag) == [1] && out.answers.first?.failure == .mediumError)
        #expect(b.machine.stepsInFlight == 0)
    }

    @Test func aVolumeThatIsNotCoherentSendsNoTgtFlag() {
        let b = T.Bench(locked: true)
        #expect(b.write(3).sends.first?.header.flags.contains(.tgt) == false)
    }
}
