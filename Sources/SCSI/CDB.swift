// Operation codes and the byte-level readers and writers every command handler uses. All readers are
// bounds-checked against the CDB length the transport gave, so a short CDB reads as zeros instead of
// trapping; handlers then reject it by its fields.

import Floor
import Store
public enum Opcode {
    static let testUnitReady: UInt8 = 0x00
    static let requestSense: UInt8 = 0x03
    static let formatUnit: UInt8 = 0x04
    static let read6: UInt8 = 0x08
    static let write6: UInt8 = 0x0A
    static let inquiry: UInt8 = 0x12
    static let modeSelect6: UInt8 = 0x15
    static let reserve6: UInt8 = 0x16
    static let release6: UInt8 = 0x17
    static let modeSense6: UInt8 = 0x1A
    static let startStopUnit: UInt8 = 0x1B
    static let preventAllowMediumRemoval: UInt8 = 0x1E
    static let readCapacity10: UInt8 = 0x25
    static let read10: UInt8 = 0x28
    static let write10: UInt8 = 0x2A
    static let writeAndVerify10: UInt8 = 0x2E
    static let verify10: UInt8 = 0x2F
    static let prefetch10: UInt8 = 0x34
    static let synchronizeCache10: UInt8 = 0x35
    static let readDefectData10: UInt8 = 0x37
    static let writeSame10: UInt8 = 0x41
    static let unmap: UInt8 = 0x42
    static let sanitize: UInt8 = 0x48
    static let modeSelect10: UInt8 = 0x55
    static let reserve10: UInt8 = 0x56
    static let release10: UInt8 = 0x57
    static let modeSense10: UInt8 = 0x5A
    static let persistentReserveIn: UInt8 = 0x5E
    static let persistentReserveOut: UInt8 = 0x5F
    static let extendedCopy: UInt8 = 0x83
    static let receiveCopyResults: UInt8 = 0x84
    static let read16: UInt8 = 0x88
    public static let compareAndWrite: UInt8 = 0x89
    static let write16: UInt8 = 0x8A
    static let orWrite16: UInt8 = 0x8B
    static let writeAndVerify16: UInt8 = 0x8E
    static let verify16: UInt8 = 0x8F
    static let prefetch16: UInt8 = 0x90
    static let synchronizeCache16: UInt8 = 0x91
    static let writeSame16: UInt8 = 0x93
    static let writeAtomic16: UInt8 = 0x9C
    static let serviceActionIn16: UInt8 = 0x9E
    static let reportLUNs: UInt8 = 0xA0
    static let maintenanceIn: UInt8 = 0xA3
    static let read12: UInt8 = 0xA8
    static let write12: UInt8 = 0xAA
    static let writeAndVerify12: UInt8 = 0xAE
    static let verify12: UInt8 = 0xAF
    static let readDefectData12: UInt8 = 0xB7
}

public enum ServiceAction {
    static let readCapacity16: UInt8 = 0x10
    static let getLBAStatus: UInt8 = 0x12
    static let reportSupportedOperationCodes: UInt8 = 0x0C
    static let extendedCopyLID1: UInt8 = 0x00
    static let receiveCopyStatusLID1: UInt8 = 0x00
    static let receiveCopyOperatingParameters: UInt8 = 0x03
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
