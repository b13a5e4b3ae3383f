// Operations of the daemon itself (issue 10, part A): `ringtgtd` without -f detaches like tgtd and returns
// once it serves; `ringtgtd -f & ringtgtadm` does not race; a pid file; `--op delete --mode system`;
// ringtgtadm's answer when no daemon runs; failed logins in the log with who, from where and why.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Bounds, with their units.
enum OpsDaemonLimits {
    /// A detached ringtgtd returns once it serves; start-up takes well under this.
    static let detachSeconds = 60.0
    /// How long a stopped daemon may take to be gone.
    static let exitSeconds = 30.0
    /// Waiting for a log line the daemon writes from a core thread.
    static let logLineSeconds = 10.0
}

extension EndToEnd {
    @Suite("Operations: the daemon")
    struct OpsDaemon {
        static let iqn = "\(RunningTarget.iqnPrefix):ops"

        /// Whether `pid` still runs. A zombie counts as gone: the detached daemon is not our child, and
        /// whoever inherits it may reap it late.
        static func pidAlive(_ pid: pid_t) -> Bool {
            if kill(pid, 0) != 0 && errno == ESRCH { return false }
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return false }
            return !stat[close...].hasPrefix(") Z")
        }

        /// The detached daemon is not our child: stop it by pid (only while /proc says it is ringtgtd).
        static func killDetached(_ pid: pid_t) {
            guard pid > 1, let cmdline = try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8),
                  cmdline.contains("ringtgtd") else { return }
            kill(pid, SIGKILL)
        }

        /// The seed's commands verbatim, against a detached daemon serving a sheepdog VDI as LUN 2.
        @Test func detachedDaemonServesWritesItsPidAndStopsOnSystemDelete() throws {
            try withSheep(.testServer) { sheep in
                try sheep.createVDI("tgt0", bytes: 64 * mebibyte)
                let scratch = try Scratch()
                defer { scratch.remove() }
                let socket = scratch.path("ctl").path
                let pidFile = scratch.path("ringtgtd.pid").path
                let admin = Admin(executable: try Paths.packageBinary("ringtgtadm"),
                                  controlArgs: ["--control-socket", socket], logDir: scratch.url)

                // No -f: returns once the portals and the control socket answer.
                let started = try runTool(try Paths.packageBinary("ringtgtd"),
                                          ["--iscsi", PortalSpec.ipv4Loopback.option, "--control-socket", socket,
                                           "--cores", "1", "--buffers", "16", "--pid-file", pidFile],
                                          logDir: scratch.url, timeoutSeconds: OpsDaemonLimits.detachSeconds, label: "ringtgtd")
                var pid: pid_t = 0
                defer { Self.killDetached(pid) }   // even when an expectation below fails
                let pidText = (try? String(contentsOfFile: pidFile, encoding: .utf8)) ?? ""
                pid = pid_t(pidText.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
                try #require(started.succeeded, "ringtgtd (detached) did not start: \(started)")
                try #require(pid > 1 && Self.pidAlive(pid), "the pid file holds no live daemon: '\(pidText)'")
                #expect(getsid(pid) == pid, "the daemon did not leave the session (setsid)")

                // No polling: by the time ringtgtd returned, the control socket answers.
                let shown = try admin.run(["--op", "show", "--mode", "target"])
                #expect(shown.succeeded, "the control socket did not answer at once: \(shown)")

                try admin.must(["--op", "new", "--mode", "target", "--tid", "1", "--lld", "iscsi", "--targetname", Self.iqn])
                try admin.must(["--op", "new", "--mode", "lu", "--tid", "1", "--lun", "2", "--bstype", "sheepdog",
                                "--backing-store", "unix:\(sheep.socketPath):tgt0"])
                try admin.must(["--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"])
                let portals = Endpoint.parsePortals(try admin.must(["--op", "show", "--mode", "portal"]).stdout)
                let endpoint = try #require(portals.first, "no portal listed")

                var options = RawLoginOptions()
                options.clearUnitAttentionLUNs = [2]
                let session = try RawSession(endpoint, target: Self.iqn, options: options)
                let read = try session.run(RawCDB.read10(lba: 0, blocks: 8), lun: 2, read: true,
                                           edtl: 8 * RawSessionLimits.blockBytes)
                #expect(read.status == RawCodes.good, "READ from the sheepdog LUN: \(read)")

                // tgt's rule: not while a target exists (a session is logged in, too).
                let refused = try admin.run(["--op", "delete", "--mode", "system"])
                #expect(refused.exitStatus == 22 && refused.stderr.hasPrefix("ringtgtadm: invalid request"), "\(refused)")
                #expect(Self.pidAlive(pid), "the daemon stopped although system delete was refused")

                let forced = try admin.run(["--op", "delete", "--mode", "system", "--force"])
                #expect(forced.succeeded, "\(forced)")
                // ringtgtadm returned once the daemon removed its socket, its last step.
                #expect(!FileManager.default.fileExists(atPath: socket))
                try waitUntil("the detached daemon to exit", timeoutSeconds: OpsDaemonLimits.exitSeconds) {
                    !Self.pidAlive(pid)
                }
                #expect(!FileManager.default.fileExists(atPath: pidFile), "the pid file outlived the daemon")
                // Nothing answers any more: tgtadm's status for a daemon that is down.
                let again = try runTool(try Paths.packageBinary("ringtgtadm"), ["--control-socket", socket, "--op",
                                        "show", "--mode", "target"], logDir: scratch.url, timeoutSeconds: 10)
                #expect(again.exitStatus == 107, "the daemon still answers: \(again)")
            }
        }

        /// A detached start that fails reports why and exits 1, as the foreground daemon would.
        @Test func detachedStartFailureIsReportedByTheParent() throws {
            let scratch = try Scratch()
            defer { scratch.remove() }
            let bad = scratch.path("bad.conf")
            try "<target iqn.2026-01.org.ringtgt:bad>\n    no-such-directive 1\n</target>\n"
                .write(to: bad, atomically: true, encoding: .utf8)
            let r = try runTool(try Paths.packageBinary("ringtgtd"),
                                ["--iscsi", PortalSpec.ipv4Loopback.option, "--control-socket", scratch.path("ctl").path,
                                 "--cores", "1", "--buffers", "16", "--config", bad.path],
                                logDir: scratch.url, timeoutSeconds: OpsDaemonLimits.detachSeconds, label: "ringtgtd")
            #expect(r.exitStatus == 1 && !r.killedBySignal, "\(r)")
            #expect(r.stderr.hasPrefix("ringtgtd: \(bad.path)"), "the parent must print the child's reason: \(r)")
            #expect(!FileManager.default.fileExists(atPath: scratch.path("ctl").path), "a failed start left its socket")
        }

        /// `ringtgtd -f & ringtgtadm ...`: a request made while the daemon is still starting waits until it is
        /// ready instead of failing. The start-up is held deterministically: the --config file's sheepdog LUN
        /// is opened while the sheep test server is stopped (SIGSTOP), and resumed only after ringtgtadm ran.
        @Test func foregroundDaemonAnswersAnAdminStartedDuringStartUp() throws {
            try withSheep(.testServer) { sheep in
                try sheep.createVDI("tgt0", bytes: 16 * mebibyte)
                let scratch = try Scratch()
                defer { scratch.remove() }
                let socketPath = scratch.path("ctl").path
                let conf = scratch.path("targets.conf")
                try """
                    <target \(Self.iqn)>
                        bs-type sheepdog
                        backing-store unix:\(sheep.socketPath):tgt0
                    </target>

                    """.write(to: conf, atomically: true, encoding: .utf8)
                sheep.pause()
                var paused = true
                defer { if paused { sheep.resume() } }
                let daemon = try ToolProcess(try Paths.packageBinary("ringtgtd"),
                                             ["-f", "--iscsi", PortalSpec.ipv4Loopback.option, "--control-socket", socketPath,
                                              "--cores", "1", "--buffers", "16", "--config", conf.path],
                                             logDir: scratch.url, label: "daemon")
                defer { daemon.terminate() }
                // The socket exists while start-up is held (the old order created it last).
                try waitUntil("the control socket during start-up", timeoutSeconds: OpsDaemonLimits.detachSeconds) {
                    FileManager.default.fileExists(atPath: socketPath) || !daemon.isRunning
                }
                let admin = try ToolProcess(try Paths.packageBinary("ringtgtadm"),
                                            ["--control-socket", socketPath, "--op", "show", "--mode", "target"],
                                            logDir: scratch.url, label: "admin")
                // A bounded look: a ringtgtadm that ends while the daemon is held was not made to wait.
                try? waitUntil("ringtgtadm to end early (it must not)", timeoutSeconds: 1) { !admin.isRunning }
                #expect(admin.isRunning, "ringtgtadm did not wait for the daemon: \(admin.wait(timeoutSeconds: 1))")
                sheep.resume()
                paused = false
                let shown = admin.wait(timeoutSeconds: OpsDaemonLimits.detachSeconds)
                #expect(shown.succeeded, "ringtgtadm during start-up: \(shown)\n\(daemon.stderrText)")
                // Its answer came once the config file was applied: the target and its LUN are listed.
                #expect(shown.stdout.contains(Self.iqn) && shown.stdout.contains("LUN: 1"), "\(shown.stdout)")

                // No session: --force stops it, and it exits 0.
                let deleted = try runTool(try Paths.packageBinary("ringtgtadm"),
                                          ["--control-socket", socketPath, "--op", "delete", "--mode", "system", "--force"],
                                          logDir: scratch.url, timeoutSeconds: OpsDaemonLimits.exitSeconds * 2)
                #expect(deleted.succeeded, "\(deleted)")
                let r = daemon.wait(timeoutSeconds: OpsDaemonLimits.exitSeconds)
                #expect(r.succeeded, "ringtgtd after --op delete --mode system: \(r)")
                #expect(!FileManager.default.fileExists(atPath: socketPath))
            }
        }

        /// tgtadm's words and status with no daemon; compared with the real tgtadm when it is installed.
        @Test func adminWithNoDaemonExits107WithTgtadmsMessage() throws {
            let scratch = try Scratch()
            defer { scratch.remove() }
            let r = try runTool(try Paths.packageBinary("ringtgtadm"),
                                ["--control-socket", scratch.path("none").path, "--op", "show", "--mode", "target"],
                                logDir: scratch.url, timeoutSeconds: DaemonLimits.adminTimeoutSeconds)
            let words = "failed to send request hdr to tgt daemon, Transport endpoint is not connected\n"
            #expect(r.exitStatus == 107 && !r.killedBySignal, "\(r)")
            #expect(r.stderr == "ringtgtadm: \(words)")
            if let tgtadm = findOnPath("tgtadm") {
                // A control port nobody uses (tgtadm's -C must be < 32768).
                let port = (20000..<32000).first { !FileManager.default.fileExists(atPath: "/var/run/tgtd/socket.\($0)") } ?? 31999
                let t = try runTool(tgtadm, ["-C", "\(port)", "--op", "show", "--mode", "target"], logDir: scratch.url,
                                    timeoutSeconds: DaemonLimits.adminTimeoutSeconds)
                #expect(t.exitStatus == r.exitStatus && t.stderr == "tgtadm: \(words)", "real tgtadm: \(t)")
            }
        }

        /// Every failed login is logged with the initiator's name and address and why; so are session starts
        /// and ends.
        @Test func failedLoginsAreLoggedWithInitiatorAddressAndReason() throws {
            try withTarget(daemonOptions: [], luns: [.null(bytes: 16 * mebibyte)]) { t in
                let account = ["--lld", "iscsi", "--mode", "account"]
                try t.admin.must(account + ["--op", "new", "--user", "alice", "--password", "secret123456"])
                try t.admin.must(account + ["--op", "bind", "--tid", "1", "--user", "alice"])
                try t.admin.newTarget(tid: 2, name: "\(RunningTarget.iqnPrefix):closed")   // no ACL: nobody may log in

                func attempt(_ name: String, target: String, chap: (String, String)? = nil) -> Bool {
                    var o = RawLoginOptions()
                    o.initiatorName = name
                    o.chap = chap.map { (user: $0.0, secret: $0.1) }
                    o.clearUnitAttentionLUNs = []
                    return (try? RawSession(t.endpoint, target: target, options: o)) != nil
                }
                #expect(!attempt("iqn.2026-01.test:wrong-secret", target: t.iqn, chap: ("alice", "wrongsecret1")))
                #expect(!attempt("iqn.2026-01.test:not-in-acl", target: "\(RunningTarget.iqnPrefix):closed"))
                #expect(!attempt("iqn.2026-01.test:lost", target: "\(RunningTarget.iqnPrefix):no-such-target"))

                let expected = [
                    "login failed (CHAP): initiator iqn.2026-01.test:wrong-secret from 127.0.0.1",
                    "login failed (ACL): initiator iqn.2026-01.test:not-in-acl from 127.0.0.1",
                    "login failed (unknown target): initiator iqn.2026-01.test:lost from 127.0.0.1",
                ]
                var log = ""
                try? waitUntil("the failed logins in the log", timeoutSeconds: OpsDaemonLimits.logLineSeconds) {
                    log = t.process.stderrText
                    return expected.allSatisfy { log.contains($0) }
                }
                for line in expected { #expect(log.contains(line), "missing '\(line)' in:\n\(tail(log))") }
                #expect(log.contains("to target \(t.iqn)"), "the CHAP failure names its target:\n\(tail(log))")

                // A session's start and end.
                var o = RawLoginOptions()
                o.initiatorName = "iqn.2026-01.test:good"
                o.chap = (user: "alice", secret: "secret123456")
                let s = try RawSession(t.endpoint, target: t.iqn, options: o)
                _ = try s.sendLogout()
                try? waitUntil("the session's lines in the log", timeoutSeconds: OpsDaemonLimits.logLineSeconds) {
                    log = t.process.stderrText
                    return log.contains("ended: initiator iqn.2026-01.test:good")
                }
                #expect(log.contains("session started with target \(t.iqn): initiator iqn.2026-01.test:good from 127.0.0.1"),
                        "\(tail(log))")
                #expect(log.contains("session with target \(t.iqn) ended: initiator iqn.2026-01.test:good from 127.0.0.1"),
                        "\(tail(log))")
            }
        }
    }
}
