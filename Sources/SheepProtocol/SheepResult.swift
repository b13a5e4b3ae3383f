// Result codes (`rsp.result`, §5). Public codes plus the internal ones a client can still observe.

public struct SheepResult: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let success = SheepResult(rawValue: 0x00)
    public static let unknown = SheepResult(rawValue: 0x01)
    public static let noObj = SheepResult(rawValue: 0x02)
    public static let eio = SheepResult(rawValue: 0x03)
    public static let vdiExist = SheepResult(rawValue: 0x04)
    public static let invalidParms = SheepResult(rawValue: 0x05)
    public static let systemError = SheepResult(rawValue: 0x06)
    public static let vdiLocked = SheepResult(rawValue: 0x07)
    public static let noVDI = SheepResult(rawValue: 0x08)
    public static let noBaseVDI = SheepResult(rawValue: 0x09)
    public static let vdiRead = SheepResult(rawValue: 0x0A)
    public static let vdiWrite = SheepResult(rawValue: 0x0B)
    public static let baseVDIRead = SheepResult(rawValue: 0x0C)
    public static let baseVDIWrite = SheepResult(rawValue: 0x0D)
    public static let noTag = SheepResult(rawValue: 0x0E)
    public static let startup = SheepResult(rawValue: 0x0F)
    public static let vdiNotLocked = SheepResult(rawValue: 0x10)
    public static let shutdown = SheepResult(rawValue: 0x11)
    public static let noMem = SheepResult(rawValue: 0x12)
    public static let fullVDI = SheepResult(rawValue: 0x13)
    public static let verMismatch = SheepResult(rawValue: 0x14)
    public static let noSpace = SheepResult(rawValue: 0x15)
    public static let waitForFormat = SheepResult(rawValue: 0x16)
    public static let waitForJoin = SheepResult(rawValue: 0x17)
    public static let joinFailed = SheepResult(rawValue: 0x18)
    public static let halt = SheepResult(rawValue: 0x19)
    public static let readonly = SheepResult(rawValue: 0x1A)
    /// 0x1C in v0.9.x; v1.0+ uses `collectingClusterInfo` (0x95).
    public static let collectingClusterInfoV09 = SheepResult(rawValue: 0x1C)
    public static let inodeInvalidated = SheepResult(rawValue: 0x1D)
    // Internal codes that can surface to a client.
    public static let oldNodeVersion = SheepResult(rawValue: 0x81)
    public static let newNodeVersion = SheepResult(rawValue: 0x82)
    public static let networkError = SheepResult(rawValue: 0x86)
    public static let bufferSmall = SheepResult(rawValue: 0x88)
    public static let noSupport = SheepResult(rawValue: 0x8B)
    public static let nodeInRecovery = SheepResult(rawValue: 0x8C)
    public static let killed = SheepResult(rawValue: 0x8D)
    public static let again = SheepResult(rawValue: 0x8F)
    public static let staleObj = SheepResult(rawValue: 0x90)
    public static let notFound = SheepResult(rawValue: 0x93)
    public static let collectingClusterInfo = SheepResult(rawValue: 0x95)
    public static let gatewayMode = SheepResult(rawValue: 0x97)

    /// The `SD_RES_` suffix, e.g. "NO_OBJ".
    public var name: String {
        switch rawValue {
        case 0x00: return "SUCCESS"
        case 0x01: return "UNKNOWN"
        case 0x02: return "NO_OBJ"
        case 0x03: return "EIO"
        case 0x04: return "VDI_EXIST"
        case 0x05: return "INVALID_PARMS"
        case 0x06: return "SYSTEM_ERROR"
        case 0x07: return "VDI_LOCKED"
        case 0x08: return "NO_VDI"
        case 0x09: return "NO_BASE_VDI"
        case 0x0A: return "VDI_READ"
        case 0x0B: return "VDI_WRITE"
        case 0x0C: return "BASE_VDI_READ"
        case 0x0D: return "BASE_VDI_WRITE"
        case 0x0E: return "NO_TAG"
        case 0x0F: return "STARTUP"
        case 0x10: return "VDI_NOT_LOCKED"
        case 0x11: return "SHUTDOWN"
        case 0x12: return "NO_MEM"
        case 0x13: return "FULL_VDI"
        case 0x14: return "VER_MISMATCH"
        case 0x15: return "NO_SPACE"
        case 0x16: return "WAIT_FOR_FORMAT"
        case 0x17: return "WAIT_FOR_JOIN"
        case 0x18: return "JOIN_FAILED"
        case 0x19: return "HALT"
        case 0x1A: return "READONLY"
        case 0x1C: return "COLLECTING_CINFO"
        case 0x1D: return "INODE_INVALIDATED"
        case 0x81: return "OLD_NODE_VER"
        case 0x82: return "NEW_NODE_VER"
        case 0x86: return "NETWORK_ERROR"
        case 0x88: return "BUFFER_SMALL"
        case 0x8B: return "NO_SUPPORT"
        case 0x8C: return "NODE_IN_RECOVERY"
        case 0x8D: return "KILLED"
        case 0x8F: return "AGAIN"
        case 0x90: return "STALE_OBJ"
        case 0x93: return "NOT_FOUND"
        case 0x95: return "COLLECTING_CINFO"
        case 0x97: return "GATEWAY_MODE"
        default: return "0x" + String(rawValue, radix: 16, uppercase: true)
        }
    }

    /// Looks a code up by its `SD_RES_` name (case-insensitive, with or without the prefix) or a number
    /// (decimal or 0x-hex). Used by the test server's fault specification.
    public init?(name: String) {
        var key = name.uppercased()
        if key.hasPrefix("SD_RES_") { key.removeFirst(7) }
        if key.hasPrefix("0X"), let v = UInt32(key.dropFirst(2), radix: 16) { self.init(rawValue: v); return }
        if let v = UInt32(key) { self.init(rawValue: v); return }
        for raw in UInt32(0)...0xFF where SheepResult(rawValue: raw).name == key {
            self.init(rawValue: raw)
            return
        }
        return nil
    }

    /// Codes a client should retry with backoff rather than fail (§7.12 [rec]).
    public var isTransient: Bool {
        switch self {
        case .waitForJoin, .halt, .shutdown, .networkError, .killed, .again,
             .collectingClusterInfo, .collectingClusterInfoV09, .oldNodeVersion, .newNodeVersion,
             .nodeInRecovery:
            return true
        default:
            return false
        }
    }

    public var description: String { name }
}
