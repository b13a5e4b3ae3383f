// The iSCSI Basic Header Segment (RFC 7143 §11.2): field access on a 48-byte header in place, and the LUN
// field's encoding. No allocation: headers are read from buffers.

/// The BHS is 48 bytes (RFC 7143 §11.2).
@inlinable public var bhsBytes: Int { 48 }
/// The reserved ITT/TTT value 0xFFFFFFFF.
@inlinable public var reservedTag: UInt32 { 0xFFFF_FFFF }

/// A read-only view of a received BHS.
public struct BHS {
    public let p: UnsafeRawPointer
    @inlinable @inline(__always) public init(_ p: UnsafeRawPointer) { self.p = p }

    @inlinable @inline(__always) public var opcode: UInt8 { p.load(as: UInt8.self) & 0x3f }
    @inlinable @inline(__always) public var immediate: Bool { p.load(as: UInt8.self) & 0x40 != 0 }
    @inlinable @inline(__always) public var byte1: UInt8 { p.load(fromByteOffset: 1, as: UInt8.self) }
    @inlinable @inline(__always) public var final: Bool { byte1 & 0x80 != 0 }
    @inlinable @inline(__always) public func byte(_ o: Int) -> UInt8 { p.load(fromByteOffset: o, as: UInt8.self) }
    /// Total AHS length in bytes (the field counts 4-byte words).
    @inlinable @inline(__always) public var ahsBytes: Int { Int(p.load(fromByteOffset: 4, as: UInt8.self)) * 4 }
    @inlinable @inline(__always) public var dataSegmentLength: Int { Int(be24(p, 5)) }
    @inlinable @inline(__always) public var lunField: UInt64 { be64(p, 8) }
    @inlinable @inline(__always) public var itt: UInt32 { be32(p, 16) }
    @inlinable @inline(__always) public func u32(_ o: Int) -> UInt32 { be32(p, o) }
    @inlinable @inline(__always) public func u16(_ o: Int) -> UInt16 { be16(p, o) }

    // SCSI Command (§11.3)
    @inlinable @inline(__always) public var expectedDataTransferLength: UInt32 { be32(p, 20) }
    @inlinable @inline(__always) public var cmdSN: UInt32 { be32(p, 24) }
    @inlinable @inline(__always) public var expStatSN: UInt32 { be32(p, 28) }
    @inlinable @inline(__always) public var cdb: UnsafeRawPointer { p + 32 }
    // Data-Out (§11.7)
    @inlinable @inline(__always) public var ttt: UInt32 { be32(p, 20) }
    @inlinable @inline(__always) public var dataSN: UInt32 { be32(p, 36) }
    @inlinable @inline(__always) public var bufferOffset: UInt32 { be32(p, 40) }
}

/// Decodes an 8-byte LUN field into a LUN number (SAM-5 peripheral and flat addressing, single level).
@inlinable @inline(__always)
public func decodeLUN(_ field: UInt64) -> UInt64 {
    let top = UInt8(truncatingIfNeeded: field >> 56)
    switch top >> 6 {
    case 0: return UInt64(top & 0x3f) << 8 | UInt64(UInt8(truncatingIfNeeded: field >> 48))  // peripheral
    case 1: return UInt64(top & 0x3f) << 8 | UInt64(UInt8(truncatingIfNeeded: field >> 48))  // flat space
    default: return UInt64.max  // extended / logical unit addressing: not served
    }
}

/// Encodes a LUN number the way REPORT LUNS does (peripheral below 256, flat above).
@inlinable @inline(__always)
public func encodeLUN(_ lun: UInt64) -> UInt64 {
    if lun < 256 { return lun << 48 }
    return (0x4000 | (lun & 0x3fff)) << 48
}
