import Floor
import URing
import ISCSIWire
import Store
import SCSI
import ISCSI
import NBD
import Glibc

/// What a failed accept means for the listener. A multishot accept ends with its first error, so every
/// failure decides when the listener is armed again.
public enum AcceptFailure: Equatable {
    /// The process or system is out of descriptors or memory: accepting again at once fails again at once
    /// (and spins the core), so wait before re-arming.
    case backOff
    /// Only that one connection failed (reset before we took it, a signal, a firewall verdict): keep accepting.
    case perConnection
    /// The ring cancelled the accept: the core is shutting down.
    case shutdown

    static func classify(errno e: Int32) -> AcceptFailure {
        switch e {
        case EMFILE, ENFILE: return .backOff
        case ENOBUFS, ENOMEM: return .backOff
        case ECONNABORTED, EINTR, EAGAIN, EPROTO, EPERM: return .perConnection
        case ECANCELED: return .shutdown
        // Unknown errors are treated like resource shortage: a pause costs little, a spin costs a core.
        default: return .backOff
        }
    }

    /// The errno's symbolic name, for log lines that name the condition precisely.
    static func errnoName(_ e: Int32) -> String {
        switch e {
        case EMFILE: return "EMFILE"
        case ENFILE: return "ENFILE"
        case ENOBUFS: return "ENOBUFS"
        case ENOMEM: return "ENOMEM"
        case ECONNABORTED: return "ECONNABORTED"
        case EINTR: return "EINTR"
        case EAGAIN: return "EAGAIN"
        case EPROTO: return "EPROTO"
        case EPERM: return "EPERM"
        case ECANCELED: return "ECANCELED"
        default: return "errno \(e)"
        }
    }
}

/// The pause before a listener that ran out of resources accepts again: doubles from the first delay up to
/// the cap while failures continue, and starts over after a successful accept.
public struct AcceptBackoff {
    static let firstDelayMilliseconds: UInt64 = 100
    static let maxDelayMilliseconds: UInt64 = 3_200

    private(set) var nextDelayMilliseconds = AcceptBackoff.firstDelayMilliseconds

    /// The delay to wait now; the following failure waits twice as long (up to the cap).
    mutating func failed() -> UInt64 {
        let d = nextDelayMilliseconds
        nextDelayMilliseconds = min(d * 2, AcceptBackoff.maxDelayMilliseconds)
        return d
    }

    mutating func succeeded() { nextDelayMilliseconds = AcceptBackoff.firstDelayMilliseconds }
}

/// Unique session handles (TSIH, RFC 7143 §11.13.4): a new one is never 0 and never one a live session holds.
/// Allocation continues after the last handle given out, so a just-released handle is reused only after all
/// others: a late "close session TSIH" message for a gone session cannot reach a newer one in practice.
public struct TSIHAllocator {
    private var inUse: Set<UInt16> = []
    private var last: UInt16

    init(last: UInt16 = 0) { self.last = last }

    var liveCount: Int { inUse.count }

    func isInUse(_ tsih: UInt16) -> Bool { inUse.contains(tsih) }

    /// nil when all 65,535 handles are held by live sessions.
    mutating func allocate() -> UInt16? {
        if inUse.count >= Int(UInt16.max) { return nil }
        var v = last
        while true {
            v &+= 1
            if v != 0 && !inUse.contains(v) { break }
        }
        last = v
        inUse.insert(v)
        return v
    }

    mutating func release(_ tsih: UInt16) { inUse.remove(tsih) }
}
