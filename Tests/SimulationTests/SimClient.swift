// The test-side initiators of the ring simulation (issue 8): what the driver steps, single-threaded and
// interleaved with reactor turns. A client is deterministic given the PRNG it is stepped with and what its
// socket delivers: no clocks, no threads, no blocking calls, no randomness of its own.

/// Seeded PRNG (SplitMix64), value type; the only source of randomness in a simulation.
struct SimRandom {
    private(set) var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        return SimRandom.mix(state)
    }

    /// Uniform in 0..<n (Lemire's multiply-high: no modulo bias worth the name, and no rejection loop).
    mutating func below(_ n: Int) -> Int {
        precondition(n > 0, "below(\(n))")
        let r = Int(next().multipliedFullWidth(by: UInt64(n)).high)
        assert(r >= 0 && r < n)
        return r
    }

    mutating func chance(_ perMille: Int) -> Bool { below(1000) < perMille }

    /// SplitMix64's finalizer: also what the data pattern of a block is made of (SimPattern).
    @inline(__always)
    static func mix(_ x: UInt64) -> UInt64 {
        var z = x
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// An initiator the simulation steps. Never blocks: every socket call is non-blocking (MSG_DONTWAIT) and
/// EAGAIN means "nothing now".
protocol SimClient: AnyObject {
    var name: String { get }
    /// Makes what progress the socket allows now (send queued bytes, read what arrived, handle PDUs/replies,
    /// issue new commands while fewer than its queue depth are outstanding and the plan is not done).
    /// Returns true if it did anything (sent, received, or changed state).
    func step(_ rng: inout SimRandom) -> Bool
    /// Planned commands all ended (answered, or lost with a connection the target closed) and the final
    /// read-back verification (below) is done.
    var isFinished: Bool { get }
    /// Commands sent and not yet ended.
    var inFlight: Int { get }
    /// Invariant violations seen: a read that does not match an acknowledged write, an unexpected status,
    /// a protocol error from the target, a response to an unknown tag... Empty = fine.
    var failures: [String] { get }
    /// One line of counters for the test log: commands, writes, reads, bytes, reconnects, check conditions.
    var summary: String { get }
}
