import Testing
@testable import SheepTestServer
import SheepProtocol

private let objSize = 4 << 20

@Suite struct ObjectIO {
    @Test func createWriteReadAndMissingObjects() throws {
        try withServer { server in
            let c = try server.client()
            let vid = try c.newVDI(name: "vol", size: 1 << 30).header.vdiID
            let oid = SheepOID.data(vid: vid, index: 3)
            #expect(try c.readObject(oid, offset: 0, length: 512).result == .noObj)
            #expect(try c.writeObject(oid, offset: 0, data: pattern(1, 512)).result == .noObj)  // WRITE needs the object
            let data = pattern(2, 8192)
            #expect(try c.writeObject(oid, offset: 4096, data: data, create: true).result == .success)
            let back = try c.readObject(oid, offset: 4096, length: 8192)
            #expect(back.result == .success && back.header.dataLength == 8192 && back.data == data)
            // The rest of a created object is zero.
            #expect(try c.readObject(oid, offset: 0, length: 4096).data == [UInt8](repeating: 0, count: 4096))
            #expect(try c.readObject(oid, offset: UInt32(objSize - 512), length: 512).data == [UInt8](repeating: 0, count: 512))
            let patch = pattern(3, 100)
            #expect(try c.writeObject(oid, offset: 5000, data: patch).result == .success)
            var expected = data
            expected.replaceSubrange(904..<1004, with: patch)
            #expect(try c.readObject(oid, offset: 4096, length: 8192).data == expected)
            // Past the end of the object.
            #expect(try c.readObject(oid, offset: UInt32(objSize - 100), length: 200).result == .invalidParms)
        }
    }

    @Test func wholeObjectWritesAndReadsLargerThanTheSocketBuffers() throws {
        try withServer { server in
            let c = try server.client()
            let vid = try c.newVDI(name: "vol", size: 1 << 30).header.vdiID
            let full = pattern(40, objSize)
            #expect(try c.writeObject(SheepOID.data(vid: vid, index: 0), offset: 0, data: full, create: true).result == .success)
            // A full-object COW create needs no source read: the source may be missing.
            #expect(try c.writeObject(SheepOID.data(vid: vid, index: 1), offset: 0, data: full, create: true,
                                      cowOid: SheepOID.data(vid: 0x99, index: 1)).result == .success)
            let replies = try pipeline(c, [
                (.readObject(id: 1, oid: SheepOID.data(vid: vid, index: 0), offset: 0, length: UInt32(objSize)), []),
                (.readObject(id: 2, oid: SheepOID.data(vid: vid, index: 1), offset: 0, length: UInt32(objSize)), []),
            ])
            #expect(replies.allSatisfy { $0.result == .success && $0.data == full })
            // The whole v0.9+ inode in one write.
            let inode = [UInt8](repeating: 0, count: SheepInodeLayout.fullInodeSizeBytes)
            var header = try c.readInode(vid: vid, withIndex: false).data
            header += [UInt8](repeating: 0, count: inode.count - header.count)
            #expect(try c.writeObject(SheepOID.inode(vid: vid), offset: 0, data: header).result == .success)
            #expect(try c.findVDI(name: "vol") == vid)
        }
    }

    @Test func createOverAnExistingObjectReplacesIt() throws {
        try withServer({ $0.order = .fifo }) { server in
            let c = try server.client()
            let vid = try c.newVDI(name: "vol", size: 1 << 30).header.vdiID
            let oid = SheepOID.data(vid: vid, index: 0)
            #expect(try c.writeObject(oid, offset: 0, data: pattern(1, 4096), create: true).result == .success)
            #expect(try c.writeObject(oid, offset: 8192, data: pattern(2, 4096), create: true).result == .success)
            #expect(try c.readObject(oid, offset: 0, length: 4096).data == [UInt8](repeating: 0, count: 4096))
            #expect(try c.readObject(oid, offset: 8192, length: 4096).data == pattern(2, 4096))
        }
    }

    @Test func inodeReadsAndSlotWrites() throws {
        try withServer { server in
            let c = try server.client()
            let vid = try c.newVDI(name: "vol", size: 1 << 30).header.vdiID
            let inode = SheepOID.inode(vid: vid)
            let full = try c.readInode(vid: vid, withIndex: true)
            #expect(full.result == .success && full.data.count == 4_198_968)
            // A 4-byte slot write and read, the way clients persist allocation.
            var v = vid.littleEndian
            let slot = withUnsafeBytes(of: &v) { Array($0) }
            #expect(try c.writeObject(inode, offset: SheepInodeLayout.slotOffset(7), data: slot).result == .success)
            #expect(try c.readObject(inode, offset: SheepInodeLayout.slotOffset(7), length: 4).data == slot)
            #expect(try c.readObject(inode, offset: SheepInodeLayout.slotOffset(6), length: 4).data == [0, 0, 0, 0])
            // The whole v0.9+ inode is readable, gref included.
            #expect(try c.readObject(inode, offset: 0, length: UInt32(SheepInodeLayout.fullInodeSizeBytes)).result == .success)
        }
    }

    @Test func discardZeroesTheSlotOfTheOidsVDIAndRemovesTheObject() throws {
        try withServer { server in
            let c = try server.client()
            let d = DogOperations(client: c)
            try d.create(name: "vol", size: 64 << 20)
            try d.write(name: "vol", offset: UInt64(objSize), data: pattern(4, 4096))
            let vid = try c.findVDI(name: "vol")
            let oid = SheepOID.data(vid: vid, index: 1)
            #expect(server.cluster.hasObject(oid))
            #expect(try c.call(.discardObject(id: 0, oid: oid)).result == .success)
            #expect(!server.cluster.hasObject(oid))
            #expect(try c.readObject(SheepOID.inode(vid: vid), offset: SheepInodeLayout.slotOffset(1), length: 4).data == [0, 0, 0, 0])
            // Discarding again: nothing to do, still SUCCESS. Unknown VDI: the inode read fails.
            #expect(try c.call(.discardObject(id: 0, oid: oid)).result == .success)
            #expect(try c.call(.discardObject(id: 0, oid: SheepOID.data(vid: 0x42, index: 0))).result == .noObj)
        }
    }

    @Test func clearingASlotReclaimsAnUnreferencedObjectOnly() throws {
        try withServer { server in
            let c = try server.client()
            let d = DogOperations(client: c)
            try d.create(name: "vol", size: 64 << 20)
            try d.write(name: "vol", offset: 0, data: pattern(5, 4096))
            let base = try c.findVDI(name: "vol")
            try d.snapshot(name: "vol", tag: "s")
            let working = try c.findVDI(name: "vol")
            // The working VDI's slot 0 names the snapshot's object; clearing it must not delete that object.
            let zero: [UInt8] = [0, 0, 0, 0]
            #expect(try c.writeObject(SheepOID.inode(vid: working), offset: SheepInodeLayout.slotOffset(0), data: zero).result == .success)
            #expect(server.cluster.hasObject(SheepOID.data(vid: base, index: 0)))
            // An object only its own VDI references goes away with its slot (QEMU-late discard).
            try d.write(name: "vol", offset: UInt64(objSize), data: pattern(6, 4096))
            #expect(server.cluster.hasObject(SheepOID.data(vid: working, index: 1)))
            #expect(try c.writeObject(SheepOID.inode(vid: working), offset: SheepInodeLayout.slotOffset(1), data: zero).result == .success)
            #expect(!server.cluster.hasObject(SheepOID.data(vid: working, index: 1)))
        }
    }
}

@Suite struct SnapshotsAndCopyOnWrite {
    @Test func snapshotMakesOldDataReadonlyButNotItsInode() throws {
        try withServer { server in
            let c = try server.client()
            let d = DogOperations(client: c)
            try d.create(name: "vol", size: 64 << 20)
            let a = pattern(7, 4096)
            try d.write(name: "vol", offset: 0, data: a)
            let old = try c.findVDI(name: "vol")
            let (working, snap) = try d.snapshot(name: "vol", tag: "before")
            #expect(snap == old && working == old + 1)
            #expect(try c.findVDI(name: "vol") == working)
            #expect(try c.findVDI(name: "vol", tag: "before") == old)
            #expect(try c.findVDI(name: "vol", snapID: 1) == old)
            #expect(try c.lookup(.getVDIInfo, name: "vol", snapID: 2).result == .noTag)  // the working VDI's id

            let oldOid = SheepOID.data(vid: old, index: 0)
            #expect(try c.writeObject(oldOid, offset: 0, data: pattern(8, 512)).result == .readonly)
            #expect(try c.writeObject(SheepOID.data(vid: old, index: 5), offset: 0, data: pattern(8, 512), create: true).result == .readonly)
            // Inode objects of snapshots stay writable.
            #expect(try c.writeObject(SheepOID.inode(vid: old), offset: SheepInodeLayout.slotOffset(9), data: [0, 0, 0, 0]).result == .success)

            let oldInode = try #require(SheepInodeHeader(bytes: try c.readInode(vid: old, withIndex: false).data))
            let newInode = try #require(SheepInodeHeader(bytes: try c.readInode(vid: working, withIndex: false).data))
            #expect(oldInode.isSnapshot && oldInode.tag == "before" && oldInode.snapID == 1)
            #expect(!newInode.isSnapshot && newInode.snapID == 2 && newInode.parentVDIID == old && newInode.tag == "")
            // The new working VDI starts with a copy of the index.
            let slot0 = try c.readObject(SheepOID.inode(vid: working), offset: SheepInodeLayout.slotOffset(0), length: 4)
            #expect(slot0.data == withUnsafeBytes(of: old.littleEndian) { Array($0) })
        }
    }

    @Test func copyOnWriteCreateCopiesTheWholeObjectThenOverlays() throws {
        try withServer { server in
            let c = try server.client()
            let d = DogOperations(client: c)
            try d.create(name: "vol", size: 64 << 20)
            let a = pattern(9, 3 * 4096)
            try d.write(name: "vol", offset: 0, data: a)
            let (working, old) = try d.snapshot(name: "vol", tag: "s")
            let b = pattern(10, 4096)
            let r = try c.writeObject(SheepOID.data(vid: working, index: 0), offset: 4096, data: b, create: true,
                                      cowOid: SheepOID.data(vid: old, index: 0))
            #expect(r.result == .success)
            var expected = a
            expected.replaceSubrange(4096..<8192, with: b)
            #expect(try c.readObject(SheepOID.data(vid: working, index: 0), offset: 0, length: 3 * 4096).data == expected)
            #expect(try c.readObject(SheepOID.data(vid: old, index: 0), offset: 0, length: 3 * 4096).data == a)
            // COW from a source that does not exist fails with NO_OBJ and creates nothing.
            let missing = try c.writeObject(SheepOID.data(vid: working, index: 2), offset: 0, data: b, create: true,
                                            cowOid: SheepOID.data(vid: old, index: 2))
            #expect(missing.result == .noObj)
            #expect(!server.cluster.hasObject(SheepOID.data(vid: working, index: 2)))
        }
    }

    @Test func snapshotAndCloneWorkflowThroughDog() throws {
        try withServer { server in
            let d = try server.dog()
            try d.create(name: "vol", size: 64 << 20)
            let a = pattern(11, 10_000)
            try d.write(name: "vol", offset: 4_190_000, data: a)  // spans objects 0 and 1
            try d.snapshot(name: "vol", tag: "A")
            let b = pattern(12, 10_000)
            try d.write(name: "vol", offset: 4_190_000, data: b)
            var snap: [UInt8] = [], work: [UInt8] = []
            try d.read(name: "vol", snapshot: .tag("A"), offset: 4_190_000, length: 10_000) { snap += $0 }
            try d.read(name: "vol", offset: 4_190_000, length: 10_000) { work += $0 }
            #expect(snap == a && work == b)
            try d.clone(source: "vol", snapshot: .tag("A"), destination: "copy")
            var cl: [UInt8] = []
            try d.read(name: "copy", offset: 4_190_000, length: 10_000) { cl += $0 }
            #expect(cl == a)
            let list = try d.list()
            #expect(list.map(\.name).sorted() == ["copy", "vol", "vol"])
            #expect(list.contains { $0.isSnapshot && $0.tag == "A" && $0.snapID == 1 })
            #expect(list.contains { $0.isClone && $0.name == "copy" && $0.sharedBytes == 2 * UInt64(objSize) })
        }
    }

    @Test func deleteNeedsAnEmptyIndexAsOnSheepHead() throws {
        try withServer { server in
            let c = try server.client()
            let d = DogOperations(client: c)
            try d.create(name: "vol", size: 64 << 20)
            try d.write(name: "vol", offset: 0, data: pattern(13, 4096))
            let vid = try c.findVDI(name: "vol")
            // A raw DEL_VDI on a VDI that still has objects answers SUCCESS and leaves it in place.
            let raw = try c.lookup(.delVDI, name: "vol")
            #expect(raw.result == .success && raw.header.vdiID == vid)
            #expect(try c.findVDI(name: "vol") == vid)
            // dog's way: clear the index, then DEL_VDI.
            try d.delete(name: "vol")
            #expect(try c.lookup(.getVDIInfo, name: "vol").result == .noVDI)
            #expect(!server.cluster.hasObject(SheepOID.data(vid: vid, index: 0)))
            // The VID stays in use; a new VDI of that name takes the next one.
            #expect(try c.newVDI(name: "vol", size: 1 << 20).header.vdiID == vid + 1)
        }
    }

    @Test func hyperVolumeGetsABTreeRoot() throws {
        try withServer { server in
            let c = try server.client()
            let vid = try c.newVDI(name: "hyper", size: 1 << 40, storePolicy: 1).header.vdiID
            let h = try #require(SheepInodeHeader(bytes: try c.readInode(vid: vid, withIndex: false).data))
            #expect(h.storePolicy == 1)
            // The first 8 bytes of the index area are the B-tree header {magic 0x6274, depth 1, entries 0}.
            let root = try c.readObject(SheepOID.inode(vid: vid), offset: UInt32(SheepInodeLayout.headerSizeBytes), length: 8)
            #expect(root.data == [0x74, 0x62, 0x01, 0x00, 0, 0, 0, 0])
        }
    }
}
