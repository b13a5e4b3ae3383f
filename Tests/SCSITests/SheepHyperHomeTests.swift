import SheepProtocol
import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import SCSITestSupport

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

    /// At depth 2 the changed leaf is written first (up to its last entry), and the root, whose key for that
    /// leaf grew, only once the leaf is in place.
    @Test func atDepthTwoTheLeafIsWrittenBeforeTheRoot() throws {
        let tree = try #require(SheepHyperIndex())
        let leafOID = SheepBTree.nodeOID(vid: Self.vid, number: 0)
        let leaf = try #require(tree.adopt(leafOID))
        SheepBTree.initNode(leaf, depth: 1)
        leaf.storeBytes(of: UInt32(1).littleEndian, toByteOffset: 4, as: UInt32.self)
        leaf.storeBytes(of: UInt32(1).littleEndian, toByteOffset: 8, as: UInt32.self)
        leaf.storeBytes(of: Self.vid.littleEndian, toByteOffset: 12, as: UInt32.self)
        SheepBTree.initNode(tree.root, depth: 2)
        tree.root.storeBytes(of: UInt32(1).littleEndian, toByteOffset: 4, as: UInt32.self)
        tree.root.storeBytes(of: UInt32(1).littleEndian, toByteOffset: 8, as: UInt32.self)
        tree.root.storeBytes(of: leafOID.littleEndian, toByteOffset: 16, as: UInt64.self)
        tree.btreeCounter = 1
        let b = Bench(owners: [1: Self.vid], hyper: tree)

        let c = Self.expectCreate(b.write(3), index: 3, vid: Self.vid, cow: 0)
        let leafWrite = b.reply(c, .success)
        let lw = try #require(leafWrite.sends.first)
        #expect(leafWrite.sends.count == 1)
        #expect(lw.header.opcode == .writeObj && lw.header.oid == leafOID && lw.header.objOffset == 0)
        #expect(lw.payload == [0x74, 0x62, 1, 0, 2, 0, 0, 0] + Self.le(1) + Self.le(Self.vid) + Self.le(3) + Self.le(Self.vid))
        let rootWrite = b.reply(lw.op, .success)
        let rw = try #require(rootWrite.sends.first)
        #expect(rw.header.oid == SheepOID.inode(vid: Self.vid) && rw.header.objOffset == Self.rootWriteOffset)
        #expect(Array(rw.payload.prefix(4)) == Self.le(1), "btree_counter")
        #expect(Self.root(rw.payload) == [0x74, 0x62, 2, 0, 1, 0, 0, 0] + Self.le(3) + [0, 0, 0, 0]
                + withUnsafeBytes(of: leafOID.littleEndian) { Array($0) })
        #expect(b.volume.owner(3) == 0)
        #expect(b.reply(rw.op, .success).answers.map(\.tag) == [1])
        #expect(b.volume.owner(3) == Self.vid && b.machine.stepsInFlight == 0)
    }
}
