#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import SheepTestServer
import SheepProtocol

@Suite struct PipelinedReplies {
    /// 64 reads in flight on connection 0 of a fresh reorder-mode server; returns the reply id order.
    private func replyOrder(seed: UInt64) throws -> [UInt32] {
        // A long idle flush so that a burst split by the network still fills whole windows.
        try withServer({ $0.order = .reorder; $0.reorderWindow = 8; $0.seed = seed; $0.reorderIdleMilliseconds = 150 }) { server in
            let setup = try server.client()  // connection 0
            let vid = try setup.newVDI(name: "vol", size: 1 << 30).header.vdiID
            let oid = SheepOID.data(vid: vid, index: 0)
            #expect(try setup.writeObject(oid, offset: 0, data: pattern(1, 64 * 512), create: true).result == .success)
            let reqs = (0..<64).map { i in
                (SheepRequestHeader.readObject(id: UInt32(1000 + i), oid: oid, offset: UInt32(i * 512), length: 512), [UInt8]())
            }
            let replies = try pipeline(setup, reqs)
            let expected = pattern(1, 64 * 512)
            for r in replies {
                let i = Int(r.header.id) - 1000
                #expect(r.result == .success)
                #expect(r.data == Array(expected[i * 512..<(i + 1) * 512]))
            }
            return replies.map(\.header.id)
        }
    }

    @Test func reorderModeAnswersOutOfOrderAndDeterministically() throws {
        let first = try replyOrder(seed: 42)
        #expect(first.sorted() == (1000..<1064).map(UInt32.init))
        #expect(first != first.sorted())
        let outOfOrder = zip(first, first.dropFirst()).filter { $0 > $1 }.count
        #expect(outOfOrder > 4)
        #expect(try replyOrder(seed: 42) == first)
        #expect(try replyOrder(seed: 43) != first)
        // Windows of 8: every reply comes from the window its request was in.
        for (pos, id) in first.enumerated() { #expect(Int(id - 1000) / 8 == pos / 8) }
    }

    @Test func fifoModeAnswersInOrder() throws {
        try withServer({ $0.order = .fifo }) { server in
            let c = try server.client()
            let reqs = (0..<50).map { i in (SheepRequestHeader.getClusterDefault(id: UInt32(i)), [UInt8]()) }
            #expect(try pipeline(c, reqs).map(\.header.id) == (0..<50).map(UInt32.init))
        }
    }

    @Test func secondConcurrentCreateSucceedsWithoutWriting() throws {
        // Step by step: create A opens its temp object, create B of the same oid finds it in flight and answers
        // SUCCESS at once without writing, then A becomes visible. Only A's bytes exist.
        try withServer { server in
            let c = try server.client()
            let vid = try c.newVDI(name: "vol", size: 1 << 30).header.vdiID
            let oid = SheepOID.data(vid: vid, index: 0)
            let out = OutputBuffer()
            let a = pattern(1, 4096), b = pattern(2, 4096)
            let ha = SheepRequestHeader.createAndWrite(id: 1, oid: oid, offset: 0, length: 4096)
            let hb = SheepRequestHeader.createAndWrite(id: 2, oid: oid, offset: 4096, length: 4096)
            let stepA = a.withUnsafeBytes { server.cluster.begin(ha, $0, out: out) }
            guard case .pending(let phase) = stepA else { Issue.record("create should take two steps"); return }
            #expect(out.isEmpty)
            #expect(!server.cluster.hasObject(oid))
            let stepB = b.withUnsafeBytes { server.cluster.begin(hb, $0, out: out) }
            guard case .finished = stepB else { Issue.record("the second create should answer at once"); return }
            _ = server.cluster.resume(ha, phase: phase, out: out)
            #expect(out.pendingBytes == 96)
            let replies = (0..<2).map { i in SheepResponseHeader(from: UnsafeRawPointer(out.base + out.start + SheepWire.headerSizeBytes * i)) }
            #expect(replies.map(\.id) == [2, 1])
            #expect(replies.allSatisfy { $0.result == .success })
            #expect(try c.readObject(oid, offset: 0, length: 4096).data == a)
            #expect(try c.readObject(oid, offset: 4096, length: 4096).data == [UInt8](repeating: 0, count: 4096))
        }
    }

    @Test func pipelinedCreatesOfOneObjectKeepExactlyOneWriter() throws {
        // Two creates of one object in one scheduling window: whichever interleaving the seed picks, both answer
        // SUCCESS and exactly one writer's bytes survive (the other was skipped or replaced). A client that
        // does not serialise creates loses data silently.
        var survivors = Set<UInt32>()
        try withServer({ $0.order = .reorder; $0.reorderWindow = 2; $0.seed = 7 }) { server in
            let setup = try server.client()
            let vid = try setup.newVDI(name: "vol", size: 1 << 30).header.vdiID
            for i in 0..<24 {
                let c = try server.client()
                let oid = SheepOID.data(vid: vid, index: UInt32(i))
                let a = pattern(UInt8(i), 4096), b = pattern(UInt8(i + 100), 4096)
                let replies = try pipeline(c, [
                    (.createAndWrite(id: 1, oid: oid, offset: 0, length: 4096), a),
                    (.createAndWrite(id: 2, oid: oid, offset: 4096, length: 4096), b),
                ])
                #expect(replies.allSatisfy { $0.result == .success })
                let hasA = try c.readObject(oid, offset: 0, length: 4096).data == a
                let hasB = try c.readObject(oid, offset: 4096, length: 4096).data == b
                #expect(hasA != hasB, "exactly one create's data survives")
                survivors.insert(hasA ? 1 : 2)
            }
        }
        #expect(survivors == [1, 2], "the scheduler interleaves both ways")
    }

    @Test func writeRacingAheadOfItsCreateGetsNoObj() throws {
        var noObj = 0
        try withServer({ $0.order = .reorder; $0.reorderWindow = 2; $0.seed = 3 }) { server in
            let setup = try server.client()
            let vid = try setup.newVDI(name: "vol", size: 1 << 30).header.vdiID
            for i in 0..<16 {
                let c = try server.client()
                let oid = SheepOID.data(vid: vid, index: UInt32(i))
                let replies = try pipeline(c, [
                    (.createAndWrite(id: 1, oid: oid, offset: 0, length: 512), pattern(1, 512)),
                    (.writeObject(id: 2, oid: oid, offset: 512, length: 512), pattern(2, 512)),
                ])
                let w = try #require(replies.first { $0.header.id == 2 })
                #expect(w.result == .success || w.result == .noObj)
                if w.result == .noObj { noObj += 1 }
            }
        }
        #expect(noObj > 0)
    }

    @Test func snapshotWindowShowsReadonlyBeforeTheNewInodeExists() throws {
        // NEW_VDI(snapshot) is two steps: the old VID turns read-only first, the new inode is written second.
        // A request running in between sees READONLY for the old data and NO_OBJ for the new inode (§7.9).
        var sawMissingInode = 0, sawReadonly = 0
        try withServer({ $0.order = .reorder; $0.reorderWindow = 3; $0.seed = 11 }) { server in
            let setup = try server.client()
            var current = try setup.newVDI(name: "vol", size: 1 << 30).header.vdiID
            #expect(try setup.writeObject(SheepOID.data(vid: current, index: 0), offset: 0, data: pattern(1, 512),
                                          create: true).result == .success)
            for _ in 0..<12 {
                let c = try server.client()
                let next = current + 1
                var snap = SheepRequestHeader.newVDI(id: 1, size: 1 << 30, baseVID: current, snapshot: true)
                snap.vdiCopies = 3
                let replies = try pipeline(c, [
                    (snap, try SheepVDIName.payload(name: "vol", includeTag: false)),
                    (.readObject(id: 2, oid: SheepOID.inode(vid: next), offset: 0, length: 4664), []),
                    (.writeObject(id: 3, oid: SheepOID.data(vid: current, index: 0), offset: 0, length: 512), pattern(2, 512)),
                ])
                let s = try #require(replies.first { $0.header.id == 1 })
                #expect(s.result == .success && s.header.vdiID == next)
                let inodeRead = try #require(replies.first { $0.header.id == 2 })
                let write = try #require(replies.first { $0.header.id == 3 })
                #expect(inodeRead.result == .success || inodeRead.result == .noObj)
                #expect(write.result == .success || write.result == .readonly)
                let snapDone = replies.firstIndex { $0.header.id == 1 }!
                if inodeRead.result == .noObj {
                    sawMissingInode += 1
                    #expect(replies.firstIndex { $0.header.id == 2 }! < snapDone)
                }
                if write.result == .readonly && replies.firstIndex(where: { $0.header.id == 3 })! < snapDone { sawReadonly += 1 }
                current = next
                // The working VDI moved on: write its object through COW so the next round has data to hit.
                #expect(try c.writeObject(SheepOID.data(vid: current, index: 0), offset: 0, data: pattern(3, 512),
                                          create: true, cowOid: SheepOID.data(vid: current - 1, index: 0)).result == .success)
            }
        }
        #expect(sawMissingInode > 0)
        #expect(sawReadonly > 0)
    }

    @Test func randomModeKeepsManyRequestsInFlightAcrossConnections() throws {
        try withServer { server in
            let setup = try server.client()
            let vid = try setup.newVDI(name: "vol", size: 1 << 30).header.vdiID
            for i in 0..<4 {
                #expect(try setup.writeObject(SheepOID.data(vid: vid, index: UInt32(i)), offset: 0,
                                              data: pattern(UInt8(i), 65536), create: true).result == .success)
            }
            let clients = try (0..<4).map { _ in try server.client() }
            for (n, c) in clients.enumerated() {
                let reqs = (0..<128).map { i in
                    (SheepRequestHeader.readObject(id: UInt32(i), oid: SheepOID.data(vid: vid, index: UInt32(n)),
                                                   offset: UInt32(i % 16) * 4096, length: 4096), [UInt8]())
                }
                for (h, p) in reqs { try c.send(h, payload: p) }
            }
            for (n, c) in clients.enumerated() {
                let expected = pattern(UInt8(n), 65536)
                var ids = Set<UInt32>()
                for _ in 0..<128 {
                    let r = try c.receive()
                    let i = Int(r.header.id)
                    ids.insert(r.header.id)
                    #expect(r.data == Array(expected[(i % 16) * 4096..<(i % 16 + 1) * 4096]))
                }
                #expect(ids.count == 128)
            }
        }
    }
}
