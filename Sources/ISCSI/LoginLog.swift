// The log lines for logins and sessions. An operator reading them asks who (initiator name and address),
// where (target) and why (which check refused it), so every line names all three. Pure, so the wording
// is unit-tested; the reactor decides when to write them (failures through a RateLimitedLog).

import Floor
import ISCSIWire
import SCSI
public enum LoginLog {
    /// Failed-login lines per core: up to this many per interval, then one summary with the count.
    public static let failureBurstLines = 5
    public static let failureIntervalSeconds: UInt64 = 10

    /// Why a login was refused, in the operator's terms.
    public static func category(_ status: UInt16) -> String {
        switch LoginStatus(rawValue: status) {
        case .authenticationFailure: return "CHAP"
        case .authorizationFailure: return "ACL"
        case .notFound, .targetRemoved: return "unknown target"
        case .targetError: return "target unavailable"
        case .serviceUnavailable: return "system offline"
        case .outOfResources: return "out of resources"
        case .sessionDoesNotExist: return "no such session"
        default: return "bad keys"
        }
    }

    static func who(initiatorName: String?, peer: String) -> String {
        let name = initiatorName.map { $0.isEmpty ? "?" : $0 } ?? "?"
        return "initiator \(name) from \(peer)"
    }

    /// "login failed (CHAP): initiator iqn.x from 10.0.0.2 to target iqn.y: status 0x0201: ..."
    public static func failure(status: UInt16, reason: String?, initiatorName: String?, peer: String,
                               targetName: String?) -> String {
        let code = String(status, radix: 16)
        let padded = String(repeating: "0", count: max(0, 4 - code.count)) + code
        let target = targetName.map { " to target \($0)" } ?? ""
        return "login failed (\(category(status))): \(who(initiatorName: initiatorName, peer: peer))\(target): "
            + "status 0x\(padded)\(reason.map { ": \($0)" } ?? "")"
    }

    public static func sessionStarted(initiatorName: String, peer: String, targetName: String?, tsih: UInt16) -> String {
        let what = targetName.map { "session started with target \($0)" } ?? "discovery session started"
        return "\(what): \(who(initiatorName: initiatorName, peer: peer)), TSIH \(tsih)"
    }

    public static func sessionEnded(initiatorName: String, peer: String, targetName: String?, reason: String) -> String {
        let what = targetName.map { "session with target \($0) ended" } ?? "discovery session ended"
        return "\(what): \(who(initiatorName: initiatorName, peer: peer)): \(reason)"
    }
}
