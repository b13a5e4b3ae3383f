// The project's one seeded pseudo-random generator, for everything that must replay from a seed: the
// simulated ring's fault schedule (in Target), the simulation and fuzz tests, the fixtures, and the sheep
// test server's reorder scheduler and fault injection. SplitMix64: tiny, good enough statistically, and its
// state is one word, so a stream can be derived from (seed, connection, purpose).
//
// A module of its own with no dependencies, because Target (the simulated ring) cannot import TestSupport
// and TestSupport must not import Target: both sit above this floor.

public struct SeededRandom: Sendable {
    @usableFromInline var state: UInt64

    @inlinable public init(seed: UInt64) { state = seed }

    /// A stream for one purpose of one connection, independent of other streams from the same seed.
    @inlinable public init(seed: UInt64, stream: UInt64, purpose: UInt64) {
        var mix = SeededRandom(seed: seed ^ (stream &* 0x9E37_79B9_7F4A_7C15) ^ (purpose &* 0xD1B5_4A32_D192_ED03))
        state = mix.next()
    }

    @inlinable public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        return SeededRandom.mix(state)
    }

    /// Uniform in 0..<bound (bound > 0). The modulo bias is below 2^-50 for any bound a test uses.
    @inlinable public mutating func below(_ bound: Int) -> Int {
        precondition(bound > 0, "below(\(bound))")
        return Int(next() % UInt64(bound))
    }

    /// True with probability perMille / 1000.
    @inlinable public mutating func chance(_ perMille: Int) -> Bool { perMille > 0 && below(1000) < perMille }

    /// Uniform in [0, 1).
    @inlinable public mutating func unit() -> Double {
        Double(next() >> 11) * (1.0 / Double(UInt64(1) << 53))
    }

    /// One element of `xs` (not empty), uniformly.
    @inlinable public mutating func pick<T>(_ xs: [T]) -> T { xs[below(xs.count)] }

    /// `count` bytes, eight from each draw, low byte first: a seed's data stream.
    @inlinable public mutating func bytes(_ count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var i = 0
        while i < count {
            var w = next()
            for _ in 0..<8 where i < count { out[i] = UInt8(truncatingIfNeeded: w); w >>= 8; i += 1 }
        }
        return out
    }

    /// SplitMix64's finalizer: also a cheap stateless hash (data patterns derived from an address).
    @inlinable @inline(__always)
    public static func mix(_ x: UInt64) -> UInt64 {
        var z = x
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
