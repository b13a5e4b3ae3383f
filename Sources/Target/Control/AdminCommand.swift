// The request that ringtgtadm sends and the daemon executes, and its answer. It mirrors tgtadm's
// `struct tgtadm_req` plus the "key=value,..." text tgtadm appends, but as named optional fields: the
// daemon validates every field itself, because a request may come from any local client.

/// tgtadm's `--mode`. Raw values are tgt's long names; `parse` also takes tgt's short aliases.
public enum AdminMode: String, Codable, Sendable, CaseIterable {
    case system
    case target
    case logicalUnit = "logicalunit"
    case portal
    case lld
    case session
    case connection
    case account

    /// str_to_mode in tgtadm.c: "sys", "tgt", "lu", "pt", "sess", "conn" are accepted as well.
    public static func parse(_ text: String) -> AdminMode? {
        switch text {
        case "system", "sys": return .system
        case "target", "tgt": return .target
        case "logicalunit", "lu": return .logicalUnit
        case "portal", "pt": return .portal
        case "session", "sess": return .session
        case "connection", "conn": return .connection
        case "account": return .account
        case "lld": return .lld
        default: return nil
        }
    }
}

/// tgtadm's `--op`.
public enum AdminOperation: String, Codable, Sendable, CaseIterable {
    case new, delete, show, bind, unbind, update, stat, start, stop

    public static func parse(_ text: String) -> AdminOperation? { AdminOperation(rawValue: text) }
}

/// One admin request. Field names follow tgtadm's long options.
public struct AdminRequest: Codable, Equatable, Sendable {
    public var lld: String?
    public var mode: AdminMode
    public var op: AdminOperation
    public var tid: Int?
    public var sid: UInt64?
    public var cid: UInt32?
    public var lun: UInt64?
    public var name: String?
    public var value: String?
    public var backingStore: String?
    public var bstype: String?
    public var bsopts: String?
    public var bsoflags: String?
    public var blockSize: String?
    public var targetName: String?
    public var initiatorAddress: String?
    public var initiatorName: String?
    public var user: String?
    public var password: String?
    public var force: Bool
    /// `--params k=v,k=v` (tgt's targetOps / portalOps text).
    public var params: String?
    /// `--device-type`; nil means disk.
    public var deviceType: String?
    public var outgoing: Bool

    public init(mode: AdminMode, op: AdminOperation, lld: String? = "iscsi", tid: Int? = nil, sid: UInt64? = nil,
                cid: UInt32? = nil, lun: UInt64? = nil, name: String? = nil, value: String? = nil,
                backingStore: String? = nil, bstype: String? = nil, bsopts: String? = nil, bsoflags: String? = nil,
                blockSize: String? = nil, targetName: String? = nil, initiatorAddress: String? = nil,
                initiatorName: String? = nil, user: String? = nil, password: String? = nil, force: Bool = false,
                params: String? = nil, deviceType: String? = nil, outgoing: Bool = false) {
        self.lld = lld
        self.mode = mode
        self.op = op
        self.tid = tid
        self.sid = sid
        self.cid = cid
        self.lun = lun
        self.name = name
        self.value = value
        self.backingStore = backingStore
        self.bstype = bstype
        self.bsopts = bsopts
        self.bsoflags = bsoflags
        self.blockSize = blockSize
        self.targetName = targetName
        self.initiatorAddress = initiatorAddress
        self.initiatorName = initiatorName
        self.user = user
        self.password = password
        self.force = force
        self.params = params
        self.deviceType = deviceType
        self.outgoing = outgoing
    }
}

/// What ringtgtadm prints and the status it exits with.
public struct AdminResponse: Codable, Equatable, Sendable {
    public var exitCode: Int32
    public var stdout: String
    public var stderr: String

    public init(exitCode: Int32, stdout: String = "", stderr: String = "") {
        self.exitCode = exitCode
        self.stdout = stdout
        self.stderr = stderr
    }

    public static func ok(_ stdout: String = "") -> AdminResponse { AdminResponse(exitCode: AdminExitCode.success, stdout: stdout) }

    /// A daemon-side failure, printed the way tgtadm prints it: "<program>: <message>".
    public static func failure(_ error: AdminError) -> AdminResponse {
        AdminResponse(exitCode: AdminExitCode.daemonError, stderr: "\(AdminProgram.name): \(error)\n")
    }
}

public enum AdminProgram {
    /// Prefix of every error line (tgtadm prints "tgtadm: ").
    public static let name = "ringtgtadm"
}
