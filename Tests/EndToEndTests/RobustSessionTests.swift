// Session lifetime: Logout, session reinstatement by initiator name + ISID (RFC 7143 §6.3.5), and many
// idle sessions held at once beside one that works.

import Foundation
import ISCSIWire
import Testing

extension EndToEnd {
    @Suite("Robust: sessions")
    struct RobustSessions {
        static let prefix = "\(RunningTarget.iqnPrefix):sessions"
        /// Idle sessions held at once on one core.
        static let idleSessions = 200

        /// Logout "close the session": a Logout Response (response 0, our ITT), then the target closes
        /// the connection and drops the session. Logout "remove the connection for recovery" needs
        /// ErrorRecoveryLevel 2: refused with response 2, and the session stays.
        @Test func logoutIsAnsweredAndClosesTheConnection() throws {
            try withTarget(luns: [.null(bytes: gibibyte)]) { t in
                let name = "\(RobustSessions.prefix)-logout"
                let s = try RawSession(t.endpoint, target: t.iqn, options: RawLoginOptions(initiatorName: name))
                #expect(try s.run(RawCDB.testUnitReady).status == RawCodes.good)

                let recovery = try s.sendLogout(reason: 2)
                let r2 = try s.expectPDU("the Logout Response to reason 2")
                #expect(r2.opcode == ISCSIOpcode.logoutResponse && r2.itt == recovery && r2.byte2 == 2,
                        "Logout for recovery at ERL 0: \(r2)")
                #expect(try s.run(RawCDB.testUnitReady).status == RawCodes.good, "the session after a refused logout")

                let nextStatSN = s.expStatSN
                let itt = try s.sendLogout(reason: 0)
                let r = try s.expectPDU("the Logout Response")
                #expect(r.opcode == ISCSIOpcode.logoutResponse && r.itt == itt && r.byte2 == 0, "Logout: \(r)")
                #expect(r.statSN == nextStatSN, "Logout Response StatSN \(r.statSN), expected \(nextStatSN)")
                #expect(s.awaitClose(timeoutSeconds: RawSessionLimits.answerTimeoutSeconds),
                        "the target kept the connection open after the Logout Response")
                let listing = try waitForListing(t.admin, timeoutSeconds: 5) { !$0.contains(name) }
                #expect(listing.ok, "the logged-out session is still listed: \(listing.names)")
            }
        }

        /// A second login with the same initiator name and ISID replaces the first session: the first
        /// connection is closed, the second works, one session is listed. The same name with another
        /// ISID is another session and stays.
        @Test func reinstatementClosesTheOldSession() throws {
            try withTarget(cores: 2, luns: [.file(bytes: 16 * mebibyte)]) { t in
                let name = "\(RobustSessions.prefix)-reinstate"
                let isid: UInt64 = 0x4000_00AB_CD01
                let first = try RawSession(t.endpoint, target: t.iqn, options: RawLoginOptions(initiatorName: name, isid: isid))
                let sibling = try RawSession(t.endpoint, target: t.iqn,
                                             options: RawLoginOptions(initiatorName: name, isid: isid + 1))
                try first.writeReadVerify(lba: 0, data: patternBytes(8192, seed: 1))

                let second = try RawSession(t.endpoint, target: t.iqn, options: RawLoginOptions(initiatorName: name, isid: isid))
                #expect(second.tsih != first.tsih, "the new session got the old TSIH \(first.tsih)")
                #expect(first.awaitClose(timeoutSeconds: RawSessionLimits.answerTimeoutSeconds),
                        "the reinstated session's connection was not closed")
                try second.writeReadVerify(lba: 0, data: patternBytes(8192, seed: 2))
                try sibling.ping()
                #expect(try sibling.run(RawCDB.testUnitReady).status == RawCodes.good, "the session with another ISID")
                let listing = try waitForListing(t.admin, timeoutSeconds: 5) { $0.filter { $0 == name }.count == 2 }
                #expect(listing.ok, "expected the new session and the sibling listed: \(listing.names)")
            }
        }

        /// 200 idle sessions logged in at once on one core, plus one session doing verified I/O. All stay
        /// up, the daemon's memory is reported, and when they all close the daemon lists none.
        @Test func manyIdleSessionsAndOneBusy() throws {
            try withTarget(cores: 1, luns: [.file(bytes: 64 * mebibyte)]) { t in
                let pid = t.daemon.process.pid
                let rssStart = residentKiB(pid: pid)
                let started = monotonicSeconds()
                var idle: [RawSession] = []
                for i in 0..<RobustSessions.idleSessions {
                    idle.append(try RawSession(t.endpoint, target: t.iqn,
                                               options: RawLoginOptions(initiatorName: "\(RobustSessions.prefix)-idle\(i)",
                                                                        isid: 0x4000_0000_0000 | UInt64(i + 1))))
                }
                let loginSeconds = monotonicSeconds() - started
                let rssIdle = residentKiB(pid: pid)
                let busy = try RawSession(t.endpoint, target: t.iqn,
                                          options: RawLoginOptions(initiatorName: "\(RobustSessions.prefix)-busy"))
                for round in 0..<16 {
                    try busy.writeReadVerify(lba: UInt32(round) * 512, data: patternBytes(256 * 1024, seed: UInt64(round)))
                }
                let listed = try listedInitiators(t.admin)
                #expect(listed.count == RobustSessions.idleSessions + 1, "listed \(listed.count) sessions")
                // Every idle session is still alive and in step.
                var dead: [Int] = []
                for (i, s) in idle.enumerated() {
                    do { try s.ping(timeoutSeconds: 5) } catch { dead.append(i) }
                }
                #expect(dead.isEmpty, "\(dead.count) idle sessions did not answer a ping, e.g. \(dead.prefix(5))")
                let rssBusy = residentKiB(pid: pid)

                for s in idle { s.close() }
                busy.close()
                let gone = try waitForListing(t.admin, timeoutSeconds: 10) { $0.isEmpty }
                #expect(gone.ok, "\(gone.names.count) sessions still listed 10 s after every client closed")
                let rssEnd = residentKiB(pid: pid)
                func mib(_ k: Int?) -> String { k.map { String(format: "%.1f MiB", Double($0) / 1024) } ?? "?" }
                print("many sessions: \(RobustSessions.idleSessions) logins in \(String(format: "%.2f", loginSeconds)) s; " +
                      "daemon VmRSS at start \(mib(rssStart)), with \(RobustSessions.idleSessions) idle sessions " +
                      "\(mib(rssIdle)), after I/O \(mib(rssBusy)), after all closed \(mib(rssEnd))")
                if let a = rssStart, let b = rssIdle {
                    print("many sessions: about \((b - a) / RobustSessions.idleSessions) KiB resident per idle session")
                }
                // A fresh session still logs in and works after all that.
                let fresh = try RawSession(t.endpoint, target: t.iqn,
                                           options: RawLoginOptions(initiatorName: "\(RobustSessions.prefix)-fresh"))
                try fresh.writeReadVerify(lba: 0, data: patternBytes(4096, seed: 77))
            }
        }
    }
}
