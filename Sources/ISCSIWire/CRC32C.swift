// CRC32C (Castagnoli, reflected polynomial 0x82F63B78), the iSCSI header and data digest (RFC 7143 §11.1,
// Appendix B.4). The SSE4.2 `crc32` instruction computes exactly this; a table walk is the fallback on CPUs
// without it, and the two are tested against each other.
//
// Byte order on the wire: iSCSI sends the final (complemented) value so that a LITTLE-ENDIAN store of the
// UInt32 returned by `checksum` produces the wire bytes (32 zero bytes -> 0x8A9136AA -> aa 36 91 8a).
// Callers store it with `withUnsafeBytes(of: digest.littleEndian)` / `storeBytes(of: digest.littleEndian, ...)`.
import CCRC32C

public enum CRC32C {
    /// Initial running state; the RFC's "preset to ones".
    @inlinable public static var initialState: UInt32 { 0xFFFF_FFFF }

    /// Checked once: whether `rt_crc32c_hw` runs the SSE4.2 instruction on this CPU.
    public static let hardwareAvailable: Bool = rt_cpu_has_sse42() != 0

    /// The digest of one contiguous buffer, final complement applied: store it little-endian.
    @inlinable @inline(__always)
    public static func checksum(_ p: UnsafeRawPointer, count: Int, seed: UInt32 = 0xFFFF_FFFF) -> UInt32 {
        ~update(seed, p, count: count)
    }

    /// Convenience for tests and the login path (not the I/O path).
    public static func checksum(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { buf -> UInt32 in
            guard let base = buf.baseAddress else { return ~initialState }
            return checksum(base, count: buf.count)
        }
    }

    /// Advances a running (not complemented) state over `count` bytes. Start from `initialState`, finish with `~`.
    @inlinable @inline(__always)
    public static func update(_ state: UInt32, _ p: UnsafeRawPointer, count: Int) -> UInt32 {
        if count <= 0 { return state }
        if hardwareAvailable { return rt_crc32c_hw(state, p, count) }
        return updateSoftware(state, p, count: count)
    }

    /// SSE4.2 path only (returns `state` unchanged on CPUs without it: check `hardwareAvailable`).
    public static func updateHardware(_ state: UInt32, _ p: UnsafeRawPointer, count: Int) -> UInt32 {
        count <= 0 ? state : rt_crc32c_hw(state, p, count)
    }

    /// Table path, slicing-by-8: eight table lookups per 8 input bytes.
    public static func updateSoftware(_ state: UInt32, _ p: UnsafeRawPointer, count: Int) -> UInt32 {
        var crc = state
        var i = 0
        tables.withUnsafeBufferPointer { t in
            while count - i >= 8 {
                let lo = crc ^ UInt32(littleEndian: p.loadUnaligned(fromByteOffset: i, as: UInt32.self))
                let hi = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: i + 4, as: UInt32.self))
                crc = t[7 * 256 + Int(lo & 0xFF)] ^ t[6 * 256 + Int((lo >> 8) & 0xFF)]
                    ^ t[5 * 256 + Int((lo >> 16) & 0xFF)] ^ t[4 * 256 + Int(lo >> 24)]
                    ^ t[3 * 256 + Int(hi & 0xFF)] ^ t[2 * 256 + Int((hi >> 8) & 0xFF)]
                    ^ t[1 * 256 + Int((hi >> 16) & 0xFF)] ^ t[Int(hi >> 24)]
                i += 8
            }
            while i < count {
                let b = p.load(fromByteOffset: i, as: UInt8.self)
                crc = t[Int((crc ^ UInt32(b)) & 0xFF)] ^ (crc >> 8)
                i += 1
            }
        }
        return crc
    }

    /// A digest computed over several pieces (BHS then AHS; data segment then its pad bytes).
    public struct Accumulator: Sendable {
        // Settable only here; `@usableFromInline` so the inlined updates can write it.
        @usableFromInline var running: UInt32
        public var state: UInt32 { running }
        @inlinable @inline(__always) public init(seed: UInt32 = CRC32C.initialState) { running = seed }
        @inlinable @inline(__always) public mutating func update(_ p: UnsafeRawPointer, count: Int) {
            running = CRC32C.update(running, p, count: count)
        }
        /// Feeds `count` zero bytes (the 0-3 pad bytes of a data segment) without a buffer.
        @inlinable @inline(__always) public mutating func updateZeros(count: Int) {
            let zeros: UInt32 = 0
            var left = count
            while left > 0 {
                let n = Swift.min(left, 4)
                withUnsafeBytes(of: zeros) { buf in
                    if let base = buf.baseAddress { running = CRC32C.update(running, base, count: n) }
                }
                left -= n
            }
        }
        /// The digest as iSCSI sends it: store little-endian.
        @inlinable @inline(__always) public var value: UInt32 { ~running }
    }

    /// Table k maps a byte that sits k bytes before the end of an 8-byte block (slicing-by-8).
    static let tables: [UInt32] = {
        let poly: UInt32 = 0x82F6_3B78
        var t = [UInt32](repeating: 0, count: 8 * 256)
        for n in 0..<256 {
            var c = UInt32(n)
            for _ in 0..<8 { c = (c & 1) != 0 ? (c >> 1) ^ poly : c >> 1 }
            t[n] = c
        }
        for n in 0..<256 {
            for k in 1..<8 {
                let prev = t[(k - 1) * 256 + n]
                t[k * 256 + n] = t[Int(prev & 0xFF)] ^ (prev >> 8)
            }
        }
        return t
    }()
}
