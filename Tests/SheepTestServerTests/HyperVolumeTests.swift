// Hyper volumes (store_policy 1) through the dog operations: data beyond the 4 TiB a flat index reaches, the
// B-tree in the inode as sd_inode.c lays it out, and the object map.

import Testing
@testable import SheepTestServer
import SheepProtocol

@Suite struct HyperVolumeTests {
    static let objectBytes: UInt64 = 4 << 20
    static let vdiBytes: UInt64 = 5 << 40

    private func readAll(_ d: DogOperations, _ name: String, offset: UInt64, length: UInt64) throws -> [UInt8] {
        var out: [UInt8] = []
        try d.read(name: name, offset: offset, length: length) { out += $0 }
        return out
    }

    /// dog writes across an object boundary above 4 TiB and reads the same bytes back; the objects exist under
    /// their own index (beyond 2^20), the inode root lists them in order, and untouched ranges read as zeros.
    @Test func writeAndReadBeyondFourTiB() throws {
        try withServer { server in
            let d = try server.dog()
            let vid = try d.create(name: "big", size: Self.vdiBytes, hyperVolume: true)
            let offset: UInt64 = (4 << 40) + Self.objectBytes - 1000
            let data = pattern(7, 5000)
            try d.write(name: "big", offset: offset, data: data)
            #expect(try readAll(d, "big", offset: offset, length: 5000) == data)
            #expect(try readAll(d, "big", offset: offset - 4096, length: 4096) == [UInt8](repeating: 0, count: 4096))
            // A flat reader would look at slot 0 and 1 (the B-tree header): nothing may land there.
            #expect(try readAll(d, "big", offset: 0, length: 8192) == [UInt8](repeating: 0, count: 8192))

            let first = UInt32(offset / Self.objectBytes)
            #expect(first == (1 << 20))
            #expect(server.cluster.hasObject(SheepOID.data(vid: vid, index: first)))
            #expect(server.cluster.hasObject(SheepOID.data(vid: vid, index: first + 1)))
            #expect(!server.cluster.hasObject(SheepOID.data(vid: vid, index: 0)))

            let c = try server.client()
            let root = try c.readObject(SheepOID.inode(vid: vid), offset: UInt32(SheepInodeLayout.headerSizeBytes), length: 24).data
            var want: [UInt8] = [0x74, 0x62, 1, 0, 2, 0, 0, 0]
            for idx in [first, first + 1] {
                want += withUnsafeBytes(of: idx.littleEndian) { Array($0) } + withUnsafeBytes(of: vid.littleEndian) { Array($0) }
            }
            #expect(root == want)

            let map = try d.objectMap(name: "big", index: nil)
            #expect(map.map(\.0) == [first, first + 1] && map.allSatisfy { $0.1 == vid })
            #expect(try d.objectMap(name: "big", index: first + 2).map(\.1) == [0])
            let listed = try #require(try d.list().first { $0.name == "big" })
            #expect(listed.usedBytes == 2 * Self.objectBytes && listed.sharedBytes == 0)
        }
    }

    /// Enough objects for a leaf is beyond a test's budget (524,288); the dog path that reads leaves is tested
    /// with a depth-2 tree built here as sheep would, with its leaves written as B-tree objects.
    @Test func readsThroughADepthTwoTree() throws {
        try withServer { server in
            let d = try server.dog()
            let vid = try d.create(name: "deep", size: Self.vdiBytes, hyperVolume: true)
            let c = try server.client()
            let leafA = SheepBTree.nodeOID(vid: vid, number: 0), leafB = SheepBTree.nodeOID(vid: vid, number: 1)
            func leaf(_ entries: [(UInt32, UInt32)]) -> [UInt8] {
                var b: [UInt8] = [0x74, 0x62, 1, 0] + withUnsafeBytes(of: UInt32(entries.count).littleEndian) { Array($0) }
                for (i, v) in entries { b += withUnsafeBytes(of: i.littleEndian) { Array($0) } + withUnsafeBytes(of: v.littleEndian) { Array($0) } }
                return b
            }
            let hi: UInt32 = 1 << 20 | 5
            #expect(try c.writeObject(leafA, offset: 0, data: leaf([(3, vid)]), create: true).result == .success)
            #expect(try c.writeObject(leafB, offset: 0, data: leaf([(hi, vid)]), create: true).result == .success)
            var root: [UInt8] = [0x74, 0x62, 2, 0, 2, 0, 0, 0]
            for (key, oid) in [(UInt32(3), leafA), (hi, leafB)] {
                root += withUnsafeBytes(of: key.littleEndian) { Array($0) } + [0, 0, 0, 0] + withUnsafeBytes(of: oid.littleEndian) { Array($0) }
            }
            #expect(try c.writeObject(SheepOID.inode(vid: vid), offset: UInt32(SheepInodeLayout.headerSizeBytes), data: root).result == .success)
            #expect(try c.writeObject(SheepOID.inode(vid: vid), offset: UInt32(SheepInodeLayout.btreeCounterOffset),
                                      data: [2, 0, 0, 0]).result == .success)
            for idx in [UInt32(3), hi] {
                #expect(try c.writeObject(SheepOID.data(vid: vid, index: idx), offset: 0, data: pattern(UInt8(idx & 0xFF), 512),
                                          create: true).result == .success)
            }
            #expect(try d.objectMap(name: "deep", index: nil).map(\.0) == [3, hi])
            #expect(try readAll(d, "deep", offset: UInt64(hi) * Self.objectBytes, length: 512) == pattern(5, 512))
            #expect(try readAll(d, "deep", offset: 3 * Self.objectBytes, length: 512) == pattern(3, 512))

            // A write between the leaves' ranges appends to the last leaf (its root key grows) and is read back.
            let next = UInt64(hi + 1) * Self.objectBytes
            try d.write(name: "deep", offset: next, data: pattern(9, 4096))
            #expect(try readAll(d, "deep", offset: next, length: 4096) == pattern(9, 4096))
            let b = try c.readObject(leafB, offset: 0, length: 24).data
            #expect(Array(b[4..<8]) == [2, 0, 0, 0])
            let key = try c.readObject(SheepOID.inode(vid: vid), offset: UInt32(SheepInodeLayout.headerSizeBytes + 24), length: 4).data
            #expect(key == withUnsafeBytes(of: (hi + 1).littleEndian) { Array($0) })
        }
    }
}
