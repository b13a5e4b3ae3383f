// Reading iscsi-test-cu's CUnit console output (libiscsi 1.19, CUnit 2.1-3).
//
// The verbose console output looks like this:
//
//     Suite: CompareAndWrite
//       Test: Simple ...    [SKIPPED] COMPAREANDWRITE is not implemented.
//         [SKIPPED] COMPAREANDWRITE is not implemented.
//     passed
//       Test: BeyondEol ...    [FAILED] GET_LBA_STATUS successful but should have failed ...
//     FAILED
//         1. test_get_lba_status_beyond_eol.c:38  - CU_ASSERT_EQUAL(_r,0)
//       Test: Residuals ...passed    [FAILED] PRIN command: failed with sense ...
//     ...
//     Run Summary:    Type  Total    Ran Passed Failed Inactive
//                   suites     51     51    n/a      0        0
//                    tests    230    230    221      9        0
//
// A test's own output runs from "Test: NAME ..." to CUnit's verdict, "passed" or "FAILED", which starts
// a line (or follows "..." directly). Whatever comes after the verdict on the same line belongs to the
// next test's setup, as in the Residuals line above. A test that skips prints "[SKIPPED]" and calls
// CU_PASS, so CUnit counts it as passed; it is counted here as skipped instead.

struct CUnitReport {
    struct TestResult {
        /// "Suite.Test", e.g. "CompareAndWrite.Simple".
        let name: String
        let passed: Bool
        let skipped: Bool
        /// The first "[SKIPPED] ..." message, without the marker.
        let skipReason: String?
    }

    struct Summary: Equatable {
        let total: Int, ran: Int, passed: Int, failed: Int, inactive: Int
    }

    private(set) var tests: [TestResult] = []
    private(set) var summary: Summary?

    var failed: [TestResult] { tests.filter { !$0.passed } }
    var skipped: [TestResult] { tests.filter { $0.passed && $0.skipped } }
    var passedNotSkipped: [TestResult] { tests.filter { $0.passed && !$0.skipped } }

    init(_ text: String) throws {
        var suite = ""
        var current: (name: String, skipped: Bool, reason: String?)? = nil

        func absorb(_ content: Substring) {
            guard var test = current else { return }
            let trimmed = content.drop { $0 == " " || $0 == "\t" }
            let verdict: Bool? = trimmed.hasPrefix("passed") ? true : trimmed.hasPrefix("FAILED") ? false : nil
            if let verdict {
                tests.append(TestResult(name: test.name, passed: verdict, skipped: test.skipped,
                                        skipReason: test.reason))
                current = nil
                return
            }
            if let r = content.range(of: "[SKIPPED]") {
                test.skipped = true
                if test.reason == nil {
                    test.reason = String(content[r.upperBound...]).trimmingCharacters(in: .whitespaces)
                }
                current = test
            }
        }

        let lines = text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline)
        var i = 0
        while i < lines.count {
            let line = lines[i]
            if line.hasPrefix("Suite: ") {
                suite = line.dropFirst("Suite: ".count).trimmingCharacters(in: .whitespaces)
            } else if line.hasPrefix("  Test: "), let dots = line.range(of: " ...") {
                if let unfinished = current {
                    throw E2EError("CUnit output: test \(unfinished.name) has no verdict before the next test")
                }
                let name = line[line.index(line.startIndex, offsetBy: "  Test: ".count)..<dots.lowerBound]
                current = (name: "\(suite).\(name)", skipped: false, reason: nil)
                absorb(line[dots.upperBound...])
            } else if line.hasPrefix("Run Summary:") {
                break
            } else {
                absorb(line)
            }
            i += 1
        }
        if let unfinished = current {
            throw E2EError("CUnit output ended inside test \(unfinished.name) (did iscsi-test-cu crash or hang?)")
        }
        for line in lines[i...] {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            if f.count == 6, f[0] == "tests",
               let total = Int(f[1]), let ran = Int(f[2]), let passed = Int(f[3]),
               let failed = Int(f[4]), let inactive = Int(f[5]) {
                summary = Summary(total: total, ran: ran, passed: passed, failed: failed, inactive: inactive)
            }
        }
    }

    /// Checks the per-test parse against CUnit's own totals; a mismatch means the parser misread.
    func consistencyProblem() -> String? {
        guard let s = summary else { return "no CUnit Run Summary found (did iscsi-test-cu finish?)" }
        let passed = tests.filter(\.passed).count
        if tests.count != s.ran || passed != s.passed || failed.count != s.failed {
            return "parsed \(tests.count) tests (\(passed) passed, \(failed.count) failed) but CUnit's summary " +
                "says ran \(s.ran), passed \(s.passed), failed \(s.failed)"
        }
        return nil
    }
}

/// The skip list in docs/CONFORMANCE.md: table rows `| \`Suite.Test\` | reason |`.
struct ConformanceSkipList {
    /// "Suite.Test" -> reason.
    private(set) var reasons: [String: String] = [:]

    init(markdown: String) {
        for raw in markdown.split(whereSeparator: \.isNewline) {
            let line = raw.trimmingCharacters(in: .whitespaces)
            guard line.hasPrefix("|") else { continue }
            let cells = line.split(separator: "|", omittingEmptySubsequences: false)
                .map { $0.trimmingCharacters(in: .whitespaces) }
            // "| a | b |" splits into ["", "a", "b", ""].
            guard cells.count >= 4 else { continue }
            let name = cells[1].trimmingCharacters(in: CharacterSet(charactersIn: "`"))
            let parts = name.split(separator: ".")
            guard parts.count == 2, parts.allSatisfy({ $0.allSatisfy { $0.isLetter || $0.isNumber || $0 == "_" } })
            else { continue }
            reasons[name] = cells[2]
        }
    }
}

import Foundation

extension CUnitReport {
    /// Counts and lists for the lead's report: `.build/e2e-results/conformance-NAME.json` and the raw log
    /// `iscsi-test-cu-NAME.log`. `extra` adds keys (the skip-list checks).
    func writeResults(name: String, peer: String, command: String, seconds: Double, log: String,
                      extra: [String: Any]) throws {
        let dir = Paths.resultsDir
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        var result: [String: Any] = [
            "peer": peer,
            "command": command,
            "total": tests.count,
            "passedNotSkipped": passedNotSkipped.count,
            "skipped": skipped.count,
            "failed": failed.count,
            "seconds": (seconds * 10).rounded() / 10,
            "failedTests": failed.map(\.name),
            "skippedTests": skipped.map { "\($0.name): \($0.skipReason ?? "")" },
        ]
        result.merge(extra) { $1 }
        let json = try JSONSerialization.data(withJSONObject: result, options: [.prettyPrinted, .sortedKeys])
        try json.write(to: dir.appendingPathComponent("conformance-\(name).json"))
        try log.write(to: dir.appendingPathComponent("iscsi-test-cu-\(name).log"), atomically: true, encoding: .utf8)
    }
}
