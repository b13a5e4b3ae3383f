// The engine over the simulated ring (issue 8): fixed seeds in CI, any number on demand.
//
//   swift test --filter RingSimulation                                    # the CI seeds
//   RINGTGT_SIM_SEEDS=2000 swift test --filter RingSimulation/longRun     # more seeds (and RINGTGT_SIM_FIRST_SEED)
//   RINGTGT_SIM_SEED=0x2a RINGTGT_SIM_STORE=file swift test --filter RingSimulation/replay   # one seed again
//
// A failing run prints its options and the command that replays it; the same seed replays the same run.

#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor

@Suite(.serialized) struct RingSimulation {
    /// Seeds CI runs for each store; a few seconds in all.
    static let ciSeeds: [UInt64] = [1, 2, 3, 0x5EED, 0xC0FFEE]

    static func faults(_ seed: UInt64) -> SimulatedFaults {
        var f = SimulatedFaults()
        // Every other seed also resets connections and fails accepts, so both the quiet and the rough
        // paths stay covered.
        if seed % 2 == 1 {
            f.resetPerMille = 2
            f.acceptFailurePerMille = 5
        }
        return f
    }

    static func options(seed: UInt64, store: SimStore) -> SimulationOptions {
        SimulationOptions(seed: seed, store: store, faults: faults(seed))
    }

    @discardableResult
    static func check(_ options: SimulationOptions) throws -> SimulationResult {
        let result = try Simulation(options).run()
        let header = "\(options)\n  \(result.turns) turns; ring: \(result.ring)"
        if !result.failures.isEmpty {
            Issue.record("""
                simulation failed: \(header)
                  replay: \(options.reproduce)
                  \(result.failures.prefix(10).joined(separator: "\n  "))
                  \(result.summaries.joined(separator: "\n  "))
                """)
        }
        return result
    }

    @Test(arguments: SimStore.allCases) func ciSeeds(store: SimStore) throws {
        var operations = 0, faults = 0
        for seed in Self.ciSeeds {
            let r = try Self.check(Self.options(seed: seed, store: store))
            operations += r.ring.completed
            faults += r.ring.faults
            #expect(r.ring.completed > 500, "seed \(seed): the run did too little to mean anything")
            print("RingSimulation \(store) seed \(seed): \(r.turns) turns; \(r.ring)\n  " + r.summaries.joined(separator: "\n  "))
        }
        print("RingSimulation \(store): \(Self.ciSeeds.count) seeds, \(operations) operations, \(faults) faults injected")
    }

    /// Clients that go quiet halfway, past the idle trim: their connections give back their staging and task
    /// tables (every task deinitialized, the pages zeroed), and the second half of their commands, and the
    /// read-back of every acknowledged write, run on tables initialized again.
    @Test(arguments: SimStore.allCases) func clientsPausingPastTheIdleTrimKeepEveryWrite(store: SimStore) throws {
        var o = Self.options(seed: 0x1D1E, store: store)
        o.pause = (afterCommands: o.commandsPerClient / 2, nanos: 3_000_000_000)
        let r = try Self.check(o)
        #expect(r.taskTablesReleased >= o.iscsiClients, "\(r.taskTablesReleased) task tables given back")
        // Given back during the pause, not only as the connections closed: each client carried on after.
        #expect(r.taskTablesReleasedAtResume.count == o.iscsiClients && r.taskTablesReleasedAtResume.allSatisfy { $0 >= 1 },
                "task tables given back when each paused client carried on: \(r.taskTablesReleasedAtResume)")
        print("RingSimulation \(store) pause: \(r.turns) turns, \(r.taskTablesReleased) task tables given back; \(r.ring)")
    }

    /// The same seed gives the same run, operation for operation.
    @Test func aSeedReplaysExactly() throws {
        let o = Self.options(seed: 7, store: .file)
        let a = try Self.check(o), b = try Self.check(o)
        #expect(a.turns == b.turns)
        #expect(a.ring.completed == b.ring.completed && a.ring.faults == b.ring.faults)
        #expect(a.summaries == b.summaries)
    }

    @Test func replay() throws {
        guard let text = getenv("RINGTGT_SIM_SEED").map({ String(cString: $0) }) else { return }
        let seed = text.hasPrefix("0x") ? UInt64(text.dropFirst(2), radix: 16) : UInt64(text)
        let store = getenv("RINGTGT_SIM_STORE").flatMap { SimStore(rawValue: String(cString: $0)) } ?? .file
        let r = try Self.check(Self.options(seed: try #require(seed, "bad RINGTGT_SIM_SEED \(text)"), store: store))
        print(r.summaries.joined(separator: "\n"))
    }

    @Test func longRun() throws {
        guard let n = getenv("RINGTGT_SIM_SEEDS").flatMap({ Int(String(cString: $0)) }) else { return }
        let first = getenv("RINGTGT_SIM_FIRST_SEED").flatMap { UInt64(String(cString: $0)) } ?? 1000
        var operations = 0, faults = 0, failed = 0
        for i in 0..<n {
            let store = SimStore.allCases[i % SimStore.allCases.count]
            let r = try Self.check(Self.options(seed: first + UInt64(i), store: store))
            operations += r.ring.completed
            faults += r.ring.faults
            if !r.failures.isEmpty { failed += 1 }
        }
        print("RingSimulation long run: \(n) seeds from \(first), \(operations) operations, \(faults) faults injected, \(failed) failed")
    }
}
