// Who gets in and who stays: no login meets a half-applied configuration at start-up, sessions that a new
// CHAP binding or a narrower ACL no longer admits are ended, CHAP secrets follow RFC 7143 §12.1.3, and
// `State offline` refuses new logins as tgt does. Raw sessions choose exactly what they offer (CHAP or not).

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Bounds of these tests, with their units.
enum AdmissionLimits {
    /// How long the start-up test keeps logging in before the daemon must have settled.
    static let startupDeadlineSeconds = 60.0
    /// Rules in the start-up test's config between `initiator-address` and `incominguser`: they make applying
    /// the configuration take long enough that a daemon accepting logins meanwhile is caught every time.
    static let paddingACLRules = 1000
}

private let chapUser = "alice"
private let chapSecret = "alicesecret01"

/// "login refused: status class 0xCC detail 0xDD" from RawSession, as (class, detail).
private func loginStatus(_ error: Error) -> (UInt8, UInt8)? {
    let text = "\(error)"
    guard let r = text.range(of: "status class 0x") else { return nil }
    let rest = text[r.upperBound...]
    guard let cls = UInt8(rest.prefix(2), radix: 16), let d = rest.range(of: "detail 0x"),
          let detail = UInt8(rest[d.upperBound...].prefix(2), radix: 16) else { return nil }
    return (cls, detail)
}

extension EndToEnd {
    @Suite("CHAP: admission")
    struct CHAPAdmission {
        static func requireRingtgt() throws {
            if Peer.current != .ringtgt {
                try Test.cancel(Comment(rawValue: "ringtgtd's own start-up and admission rules"))
            }
        }

        /// A config that binds the ACL before the CHAP account (the order tgt-admin's examples use). Old
        /// ringtgtd accepted logins while it applied it; a login without CHAP in between got in and kept its
        /// session. Now the portal accepts only once everything is applied: the first login that gets an
        /// answer at all meets CHAP.
        @Test func noLoginWithoutCHAPWhileTheConfigIsApplied() throws {
            try Self.requireRingtgt()
            try withScratch { scratch in
                let iqn = "\(RunningTarget.iqnPrefix):startup"
                let lun = try scratch.makeSparseFile("lun1.img", bytes: 16 * mebibyte)
                var conf = "<target \(iqn)>\n    backing-store \(lun.path)\n    initiator-address ALL\n"
                for i in 0..<AdmissionLimits.paddingACLRules { conf += "    initiator-name iqn.2026-01.org.example:pad\(i)\n" }
                conf += "    incominguser \(chapUser) \(chapSecret)\n</target>\n"
                let confURL = scratch.path("targets.conf")
                try conf.write(to: confURL, atomically: true, encoding: .utf8)
                let port = try freeTCPPorts(1)[0]
                let endpoint = Endpoint(host: "127.0.0.1", port: port, portalGroupTag: 1)
                let args = ["-f", "--iscsi", "portal=127.0.0.1:\(port)", "--control-socket", scratch.path("ctl").path,
                            "--cores", "1", "--config", confURL.path]
                let daemon = try ToolProcess(try Paths.packageBinary("ringtgtd"), args, logDir: scratch.url, label: "daemon")
                defer { _ = daemon.terminate(graceSeconds: DaemonLimits.stopGraceSeconds) }

                // Log in without CHAP as fast as possible from the daemon's first instant until CHAP answers.
                var attempts = 0, notListening = 0, otherRefusals: [String] = []
                var settled = false
                let deadline = monotonicSeconds() + AdmissionLimits.startupDeadlineSeconds
                let noUA = RawLoginOptions(clearUnitAttentionLUNs: [])
                while monotonicSeconds() < deadline && daemon.isRunning {
                    attempts += 1
                    do {
                        let s = try RawSession(endpoint, target: iqn, options: noUA)
                        s.close()
                        Issue.record("attempt \(attempts): a login without CHAP got in while ringtgtd started")
                        break
                    } catch {
                        if let (cls, detail) = loginStatus(error) {
                            if cls == 2 && detail == 1 { settled = true; break }   // Authentication failure
                            otherRefusals.append(String(format: "0x%02x%02x", cls, detail))
                        } else {
                            notListening += 1
                        }
                    }
                }
                let summary = "\(attempts) attempts, \(notListening) before the portal accepted"
                #expect(settled, "no CHAP refusal within \(AdmissionLimits.startupDeadlineSeconds) s (\(summary)):\n\(tail(daemon.stderrText))")
                #expect(otherRefusals.isEmpty,
                        "logins were answered before the configuration was complete: \(otherRefusals)")
                // The account works once the daemon is up (RawSession runs TEST UNIT READY after login).
                if settled {
                    var withCHAP = RawLoginOptions()
                    withCHAP.chap = (chapUser, chapSecret)
                    try RawSession(endpoint, target: iqn, options: withCHAP).close()
                }
                #expect(daemon.isRunning, "ringtgtd exited:\n\(tail(daemon.stderrText))")
            }
        }

        /// A session keeps only the access a new login would get: binding CHAP ends the sessions that did
        /// not authenticate, unbinding the address from the ACL ends the sessions from it, and a CHAP session
        /// whose account is unbound and bound again goes on.
        @Test func sessionsTheTargetNoLongerAdmitsAreClosed() throws {
            try Self.requireRingtgt()
            try withTarget(luns: [.null(bytes: 16 * mebibyte)]) { t in
                let account = ["--lld", "iscsi", "--mode", "account"]
                let open = try RawSession(t.endpoint, target: t.iqn)
                #expect(try open.run(RawCDB.testUnitReady).status == RawCodes.good)
                try t.admin.must(account + ["--op", "new", "--user", chapUser, "--password", chapSecret])
                try t.admin.must(account + ["--op", "bind", "--tid", "1", "--user", chapUser])
                #expect(open.awaitClose(timeoutSeconds: RawSessionLimits.answerTimeoutSeconds),
                        "a session without CHAP kept its access after CHAP was bound to its target")

                var options = RawLoginOptions(initiatorName: "iqn.2026-01.org.ringtgt:chap-session")
                options.chap = (chapUser, chapSecret)
                let authed = try RawSession(t.endpoint, target: t.iqn, options: options)
                try t.admin.must(account + ["--op", "unbind", "--tid", "1", "--user", chapUser])
                try t.admin.must(account + ["--op", "bind", "--tid", "1", "--user", chapUser])
                #expect(try authed.run(RawCDB.testUnitReady).status == RawCodes.good,
                        "a CHAP session must survive its account being bound again")

                try t.admin.must(["--lld", "iscsi", "--op", "unbind", "--mode", "target", "--tid", "1", "-I", "ALL"])
                #expect(authed.awaitClose(timeoutSeconds: RawSessionLimits.answerTimeoutSeconds),
                        "a session kept its access after its address was unbound from the ACL")
                #expect(try listedInitiators(t.admin).isEmpty)
                #expect(t.daemon.log.contains("no longer admits it"), "each closed session is logged")
            }
        }

        /// RFC 7143 §12.1.3: secrets of at least 12 bytes, and not the same secret in both directions.
        @Test func shortAndRepeatedSecretsAreRefused() throws {
            try Self.requireRingtgt()
            try withTarget(luns: [.null(bytes: 16 * mebibyte)]) { t in
                let account = ["--lld", "iscsi", "--mode", "account"]
                let short = try t.admin.run(account + ["--op", "new", "--user", "bob", "--password", "secret12345"])
                #expect(!short.succeeded && short.stderr.contains("a CHAP secret must be at least 12 bytes"), "\(short)")
                try t.admin.must(account + ["--op", "new", "--user", chapUser, "--password", chapSecret])
                try t.admin.must(account + ["--op", "new", "--user", "tgt0", "--password", chapSecret])
                try t.admin.must(account + ["--op", "bind", "--tid", "1", "--user", chapUser])
                let same = try t.admin.run(account + ["--op", "bind", "--tid", "1", "--user", "tgt0", "--outgoing"])
                #expect(!same.succeeded && same.stderr.contains("must differ in each direction"), "\(same)")
            }
        }
    }

    @Suite("Admin: State offline")
    struct AdminStateOffline {
        /// tgt turns new connections away while the system is offline (ringtgtd answers the login with
        /// 0x0301, service unavailable) and answers logins to an offline target with 0x0300; sessions
        /// already logged in go on. `ready` admits again.
        @Test func offlineRefusesNewLoginsAndKeepsSessions() throws {
            try CHAPAdmission.requireRingtgt()
            try withTarget(luns: [.null(bytes: 16 * mebibyte)]) { t in
                let before = try RawSession(t.endpoint, target: t.iqn)
                let later = RawLoginOptions(initiatorName: "iqn.2026-01.org.ringtgt:later")
                func refusal() -> (UInt8, UInt8)? {
                    do { try RawSession(t.endpoint, target: t.iqn, options: later).close(); return nil }
                    catch { return loginStatus(error) ?? (0xff, 0xff) }
                }

                try t.admin.must(["--lld", "iscsi", "--op", "update", "--mode", "sys", "--name", "State", "-v", "offline"])
                #expect(refusal().map { [$0.0, $0.1] } == [3, 1], "a login while the system is offline")
                let ls = try t.tool("iscsi-ls", ["-s", t.endpoint.portalURL])
                #expect(!ls.stdout.contains(t.iqn), "discovery while the system is offline: \(ls)")
                #expect(try before.run(RawCDB.testUnitReady).status == RawCodes.good, "a session from before")
                try t.admin.must(["--lld", "iscsi", "--op", "update", "--mode", "sys", "--name", "State", "-v", "ready"])
                #expect(refusal() == nil, "a login once the system is ready again")

                try t.admin.must(["--lld", "iscsi", "--op", "update", "--mode", "target", "--tid", "1",
                                  "--name", "state", "--value", "offline"])
                #expect(refusal().map { [$0.0, $0.1] } == [3, 0], "a login to an offline target")
                #expect(try before.run(RawCDB.testUnitReady).status == RawCodes.good)
                try t.admin.must(["--lld", "iscsi", "--op", "update", "--mode", "target", "--tid", "1",
                                  "--name", "state", "--value", "ready"])
                #expect(refusal() == nil, "a login once the target is ready again")
            }
        }
    }
}
