// The codes inside PDUs that a session acts on: task management functions and responses (RFC 7143 §11.5,
// §11.6), logout reasons and responses (§11.14, §11.15) and login status (§11.13.5).

/// Task management function, byte 1 bits 0-6 of a Task Management Function Request (§11.5.1).
public enum TMFunction {
    @inlinable public static var abortTask: UInt8 { 1 }
    @inlinable public static var abortTaskSet: UInt8 { 2 }
    @inlinable public static var clearTaskSet: UInt8 { 3 }
    @inlinable public static var clearACA: UInt8 { 4 }
    @inlinable public static var logicalUnitReset: UInt8 { 5 }
    @inlinable public static var targetWarmReset: UInt8 { 6 }
    @inlinable public static var targetColdReset: UInt8 { 7 }
    @inlinable public static var taskReassign: UInt8 { 8 }
    /// Byte 1 carries the function in its low seven bits (bit 7 is always 1).
    @inlinable public static var mask: UInt8 { 0x7F }
}

/// Task Management Function Response, byte 2 (§11.6.1).
public enum TMResponse {
    @inlinable public static var functionComplete: UInt8 { 0 }
    @inlinable public static var taskDoesNotExist: UInt8 { 1 }
    @inlinable public static var lunDoesNotExist: UInt8 { 2 }
    @inlinable public static var taskStillAllegiant: UInt8 { 3 }
    @inlinable public static var reassignmentNotSupported: UInt8 { 4 }
    @inlinable public static var functionNotSupported: UInt8 { 5 }
    @inlinable public static var authorizationFailed: UInt8 { 6 }
    @inlinable public static var functionRejected: UInt8 { 255 }
}

/// Logout Request reason, byte 1 bits 0-6 (§11.14.1).
public enum LogoutReason {
    @inlinable public static var closeSession: UInt8 { 0 }
    @inlinable public static var closeConnection: UInt8 { 1 }
    @inlinable public static var removeConnectionForRecovery: UInt8 { 2 }
    @inlinable public static var mask: UInt8 { 0x7F }
}

/// Logout Response, byte 2 (§11.15.1).
public enum LogoutResponse {
    @inlinable public static var closedSuccessfully: UInt8 { 0 }
    @inlinable public static var cidNotFound: UInt8 { 1 }
    @inlinable public static var recoveryNotSupported: UInt8 { 2 }
    @inlinable public static var cleanupFailed: UInt8 { 3 }
}

/// Login Request and Response byte 1 (§11.12.1, §11.13.1): T and C bits, then CSG in bits 2-3 and NSG in bits
/// 0-1.
/// Bits of the BHS flags byte (RFC 7143 §11), and the I bit of the opcode byte.
public enum PDUFlags {
    /// The opcode byte's I bit: an immediate command.
    @inlinable public static var immediate: UInt8 { 0x40 }
    /// F: the last PDU of a sequence (or the only one).
    @inlinable public static var final: UInt8 { 0x80 }
    /// Text Request and Response: C, more text follows.
    @inlinable public static var `continue`: UInt8 { 0x40 }
    /// SCSI Command: R, W, and the SIMPLE task attribute.
    @inlinable public static var read: UInt8 { 0x40 }
    @inlinable public static var write: UInt8 { 0x20 }
    @inlinable public static var attributeSimple: UInt8 { 0x01 }
    /// Data-In: S, the status is in this PDU; SCSI Response and Data-In: U and O, a residual count follows.
    @inlinable public static var status: UInt8 { 0x01 }
    @inlinable public static var underflow: UInt8 { 0x02 }
    @inlinable public static var overflow: UInt8 { 0x04 }
}

public enum LoginFlags {
    @inlinable public static var transit: UInt8 { 0x80 }
    @inlinable public static var `continue`: UInt8 { 0x40 }
    @inlinable public static var csgShift: UInt8 { 2 }
    /// A stage (CSG or NSG) is two bits.
    @inlinable public static var stageMask: UInt8 { 3 }
}

/// Login status codes, class << 8 | detail (RFC 7143 §11.13.5).
public enum LoginStatus: UInt16, Sendable, Equatable {
    case success = 0x0000
    case targetMovedTemporarily = 0x0101
    case targetMovedPermanently = 0x0102
    case initiatorError = 0x0200
    case authenticationFailure = 0x0201
    case authorizationFailure = 0x0202
    case notFound = 0x0203
    case targetRemoved = 0x0204
    case unsupportedVersion = 0x0205
    case tooManyConnections = 0x0206
    case missingParameter = 0x0207
    case cannotIncludeInSession = 0x0208
    case sessionTypeNotSupported = 0x0209
    case sessionDoesNotExist = 0x020A
    case invalidDuringLogin = 0x020B
    case targetError = 0x0300
    case serviceUnavailable = 0x0301
    case outOfResources = 0x0302

    /// Byte 36 of the Login Response: 0 success, 1 redirection, 2 initiator error, 3 target error.
    @inlinable public var statusClass: UInt8 { UInt8(truncatingIfNeeded: rawValue >> 8) }
    /// Byte 37 of the Login Response.
    @inlinable public var statusDetail: UInt8 { UInt8(truncatingIfNeeded: rawValue) }
}
