// Several sheep nodes, one cluster: shared locks owned per node and inode coherence (sheep/vdi.c,
// sheep/gateway.c; SHEEPDOG-PROTOCOL.md §7.10).

#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import SheepTestServer
import SheepProtocol

extension SheepTestServer {
    func client(node: Int) throws -> SheepClient {
        try SheepClient(endpoint: .tcp(host: "127.0.0.1", port: tcpPort(node: node) ?? 0))
    }
}

private func withNodes<T>(_ n: Int, _ body: (SheepTestServer) throws -> T) throws -> T {
    try withServer({ $0.nodes = n }, body)
}

/// One request with SD_FLAG_CMD_TGT, as tgt sends its object I/O.
private func tgtCall(_ c: SheepClient, _ h: SheepRequestHeader, payload: [UInt8] = []) throws -> SheepResult {
    var h = h
    h.flags.insert(.tgt)
    return try c.call(h, payload: payload).result
}

extension SheepRequestHeader {
    var withTgt: SheepRequestHeader {
        var h = self
        h.flags.insert(.tgt)
        return h
    }
}

private func participants(_ server: SheepTestServer, _ vid: UInt32) -> [VDIState.Participant] {
    guard case .shared(let ps)? = server.cluster.vdiState(vid)?.lock else { return [] }
    return ps
}

@Suite struct SharedLocksPerNode {
    @Test func eachNodeJoinsOnceAndLaterJoinersStartInvalidated() throws {
        try withNodes(3) { server in
            let a = try server.client(node: 0), b = try server.client(node: 1), a2 = try server.client(node: 0)
            let vid = try a.newVDI(name: "vol", size: 1 << 30).header.vdiID
            #expect(try a.lookup(.lockVDI, name: "vol", lockType: .shared).result == .success)
            #expect(try b.lookup(.lockVDI, name: "vol", lockType: .shared).result == .success)
            // The owner is the node: a second client through node 0 is "already locking".
            #expect(try a2.lookup(.lockVDI, name: "vol", lockType: .shared).result == .vdiLocked)
            // add_new_participant: the first owns the inode (MODIFIED), a later one must refresh first.
            #expect(participants(server, vid) == [.init(node: 0, state: .modified), .init(node: 1, state: .invalidated)])
            // NORMAL conflicts with SHARED, through any node.
            #expect(try server.client(node: 2).lookup(.lockVDI, name: "vol").result == .vdiLocked)
            #expect(try b.release(vid: vid, lockType: .shared).result == .success)
            #expect(participants(server, vid) == [.init(node: 0, state: .modified)])
            #expect(try a.release(vid: vid, lockType: .shared).result == .success)
            #expect(server.cluster.vdiState(vid)?.lock == .unlocked)
        }
    }

    @Test func sharedConflictsWithNormal() throws {
        try withNodes(2) { server in
            let a = try server.client(node: 0), b = try server.client(node: 1)
            _ = try a.newVDI(name: "vol", size: 1 << 30)
            #expect(try a.lookup(.lockVDI, name: "vol").result == .success)
            #expect(try b.lookup(.lockVDI, name: "vol", lockType: .shared).result == .vdiLocked)
        }
    }

    @Test func atMostMaxCopiesParticipants() throws {
        try withServer { server in
            let vid = try server.client().newVDI(name: "vol", size: 1 << 30).header.vdiID
            let payload = try SheepVDIName.payload(name: "vol", tag: "")
            let h = SheepRequestHeader.vdiLookup(.lockVDI, id: 1, snapID: 0, lockType: .shared)
            var results: [SheepResult] = []
            for node in 0...SheepWire.maxCopies {
                let out = OutputBuffer()
                _ = payload.withUnsafeBytes { server.cluster.begin(h, $0, out: out, node: node) }
                results.append(SheepResponseHeader(from: UnsafeRawPointer(out.base + out.start)).result)
            }
            #expect(results.dropLast().allSatisfy { $0 == .success })
            #expect(results.last == .vdiLocked)
            #expect(participants(server, vid).count == SheepWire.maxCopies)
        }
    }

    @Test func killedNodeLeavesSharedLocksButKeepsNormalOnes() throws {
        try withNodes(2) { server in
            let a = try server.client(node: 0), b = try server.client(node: 1)
            let vid = try a.newVDI(name: "vol", size: 1 << 30).header.vdiID
            let other = try a.newVDI(name: "other", size: 1 << 30).header.vdiID
            #expect(try a.lookup(.lockVDI, name: "vol", lockType: .shared).result == .success)
            #expect(try b.lookup(.lockVDI, name: "vol", lockType: .shared).result == .success)
            #expect(try b.lookup(.lockVDI, name: "other").result == .success)
            try server.killNode(1)
            // Its connections are gone and it accepts nobody.
            #expect(throws: SheepClientError.self) { _ = try b.call(.getClusterDefault(id: 0)) }
            #expect(throws: SheepClientError.self) { _ = try server.client(node: 1).call(.getClusterDefault(id: 0)) }
            #expect(participants(server, vid) == [.init(node: 0, state: .modified)])
            #expect(server.cluster.vdiState(other)?.lock == .locked(owner: 1))
            // Started again it is a fresh node: it joins without an unlock.
            try server.startNode(1)
            let b2 = try server.client(node: 1)
            #expect(try b2.lookup(.lockVDI, name: "vol", lockType: .shared).result == .success)
            #expect(participants(server, vid).map(\.node) == [0, 1])
        }
    }

    @Test func adminKillsAndStartsNodes() throws {
        try withNodes(2) { server in
            let session = AdminSession(fd: -1, server: server)
            #expect(session.execute("node kill 1").0 == "ok")
            #expect(throws: SheepClientError.self) { _ = try server.client(node: 1) }
            #expect(session.execute("node start 1").0 == "ok")
            let again = try server.client(node: 1)
            #expect(try again.call(.getClusterDefault(id: 0)).result == .success)
            #expect(session.execute("node kill 9").0.hasPrefix("error"))
            #expect(session.execute("node stop 1").0.hasPrefix("error"))
        }
    }
}

@Suite struct InodeCoherence {
    /// A VDI with object 0 allocated and locked shared through nodes 0 (MODIFIED) and 1 (INVALIDATED).
    private func twoParticipants(_ server: SheepTestServer) throws -> (SheepClient, SheepClient, UInt32) {
        let a = try server.client(node: 0), b = try server.client(node: 1)
        let vid = try a.newVDI(name: "vol", size: 1 << 30).header.vdiID
        #expect(try a.writeObject(SheepOID.data(vid: vid, index: 0), offset: 0, data: pattern(1, 512), create: true).result == .success)
        #expect(try a.writeObject(SheepOID.inode(vid: vid), offset: SheepInodeLayout.slotOffset(0),
                                  data: withUnsafeBytes(of: vid.littleEndian) { Array($0) }).result == .success)
        #expect(try a.lookup(.lockVDI, name: "vol", lockType: .shared).result == .success)
        #expect(try b.lookup(.lockVDI, name: "vol", lockType: .shared).result == .success)
        return (a, b, vid)
    }

    private func slotWrite(_ vid: UInt32, _ idx: UInt32) -> (SheepRequestHeader, [UInt8]) {
        (.writeObject(id: 0, oid: SheepOID.inode(vid: vid), offset: SheepInodeLayout.slotOffset(idx), length: 4),
         withUnsafeBytes(of: vid.littleEndian) { Array($0) })
    }

    private func refresh(_ vid: UInt32) -> SheepRequestHeader {
        .readObject(id: 0, oid: SheepOID.inode(vid: vid), offset: 0, length: UInt32(SheepInodeLayout.clientInodeSizeBytes))
    }

    @Test func invalidatedNodeAnswersInodeInvalidatedUntilItRefreshes() throws {
        try withNodes(2) { server in
            let (_, b, vid) = try twoParticipants(server)
            let data = SheepOID.data(vid: vid, index: 0)
            #expect(try tgtCall(b, .readObject(id: 0, oid: data, offset: 0, length: 512)) == .inodeInvalidated)
            #expect(try tgtCall(b, .writeObject(id: 0, oid: data, offset: 0, length: 512), payload: pattern(2, 512)) == .inodeInvalidated)
            #expect(try tgtCall(b, .createAndWrite(id: 0, oid: SheepOID.data(vid: vid, index: 1), offset: 0, length: 512),
                                payload: pattern(2, 512)) == .inodeInvalidated)
            // tgt's stale-inode probe: a 1-byte read of the inode is not the refresh read.
            #expect(try tgtCall(b, .readObject(id: 0, oid: SheepOID.inode(vid: vid), offset: 0, length: 1)) == .inodeInvalidated)
            // Without SD_FLAG_CMD_TGT nothing is checked.
            #expect(try b.readObject(data, offset: 0, length: 512).data == pattern(1, 512))
            // The refresh read is answered and validates the node; the writer becomes SHARED too.
            #expect(try tgtCall(b, refresh(vid)) == .success)
            #expect(participants(server, vid).map(\.state) == [.shared, .shared])
            #expect(try tgtCall(b, .readObject(id: 0, oid: data, offset: 0, length: 512)) == .success)
        }
    }

    @Test func indexWriteThroughOneParticipantInvalidatesTheOthers() throws {
        try withNodes(3) { server in
            let (a, b, vid) = try twoParticipants(server)
            let c = try server.client(node: 2)
            #expect(try c.lookup(.lockVDI, name: "vol", lockType: .shared).result == .success)
            #expect(try tgtCall(b, refresh(vid)) == .success)
            #expect(try tgtCall(c, refresh(vid)) == .success)
            #expect(participants(server, vid).map(\.state) == [.shared, .shared, .shared])
            // A create does not touch the index, nor does a header write: nobody is invalidated.
            #expect(try tgtCall(b, .createAndWrite(id: 0, oid: SheepOID.data(vid: vid, index: 2), offset: 0, length: 512),
                                payload: pattern(3, 512)) == .success)
            #expect(try tgtCall(b, .writeObject(id: 0, oid: SheepOID.inode(vid: vid), offset: 0, length: 4),
                                payload: [0x76, 0x6f, 0x6c, 0]) == .success)
            #expect(participants(server, vid).map(\.state) == [.shared, .shared, .shared])
            // The slot write through b: b MODIFIED, a and c INVALIDATED.
            let (h, p) = slotWrite(vid, 2)
            #expect(try tgtCall(b, h, payload: p) == .success)
            #expect(participants(server, vid).map(\.state) == [.invalidated, .modified, .invalidated])
            #expect(try tgtCall(a, .readObject(id: 0, oid: SheepOID.data(vid: vid, index: 0), offset: 0, length: 512)) == .inodeInvalidated)
            #expect(try tgtCall(b, .readObject(id: 0, oid: SheepOID.data(vid: vid, index: 2), offset: 0, length: 512)) == .success)
            // a refreshes: a and b SHARED, c still has to refresh by itself.
            #expect(try tgtCall(a, refresh(vid)) == .success)
            #expect(participants(server, vid).map(\.state) == [.shared, .shared, .invalidated])
            // A write by a node that does not participate invalidates nobody.
            let outsider = try server.client(node: 2)
            #expect(try c.release(vid: vid, lockType: .shared).result == .success)
            #expect(try outsider.call(h, payload: p).result == .success)
            #expect(participants(server, vid).map(\.state) == [.shared, .shared])
        }
    }

    /// Sheep's window (IndexWriteHold.swift): the slot write through b has invalidated a but not changed the
    /// index yet; a's refresh read then returns the old index and validates a, so once the write lands a is
    /// valid with a stale index, and its tgt requests are answered as for a current one.
    @Test func aRefreshReadBetweenTheInvalidationAndTheIndexWriteLeavesTheNodeValidWithTheOldIndex() throws {
        try withNodes(2) { server in
            let (a, b, vid) = try twoParticipants(server)
            #expect(try tgtCall(b, refresh(vid)) == .success)
            #expect(participants(server, vid).map(\.state) == [.shared, .shared])
            server.cluster.indexHold.arm(slot: 3)
            let (h, p) = slotWrite(vid, 3)
            nonisolated(unsafe) var result: SheepResult? = nil
            let writer = startThread { result = try? tgtCall(b, h, payload: p) }
            #expect(server.cluster.indexHold.waitHeld())
            #expect(participants(server, vid).map(\.state) == [.invalidated, .modified])
            let inode = try a.call(refresh(vid).withTgt).data
            #expect(inode.withUnsafeBytes { SheepInodeLayout.loadSlot($0.baseAddress!, 3) } == 0,
                    "the refresh read returns the index without slot 3")
            #expect(participants(server, vid).map(\.state) == [.shared, .shared])
            server.cluster.indexHold.release()
            if let writer { pthread_join(writer, nil) }
            #expect(result == .success)
            #expect(participants(server, vid).map(\.state) == [.shared, .shared], "nobody invalidates a again")
            #expect(try tgtCall(a, .readObject(id: 0, oid: SheepOID.inode(vid: vid), offset: SheepInodeLayout.slotOffset(3),
                                               length: 4)) == .success)
            #expect(try a.readObject(SheepOID.inode(vid: vid), offset: SheepInodeLayout.slotOffset(3), length: 4).data
                    == withUnsafeBytes(of: vid.littleEndian) { Array($0) }, "the slot read shows the write")
        }
    }

    @Test func aClusterWithoutLockingHasNoCoherence() throws {
        try withServer({ $0.nodes = 2; $0.cluster.useLock = false }) { server in
            let a = try server.client(node: 0), b = try server.client(node: 1)
            let vid = try a.newVDI(name: "vol", size: 1 << 30).header.vdiID
            #expect(try a.lookup(.lockVDI, name: "vol", lockType: .shared).result == .success)
            #expect(try b.lookup(.lockVDI, name: "vol", lockType: .shared).result == .success)
            let (h, p) = slotWrite(vid, 0)
            #expect(try tgtCall(a, h, payload: p) == .success)
            #expect(try tgtCall(b, .readObject(id: 0, oid: SheepOID.inode(vid: vid), offset: 0, length: 1)) == .success)
            #expect(server.cluster.vdiState(vid)?.lock == .unlocked)
        }
    }
}
