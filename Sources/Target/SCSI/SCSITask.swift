// The SCSI command state machine's public face. The transport (iSCSI today, others later) owns one
// SCSITask per outstanding command, in preallocated storage, and drives it:
//
//   start(...)              -> SCSIAction
//   dataOutReceived()       -> SCSIAction   after the transport filled the buffer asked for by .dataOut
//   storeCompleted(result)  -> SCSIAction   after the reactor carried out a .store op
//   dataInSent()            -> SCSIAction   after the transport finished sending a non-final .dataIn piece
//
// until it returns .complete. SCSI performs no I/O and allocates nothing on READ/WRITE.
// (Placeholder: the SCSI layer fills this in.)

public enum Residual: Equatable, Sendable {
    case none
    case underflow(UInt32)   // fewer bytes transferred than the Expected Data Transfer Length
    case overflow(UInt32)    // the command wanted more than the Expected Data Transfer Length
}

public enum SCSIAction: Equatable, Sendable {
    /// Put bytes [offset, offset+length) of the command's data-out stream into buffer[0 ..< length],
    /// then call dataOutReceived(). length <= buffer.count.
    case dataOut(offset: Int, length: Int)
    /// Carry out this store operation, then call storeCompleted(_:).
    case store(StoreOp)
    /// buffer[0 ..< length] is the next piece of the data-in stream and more follows.
    /// Send it, and call dataInSent() once the buffer may be reused.
    case dataIn(length: Int)
    /// The command is done. buffer[0 ..< dataInLength] is the last piece of data-in (may be 0).
    /// With status CHECK CONDITION the sense data is in the task (senseLength > 0).
    case complete(status: UInt8, dataInLength: Int, residual: Residual)
}

public enum SCSIStatus {
    public static let good: UInt8 = 0x00
    public static let checkCondition: UInt8 = 0x02
    public static let conditionMet: UInt8 = 0x04
    public static let busy: UInt8 = 0x08
    public static let reservationConflict: UInt8 = 0x18
    public static let taskSetFull: UInt8 = 0x28
    public static let taskAborted: UInt8 = 0x40
}
