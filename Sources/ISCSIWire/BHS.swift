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

    // Target PDUs, as an initiator reads them (SCSI Response §11.4, Data-In §11.7, R2T §11.8, NOP-In §11.19,
    // Async Message §11.9, Reject §11.17): the same offsets as above under the target's names.
    @inlinable @inline(__always) public var statSN: UInt32 { be32(p, 24) }
    @inlinable @inline(__always) public var expCmdSN: UInt32 { be32(p, 28) }
    @inlinable @inline(__always) public var maxCmdSN: UInt32 { be32(p, 32) }
    /// SCSI Response: the iSCSI response code; Reject: the reason.
    @inlinable @inline(__always) public var response: UInt8 { byte(2) }
    /// SCSI Response, and Data-In with the S bit: the SCSI status.
    @inlinable @inline(__always) public var status: UInt8 { byte(3) }
    /// Data-In: the S bit, status collapsed into this PDU (§11.7.4).
    @inlinable @inline(__always) public var hasStatus: Bool { byte1 & 0x01 != 0 }
    /// SCSI Response and Data-In: the O or U bit (a residual count follows at 44).
    @inlinable @inline(__always) public var hasResidual: Bool { byte1 & 0x06 != 0 }
    /// R2T: the Desired Data Transfer Length (§11.8.6).
    @inlinable @inline(__always) public var desiredDataTransferLength: UInt32 { be32(p, 44) }
    /// Async Message: the AsyncEvent code (§11.9.1).
    @inlinable @inline(__always) public var asyncEvent: UInt8 { byte(36) }
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
