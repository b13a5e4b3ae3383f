// iSCSI operational and security key negotiation, target side (RFC 7143 §6.2, §13).
// The target mostly answers. It originates an offer only for a key the initiator left out whose RFC default
// exceeds what the target allows (e.g. the admin lowered MaxBurstLength below 262144, or forbids
// HeaderDigest=None): then the default would bind us to something we cannot do. open-iscsi and libiscsi send
// every such key, so with them the login never needs the extra round trip; libiscsi re-sends its whole key
// set when a step does not transit, which would count as re-negotiation (RFC 7143 §6.2: Login reject).

import Floor
import ISCSIWire
import SCSI
public enum DigestKind: String, Sendable, Equatable, CaseIterable {
    case none = "None"
    case crc32c = "CRC32C"
}

public enum SessionType: String, Sendable, Equatable {
    case normal = "Normal"
    case discovery = "Discovery"
}

/// The login stages as carried in CSG/NSG (RFC 7143 §11.12.3). Value 2 is reserved.
public enum LoginStage: UInt8, Sendable, Equatable {
    case security = 0
    case operational = 1
    case fullFeature = 3
}

/// An admin key/value that cannot be used; names the key.
public enum KeyError: Error, Equatable, Sendable, CustomStringConvertible {
    case unknownKey(String)
    case invalidValue(key: String, value: String, reason: String)

    public var description: String {
        switch self {
        case .unknownKey(let k): return "unknown or unsupported iSCSI key \(k)"
        case .invalidValue(let k, let v, let r): return "invalid value \"\(v)\" for \(k): \(r)"
        }
    }
}

/// RFC 7143 §13 value ranges and defaults, named.
public enum ISCSILimits {
    public static let minDataSegmentBytes = 512
    public static let maxDataSegmentBytes = 16_777_215          // 2^24 - 1
    public static let defaultMaxRecvDataSegmentBytes = 8192      // when a side declares nothing
    public static let defaultMaxBurstBytes = 262_144
    public static let defaultFirstBurstBytes = 65_536
    public static let maxTime2WaitSeconds = 3600
    public static let defaultTime2WaitSeconds = 2
    public static let defaultTime2RetainSeconds = 20
    public static let maxOutstandingR2TLimit = 65_535
    public static let maxConnectionsLimit = 65_535
    /// During login every PDU's data segment is at most 8192 bytes (RFC 7143 §6.2, MaxRecvDataSegmentLength default).
    public static let loginDataSegmentBytes = 8192
    /// iSCSI names are at most 223 bytes (RFC 7143 §4.2.7.1).
    public static let maxNameBytes = 223
    /// Aliases (TargetAlias, InitiatorAlias) are at most 255 bytes (RFC 7143 §13.6/§13.7).
    public static let maxAliasBytes = 255
}

/// The target's offers and limits. Built by the lead from daemon config plus `TargetRuntime.params`.
public struct TargetKeyDefaults: Sendable, Equatable {
    /// Digests the target allows. The initiator's order decides among them (RFC 7143 §6.2.2: the responder
    /// picks the first value of the originator's list it supports); this order only matters when the admin
    /// lists them and for display.
    public var headerDigest: [DigestKind]
    public var dataDigest: [DigestKind]
    /// The most the target accepts in one PDU's data segment. 256 KiB: a whole default burst in one PDU, so a
    /// 256 KiB write needs one Data-Out; the registered buffer slots are sized for it.
    public var maxRecvDataSegmentLength: Int
    /// 256 KiB as tgt and LIO. Larger bursts save little (one R2T per 256 KiB) and each outstanding burst pins
    /// a registered buffer slot; libiscsi offers 262144 anyway, so a larger value would rarely apply.
    public var maxBurstLength: Int
    /// 64 KiB, the RFC default (tgt, LIO): unsolicited data the target must buffer before it sends an R2T.
    public var firstBurstLength: Int
    /// No: with InitialR2T=No the initiator sends the first burst without waiting for an R2T, saving a round
    /// trip per write. Negotiation is OR, so an initiator that wants Yes still gets Yes. (tgt and LIO say Yes.)
    public var initialR2T: Bool
    /// Yes: data in the SCSI Command PDU itself; AND, so either side can refuse.
    public var immediateData: Bool
    /// 1, as every initiator we serve offers; more would let a write run several R2T sequences at once.
    public var maxOutstandingR2T: Int
    /// 2 s, the RFC default: the initiator waits this long before reconnecting.
    public var defaultTime2Wait: Int
    /// 0 s: at ErrorRecoveryLevel 0 nothing of a lost connection is kept for reassignment, so promising
    /// the RFC default of 20 s would be false. Negotiation takes the minimum.
    public var defaultTime2Retain: Int
    /// 1: one connection per session (MC/S is not supported).
    public var maxConnections: Int
    public var targetAlias: String?

    public init(headerDigest: [DigestKind] = [.none, .crc32c], dataDigest: [DigestKind] = [.none, .crc32c],
                maxRecvDataSegmentLength: Int = 262_144, maxBurstLength: Int = 262_144,
                firstBurstLength: Int = 65_536, initialR2T: Bool = false, immediateData: Bool = true,
                maxOutstandingR2T: Int = 1, defaultTime2Wait: Int = 2, defaultTime2Retain: Int = 0,
                maxConnections: Int = 1, targetAlias: String? = nil) {
        self.headerDigest = headerDigest
        self.dataDigest = dataDigest
        self.maxRecvDataSegmentLength = maxRecvDataSegmentLength
        self.maxBurstLength = maxBurstLength
        self.firstBurstLength = firstBurstLength
        self.initialR2T = initialR2T
        self.immediateData = immediateData
        self.maxOutstandingR2T = maxOutstandingR2T
        self.defaultTime2Wait = defaultTime2Wait
        self.defaultTime2Retain = defaultTime2Retain
        self.maxConnections = maxConnections
        self.targetAlias = targetAlias
    }

    /// Applies admin `--name K --value V` pairs (key names compared case-insensitively) over the defaults.
    public static func from(params: [String: String]) throws(KeyError) -> TargetKeyDefaults {
        var d = TargetKeyDefaults()
        // Sorted so that the error for several bad keys is deterministic.
        for (rawKey, value) in params.sorted(by: { $0.key < $1.key }) {
            try d.apply(key: rawKey, value: value)
        }
        try d.validate()
        return d
    }

    /// Sets one admin key; `validate()` afterwards checks the relations between keys.
    public mutating func apply(key rawKey: String, value: String) throws(KeyError) {
        let v = value.trimmingSpaces()
        func bad(_ reason: String) -> KeyError { .invalidValue(key: rawKey, value: value, reason: reason) }
        func number(_ lo: Int, _ hi: Int) throws(KeyError) -> Int {
            guard let n = KeyValueSyntax.number(v) else { throw bad("not a number") }
            guard n >= lo && n <= hi else { throw bad("must be \(lo)...\(hi)") }
            return n
        }
        func boolean() throws(KeyError) -> Bool {
            switch v.lowercased() {
            case "yes": return true
            case "no": return false
            default: throw bad("must be Yes or No")
            }
        }
        func digests() throws(KeyError) -> [DigestKind] {
            var out: [DigestKind] = []
            for item in v.split(separator: ",", omittingEmptySubsequences: false) {
                let t = String(item).trimmingSpaces().lowercased()
                let kind: DigestKind
                switch t {
                case "none": kind = .none
                case "crc32c": kind = .crc32c
                default: throw bad("each item must be None or CRC32C")
                }
                if out.contains(kind) { throw bad("\(kind.rawValue) listed twice") }
                out.append(kind)
            }
            if out.isEmpty { throw bad("empty list") }
            return out
        }
        switch rawKey.lowercased() {
        case "headerdigest": headerDigest = try digests()
        case "datadigest": dataDigest = try digests()
        case "maxrecvdatasegmentlength":
            maxRecvDataSegmentLength = try number(ISCSILimits.minDataSegmentBytes, ISCSILimits.maxDataSegmentBytes)
        case "maxburstlength":
            maxBurstLength = try number(ISCSILimits.minDataSegmentBytes, ISCSILimits.maxDataSegmentBytes)
        case "firstburstlength":
            firstBurstLength = try number(ISCSILimits.minDataSegmentBytes, ISCSILimits.maxDataSegmentBytes)
        case "initialr2t": initialR2T = try boolean()
        case "immediatedata": immediateData = try boolean()
        case "maxoutstandingr2t": maxOutstandingR2T = try number(1, ISCSILimits.maxOutstandingR2TLimit)
        case "defaulttime2wait": defaultTime2Wait = try number(0, ISCSILimits.maxTime2WaitSeconds)
        case "defaulttime2retain": defaultTime2Retain = try number(0, ISCSILimits.maxTime2WaitSeconds)
        case "maxconnections":
            // One connection per session is all the runtime does.
            maxConnections = try number(1, 1)
        case "errorrecoverylevel":
            _ = try number(0, 0)   // accepted for tgt compatibility; only level 0 is implemented
        case "datapduinorder", "datasequenceinorder":
            guard try boolean() else { throw bad("only Yes is supported") }
        case "targetalias":
            guard v.utf8.count <= ISCSILimits.maxAliasBytes else { throw bad("longer than 255 bytes") }
            targetAlias = v.isEmpty ? nil : v
        default:
            throw .unknownKey(rawKey)
        }
    }

    /// Relations between keys, and that every RFC default an initiator may leave unnegotiated fits our limits.
    public func validate() throws(KeyError) {
        if firstBurstLength > maxBurstLength {
            throw .invalidValue(key: "FirstBurstLength", value: String(firstBurstLength),
                                reason: "exceeds MaxBurstLength \(maxBurstLength)")
        }
        if headerDigest.isEmpty || dataDigest.isEmpty {
            throw .invalidValue(key: headerDigest.isEmpty ? "HeaderDigest" : "DataDigest", value: "",
                                reason: "empty list")
        }
    }
}

/// Everything negotiated for one session (and its single connection).
public struct SessionParameters: Sendable, Equatable {
    public var sessionType: SessionType = .normal
    public var initiatorName: String = ""
    public var initiatorAlias: String?
    /// nil on a discovery session.
    public var targetName: String?
    public var targetAlias: String?
    public var targetPortalGroupTag: UInt16 = 1
    public var headerDigest: DigestKind = .none
    public var dataDigest: DigestKind = .none
    /// The most WE may send in one PDU's data segment (the initiator's declaration; 8192 if none).
    public var initiatorMaxRecvDataSegmentLength: Int = ISCSILimits.defaultMaxRecvDataSegmentBytes
    /// The most we accept in one PDU's data segment (our declaration; 8192 if we did not get to declare it).
    public var targetMaxRecvDataSegmentLength: Int = ISCSILimits.defaultMaxRecvDataSegmentBytes
    public var maxConnections: Int = 1
    public var initialR2T: Bool = true
    public var immediateData: Bool = true
    public var maxBurstLength: Int = ISCSILimits.defaultMaxBurstBytes
    public var firstBurstLength: Int = ISCSILimits.defaultFirstBurstBytes
    public var defaultTime2Wait: Int = ISCSILimits.defaultTime2WaitSeconds
    public var defaultTime2Retain: Int = ISCSILimits.defaultTime2RetainSeconds
    public var maxOutstandingR2T: Int = 1
    public var dataPDUInOrder: Bool = true
    public var dataSequenceInOrder: Bool = true
    public var errorRecoveryLevel: Int = 0

    public init() {}

    /// Unsolicited data (immediate + unsolicited Data-Out) allowed per command: 0 when neither is enabled.
    public var unsolicitedDataLimit: Int {
        if initialR2T && !immediateData { return 0 }
        return firstBurstLength
    }
}

/// A negotiation failure that ends the login (a Login reject with this status).
public struct NegotiationFailure: Error, Equatable, Sendable {
    public var statusClass: UInt8
    public var statusDetail: UInt8
    public var reason: String
}

extension NegotiationFailure {
    init(_ status: LoginStatus, reason: String) {
        self.init(statusClass: status.statusClass, statusDetail: status.statusDetail, reason: reason)
    }
}

/// Value syntax helpers (RFC 7143 §6.1: decimal or 0x-hex numbers; Yes/No booleans).
public enum KeyValueSyntax {
    /// Decimal or 0x-prefixed hex, no sign, no overflow; at most 2^63-1.
    static func number(_ s: String) -> Int? {
        var utf8 = Substring(s).utf8[...]
        var radix = 10
        if utf8.count > 2, utf8.first == UInt8(ascii: "0"),
           let x = utf8.dropFirst().first, x == UInt8(ascii: "x") || x == UInt8(ascii: "X") {
            radix = 16
            utf8 = utf8.dropFirst(2)
        }
        if utf8.isEmpty || utf8.count > 20 { return nil }
        var n = 0
        for c in utf8 {
            let d: Int
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = Int(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f") where radix == 16: d = Int(c - UInt8(ascii: "a")) + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F") where radix == 16: d = Int(c - UInt8(ascii: "A")) + 10
            default: return nil
            }
            let (m, o1) = n.multipliedReportingOverflow(by: radix)
            let (a, o2) = m.addingReportingOverflow(d)
            if o1 || o2 { return nil }
            n = a
        }
        return n
    }

    static func boolean(_ s: String) -> Bool? {
        switch s {
        case "Yes": return true
        case "No": return false
        default: return nil
        }
    }
}

extension String {
    func trimmingSpaces() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return String(s)
    }

    /// ASCII lowercase; iSCSI names compare case-insensitively (RFC 3722 stringprep folds case).
    var asciiLowercased: String {
        String(decoding: utf8.map { ($0 >= 65 && $0 <= 90) ? $0 + 32 : $0 }, as: UTF8.self)
    }
}

/// The answer to one key.
public enum KeyAnswer: Equatable, Sendable {
    case value(String)
    case reject
    case irrelevant
    case notUnderstood
    /// Declarative keys get no answer.
    case none

    var text: String? {
        switch self {
        case .value(let v): return v
        case .reject: return "Reject"
        case .irrelevant: return "Irrelevant"
        case .notUnderstood: return "NotUnderstood"
        case .none: return nil
        }
    }
}

/// The state of one login's key negotiation: what was offered so far, what it resolved to.
/// Used by `LoginStateMachine`; exposed for tests and for full-feature Text negotiation.
public struct KeyNegotiator: Sendable {
    public private(set) var params = SessionParameters()
    public let defaults: TargetKeyDefaults
    /// Keys already negotiated or declared in this login (RFC 7143 §6.2: at most once).
    private var seen: [String] = []
    /// Whether each digest key was offered (unoffered keys keep the default None, which the admin may forbid).
    private var headerDigestOffered = false
    private var dataDigestOffered = false
    private var firstBurstOffered: Int?
    /// Keys the target offered (see `targetOffers`) whose answer from the initiator is still due.
    private var pendingTargetOffers: [String] = []

    public init(defaults: TargetKeyDefaults) {
        self.defaults = defaults
        params.targetAlias = defaults.targetAlias
    }

    /// Records the target's own MaxRecvDataSegmentLength declaration (sent in a login response).
    public mutating func declaredTargetMaxRecvDataSegmentLength() {
        params.targetMaxRecvDataSegmentLength = defaults.maxRecvDataSegmentLength
    }

    func hasSeen(_ key: String) -> Bool { seen.contains(key) }

    /// The target has CHAP accounts: AuthMethod must come out as CHAP.
    var chapRequired = false
    /// The AuthMethod negotiated (nil until the initiator offered one we accept).
    private(set) var authMethod: String?

    mutating func setIdentity(sessionType: SessionType, initiatorName: String, initiatorAlias: String?,
                              targetName: String?, portalGroupTag: UInt16) {
        params.sessionType = sessionType
        params.initiatorName = initiatorName
        params.initiatorAlias = initiatorAlias
        params.targetName = targetName
        params.targetPortalGroupTag = portalGroupTag
    }

    /// Answers the keys of one complete login text (after C-bit reassembly) in `stage`.
    /// Identity keys (InitiatorName, TargetName, SessionType, InitiatorAlias) are consumed by the login
    /// state machine; here they only count towards the at-most-once rule and get no answer.
    /// Throws on re-negotiation of a key (Login reject, initiator error).
    public mutating func answer(_ pairs: [TextKeyValue], stage: LoginStage, sessionType: SessionType)
        throws(NegotiationFailure) -> [TextKeyValue] {
        var out: [TextKeyValue] = []
        var firstBurstSlot: Int?
        for pair in pairs {
            if let i = pendingTargetOffers.firstIndex(of: pair.key) {
                // The initiator's answer to our own offer: take it, answer nothing.
                pendingTargetOffers.remove(at: i)
                seen.append(pair.key)
                try takeAnswerToTargetOffer(pair)
                continue
            }
            if seen.contains(pair.key) {
                throw NegotiationFailure(.initiatorError,
                                         reason: "key \(pair.key) negotiated twice in one login")
            }
            seen.append(pair.key)
            if pair.key == "FirstBurstLength" {
                // Its answer depends on InitialR2T/ImmediateData, which may follow in the same text.
                firstBurstSlot = out.count
                out.append(TextKeyValue(pair.key, ""))
                answerFirstBurstOffer(pair.value)
                continue
            }
            let a = answerOne(pair.key, pair.value, stage: stage, sessionType: sessionType)
            if let t = a.text { out.append(TextKeyValue(pair.key, t)) }
        }
        if let slot = firstBurstSlot {
            out[slot].value = firstBurstAnswer(sessionType: sessionType, stage: stage)
        }
        return out
    }

    /// Offers for keys the initiator has not negotiated whose RFC default the target cannot accept. The login
    /// sends them instead of transiting; the initiator must answer them in its next request. Normal sessions only.
    public mutating func targetOffers() -> [TextKeyValue] {
        guard params.sessionType == .normal else { return [] }
        var out: [TextKeyValue] = []
        func offer(_ key: String, _ value: String) {
            if seen.contains(key) || pendingTargetOffers.contains(key) { return }
            pendingTargetOffers.append(key)
            seen.append(key)
            out.append(TextKeyValue(key, value))
        }
        if !defaults.headerDigest.contains(.none) {
            offer("HeaderDigest", defaults.headerDigest.map(\.rawValue).joined(separator: ","))
        }
        if !defaults.dataDigest.contains(.none) {
            offer("DataDigest", defaults.dataDigest.map(\.rawValue).joined(separator: ","))
        }
        if !defaults.immediateData && params.immediateData { offer("ImmediateData", "No") }
        if defaults.maxBurstLength < params.maxBurstLength { offer("MaxBurstLength", String(defaults.maxBurstLength)) }
        let firstLimit = min(defaults.firstBurstLength, defaults.maxBurstLength)
        if firstBurstOffered == nil && firstLimit < params.firstBurstLength && !(params.initialR2T && !params.immediateData) {
            offer("FirstBurstLength", String(firstLimit))
        }
        return out
    }

    /// Whether a target offer is still unanswered.
    public var awaitingAnswers: Bool { !pendingTargetOffers.isEmpty }

    private mutating func takeAnswerToTargetOffer(_ pair: TextKeyValue) throws(NegotiationFailure) {
        func fail(_ why: String) -> NegotiationFailure {
            NegotiationFailure(.initiatorError, reason: "answer \(pair.key)=\(pair.value) to the target's offer: \(why)")
        }
        switch pair.key {
        case "HeaderDigest", "DataDigest":
            let allowed = pair.key == "HeaderDigest" ? defaults.headerDigest : defaults.dataDigest
            guard let d = DigestKind(rawValue: pair.value), allowed.contains(d) else { throw fail("not one offered") }
            if pair.key == "HeaderDigest" { params.headerDigest = d; headerDigestOffered = true }
            else { params.dataDigest = d; dataDigestOffered = true }
        case "ImmediateData":
            // AND with our No can only be No.
            guard pair.value == "No" else { throw fail("must be No") }
            params.immediateData = false
        case "MaxBurstLength":
            guard let n = number(pair.value, ISCSILimits.minDataSegmentBytes, defaults.maxBurstLength) else {
                throw fail("must be 512...\(defaults.maxBurstLength)")
            }
            params.maxBurstLength = n
        case "FirstBurstLength":
            let limit = min(defaults.firstBurstLength, defaults.maxBurstLength)
            guard let n = number(pair.value, ISCSILimits.minDataSegmentBytes, limit) else {
                throw fail("must be 512...\(limit)")
            }
            params.firstBurstLength = n
        default:
            throw fail("not offered")
        }
    }

    /// Final relations once the login reaches full feature phase. Throws if a digest the admin forbids
    /// (typically None) is what the session would end up with, or a burst limit or ImmediateData above what
    /// the admin set: that happens only when the target could not offer its own value (the login went from
    /// the security stage straight to full feature phase, or the initiator's value for the key was rejected,
    /// which uses the key up), and a session must never run above the admin's limits.
    public mutating func finish() throws(NegotiationFailure) -> SessionParameters {
        if params.sessionType == .normal {
            if let fb = firstBurstOffered { params.firstBurstLength = min(fb, defaults.firstBurstLength) }
            params.firstBurstLength = min(params.firstBurstLength, params.maxBurstLength)
            func above(_ key: String, _ value: String, _ limit: String) -> NegotiationFailure {
                NegotiationFailure(.initiatorError, reason: "\(key) would be \(value), above the target's \(limit): "
                                       + "it must be negotiated in the operational stage")
            }
            if params.maxBurstLength > defaults.maxBurstLength {
                throw above("MaxBurstLength", String(params.maxBurstLength), String(defaults.maxBurstLength))
            }
            let firstLimit = min(defaults.firstBurstLength, defaults.maxBurstLength)
            let unsolicited = !params.initialR2T || params.immediateData
            if unsolicited && params.firstBurstLength > firstLimit {
                throw above("FirstBurstLength", String(params.firstBurstLength), String(firstLimit))
            }
            // Without unsolicited data FirstBurstLength is irrelevant (RFC 7143 §13.14); recorded within the limit.
            params.firstBurstLength = min(params.firstBurstLength, firstLimit)
            if params.immediateData && !defaults.immediateData { throw above("ImmediateData", "Yes", "No") }
        }
        if !defaults.headerDigest.contains(params.headerDigest) {
            throw NegotiationFailure(.initiatorError,
                                     reason: "HeaderDigest \(params.headerDigest.rawValue) not allowed by target"
                                         + (headerDigestOffered ? "" : " (key not offered)"))
        }
        if !defaults.dataDigest.contains(params.dataDigest) {
            throw NegotiationFailure(.initiatorError,
                                     reason: "DataDigest \(params.dataDigest.rawValue) not allowed by target"
                                         + (dataDigestOffered ? "" : " (key not offered)"))
        }
        return params
    }

    private mutating func answerFirstBurstOffer(_ value: String) {
        guard let n = KeyValueSyntax.number(value),
              n >= ISCSILimits.minDataSegmentBytes, n <= ISCSILimits.maxDataSegmentBytes else {
            firstBurstOffered = -1   // marks a bad value: answered Reject
            return
        }
        firstBurstOffered = n
    }

    private mutating func firstBurstAnswer(sessionType: SessionType, stage: LoginStage) -> String {
        if sessionType == .discovery || stage == .fullFeature { firstBurstOffered = nil; return "Irrelevant" }
        guard let n = firstBurstOffered, n > 0 else { firstBurstOffered = nil; return "Reject" }
        // RFC 7143 §13.14: irrelevant when InitialR2T=Yes and ImmediateData=No (no unsolicited data at all).
        if params.initialR2T && !params.immediateData { return "Irrelevant" }
        return String(min(n, defaults.firstBurstLength, params.maxBurstLength))
    }

    /// Keys that only make sense in a normal session (RFC 7143 §13: "Irrelevant when: SessionType=Discovery").
    private static let normalSessionOnly: Set<String> = [
        "MaxConnections", "InitialR2T", "ImmediateData", "MaxBurstLength", "FirstBurstLength",
        "MaxOutstandingR2T", "DataPDUInOrder", "DataSequenceInOrder", "TaskReporting",
    ]

    /// Keys that may only be negotiated during login (LO or IO); in full feature phase they are Irrelevant.
    private static let loginOnly: Set<String> = [
        "HeaderDigest", "DataDigest", "MaxConnections", "InitialR2T", "ImmediateData", "MaxBurstLength",
        "FirstBurstLength", "DefaultTime2Wait", "DefaultTime2Retain", "MaxOutstandingR2T", "DataPDUInOrder",
        "DataSequenceInOrder", "ErrorRecoveryLevel", "SessionType", "InitiatorName", "TargetName",
        "AuthMethod", "IFMarker", "OFMarker", "IFMarkInt", "OFMarkInt", "TaskReporting",
    ]

    private mutating func answerOne(_ key: String, _ value: String, stage: LoginStage,
                                    sessionType: SessionType) -> KeyAnswer {
        if stage == .fullFeature && KeyNegotiator.loginOnly.contains(key) { return .irrelevant }
        if sessionType == .discovery && KeyNegotiator.normalSessionOnly.contains(key) { return .irrelevant }
        switch key {
        case "HeaderDigest":
            headerDigestOffered = true
            guard let d = pickDigest(value, allowed: defaults.headerDigest) else { return .reject }
            params.headerDigest = d
            return .value(d.rawValue)
        case "DataDigest":
            dataDigestOffered = true
            guard let d = pickDigest(value, allowed: defaults.dataDigest) else { return .reject }
            params.dataDigest = d
            return .value(d.rawValue)
        case "MaxConnections":
            return numerical(value, 1...ISCSILimits.maxConnectionsLimit, ours: defaults.maxConnections, min, \.maxConnections)
        case "InitialR2T":
            return boolean(value, ours: defaults.initialR2T, { $0 || $1 }, \.initialR2T)
        case "ImmediateData":
            return boolean(value, ours: defaults.immediateData, { $0 && $1 }, \.immediateData)
        case "MaxRecvDataSegmentLength":
            // Declarative: the initiator's own receive limit, which bounds what we send. No answer.
            guard let n = number(value, ISCSILimits.minDataSegmentBytes, ISCSILimits.maxDataSegmentBytes) else {
                return .reject
            }
            params.initiatorMaxRecvDataSegmentLength = n
            return .none
        case "MaxBurstLength":
            return numerical(value, ISCSILimits.minDataSegmentBytes...ISCSILimits.maxDataSegmentBytes,
                             ours: defaults.maxBurstLength, min, \.maxBurstLength)
        case "DefaultTime2Wait":
            return numerical(value, 0...ISCSILimits.maxTime2WaitSeconds, ours: defaults.defaultTime2Wait, max,
                             \.defaultTime2Wait)
        case "DefaultTime2Retain":
            return numerical(value, 0...ISCSILimits.maxTime2WaitSeconds, ours: defaults.defaultTime2Retain, min,
                             \.defaultTime2Retain)
        case "MaxOutstandingR2T":
            return numerical(value, 1...ISCSILimits.maxOutstandingR2TLimit, ours: defaults.maxOutstandingR2T, min,
                             \.maxOutstandingR2T)
        case "DataPDUInOrder":
            // OR with our Yes: the result is always Yes; Data PDUs must arrive in offset order.
            guard KeyValueSyntax.boolean(value) != nil else { return .reject }
            params.dataPDUInOrder = true
            return .value("Yes")
        case "DataSequenceInOrder":
            guard KeyValueSyntax.boolean(value) != nil else { return .reject }
            params.dataSequenceInOrder = true
            return .value("Yes")
        case "ErrorRecoveryLevel":
            guard number(value, 0, 2) != nil else { return .reject }
            params.errorRecoveryLevel = 0   // min with our 0
            return .value("0")
        case "AuthMethod":
            guard stage == .security else { return .irrelevant }
            // List: CHAP when the target has incoming accounts (then None is not acceptable), else None.
            let wanted = chapRequired ? "CHAP" : "None"
            for item in value.split(separator: ",", omittingEmptySubsequences: false) where item == wanted {
                authMethod = wanted
                return .value(wanted)
            }
            return .reject
        case "IFMarker", "OFMarker":
            // RFC 7143 §13.25 (obsoleted RFC 3720 keys): SHOULD answer Reject, MAY answer No, MUST NOT answer
            // NotUnderstood. "No" is what RFC 3720 initiators (open-iscsi and libiscsi send IFMarker=No) expect.
            guard KeyValueSyntax.boolean(value) != nil else { return .reject }
            return .value("No")
        case "IFMarkInt", "OFMarkInt":
            // RFC 7143 §13.25: these MUST be answered Reject.
            return .reject
        case "TaskReporting":
            // RFC 7143 §13.23: list of RFC3720, ResponseFence, FastAbort; we implement the RFC 3720 semantics.
            for item in value.split(separator: ",", omittingEmptySubsequences: false) where item == "RFC3720" {
                return .value("RFC3720")
            }
            return .reject
        case "SendTargets":
            // Full feature phase only (RFC 7143 §13.3); the Text path handles it there.
            return .irrelevant
        case "TargetAlias", "TargetAddress", "TargetPortalGroupTag":
            // Sent by targets only; an initiator declaring them changes nothing.
            return .irrelevant
        case "InitiatorName", "SessionType", "InitiatorAlias":
            // Declarative identity keys, taken by the login state machine.
            return .none
        case "TargetName":
            // Needed by a normal session (taken by the login state machine); meaningless on discovery.
            return sessionType == .discovery ? .irrelevant : .none
        default:
            // Unknown keys, vendor keys (X-..., X#...), and security keys of methods we lack (CHAP_A ...).
            return .notUnderstood
        }
    }

    /// A numerical key (RFC 7143 §6.2.2): the offer, if in `range`, is met with our value by the key's function
    /// (`min` or `max`); the result is the answer and the session's value.
    private mutating func numerical(_ value: String, _ range: ClosedRange<Int>, ours: Int, _ function: (Int, Int) -> Int,
                                    _ field: WritableKeyPath<SessionParameters, Int>) -> KeyAnswer {
        guard let n = number(value, range.lowerBound, range.upperBound) else { return .reject }
        params[keyPath: field] = function(n, ours)
        return .value(String(params[keyPath: field]))
    }

    /// A Boolean key (RFC 7143 §6.2.2): the offer is met with our value by the key's function (OR or AND).
    private mutating func boolean(_ value: String, ours: Bool, _ function: (Bool, Bool) -> Bool,
                                  _ field: WritableKeyPath<SessionParameters, Bool>) -> KeyAnswer {
        guard let b = KeyValueSyntax.boolean(value) else { return .reject }
        params[keyPath: field] = function(b, ours)
        return .value(params[keyPath: field] ? "Yes" : "No")
    }

    private func number(_ value: String, _ lo: Int, _ hi: Int) -> Int? {
        guard let n = KeyValueSyntax.number(value), n >= lo, n <= hi else { return nil }
        return n
    }

    /// First item of the originator's list that we allow (RFC 7143 §6.2.2); unknown items are skipped.
    private func pickDigest(_ value: String, allowed: [DigestKind]) -> DigestKind? {
        for item in value.split(separator: ",", omittingEmptySubsequences: false) {
            if let d = DigestKind(rawValue: String(item)), allowed.contains(d) { return d }
        }
        return nil
    }
}
