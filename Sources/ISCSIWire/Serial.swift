// Serial-number arithmetic (RFC 1982, as RFC 7143 §4.2.2.1 asks of CmdSN, StatSN, DataSN and R2TSN): 32-bit
// sequence numbers that wrap, compared by their signed distance. Two numbers exactly 2^31 apart are
// undefined in RFC 1982; here the signed distance decides (b counts as before a), which is what the target has
// always done.

public enum Serial {
    /// How far `b` lies ahead of `a`: negative when it lies behind.
    @inlinable @inline(__always)
    public static func distance(from a: UInt32, to b: UInt32) -> Int32 { Int32(bitPattern: b &- a) }

    /// a < b.
    @inlinable @inline(__always)
    public static func lessThan(_ a: UInt32, _ b: UInt32) -> Bool { Int32(bitPattern: a &- b) < 0 }

    /// a > b.
    @inlinable @inline(__always)
    public static func greaterThan(_ a: UInt32, _ b: UInt32) -> Bool { Int32(bitPattern: a &- b) > 0 }

    /// a >= b.
    @inlinable @inline(__always)
    public static func atLeast(_ a: UInt32, _ b: UInt32) -> Bool { Int32(bitPattern: a &- b) >= 0 }

    /// `sn` lies in the window [low, high] (the CmdSN window is [ExpCmdSN, MaxCmdSN]).
    @inlinable @inline(__always)
    public static func inWindow(_ sn: UInt32, low: UInt32, high: UInt32) -> Bool {
        let ahead = Int32(bitPattern: sn &- low)
        return ahead >= 0 && ahead <= Int32(bitPattern: high &- low)
    }
}
