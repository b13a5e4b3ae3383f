import Testing
@testable import SheepTestServer
import SheepProtocol
import TestSupport

@Suite struct VDITableBehaviour {
    @Test func createLandsOnTheNameHashAndRefusesADuplicate() throws {
        try withServer { server in
            let c = try server.client()
            let r = try c.newVDI(name: "test", size: 1 << 30)
            #expect(r.result == .success)
            #expect(r.header.vdiID == 0x7c2b25)  // sd_hash_vdi("test")
            #expect(r.header.vdiCopies == 3)
            #expect(r.header.vdiBlockSizeShift == 22)
            #expect(r.header.opcode == .newVDI)
            #expect(try c.newVDI(name: "test", size: 1 << 30).result == .vdiExist)

            let info = try c.lookup(.getVDIInfo, name: "test")
            #expect(info.result == .success && info.header.vdiID == 0x7c2b25)
            #expect(info.header.vdiCopies == 3 && info.header.vdiBlockSizeShift == 22)
            #expect(try c.lookup(.getVDIInfo, name: "nope").result == .noVDI)
            #expect(try c.lookup(.getVDIInfo, name: "test", tag: "t").result == .noTag)
            #expect(try c.lookup(.getVDIInfo, name: "test", snapID: 1).result == .noTag)

            let h = try c.readInode(vid: 0x7c2b25, withIndex: false)
            let inode = try #require(SheepInodeHeader(bytes: h.data))
            #expect(inode.name == "test" && inode.vdiSize == 1 << 30 && inode.vdiID == 0x7c2b25)
            #expect(inode.snapID == 1 && inode.nrCopies == 3 && inode.blockSizeShift == 22 && !inode.isSnapshot)
        }
    }

    @Test func collidingNamesTakeTheNextFreeVID() throws {
        // Find two names with the same 24-bit hash (birthday bound: a few thousand names).
        var seen: [UInt32: String] = [:]
        var pair: (String, String)?
        for i in 0..<200_000 {
            let name = "v\(i)"
            let h = SheepVDIName.hash(name)
            if let other = seen[h] { pair = (other, name); break }
            seen[h] = name
        }
        let (a, b) = try #require(pair)
        try withServer { server in
            let c = try server.client()
            let va = try c.newVDI(name: a, size: 1 << 20).header.vdiID
            let vb = try c.newVDI(name: b, size: 1 << 20).header.vdiID
            #expect(va == SheepVDIName.firstCandidateVID(a))
            #expect(vb == va + 1)
            #expect(try c.findVDI(name: a) == va)
            #expect(try c.findVDI(name: b) == vb)
        }
    }

    @Test func badVDIRequestsGetInvalidParms() throws {
        try withServer { server in
            let c = try server.client()
            // NEW_VDI needs exactly the 256-byte name buffer.
            var h = SheepRequestHeader.newVDI(id: 0, size: 1 << 20)
            h.dataLength = 512
            #expect(try c.call(h, payload: [UInt8](repeating: 0x61, count: 512)).result == .invalidParms)
            // Lookups take 256 or 512 bytes.
            var l = SheepRequestHeader.vdiLookup(.getVDIInfo, id: 0)
            l.dataLength = 300
            #expect(try c.call(l, payload: [UInt8](repeating: 0x61, count: 300)).result == .invalidParms)
            // The 256-byte form (libsheepdog) works.
            _ = try c.newVDI(name: "x", size: 1 << 20)
            var short = SheepRequestHeader.vdiLookup(.getVDIInfo, id: 0)
            short.dataLength = 256
            #expect(try c.call(short, payload: try SheepVDIName.payload(name: "x", includeTag: false)).result == .success)
        }
    }

    @Test func readVDIsIsTheInUseBitmap() throws {
        try withServer { server in
            let c = try server.client()
            let vid = try c.newVDI(name: "test", size: 1 << 20).header.vdiID
            let bitmap = try c.readVDIBitmap()
            #expect(bitmap.count == 2 * 1024 * 1024)
            #expect(bitmap[Int(vid) / 8] & (1 << (vid % 8)) != 0)
            #expect(bitmap.reduce(0) { $0 + $1.nonzeroBitCount } == 1)
            var wrong = SheepRequestHeader.readVDIs(id: 0)
            wrong.dataLength = 4096
            #expect(try c.call(wrong).result == .invalidParms)
        }
    }

    @Test func clusterDefaultAndFlush() throws {
        try withServer({ $0.cluster.copies = 2; $0.cluster.blockSizeShift = 23 }) { server in
            let c = try server.client()
            let d = try c.call(.getClusterDefault(id: 0))
            #expect(d.result == .success && d.header.defaultCopies == 2 && d.header.defaultBlockSizeShift == 23)
            #expect(d.header.defaultCopyPolicy == 0)
            let vid = try c.newVDI(name: "f", size: 1 << 30).header.vdiID
            #expect(try c.call(.flushVDI(id: 0, vid: vid)).result == .invalidParms)  // v1.0: never flush again
            let info = try c.lookup(.getVDIInfo, name: "f")
            #expect(info.header.vdiCopies == 2 && info.header.vdiBlockSizeShift == 23)
        }
    }

    @Test func protocolVersionChecks() throws {
        try withServer { server in
            let c = try server.client()
            var h = SheepRequestHeader.getClusterDefault(id: 0)
            h.protoVersion = 3
            #expect(try c.call(h).result == .verMismatch)
            h.protoVersion = 0  // 0 skips the check
            #expect(try c.call(h).result == .success)
            h.protoVersion = 2
            #expect(try c.call(h).result == .success)
            var internalOp = SheepRequestHeader(opcode: SheepOpcode(rawValue: 0xBE))
            #expect(try c.call(internalOp).result == .verMismatch)
            internalOp.protoVersion = 0x0A
            #expect(try c.call(internalOp).result == .invalidParms)
            #expect(try c.call(SheepRequestHeader(opcode: SheepOpcode(rawValue: 0x30))).result == .invalidParms)
        }
    }

    @Test func payloadWithoutWriteFlagClosesTheConnection() throws {
        try withServer { server in
            let c = try server.client()
            var h = SheepRequestHeader.writeObject(id: 9, oid: 1, offset: 0, length: 4096)
            h.flags = []
            try c.send(h, payload: [UInt8](repeating: 0xEE, count: 4096))
            #expect(throws: SheepClientError.self) { _ = try c.receive() }
            // The server is fine: a new connection works.
            #expect(try server.client().call(.getClusterDefault(id: 0)).result == .success)
        }
    }
}

@Suite struct Locks {
    @Test func normalLockIsExclusiveUntilReleased() throws {
        try withServer { server in
            let a = try server.client(), b = try server.client()
            let vid = try a.newVDI(name: "vol", size: 1 << 30).header.vdiID
            let first = try a.lookup(.lockVDI, name: "vol")
            #expect(first.result == .success && first.header.vdiID == vid)
            #expect(try b.lookup(.lockVDI, name: "vol").result == .vdiLocked)
            #expect(try b.lookup(.lockVDI, name: "vol", lockType: .shared).result == .vdiLocked)
            // GET_VDI_INFO is not a lock.
            #expect(try b.lookup(.getVDIInfo, name: "vol").result == .success)
            #expect(try a.release(vid: vid).result == .success)
            #expect(try b.lookup(.lockVDI, name: "vol").result == .success)
            // Releasing something not locked still answers SUCCESS (HEAD).
            #expect(try a.release(vid: 0x123456).result == .success)
        }
    }

    @Test func sharedLockThroughOneSheepAdmitsOneParticipant() throws {
        try withServer { server in
            let a = try server.client(), b = try server.client()
            let vid = try a.newVDI(name: "vol", size: 1 << 30).header.vdiID
            #expect(try a.lookup(.lockVDI, name: "vol", lockType: .shared).result == .success)
            // The owner is the sheep node: a second participant through the same node is refused.
            #expect(try b.lookup(.lockVDI, name: "vol", lockType: .shared).result == .vdiLocked)
            #expect(try b.lookup(.lockVDI, name: "vol").result == .vdiLocked)
            #expect(try a.release(vid: vid, lockType: .shared).result == .success)
            #expect(try b.lookup(.lockVDI, name: "vol").result == .success)
        }
    }

    @Test func locksSurviveTheClientDisconnecting() throws {
        try withServer { server in
            let vid: UInt32
            do {
                let a = try server.client()
                vid = try a.newVDI(name: "vol", size: 1 << 30).header.vdiID
                #expect(try a.lookup(.lockVDI, name: "vol").result == .success)
            }
            let b = try server.client()
            #expect(try b.lookup(.lockVDI, name: "vol").result == .vdiLocked)
            try DogOperations(client: b).unlock(name: "vol")
            #expect(try b.lookup(.lockVDI, name: "vol").result == .success)
            _ = vid
        }
    }

    @Test func noLockClusterTreatsLockAsLookup() throws {
        try withServer({ $0.cluster.useLock = false }) { server in
            let a = try server.client(), b = try server.client()
            let vid = try a.newVDI(name: "vol", size: 1 << 30).header.vdiID
            #expect(try a.lookup(.lockVDI, name: "vol").header.vdiID == vid)
            #expect(try b.lookup(.lockVDI, name: "vol").result == .success)
            #expect(try b.lookup(.lockVDI, name: "missing").result == .noVDI)
        }
    }
}

@Suite struct HostileInput {
    @Test func randomHeadersNeverBringTheServerDown() throws {
        try withServer { server in
            var rng = SeededRandom(seed: 99)
            let setup = try server.client()
            let vid = try setup.newVDI(name: "vol", size: 1 << 30).header.vdiID
            let opcodes: [UInt8] = [0x01, 0x02, 0x03, 0x04, 0x05, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x30, 0x80, 0xFF]
            var c = try server.client()
            var answered = 0, closed = 0
            var results = Set<UInt32>()
            for _ in 0..<1500 {
                var h = SheepRequestHeader()
                h.words.word0 = rng.next(); h.words.word1 = rng.next(); h.words.word2 = rng.next()
                h.words.word3 = rng.next(); h.words.word4 = rng.next(); h.words.word5 = rng.next()
                h.opcode = SheepOpcode(rawValue: opcodes[rng.below(opcodes.count)])
                h.protoVersion = UInt8(rng.below(4))
                h.dataLength = UInt32(rng.below(3) == 0 ? rng.below(1 << 16) : rng.below(600))
                if rng.below(2) == 0 { h.oid = SheepOID.data(vid: vid, index: UInt32(rng.below(4))) }
                if rng.below(3) == 0 { h.oid = SheepOID.inode(vid: vid) }
                if rng.below(4) == 0 { h.objOffset = UInt32(rng.below(8192)) }
                let payload = h.flags.contains(.write) ? [UInt8](repeating: UInt8(rng.below(256)), count: Int(h.dataLength)) : []
                do {
                    results.insert(try c.call(h, payload: payload).result.rawValue)
                    answered += 1
                } catch {
                    // The server may close a connection on a request that would desynchronise the stream.
                    closed += 1
                    c = try server.client()
                }
            }
            #expect(answered > 500 && closed > 10)
            #expect(results.isSuperset(of: [SheepResult.success, .invalidParms, .verMismatch, .noObj].map(\.rawValue)))
            #expect(try server.client().call(.getClusterDefault(id: 1)).result == .success)
        }
    }
}
