import Glibc

/// CLOCK_MONOTONIC in nanoseconds (vDSO, no system call). Inlined into its callers: the I/O path reads it
/// per command (latency, deadlines).
@inlinable @inline(__always)
package func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}
