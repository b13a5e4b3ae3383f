// LUN lifetimes under configuration changes (the LUN lifetime rule in docs/DESIGN.md): a command in flight
// keeps the LUN and target it started on. Deleting a LUN with commands in flight is refused with tgt's
// message unless forced; a forced delete lets them finish against that LUN's own store. A command never
// answers GOOD with another LUN's data, and never writes into another LUN, even when the deleted LUN's file
// descriptor number is handed to a LUN added at once.

import Foundation
import ISCSIWire
import Testing

extension EndToEnd {
    @Suite("Robust: LUN lifetimes")
    struct RobustLifetime {
        static let initiator = "\(RunningTarget.iqnPrefix):lifetime"
        /// Far more than loopback's socket buffers hold: while the test does not read, the command cannot end.
        static let transferBytes = 32 * 1024 * 1024
        static let blockBytes = RawSessionLimits.blockBytes
        static let lunBytes = Int64(64 * 1024 * 1024)
        static let writeChunkBytes = 256 * 1024

        static func requireRingtgt(_ t: RunningTarget) throws {
            if t.peer != .ringtgt { try Test.cancel("tgt has no forced LUN delete with commands in flight") }
        }

        /// Fills the first `transferBytes` of a LUN with `pattern` through the session.
        static func fill(_ s: RawSession, lun: UInt64, _ pattern: [UInt8]) throws {
            var offset = 0
            while offset < pattern.count {
                let piece = Array(pattern[offset..<(offset + writeChunkBytes)])
                let r = try s.run(RawCDB.write16(lba: UInt64(offset / blockBytes), blocks: UInt32(writeChunkBytes / blockBytes)),
                                  lun: lun, writeData: piece)
                guard r.status == RawCodes.good else { throw E2EError("filling LUN \(lun): \(r)") }
                offset += writeChunkBytes
            }
        }

        static func deleteLUN(_ t: RunningTarget, _ lun: Int, force: Bool) throws -> ToolResult {
            try t.admin.run(["--lld", "iscsi", "--op", "delete", "--mode", "logicalunit", "--tid", "1", "--lun", "\(lun)"]
                            + (force ? ["--force"] : []))
        }

        /// A new file LUN holding `pattern`: opened right after a delete, it takes the lowest free descriptor,
        /// the one the deleted LUN had if that was closed.
        static func addFileLUN(_ t: RunningTarget, _ lun: Int, _ pattern: [UInt8]) throws -> URL {
            let file = t.scratch.path("lun\(lun)-added.img")
            var bytes = pattern
            bytes += [UInt8](repeating: 0, count: Int(lunBytes) - pattern.count)
            try Data(bytes).write(to: file)
            try t.admin.must(["--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "\(lun)",
                              "--backing-store", file.path])
            return file
        }

        /// Runs a command once more after the UNIT ATTENTION a changed LUN map raises (REPORTED LUNS DATA HAS CHANGED).
        static func runPastUnitAttention(_ s: RawSession, _ cdb: [UInt8], lun: UInt64, edtl: Int) throws -> CommandResult {
            let r = try s.run(cdb, lun: lun, read: true, edtl: edtl)
            if r.status == RawCodes.checkCondition && r.sense?.key == 0x06 { return try s.run(cdb, lun: lun, read: true, edtl: edtl) }
            return r
        }

        /// Deletes LUN `lun` and adds it again on the same file: the unit the session's login looked up is then
        /// not the one that serves (an older runtime must not be what keeps the store open).
        static func recreate(_ t: RunningTarget, _ lun: Int) throws {
            let file = try #require(t.lunFiles[lun])
            try #require(try deleteLUN(t, lun, force: false).succeeded)
            try t.admin.must(["--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "\(lun)",
                              "--backing-store", file.path])
        }

        /// A session logged in while LUNs 1 and 2 exist, then LUN 1 re-created under it (past the unit
        /// attentions that raises): only a command can keep the LUN 1 it uses alive.
        static func sessionOnRecreatedLUN1(_ t: RunningTarget) throws -> RawSession {
            try requireRingtgt(t)
            let s = try RawSession(t.endpoint, target: t.iqn, options: RawLoginOptions(initiatorName: initiator,
                                                                                      clearUnitAttentionLUNs: [1, 2]))
            try recreate(t, 1)
            for lun: UInt64 in [1, 2] { _ = try runPastUnitAttention(s, RawCDB.testUnitReady, lun: lun, edtl: 0) }
            return s
        }

        static func expectActiveRefusal(_ r: ToolResult) {
            #expect(!r.succeeded, "deleting a LUN with a command in flight succeeded without --force")
            #expect((r.stdout + r.stderr).contains("this logical unit is still active"), "\(r)")
        }

        /// A 32 MiB READ is in flight (the test does not read its Data-In) when its LUN is deleted with
        /// --force and another LUN is added at once. The READ answers with LUN 1's bytes (or an error), never
        /// with the new LUN's; LUN 1 is then gone for new commands.
        @Test func aReadOfADeletedLUNNeverReturnsAnotherLUNsData() throws {
            try withTarget(luns: [.file(bytes: RobustLifetime.lunBytes), .file(bytes: RobustLifetime.lunBytes)]) { t in
                let s = try RobustLifetime.sessionOnRecreatedLUN1(t)
                let one = patternBytes(RobustLifetime.transferBytes, seed: 1)
                try RobustLifetime.fill(s, lun: 1, one)
                let blocks = UInt32(RobustLifetime.transferBytes / RobustLifetime.blockBytes)
                let itt = try s.sendCommand(RawCDB.read16(lba: 0, blocks: blocks), lun: 1, read: true,
                                            edtl: RobustLifetime.transferBytes)

                RobustLifetime.expectActiveRefusal(try RobustLifetime.deleteLUN(t, 1, force: false))
                try #require(try RobustLifetime.deleteLUN(t, 1, force: true).succeeded)
                let three = patternBytes(RobustLifetime.transferBytes, seed: 3)
                _ = try RobustLifetime.addFileLUN(t, 3, three)

                let r = try s.collect([itt], timeoutSeconds: 60)[itt]!
                if r.status == RawCodes.good {
                    #expect(r.data.count == one.count)
                    #expect(r.data == one, "GOOD with other bytes than LUN 1's (LUN 3's: \(r.data == three))")
                } else {
                    #expect(r.status == RawCodes.checkCondition, "\(r)")
                }
                let after = try RobustLifetime.runPastUnitAttention(s, RawCDB.read10(lba: 0, blocks: 8), lun: 1, edtl: 4096)
                #expect(after.status == RawCodes.checkCondition && after.sense?.key == 0x05 && after.sense?.asc == 0x25,
                        "READ of the deleted LUN: \(after)")
                let other = try RobustLifetime.runPastUnitAttention(s, RawCDB.read10(lba: 0, blocks: 8), lun: 3, edtl: 4096)
                #expect(other.status == RawCodes.good && other.data == Array(three.prefix(4096)), "\(other)")
                try t.requireAlive("after the forced delete")
            }
        }

        /// A 32 MiB WRITE waits for its Data-Out when its LUN is deleted with --force and another LUN is added
        /// at once; the data then arrives. It lands in LUN 1's file (or the WRITE fails): the added LUN's file
        /// and LUN 2 keep their bytes.
        @Test func aWriteToADeletedLUNNeverLandsInAnotherLUN() throws {
            try withTarget(luns: [.file(bytes: RobustLifetime.lunBytes), .file(bytes: RobustLifetime.lunBytes)]) { t in
                let s = try RobustLifetime.sessionOnRecreatedLUN1(t)
                let two = patternBytes(RobustLifetime.writeChunkBytes, seed: 2)
                try RobustLifetime.fill(s, lun: 2, two)
                let data = patternBytes(RobustLifetime.transferBytes, seed: 9)
                let blocks = UInt32(RobustLifetime.transferBytes / RobustLifetime.blockBytes)
                let itt = try s.sendCommand(RawCDB.write16(lba: 0, blocks: blocks), lun: 1, writeData: data, immediateBytes: 0)
                let r2t = try s.expectPDU("the first R2T")
                try #require(r2t.opcode == ISCSIOpcode.r2t && r2t.itt == itt, "\(r2t)")
                s.keep(r2t)

                RobustLifetime.expectActiveRefusal(try RobustLifetime.deleteLUN(t, 1, force: false))
                try #require(try RobustLifetime.deleteLUN(t, 1, force: true).succeeded)
                let three = patternBytes(RobustLifetime.transferBytes, seed: 3)
                let file3 = try RobustLifetime.addFileLUN(t, 3, three)

                let r = try s.collect([itt], timeoutSeconds: 60)[itt]!
                #expect(r.status == RawCodes.good || r.status == RawCodes.checkCondition, "\(r)")
                let onDisk = try Data(contentsOf: file3)
                #expect(onDisk.prefix(three.count) == Data(three), "the WRITE to the deleted LUN changed LUN 3's file")
                if r.status == RawCodes.good, let file1 = t.lunFiles[1] {
                    let written = try Data(contentsOf: file1).prefix(data.count)
                    #expect(written == Data(data), "GOOD, but LUN 1's file does not hold the data")
                }
                let still = try RobustLifetime.runPastUnitAttention(
                    s, RawCDB.read16(lba: 0, blocks: UInt32(RobustLifetime.writeChunkBytes / RobustLifetime.blockBytes)),
                    lun: 2, edtl: RobustLifetime.writeChunkBytes)
                #expect(still.status == RawCodes.good && still.data == two, "LUN 2 after the forced delete: \(still)")
                try t.requireAlive("after the forced delete")
            }
        }

        /// The NAA designator of a LUN, from its Device Identification VPD page (0x83).
        static func naa(_ s: RawSession, lun: UInt64) throws -> [UInt8] {
            let r = try runPastUnitAttention(s, [0x12, 0x01, 0x83, 0x00, 0xFF, 0x00], lun: lun, edtl: 255)
            guard r.status == RawCodes.good else { throw E2EError("INQUIRY VPD 0x83 on LUN \(lun): \(r)") }
            var p = 4
            while p + 4 <= r.data.count {
                let type = r.data[p + 1] & 0x0F, length = Int(r.data[p + 3])
                if type == 3 && length == 16 && p + 4 + length <= r.data.count { return Array(r.data[(p + 4)..<(p + 20)]) }
                p += 4 + length
            }
            throw E2EError("LUN \(lun) reports no 16-byte NAA designator")
        }

        /// EXTENDED COPY (LID1) parameter list: two identification target descriptors (512-byte blocks) and
        /// one block-to-block segment copying `blocks` from LBA 0 of the first to LBA 0 of the second.
        static func copyList(from source: [UInt8], to destination: [UInt8], blocks: Int) -> [UInt8] {
            func descriptor(_ naa: [UInt8]) -> [UInt8] {
                var d = [UInt8](repeating: 0, count: 32)
                d[0] = 0xE4
                d[4] = 0x01; d[5] = 0x03; d[7] = 16
                d.replaceSubrange(8..<24, with: naa)
                d[30] = 0x02
                return d
            }
            let targets = descriptor(source) + descriptor(destination)
            let segment: [UInt8] = [0x02, 0, 0, 0x18, 0, 0, 0, 1, 0, 0, UInt8(blocks >> 8), UInt8(blocks & 0xFF)]
                + [UInt8](repeating: 0, count: 16)
            return [1, 0, 0, UInt8(targets.count), 0, 0, 0, 0, 0, 0, 0, UInt8(segment.count), 0, 0, 0, 0] + targets + segment
        }

        /// An EXTENDED COPY from LUN 1 to LUN 2 is stopped inside its first read (the sheep server is paused)
        /// when LUN 2 is deleted with --force and a file LUN is added as LUN 2. Once sheep resumes, the copy
        /// writes into the LUN it resolved when it started (the deleted VDI) or fails: the new LUN 2 keeps its
        /// zeros. Its session's target runtime was replaced under it, which crashed the daemon before.
        @Test func anExtendedCopyNeverWritesIntoALUNAddedUnderIt() throws {
            try withSheepTarget(.testServer, cores: 1, vdis: [SheepVDI(name: "src", bytes: 16 * mebibyte),
                                                             SheepVDI(name: "dst", bytes: 16 * mebibyte)]) { t in
                let s = try RawSession(t.target.endpoint, target: t.target.iqn,
                                       options: RawLoginOptions(initiatorName: RobustLifetime.initiator, clearUnitAttentionLUNs: [1, 2]))
                let bytes = 1024 * 1024
                let data = patternBytes(bytes, seed: 5)
                let w = try s.run(RawCDB.write16(lba: 0, blocks: UInt32(bytes / RobustLifetime.blockBytes)), lun: 1, writeData: data)
                try #require(w.status == RawCodes.good, "\(w)")
                let list = RobustLifetime.copyList(from: try RobustLifetime.naa(s, lun: 1), to: try RobustLifetime.naa(s, lun: 2),
                                                   blocks: bytes / RobustLifetime.blockBytes)
                _ = try t.sheep.admin("pause")
                let cdb: [UInt8] = [0x83, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, UInt8(list.count >> 8), UInt8(list.count & 0xFF), 0, 0]
                let itt = try s.sendCommand(cdb, lun: 1, writeData: list)

                RobustLifetime.expectActiveRefusal(try RobustLifetime.deleteLUN(t.target, 2, force: false))
                try #require(try RobustLifetime.deleteLUN(t.target, 2, force: true).succeeded)
                let added = try RobustLifetime.addFileLUN(t.target, 2, [])
                _ = try t.sheep.admin("resume")

                let r = try s.collect([itt], timeoutSeconds: 60)[itt]!
                #expect(r.status == RawCodes.good || r.status == RawCodes.checkCondition, "\(r)")
                let zeros = [UInt8](repeating: 0, count: bytes)
                #expect(try Data(contentsOf: added).prefix(bytes) == Data(zeros), "the copy wrote into the LUN added under it")
                let read = try RobustLifetime.runPastUnitAttention(s, RawCDB.read16(lba: 0, blocks: UInt32(bytes / RobustLifetime.blockBytes)),
                                                                  lun: 2, edtl: bytes)
                #expect(read.status == RawCodes.good && read.data == zeros, "the new LUN 2: \(read)")
                if r.status == RawCodes.good {
                    let dump = t.scratch.path("dst.img")
                    try t.sheep.readVDI("dst", to: dump)
                    #expect(try Data(contentsOf: dump).prefix(bytes) == Data(data), "GOOD, but the deleted VDI lacks the copy")
                }
            }
        }

        /// Paths of the files the daemon has open (/proc/PID/fd).
        static func openFiles(pid: Int32) -> [String] {
            let dir = "/proc/\(pid)/fd"
            let fds = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
            return fds.compactMap { try? FileManager.default.destinationOfSymbolicLink(atPath: "\(dir)/\($0)") }
        }

        /// A LUN deleted while sessions that logged in before are still there, with no command in flight, has
        /// its file closed at once: nothing but commands in flight keeps a deleted LUN's store open. One deleted
        /// with --force under a command keeps its file open for that command, and closes it when the command
        /// ends, not when its task entry is next used.
        @Test func aDeletedLUNsFileClosesWhileOlderSessionsLive() throws {
            try withTarget(luns: [.file(bytes: RobustLifetime.lunBytes), .file(bytes: RobustLifetime.lunBytes)]) { t in
                try RobustLifetime.requireRingtgt(t)
                let s = try RawSession(t.endpoint, target: t.iqn, options: RawLoginOptions(initiatorName: RobustLifetime.initiator,
                                                                                          clearUnitAttentionLUNs: [1, 2]))
                let file2 = try #require(t.lunFiles[2]).resolvingSymlinksInPath().path
                let pid = t.daemon.process.pid
                try #require(RobustLifetime.openFiles(pid: pid).contains(file2), "LUN 2's file is not open to begin with")
                try #require(try RobustLifetime.deleteLUN(t, 2, force: false).succeeded)
                #expect(!RobustLifetime.openFiles(pid: pid).contains(file2), "LUN 2's file is still open after its delete")
                _ = try RobustLifetime.runPastUnitAttention(s, RawCDB.testUnitReady, lun: 1, edtl: 0)
                try s.writeReadVerify(lba: 0, data: patternBytes(4096, seed: 11))

                let file1 = try #require(t.lunFiles[1]).resolvingSymlinksInPath().path
                let data = patternBytes(65536, seed: 12)
                let itt = try s.sendCommand(RawCDB.write16(lba: 0, blocks: UInt32(data.count / RobustLifetime.blockBytes)),
                                            lun: 1, writeData: data, immediateBytes: 0)
                // The echo comes after the target took the write (it answers in order): the write is in flight,
                // waiting for its data, when the delete arrives.
                try s.ping()
                try #require(try RobustLifetime.deleteLUN(t, 1, force: true).succeeded)
                #expect(RobustLifetime.openFiles(pid: pid).contains(file1), "LUN 1's file closed under a command in flight")
                let w = try #require(try s.collect([itt])[itt])
                #expect(w.status == RawCodes.good, "the write in flight on the deleted LUN 1: \(w)")
                try waitUntil("LUN 1's file to close once its last command ended") {
                    !RobustLifetime.openFiles(pid: pid).contains(file1)
                }
            }
        }

        /// Rounds of the delete/re-add race; RINGTGT_E2E_LIFETIME_ROUNDS raises it for sanitizer runs.
        static var raceRounds: Int {
            Int(ProcessInfo.processInfo.environment["RINGTGT_E2E_LIFETIME_ROUNDS"] ?? "") ?? 12
        }
        static let raceRegionBytes = 2 * 1024 * 1024

        /// Reads and writes from two sessions on two cores while the admin deletes LUN 2 (forced), adds a LUN 3
        /// with a third pattern on a new file, changes the ACL (a publish), deletes LUN 3 and adds LUN 2 again on
        /// its own file, round after round. Every LUN holds its own pattern, and writes rewrite that same
        /// pattern: a GOOD read of other bytes, or a file that ends up holding another LUN's bytes, is a command
        /// that reached the wrong store.
        @Test func deleteAndReAddRacesNeverCrossLUNs() throws {
            try withTarget(cores: 2, luns: [.file(bytes: RobustLifetime.lunBytes), .file(bytes: RobustLifetime.lunBytes)]) { t in
                try RobustLifetime.requireRingtgt(t)
                let region = RobustLifetime.raceRegionBytes
                let patterns: [UInt64: [UInt8]] = [1: patternBytes(region, seed: 21), 2: patternBytes(region, seed: 22),
                                                   3: patternBytes(region, seed: 23)]
                let setup = try RawSession(t.endpoint, target: t.iqn, options: RawLoginOptions(initiatorName: RobustLifetime.initiator,
                                                                                              clearUnitAttentionLUNs: [1, 2]))
                try RobustLifetime.fill(setup, lun: 1, patterns[1]!)
                try RobustLifetime.fill(setup, lun: 2, patterns[2]!)
                setup.close()
                let file2 = try #require(t.lunFiles[2])

                final class Tally: @unchecked Sendable {
                    let lock = NSLock()
                    var good: [UInt64: Int] = [:], errors = 0, wrong: [String] = [], failures: [String] = []
                    var stopping = false
                    func add(_ f: (Tally) -> Void) { lock.lock(); f(self); lock.unlock() }
                    var shouldStop: Bool { lock.lock(); defer { lock.unlock() }; return stopping }
                }
                let tally = Tally()
                let finished = DispatchSemaphore(value: 0)

                let workers = (0..<2).map { w -> Thread in
                    Thread {
                        defer { finished.signal() }
                        do {
                            var options = RawLoginOptions(initiatorName: "\(RobustLifetime.initiator)-\(w)", clearUnitAttentionLUNs: [1])
                            options.isid = 0x4000_0000_0100 + UInt64(w)
                            let s = try RawSession(t.endpoint, target: t.iqn, options: options)
                            var rng = SeededRandom(seed: 0x11FE + UInt64(w))
                            while !tally.shouldStop {
                                let lun = UInt64(1 + rng.next() % 3)
                                let chunk = 65536 << Int(rng.next() % 3)
                                let offset = Int(rng.next() % UInt64(region / chunk)) * chunk
                                let lba = UInt64(offset / RobustLifetime.blockBytes), blocks = UInt32(chunk / RobustLifetime.blockBytes)
                                let expected = Array(patterns[lun]![offset..<(offset + chunk)])
                                let write = rng.next() % 4 == 0
                                let r = write
                                    ? try s.run(RawCDB.write16(lba: lba, blocks: blocks), lun: lun, writeData: expected)
                                    : try s.run(RawCDB.read16(lba: lba, blocks: blocks), lun: lun, read: true, edtl: chunk)
                                tally.add { tl in
                                    if r.status == RawCodes.good {
                                        tl.good[lun, default: 0] += 1
                                        if !write && r.data != expected {
                                            let owner = patterns.first { $0.value[offset..<(offset + chunk)].elementsEqual(r.data) }?.key
                                            tl.wrong.append("READ of LUN \(lun) at \(offset) returned \(owner.map { "LUN \($0)'s" } ?? "unknown") bytes")
                                        }
                                    } else if r.status == RawCodes.checkCondition {
                                        tl.errors += 1
                                    } else {
                                        tl.failures.append("LUN \(lun): \(r)")
                                    }
                                }
                            }
                            s.close()
                        } catch {
                            tally.add { $0.failures.append("worker \(w): \(error)") }
                        }
                    }
                }
                workers.forEach { $0.start() }
                defer { tally.add { $0.stopping = true } }
                var file3: URL? = nil
                for round in 0..<RobustLifetime.raceRounds {
                    try #require(try RobustLifetime.deleteLUN(t, 2, force: true).succeeded, "round \(round): delete LUN 2")
                    if file3 == nil { file3 = try RobustLifetime.addFileLUN(t, 3, patterns[3]!) }
                    else {
                        try t.admin.must(["--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "3",
                                          "--backing-store", file3!.path])
                    }
                    try t.admin.must(["--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", "1", "-I", "10.9.9.9"])
                    try t.admin.must(["--lld", "iscsi", "--op", "unbind", "--mode", "target", "--tid", "1", "-I", "10.9.9.9"])
                    try #require(try RobustLifetime.deleteLUN(t, 3, force: true).succeeded, "round \(round): delete LUN 3")
                    try t.admin.must(["--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "2",
                                      "--backing-store", file2.path])
                }
                tally.add { $0.stopping = true }
                for _ in workers { finished.wait() }
                tally.add { tl in
                    #expect(tl.failures.isEmpty, "\(tl.failures.prefix(5))")
                    #expect(tl.wrong.isEmpty, "\(tl.wrong.count) reads crossed LUNs: \(tl.wrong.prefix(5))")
                    print("lifetime race: \(RobustLifetime.raceRounds) rounds, GOOD per LUN \(tl.good.sorted { $0.key < $1.key }), " +
                          "\(tl.errors) CHECK CONDITIONs")
                    #expect((tl.good[2] ?? 0) > 0 && (tl.good[3] ?? 0) > 0, "the race never reached LUN 2 or 3: it tested nothing")
                }
                for (lun, file) in [(UInt64(1), t.lunFiles[1]!), (2, file2), (3, file3!)] {
                    let bytes = try Data(contentsOf: file).prefix(region)
                    #expect(bytes == Data(patterns[lun]!), "LUN \(lun)'s file holds other bytes after the race")
                }
                try t.requireAlive("after the race")
            }
        }
    }
}
