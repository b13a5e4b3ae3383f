/// At most `burst` log lines per interval for a condition that can repeat thousands of times a second (accept
/// failures, refused connections, failed logins); the first line of the next interval says how many were
/// left out, so a flood costs a few lines, not one per attempt.
package struct RateLimitedLog {
    package let intervalNanos: UInt64
    /// Lines written in one interval before the rest are only counted.
    package let burst: Int
    private var windowStartNanos: UInt64? = nil
    private var writtenInWindow = 0
    private var suppressed = 0

    package init(intervalSeconds: UInt64, burst: Int = 1) {
        intervalNanos = intervalSeconds * 1_000_000_000
        self.burst = max(1, burst)
    }

    /// nil: stay quiet (the event is counted). Otherwise write one line, mentioning the returned count of
    /// events left out since the previous line.
    package mutating func admit(nowNanos: UInt64) -> Int? {
        if let start = windowStartNanos, nowNanos &- start < intervalNanos {
            if writtenInWindow < burst {
                writtenInWindow += 1
                return 0
            }
            suppressed += 1
            return nil
        }
        windowStartNanos = nowNanos
        writtenInWindow = 1
        let n = suppressed
        suppressed = 0
        return n
    }

    /// " (N similar suppressed)" or "", to append to the line.
    package static func suffix(_ suppressed: Int) -> String {
        suppressed > 0 ? " (\(suppressed) similar suppressed)" : ""
    }
}
