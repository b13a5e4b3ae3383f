// TestSupport's process, port and daemon fixtures, which this harness and the perf runner share. Each
// process started here is stopped by the test; none of the waits is a sleep.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite("Shared fixtures")
struct SharedFixtureTests {
    @Test func aToolPastItsLimitIsKilledAndSaysSo() throws {
        try withScratch { s in
            let r = try runTool(URL(fileURLWithPath: "/bin/sleep"), ["600"], logDir: s.url, timeoutSeconds: 0.2)
            #expect(r.timedOut && !r.succeeded)
            #expect(r.seconds < killGraceSeconds + 5)
        }
    }

    @Test func readinessIsALineOnAPipedStdout() throws {
        try withScratch { s in
            let p = try ToolProcess(URL(fileURLWithPath: "/bin/sh"), ["-c", "echo starting; echo 'listening tcp [::1]:7000'; exec sleep 600"],
                                    logDir: s.url, label: "ready", stdout: .pipe)
            defer { p.terminate(graceSeconds: 1) }
            let lines = try p.waitForLines(timeoutSeconds: 20) { $0.contains { $0.hasPrefix("listening tcp ") } }
            let a = SheepTestServerFixture.address(lines, "listening tcp ")
            #expect(a?.host == "[::1]" && a?.port == 7000)
            #expect(p.isRunning)
            // SIGTERM or, where the test runner left it ignored in its children, SIGKILL after the grace.
            p.terminate(graceSeconds: 1)
            #expect(!p.isRunning)
        }
    }

    @Test func aProcessThatExitsBeforeItIsReadyFailsTheWaitAtOnce() throws {
        try withScratch { s in
            let p = try ToolProcess(URL(fileURLWithPath: "/bin/sh"), ["-c", "echo nope; exit 3"], logDir: s.url,
                                    label: "early", stdout: .pipe)
            #expect(throws: FixtureError.self) { _ = try p.waitForLines(timeoutSeconds: 60) { $0.contains("ready") } }
            #expect(p.waitForExit(seconds: 10))
        }
    }

    @Test func freePortsAreDistinctAndNonZero() throws {
        let ports = try freeTCPPorts(3)
        #expect(ports.count == 3 && Set(ports).count == 3 && !ports.contains(0))
    }

    @Test func processStatsReadThisProcessFromProc() throws {
        let me = getpid()
        let fds = try #require(ProcessStats.openDescriptors(me))
        let fd = open("/dev/null", O_RDONLY)
        defer { close(fd) }
        #expect(ProcessStats.openDescriptors(me) == fds + 1)
        let memory = try #require(ProcessStats.memoryKiB(me))
        #expect(memory.rss > 0 && memory.hwm >= memory.rss)
        #expect(try #require(ProcessStats.cpuSeconds(me)) > 0)
        #expect(ProcessStats.cpuSeconds(0) == nil && ProcessStats.memoryKiB(0) == nil)
    }

    /// The package's ringtgtd through the shared fixture, with what its `stop()` reports collected.
    static func startDaemon(in s: Scratch, extraArgs: [String] = [], problems: @escaping (String) -> Void) throws -> TargetDaemon {
        let programs = DaemonLauncher(daemon: try Paths.packageBinary("ringtgtd"), admin: try Paths.packageBinary("ringtgtadm"))
        return try TargetDaemon(peer: .ringtgt, cores: 1, extraArgs: extraArgs, launcher: programs, logDir: s.url,
                                reportProblem: problems)
    }

    @Test func theDaemonFixtureStartsServesAndStopsCleanly() throws {
        try withScratch { s in
            var problems: [String] = []
            let d = try Self.startDaemon(in: s) { problems.append($0) }
            defer { d.stop(recordProblems: false) }
            let endpoint = try #require(d.endpoints.first)
            #expect(d.endpoints.count == 1 && endpoint.host == "127.0.0.1" && endpoint.port != 0, "\(d.endpoints)")
            // Serves: the admin tool configures it, and the portal it reported accepts a connection.
            let iqn = "\(RunningTarget.iqnPrefix):fixture"
            try d.admin.newTarget(tid: 1, name: iqn)
            try d.admin.newNullLUN(tid: 1, lun: 1, bytes: mebibyte, peer: .ringtgt)
            try d.admin.bind(tid: 1)
            #expect(try d.admin.must(["--lld", "iscsi", "--op", "show", "--mode", "target"]).stdout.contains(iqn))
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            #expect(endpoint.connect(fd) == 0, "connect to \(endpoint): errno \(errno)")
            d.stop()
            #expect(!d.isAlive)
            #expect(problems.isEmpty, "\(problems)")
        }
    }

    @Test func aKilledDaemonIsReportedWithItsLogTail() throws {
        try withScratch { s in
            var problems: [String] = []
            let d = try Self.startDaemon(in: s) { problems.append($0) }
            defer { d.stop(recordProblems: false) }
            let lastLine = try #require(d.log.split(whereSeparator: \.isNewline).last.map(String.init),
                                        "ringtgtd logs its start")
            kill(d.process.pid, SIGKILL)
            #expect(d.process.waitForExit(seconds: DaemonLimits.stopGraceSeconds))
            d.stop()
            #expect(problems.count == 1, "\(problems)")
            let report = problems.first ?? ""
            #expect(report.contains("no longer running") && report.contains("killed by signal \(SIGKILL)"), "\(report)")
            #expect(report.contains(lastLine), "the report carries the log's tail: \(report)")
        }
    }

    @Test func aDaemonThatExitsAtStartFailsTheFixtureWithItsOutput() throws {
        try withScratch { s in
            let error = #expect(throws: FixtureError.self) {
                _ = try Self.startDaemon(in: s, extraArgs: ["--no-such-option"]) { _ in }
            }
            #expect(error?.description.contains("exited before its control endpoint answered") == true, "\(String(describing: error))")
            #expect(error?.description.contains("no-such-option") == true, "the daemon's own words: \(String(describing: error))")
        }
    }
}
