import FuzzTargets
import Testing

/// Every committed corpus input (fuzz/corpus/TARGET) and every input that once crashed or hung a fuzzer
/// (fuzz/regressions/TARGET) runs through its target in the normal test run, with its invariants checked.
@Suite(.serialized) struct CorpusReplayTests {
    static let root: String = {
        var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(3)   // Tests/FuzzTests/CorpusReplayTests.swift
        return parts.joined(separator: "/") + "/fuzz"
    }()

    static let targets = FuzzTargets.all.map(\.name)

    func replay(_ target: String, _ kind: String) -> (inputs: Int, failures: [String]) {
        guard let t = FuzzTargets.named(target) else { return (0, ["no target \(target)"]) }
        var failures: [String] = []
        let saved = FuzzCheck.onFailure
        defer { FuzzCheck.onFailure = saved }
        var inputs = 0
        for file in Replay.files("\(Self.root)/\(kind)/\(target)") {
            guard let bytes = Replay.read(file) else { continue }
            FuzzCheck.onFailure = { failures.append("\(file): \($0)") }
            bytes.withUnsafeBytes { t.run($0) }
            inputs += 1
        }
        return (inputs, failures)
    }

    @Test(arguments: targets) func corpus(_ target: String) {
        let (inputs, failures) = replay(target, "corpus")
        #expect(inputs > 0, "no corpus for \(target)")
        #expect(failures.isEmpty, "\(failures.prefix(5))")
    }

    @Test(arguments: targets) func regressions(_ target: String) {
        let (_, failures) = replay(target, "regressions")
        #expect(failures.isEmpty, "\(failures.prefix(5))")
    }
}
