import Synchronization

/// Whether a backing store can reach what holds its data, as the store sees it: written by the store's
/// connections (a sheep node lost, and back), read by the LU on each command. The store knows nothing of
/// SCSI; the LU decides what a long loss means to initiators (Target's SCSI/LUNState.swift `followBacking`).
public final class BackingReachability: Sendable {
    /// CLOCK_MONOTONIC nanoseconds since which no connection works; 0 while one does.
    @usableFromInline let downSince = Atomic<UInt64>(0)

    public init() {}

    /// A connection broke or could not be made. The earliest loss counts, so reconnect attempts that fail do
    /// not move it.
    package func markDown(atNanos now: UInt64) {
        _ = downSince.compareExchange(expected: 0, desired: max(1, now), ordering: .relaxed)
    }

    /// A connection works again.
    package func markUp() { downSince.store(0, ordering: .relaxed) }

    @inlinable @inline(__always) package var downSinceNanos: UInt64 { downSince.load(ordering: .relaxed) }
}
