// The verify pattern: every 8-byte word of a written unit is a function of (unit, write generation, word
// index), so a read that returns stale data, another unit's data, or shifted data is caught, and the
// expected bytes never need storing.

enum Pattern {
    @inline(__always)
    static func word(unit: Int, generation: UInt32, index: Int) -> UInt64 {
        let u = UInt64(truncatingIfNeeded: unit)
        return ((u << 24) ^ UInt64(generation)) &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(truncatingIfNeeded: index) &* 0xBF58_476D_1CE4_E5B9
    }

    /// Fills `bytes` (a multiple of 8) with the pattern of (unit, generation).
    @inline(__always)
    static func fill(_ p: UnsafeMutableRawPointer, bytes: Int, unit: Int, generation: UInt32) {
        let words = bytes / 8
        var i = 0
        while i < words {
            p.storeBytes(of: word(unit: unit, generation: generation, index: i), toByteOffset: i * 8, as: UInt64.self)
            i += 1
        }
    }

    /// Checks `length` bytes that sit at byte `offset` of the unit. Offsets and lengths are multiples of 8
    /// for every block size this tool accepts; a misaligned segment fails the check (and is reported).
    @inline(__always)
    static func matches(_ p: UnsafeRawPointer, offset: Int, length: Int, unit: Int, generation: UInt32) -> Bool {
        if offset & 7 != 0 || length & 7 != 0 { return false }
        let first = offset / 8
        let words = length / 8
        var i = 0
        while i < words {
            if p.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self) != word(unit: unit, generation: generation, index: first + i) {
                return false
            }
            i += 1
        }
        return true
    }
}
