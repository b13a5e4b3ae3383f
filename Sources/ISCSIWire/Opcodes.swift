// The iSCSI codes a header carries (RFC 7143 §11): opcodes and reject reasons. Computed and inlinable, so that
// a switch over them in another module still compiles to immediates.

public enum ISCSIOpcode {
    // Initiator opcodes
    @inlinable public static var nopOut: UInt8 { 0x00 }
    @inlinable public static var scsiCommand: UInt8 { 0x01 }
    @inlinable public static var taskManagement: UInt8 { 0x02 }
    @inlinable public static var loginRequest: UInt8 { 0x03 }
    @inlinable public static var textRequest: UInt8 { 0x04 }
    @inlinable public static var dataOut: UInt8 { 0x05 }
    @inlinable public static var logoutRequest: UInt8 { 0x06 }
    @inlinable public static var snack: UInt8 { 0x10 }
    // Target opcodes
    @inlinable public static var nopIn: UInt8 { 0x20 }
    @inlinable public static var scsiResponse: UInt8 { 0x21 }
    @inlinable public static var taskManagementResponse: UInt8 { 0x22 }
    @inlinable public static var loginResponse: UInt8 { 0x23 }
    @inlinable public static var textResponse: UInt8 { 0x24 }
    @inlinable public static var dataIn: UInt8 { 0x25 }
    @inlinable public static var logoutResponse: UInt8 { 0x26 }
    @inlinable public static var r2t: UInt8 { 0x31 }
    @inlinable public static var asyncMessage: UInt8 { 0x32 }
    @inlinable public static var reject: UInt8 { 0x3f }
}

/// Reject reasons (RFC 7143 §11.17.1).
public enum RejectReason {
    @inlinable public static var dataDigestError: UInt8 { 0x02 }
    @inlinable public static var snackReject: UInt8 { 0x03 }
    @inlinable public static var protocolError: UInt8 { 0x04 }
    @inlinable public static var commandNotSupported: UInt8 { 0x05 }
    @inlinable public static var immediateCommandRejected: UInt8 { 0x06 }
    @inlinable public static var taskInProgress: UInt8 { 0x07 }
    @inlinable public static var invalidDataAck: UInt8 { 0x08 }
    @inlinable public static var invalidPDUField: UInt8 { 0x09 }
    @inlinable public static var outOfResources: UInt8 { 0x0a }
    @inlinable public static var waitingForLogout: UInt8 { 0x0c }
}
