// GET LBA STATUS on a null LUN: the command that spins tgt's event loop forever (every session on the
// daemon stops). Here it must answer, and another session must keep being served meanwhile.

import Foundation
import Testing

extension EndToEnd {
    @Suite("GET LBA STATUS on a null LUN")
    struct NullLUNGetLBAStatus {
        static let suiteTimeoutSeconds = 120.0
        /// One 1 MiB read should take milliseconds; this long means the daemon stopped serving.
        static let readTimeoutSeconds = 10.0
        static let readBytes = 1 << 20
        static let pattern: UInt8 = 0x3C

        /// One reactor core serves both sessions, so a GET LBA STATUS that monopolised the core would
        /// starve the reader, as it does on tgt.
        @Test func getLBAStatusSuitePassesWhileAnotherSessionReads() throws {
            try withTarget(cores: 1, luns: [.null(bytes: 1 * gibibyte), .file(bytes: 16 * mebibyte)]) { t in
                let nullURL = t.url(lun: 1)
                let fileURL = t.url(lun: 2)
                let len = NullLUNGetLBAStatus.readBytes
                let p = NullLUNGetLBAStatus.pattern
                let prep = try t.tool("qemu-io", ["-f", "raw", "-c", "write -P \(p) 0 \(len)", fileURL])
                try #require(prep.succeeded && QemuIOReport(prep.stdout).errorLines.isEmpty, "\(prep)")

                let suite = try t.launch("iscsi-test-cu", ["-d", "-t", "SCSI.GetLBAStatus", nullURL])
                defer { suite.terminate() }
                let deadline = Date().addingTimeInterval(NullLUNGetLBAStatus.suiteTimeoutSeconds)
                var reads = 0
                var readsCompletedWhileSuiteRan = 0
                // Read until the suite ends: at least once, and every read must come back good and fast.
                repeat {
                    let r = try t.tool("qemu-io", ["-f", "raw", "-r", "-c", "read -P \(p) 0 \(len)", fileURL],
                                       timeoutSeconds: NullLUNGetLBAStatus.readTimeoutSeconds)
                    let errors = QemuIOReport(r.stdout + r.stderr).errorLines
                    try #require(r.succeeded && errors.isEmpty,
                                 "read on LUN 2 failed while GET LBA STATUS ran on the null LUN: \(r)")
                    reads += 1
                    if suite.isRunning { readsCompletedWhileSuiteRan += 1 }
                } while suite.isRunning && Date() < deadline

                let remaining = max(1, deadline.timeIntervalSinceNow)
                let result = suite.wait(timeoutSeconds: remaining)
                try #require(!result.timedOut && !result.killedBySignal,
                             "the GetLBAStatus suite did not finish: \(result)")
                let report = try CUnitReport(result.stdout)
                try #require(report.consistencyProblem() == nil, "\(report.consistencyProblem()!)\n\(result.stdout)")
                #expect(report.tests.count >= 3, "\(result.stdout)")
                let failedNames = report.failed.map(\.name)
                #expect(failedNames.isEmpty, "\(tail(result.stdout))")
                #expect(reads >= 1)
                // Whether reads overlapped depends on how fast the suite is; say so in the log.
                print("GetLBAStatus on null LUN: \(reads) reads on LUN 2, \(readsCompletedWhileSuiteRan) " +
                      "completed while the suite still ran; suite took \(String(format: "%.2f", result.seconds)) s")

                let after = try t.tool("qemu-io", ["-f", "raw", "-r", "-c", "read -P \(p) 0 \(len)", fileURL],
                                       timeoutSeconds: NullLUNGetLBAStatus.readTimeoutSeconds)
                #expect(after.succeeded && QemuIOReport(after.stdout).errorLines.isEmpty, "\(after)")
            }
        }
    }
}
