// Issue 11 against a real ringtgtd: a CHAP guesser from one loopback address gets its failures at most
// LoginThrottle.maxFailuresPerSecondPerAddress a second while the right password from another address logs in
// at once; and a user other than root or the daemon's own is turned away at the control socket.

import Foundation
import Target
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension EndToEnd {
    @Suite("Robust: CHAP brute force and the control socket")
    struct BruteForce {
        static let attackerAddress = "127.0.0.2"
        /// Connections the attacker keeps guessing over at once (well under the 64 a source address may hold).
        static let attackerConnections = 6
        /// How long the attack runs; a bound on the loop, not a wait for anything.
        static let attackSeconds = 10.0
        /// Failures the attacker must have had before the correct login is tried, so it runs against a
        /// throttled attacker (the first failures are answered at once).
        static let failuresBeforeCorrectLogin = 3
        /// The issue's bound: a correct login from another address succeeds within this, attack or not.
        static let correctLoginSeconds = 1.0

        /// What the attacker saw, from all its threads.
        final class Tally: @unchecked Sendable {
            private let lock = NSLock()
            private(set) var failureTimes: [Double] = []
            private(set) var refusedUnchecked = 0
            private(set) var other: [String] = []
            private(set) var attempts = 0
            let enoughFailures = DispatchSemaphore(value: 0)

            func record(_ error: Error) {
                let text = "\(error)"
                lock.lock()
                defer { lock.unlock() }
                attempts += 1
                if text.contains("status class 0x02 detail 0x01") {
                    failureTimes.append(monotonicSeconds())
                    if failureTimes.count == BruteForce.failuresBeforeCorrectLogin { enoughFailures.signal() }
                } else if text.contains("status class 0x03 detail 0x01") {
                    refusedUnchecked += 1
                } else {
                    other.append(text)
                }
            }

            /// The most failures answered within any one second.
            var mostPerSecond: Int {
                lock.lock()
                defer { lock.unlock() }
                let times = failureTimes.sorted()
                var most = 0
                var low = 0
                for high in times.indices {
                    while times[high] - times[low] >= 1.0 { low += 1 }
                    most = max(most, high - low + 1)
                }
                return most
            }
        }

        @Test(.enabled(if: Peer.current == .ringtgt, "tgt does not slow CHAP guessing down"))
        func guessesFromOneAddressAreSlowedAndAnotherAddressLogsInAtOnce() throws {
            try withTarget(luns: [.null(bytes: 16 * mebibyte)]) { t in
                let account = ["--lld", "iscsi", "--mode", "account"]
                try t.admin.must(account + ["--op", "new", "--user", CHAPLogins.user, "--password", CHAPLogins.secret])
                try t.admin.must(account + ["--op", "bind", "--tid", "1", "--user", CHAPLogins.user])

                let tally = Tally()
                let stopAt = monotonicSeconds() + Self.attackSeconds
                let group = DispatchGroup()
                for i in 0..<Self.attackerConnections {
                    group.enter()
                    Thread {
                        defer { group.leave() }
                        var options = RawLoginOptions()
                        options.chap = (user: CHAPLogins.user, secret: "guess\(i)-wrongsecret")
                        options.sourceAddress = Self.attackerAddress
                        options.clearUnitAttentionLUNs = []
                        options.isid = 0x4000_0000_0100 + UInt64(i)
                        while monotonicSeconds() < stopAt {
                            do {
                                let s = try RawSession(t.endpoint, target: t.iqn, options: options)
                                s.close()
                                tally.record(E2EError("a wrong secret logged in"))
                            } catch {
                                tally.record(error)
                            }
                        }
                    }.start()
                }
                defer { group.wait() }

                // The correct login runs while the attacker is being held back.
                let throttled = tally.enoughFailures.wait(timeout: .now() + Self.attackSeconds)
                #expect(throttled == .success, "the attacker never had \(Self.failuresBeforeCorrectLogin) failures")
                let started = monotonicSeconds()
                let ok = try t.tool("iscsi-inq", [CHAPLogins.url(t, user: CHAPLogins.user, secret: CHAPLogins.secret)])
                let correctSeconds = monotonicSeconds() - started
                #expect(ok.succeeded && ok.stdout.contains("DIRECT_ACCESS"), "\(ok)")
                #expect(correctSeconds < Self.correctLoginSeconds,
                        "a correct login from 127.0.0.1 took \(correctSeconds) s during the attack")
                group.wait()

                let most = tally.mostPerSecond
                let total = tally.attempts
                print("""
                    brute force: \(total) attempts over \(Self.attackerConnections) connections in \(Self.attackSeconds) s \
                    from \(Self.attackerAddress): \(tally.failureTimes.count) answered as failed, \
                    \(tally.refusedUnchecked) refused unchecked (0x0301); at most \(most) failures in one second \
                    (bound \(LoginThrottle.maxFailuresPerSecondPerAddress)); correct login from 127.0.0.1 in \
                    \(String(format: "%.3f", correctSeconds)) s
                    """)
                #expect(tally.other.isEmpty, "unexpected outcomes: \(tally.other.prefix(3))")
                #expect(most <= LoginThrottle.maxFailuresPerSecondPerAddress, "\(most) failures in one second")
                // Some guesses were checked (the attack was real); after the first few, one per maximal pause,
                // counting the last ones, answered up to the longest hold after the attack stopped.
                #expect(tally.failureTimes.count >= Self.failuresBeforeCorrectLogin)
                let pause = Double(LoginThrottle.maxDelayNanos) / 1e9, hold = Double(LoginThrottle.maxHoldNanos) / 1e9
                #expect(tally.failureTimes.count <= 5 + Int((Self.attackSeconds + hold) / pause) + 1,
                        "\(tally.failureTimes.count) guesses checked")
                // Every failure is logged, rate-limited: the attacker's address appears, the flood is summarised.
                let log = t.daemon.log
                #expect(log.contains("login failed (CHAP): initiator iqn.2026-01.org.ringtgt:raw-session from \(Self.attackerAddress)"),
                        "\(tail(log))")
                let failureLines = log.split(separator: "\n").filter { $0.contains("login failed") }.count
                #expect(failureLines < tally.failureTimes.count + tally.refusedUnchecked,
                        "\(failureLines) log lines for \(tally.failureTimes.count + tally.refusedUnchecked) failures")
                try t.requireAlive("after the brute-force attack")
            }
        }

        /// The socket is 0600 and root's, so another user cannot even connect. Loosen it as a mistaken package
        /// might: the SO_PEERCRED check still turns the user away with tgtadm's error, runs nothing, and logs it.
        @Test(.enabled(if: Peer.current == .ringtgt && geteuid() == 0, "needs root to run a command as nobody"))
        func anotherUserIsRefusedAtTheControlSocket() throws {
            try withTarget(luns: [.null(bytes: 16 * mebibyte)]) { t in
                let socket = try #require(t.admin.controlSocketPath)
                var st = stat()
                #expect(stat(socket, &st) == 0 && st.st_mode & 0o777 == 0o600, "mode \(String(st.st_mode & 0o777, radix: 8))")
                #expect(chmod(t.scratch.url.path, 0o711) == 0 && chmod(socket, 0o666) == 0)

                let setpriv = try Tools.require("setpriv")
                let nobody = ["--reuid=65534", "--regid=65534", "--clear-groups", "--"]
                let asNobody = try runTool(setpriv, nobody + [t.admin.executable.path] + t.admin.controlArgs
                                           + ["--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", "1"],
                                           logDir: t.scratch.url, timeoutSeconds: DaemonLimits.adminTimeoutSeconds)
                #expect(asNobody.exitStatus == AdminExitCode.daemonError, "\(asNobody)")
                #expect(asNobody.stderr.contains("invalid request: permission denied"), "\(asNobody)")
                // Nothing ran: the target is still there.
                let show = try t.admin.must(["--lld", "iscsi", "--op", "show", "--mode", "target"])
                #expect(show.stdout.contains(t.iqn), "\(show.stdout)")
                #expect(t.daemon.log.contains("refused uid 65534, gid 65534"), "\(tail(t.daemon.log))")
            }
        }
    }
}
