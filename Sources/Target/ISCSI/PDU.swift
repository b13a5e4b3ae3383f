// The iSCSI Basic Header Segment (RFC 7143 §11.2): field access on a 48-byte header in place, and
// builders for every PDU a target sends. No allocation: headers are read from and written into buffers.

public enum ISCSIOpcode {
    // Initiator opcodes
    public static let nopOut: UInt8 = 0x00
    public static let scsiCommand: UInt8 = 0x01
    public static let taskManagement: UInt8 = 0x02
    public static let loginRequest: UInt8 = 0x03
    public static let textRequest: UInt8 = 0x04
    public static let dataOut: UInt8 = 0x05
    public static let logoutRequest: UInt8 = 0x06
    public static let snack: UInt8 = 0x10
    // Target opcodes
    public static let nopIn: UInt8 = 0x20
    public static let scsiResponse: UInt8 = 0x21
    public static let taskManagementResponse: UInt8 = 0x22
    public static let loginResponse: UInt8 = 0x23
    public static let textResponse: UInt8 = 0x24
    public static let dataIn: UInt8 = 0x25
    public static let logoutResponse: UInt8 = 0x26
    public static let r2t: UInt8 = 0x31
    public static let asyncMessage: UInt8 = 0x32
    public static let reject: UInt8 = 0x3f
}

/// Reject reasons (RFC 7143 §11.17.1).
public enum RejectReason {
    public static let dataDigestError: UInt8 = 0x02
    public static let snackReject: UInt8 = 0x03
    public static let protocolError: UInt8 = 0x04
    public static let commandNotSupported: UInt8 = 0x05
    public static let immediateCommandRejected: UInt8 = 0x06
    public static let taskInProgress: UInt8 = 0x07
    public static let invalidDataAck: UInt8 = 0x08
    public static let invalidPDUField: UInt8 = 0x09
    public static let outOfResources: UInt8 = 0x0a
    public static let waitingForLogout: UInt8 = 0x0c
}

public let bhsBytes = 48
public let reservedTag: UInt32 = 0xFFFF_FFFF

@inline(__always) func be16(_ p: UnsafeRawPointer, _ o: Int) -> UInt16 {
    UInt16(p.load(fromByteOffset: o, as: UInt8.self)) << 8 | UInt16(p.load(fromByteOffset: o + 1, as: UInt8.self))
}
@inline(__always) func be24(_ p: UnsafeRawPointer, _ o: Int) -> UInt32 {
    UInt32(p.load(fromByteOffset: o, as: UInt8.self)) << 16 | UInt32(p.load(fromByteOffset: o + 1, as: UInt8.self)) << 8
        | UInt32(p.load(fromByteOffset: o + 2, as: UInt8.self))
}
@inline(__always) func be32(_ p: UnsafeRawPointer, _ o: Int) -> UInt32 {
    UInt32(bigEndian: p.loadUnaligned(fromByteOffset: o, as: UInt32.self))
}
@inline(__always) func be64(_ p: UnsafeRawPointer, _ o: Int) -> UInt64 {
    UInt64(bigEndian: p.loadUnaligned(fromByteOffset: o, as: UInt64.self))
}
@inline(__always) func put16(_ p: UnsafeMutableRawPointer, _ o: Int, _ v: UInt16) {
    p.storeBytes(of: v.bigEndian, toByteOffset: o, as: UInt16.self)
}
@inline(__always) func put24(_ p: UnsafeMutableRawPointer, _ o: Int, _ v: UInt32) {
    p.storeBytes(of: UInt8(truncatingIfNeeded: v >> 16), toByteOffset: o, as: UInt8.self)
    p.storeBytes(of: UInt8(truncatingIfNeeded: v >> 8), toByteOffset: o + 1, as: UInt8.self)
    p.storeBytes(of: UInt8(truncatingIfNeeded: v), toByteOffset: o + 2, as: UInt8.self)
}
@inline(__always) func put32(_ p: UnsafeMutableRawPointer, _ o: Int, _ v: UInt32) {
    p.storeBytes(of: v.bigEndian, toByteOffset: o, as: UInt32.self)
}
@inline(__always) func put64(_ p: UnsafeMutableRawPointer, _ o: Int, _ v: UInt64) {
    p.storeBytes(of: v.bigEndian, toByteOffset: o, as: UInt64.self)
}

/// A read-only view of a received BHS.
public struct BHS {
    public let p: UnsafeRawPointer
    @inline(__always) public init(_ p: UnsafeRawPointer) { self.p = p }

    @inline(__always) public var opcode: UInt8 { p.load(as: UInt8.self) & 0x3f }
    @inline(__always) public var immediate: Bool { p.load(as: UInt8.self) & 0x40 != 0 }
    @inline(__always) public var byte1: UInt8 { p.load(fromByteOffset: 1, as: UInt8.self) }
    @inline(__always) public var final: Bool { byte1 & 0x80 != 0 }
    @inline(__always) public func byte(_ o: Int) -> UInt8 { p.load(fromByteOffset: o, as: UInt8.self) }
    /// Total AHS length in bytes (the field counts 4-byte words).
    @inline(__always) public var ahsBytes: Int { Int(p.load(fromByteOffset: 4, as: UInt8.self)) * 4 }
    @inline(__always) public var dataSegmentLength: Int { Int(be24(p, 5)) }
    @inline(__always) public var lunField: UInt64 { be64(p, 8) }
    @inline(__always) public var itt: UInt32 { be32(p, 16) }
    @inline(__always) public func u32(_ o: Int) -> UInt32 { be32(p, o) }
    @inline(__always) public func u16(_ o: Int) -> UInt16 { be16(p, o) }

    // SCSI Command (§11.3)
    @inline(__always) public var expectedDataTransferLength: UInt32 { be32(p, 20) }
    @inline(__always) public var cmdSN: UInt32 { be32(p, 24) }
    @inline(__always) public var expStatSN: UInt32 { be32(p, 28) }
    @inline(__always) public var cdb: UnsafeRawPointer { p + 32 }
    // Data-Out (§11.7)
    @inline(__always) public var ttt: UInt32 { be32(p, 20) }
    @inline(__always) public var dataSN: UInt32 { be32(p, 36) }
    @inline(__always) public var bufferOffset: UInt32 { be32(p, 40) }
}

/// Decodes an 8-byte LUN field into a LUN number (SAM-5 peripheral and flat addressing, single level).
@inline(__always)
public func decodeLUN(_ field: UInt64) -> UInt64 {
    let top = UInt8(truncatingIfNeeded: field >> 56)
    switch top >> 6 {
    case 0: return UInt64(top & 0x3f) << 8 | UInt64(UInt8(truncatingIfNeeded: field >> 48))  // peripheral
    case 1: return UInt64(top & 0x3f) << 8 | UInt64(UInt8(truncatingIfNeeded: field >> 48))  // flat space
    default: return UInt64.max  // extended / logical unit addressing: not served
    }
}

/// Encodes a LUN number the way REPORT LUNS does (peripheral below 256, flat above).
@inline(__always)
public func encodeLUN(_ lun: UInt64) -> UInt64 {
    if lun < 256 { return lun << 48 }
    return (0x4000 | (lun & 0x3fff)) << 48
}

/// Builders write a 48-byte BHS into `h` (zeroing it first). The caller fills StatSN/ExpCmdSN/MaxCmdSN
/// through `setSequence` just before queueing, since those must be current when the PDU goes out.
public enum PDUBuild {
    @inline(__always)
    static func zero(_ h: UnsafeMutableRawPointer) {
        h.initializeMemory(as: UInt64.self, repeating: 0, count: 6)
    }

    @inline(__always)
    static func setDataLength(_ h: UnsafeMutableRawPointer, _ n: Int) { put24(h, 5, UInt32(truncatingIfNeeded: n)) }

    /// StatSN at 24, ExpCmdSN at 28, MaxCmdSN at 32: the layout shared by every target PDU that has them.
    @inline(__always)
    public static func setSequence(_ h: UnsafeMutableRawPointer, statSN: UInt32, expCmdSN: UInt32, maxCmdSN: UInt32) {
        put32(h, 24, statSN)
        put32(h, 28, expCmdSN)
        put32(h, 32, maxCmdSN)
    }

    public static func scsiResponse(_ h: UnsafeMutableRawPointer, itt: UInt32, status: UInt8, response: UInt8 = 0,
                                    residual: Residual, dataLength: Int) {
        zero(h)
        h.storeBytes(of: ISCSIOpcode.scsiResponse, as: UInt8.self)
        var flags: UInt8 = 0x80
        var count: UInt32 = 0
        switch residual {
        case .none: break
        case .overflow(let n): flags |= 0x04; count = n
        case .underflow(let n): flags |= 0x02; count = n
        }
        h.storeBytes(of: flags, toByteOffset: 1, as: UInt8.self)
        h.storeBytes(of: response, toByteOffset: 2, as: UInt8.self)
        h.storeBytes(of: status, toByteOffset: 3, as: UInt8.self)
        setDataLength(h, dataLength)
        put32(h, 16, itt)
        put32(h, 44, count)
    }

    /// Data-In. `statusFlag` collapses the SCSI status into the last Data-In (then `final` must be set too).
    public static func dataIn(_ h: UnsafeMutableRawPointer, itt: UInt32, lunField: UInt64, dataSN: UInt32,
                              bufferOffset: UInt32, length: Int, final: Bool, status: UInt8?, residual: Residual) {
        zero(h)
        h.storeBytes(of: ISCSIOpcode.dataIn, as: UInt8.self)
        var flags: UInt8 = final ? 0x80 : 0
        var count: UInt32 = 0
        if let status {
            flags |= 0x01
            h.storeBytes(of: status, toByteOffset: 3, as: UInt8.self)
            switch residual {
            case .none: break
            case .overflow(let n): flags |= 0x04; count = n
            case .underflow(let n): flags |= 0x02; count = n
            }
        }
        h.storeBytes(of: flags, toByteOffset: 1, as: UInt8.self)
        setDataLength(h, length)
        put64(h, 8, lunField)
        put32(h, 16, itt)
        put32(h, 20, reservedTag)
        put32(h, 36, dataSN)
        put32(h, 40, bufferOffset)
        put32(h, 44, count)
    }

    public static func r2t(_ h: UnsafeMutableRawPointer, itt: UInt32, ttt: UInt32, lunField: UInt64, r2tSN: UInt32,
                           bufferOffset: UInt32, desiredLength: UInt32) {
        zero(h)
        h.storeBytes(of: ISCSIOpcode.r2t, as: UInt8.self)
        h.storeBytes(of: 0x80, toByteOffset: 1, as: UInt8.self)
        put64(h, 8, lunField)
        put32(h, 16, itt)
        put32(h, 20, ttt)
        put32(h, 36, r2tSN)
        put32(h, 40, bufferOffset)
        put32(h, 44, desiredLength)
    }

    public static func nopIn(_ h: UnsafeMutableRawPointer, itt: UInt32, ttt: UInt32, lunField: UInt64, dataLength: Int) {
        zero(h)
        h.storeBytes(of: ISCSIOpcode.nopIn, as: UInt8.self)
        h.storeBytes(of: 0x80, toByteOffset: 1, as: UInt8.self)
        setDataLength(h, dataLength)
        put64(h, 8, lunField)
        put32(h, 16, itt)
        put32(h, 20, ttt)
    }

    public static func taskManagementResponse(_ h: UnsafeMutableRawPointer, itt: UInt32, response: UInt8) {
        zero(h)
        h.storeBytes(of: ISCSIOpcode.taskManagementResponse, as: UInt8.self)
        h.storeBytes(of: 0x80, toByteOffset: 1, as: UInt8.self)
        h.storeBytes(of: response, toByteOffset: 2, as: UInt8.self)
        put32(h, 16, itt)
    }

    public static func logoutResponse(_ h: UnsafeMutableRawPointer, itt: UInt32, response: UInt8,
                                      time2Wait: UInt16, time2Retain: UInt16) {
        zero(h)
        h.storeBytes(of: ISCSIOpcode.logoutResponse, as: UInt8.self)
        h.storeBytes(of: 0x80, toByteOffset: 1, as: UInt8.self)
        h.storeBytes(of: response, toByteOffset: 2, as: UInt8.self)
        put32(h, 16, itt)
        put16(h, 40, time2Wait)
        put16(h, 42, time2Retain)
    }

    public static func reject(_ h: UnsafeMutableRawPointer, reason: UInt8, dataSN: UInt32 = 0) {
        zero(h)
        h.storeBytes(of: ISCSIOpcode.reject, as: UInt8.self)
        h.storeBytes(of: 0x80, toByteOffset: 1, as: UInt8.self)
        h.storeBytes(of: reason, toByteOffset: 2, as: UInt8.self)
        setDataLength(h, bhsBytes)
        put32(h, 16, reservedTag)
        put32(h, 36, dataSN)
    }

    public static func textResponse(_ h: UnsafeMutableRawPointer, itt: UInt32, ttt: UInt32, final: Bool,
                                    cont: Bool, lunField: UInt64, dataLength: Int) {
        zero(h)
        h.storeBytes(of: ISCSIOpcode.textResponse, as: UInt8.self)
        h.storeBytes(of: (final ? 0x80 : 0) | (cont ? 0x40 : 0) as UInt8, toByteOffset: 1, as: UInt8.self)
        setDataLength(h, dataLength)
        put64(h, 8, lunField)
        put32(h, 16, itt)
        put32(h, 20, ttt)
    }

    public static func asyncMessage(_ h: UnsafeMutableRawPointer, event: UInt8, lunField: UInt64,
                                    parameter1: UInt16, parameter2: UInt16, parameter3: UInt16, dataLength: Int) {
        zero(h)
        h.storeBytes(of: ISCSIOpcode.asyncMessage, as: UInt8.self)
        h.storeBytes(of: 0x80, toByteOffset: 1, as: UInt8.self)
        setDataLength(h, dataLength)
        put64(h, 8, lunField)
        put32(h, 16, reservedTag)
        h.storeBytes(of: event, toByteOffset: 36, as: UInt8.self)
        put16(h, 38, parameter1)
        put16(h, 40, parameter2)
        put16(h, 42, parameter3)
    }

    /// Login Response (§11.13). The TSIH and the StatSN/ExpCmdSN/MaxCmdSN are filled by the caller.
    public static func loginResponse(_ h: UnsafeMutableRawPointer, transit: Bool, cont: Bool, csg: UInt8, nsg: UInt8,
                                     versionMax: UInt8, versionActive: UInt8, isid: UInt64, tsih: UInt16, itt: UInt32,
                                     statusClass: UInt8, statusDetail: UInt8, dataLength: Int) {
        zero(h)
        h.storeBytes(of: ISCSIOpcode.loginResponse, as: UInt8.self)
        var flags: UInt8 = (transit ? 0x80 : 0) | (cont ? 0x40 : 0)
        flags |= (csg & 3) << 2
        if transit { flags |= nsg & 3 }
        h.storeBytes(of: flags, toByteOffset: 1, as: UInt8.self)
        h.storeBytes(of: versionMax, toByteOffset: 2, as: UInt8.self)
        h.storeBytes(of: versionActive, toByteOffset: 3, as: UInt8.self)
        setDataLength(h, dataLength)
        // ISID (6 bytes) + TSIH (2 bytes) at 8..15
        put16(h, 8, UInt16(truncatingIfNeeded: isid >> 32))
        put32(h, 10, UInt32(truncatingIfNeeded: isid))
        put16(h, 14, tsih)
        put32(h, 16, itt)
        h.storeBytes(of: statusClass, toByteOffset: 36, as: UInt8.self)
        h.storeBytes(of: statusDetail, toByteOffset: 37, as: UInt8.self)
    }
}

/// The initiator's side of the same headers, for the test initiators (the simulation's clients) so that they
/// speak this file's vocabulary instead of keeping their own. Same contract as `PDUBuild`: the 48 bytes at
/// `h` are zeroed and written in place.
enum InitiatorPDUBuild {
    /// The fields every initiator PDU here shares: opcode (with the I bit), flags, data segment length, the
    /// LUN or ISID field at 8, ITT, the field at 20 (TTT or expected length), CmdSN (or the reserved field of
    /// Data-Out) and ExpStatSN.
    private static func header(_ h: UnsafeMutableRawPointer, opcode: UInt8, immediate: Bool, flags: UInt8,
                               dataLength: Int, field8: UInt64, itt: UInt32, field20: UInt32, cmdSN: UInt32,
                               expStatSN: UInt32) {
        PDUBuild.zero(h)
        h.storeBytes(of: (immediate ? 0x40 : 0) | opcode, as: UInt8.self)
        h.storeBytes(of: flags, toByteOffset: 1, as: UInt8.self)
        PDUBuild.setDataLength(h, dataLength)
        put64(h, 8, field8)
        put32(h, 16, itt)
        put32(h, 20, field20)
        put32(h, 24, cmdSN)
        put32(h, 28, expStatSN)
    }

    /// SCSI Command (§11.3), task attribute SIMPLE. `final` is false only when unsolicited Data-Out follows.
    /// The CDB (at most 16 bytes) is written by the caller at offset 32.
    static func scsiCommand(_ h: UnsafeMutableRawPointer, read: Bool, write: Bool, final: Bool, lunField: UInt64,
                            itt: UInt32, expectedLength: UInt32, cmdSN: UInt32, expStatSN: UInt32,
                            immediateLength: Int) {
        let flags: UInt8 = (final ? 0x80 : 0) | (read ? 0x40 : 0) | (write ? 0x20 : 0) | 0x01
        header(h, opcode: ISCSIOpcode.scsiCommand, immediate: false, flags: flags, dataLength: immediateLength,
               field8: lunField, itt: itt, field20: expectedLength, cmdSN: cmdSN, expStatSN: expStatSN)
    }

    /// SCSI Data-Out (§11.7); `ttt` is `reservedTag` for unsolicited data.
    static func dataOut(_ h: UnsafeMutableRawPointer, final: Bool, lunField: UInt64, itt: UInt32, ttt: UInt32,
                        expStatSN: UInt32, dataSN: UInt32, bufferOffset: UInt32, length: Int) {
        header(h, opcode: ISCSIOpcode.dataOut, immediate: false, flags: final ? 0x80 : 0, dataLength: length,
               field8: lunField, itt: itt, field20: ttt, cmdSN: 0, expStatSN: expStatSN)
        put32(h, 36, dataSN)
        put32(h, 40, bufferOffset)
    }

    /// NOP-Out (§11.18) answering a NOP-In ping: immediate, ITT reserved, the ping's TTT and LUN echoed.
    static func nopOutReply(_ h: UnsafeMutableRawPointer, lunField: UInt64, ttt: UInt32, cmdSN: UInt32,
                            expStatSN: UInt32) {
        header(h, opcode: ISCSIOpcode.nopOut, immediate: true, flags: 0x80, dataLength: 0, field8: lunField,
               itt: reservedTag, field20: ttt, cmdSN: cmdSN, expStatSN: expStatSN)
    }

    /// Login Request (§11.12): immediate, CID 0, TSIH 0 (a new session, or the reinstatement of one).
    static func loginRequest(_ h: UnsafeMutableRawPointer, transit: Bool, csg: UInt8, nsg: UInt8, isid: UInt64,
                             itt: UInt32, cmdSN: UInt32, expStatSN: UInt32, dataLength: Int) {
        let flags: UInt8 = (transit ? 0x80 : 0) | (csg & 3) << 2 | (transit ? nsg & 3 : 0)
        // ISID in bytes 8-13, TSIH 0 in 14-15.
        header(h, opcode: ISCSIOpcode.loginRequest, immediate: true, flags: flags, dataLength: dataLength,
               field8: (isid & 0xFFFF_FFFF_FFFF) << 16, itt: itt, field20: 0, cmdSN: cmdSN, expStatSN: expStatSN)
    }
}
