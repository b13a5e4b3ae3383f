// The login phase of one connection, target side (RFC 7143 §6.3, §11.12, §11.13). Pure: it takes a decoded
// Login Request and its data segment and returns the Login Response to send and what the connection does
// next. Timeouts, TSIH allocation, session reinstatement and the PDU bytes are the connection runtime's.
//
// TSIH: responses echo the request's TSIH. On `.respondAndEnterFullFeature` of a new session (request TSIH
// 0) the runtime allocates the TSIH and patches it into the final response's header before sending it.

/// A decoded Login Request BHS (RFC 7143 §11.12).
import Floor
import ISCSIWire
import SCSI
public struct LoginRequest: Sendable, Equatable {
    public var transit: Bool
    public var continueFlag: Bool
    public var csg: UInt8
    public var nsg: UInt8
    public var versionMax: UInt8
    public var versionMin: UInt8
    /// 48 bits.
    public var isid: UInt64
    public var tsih: UInt16
    public var itt: UInt32
    public var cid: UInt16
    public var cmdSN: UInt32
    public var expStatSN: UInt32

    public init(transit: Bool, continueFlag: Bool = false, csg: UInt8, nsg: UInt8, versionMax: UInt8 = 0,
                versionMin: UInt8 = 0, isid: UInt64, tsih: UInt16 = 0, itt: UInt32, cid: UInt16 = 0,
                cmdSN: UInt32 = 0, expStatSN: UInt32 = 0) {
        self.transit = transit
        self.continueFlag = continueFlag
        self.csg = csg
        self.nsg = nsg
        self.versionMax = versionMax
        self.versionMin = versionMin
        self.isid = isid & 0xFFFF_FFFF_FFFF
        self.tsih = tsih
        self.itt = itt
        self.cid = cid
        self.cmdSN = cmdSN
        self.expStatSN = expStatSN
    }
}

/// The Login Response fields this layer decides (RFC 7143 §11.13). StatSN, ExpCmdSN and MaxCmdSN are
/// the runtime's; `isid`, `tsih` and `itt` echo the request.
public struct LoginResponse: Sendable, Equatable {
    public var transit: Bool
    public var continueFlag: Bool
    public var csg: UInt8
    public var nsg: UInt8
    public var versionMax: UInt8 = 0
    public var versionActive: UInt8 = 0
    public var statusClass: UInt8
    public var statusDetail: UInt8
    public var isid: UInt64
    public var tsih: UInt16
    public var itt: UInt32
    /// The data segment (key=value\0...), at most `ISCSILimits.loginDataSegmentBytes`.
    public var text: [UInt8]

    public var status: UInt16 { UInt16(statusClass) << 8 | UInt16(statusDetail) }
}

public enum LoginOutcome: Sendable, Equatable {
    /// Send the response and wait for the next Login Request.
    case respondAndContinue
    /// Send the response (TSIH patched for a new session), then the connection is in full feature phase.
    case respondAndEnterFullFeature(SessionParameters)
    /// Send the response (a Login reject), then close the connection.
    case respondAndClose
}

/// What the login needs from the rest of the target. Called only during login, never on the I/O path.
public struct LoginEnvironment {
    /// The target named by TargetName (case-insensitive), or nil if there is none.
    public var targetLookup: (String) -> TargetRuntime?
    /// ACL check for this connection's initiator (the runtime's closure knows the peer address).
    public var isAllowed: (TargetRuntime, _ initiatorName: String) -> Bool
    /// The key offers and limits for the target (nil on a discovery session).
    public var defaults: (TargetRuntime?) -> TargetKeyDefaults
    /// Returned as TargetPortalGroupTag.
    public var portalGroupTag: UInt16
    /// The system State is offline (`--op update --mode sys --name State`): every login is refused.
    public var systemOffline: Bool
    /// For a login with a non-zero TSIH (adding or reinstating a connection): whether that session exists for
    /// this initiator and ISID. If it does not, the login is rejected with 0x020A (Session does not exist).
    public var sessionExists: (_ tsih: UInt16, _ isid: UInt64, _ initiatorName: String) -> Bool
    /// The accounts a discovery session authenticates with (tgt's global target); none: discovery is open.
    public var discoveryCHAP: CHAPCredentials

    public init(targetLookup: @escaping (String) -> TargetRuntime?,
                isAllowed: @escaping (TargetRuntime, String) -> Bool,
                defaults: @escaping (TargetRuntime?) -> TargetKeyDefaults,
                portalGroupTag: UInt16,
                sessionExists: @escaping (UInt16, UInt64, String) -> Bool = { _, _, _ in false },
                systemOffline: Bool = false,
                discoveryCHAP: CHAPCredentials = CHAPCredentials()) {
        self.targetLookup = targetLookup
        self.isAllowed = isAllowed
        self.defaults = defaults
        self.portalGroupTag = portalGroupTag
        self.sessionExists = sessionExists
        self.systemOffline = systemOffline
        self.discoveryCHAP = discoveryCHAP
    }
}

/// Login phase of one connection.
///
/// States:
/// - `awaitingFirst`: nothing received yet; the first complete text names the initiator, target and session type.
/// - `negotiating(stage)`: in the security or operational stage; requests must carry this CSG.
/// - `done`: full feature phase reached or login rejected; further login PDUs are refused.
public struct LoginStateMachine {
    /// Bound on a key text reassembled from C-bit PDUs. RFC 7143 §6.1 requires at least 8192; 64 KiB leaves
    /// room for long CHAP-style values without letting a client grow memory without end.
    public static let maxLoginTextBytes = 65_536
    /// Bound on the text we return in one login step (split into 8192-byte PDUs with the C bit).
    public static let maxResponseTextBytes = 65_536

    private enum State: Equatable {
        case awaitingFirst
        case negotiating(LoginStage)
        case done
    }

    private var state: State = .awaitingFirst
    private var firstIsid: UInt64 = 0
    private var firstTsih: UInt16 = 0
    private var firstCid: UInt16 = 0
    private var requestText: [UInt8] = []
    private var responseText: [UInt8] = []
    private var responseOffset = 0
    private var negotiator: KeyNegotiator?
    private var declaredMaxRecv = false
    /// CHAP with the target's accounts; nil when the target requires no authentication.
    private var chap: CHAPExchange?
    /// Test hook: the random bytes a CHAP challenge is made of.
    public var chapRandom: (() -> [UInt8])?

    public private(set) var target: TargetRuntime?
    public private(set) var sessionType: SessionType = .normal
    public private(set) var initiatorName: String?
    public private(set) var initiatorAlias: String?
    /// Why the last Login reject was sent, for the runtime's log.
    public private(set) var failureReason: String?
    /// The ISID/TSIH/CID of the first request (the runtime uses them for session lookup and reinstatement).
    public var isid: UInt64 { firstIsid }
    public var tsih: UInt16 { firstTsih }
    public var cid: UInt16 { firstCid }
    /// Values negotiated so far.
    public var parameters: SessionParameters? { negotiator?.params }
    /// The account the initiator proved it knows; nil when the login used no authentication.
    public var chapAccount: CHAPAccount? { chap?.authenticatedAccount }
    /// The next text may carry the CHAP response (the challenge is out, no response checked yet).
    public var chapAwaitingResponse: Bool { chap?.state == .challenged && chap?.attemptedUser == nil }
    /// The CHAP_N of the response that was checked, right or wrong.
    public var chapAttemptedUser: String? { chap?.attemptedUser }

    public init() {}

    public mutating func receive(_ req: LoginRequest, data: UnsafeRawBufferPointer,
                                 env: LoginEnvironment) -> (LoginResponse, LoginOutcome) {
        switch state {
        case .done:
            return reject(req, .initiatorError, "login request after the login phase ended")
        case .awaitingFirst:
            firstIsid = req.isid
            firstTsih = req.tsih
            firstCid = req.cid
            // We speak version 0 only (RFC 7143 §11.12.4).
            if req.versionMin > 0 {
                return reject(req, .unsupportedVersion, "version-min \(req.versionMin) > 0")
            }
        case .negotiating:
            if req.isid != firstIsid || req.tsih != firstTsih || req.cid != firstCid {
                return reject(req, .initiatorError, "ISID, TSIH or CID changed during login")
            }
        }
        if req.transit && req.continueFlag {
            return reject(req, .initiatorError, "T and C both set")
        }
        guard let csg = LoginStage(rawValue: req.csg), csg != .fullFeature else {
            return reject(req, .initiatorError, "CSG \(req.csg) is not a login stage")
        }
        var nsg: LoginStage?
        if req.transit {
            guard let n = LoginStage(rawValue: req.nsg), n.rawValue > csg.rawValue else {
                return reject(req, .initiatorError, "transit from stage \(req.csg) to \(req.nsg)")
            }
            nsg = n
        }
        if case .negotiating(let current) = state, current != csg {
            return reject(req, .initiatorError, "CSG \(req.csg) but the login is in stage \(current.rawValue)")
        }

        // Target-side continuation: the initiator fetches the rest of our text with empty requests.
        if responseOffset < responseText.count {
            if data.count != 0 || req.continueFlag {
                return reject(req, .initiatorError, "text sent while the target's response is incomplete")
            }
            return nextChunk(req, csg: csg, nsg: nsg, freshText: false)
        }

        // Initiator-side continuation: reassemble the text across C-bit PDUs.
        if requestText.count + data.count > LoginStateMachine.maxLoginTextBytes {
            return reject(req, .initiatorError, "login text exceeds \(LoginStateMachine.maxLoginTextBytes) bytes")
        }
        requestText.append(contentsOf: data)
        if state == .awaitingFirst { state = .negotiating(csg) }
        if req.continueFlag {
            let r = LoginResponse(transit: false, continueFlag: false, csg: csg.rawValue, nsg: 0,
                                  statusClass: LoginStatus.success.statusClass, statusDetail: LoginStatus.success.statusDetail, isid: req.isid, tsih: req.tsih,
                                  itt: req.itt, text: [])
            return (r, .respondAndContinue)
        }
        let text = requestText
        requestText = []

        let pairs: [TextKeyValue]
        do { pairs = try TextKeys.parse(text) } catch { return reject(req, .initiatorError, error.description) }

        var out: [UInt8] = []
        let isFirstText = negotiator == nil
        if isFirstText {
            if let failure = takeIdentity(pairs, req: req, env: env) { return failure }
            if sessionType == .normal {
                // RFC 7143 §13.9: returned in the response to the first request with C=0 naming a target.
                TextKeys.append("TargetPortalGroupTag", String(env.portalGroupTag), to: &out)
                if let alias = negotiator?.params.targetAlias {
                    TextKeys.append("TargetAlias", alias, to: &out)
                }
            }
        } else {
            for p in pairs where p.key == "InitiatorName" || p.key == "TargetName" || p.key == "SessionType" {
                if !(negotiator?.hasSeen(p.key) ?? false) {
                    return reject(req, .initiatorError, "\(p.key) must be in the first login request")
                }
            }
        }
        guard var neg = negotiator else { return reject(req, .targetError, "no negotiator") }
        // With CHAP accounts on the target, nothing past the security stage happens before the initiator
        // has authenticated (RFC 7143 §12: the target must not skip authentication it requires).
        if let c = chap, c.state != .done, csg != .security {
            return reject(req, .authenticationFailure, "target requires CHAP; login skipped the security stage")
        }
        // CHAP keys go to the CHAP exchange once AuthMethod=CHAP was agreed; otherwise the negotiator answers
        // them NotUnderstood as any key of a method we did not pick.
        var chapKeys: [String: String] = [:]
        var negotiated = pairs
        let chapActive = chap != nil && csg == .security
        if chapActive {
            negotiated = []
            for p in pairs {
                if CHAPExchange.keys.contains(p.key) {
                    if chapKeys[p.key] != nil { return reject(req, .initiatorError, "\(p.key) twice in one text") }
                    chapKeys[p.key] = p.value
                } else {
                    negotiated.append(p)
                }
            }
        }
        do {
            let answers = try neg.answer(negotiated, stage: csg, sessionType: sessionType)
            // A key appears once per text. An initiator that sends TargetPortalGroupTag or TargetAlias (keys
            // only targets send, answered Irrelevant) in its first request gets the declaration above alone.
            for a in answers where !(isFirstText && TextKeys.containsKey(a.key, in: out)) {
                TextKeys.append(a.key, a.value, to: &out)
            }
        } catch {
            negotiator = neg
            return reject(req, .initiatorError, error.reason)
        }
        if chapActive {
            if neg.hasSeen("AuthMethod") && neg.authMethod != "CHAP" {
                negotiator = neg
                return reject(req, .authenticationFailure, "target requires CHAP; the initiator did not offer it")
            }
            if !chapKeys.isEmpty && neg.authMethod != "CHAP" {
                negotiator = neg
                return reject(req, .initiatorError, "CHAP keys before AuthMethod=CHAP was agreed")
            }
            do {
                for a in try chap!.receive(chapKeys) { TextKeys.append(a.key, a.value, to: &out) }
            } catch {
                negotiator = neg
                return reject(req, error.authentication ? .authenticationFailure : .initiatorError, error.reason)
            }
        }
        if let alias = pairs.first(where: { $0.key == "InitiatorAlias" })?.value { initiatorAlias = alias }
        // Not in a response that already answers the initiator's MaxRecvDataSegmentLength (a Reject): the key
        // must appear once per text. The declaration then goes in a later response, or, if this one ends the
        // login, never, and the RFC default 8192 governs what we receive.
        if csg == .operational && !declaredMaxRecv
            && !TextKeys.containsKey("MaxRecvDataSegmentLength", in: out) {
            // Declarative: our receive limit; the initiator may send PDUs up to it after login.
            TextKeys.append("MaxRecvDataSegmentLength", String(neg.defaults.maxRecvDataSegmentLength), to: &out)
            neg.declaredTargetMaxRecvDataSegmentLength()
            declaredMaxRecv = true
        }
        negotiator = neg
        if out.count > LoginStateMachine.maxResponseTextBytes {
            return reject(req, .outOfResources, "login response text too long")
        }
        responseText = out
        responseOffset = 0
        return nextChunk(req, csg: csg, nsg: nsg, freshText: true)
    }

    /// Sends the next ≤8192-byte piece of `responseText`; the last piece carries the transition.
    /// `freshText`: this step processed a new text from the initiator (not an empty fetch of our continuation).
    private mutating func nextChunk(_ req: LoginRequest, csg: LoginStage, nsg: LoginStage?,
                                    freshText: Bool) -> (LoginResponse, LoginOutcome) {
        let remaining = responseText.count - responseOffset
        let n = min(remaining, ISCSILimits.loginDataSegmentBytes)
        let chunk = Array(responseText[responseOffset..<(responseOffset + n)])
        responseOffset += n
        var r = LoginResponse(transit: false, continueFlag: false, csg: csg.rawValue, nsg: 0,
                              statusClass: LoginStatus.success.statusClass, statusDetail: LoginStatus.success.statusDetail, isid: req.isid, tsih: req.tsih,
                              itt: req.itt, text: chunk)
        if responseOffset < responseText.count {
            // More to come: C=1 and T=0 (RFC 7143 §11.13.2); the initiator answers with an empty request.
            r.continueFlag = true
            return (r, .respondAndContinue)
        }
        responseText = []
        responseOffset = 0
        guard let next = nsg else { return (r, .respondAndContinue) }
        if next == .fullFeature, csg == .operational, var neg = negotiator {
            if neg.awaitingAnswers {
                // Our offers went out in the continuation just finished: the initiator answers next.
                if !freshText { return (r, .respondAndContinue) }
                return reject(req, .initiatorError, "initiator did not answer the target's key offers")
            }
            // Keys whose RFC default we cannot accept must be negotiated before leaving the stage.
            let offers = neg.targetOffers()
            negotiator = neg
            if !offers.isEmpty {
                var text = r.text
                for o in offers { TextKeys.append(o.key, o.value, to: &text) }
                if text.count <= ISCSILimits.loginDataSegmentBytes {
                    r.text = text
                    return (r, .respondAndContinue)
                }
                // No room in this PDU: send the offers as a continuation of this response.
                responseText = Array(text[ISCSILimits.loginDataSegmentBytes...])
                responseOffset = 0
                r.text = Array(text[..<ISCSILimits.loginDataSegmentBytes])
                r.continueFlag = true
                return (r, .respondAndContinue)
            }
        }
        // Authentication must finish before the security stage ends: answer T=0 and let the exchange go on.
        if csg == .security, let c = chap, c.state != .done {
            if negotiator?.hasSeen("AuthMethod") != true {
                return reject(req, .authenticationFailure, "target requires CHAP; the initiator offered no AuthMethod")
            }
            return (r, .respondAndContinue)
        }
        // Whenever the initiator is ready to transit and nothing of ours is outstanding, so are we.
        r.transit = true
        r.nsg = next.rawValue
        if next == .fullFeature {
            guard var neg = negotiator else { return reject(req, .targetError, "no negotiator") }
            do {
                let params = try neg.finish()
                negotiator = neg
                state = .done
                return (r, .respondAndEnterFullFeature(params))
            } catch {
                return reject(req, LoginStatus(rawValue: UInt16(error.statusClass) << 8 | UInt16(error.statusDetail))
                              ?? .initiatorError, error.reason)
            }
        }
        state = .negotiating(next)
        return (r, .respondAndContinue)
    }

    /// Reads SessionType, InitiatorName and TargetName from the first complete text and applies the
    /// target checks. Returns a Login reject, or nil when the login may go on.
    private mutating func takeIdentity(_ pairs: [TextKeyValue], req: LoginRequest,
                                       env: LoginEnvironment) -> (LoginResponse, LoginOutcome)? {
        func value(_ k: String) -> String? { pairs.first(where: { $0.key == k })?.value }
        // tgt closes every new connection while the system is offline; "service unavailable" tells the
        // initiator the same thing and that a later attempt may succeed (RFC 7143 §11.13.5).
        if env.systemOffline {
            return reject(req, .serviceUnavailable, "the target system is offline")
        }
        switch value("SessionType") {
        case nil, "Normal": sessionType = .normal
        case "Discovery": sessionType = .discovery
        case let other?: return reject(req, .sessionTypeNotSupported, "SessionType=\(other)")
        }
        guard let name = value("InitiatorName"), !name.isEmpty else {
            return reject(req, .missingParameter, "no InitiatorName")
        }
        guard name.utf8.count <= ISCSILimits.maxNameBytes else {
            return reject(req, .initiatorError, "InitiatorName longer than \(ISCSILimits.maxNameBytes) bytes")
        }
        initiatorName = name
        if req.tsih != 0 && !env.sessionExists(req.tsih, req.isid, name) {
            return reject(req, .sessionDoesNotExist, "TSIH \(req.tsih) names no session")
        }
        var targetName: String?
        if sessionType == .normal {
            guard let tn = value("TargetName"), !tn.isEmpty else {
                return reject(req, .missingParameter, "normal session without TargetName")
            }
            guard tn.utf8.count <= ISCSILimits.maxNameBytes, let t = env.targetLookup(tn) else {
                return reject(req, .notFound, "no target \(tn)")
            }
            // tgt's login_start: a target not in the ready state answers Target Error.
            if t.offline {
                return reject(req, .targetError, "target \(t.name) is offline")
            }
            guard env.isAllowed(t, name) else {
                return reject(req, .authorizationFailure, "initiator \(name) not allowed on \(t.name)")
            }
            target = t
            targetName = t.name
        }
        var neg = KeyNegotiator(defaults: env.defaults(target))
        // tgt's login_start: a discovery session authenticates against the accounts bound without a tid.
        let credentials = target?.chap ?? env.discoveryCHAP
        if credentials.required {
            neg.chapRequired = true
            chap = CHAPExchange(credentials: credentials, random: chapRandom)
        }
        neg.setIdentity(sessionType: sessionType, initiatorName: name, initiatorAlias: value("InitiatorAlias"),
                        targetName: targetName, portalGroupTag: env.portalGroupTag)
        negotiator = neg
        return nil
    }

    private mutating func reject(_ req: LoginRequest, _ status: LoginStatus, _ reason: String) -> (LoginResponse, LoginOutcome) {
        state = .done
        failureReason = reason
        requestText = []
        responseText = []
        responseOffset = 0
        let r = LoginResponse(transit: false, continueFlag: false, csg: req.csg & LoginFlags.stageMask, nsg: 0,
                              statusClass: status.statusClass, statusDetail: status.statusDetail,
                              isid: req.isid, tsih: req.tsih, itt: req.itt, text: [])
        return (r, .respondAndClose)
    }
}
