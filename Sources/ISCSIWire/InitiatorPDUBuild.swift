// Builders for the PDUs an initiator sends (RFC 7143 §11), for the load generator and the test initiators.

/// The initiator's side of the headers `PDUBuild` writes, for the load generator and the test initiators so
/// that they speak this module's vocabulary instead of keeping their own. Same contract as `PDUBuild`: the 48 bytes at
/// `h` are zeroed and written in place.
public enum InitiatorPDUBuild {
    /// The fields every initiator PDU here shares: opcode (with the I bit), flags, data segment length, the
    /// LUN or ISID field at 8, ITT, the field at 20 (TTT or expected length), CmdSN (or the reserved field of
    /// Data-Out) and ExpStatSN.
    @inlinable
    static func header(_ h: UnsafeMutableRawPointer, opcode: UInt8, immediate: Bool, flags: UInt8,
                       dataLength: Int, field8: UInt64, itt: UInt32, field20: UInt32, cmdSN: UInt32,
                       expStatSN: UInt32) {
        PDUBuild.begin(h, (immediate ? PDUFlags.immediate : 0) | opcode, flags: flags)
        PDUBuild.setDataLength(h, dataLength)
        put64(h, BHSField.lun, field8)
        put32(h, BHSField.itt, itt)
        put32(h, BHSField.ttt, field20)
        put32(h, BHSField.cmdSN, cmdSN)
        put32(h, BHSField.expStatSN, expStatSN)
    }

    /// SCSI Command (§11.3), task attribute SIMPLE. `final` is false only when unsolicited Data-Out follows.
    /// The CDB (at most 16 bytes) is written by the caller at offset 32.
    @inlinable
    public static func scsiCommand(_ h: UnsafeMutableRawPointer, read: Bool, write: Bool, final: Bool, lunField: UInt64,
                                   itt: UInt32, expectedLength: UInt32, cmdSN: UInt32, expStatSN: UInt32,
                                   immediateLength: Int, immediate: Bool = false) {
        let flags: UInt8 = (final ? PDUFlags.final : 0) | (read ? PDUFlags.read : 0) | (write ? PDUFlags.write : 0)
            | PDUFlags.attributeSimple
        header(h, opcode: ISCSIOpcode.scsiCommand, immediate: immediate, flags: flags, dataLength: immediateLength,
               field8: lunField, itt: itt, field20: expectedLength, cmdSN: cmdSN, expStatSN: expStatSN)
    }

    /// SCSI Data-Out (§11.7); `ttt` is `reservedTag` for unsolicited data.
    @inlinable
    public static func dataOut(_ h: UnsafeMutableRawPointer, final: Bool, lunField: UInt64, itt: UInt32, ttt: UInt32,
                               expStatSN: UInt32, dataSN: UInt32, bufferOffset: UInt32, length: Int) {
        header(h, opcode: ISCSIOpcode.dataOut, immediate: false, flags: final ? PDUFlags.final : 0, dataLength: length,
               field8: lunField, itt: itt, field20: ttt, cmdSN: 0, expStatSN: expStatSN)
        put32(h, BHSField.dataSN, dataSN)
        put32(h, BHSField.bufferOffset, bufferOffset)
    }

    /// NOP-Out (§11.18), immediate. A ping of the initiator's own has an ITT and TTT `reservedTag`.
    @inlinable
    public static func nopOut(_ h: UnsafeMutableRawPointer, lunField: UInt64 = 0, itt: UInt32, ttt: UInt32,
                              cmdSN: UInt32, expStatSN: UInt32, dataLength: Int = 0) {
        header(h, opcode: ISCSIOpcode.nopOut, immediate: true, flags: PDUFlags.final, dataLength: dataLength, field8: lunField,
               itt: itt, field20: ttt, cmdSN: cmdSN, expStatSN: expStatSN)
    }

    /// NOP-Out answering a NOP-In ping: ITT reserved, the ping's TTT and LUN echoed.
    @inlinable
    public static func nopOutReply(_ h: UnsafeMutableRawPointer, lunField: UInt64, ttt: UInt32, cmdSN: UInt32,
                                   expStatSN: UInt32, dataLength: Int = 0) {
        nopOut(h, lunField: lunField, itt: reservedTag, ttt: ttt, cmdSN: cmdSN, expStatSN: expStatSN,
               dataLength: dataLength)
    }

    /// Task Management Function Request (§11.5.1), immediate. `referencedTaskTag` is `reservedTag` unless the
    /// function is ABORT TASK.
    @inlinable
    public static func taskManagementRequest(_ h: UnsafeMutableRawPointer, function: UInt8, lunField: UInt64,
                                             itt: UInt32, referencedTaskTag: UInt32, cmdSN: UInt32,
                                             expStatSN: UInt32, refCmdSN: UInt32) {
        header(h, opcode: ISCSIOpcode.taskManagement, immediate: true, flags: PDUFlags.final | (function & TMFunction.mask),
               dataLength: 0, field8: lunField, itt: itt, field20: referencedTaskTag, cmdSN: cmdSN,
               expStatSN: expStatSN)
        put32(h, BHSField.refCmdSN, refCmdSN)
    }

    /// Text Request (§11.10), final (no continuation), a new exchange (TTT `reservedTag`). `immediate` leaves
    /// CmdSN unconsumed.
    @inlinable
    public static func textRequest(_ h: UnsafeMutableRawPointer, immediate: Bool, itt: UInt32, cmdSN: UInt32,
                                   expStatSN: UInt32, dataLength: Int) {
        header(h, opcode: ISCSIOpcode.textRequest, immediate: immediate, flags: PDUFlags.final, dataLength: dataLength,
               field8: 0, itt: itt, field20: reservedTag, cmdSN: cmdSN, expStatSN: expStatSN)
    }

    /// Login Request (§11.12): immediate, CID 0, TSIH 0 (a new session, or the reinstatement of one).
    @inlinable
    public static func loginRequest(_ h: UnsafeMutableRawPointer, transit: Bool, csg: UInt8, nsg: UInt8, isid: UInt64,
                                    itt: UInt32, cmdSN: UInt32, expStatSN: UInt32, dataLength: Int) {
        let flags: UInt8 = (transit ? LoginFlags.transit : 0) | (csg & LoginFlags.stageMask) << LoginFlags.csgShift
            | (transit ? nsg & LoginFlags.stageMask : 0)
        // ISID in bytes 8-13, TSIH 0 in 14-15.
        header(h, opcode: ISCSIOpcode.loginRequest, immediate: true, flags: flags, dataLength: dataLength,
               field8: (isid & 0xFFFF_FFFF_FFFF) << 16, itt: itt, field20: 0, cmdSN: cmdSN, expStatSN: expStatSN)
    }

    /// Logout Request (§11.14): immediate, CID 0.
    @inlinable
    public static func logoutRequest(_ h: UnsafeMutableRawPointer, reason: UInt8 = LogoutReason.closeSession,
                                     itt: UInt32, cmdSN: UInt32, expStatSN: UInt32) {
        header(h, opcode: ISCSIOpcode.logoutRequest, immediate: true, flags: PDUFlags.final | (reason & LogoutReason.mask),
               dataLength: 0, field8: 0, itt: itt, field20: 0, cmdSN: cmdSN, expStatSN: expStatSN)
    }
}
