// Builders for every PDU a target sends (RFC 7143 §11). No allocation: headers are written into buffers.

/// The residual a SCSI Response or final Data-In reports (RFC 7143 §11.4.5).
public enum Residual: Equatable, Sendable {
    case none
    case underflow(UInt32)   // fewer bytes transferred than the Expected Data Transfer Length
    case overflow(UInt32)    // the command wanted more than the Expected Data Transfer Length
}

/// Builders write a 48-byte BHS into `h` (zeroing it first). The caller fills StatSN/ExpCmdSN/MaxCmdSN
/// through `setSequence` just before queueing, since those must be current when the PDU goes out.
public enum PDUBuild {
    @inlinable @inline(__always)
    static func zero(_ h: UnsafeMutableRawPointer) {
        h.initializeMemory(as: UInt64.self, repeating: 0, count: 6)
    }

    /// The O (overflow) or U (underflow) flag bit and the Residual Count, shared by SCSI Response and Data-In.
    @inlinable @inline(__always)
    static func residualField(_ residual: Residual) -> (flags: UInt8, count: UInt32) {
        switch residual {
        case .none: return (0, 0)
        case .overflow(let n): return (0x04, n)
        case .underflow(let n): return (0x02, n)
        }
    }

    @inlinable @inline(__always)
    static func setDataLength(_ h: UnsafeMutableRawPointer, _ n: Int) { put24(h, 5, UInt32(truncatingIfNeeded: n)) }

    /// StatSN at 24, ExpCmdSN at 28, MaxCmdSN at 32: the layout shared by every target PDU that has them.
    @inline(__always)
    @inlinable
    public static func setSequence(_ h: UnsafeMutableRawPointer, statSN: UInt32, expCmdSN: UInt32, maxCmdSN: UInt32) {
        put32(h, 24, statSN)
        put32(h, 28, expCmdSN)
        put32(h, 32, maxCmdSN)
    }

    @inlinable
    public static func scsiResponse(_ h: UnsafeMutableRawPointer, itt: UInt32, status: UInt8, response: UInt8 = 0,
                                    residual: Residual, dataLength: Int) {
        zero(h)
        h.storeBytes(of: ISCSIOpcode.scsiResponse, as: UInt8.self)
        let (residualFlags, count) = residualField(residual)
        h.storeBytes(of: 0x80 | residualFlags, toByteOffset: 1, as: UInt8.self)
        h.storeBytes(of: response, toByteOffset: 2, as: UInt8.self)
        h.storeBytes(of: status, toByteOffset: 3, as: UInt8.self)
        setDataLength(h, dataLength)
        put32(h, 16, itt)
        put32(h, 44, count)
    }

    /// Data-In. `statusFlag` collapses the SCSI status into the last Data-In (then `final` must be set too).
    @inlinable
    public static func dataIn(_ h: UnsafeMutableRawPointer, itt: UInt32, lunField: UInt64, dataSN: UInt32,
                              bufferOffset: UInt32, length: Int, final: Bool, status: UInt8?, residual: Residual) {
        zero(h)
        h.storeBytes(of: ISCSIOpcode.dataIn, as: UInt8.self)
        var flags: UInt8 = final ? 0x80 : 0
        var count: UInt32 = 0
        if let status {
            flags |= 0x01
            h.storeBytes(of: status, toByteOffset: 3, as: UInt8.self)
            let (residualFlags, n) = residualField(residual)
            flags |= residualFlags
            count = n
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

    @inlinable
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

    @inlinable
    public static func nopIn(_ h: UnsafeMutableRawPointer, itt: UInt32, ttt: UInt32, lunField: UInt64, dataLength: Int) {
        zero(h)
        h.storeBytes(of: ISCSIOpcode.nopIn, as: UInt8.self)
        h.storeBytes(of: 0x80, toByteOffset: 1, as: UInt8.self)
        setDataLength(h, dataLength)
        put64(h, 8, lunField)
        put32(h, 16, itt)
        put32(h, 20, ttt)
    }

    @inlinable
    public static func taskManagementResponse(_ h: UnsafeMutableRawPointer, itt: UInt32, response: UInt8) {
        zero(h)
        h.storeBytes(of: ISCSIOpcode.taskManagementResponse, as: UInt8.self)
        h.storeBytes(of: 0x80, toByteOffset: 1, as: UInt8.self)
        h.storeBytes(of: response, toByteOffset: 2, as: UInt8.self)
        put32(h, 16, itt)
    }

    @inlinable
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

    @inlinable
    public static func reject(_ h: UnsafeMutableRawPointer, reason: UInt8, dataSN: UInt32 = 0) {
        zero(h)
        h.storeBytes(of: ISCSIOpcode.reject, as: UInt8.self)
        h.storeBytes(of: 0x80, toByteOffset: 1, as: UInt8.self)
        h.storeBytes(of: reason, toByteOffset: 2, as: UInt8.self)
        setDataLength(h, bhsBytes)
        put32(h, 16, reservedTag)
        put32(h, 36, dataSN)
    }

    @inlinable
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

    @inlinable
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
    @inlinable
    public static func loginResponse(_ h: UnsafeMutableRawPointer, transit: Bool, cont: Bool, csg: UInt8, nsg: UInt8,
                                     versionMax: UInt8, versionActive: UInt8, isid: UInt64, tsih: UInt16, itt: UInt32,
                                     statusClass: UInt8, statusDetail: UInt8, dataLength: Int) {
        zero(h)
        h.storeBytes(of: ISCSIOpcode.loginResponse, as: UInt8.self)
        var flags: UInt8 = (transit ? LoginFlags.transit : 0) | (cont ? LoginFlags.continue : 0)
        flags |= (csg & LoginFlags.stageMask) << LoginFlags.csgShift
        if transit { flags |= nsg & LoginFlags.stageMask }
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
