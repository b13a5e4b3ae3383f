import SheepProtocol
import Testing
@testable import Target

/// The home core on a hyper volume: a created object is recorded in the B-tree and the inode root is written
/// (from btree_counter, never starting inside data_vdi_id), one batch at a time.
extension SheepHomeMachineTests {
    static let rootWriteOffset = UInt32(SheepInodeLayout.btreeCounterOffset)

    /// The root as sent: the bytes from data_vdi_id on.
    static func root(_ payload: [UInt8]) -> [UInt8] {
        Array(payload[(SheepInodeLayout.headerSizeBytes - Int(rootWriteOffset))...])
    }

    @Test func hyperCreatesAreRecordedInTheRootOneBatchAtATime() throws {
        let tree = try #require(SheepHyperIndex())
        let b = Bench(hyper: tree)
        let c3 = Self.expectCreate(b.write(3, tag: 1), index: 3, vid: Self.vid, cow: 0)
        let c5 = Self.expectCreate(b.write(5, tag: 2), index: 5, vid: Self.vid, cow: 0)

        let first = b.reply(c3, .success)
        #expect(first.sends.count == 1 && first.answers.isEmpty)
        let w1 = try #require(first.sends.first)
        #expect(w1.header.opcode == .writeObj && w1.header.oid == SheepOID.inode(vid: Self.vid))
        #expect(w1.header.objOffset == Self.rootWriteOffset)
        #expect(Self.root(w1.payload) == [0x74, 0x62, 1, 0, 1, 0, 0, 0] + Self.le(3) + Self.le(Self.vid))
        #expect(b.volume.owner(3) == 0, "recorded before the root write succeeded")

        // The second create completes while the first root write is in flight: it waits for it.
        #expect(b.reply(c5, .success).sends.isEmpty)
        let second = b.reply(w1.op, .success)
        #expect(second.answers.map(\.tag) == [1] && second.answers[0].failure == nil)
        #expect(b.volume.owner(3) == Self.vid && b.volume.owner(5) == 0)
        let w2 = try #require(second.sends.first)
        #expect(second.sends.count == 1 && w2.header.objOffset == Self.rootWriteOffset)
        #expect(Self.root(w2.payload) == [0x74, 0x62, 1, 0, 2, 0, 0, 0] + Self.le(3) + Self.le(Self.vid)
                + Self.le(5) + Self.le(Self.vid))
        let done = b.reply(w2.op, .success)
        #expect(done.answers.map(\.tag) == [2] && done.sends.isEmpty)
        #expect(b.volume.owner(5) == Self.vid && tree.lookup(5) == Self.vid)
        #expect(b.machine.stepsInFlight == 0)
    }

    @Test func aFailedRootWriteFailsTheWriteAndRecordsNothing() throws {
        let tree = try #require(SheepHyperIndex())
        let b = Bench(hyper: tree)
        let c = Self.expectCreate(b.write(2), index: 2, vid: Self.vid, cow: 0)
        let w = try #require(b.reply(c, .success).sends.first)
        let out = b.reply(w.op, .noSpace)
        #expect(out.answers.map(\.tag) == [1] && out.answers[0].failure == .noSpace)
        #expect(b.volume.owner(2) == 0)
        // A retry of the write creates the object again and records it.
        let again = Self.expectCreate(b.write(2, tag: 3), index: 2, vid: Self.vid, cow: 0)
        let w2 = try #require(b.reply(again, .success).sends.first)
        #expect(b.reply(w2.op, .success).answers.map(\.tag) == [3])
        #expect(b.volume.owner(2) == Self.vid)
    }
}
