// The iSCSI Basic Header Segment (RFC 7143 §11.2): field access on a 48-byte header in place, and the LUN
// field's encoding. No allocation: headers are read from buffers.

/// The BHS is 48 bytes (RFC 7143 §11.2).
@inlinable public var bhsBytes: Int { 48 }
/// The reserved ITT/TTT value 0xFFFFFFFF.
@inlinable public var reservedTag: UInt32 { 0xFFFF_FFFF }

/// Where each BHS field lies (RFC 7143 §11.2 and each PDU's section). The words at 20 to 44 are named once per
/// meaning; several meanings share an offset in different PDUs.
public enum BHSField {
    @inlinable public static var flags: Int { 1 }
    /// SCSI Response, Task Management and Logout Responses: the response; Reject: the reason; Login: Version-max.
    @inlinable public static var response: Int { 2 }
    /// SCSI Response and Data-In: the SCSI status; Login Response: Version-active.
    @inlinable public static var status: Int { 3 }
    @inlinable public static var totalAHSLength: Int { 4 }
    @inlinable public static var dataSegmentLength: Int { 5 }
    /// The LUN; in Login PDUs the ISID (6 bytes) and the TSIH.
    @inlinable public static var lun: Int { 8 }
    @inlinable public static var isid: Int { 8 }
    @inlinable public static var tsih: Int { 14 }
    @inlinable public static var itt: Int { 16 }
    /// TTT, or the SCSI Command's Expected Data Transfer Length.
    @inlinable public static var ttt: Int { 20 }
    @inlinable public static var expectedDataTransferLength: Int { 20 }
    /// CmdSN from the initiator, StatSN from the target.
    @inlinable public static var cmdSN: Int { 24 }
    @inlinable public static var statSN: Int { 24 }
    /// ExpStatSN from the initiator, ExpCmdSN from the target.
    @inlinable public static var expStatSN: Int { 28 }
    @inlinable public static var expCmdSN: Int { 28 }
    @inlinable public static var maxCmdSN: Int { 32 }
    /// SCSI Command: the CDB; Task Management Request: RefCmdSN.
    @inlinable public static var cdb: Int { 32 }
    @inlinable public static var refCmdSN: Int { 32 }
    /// DataSN, R2TSN, the Async Message's AsyncEvent and the Login Response's Status-Class (then Status-Detail).
    @inlinable public static var dataSN: Int { 36 }
    @inlinable public static var r2tSN: Int { 36 }
    @inlinable public static var asyncEvent: Int { 36 }
    @inlinable public static var statusClass: Int { 36 }
    @inlinable public static var statusDetail: Int { 37 }
    /// Async Message: Parameter1 to Parameter3.
    @inlinable public static var asyncParameter1: Int { 38 }
    @inlinable public static var asyncParameter2: Int { 40 }
    @inlinable public static var asyncParameter3: Int { 42 }
    @inlinable public static var bufferOffset: Int { 40 }
    /// Logout Response: Time2Wait, Time2Retain.
    @inlinable public static var time2Wait: Int { 40 }
    @inlinable public static var time2Retain: Int { 42 }
    /// Residual Count (SCSI Response, Data-In), or the R2T's Desired Data Transfer Length.
    @inlinable public static var residualCount: Int { 44 }
    @inlinable public static var desiredDataTransferLength: Int { 44 }
}

/// A read-only view of a received BHS.
public struct BHS {
    public let p: UnsafeRawPointer
    @inlinable @inline(__always) public init(_ p: UnsafeRawPointer) { self.p = p }

    @inlinable @inline(__always) public var opcode: UInt8 { p.load(as: UInt8.self) & 0x3f }
    @inlinable @inline(__always) public var immediate: Bool { p.load(as: UInt8.self) & PDUFlags.immediate != 0 }
    @inlinable @inline(__always) public var byte1: UInt8 { byte(BHSField.flags) }
    @inlinable @inline(__always) public var final: Bool { byte1 & PDUFlags.final != 0 }
    @inlinable @inline(__always) public func byte(_ o: Int) -> UInt8 { p.load(fromByteOffset: o, as: UInt8.self) }
    /// Total AHS length in bytes (the field counts 4-byte words).
    @inlinable @inline(__always) public var ahsBytes: Int { Int(p.load(fromByteOffset: BHSField.totalAHSLength, as: UInt8.self)) * 4 }
    @inlinable @inline(__always) public var dataSegmentLength: Int { Int(be24(p, BHSField.dataSegmentLength)) }
    @inlinable @inline(__always) public var lunField: UInt64 { be64(p, BHSField.lun) }
    @inlinable @inline(__always) public var itt: UInt32 { be32(p, BHSField.itt) }
    @inlinable @inline(__always) public func u32(_ o: Int) -> UInt32 { be32(p, o) }
    @inlinable @inline(__always) public func u16(_ o: Int) -> UInt16 { be16(p, o) }

    // SCSI Command (§11.3)
    @inlinable @inline(__always) public var expectedDataTransferLength: UInt32 { be32(p, BHSField.expectedDataTransferLength) }
    @inlinable @inline(__always) public var cmdSN: UInt32 { be32(p, BHSField.cmdSN) }
    @inlinable @inline(__always) public var expStatSN: UInt32 { be32(p, BHSField.expStatSN) }
    @inlinable @inline(__always) public var cdb: UnsafeRawPointer { p + BHSField.cdb }
    // Data-Out (§11.7)
    @inlinable @inline(__always) public var ttt: UInt32 { be32(p, BHSField.ttt) }
    @inlinable @inline(__always) public var dataSN: UInt32 { be32(p, BHSField.dataSN) }
    @inlinable @inline(__always) public var bufferOffset: UInt32 { be32(p, BHSField.bufferOffset) }

    // Target PDUs, as an initiator reads them (SCSI Response §11.4, Data-In §11.7, R2T §11.8, NOP-In §11.19,
    // Async Message §11.9, Reject §11.17): the same offsets as above under the target's names.
    @inlinable @inline(__always) public var statSN: UInt32 { be32(p, BHSField.statSN) }
    @inlinable @inline(__always) public var expCmdSN: UInt32 { be32(p, BHSField.expCmdSN) }
    @inlinable @inline(__always) public var maxCmdSN: UInt32 { be32(p, BHSField.maxCmdSN) }
    /// SCSI Response: the iSCSI response code; Reject: the reason.
    @inlinable @inline(__always) public var response: UInt8 { byte(BHSField.response) }
    /// SCSI Response, and Data-In with the S bit: the SCSI status.
    @inlinable @inline(__always) public var status: UInt8 { byte(BHSField.status) }
    /// Data-In: the S bit, status collapsed into this PDU (§11.7.4).
    @inlinable @inline(__always) public var hasStatus: Bool { byte1 & PDUFlags.status != 0 }
    /// SCSI Response and Data-In: the O or U bit (a residual count follows at 44).
    @inlinable @inline(__always) public var hasResidual: Bool { byte1 & (PDUFlags.underflow | PDUFlags.overflow) != 0 }
    /// R2T: the Desired Data Transfer Length (§11.8.6).
    @inlinable @inline(__always) public var desiredDataTransferLength: UInt32 { be32(p, BHSField.desiredDataTransferLength) }
    /// Async Message: the AsyncEvent code (§11.9.1).
    @inlinable @inline(__always) public var asyncEvent: UInt8 { byte(BHSField.asyncEvent) }
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
