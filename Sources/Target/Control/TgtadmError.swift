// The error vocabulary of tgtadm (fujita/tgt usr/tgtadm_error.h and tgtadm_strerror in usr/tgtadm.c).
// ringtgtadm prints the same words so that scripts written for tgtadm keep matching them.

/// tgt's `enum tgtadm_errno`, with the same raw values so a log line can be compared with tgt's.
public enum TgtadmError: Int, Codable, Sendable, CaseIterable {
    case success = 0
    case unknownError
    case outOfMemory
    case noDriver
    case noTarget
    case noLUN
    case noSession
    case noConnection
    case noBinding
    case targetExists
    case lunExists
    case bindingExists
    case aclExists
    case aclMissing
    case userExists
    case noUser
    case tooManyUsers
    case invalidRequest
    case outgoingAccountExists
    case targetActive
    case lunActive
    case driverActive
    case unsupportedOperation
    case unknownParameter
    case preventRemoval

    /// tgtadm_strerror's wording, verbatim.
    public var message: String {
        switch self {
        case .success: return "success"
        case .unknownError: return "unknown error"
        case .outOfMemory: return "out of memory"
        case .noDriver: return "can't find the driver"
        case .noTarget: return "can't find the target"
        case .noLUN: return "can't find the logical unit"
        case .noSession: return "can't find the session"
        case .noConnection: return "can't find the connection"
        case .noBinding: return "can't find the binding"
        case .targetExists: return "this target already exists"
        case .bindingExists: return "this binding already exists"
        case .lunExists: return "this logical unit number already exists"
        case .aclExists: return "this access control rule already exists"
        case .aclMissing: return "this access control rule does not exist"
        case .userExists: return "this account already exists"
        case .noUser: return "can't find the account"
        case .tooManyUsers: return "too many accounts"
        case .invalidRequest: return "invalid request"
        case .outgoingAccountExists: return "this target already has an outgoing account"
        case .targetActive: return "this target is still active"
        case .lunActive: return "this logical unit is still active"
        case .driverActive: return "this driver is busy"
        case .unsupportedOperation: return "this operation isn't supported"
        case .unknownParameter: return "unknown parameter"
        case .preventRemoval: return "this device has Prevent Removal set"
        }
    }
}

/// Exit statuses tgtadm uses. Every daemon-side failure exits with EINVAL (ipc_mgmt_rsp returns EINVAL);
/// usage errors exit with EINVAL too, except an unknown --mode or --op, which exits with 1.
public enum AdminExitCode {
    public static let success: Int32 = 0
    public static let daemonError: Int32 = 22          // EINVAL
    public static let usageError: Int32 = 22           // EINVAL
    public static let unknownModeOrOperation: Int32 = 1
}

/// A failed admin request: tgt's error code, plus an optional detail that ringtgt adds after tgt's words
/// (for example why a backing store could not be opened). tgt gives no detail; its words come first so a
/// script matching tgt's message still matches.
public struct AdminError: Error, Equatable, Sendable, CustomStringConvertible {
    public var code: TgtadmError
    public var detail: String?

    public init(_ code: TgtadmError, _ detail: String? = nil) {
        self.code = code
        self.detail = detail
    }

    /// The text after the program name: "invalid request" or "invalid request: no such file".
    public var description: String {
        if let detail, !detail.isEmpty { return "\(code.message): \(detail)" }
        return code.message
    }
}
