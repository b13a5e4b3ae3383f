// The daemon's operations, without a daemon: the journald line format, the flood summary of failed
// logins, the login/session log wording, `--op delete --mode system`, and the pid file.

import Foundation
import Logging
import Testing
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor

@Suite struct OpsDaemonTests {
    // MARK: journald

    @Test func journalStreamMatchesOnlyStderrsOwnDeviceAndInode() {
        #expect(DaemonLogFormat.stderrIsJournal(journalStream: "8:12345", stderrDevice: 8, stderrInode: 12345))
        #expect(!DaemonLogFormat.stderrIsJournal(journalStream: "8:12345", stderrDevice: 8, stderrInode: 999))
        #expect(!DaemonLogFormat.stderrIsJournal(journalStream: nil, stderrDevice: 8, stderrInode: 12345))
        #expect(!DaemonLogFormat.stderrIsJournal(journalStream: "garbage", stderrDevice: 8, stderrInode: 12345))
        #expect(!DaemonLogFormat.stderrIsJournal(journalStream: "8:12345:1", stderrDevice: 8, stderrInode: 12345))
    }

    @Test func journalLinesCarrySdDaemonPrioritiesAndNoTimestamp() {
        func journal(_ level: Logger.Level, _ metadata: Logger.Metadata = [:]) -> String {
            DaemonLogFormat.line(.journal, level: level, message: "m", metadata: metadata, timestamp: { "STAMP" })
        }
        #expect(journal(.critical) == "<2>m\n")
        #expect(journal(.error) == "<3>m\n")
        #expect(journal(.warning, ["core": "1"]) == "<4>m core=1\n")
        #expect(journal(.notice) == "<5>m\n")
        #expect(journal(.info) == "<6>m\n")
        #expect(journal(.debug) == "<7>m\n" && journal(.trace) == "<7>m\n")
        // On a terminal or in a file the line has its own timestamp and level; syslog stamps lines itself.
        #expect(DaemonLogFormat.line(.stderr, level: .info, message: "m", timestamp: { "STAMP" }) == "STAMP info ringtgtd: m\n")
        #expect(DaemonLogFormat.line(.syslog, level: .info, message: "m", metadata: ["core": "0"]) == "m core=0")
    }

    // MARK: flood summary

    @Test func failedLoginFloodIsSummarisedAfterABurst() {
        var log = RateLimitedLog(intervalSeconds: LoginLog.failureIntervalSeconds, burst: LoginLog.failureBurstLines)
        let second: UInt64 = 1_000_000_000
        var written = 0, quiet = 0
        for i in 0..<10_000 {
            switch log.admit(nowNanos: 100 * second + UInt64(i) * 100_000) {   // 10,000 attempts in one second
            case 0?: written += 1
            case nil: quiet += 1
            case let n?: Issue.record("unexpected summary of \(n) inside the first interval")
            }
        }
        #expect(written == LoginLog.failureBurstLines)
        #expect(quiet == 10_000 - LoginLog.failureBurstLines)
        // The next interval's first line carries the count left out.
        #expect(log.admit(nowNanos: 111 * second) == 10_000 - LoginLog.failureBurstLines)
        #expect(log.admit(nowNanos: 111 * second + 1) == 0)
    }

    // MARK: login and session lines

    @Test func failedLoginLinesNameInitiatorAddressTargetAndReason() {
        let chap = LoginLog.failure(status: LoginStatus.authenticationFailure.rawValue, reason: "CHAP_R mismatch",
                                    initiatorName: "iqn.2026-01.test:ini", peer: "10.0.0.2",
                                    targetName: "iqn.2026-01.test:t1")
        #expect(chap == "login failed (CHAP): initiator iqn.2026-01.test:ini from 10.0.0.2 to target "
                + "iqn.2026-01.test:t1: status 0x0201: CHAP_R mismatch")
        let acl = LoginLog.failure(status: 0x0202, reason: "initiator x not allowed on t", initiatorName: "x",
                                   peer: "[::1]:4000", targetName: nil)
        #expect(acl.hasPrefix("login failed (ACL): initiator x from [::1]:4000: status 0x0202"))
        #expect(LoginLog.failure(status: 0x0203, reason: nil, initiatorName: nil, peer: "p", targetName: nil)
                == "login failed (unknown target): initiator ? from p: status 0x0203")
        #expect(LoginLog.category(0x0207) == "bad keys" && LoginLog.category(0x0200) == "bad keys")
        #expect(LoginLog.category(0x0301) == "system offline")
        #expect(LoginLog.sessionStarted(initiatorName: "i", peer: "p", targetName: "t", tsih: 7)
                == "session started with target t: initiator i from p, TSIH 7")
        #expect(LoginLog.sessionEnded(initiatorName: "i", peer: "p", targetName: "t", reason: "logout")
                == "session with target t ended: initiator i from p: logout")
    }

    // MARK: --op delete --mode system

    @Test func systemDeleteStopsOnlyWithoutTargetsUnlessForced() {
        let h = ControlHarness()
        var stops = 0
        h.registry.shutdownHandler = { stops += 1 }
        #expect(h.run("--lld iscsi --op new --mode target --tid 1 --targetname iqn.2026-01.test:t1").exitCode == 0)
        let refused = h.run("--op delete --mode system")
        #expect(refused.exitCode == 22)
        #expect(refused.stderr == "ringtgtadm: invalid request: target(s) 1 still exist; delete them first or use --force\n")
        #expect(stops == 0)
        #expect(h.run("--op delete --mode system --force").exitCode == 0)
        #expect(stops == 1)

        let empty = ControlHarness()
        var emptyStops = 0
        empty.registry.shutdownHandler = { emptyStops += 1 }
        #expect(empty.run("--op delete --mode system").exitCode == 0)
        #expect(emptyStops == 1)
    }

    // MARK: pid file

    @Test func pidFileHoldsThePidAndIsRemovedOnlyByItsOwner() throws {
        let dir = makeTemporaryDirectory()
        defer { _ = try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/ringtgtd.pid"
        try PidFile.write(path, pid: 4242)
        #expect(FileManager.default.contents(atPath: path) == Data("4242\n".utf8))
        PidFile.remove(path, pid: 4343)   // a successor's file stays
        #expect(FileManager.default.fileExists(atPath: path))
        PidFile.remove(path, pid: 4242)
        #expect(!FileManager.default.fileExists(atPath: path))
        #expect(throws: PidFileError.self) { try PidFile.write(dir + "/no-such-dir/ringtgtd.pid") }
    }
}
