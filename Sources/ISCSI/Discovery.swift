// SendTargets (RFC 7143 §12.1, §13.3, Appendix C) and the full-feature Text exchange that carries it
// (RFC 7143 §11.10, §11.11), including the TTT continuation of responses longer than the initiator's
// MaxRecvDataSegmentLength. Pure: the runtime decodes the Text Request BHS and sends what comes back.

import Floor
import ISCSIWire
import SCSI
public enum Discovery {
    /// Bound on one SendTargets answer; targets that do not fit are left out whole (never half a record).
    public static let maxSendTargetsBytes = 1 << 20

    /// The SendTargets answer text. `targets` is already filtered to what this initiator may see.
    /// `sessionTarget` is nil on a discovery session and the session's target name on a normal one.
    /// - "All": every target, discovery sessions only (a normal session gets SendTargets=Reject).
    /// - "": the session's own target on a normal session; nothing on a discovery session.
    /// - a target name: that target if the initiator may see it, else nothing.
    /// Addresses are "ip:port,tpgt" with IPv6 in brackets; a target with no addresses gets only its name,
    /// which tells the initiator to use the address it is connected to.
    public static func sendTargetsResponse(request: String, targets: [(name: String, addresses: [String])],
                                           sessionTarget: String?, maxBytes: Int = maxSendTargetsBytes) -> [UInt8] {
        var out: [UInt8] = []
        var selected: [(name: String, addresses: [String])] = []
        switch request {
        case "All":
            guard sessionTarget == nil else {
                TextKeys.append("SendTargets", "Reject", to: &out)
                return out
            }
            selected = targets
        case "":
            guard let own = sessionTarget?.asciiLowercased else { return out }
            selected = targets.filter { $0.name.asciiLowercased == own }
        default:
            let wanted = request.asciiLowercased
            selected = targets.filter { $0.name.asciiLowercased == wanted }
        }
        for t in selected {
            var block: [UInt8] = []
            TextKeys.append("TargetName", t.name, to: &block)
            for a in t.addresses { TextKeys.append("TargetAddress", a, to: &block) }
            if out.count + block.count > maxBytes { break }
            out.append(contentsOf: block)
        }
        return out
    }

    /// "ip:port,tpgt" for TargetAddress, with IPv6 addresses in brackets (RFC 7143 §13.8).
    public static func targetAddress(host: String, port: Int, portalGroupTag: UInt16) -> String {
        let h = host.contains(":") && !host.hasPrefix("[") ? "[\(host)]" : host
        return "\(h):\(port),\(portalGroupTag)"
    }
}

/// A decoded Text Request BHS (RFC 7143 §11.10).
public struct TextRequest: Sendable, Equatable {
    public var isFinal: Bool
    public var continueFlag: Bool
    public var itt: UInt32
    public var ttt: UInt32

    public init(isFinal: Bool, continueFlag: Bool = false, itt: UInt32, ttt: UInt32 = reservedTag) {
        self.isFinal = isFinal
        self.continueFlag = continueFlag
        self.itt = itt
        self.ttt = ttt
    }
}

/// The Text Response fields this layer decides (RFC 7143 §11.11); StatSN and the CmdSN window are the runtime's.
public struct TextResponse: Sendable, Equatable {
    public var isFinal: Bool
    public var continueFlag: Bool
    public var itt: UInt32
    public var ttt: UInt32
    public var text: [UInt8]
}

public enum TextOutcome: Sendable, Equatable {
    case respond(TextResponse)
    /// Send a Reject PDU with this reason code (RFC 7143 §11.17.1) carrying the request's header; the
    /// connection stays up.
    case reject(reason: UInt8)
}

/// What a Text exchange needs from the session.
public struct TextEnvironment {
    /// The initiator's MaxRecvDataSegmentLength: the most one response PDU may carry.
    public var maxSendDataSegmentLength: Int
    public var sessionType: SessionType
    /// The SendTargets answer for a request value ("All", "", or a name); see `Discovery.sendTargetsResponse`.
    public var sendTargets: (String) -> [UInt8]

    public init(maxSendDataSegmentLength: Int, sessionType: SessionType, sendTargets: @escaping (String) -> [UInt8]) {
        self.maxSendDataSegmentLength = maxSendDataSegmentLength
        self.sessionType = sessionType
        self.sendTargets = sendTargets
    }
}

/// Text negotiation in full feature phase, one exchange at a time per connection.
///
/// States:
/// - `idle`: no exchange open; a request must carry TTT 0xFFFFFFFF.
/// - `receiving`: the initiator is sending a long text with C=1; we answered with an empty response and a TTT.
/// - `sending`: our answer is longer than one PDU; the initiator fetches the rest with empty requests quoting our TTT.
/// - `open`: the initiator sent F=0 (more negotiation to come); we answered with a TTT and wait for it.
public struct TextExchange {
    /// Bound on a request text reassembled from C=1 PDUs.
    public static let maxRequestTextBytes = 65_536

    private enum State: Equatable {
        case idle
        case receiving(itt: UInt32, ttt: UInt32)
        case sending(itt: UInt32, ttt: UInt32)
        case open(itt: UInt32, ttt: UInt32)
    }

    private var state: State = .idle
    private var requestText: [UInt8] = []
    private var responseText: [UInt8] = []
    private var responseOffset = 0
    private var responseIsFinal = false
    private var nextTag: UInt32 = 1
    /// The initiator's new MaxRecvDataSegmentLength when it declared one in full feature phase; the runtime
    /// applies it to later PDUs and clears it.
    public var declaredMaxRecvDataSegmentLength: Int?

    public init() {}

    public mutating func receive(_ req: TextRequest, data: UnsafeRawBufferPointer, env: TextEnvironment) -> TextOutcome {
        if req.isFinal && req.continueFlag { return .reject(reason: RejectReason.protocolError) }
        if req.ttt == reservedTag {
            // A new exchange; one still pending is abandoned (RFC 7143 §11.10.4: a TTT of 0xffffffff resets).
            state = .idle
            requestText = []
            responseText = []
            responseOffset = 0
        } else {
            switch state {
            case .receiving(let itt, let ttt), .open(let itt, let ttt):
                if req.ttt != ttt || req.itt != itt { return .reject(reason: RejectReason.invalidPDUField) }
            case .sending(let itt, let ttt):
                if req.ttt != ttt || req.itt != itt { return .reject(reason: RejectReason.invalidPDUField) }
                if data.count != 0 || req.continueFlag { return .reject(reason: RejectReason.protocolError) }
                return .respond(nextChunk(req, env: env))
            case .idle:
                return .reject(reason: RejectReason.invalidPDUField)
            }
        }
        if requestText.count + data.count > TextExchange.maxRequestTextBytes {
            state = .idle
            requestText = []
            return .reject(reason: RejectReason.protocolError)
        }
        requestText.append(contentsOf: data)
        if req.continueFlag {
            let tag = allocateTag()
            state = .receiving(itt: req.itt, ttt: tag)
            return .respond(TextResponse(isFinal: false, continueFlag: false, itt: req.itt, ttt: tag, text: []))
        }
        let text = requestText
        requestText = []
        let pairs: [TextKeyValue]
        do { pairs = try TextKeys.parse(text) } catch {
            state = .idle
            return .reject(reason: RejectReason.protocolError)
        }
        var out: [UInt8] = []
        var negotiator = KeyNegotiator(defaults: TargetKeyDefaults())
        for pair in pairs {
            if pair.key == "SendTargets" {
                out.append(contentsOf: env.sendTargets(pair.value))
                continue
            }
            // Each pair alone: duplicates were refused by the parser already.
            guard let answers = try? negotiator.answer([pair], stage: .fullFeature, sessionType: env.sessionType) else {
                continue
            }
            if pair.key == "MaxRecvDataSegmentLength", answers.isEmpty {
                declaredMaxRecvDataSegmentLength = negotiator.params.initiatorMaxRecvDataSegmentLength
            }
            for a in answers { TextKeys.append(a.key, a.value, to: &out) }
        }
        responseText = out
        responseOffset = 0
        responseIsFinal = req.isFinal
        return .respond(nextChunk(req, env: env))
    }

    private mutating func nextChunk(_ req: TextRequest, env: TextEnvironment) -> TextResponse {
        let limit = max(ISCSILimits.minDataSegmentBytes, env.maxSendDataSegmentLength)
        let n = min(responseText.count - responseOffset, limit)
        let chunk = Array(responseText[responseOffset..<(responseOffset + n)])
        responseOffset += n
        if responseOffset < responseText.count {
            let tag: UInt32
            if case .sending(_, let t) = state { tag = t } else { tag = allocateTag() }
            state = .sending(itt: req.itt, ttt: tag)
            return TextResponse(isFinal: false, continueFlag: true, itt: req.itt, ttt: tag, text: chunk)
        }
        responseText = []
        responseOffset = 0
        if responseIsFinal {
            state = .idle
            return TextResponse(isFinal: true, continueFlag: false, itt: req.itt, ttt: reservedTag, text: chunk)
        }
        // The initiator said F=0: the exchange stays open for its next request, which quotes this tag.
        let tag = allocateTag()
        state = .open(itt: req.itt, ttt: tag)
        return TextResponse(isFinal: false, continueFlag: false, itt: req.itt, ttt: tag, text: chunk)
    }

    private mutating func allocateTag() -> UInt32 {
        let t = nextTag
        nextTag = nextTag &+ 1
        if nextTag == reservedTag || nextTag == 0 { nextTag = 1 }
        return t
    }
}
