// TestSupport's process and port fixtures, which this harness and the perf runner share. Each process
// started here is stopped by the test; none of the waits is a sleep.

import Foundation
import Testing

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

    @Test func seededRandomReplaysItsStream() {
        var a = SeededRandom(seed: 42), b = SeededRandom(seed: 42), c = SeededRandom(seed: 43)
        let xs = (0..<8).map { _ in a.next() }
        #expect(xs == (0..<8).map { _ in b.next() })
        #expect(xs != (0..<8).map { _ in c.next() })
        // SplitMix64's first output for seed 0, as its reference implementation prints it.
        var z = SeededRandom(seed: 0)
        #expect(z.next() == 0xE220_A839_7B1D_CDAF)
    }
}
