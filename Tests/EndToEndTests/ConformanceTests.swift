// libiscsi's conformance suite, iscsi-test-cu, against a file LUN.

import Foundation
import Testing

extension EndToEnd {
    @Suite("Conformance")
    struct Conformance {
        /// The bar from the core target issue: passed and not skipped, of 230.
        static let minimumPassedNotSkipped = 195
        /// tgt finishes `-t ALL URL URL` in about 20 s on this kind of machine; the bound leaves room for
        /// a slow CI box without letting a hang run forever.
        static let timeoutSeconds = 15.0 * 60
        static let lunBytes = 1 * gibibyte

        /// `iscsi-test-cu -d -t ALL URL URL`: the same URL twice turns on the MultipathIO tests, -d
        /// allows the tests that write. Nothing may fail, at least 195 must pass without skipping, and
        /// every skip must be explained in docs/CONFORMANCE.md.
        @Test func iscsiTestCuAllTestsOnFileLUN() throws {
            let docURL = Paths.packageRoot.appendingPathComponent("docs/CONFORMANCE.md")
            let doc = try String(contentsOf: docURL, encoding: .utf8)
            let skipList = ConformanceSkipList(markdown: doc)
            try #require(!skipList.reasons.isEmpty, "no skip table found in \(docURL.path)")

            try withTarget(cores: 2, luns: [.file(bytes: Conformance.lunBytes)]) { t in
                let url = t.url(lun: 1)
                let args = ["-d", "-t", "ALL", url, url]
                let r = try t.tool("iscsi-test-cu", args, timeoutSeconds: Conformance.timeoutSeconds)
                try t.requireAlive("while iscsi-test-cu ran")
                try #require(!r.timedOut && !r.killedBySignal, "\(r)")
                let report = try CUnitReport(r.stdout)
                try #require(report.consistencyProblem() == nil, "\(report.consistencyProblem()!)\n\(tail(r.stdout))")

                let unlisted = report.skipped.filter { skipList.reasons[$0.name] == nil }
                let listedButRan = skipList.reasons.keys
                    .filter { name in report.passedNotSkipped.contains { $0.name == name } }.sorted()
                try report.writeResults(name: t.peer.rawValue, peer: t.peer.rawValue,
                                        command: "iscsi-test-cu -d -t ALL URL URL (file LUN, 1 GiB)",
                                        seconds: r.seconds, log: r.stdout + r.stderr,
                                        extra: ["skippedButNotListed": unlisted.map(\.name), "listedButPassed": listedButRan])

                let failedNames = report.failed.map(\.name)
                #expect(failedNames.isEmpty, "\(failedNames.count) failed (log: \(Paths.resultsDir.path))")
                let passedNotSkipped = report.passedNotSkipped.count
                #expect(passedNotSkipped >= Conformance.minimumPassedNotSkipped,
                        "skipped: \(report.skipped.count), failed: \(failedNames.count)")
                let unlistedSkips = unlisted.map { "\($0.name) [\($0.skipReason ?? "")]" }
                #expect(unlistedSkips.isEmpty,
                        "skipped tests missing from docs/CONFORMANCE.md: add them with a true reason, or make them pass")
            }
        }
    }
}
