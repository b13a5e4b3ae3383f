/// How long a connection may stay silent or stuck, in reactor ticks (whole seconds since the core started).
import Floor
import ISCSIWire
import SCSI
public struct LivenessLimits: Equatable {
    /// From accept to the end of login.
    @usableFromInline var loginSeconds: UInt64
    /// Queued PDUs that the initiator does not read.
    @usableFromInline var sendStallSeconds: UInt64
    /// A write command waiting for Data-Out (or for an R2T permit).
    @usableFromInline var dataOutSeconds: UInt64
    /// Silence before a NOP-In ping; 0 sends none.
    @usableFromInline var nopIntervalSeconds: UInt64
    /// A ping unanswered for longer than this ends the connection.
    @usableFromInline var nopTimeoutSeconds: UInt64

    @inlinable
    public init(loginSeconds: UInt64, sendStallSeconds: UInt64, dataOutSeconds: UInt64, nopIntervalSeconds: UInt64, nopTimeoutSeconds: UInt64) {
        self.loginSeconds = loginSeconds
        self.sendStallSeconds = sendStallSeconds
        self.dataOutSeconds = dataOutSeconds
        self.nopIntervalSeconds = nopIntervalSeconds
        self.nopTimeoutSeconds = nopTimeoutSeconds
    }
}

/// Why liveness ends a connection; `reason` is what the log says.
public enum LivenessFailure: Equatable {
    case loginTimeout
    case sendStalled
    case pingUnanswered

    public var reason: String {
        switch self {
        case .loginTimeout: return "login timeout"
        case .sendStalled: return "initiator stopped reading"
        case .pingUnanswered: return "NOP-In ping unanswered"
        }
    }
}

/// What the tick asks of the NOP-In ping (RFC 7143 §11.19: a NOP-In with a TTT the initiator must answer).
public enum PingVerdict: Equatable {
    /// Nothing to do this tick.
    case idle
    /// Queue a NOP-In with this TTT.
    case send(ttt: UInt32)
    case close(LivenessFailure)
}

/// A connection's liveness, driven by the reactor's once-a-second tick: the login timeout, an initiator that
/// stops reading, the NOP-In ping and its answer, and the Data-Out timeout of write commands. Any received byte
/// counts as the ping's answer, since it proves the initiator alive.
public struct ConnectionLiveness {
    private(set) var createdTick: UInt64
    public private(set) var lastRxTick: UInt64
    public private(set) var lastSendProgressTick: UInt64
    /// The outstanding ping's TTT; the reserved tag when none is.
    private(set) var pingTTT: UInt32 = reservedTag
    private var pingSentTick: UInt64 = 0
    /// Ping TTTs run 1...pingTTTLimit and wrap, so none is ever the reserved tag.
    private var nextPingTTT: UInt32 = 1
    static let pingTTTLimit: UInt32 = 0x7FFF_FFFF

    /// `nextPingTTT` other than 1: for tests.
    public init(tick: UInt64, nextPingTTT: UInt32 = 1) {
        self.nextPingTTT = nextPingTTT
        createdTick = tick
        lastRxTick = tick
        lastSendProgressTick = tick
    }

    /// Bytes arrived.
    @inline(__always)
    public mutating func received(tick: UInt64) {
        lastRxTick = tick
        pingTTT = reservedTag
    }

    /// A send completed.
    @inline(__always)
    public mutating func sent(tick: UInt64) {
        lastSendProgressTick = tick
    }

    /// The checks every connection gets, NBD ones too: nil while it may live on.
    public func check(tick: UInt64, loggingIn: Bool, sendQueued: Bool, limits: LivenessLimits) -> LivenessFailure? {
        if loggingIn && tick &- createdTick > limits.loginSeconds { return .loginTimeout }
        if sendQueued && tick &- lastSendProgressTick > limits.sendStallSeconds { return .sendStalled }
        return nil
    }

    /// Whether a write command's Data-Out has kept it waiting too long.
    @inline(__always)
    public func dataOutExpired(_ sequence: DataOutSequencer, tick: UInt64, limits: LivenessLimits) -> Bool {
        sequence.expired(tick: tick, limitSeconds: limits.dataOutSeconds)
    }

    /// The ping in full feature phase: close when the last one went unanswered too long, send one after
    /// `nopIntervalSeconds` of silence when the send queue has room (`canSend`).
    public mutating func pingCheck(tick: UInt64, limits: LivenessLimits, canSend: Bool) -> PingVerdict {
        guard limits.nopIntervalSeconds > 0 else { return .idle }
        if pingTTT != reservedTag {
            return tick &- pingSentTick > limits.nopTimeoutSeconds ? .close(.pingUnanswered) : .idle
        }
        guard tick &- lastRxTick >= limits.nopIntervalSeconds && canSend else { return .idle }
        return .send(ttt: pinged(tick: tick))
    }

    /// A ping goes out now: its TTT.
    mutating func pinged(tick: UInt64) -> UInt32 {
        let ttt = nextPingTTT
        nextPingTTT = nextPingTTT == Self.pingTTTLimit ? 1 : nextPingTTT + 1
        pingTTT = ttt
        pingSentTick = tick
        return ttt
    }
}
