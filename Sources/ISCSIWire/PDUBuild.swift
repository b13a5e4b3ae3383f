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

    /// Zeroes the BHS and writes its opcode and flags: how every builder starts.
    @inlinable @inline(__always)
    static func begin(_ h: UnsafeMutableRawPointer, _ opcode: UInt8, flags: UInt8) {
        zero(h)
        h.storeBytes(of: opcode, as: UInt8.self)
        h.storeBytes(of: flags, toByteOffset: BHSField.flags, as: UInt8.self)
    }

    /// The O (overflow) or U (underflow) flag bit and the Residual Count, shared by SCSI Response and Data-In.
    @inlinable @inline(__always)
    static func residualField(_ residual: Residual) -> (flags: UInt8, count: UInt32) {
        switch residual {
        case .none: return (0, 0)
        case .overflow(let n): return (PDUFlags.overflow, n)
        case .underflow(let n): return (PDUFlags.underflow, n)
        }
    }

    @inlinable @inline(__always)
    static func setDataLength(_ h: UnsafeMutableRawPointer, _ n: Int) {
        put24(h, BHSField.dataSegmentLength, UInt32(truncatingIfNeeded: n))
    }

    /// StatSN at 24, ExpCmdSN at 28, MaxCmdSN at 32: the layout shared by every target PDU that has them.
    @inline(__always)
    @inlinable
    public static func setSequence(_ h: UnsafeMutableRawPointer, statSN: UInt32, expCmdSN: UInt32, maxCmdSN: UInt32) {
        put32(h, BHSField.statSN, statSN)
        put32(h, BHSField.expCmdSN, expCmdSN)
        put32(h, BHSField.maxCmdSN, maxCmdSN)
    }

    @inlinable
    public static func scsiResponse(_ h: UnsafeMutableRawPointer, itt: UInt32, status: UInt8, response: UInt8 = 0,
                                    residual: Residual, dataLength: Int) {
        let (residualFlags, count) = residualField(residual)
        begin(h, ISCSIOpcode.scsiResponse, flags: PDUFlags.final | residualFlags)
        h.storeBytes(of: response, toByteOffset: BHSField.response, as: UInt8.self)
        h.storeBytes(of: status, toByteOffset: BHSField.status, as: UInt8.self)
        setDataLength(h, dataLength)
        put32(h, BHSField.itt, itt)
        put32(h, BHSField.residualCount, count)
    }

    /// Data-In. A `status` collapses the SCSI status into the last Data-In (then `final` must be set too).
    @inlinable
    public static func dataIn(_ h: UnsafeMutableRawPointer, itt: UInt32, lunField: UInt64, dataSN: UInt32,
                              bufferOffset: UInt32, length: Int, final: Bool, status: UInt8?, residual: Residual) {
        // The status, and with it the residual, only when it is collapsed into this PDU.
        let (residualFlags, count) = status == nil ? (0, 0) : residualField(residual)
        let statusFlags = status == nil ? 0 : PDUFlags.status | residualFlags
        begin(h, ISCSIOpcode.dataIn, flags: (final ? PDUFlags.final : 0) | statusFlags)
        if let status { h.storeBytes(of: status, toByteOffset: BHSField.status, as: UInt8.self) }
        setDataLength(h, length)
        put64(h, BHSField.lun, lunField)
        put32(h, BHSField.itt, itt)
        put32(h, BHSField.ttt, reservedTag)
        put32(h, BHSField.dataSN, dataSN)
        put32(h, BHSField.bufferOffset, bufferOffset)
        put32(h, BHSField.residualCount, count)
    }

    @inlinable
    public static func r2t(_ h: UnsafeMutableRawPointer, itt: UInt32, ttt: UInt32, lunField: UInt64, r2tSN: UInt32,
                           bufferOffset: UInt32, desiredLength: UInt32) {
        begin(h, ISCSIOpcode.r2t, flags: PDUFlags.final)
        put64(h, BHSField.lun, lunField)
        put32(h, BHSField.itt, itt)
        put32(h, BHSField.ttt, ttt)
        put32(h, BHSField.r2tSN, r2tSN)
        put32(h, BHSField.bufferOffset, bufferOffset)
        put32(h, BHSField.desiredDataTransferLength, desiredLength)
    }

    @inlinable
    public static func nopIn(_ h: UnsafeMutableRawPointer, itt: UInt32, ttt: UInt32, lunField: UInt64, dataLength: Int) {
        begin(h, ISCSIOpcode.nopIn, flags: PDUFlags.final)
        setDataLength(h, dataLength)
        put64(h, BHSField.lun, lunField)
        put32(h, BHSField.itt, itt)
        put32(h, BHSField.ttt, ttt)
    }

    @inlinable
    public static func taskManagementResponse(_ h: UnsafeMutableRawPointer, itt: UInt32, response: UInt8) {
        begin(h, ISCSIOpcode.taskManagementResponse, flags: PDUFlags.final)
        h.storeBytes(of: response, toByteOffset: BHSField.response, as: UInt8.self)
        put32(h, BHSField.itt, itt)
    }

    @inlinable
    public static func logoutResponse(_ h: UnsafeMutableRawPointer, itt: UInt32, response: UInt8,
                                      time2Wait: UInt16, time2Retain: UInt16) {
        begin(h, ISCSIOpcode.logoutResponse, flags: PDUFlags.final)
        h.storeBytes(of: response, toByteOffset: BHSField.response, as: UInt8.self)
        put32(h, BHSField.itt, itt)
        put16(h, BHSField.time2Wait, time2Wait)
        put16(h, BHSField.time2Retain, time2Retain)
    }

    @inlinable
    public static func reject(_ h: UnsafeMutableRawPointer, reason: UInt8, dataSN: UInt32 = 0) {
        begin(h, ISCSIOpcode.reject, flags: PDUFlags.final)
        h.storeBytes(of: reason, toByteOffset: BHSField.response, as: UInt8.self)
        setDataLength(h, bhsBytes)
        put32(h, BHSField.itt, reservedTag)
        put32(h, BHSField.dataSN, dataSN)
    }

    @inlinable
    public static func textResponse(_ h: UnsafeMutableRawPointer, itt: UInt32, ttt: UInt32, final: Bool,
                                    cont: Bool, lunField: UInt64, dataLength: Int) {
        begin(h, ISCSIOpcode.textResponse, flags: (final ? PDUFlags.final : 0) | (cont ? PDUFlags.continue : 0))
        setDataLength(h, dataLength)
        put64(h, BHSField.lun, lunField)
        put32(h, BHSField.itt, itt)
        put32(h, BHSField.ttt, ttt)
    }

    @inlinable
    public static func asyncMessage(_ h: UnsafeMutableRawPointer, event: UInt8, lunField: UInt64,
                                    parameter1: UInt16, parameter2: UInt16, parameter3: UInt16, dataLength: Int) {
        begin(h, ISCSIOpcode.asyncMessage, flags: PDUFlags.final)
        setDataLength(h, dataLength)
        put64(h, BHSField.lun, lunField)
        put32(h, BHSField.itt, reservedTag)
        h.storeBytes(of: event, toByteOffset: BHSField.asyncEvent, as: UInt8.self)
        put16(h, BHSField.asyncParameter1, parameter1)
        put16(h, BHSField.asyncParameter2, parameter2)
        put16(h, BHSField.asyncParameter3, parameter3)
    }

    /// Login Response (§11.13). The TSIH and the StatSN/ExpCmdSN/MaxCmdSN are filled by the caller.
    @inlinable
    public static func loginResponse(_ h: UnsafeMutableRawPointer, transit: Bool, cont: Bool, csg: UInt8, nsg: UInt8,
                                     versionMax: UInt8, versionActive: UInt8, isid: UInt64, tsih: UInt16, itt: UInt32,
                                     statusClass: UInt8, statusDetail: UInt8, dataLength: Int) {
        var flags: UInt8 = (transit ? LoginFlags.transit : 0) | (cont ? LoginFlags.continue : 0)
        flags |= (csg & LoginFlags.stageMask) << LoginFlags.csgShift
        if transit { flags |= nsg & LoginFlags.stageMask }
        begin(h, ISCSIOpcode.loginResponse, flags: flags)
        h.storeBytes(of: versionMax, toByteOffset: BHSField.response, as: UInt8.self)
        h.storeBytes(of: versionActive, toByteOffset: BHSField.status, as: UInt8.self)
        setDataLength(h, dataLength)
        put16(h, BHSField.isid, UInt16(truncatingIfNeeded: isid >> 32))
        put32(h, BHSField.isid + 2, UInt32(truncatingIfNeeded: isid))
        put16(h, BHSField.tsih, tsih)
        put32(h, BHSField.itt, itt)
        h.storeBytes(of: statusClass, toByteOffset: BHSField.statusClass, as: UInt8.self)
        h.storeBytes(of: statusDetail, toByteOffset: BHSField.statusDetail, as: UInt8.self)
    }
}
