// The NBD server through real NBD clients (libnbd's nbdinfo and nbdcopy, QEMU's qemu-img and qemu-io, fio's
// nbd engine) and a raw socket for what no client sends. Every daemon listens for NBD on 127.0.0.1 port 0; the
// port comes from `ringtgtadm --lld nbd --op show --mode portal`.
//
// Run:   swift test --filter EndToEndTests.EndToEnd/NBD

import Foundation
import SheepProtocol
import Testing

extension EndToEnd {
    @Suite("NBD")
    struct NBD {
        static let imageBytes = 64 * mebibyte
        static let toolTimeoutSeconds = 300.0

        /// NBD is ringtgtd's own: the suite does not run against tgt.
        static func requireRingtgt() throws {
            if Peer.current != .ringtgt {
                try Test.cancel(Comment(rawValue: "NBD is ringtgtd's (RINGTGT_E2E_PEER=\(Peer.current.rawValue))"))
            }
        }

        static func withNBDTarget<R>(cores: Int = 1, luns: [LUNSpec], _ body: (RunningTarget) throws -> R) throws -> R {
            try requireRingtgt()
            return try withTarget(cores: cores, luns: luns, nbdPortals: [.ipv4Loopback], body)
        }

        /// `nbdinfo --json` (or `--list --json`): the exports it reports.
        static func nbdinfo(_ t: RunningTarget, _ args: [String]) throws -> [[String: Any]] {
            let r = try t.tool("nbdinfo", ["--json"] + args)
            try #require(r.succeeded, "\(r)")
            let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
            return try #require(json?["exports"] as? [[String: Any]], "nbdinfo output: \(r.stdout)")
        }

        /// nbdinfo reports the LUN's size, the transmission flags we advertise and our block size limits.
        @Test func nbdinfoShowsSizeFlagsAndBlockSizes() throws {
            try NBD.withNBDTarget(luns: [.file(bytes: NBD.imageBytes)]) { t in
                let e = try #require(try NBD.nbdinfo(t, [t.nbdURL(lun: 1)]).first)
                #expect(e["export-name"] as? String == "\(t.iqn)/1")
                #expect((e["export-size"] as? NSNumber)?.int64Value == NBD.imageBytes)
                for flag in ["can_flush", "can_fua", "can_trim", "can_zero", "can_multi_conn", "can_cache",
                             "can_fast_zero", "can_df"] {
                    #expect(e[flag] as? Bool == true, "\(flag): \(e)")
                }
                #expect(e["is_read_only"] as? Bool == false)
                #expect((e["block_size_minimum"] as? NSNumber)?.intValue == 1)
                #expect((e["block_size_preferred"] as? NSNumber)?.intValue == 4096)
                #expect((e["block_size_maximum"] as? NSNumber)?.intValue == 262_144)
            }
        }

        /// `nbdinfo --list` names every LUN as IQN/LUN; the empty name is LUN 1 of the first target.
        @Test func listNamesEveryLUNAndTheEmptyNameIsTheFirst() throws {
            try NBD.withNBDTarget(luns: [.file(bytes: 8 * mebibyte), .null(bytes: 16 * mebibyte)]) { t in
                let all = try NBD.nbdinfo(t, ["--list", "nbd://\(t.nbdEndpoint.host):\(t.nbdEndpoint.port)"])
                #expect(all.compactMap { $0["export-name"] as? String } == ["\(t.iqn)/1", "\(t.iqn)/2"])
                let first = try #require(try NBD.nbdinfo(t, [t.nbdURL(export: "")]).first)
                #expect((first["export-size"] as? NSNumber)?.int64Value == 8 * mebibyte)
                let second = try #require(try NBD.nbdinfo(t, [t.nbdURL(lun: 2)]).first)
                #expect((second["export-size"] as? NSNumber)?.int64Value == 16 * mebibyte)
                let missing = try t.tool("nbdinfo", [t.nbdURL(lun: 9)])
                #expect(!missing.succeeded)
            }
        }

        /// nbdcopy puts 64 MiB of random data on a LUN and takes it back out, byte-exact, on one and two cores.
        @Test(arguments: [1, 2])
        func nbdcopyRoundTripIsByteExact(cores: Int) throws {
            try NBD.withNBDTarget(cores: cores, luns: [.file(bytes: NBD.imageBytes)]) { t in
                let seed = UInt64(0xDB_0000 + cores)
                let source = try t.scratch.makeRandomFile("source.img", bytes: Int(NBD.imageBytes), seed: seed)
                let back = t.scratch.path("back.img")
                let put = try t.tool("nbdcopy", [source.path, t.nbdURL()], timeoutSeconds: NBD.toolTimeoutSeconds)
                try #require(put.succeeded, "\(put)")
                let get = try t.tool("nbdcopy", [t.nbdURL(), back.path], timeoutSeconds: NBD.toolTimeoutSeconds)
                try #require(get.succeeded, "\(get)")
                let viaNBD = try firstDifference(source, back)
                #expect(viaNBD == nil, "read back through NBD (seed \(seed)): \(viaNBD ?? "")")
                let onDisk = try firstDifference(source, try #require(t.lunFiles[1]))
                #expect(onDisk == nil, "backing file (seed \(seed)): \(onDisk ?? "")")
            }
        }

        /// qemu-img convert in and out through the default export (`nbd://HOST:PORT`, as qemu-nbd serves it).
        @Test func qemuImgConvertThroughTheDefaultExportIsByteExact() throws {
            try NBD.withNBDTarget(cores: 2, luns: [.file(bytes: NBD.imageBytes)]) { t in
                let seed: UInt64 = 0xDB_1111
                let source = try t.scratch.makeRandomFile("source.img", bytes: Int(NBD.imageBytes), seed: seed)
                let back = t.scratch.path("back.img")
                let url = "nbd://\(t.nbdEndpoint.host):\(t.nbdEndpoint.port)"
                try t.qemuImgRoundTrip(source, via: url, into: back, timeoutSeconds: NBD.toolTimeoutSeconds)
                let diff = try firstDifference(source, back)
                #expect(diff == nil, "qemu-img through NBD (seed \(seed)): \(diff ?? "")")
            }
        }

        /// qemu-io writes patterns at queue depth (unaligned ones too), zeroes and discards ranges, flushes, and reads
        /// everything back; the backing file holds exactly that.
        @Test func qemuIOWritesZeroesAndDiscardsThenReadsBack() throws {
            try NBD.withNBDTarget(luns: [.file(bytes: 16 * mebibyte)]) { t in
                let lengths = [4096, 65536, 262_144, 3000]
                var regions: [PatternRegion] = []
                for k in 0..<24 {
                    let offset = Int64(k) * 512 * 1024 + Int64(k % 3) * 1000
                    regions.append(PatternRegion(offset: offset, length: lengths[k % 4], pattern: UInt8(1 + k)))
                }
                var args = QemuIOScript.writeThenVerify(regions)
                // Overwrite two regions with zeros (one as a hole, one allocated) and discard a third.
                args += ["-c", "write -z \(regions[1].offset) \(regions[1].length)",
                         "-c", "write -z -u \(regions[5].offset) \(regions[5].length)",
                         "-c", "discard \(regions[9].offset) \(regions[9].length)",
                         "-c", "read -P 0 \(regions[1].offset) \(regions[1].length)",
                         "-c", "read -P 0 \(regions[5].offset) \(regions[5].length)",
                         "-c", "flush"]
                let r = try t.tool("qemu-io", ["-f", "raw"] + args + [t.nbdURL()], timeoutSeconds: NBD.toolTimeoutSeconds)
                #expect(r.succeeded, "\(r)")
                let report = QemuIOReport(r.stdout + r.stderr)
                #expect(report.errorLines.isEmpty, "\(report.errorLines)")
                #expect(report.wroteOffsets.count >= regions.count)
                let kept = regions.enumerated().filter { ![1, 5, 9].contains($0.offset) }.map(\.element)
                let problems = try verifyBackingFile(try #require(t.lunFiles[1]), regions: kept, fileBytes: 16 * mebibyte)
                #expect(problems.isEmpty, "\(problems)")
            }
        }

        /// fio's nbd engine (libnbd) writes with crc32c headers at queue depth 16 and verifies every block.
        @Test func fioVerifyJobPasses() throws {
            try NBD.withNBDTarget(cores: 2, luns: [.file(bytes: 32 * mebibyte)]) { t in
                let r = try t.tool("fio", ["--name=nbd-verify", "--ioengine=nbd", "--uri=\(t.nbdURL())", "--rw=randwrite",
                                           "--bs=4k", "--size=16m", "--iodepth=16", "--verify=crc32c",
                                           "--do_verify=1", "--verify_fatal=1",
                                           "--verify_state_save=0"],
                                   timeoutSeconds: NBD.toolTimeoutSeconds)
                #expect(r.succeeded, "\(r)")
                #expect(r.stdout.contains("err= 0"), "\(r)")
            }
        }

        /// A read-only LUN is advertised READ_ONLY and a write sent anyway is refused with EPERM; reads work.
        @Test func readOnlyLUNRefusesWritesWithEPERM() throws {
            try NBD.withNBDTarget(luns: []) { t in
                let image = try t.scratch.makeSparseFile("ro.img", bytes: 8 * mebibyte)
                try t.admin.must(["--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1",
                                  "--backing-store", image.path, "--params", "readonly=1"])
                let e = try #require(try NBD.nbdinfo(t, [t.nbdURL()]).first)
                #expect(e["is_read_only"] as? Bool == true)
                let c = try RawNBDClient(t.nbdEndpoint)
                try c.attach(export: "\(t.iqn)/1")
                #expect(c.transmissionFlags & 0x2 != 0)
                c.request(type: 1, cookie: 11, offset: 0, length: 4096, payload: [UInt8](repeating: 0xAB, count: 4096))
                #expect(c.reply()?.error == 1)
                c.request(type: 4, cookie: 12, offset: 0, length: 4096)
                #expect(c.reply()?.error == 1)
                c.request(type: 0, cookie: 13, offset: 0, length: 4096)
                let read = c.reply(dataBytes: 4096)
                #expect(read?.error == 0 && read?.cookie == 13 && read?.data == [UInt8](repeating: 0, count: 4096))
                #expect(try firstDifference(image, t.scratch.makeSparseFile("zero.img", bytes: 8 * mebibyte)) == nil)
            }
        }

        /// A null LUN's NBD READ is answered from a read-only zero region, not from its zeroed slot: the slot a
        /// READ takes is the one the WRITE before it just filled, so a reply sent from it would carry the
        /// written bytes.
        @Test func aNullExportReadsZerosAfterWritesFilledItsBuffers() throws {
            try NBD.withNBDTarget(luns: [.null(bytes: 8 * mebibyte)]) { t in
                let c = try RawNBDClient(t.nbdEndpoint)
                try c.attach(export: "\(t.iqn)/1")
                let bytes = 128 * 1024
                for round in 0..<3 {
                    let cookie = UInt64(round) * 2
                    c.request(type: 1, cookie: cookie, offset: 0, length: UInt32(bytes),
                              payload: [UInt8](repeating: 0xA0 &+ UInt8(round), count: bytes))
                    #expect(c.reply()?.error == 0, "WRITE, round \(round)")
                    c.request(type: 0, cookie: cookie + 1, offset: 0, length: UInt32(bytes))
                    let read = c.reply(dataBytes: bytes)
                    #expect(read?.error == 0 && read?.cookie == cookie + 1)
                    #expect(read?.data.count == bytes && read?.data.allSatisfy { $0 == 0 } == true,
                            "round \(round): a null export's READ returned non-zero bytes")
                }
            }
        }

        /// A target whose ACL admits another address is neither listed nor served; the client is told so.
        @Test func aclRefusesOtherAddresses() throws {
            try NBD.withNBDTarget(luns: [.null(bytes: 8 * mebibyte)]) { t in
                let other = "\(RunningTarget.iqnPrefix):private"
                try t.admin.newTarget(tid: 2, name: other)
                try t.admin.newNullLUN(tid: 2, lun: 1, bytes: 8 * mebibyte, peer: t.peer)
                try t.admin.bind(tid: 2, initiatorAddress: "192.0.2.1")
                let all = try NBD.nbdinfo(t, ["--list", "nbd://\(t.nbdEndpoint.host):\(t.nbdEndpoint.port)"])
                #expect(all.compactMap { $0["export-name"] as? String } == ["\(t.iqn)/1"])
                let refused = try t.tool("nbdinfo", [t.nbdURL(export: "\(other)/1")])
                #expect(!refused.succeeded, "\(refused)")
                let c = try RawNBDClient(t.nbdEndpoint)
                #expect(throws: RawClientError.self) { try c.attach(export: "\(other)/1") }
            }
        }

        /// Bad request magic, garbage in the handshake, an oversized write and unknown commands: only the offending
        /// connection is closed (or gets an error), and a client on another connection carries on.
        @Test func badInputClosesOnlyThatConnection() throws {
            try NBD.withNBDTarget(cores: 1, luns: [.file(bytes: 8 * mebibyte)]) { t in
                let good = try RawNBDClient(t.nbdEndpoint)
                try good.attach(export: "\(t.iqn)/1")
                good.request(type: 1, cookie: 1, offset: 4096, length: 512, payload: [UInt8](repeating: 0x5A, count: 512))
                #expect(good.reply()?.error == 0)

                let badMagic = try RawNBDClient(t.nbdEndpoint)
                try badMagic.attach(export: "\(t.iqn)/1")
                badMagic.connection.send([UInt8](repeating: 0xEE, count: 28))
                #expect(badMagic.reply() == nil, "a bad request magic must close the connection")

                let garbage = try RawNBDClient(t.nbdEndpoint)
                garbage.connection.send(Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
                #expect(garbage.connection.drainUntilClosed(), "garbage in the handshake must close the connection")

                // Errors that keep the connection: oversized write (payload skipped), read past the end, unknown command.
                good.request(type: 1, cookie: 2, offset: 0, length: 300_000, payload: [UInt8](repeating: 1, count: 300_000))
                #expect(good.reply()?.error == 75)
                good.request(type: 0, cookie: 3, offset: 8 * 1 << 20, length: 512)
                #expect(good.reply()?.error == 22)
                good.request(type: 42, cookie: 4, offset: 0, length: 0)
                #expect(good.reply()?.error == 22)
                good.request(type: 0, cookie: 5, offset: 4096, length: 512)
                let r = good.reply(dataBytes: 512)
                #expect(r?.cookie == 5 && r?.data == [UInt8](repeating: 0x5A, count: 512))
                let info = try t.tool("nbdinfo", [t.nbdURL()])
                #expect(info.succeeded, "\(info)")
                try t.requireAlive("after bad NBD input")
            }
        }

        /// A client that pipelines far more requests than the server admits, without reading its replies, is held
        /// back by TCP (the server stops parsing at its per-connection bounds) while another client is served;
        /// once it reads, every request gets exactly one reply, in whatever order.
        @Test func pipelinedRequestsWithoutReadingAreBoundedAndAllAnswered() throws {
            try NBD.withNBDTarget(cores: 1, luns: [.null(bytes: 64 * mebibyte)]) { t in
                let greedy = try RawNBDClient(t.nbdEndpoint)
                try greedy.attach(export: "\(t.iqn)/1")
                let requests = 1500
                let readBytes = 65536
                // Even cookies: 64 KiB reads; odd cookies: an unknown command (EINVAL, no buffer, still a reply).
                for k in 0..<requests {
                    if k % 2 == 0 {
                        greedy.request(type: 0, cookie: UInt64(k), offset: UInt64(k % 512) * UInt64(readBytes),
                                       length: UInt32(readBytes))
                    } else {
                        greedy.request(type: 77, cookie: UInt64(k), offset: 0, length: 0)
                    }
                }
                let other = try RawNBDClient(t.nbdEndpoint)
                try other.attach(export: "\(t.iqn)/1")
                other.request(type: 0, cookie: 99, offset: 0, length: 4096)
                let served = other.reply(dataBytes: 4096)
                #expect(served?.error == 0 && served?.cookie == 99, "another client must be served meanwhile")

                var seen = Set<UInt64>()
                for _ in 0..<requests {
                    guard let h = greedy.connection.receive(exactly: 16) else { break }
                    let error = h[4..<8].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
                    let cookie = h[8..<16].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                    if cookie % 2 == 0 {
                        #expect(error == 0)
                        guard greedy.connection.receive(exactly: readBytes) != nil else { break }
                    } else {
                        #expect(error == 22)
                    }
                    #expect(seen.insert(cookie).inserted, "cookie \(cookie) answered twice")
                }
                #expect(seen.count == requests, "\(seen.count) of \(requests) requests answered")
                try t.requireAlive("after a pipelining client")
            }
        }

        /// Handshakes that never finish are closed at the login timeout (15 s, as for iSCSI logins): silent after
        /// the greeting, inside the client flags, inside an option header, inside option data. nbdinfo is served
        /// meanwhile.
        @Test func unfinishedHandshakesAreClosedAtTheLoginTimeout() throws {
            try NBD.withNBDTarget(luns: [.null(bytes: 8 * mebibyte)]) { t in
                let loginTimeoutSeconds = 15.0, tickSlackSeconds = 1.5
                let flags: [UInt8] = [0, 0, 0, 3]
                let option = Array("IHAVEOPT".utf8) + [0, 0, 0, 7, 0, 0, 0, 100]
                let cases: [(String, [UInt8])] = [
                    ("nothing", []),
                    ("half the client flags", [0, 0]),
                    ("part of an option header", flags + Array(option.prefix(10))),
                    ("part of the option data", flags + option + [0, 0, 0, 0, 1, 2]),
                ]
                let opened = monotonicSeconds()
                let sockets = try cases.map { _ in try RawSocket(t.nbdEndpoint) }
                for (i, c) in cases.enumerated() where !c.1.isEmpty { try sockets[i].send(c.1) }
                let info = try t.tool("nbdinfo", [t.nbdURL()])
                #expect(info.succeeded, "nbdinfo during unfinished handshakes: \(info)")
                let limit = opened + loginTimeoutSeconds + 3 * tickSlackSeconds
                for (i, c) in cases.enumerated() {
                    let closed = sockets[i].awaitClose(deadline: limit)
                    let after = monotonicSeconds() - opened
                    #expect(closed, "\(c.0): still open \(after) s after connecting")
                    if i == 0 {
                        #expect(after >= loginTimeoutSeconds - tickSlackSeconds, "\(c.0): closed after only \(after) s")
                    }
                }
                try t.requireAlive("after unfinished handshakes")
            }
        }

        /// `nbdinfo --map --json`: the base:allocation extents as (offset, length, hole).
        static func map(_ t: RunningTarget, _ url: String) throws -> [(offset: Int64, length: Int64, hole: Bool)] {
            try contextMap(t, url).map { ($0.offset, $0.length, $0.type & 1 != 0) }
        }

        /// `nbdinfo --map=CONTEXT --json`: the extents of one metadata context as (offset, length, status).
        static func contextMap(_ t: RunningTarget, _ url: String, _ context: String = "base:allocation") throws
            -> [(offset: Int64, length: Int64, type: Int)] {
            let r = try t.tool("nbdinfo", ["--map=\(context)", "--json", url])
            try #require(r.succeeded, "\(r)")
            let json = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]],
                                    "nbdinfo --map output: \(r.stdout)")
            return try json.map { e in
                let offset = try #require((e["offset"] as? NSNumber)?.int64Value)
                let length = try #require((e["length"] as? NSNumber)?.int64Value)
                let type = try #require((e["type"] as? NSNumber)?.intValue)
                return (offset, length, type)
            }
        }

        /// The status of every `unit`-byte piece of a map (the map must tile it).
        static func statusPerUnit(_ m: [(offset: Int64, length: Int64, type: Int)], unit: Int64) -> [Int] {
            var out: [Int] = []
            for e in m {
                for _ in 0..<(e.length / unit) { out.append(e.type) }
            }
            return out
        }

        /// `qemu-img map --output=json` (QEMU's NBD client, through base:allocation) as (offset, length, hole).
        static func qemuImgMap(_ t: RunningTarget, _ url: String) throws -> [(offset: Int64, length: Int64, hole: Bool)] {
            let q = try t.tool("qemu-img", ["map", "--output=json", "-f", "raw", url])
            try #require(q.succeeded, "\(q)")
            let json = try #require(try JSONSerialization.jsonObject(with: Data(q.stdout.utf8)) as? [[String: Any]],
                                    "qemu-img map output: \(q.stdout)")
            return json.compactMap { e in
                guard let o = (e["start"] as? NSNumber)?.int64Value, let l = (e["length"] as? NSNumber)?.int64Value,
                      let d = e["data"] as? Bool else { return nil }
                return (o, l, !d)
            }
        }

        /// The data ranges of a map, adjacent extents merged.
        static func dataRanges(_ m: [(offset: Int64, length: Int64, hole: Bool)]) -> [Range<Int64>] {
            var out: [Range<Int64>] = []
            for e in m where !e.hole {
                if let last = out.last, last.upperBound == e.offset {
                    out[out.count - 1] = last.lowerBound..<(e.offset + e.length)
                } else {
                    out.append(e.offset..<(e.offset + e.length))
                }
            }
            return out
        }

        /// Block status from SEEK_DATA/SEEK_HOLE: nbdinfo and qemu-img map see exactly the file's data, and the
        /// extents tile the export.
        @Test func nbdinfoMapShowsTheDataAndHolesOfASparseFile() throws {
            try NBD.withNBDTarget(luns: [.file(bytes: 32 * mebibyte)]) { t in
                let file = try #require(t.lunFiles[1])
                let h = try FileHandle(forWritingTo: file)
                for (offset, length) in [(8 * mebibyte, Int(mebibyte)), (20 * mebibyte, 65_536)] {
                    try h.seek(toOffset: UInt64(offset))
                    try h.write(contentsOf: Data(repeating: 0xA5, count: length))
                }
                try h.synchronize()
                try h.close()
                let m = try NBD.map(t, t.nbdURL(lun: 1))
                #expect(m.first?.offset == 0)
                #expect(zip(m, m.dropFirst()).allSatisfy { $0.offset + $0.length == $1.offset }, "\(m)")
                #expect(m.last.map { $0.offset + $0.length } == 32 * mebibyte, "\(m)")
                let expected = [(8 * mebibyte)..<(9 * mebibyte), (20 * mebibyte)..<(20 * mebibyte + 65_536)]
                #expect(NBD.dataRanges(m) == expected, "\(m)")
                // A file is one layer, holes too (qemu-nbd -A says the same of a raw image).
                let depth = try NBD.contextMap(t, t.nbdURL(lun: 1), "qemu:allocation-depth")
                #expect(depth.map(\.type) == [1] && depth.first?.length == 32 * mebibyte, "\(depth)")
                // qemu-img map (QEMU's NBD client, through base:allocation) agrees.
                let q = try NBD.qemuImgMap(t, t.nbdURL(lun: 1))
                #expect(NBD.dataRanges(q) == expected, "qemu-img map: \(q)")
            }
        }

        /// Block status of a sheepdog VDI comes from its inode index: an object written through the target is data,
        /// every object never written is a hole. (A write by another client, such as `dog vdi write`, is seen once
        /// the inode is reloaded: without shared locks sheep does not tell the gateway.)
        @Test(arguments: SheepKind.allCases)
        func nbdinfoMapFollowsTheSheepdogIndex(kind: SheepKind) throws {
            try NBD.requireRingtgt()
            let bytes = 32 * mebibyte
            try withSheepTarget(kind, vdis: [SheepVDI(name: "thin", bytes: bytes)], nbdPortals: [.ipv4Loopback]) { st in
                let t = st.target
                let w = try t.tool("qemu-io", ["-f", "raw", "-c", "write -P 90 9M 1M", t.nbdURL()])
                try #require(w.succeeded, "\(w)")
                let m = try NBD.map(t, t.nbdURL())
                // Objects are 4 MiB: the write at 9 MiB allocates object 2, [8 MiB, 12 MiB).
                #expect(NBD.dataRanges(m) == [(8 * mebibyte)..<(12 * mebibyte)], "\(m)")
                #expect(m.last.map { $0.offset + $0.length } == bytes, "\(m)")
            }
        }

        /// Which VDI owns each data object of `vdi`: `dog vdi object map` where real dog runs, the inode index read
        /// straight from sheep for the test server (whose dog has no `object` command).
        static func objectMap(_ sheep: SheepService, _ vdi: String) throws -> [Int: UInt32] {
            var owners: [Int: UInt32] = [:]
            switch sheep.kind {
            case .localCluster:
                let r = try sheep.dogMust(["vdi", "object", "map", vdi])
                for line in r.stdout.split(separator: "\n").dropFirst() {   // "Index       VID"
                    let f = line.split(separator: " ", omittingEmptySubsequences: true)
                    let idx = try #require(f.count == 2 ? Int(f[0]) : nil, "dog vdi object map: \(line)")
                    let vid = UInt32(String(f[1]), radix: 16)
                    try #require(vid != nil, "dog vdi object map: \(line)")
                    owners[idx] = vid
                }
            case .testServer:
                let client = try SheepClient(endpoint: .unix(path: sheep.socketPath))
                let inode = try client.readInode(vid: try client.findVDI(name: vdi), withIndex: true)
                try #require(inode.result == .success && inode.data.count == SheepInodeLayout.clientInodeSizeBytes)
                for idx in 0..<SheepInodeLayout.dataIndexSlots {
                    let at = SheepInodeLayout.headerSizeBytes + 4 * idx
                    let vid = UInt32(inode.data[at]) | UInt32(inode.data[at + 1]) << 8
                        | UInt32(inode.data[at + 2]) << 16 | UInt32(inode.data[at + 3]) << 24
                    if vid != 0 { owners[idx] = vid }
                }
            }
            return owners
        }

        /// A clone of a snapshot: the objects it shares with the snapshot read as data (they are, through the clone)
        /// and so do the ones written through the target; the rest are holes. nbdinfo, qemu-img map and the VDI's
        /// object map (`dog vdi object map`, or the index read directly) agree.
        @Test(arguments: SheepKind.allCases)
        func nbdinfoMapOfACloneAgreesWithTheObjectMap(kind: SheepKind) throws {
            try NBD.requireRingtgt()
            let bytes = 32 * mebibyte
            let objectBytes = 4 * mebibyte
            try withSheep(kind) { sheep in
                try sheep.createVDI("golden", bytes: bytes)
                let chunk = try sheep.scratch.makeRandomFile("chunk.img", bytes: Int(mebibyte), seed: 0xC1_0E)
                for object in [1, 5] { try sheep.writeVDI("golden", offset: Int64(object) * objectBytes, from: chunk) }
                try sheep.snapshotVDI("golden", tag: "base")
                try sheep.dogMust(["vdi", "clone", "-s", "base", "golden", "thinclone"])
                try withSheepTarget(sheep, vdis: [], nbdPortals: [.ipv4Loopback]) { st in
                    try st.addLUN(1, backingStore: sheep.backingStore("thinclone"))
                    let t = st.target
                    let w = try t.tool("qemu-io", ["-f", "raw", "-c", "write -P 7 13M 64k", t.nbdURL()])
                    try #require(w.succeeded, "\(w)")
                    // Objects 1 and 5 come from the snapshot, object 3 was written through the clone.
                    let expected = [1, 3, 5].map { (Int64($0) * objectBytes)..<(Int64($0 + 1) * objectBytes) }
                    let m = try NBD.map(t, t.nbdURL())
                    #expect(NBD.dataRanges(m) == expected, "nbdinfo --map: \(m)")
                    let q = try NBD.qemuImgMap(t, t.nbdURL())
                    #expect(NBD.dataRanges(q) == expected, "qemu-img map: \(q)")
                    let owners = try NBD.objectMap(sheep, "thinclone")
                    let fromIndex = owners.keys.sorted().map { (Int64($0) * objectBytes)..<(Int64($0 + 1) * objectBytes) }
                    #expect(fromIndex == expected, "object map: \(owners)")
                    // The clone owns what was written through it; the snapshot still owns the rest.
                    #expect(owners[3] != owners[1] && owners[1] == owners[5], "object map: \(owners)")
                    // qemu:allocation-depth tells them apart: the clone's own object is depth 1 ("local"), the
                    // snapshot's depth 2 (one layer down), the holes 0.
                    let depth = NBD.statusPerUnit(try NBD.contextMap(t, t.nbdURL(), "qemu:allocation-depth"),
                                                  unit: objectBytes)
                    #expect(depth == [0, 2, 0, 1, 0, 2, 0, 0], "qemu:allocation-depth per object: \(depth)")
                }
            }
        }

        /// A sheepdog VDI served as a LUN goes over NBD like any other: nbdcopy in and out matches `dog vdi read`.
        @Test(arguments: SheepKind.allCases)
        func sheepdogLUNOverNBDMatchesDogRead(kind: SheepKind) throws {
            try NBD.requireRingtgt()
            let bytes = 32 * mebibyte
            try withSheepTarget(kind, vdis: [SheepVDI(name: "nbd", bytes: bytes)], nbdPortals: [.ipv4Loopback]) { st in
                let t = st.target
                let seed: UInt64 = 0xDB_5EE9
                let source = try t.scratch.makeRandomFile("source.img", bytes: Int(bytes), seed: seed)
                let put = try t.tool("nbdcopy", [source.path, t.nbdURL()], timeoutSeconds: NBD.toolTimeoutSeconds)
                try #require(put.succeeded, "\(put)")
                let back = t.scratch.path("back.img")
                let get = try t.tool("nbdcopy", [t.nbdURL(), back.path], timeoutSeconds: NBD.toolTimeoutSeconds)
                try #require(get.succeeded, "\(get)")
                #expect(try firstDifference(source, back) == nil, "through NBD (seed \(seed))")
                let dumped = t.scratch.path("dog.img")
                try st.sheep.readVDI("nbd", to: dumped)
                #expect(try firstDifference(source, dumped) == nil, "dog vdi read (seed \(seed))")
            }
        }

        /// `ringtgtd --read-only --export NAME=PATH` (qemu-nbd -r): the export is READ_ONLY and a write gets EPERM;
        /// its description names the store type, not the server's path.
        @Test func readOnlyExportOptionRefusesWritesAndHidesThePath() throws {
            try NBD.requireRingtgt()
            let scratch = try Scratch()
            defer { scratch.remove() }
            let image = try scratch.makeSparseFile("ro.img", bytes: 8 * mebibyte)
            let daemon = try TargetDaemon(peer: .ringtgt, cores: 1, portals: [.ipv4Loopback],
                                          nbdPortals: [.ipv4Loopback],
                                          extraArgs: ["--read-only", "--export", "disk=\(image.path)"], scratch: scratch)
            defer { daemon.stop() }
            let ep = daemon.nbdEndpoints[0]
            let url = "nbd://\(ep.host):\(ep.port)/disk"
            let info = try runTool(try Tools.require("nbdinfo"), ["--json", url], logDir: scratch.url, timeoutSeconds: 60)
            try #require(info.succeeded, "\(info)")
            let json = try JSONSerialization.jsonObject(with: Data(info.stdout.utf8)) as? [String: Any]
            let e = try #require((json?["exports"] as? [[String: Any]])?.first, "\(info.stdout)")
            #expect(e["is_read_only"] as? Bool == true, "\(e)")
            let description = try #require(e["description"] as? String, "\(e)")
            #expect(!description.contains(image.path) && !description.contains(scratch.url.path), "\(description)")
            let write = try runTool(try Tools.require("qemu-io"), ["-f", "raw", "-c", "write -P 1 0 4096", url],
                                    logDir: scratch.url, timeoutSeconds: 60)
            #expect(!write.succeeded || write.stdout.contains("Operation not permitted")
                    || write.stderr.contains("Operation not permitted"), "\(write)")
            #expect(daemon.isAlive)
        }

        /// `ringtgtd --nbd unix=PATH` (qemu-nbd -k PATH): libnbd reaches the export through the socket, the portal
        /// list names it, and the socket file goes with the daemon.
        @Test func unixSocketListenerServesTheExportAndIsRemovedAtExit() throws {
            try NBD.requireRingtgt()
            let scratch = try Scratch()
            defer { scratch.remove() }
            let image = try scratch.makeRandomFile("unix.img", bytes: Int(4 * mebibyte), seed: 0x0_5EC7)
            let socket = scratch.path("nbd.sock").path
            let daemon = try TargetDaemon(peer: .ringtgt, cores: 2, portals: [.ipv4Loopback],
                                          extraArgs: ["--nbd", "unix=\(socket)", "--export", "disk=\(image.path)"],
                                          scratch: scratch)
            var stopped = false
            defer { if !stopped { daemon.stop() } }
            let portals = try daemon.admin.must(["--lld", "nbd", "--op", "show", "--mode", "portal"])
            #expect(portals.stdout.contains("Portal: unix:\(socket),1"), "\(portals.stdout)")
            let url = "nbd+unix:///disk?socket=\(socket)"
            let back = scratch.path("back.img")
            // Two copies: with two cores each accepting on the socket, both must serve.
            for _ in 0..<2 {
                let get = try runTool(try Tools.require("nbdcopy"), [url, back.path], logDir: scratch.url,
                                      timeoutSeconds: NBD.toolTimeoutSeconds)
                try #require(get.succeeded, "\(get)")
                #expect(try firstDifference(image, back) == nil)
            }
            #expect(FileManager.default.fileExists(atPath: socket))
            daemon.stop()
            stopped = true
            #expect(!FileManager.default.fileExists(atPath: socket), "the socket file outlived the daemon")
        }

        /// `ringtgtd --export NAME=sheepdog+unix:///VDI?socket=PATH`, no configuration: the VDI is the default export
        /// and the export NAME, as with `qemu-nbd -x NAME sheepdog:...`.
        @Test func exportOptionServesASheepdogVDIWithoutConfiguration() throws {
            try NBD.requireRingtgt()
            try withSheep(.testServer) { sheep in
                let bytes = 16 * mebibyte
                try sheep.createVDI("dropin", bytes: bytes)
                let scratch = try Scratch()
                defer { scratch.remove() }
                let uri = "sheepdog+unix:///dropin?socket=\(sheep.socketPath)"
                let daemon = try TargetDaemon(peer: .ringtgt, cores: 1, portals: [.ipv4Loopback],
                                              nbdPortals: [.ipv4Loopback], extraArgs: ["--export", "disk=\(uri)"],
                                              scratch: scratch)
                defer { daemon.stop() }
                let ep = daemon.nbdEndpoints[0]
                let byName = try runTool(try Tools.require("nbdinfo"), ["nbd://\(ep.host):\(ep.port)/disk"],
                                         logDir: scratch.url, timeoutSeconds: 60)
                #expect(byName.succeeded && byName.stdout.contains("\(bytes)"), "\(byName)")
                let seed: UInt64 = 0xD0_0D1E
                let source = try scratch.makeRandomFile("source.img", bytes: Int(bytes), seed: seed)
                let put = try runTool(try Tools.require("qemu-img"),
                                      ["convert", "-n", "-f", "raw", "-O", "raw", source.path, "nbd://\(ep.host):\(ep.port)"],
                                      logDir: scratch.url, timeoutSeconds: NBD.toolTimeoutSeconds)
                try #require(put.succeeded, "\(put)")
                let dumped = scratch.path("dog.img")
                try sheep.readVDI("dropin", to: dumped)
                #expect(try firstDifference(source, dumped) == nil, "dog vdi read after qemu-img (seed \(seed))")
                #expect(daemon.isAlive)
            }
        }
    }
}
