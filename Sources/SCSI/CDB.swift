// Operation codes and the byte-level readers and writers every command handler uses. All readers are
// bounds-checked against the CDB length the transport gave, so a short CDB reads as zeros instead of
// trapping; handlers then reject it by its fields.

import Floor
import Store
public enum Opcode {
    public static let testUnitReady: UInt8 = 0x00
    public static let requestSense: UInt8 = 0x03
    public static let formatUnit: UInt8 = 0x04
    public static let read6: UInt8 = 0x08
    public static let write6: UInt8 = 0x0A
    public static let inquiry: UInt8 = 0x12
    public static let modeSelect6: UInt8 = 0x15
    public static let reserve6: UInt8 = 0x16
    public static let release6: UInt8 = 0x17
    public static let modeSense6: UInt8 = 0x1A
    public static let startStopUnit: UInt8 = 0x1B
    public static let preventAllowMediumRemoval: UInt8 = 0x1E
    public static let readCapacity10: UInt8 = 0x25
    public static let read10: UInt8 = 0x28
    public static let write10: UInt8 = 0x2A
    public static let writeAndVerify10: UInt8 = 0x2E
    public static let verify10: UInt8 = 0x2F
    public static let prefetch10: UInt8 = 0x34
    public static let synchronizeCache10: UInt8 = 0x35
    public static let readDefectData10: UInt8 = 0x37
    public static let writeSame10: UInt8 = 0x41
    public static let unmap: UInt8 = 0x42
    public static let sanitize: UInt8 = 0x48
    public static let modeSelect10: UInt8 = 0x55
    public static let reserve10: UInt8 = 0x56
    public static let release10: UInt8 = 0x57
    public static let modeSense10: UInt8 = 0x5A
    public static let persistentReserveIn: UInt8 = 0x5E
    public static let persistentReserveOut: UInt8 = 0x5F
    public static let extendedCopy: UInt8 = 0x83
    public static let receiveCopyResults: UInt8 = 0x84
    public static let read16: UInt8 = 0x88
    public static let compareAndWrite: UInt8 = 0x89
    public static let write16: UInt8 = 0x8A
    public static let orWrite16: UInt8 = 0x8B
    public static let writeAndVerify16: UInt8 = 0x8E
    public static let verify16: UInt8 = 0x8F
    public static let prefetch16: UInt8 = 0x90
    public static let synchronizeCache16: UInt8 = 0x91
    public static let writeSame16: UInt8 = 0x93
    public static let writeAtomic16: UInt8 = 0x9C
    public static let serviceActionIn16: UInt8 = 0x9E
    public static let reportLUNs: UInt8 = 0xA0
    public static let maintenanceIn: UInt8 = 0xA3
    public static let read12: UInt8 = 0xA8
    public static let write12: UInt8 = 0xAA
    public static let writeAndVerify12: UInt8 = 0xAE
    public static let verify12: UInt8 = 0xAF
    public static let readDefectData12: UInt8 = 0xB7
}

public enum ServiceAction {
    public static let readCapacity16: UInt8 = 0x10
    public static let getLBAStatus: UInt8 = 0x12
    public static let reportSupportedOperationCodes: UInt8 = 0x0C
    public static let extendedCopyLID1: UInt8 = 0x00
    public static let receiveCopyStatusLID1: UInt8 = 0x00
    public static let receiveCopyOperatingParameters: UInt8 = 0x03
}

/// A CDB the transport handed in, copied into the task so later phases can still read it.
/// 32 bytes cover every CDB this device server accepts (the longest is 16); longer CDBs are refused.
public struct CDBBytes {
    @usableFromInline static let capacityBytes = 32
    @usableFromInline var storage: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
    @usableFromInline var count: Int = 0

    @inlinable init() {}

    @inlinable init(_ raw: UnsafeRawBufferPointer) {
        let n = min(raw.count, CDBBytes.capacityBytes)
        count = n
        withUnsafeMutableBytes(of: &storage) { dst in
            if n > 0, let src = raw.baseAddress { dst.baseAddress!.copyMemory(from: src, byteCount: n) }
        }
    }

    @inline(__always)
    @usableFromInline subscript(_ i: Int) -> UInt8 {
        guard i >= 0, i < count else { return 0 }
        return withUnsafeBytes(of: storage) { $0[i] }
    }

    @inline(__always) func u16(_ i: Int) -> UInt16 { UInt16(self[i]) << 8 | UInt16(self[i + 1]) }
    @inline(__always) func u24(_ i: Int) -> UInt32 { UInt32(self[i]) << 16 | UInt32(self[i + 1]) << 8 | UInt32(self[i + 2]) }
    @inline(__always) func u32(_ i: Int) -> UInt32 { UInt32(u16(i)) << 16 | UInt32(u16(i + 2)) }
    @inline(__always) func u64(_ i: Int) -> UInt64 { UInt64(u32(i)) << 32 | UInt64(u32(i + 4)) }
}

/// Big-endian accessors on the data buffer. Writes outside the buffer are dropped and reads outside it
/// return zero: the generators size their output against the buffer, and parameter lists are parsed
/// only within the bytes received, so these guards are a last line, never the control flow.
extension UnsafeMutableRawBufferPointer {
    @inline(__always) func put8(_ off: Int, _ v: UInt8) {
        if off >= 0 && off < count { self[off] = v }
    }
    @inline(__always) func put16(_ off: Int, _ v: UInt16) {
        put8(off, UInt8(truncatingIfNeeded: v >> 8)); put8(off + 1, UInt8(truncatingIfNeeded: v))
    }
    @inline(__always) func put32(_ off: Int, _ v: UInt32) {
        put16(off, UInt16(truncatingIfNeeded: v >> 16)); put16(off + 2, UInt16(truncatingIfNeeded: v))
    }
    @inline(__always) func put64(_ off: Int, _ v: UInt64) {
        put32(off, UInt32(truncatingIfNeeded: v >> 32)); put32(off + 4, UInt32(truncatingIfNeeded: v))
    }
    @inline(__always) func get8(_ off: Int) -> UInt8 { off >= 0 && off < count ? self[off] : 0 }
    @inline(__always) func get16(_ off: Int) -> UInt16 { UInt16(get8(off)) << 8 | UInt16(get8(off + 1)) }
    @inline(__always) func get32(_ off: Int) -> UInt32 { UInt32(get16(off)) << 16 | UInt32(get16(off + 2)) }
    @inline(__always) func get64(_ off: Int) -> UInt64 { UInt64(get32(off)) << 32 | UInt64(get32(off + 4)) }

    /// Zero bytes [from, from+n) clamped to the buffer.
    func zero(_ from: Int, _ n: Int) {
        let lo = Swift.max(0, Swift.min(from, count)), hi = Swift.max(lo, Swift.min(from &+ n, count))
        if hi > lo { (baseAddress! + lo).initializeMemory(as: UInt8.self, repeating: 0, count: hi - lo) }
    }

    /// Copy an ASCII string into a fixed-width field, space padded (SPC-4 §4.4.1).
    func putASCII(_ off: Int, _ s: String, width: Int) {
        var i = 0
        for u in s.utf8 {
            if i >= width { break }
            put8(off + i, (u >= 0x20 && u <= 0x7E) ? u : 0x20)
            i += 1
        }
        while i < width { put8(off + i, 0x20); i += 1 }
    }
}
