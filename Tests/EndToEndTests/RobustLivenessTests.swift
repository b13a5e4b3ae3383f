// Liveness: the target pings idle sessions and drops the ones that never answer, and a connection that
// never finishes its login is closed at the login timeout. Neither may disturb the sessions that work.

import Foundation
import ISCSIWire
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension EndToEnd {
    @Suite("Robust: liveness")
    struct RobustLiveness {
        /// nop_interval=1, nop_count=2: a ping after 1 s of silence, a close when it stays unanswered for
        /// nop_interval * nop_count = 2 s. Given as `--iscsi nop_count=2 --iscsi nop_interval=1`: the order
        /// of the options must not matter (ringtgtd once multiplied by the interval seen so far).
        static let nopIntervalSeconds = 1.0
        static let nopCount = 2.0
        /// The daemon's login timeout (ReactorConfig.loginTimeoutSeconds; README "15 s to log in").
        static let loginTimeoutSeconds = 15.0
        /// The target's timers tick once a second, so every deadline it keeps may be off by about that.
        static let tickSlackSeconds = 1.5

        /// A silent session (logged in, never answers NOP-In) gets a ping with a TTT and is dropped about
        /// nop_interval * nop_count seconds later. Meanwhile an idle session that answers its pings stays
        /// up, and a third session's I/O keeps completing.
        @Test func silentSessionIsPingedAndDroppedWhileOthersWork() throws {
            try withTarget(daemonOptions: ["--iscsi", "nop_count=2", "--iscsi", "nop_interval=1"],
                           luns: [.file(bytes: 16 * mebibyte)]) { t in
                let prefix = "\(RunningTarget.iqnPrefix):liveness"
                let silent = try RawSession(t.endpoint, target: t.iqn,
                                            options: RawLoginOptions(initiatorName: "\(prefix)-silent"))
                let loginDone = monotonicSeconds()
                let responder = try RawSession(t.endpoint, target: t.iqn,
                                               options: RawLoginOptions(initiatorName: "\(prefix)-responder"))
                let worker = try RawSession(t.endpoint, target: t.iqn,
                                            options: RawLoginOptions(initiatorName: "\(prefix)-worker"))

                var pingAt: Double? = nil
                var pingPDU: TargetPDU? = nil
                var closedAt: Double? = nil
                var unexpected: [TargetPDU] = []
                var ios = 0
                // Bounded: ping after ~1-2 s, close ~3 s later; 15 s is far beyond that.
                let deadline = loginDone + 15
                while closedAt == nil && monotonicSeconds() < deadline {
                    switch try silent.receive(timeoutSeconds: 0.1, answerPings: false) {
                    case .pdu(let p):
                        if p.opcode == ISCSIOpcode.nopIn && p.ttt != reservedTag {
                            if pingAt == nil { pingAt = monotonicSeconds(); pingPDU = p }
                        } else {
                            unexpected.append(p)
                        }
                    case .closed: closedAt = monotonicSeconds()
                    case .timeout: break
                    }
                    // The responder only answers pings (inside receive); it must never see a close.
                    if case .closed = try responder.receive(timeoutSeconds: 0.05) {
                        Issue.record("the target closed a session that answered its pings")
                        return
                    }
                    let data = patternBytes(16 * 1024, seed: UInt64(ios))
                    try worker.writeReadVerify(lba: UInt32(ios % 64) * 32, data: data)
                    ios += 1
                }

                let ping = try #require(pingPDU, "the silent session never received a NOP-In ping")
                #expect(ping.itt == reservedTag, "a target ping carries ITT 0xffffffff: \(ping)")
                let firstPing = try #require(pingAt) - loginDone
                #expect(firstPing <= RobustLiveness.nopIntervalSeconds + 2 * RobustLiveness.tickSlackSeconds,
                        "first ping \(firstPing) s after login; nop_interval is 1 s")
                let closed = try #require(closedAt, "the silent session was not dropped within 15 s")
                let afterPing = closed - pingAt!
                let expected = RobustLiveness.nopIntervalSeconds * RobustLiveness.nopCount
                #expect(afterPing >= expected - RobustLiveness.tickSlackSeconds
                        && afterPing <= expected + 3 * RobustLiveness.tickSlackSeconds,
                        "dropped \(afterPing) s after the unanswered ping (nop_interval*nop_count = \(expected) s)")
                #expect(unexpected.isEmpty, "the silent session got: \(unexpected)")
                print("liveness: silent session pinged \(String(format: "%.1f", firstPing)) s after login, " +
                      "dropped \(String(format: "%.1f", afterPing)) s after the ping; worker did \(ios) write+read " +
                      "pairs meanwhile; responder answered \(responder.pingsAnswered) ping(s)")

                #expect(ios >= 5, "the working session completed only \(ios) write/read pairs meanwhile")
                #expect(responder.pingsAnswered >= 1, "the idle responder was never pinged")
                // Both survivors still work, and only they are listed.
                #expect(try responder.run(RawCDB.testUnitReady).status == RawCodes.good)
                try worker.writeReadVerify(lba: 4096, data: patternBytes(64 * 1024, seed: 99))
                let listing = try waitForListing(t.admin, timeoutSeconds: 5) { !$0.contains("\(prefix)-silent") }
                #expect(listing.ok, "the dropped session is still listed: \(listing.names)")
                #expect(listing.names.contains("\(prefix)-responder") && listing.names.contains("\(prefix)-worker"),
                        "listed: \(listing.names)")
                // A real initiator logs in fine afterwards.
                let ls = try t.tool("iscsi-ls", ["-s", t.endpoint.portalURL], timeoutSeconds: 30)
                #expect(ls.succeeded && ls.stdout.contains(t.iqn), "\(ls)")
            }
        }

        /// A target's own nop_interval/nop_count (`tgtadm --op update --mode target --name nop_interval`) act
        /// even when the daemon-wide pings are off: a silent session on that target is pinged and dropped.
        @Test func perTargetNopSettingsPingAndDrop() throws {
            try withTarget(daemonOptions: ["--iscsi", "nop_interval=0"], luns: [.null(bytes: gibibyte)]) { t in
                for (name, value) in [("nop_interval", "1"), ("nop_count", "2")] {
                    try t.admin.must(["--lld", "iscsi", "--op", "update", "--mode", "target", "--tid", "1",
                                      "--name", name, "--value", value])
                }
                let silent = try RawSession(t.endpoint, target: t.iqn, options: RawLoginOptions(
                    initiatorName: "\(RunningTarget.iqnPrefix):per-target-nop"))
                let loginDone = monotonicSeconds()
                var pingAt: Double? = nil
                var closedAt: Double? = nil
                let deadline = loginDone + 15
                while closedAt == nil && monotonicSeconds() < deadline {
                    switch try silent.receive(timeoutSeconds: 0.1, answerPings: false) {
                    case .pdu(let p):
                        if p.opcode == ISCSIOpcode.nopIn && p.ttt != reservedTag && pingAt == nil {
                            pingAt = monotonicSeconds()
                        }
                    case .closed: closedAt = monotonicSeconds()
                    case .timeout: break
                    }
                }
                let ping = try #require(pingAt, "no NOP-In ping although the target's nop_interval is 1 s") - loginDone
                #expect(ping <= RobustLiveness.nopIntervalSeconds + 2 * RobustLiveness.tickSlackSeconds,
                        "first ping \(ping) s after login")
                let closed = try #require(closedAt, "the silent session was not dropped within 15 s") - pingAt!
                let expected = RobustLiveness.nopIntervalSeconds * RobustLiveness.nopCount
                #expect(closed >= expected - RobustLiveness.tickSlackSeconds
                        && closed <= expected + 3 * RobustLiveness.tickSlackSeconds,
                        "dropped \(closed) s after the ping (target nop_interval*nop_count = \(expected) s)")
            }
        }

        /// Connections that never complete a login are closed at the login timeout: one that sends nothing,
        /// one that stops inside the BHS, one that stops inside the data segment, and one whose Login
        /// Request does not ask to transit (so the login never ends). A real initiator logs in meanwhile.
        @Test func unfinishedLoginsAreClosedAtTheLoginTimeout() throws {
            try withTarget(luns: [.null(bytes: gibibyte)]) { t in
                let loginPDU = LoginPDU.request(initiator: "\(RunningTarget.iqnPrefix):half-login", target: t.iqn)
                var noTransit = loginPDU
                noTransit[1] = (1 << 2) | 1     // T=0, CSG operational, NSG operational
                let cases: [(String, [UInt8])] = [
                    ("nothing", []),
                    ("20 bytes of a BHS", Array(loginPDU.prefix(20))),
                    ("a BHS and part of its data", Array(loginPDU.prefix(60))),
                    ("a login that never transits", noTransit),
                ]
                let opened = monotonicSeconds()
                let sockets = try cases.map { _ in try RawSocket(t.endpoint) }
                for (i, c) in cases.enumerated() where !c.1.isEmpty { try sockets[i].send(c.1) }

                // While they hang, a normal session works.
                let ls = try t.tool("iscsi-ls", ["-s", t.endpoint.portalURL], timeoutSeconds: 30)
                #expect(ls.succeeded && ls.stdout.contains(t.iqn), "login during unfinished logins: \(ls)")

                let limit = opened + RobustLiveness.loginTimeoutSeconds + 3 * RobustLiveness.tickSlackSeconds
                for (i, c) in cases.enumerated() {
                    let closed = sockets[i].awaitClose(deadline: limit)
                    let after = monotonicSeconds() - opened
                    #expect(closed, "\(c.0): still open \(String(format: "%.1f", after)) s after connecting")
                    if i == 0 {
                        // The earliest close measures the timeout; the later ones were waited for after it.
                        #expect(after >= RobustLiveness.loginTimeoutSeconds - RobustLiveness.tickSlackSeconds,
                                "\(c.0): closed after \(after) s, before the \(RobustLiveness.loginTimeoutSeconds) s login timeout")
                        print("login timeout: a silent connection was closed \(String(format: "%.1f", after)) s after connecting")
                    }
                }
                try t.requireAlive("after unfinished logins")
            }
        }
    }
}
