// libiscsi's conformance suite, iscsi-test-cu, against a file LUN and then against the LUN configurations
// the tests that skip there need (docs/CONFORMANCE.md, "The matrix").

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
        /// every skip must be explained in docs/CONFORMANCE.md. On ringtgt a second daemon then serves the
        /// matrix's other configurations, and every test must pass in one of them.
        @Test func iscsiTestCuAllTestsOnFileLUN() throws {
            let docURL = Paths.packageRoot.appendingPathComponent("docs/CONFORMANCE.md")
            let doc = try String(contentsOf: docURL, encoding: .utf8)
            let skipList = ConformanceSkipList(markdown: doc)
            try #require(!skipList.reasons.isEmpty, "no skip table found in \(docURL.path)")
            let matrix = Peer.current == .ringtgt ? ConformanceMatrix.configurations : []

            let (report, seconds) = try withTarget(cores: 2, luns: [.file(bytes: Conformance.lunBytes)]) { t in
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
                return (report, r.seconds)
            }
            if !matrix.isEmpty {
                // One more daemon, with one core: see docs/CONFORMANCE.md on PreventAllow.ITNexusLoss.
                try withTarget(cores: 1, luns: []) { m in
                    try ConformanceMatrix.run(matrix, on: m, base: report, baseSeconds: seconds, doc: doc)
                }
            }
        }
    }
}

/// One more LUN configuration of the matrix: its own target on the matrix's daemon, and only the tests it
/// unlocks, so the matrix adds seconds, not another full run.
struct ConformanceConfiguration {
    let name: String
    /// `--params` for the LUN.
    let params: String
    let lunBytes: Int64
    /// iscsi-test-cu `-t` patterns (FAMILY.SUITE[.TEST]), joined with commas.
    let tests: [String]
    /// Extra iscsi-test-cu options (`-S`).
    var options: [String] = []
    /// Give the URL twice (MultipathIO's second session). The removable configuration does not: see
    /// docs/CONFORMANCE.md on PreventAllow.2ITNexuses.
    var multipath = false
    /// `--op update --mode target --name N --value V` for the configuration's target.
    var targetSettings: [(name: String, value: String)] = []
}

enum ConformanceMatrix {
    static let scratchLUNBytes = 64 * mebibyte

    static let configurations: [ConformanceConfiguration] = [
        ConformanceConfiguration(name: "readonly", params: "readonly=1", lunBytes: scratchLUNBytes,
                                 tests: ["ALL.ReadOnly"]),
        ConformanceConfiguration(name: "lbppbe3", params: "lbppbe=3", lunBytes: scratchLUNBytes,
                                 tests: ["ALL.CompareAndWrite.InvalidDataOutSize", "ALL.WriteSame10.InvalidDataOutSize",
                                         "ALL.WriteSame16.InvalidDataOutSize", "ALL.WriteSame10.UnmapUnaligned",
                                         "ALL.WriteSame16.UnmapUnaligned"]),
        ConformanceConfiguration(name: "removable", params: "removable=1", lunBytes: scratchLUNBytes,
                                 tests: ["ALL.PreventAllow", "ALL.StartStopUnit"]),
        ConformanceConfiguration(name: "sanitize", params: "", lunBytes: scratchLUNBytes,
                                 tests: sanitizeTests.map { "ALL.Sanitize.\($0)" }, options: ["-S"]),
        // Sanitize.Reset needs an OVERWRITE still running some 5 s after it started (it sleeps 3 s, resets, logs
        // out, sleeps 1 s, logs in again and checks), then polls once a minute: 16 MiB at 1 MiB/s runs ~16 s.
        // Its minute of sleep answers no NOP-In, so pings are off, as tgt's default (docs/CONFORMANCE.md).
        ConformanceConfiguration(name: "sanitize-reset", params: "sanitize_rate=1", lunBytes: 16 * mebibyte,
                                 tests: ["ALL.Sanitize.Reset"], options: ["-S"],
                                 targetSettings: [(name: "nop_interval", value: "0")]),
    ]

    /// libiscsi's Sanitize suite but Reset, which runs on its own paced LU.
    static let sanitizeTests = ["BlockErase", "BlockEraseReserved", "CryptoErase", "CryptoEraseReserved",
                                "ExitFailureMode", "InvalidServiceAction", "Overwrite", "OverwriteReserved",
                                "Readonly", "Reservations"]

    /// Runs each configuration on its own target (tid 2, 3, ...) of `t`'s daemon, writes
    /// `conformance-matrix.json`, and requires: nothing fails anywhere, and every test of the suite passes
    /// (without skipping) in some configuration, unless docs/CONFORMANCE.md lists it as skipping everywhere.
    static func run(_ configurations: [ConformanceConfiguration], on t: RunningTarget, base: CUnitReport,
                    baseSeconds: Double, doc: String) throws {
        let everywhere = ConformanceSkipList(markdown: section(of: doc, heading: everywhereHeading))
        let listing = try t.tool("iscsi-test-cu", ["-l"])
        let allTests = Set(listing.stdout.split(whereSeparator: \.isNewline).compactMap { line -> String? in
            let parts = line.split(separator: ".")
            return parts.count == 3 ? "\(parts[1]).\(parts[2])" : nil
        })
        try #require(allTests.count >= 200, "iscsi-test-cu -l listed only \(allTests.count) tests")

        var passedSomewhere = Set(base.passedNotSkipped.map(\.name))
        var rows: [[String: Any]] = [row("file", command: "-d -t ALL URL URL", base, seconds: baseSeconds)]
        var failures: [String] = base.failed.map { "file: \($0.name)" }
        for (i, c) in configurations.enumerated() {
            let tid = i + 2
            let iqn = "\(RunningTarget.iqnPrefix):\(c.name)"
            try t.admin.newTarget(tid: tid, name: iqn)
            for setting in c.targetSettings {
                try t.admin.must(["--lld", "iscsi", "--op", "update", "--mode", "target", "--tid", "\(tid)",
                                  "--name", setting.name, "--value", setting.value])
            }
            let f = try t.scratch.makeSparseFile("\(c.name).img", bytes: c.lunBytes)
            var lun = ["--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "\(tid)", "--lun", "1",
                       "--bstype", "rdwr", "--backing-store", f.path]
            if !c.params.isEmpty { lun += ["--params", c.params] }
            try t.admin.must(lun)
            try t.admin.bind(tid: tid)

            let url = t.url(lun: 1, target: iqn)
            let args = ["-d"] + c.options + ["-t", c.tests.joined(separator: ",")] + (c.multipath ? [url, url] : [url])
            let r = try t.tool("iscsi-test-cu", args, timeoutSeconds: EndToEnd.Conformance.timeoutSeconds)
            try t.requireAlive("while iscsi-test-cu ran on the \(c.name) configuration")
            try #require(!r.timedOut && !r.killedBySignal, "\(c.name): \(r)")
            let report = try CUnitReport(r.stdout)
            try #require(report.consistencyProblem() == nil, "\(c.name): \(report.consistencyProblem()!)")
            let command = "iscsi-test-cu " + args.dropLast(c.multipath ? 2 : 1).joined(separator: " ")
                + (c.multipath ? " URL URL" : " URL") + " (--params \(c.params.isEmpty ? "none" : c.params))"
            try report.writeResults(name: "ringtgt-\(c.name)", peer: "ringtgt", command: command,
                                    seconds: r.seconds, log: r.stdout + r.stderr, extra: [:])
            rows.append(row(c.name, command: command, report, seconds: r.seconds))
            passedSomewhere.formUnion(report.passedNotSkipped.map(\.name))
            failures += report.failed.map { "\(c.name): \($0.name)" }
        }

        let neverPassed = allTests.subtracting(passedSomewhere)
        let unexplained = neverPassed.filter { everywhere.reasons[$0] == nil }.sorted()
        let listedButPassed = everywhere.reasons.keys.filter { passedSomewhere.contains($0) }.sorted()
        let summary: [String: Any] = [
            "configurations": rows,
            "tests": allTests.count,
            "passedSomewhere": passedSomewhere.intersection(allTests).count,
            "neverPassed": neverPassed.sorted(),
            "neverPassedUnexplained": unexplained,
            "failed": failures,
        ]
        let dir = Paths.resultsDir
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try JSONSerialization.data(withJSONObject: summary, options: [.prettyPrinted, .sortedKeys])
            .write(to: dir.appendingPathComponent("conformance-matrix.json"))

        #expect(failures.isEmpty, "failed in the matrix: \(failures)")
        #expect(unexplained.isEmpty, "pass in no configuration, missing from '\(everywhereHeading)': \(unexplained)")
        #expect(listedButPassed.isEmpty, "listed as skipping everywhere but passed: \(listedButPassed)")
    }

    static let everywhereHeading = "## Tests that skip in every configuration"

    /// The markdown from `heading` to the next `## ` heading.
    static func section(of doc: String, heading: String) -> String {
        guard let start = doc.range(of: heading) else { return "" }
        let rest = doc[start.upperBound...]
        let end = rest.range(of: "\n## ")?.lowerBound ?? rest.endIndex
        return String(rest[..<end])
    }

    private static func row(_ name: String, command: String, _ r: CUnitReport, seconds: Double) -> [String: Any] {
        ["configuration": name, "command": command, "ran": r.tests.count, "passed": r.passedNotSkipped.count,
         "skipped": r.skipped.count, "failed": r.failed.count, "seconds": (seconds * 10).rounded() / 10]
    }
}
