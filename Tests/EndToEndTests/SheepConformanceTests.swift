// libiscsi's conformance suite, iscsi-test-cu, against a sheepdog LUN: it must score as a file LUN does.

import Foundation
import Testing

extension EndToEnd {
    @Suite("Sheepdog conformance")
    struct SheepConformance {
        static let vdiBytes = 1 * gibibyte

        /// `iscsi-test-cu -d -t ALL URL URL` on a 1 GiB VDI served from sheep: nothing fails, at least as many
        /// pass without skipping as the file LUN's bar, and every skip is one docs/CONFORMANCE.md explains.
        @Test(arguments: SheepKind.allCases)
        func iscsiTestCuAllTestsOnSheepdogLUN(kind: SheepKind) throws {
            let docURL = Paths.packageRoot.appendingPathComponent("docs/CONFORMANCE.md")
            let skipList = ConformanceSkipList(markdown: try String(contentsOf: docURL, encoding: .utf8))
            try #require(!skipList.reasons.isEmpty, "no skip table found in \(docURL.path)")

            try withSheepTarget(kind, cores: 2, vdis: [SheepVDI(name: "conformance", bytes: SheepConformance.vdiBytes)]) { t in
                let url = t.url(lun: 1)
                let r = try t.target.tool("iscsi-test-cu", ["-d", "-t", "ALL", url, url],
                                          timeoutSeconds: EndToEnd.Conformance.timeoutSeconds)
                try t.requireAlive("while iscsi-test-cu ran")
                try #require(!r.timedOut && !r.killedBySignal, "\(r)")
                let report = try CUnitReport(r.stdout)
                try #require(report.consistencyProblem() == nil, "\(report.consistencyProblem()!)\n\(tail(r.stdout))")

                let unlisted = report.skipped.filter { skipList.reasons[$0.name] == nil }
                try report.writeResults(name: "sheepdog-\(kind.rawValue)", peer: "ringtgt",
                                        command: "iscsi-test-cu -d -t ALL URL URL (sheepdog LUN, 1 GiB VDI, \(kind))",
                                        seconds: r.seconds, log: r.stdout + r.stderr,
                                        extra: ["skippedButNotListed": unlisted.map(\.name)])

                let failed = report.failed.map(\.name)
                #expect(failed.isEmpty, "\(failed.count) failed: \(failed) (log: \(Paths.resultsDir.path))")
                #expect(report.passedNotSkipped.count >= EndToEnd.Conformance.minimumPassedNotSkipped,
                        "passed \(report.passedNotSkipped.count), skipped \(report.skipped.count), failed \(failed.count)")
                let unlistedSkips = unlisted.map { "\($0.name) [\($0.skipReason ?? "")]" }
                #expect(unlistedSkips.isEmpty, "skipped tests missing from docs/CONFORMANCE.md: \(unlistedSkips)")

                try sanitizeConfiguration(t, kind: kind)
            }
        }

        static let sanitizeVDIBytes = 64 * mebibyte

        /// The matrix's sanitize configuration on a scratch VDI: BLOCK and CRYPTOGRAPHIC ERASE go through sheep's
        /// object discard, OVERWRITE through object writes. Every test passes, none skips. (Sanitize.Reset
        /// checks how the job outlives its command, which no store changes; it runs on the file matrix.)
        func sanitizeConfiguration(_ t: SheepTarget, kind: SheepKind) throws {
            try t.sheep.createVDI("sanitize", bytes: SheepConformance.sanitizeVDIBytes)
            try t.addLUN(2, backingStore: t.sheep.backingStore("sanitize"))
            let tests = ConformanceMatrix.sanitizeTests.map { "ALL.Sanitize.\($0)" }.joined(separator: ",")
            let r = try t.target.tool("iscsi-test-cu", ["-d", "-S", "-t", tests, t.url(lun: 2)],
                                      timeoutSeconds: EndToEnd.Conformance.timeoutSeconds)
            try t.requireAlive("while iscsi-test-cu ran the sanitize configuration")
            try #require(!r.timedOut && !r.killedBySignal, "\(r)")
            let report = try CUnitReport(r.stdout)
            try #require(report.consistencyProblem() == nil, "\(report.consistencyProblem()!)\n\(tail(r.stdout))")
            try report.writeResults(name: "sheepdog-\(kind.rawValue)-sanitize", peer: "ringtgt",
                                    command: "iscsi-test-cu -d -S -t <Sanitize but Reset> URL (sheepdog LUN, 64 MiB VDI, \(kind))",
                                    seconds: r.seconds, log: r.stdout + r.stderr, extra: [:])
            #expect(report.failed.isEmpty, "sanitize on sheepdog, failed: \(report.failed.map(\.name))")
            #expect(report.skipped.isEmpty, "sanitize on sheepdog, skipped: \(report.skipped.map(\.name))")
            #expect(report.passedNotSkipped.count == ConformanceMatrix.sanitizeTests.count,
                    "sanitize on sheepdog: \(report.passedNotSkipped.count) passed")
        }
    }
}
