// The SCSI values the shared record carries between the gateways of one sheepdog VDI (docs/CLUSTER-STATE.md):
// persistent reservations (SPC-4 §5.9), the identity of an I_T nexus as they see it, ALUA access states
// (SPC-4 §5.15), and the bounds on sharing them. They sit here, below SCSI, so that the store can encode and
// decode a record without knowing the LU: SCSI's LUNState uses them and adopts the records
// (SharedSCSIStateHolder); the commands that change them stay in SCSI/.

/// SPC-4 table 307 (ASYMMETRIC ACCESS STATE), with the names sg_rtpg and multipath print.
import Floor
import URing
public enum ALUAState: UInt8, Sendable, CaseIterable {
    case activeOptimized = 0x0
    case activeNonOptimized = 0x1
    case standby = 0x2
    case unavailable = 0x3
    case offline = 0xE
    case transitioning = 0xF

    public var name: String {
        switch self {
        case .activeOptimized: return "active/optimized"
        case .activeNonOptimized: return "active/non-optimized"
        case .standby: return "standby"
        case .unavailable: return "unavailable"
        case .offline: return "offline"
        case .transitioning: return "transitioning"
        }
    }

    /// The names above, LIO's `alua_access_state` numbers (0, 1, 2, 3, 14, 15) and the short forms
    /// multipath's and LIO's users write (ao, ano, an).
    public static func parse(_ text: String) -> ALUAState? {
        let t = text.lowercased()
        if let n = UInt8(t) { return ALUAState(rawValue: n) }
        switch t {
        case "ao", "active_optimized", "optimized": return .activeOptimized
        case "ano", "an", "active/non_optimized", "active/nonoptimized", "active_non_optimized", "non-optimized":
            return .activeNonOptimized
        default: return allCases.first { $0.name == t }
        }
    }

    public var isActive: Bool { self == .activeOptimized || self == .activeNonOptimized }
}

/// Identity of an I_T nexus as persistent reservations see it: initiator port (name + ISID) and the
/// relative target port. It survives the session, unlike `Nexus.id`.
public struct PortIdentity: Equatable {
    public let initiatorName: String
    public let isid: UInt64
    public let relativeTargetPortID: UInt16

    /// Initiator names compare without case (RFC 3722), so the name is kept lowercased.
    public init(initiatorName: String, isid: UInt64, relativeTargetPortID: UInt16) {
        self.initiatorName = initiatorName.lowercased()
        self.isid = isid
        self.relativeTargetPortID = relativeTargetPortID
    }
}

/// Persistent reservation type codes (SPC-4 table 169).
public enum PRType {
    public static let writeExclusive: UInt8 = 1
    public static let exclusiveAccess: UInt8 = 3
    public static let writeExclusiveRegistrantsOnly: UInt8 = 5
    public static let exclusiveAccessRegistrantsOnly: UInt8 = 6
    public static let writeExclusiveAllRegistrants: UInt8 = 7
    public static let exclusiveAccessAllRegistrants: UInt8 = 8

    public static func isValid(_ t: UInt8) -> Bool { t == 1 || t == 3 || (t >= 5 && t <= 8) }
    public static func isAllRegistrants(_ t: UInt8) -> Bool { t == 7 || t == 8 }
    public static func isRegistrantsOnly(_ t: UInt8) -> Bool { t == 5 || t == 6 }
    public static func isExclusiveAccess(_ t: UInt8) -> Bool { t == 3 || t == 6 || t == 8 }
}

public struct PRRegistration {
    public let port: PortIdentity
    public var key: UInt64

    public init(port: PortIdentity, key: UInt64) {
        self.port = port
        self.key = key
    }
}

/// Persistent reservation state (SPC-4 §5.9).
public struct PersistentReservationState {
    /// Bound on registrations per LU; a REGISTER beyond it gets INSUFFICIENT REGISTRATION RESOURCES.
    public static let maxRegistrations = 64

    public var generation: UInt32 = 0
    public var registrations: [PRRegistration] = []
    /// The reservation, if any. `holder` is nil for all-registrants types (every registrant holds it).
    public var reserved = false
    public var type: UInt8 = 0
    public var holder: PortIdentity? = nil
    /// Activate persist through power loss: the last valid APTPL bit (SPC-4 §5.9.4). Only a multipath sheep LU,
    /// whose state lives in sheep, ever sets it (Reservations.swift refuses APTPL=1 elsewhere).
    public var aptpl = false

    public init() {}

    public func registrationIndex(_ p: PortIdentity) -> Int? { registrations.firstIndex { $0.port == p } }

    public func isHolder(_ p: PortIdentity) -> Bool {
        guard reserved else { return false }
        if PRType.isAllRegistrants(type) { return registrationIndex(p) != nil }
        return holder == p
    }

    /// The reservation key READ RESERVATION reports: zero for all-registrants types (SPC-4 §6.15.3).
    public var reservationKey: UInt64 {
        guard reserved else { return 0 }
        if PRType.isAllRegistrants(type) { return 0 }
        if let h = holder, let i = registrationIndex(h) { return registrations[i].key }
        return 0
    }
}

public enum SharedStateLimits {
    /// A reservation command whose version other gateways' versions beat this many times in a row is answered
    /// BUSY: the initiator retries it later rather than the target looping on a contended record.
    public static let publishAttemptsMax = 4
    /// Changes made outside a command (SharedStateChange) waiting for the home core, per VDI. A reset takes
    /// the place of every change queued before it, so only SPC-2 releases of distinct nexuses fill this; beyond
    /// it the oldest is dropped (with a warning): only one of them can be the record's holder.
    public static let changesQueuedMax = 16
    /// Logout and task management responses one connection holds until its shared state changes are in
    /// sheep; beyond, a response goes at once (the change is still appended).
    public static let heldResponsesMax = 4
    /// Loop ticks (seconds) a command waits for the record to be read, or a Logout or TMF Response for its
    /// change to be appended, before it is answered `.unavailable` (a request held by a channel that lost its
    /// sheep node would otherwise hold it until the node returns, up to SheepChannelLimits.giveUpSeconds).
    /// TEST UNIT READY then answers from what the gateway knows; a held response goes, its change stays queued.
    public static let syncWaitSecondsMax: UInt64 = 3
}

extension SharedStateChange {
    /// Queues `change` behind `queue`, merging what one version says anyway: a reset releases every SPC-2
    /// reservation and one reset is enough for the others to report it; a release already queued is not
    /// queued twice; a group's newer state or a newer publication of this gateway's groups replaces the
    /// queued one (a publication carries what the one it replaces would have removed). Returns false when
    /// the oldest release was dropped to stay within `changesQueuedMax`.
    @discardableResult
    public static func enqueue(_ change: SharedStateChange, into queue: inout [SharedStateChange]) -> Bool {
        var change = change
        switch change {
        case .reset:
            queue.removeAll { if case .releaseSPC2 = $0 { return true } else { return $0 == .reset } }
        case .releaseSPC2, .powerOn:
            if queue.contains(change) { return true }
        case .portGroups(.state(let id, _)):
            queue.removeAll { if case .portGroups(.state(id, _)) = $0 { return true } else { return false } }
        case .portGroups(.publish(let previous, let groups)):
            var gone = previous
            for case .portGroups(.publish(let p, _)) in queue { gone += p.filter { !gone.contains($0) } }
            change = .portGroups(.publish(previous: gone, groups: groups))
            queue.removeAll { if case .portGroups(.publish) = $0 { return true } else { return false } }
        }
        var kept = true
        if queue.count >= SharedStateLimits.changesQueuedMax {
            // The oldest SPC-2 release goes (only one of them can be the record's holder); a reset or a port
            // group change is never dropped, and at most one publication and one state per group are queued.
            if let i = queue.firstIndex(where: { if case .releaseSPC2 = $0 { return true } else { return false } }) {
                queue.remove(at: i)
                kept = false
            }
        }
        queue.append(change)
        return kept
    }
}
