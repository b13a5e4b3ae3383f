// targets.conf reload (SIGHUP) and ringtgt-admin against a running daemon: the difference is applied,
// a session on a target that stays keeps verifying its writes, and a file with errors changes nothing.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension EndToEnd {
    @Suite("Config reload")
    struct ConfigReload {
        /// How long a reload may take to show in `--op show`.
        static let reloadTimeoutSeconds = 15.0
        static let pollIntervalMicroseconds: useconds_t = 20_000
        static let live = "\(RunningTarget.iqnPrefix):reload-live"
        static let unused = "\(RunningTarget.iqnPrefix):reload-unused"
        static let added = "\(RunningTarget.iqnPrefix):reload-added"

        /// Polls `condition` until it holds or the deadline passes.
        func waitFor(_ what: String, _ condition: () throws -> Bool) throws {
            let deadline = monotonicSeconds() + Self.reloadTimeoutSeconds
            while monotonicSeconds() < deadline {
                if try condition() { return }
                usleep(Self.pollIntervalMicroseconds)
            }
            throw E2EError("\(what) did not happen within \(Self.reloadTimeoutSeconds) s")
        }

        func config(_ files: Scratch, live: [URL], acl: String, unused: Bool, extra: String = "") -> String {
            var text = "default-driver iscsi\n<target \(Self.live)>\n    tid 1\n"
            for f in live { text += "    backing-store \(f.path)\n" }
            text += "    initiator-address \(acl)\n</target>\n"
            if unused { text += "<target \(Self.unused)>\n    tid 2\n    backing-store \(files.path("unused.img").path)\n</target>\n" }
            return text + extra
        }

        @Test func reloadAppliesTheDifferenceAndLeavesALiveSessionAlone() throws {
            let files = try Scratch()
            defer { files.remove() }
            let disk1 = try files.makeSparseFile("disk1.img", bytes: 16 * mebibyte)
            let disk2 = try files.makeSparseFile("disk2.img", bytes: 16 * mebibyte)
            _ = try files.makeSparseFile("unused.img", bytes: 16 * mebibyte)
            let conf = files.path("targets.conf")
            try config(files, live: [disk1], acl: "ALL", unused: true).write(to: conf, atomically: true, encoding: .utf8)

            try withTarget(daemonOptions: ["--config", conf.path], luns: [], createsTarget: false) { t in
                let s = try RawSession(t.endpoint, target: Self.live, options: RawLoginOptions(
                    initiatorName: "\(RunningTarget.iqnPrefix):reload"))
                var seed: UInt64 = 0
                func verifyWrites() throws {
                    for i in 0..<8 {
                        seed += 1
                        try s.writeReadVerify(lba: UInt32(i) * 16, data: patternBytes(8 * 1024, seed: seed))
                    }
                }
                func show() throws -> String { try t.admin.must(["--op", "show", "--mode", "target"]).stdout }
                try verifyWrites()

                // SIGHUP: a LUN added to the live target, its ACL changed, the unused target removed.
                try config(files, live: [disk1, disk2], acl: "127.0.0.1", unused: false)
                    .write(to: conf, atomically: true, encoding: .utf8)
                #expect(kill(t.pid, SIGHUP) == 0)
                try waitFor("the SIGHUP reload") {
                    let text = try show()
                    return text.contains(disk2.path) && !text.contains(Self.unused)
                }
                // The session learns of its target's new LUN once (REPORTED LUNS DATA HAS CHANGED), as from tgt.
                let ua = try s.run(RawCDB.testUnitReady)
                #expect(ua.status == RawCodes.checkCondition && ua.sense?.key == 0x06 && ua.sense?.asc == 0x3F
                        && ua.sense?.ascq == 0x0E, "\(ua)")
                let afterHUP = try show()
                #expect(afterHUP.contains("ACL information:\n        127.0.0.1\n"), "\(afterHUP)")
                #expect(!afterHUP.contains("        ALL\n"), "\(afterHUP)")
                try verifyWrites()

                // ringtgt-admin --update ALL runs the same difference: a target added, the ACL back to ALL.
                let ringtgtAdmin = try Paths.packageBinary("ringtgt-admin")
                func admin(_ args: [String]) throws -> ToolResult {
                    try runTool(ringtgtAdmin, t.admin.controlArgs + args, logDir: t.scratch.url,
                                timeoutSeconds: DaemonLimits.adminTimeoutSeconds, label: "ringtgt-admin")
                }
                let withAdded = config(files, live: [disk1, disk2], acl: "ALL", unused: false,
                                       extra: "<target \(Self.added)>\n    backing-store \(disk2.path)\n    bs-type null\n</target>\n")
                try withAdded.write(to: conf, atomically: true, encoding: .utf8)
                let update = try admin(["-c", conf.path, "--update", "ALL", "-v"])
                #expect(update.succeeded, "\(update)")
                #expect(update.stdout.contains("added target \(Self.added) (tid 2)"), "\(update)")
                let afterUpdate = try show()
                #expect(afterUpdate.contains("Target 2: \(Self.added)") && afterUpdate.contains("        ALL\n"), "\(afterUpdate)")
                try verifyWrites()

                // --dump round-trips: updating to it would change nothing.
                let dump = try admin(["--dump"])
                #expect(dump.succeeded)
                try dump.stdout.write(to: files.path("dump.conf"), atomically: true, encoding: .utf8)
                let same = try admin(["-c", files.path("dump.conf").path, "--update", "ALL", "-p"])
                #expect(same.succeeded && same.stdout.isEmpty, "\(same)")

                // The live target is in use: --delete leaves it without -f.
                let delete = try admin(["--delete", "tid=1"])
                #expect(delete.stdout.contains("is in use, it won't be deleted"), "\(delete)")
                #expect(try show().contains("Target 1: \(Self.live)"))

                // A file with errors changes nothing, by SIGHUP or by ringtgt-admin, and says why.
                let broken = config(files, live: [disk1], acl: "not-an-address", unused: false) + "frobnicate 1\n"
                try broken.write(to: conf, atomically: true, encoding: .utf8)
                let before = try show()
                #expect(kill(t.pid, SIGHUP) == 0)
                try waitFor("the broken reload's log") { t.process.stderrText.contains("nothing was changed") }
                #expect(t.process.stderrText.contains("\(conf.path) line 7: unknown setting 'frobnicate'"), "\(tail(t.process.stderrText))")
                let refused = try admin(["-c", conf.path, "--update", "ALL"])
                #expect(refused.exitStatus == 1, "\(refused)")
                #expect(refused.stderr.contains("line 7: unknown setting 'frobnicate'"), "\(refused)")
                #expect(refused.stderr.contains("line 5: invalid request: 'not-an-address'"), "\(refused)")
                #expect(try show() == before)
                try verifyWrites()

                // A missing file is not fatal either: the reload says so and changes nothing.
                try FileManager.default.removeItem(at: conf)
                #expect(kill(t.pid, SIGHUP) == 0)
                try waitFor("the reload of a missing file") {
                    t.process.stderrText.contains("\(conf.path): no such configuration file; nothing was changed")
                }
                #expect(try show() == before)
                try verifyWrites()
                s.close()
            }
        }
    }
}
