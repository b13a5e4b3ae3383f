import Glibc

/// What a failed recv or send on a connection's socket means. A connection whose socket failed is closed;
/// only an interrupted operation is issued again.
public enum SocketErrno: Equatable {
    case retry
    /// The initiator went away (reset, unreachable, timed out): closed without alarm.
    case peerGone
    /// Anything else: closed, and the errno is part of the reason logged.
    case failed

    public static func classify(errno e: Int32) -> SocketErrno {
        switch e {
        case EINTR, EAGAIN: return .retry
        case ECONNRESET, EPIPE, ETIMEDOUT, EHOSTUNREACH, ENETUNREACH, ENETDOWN, ECONNABORTED, ENOTCONN, ESHUTDOWN:
            return .peerGone
        case ECANCELED, EBADF, ENOTSOCK, EFAULT, EINVAL, ENOMEM, ENOBUFS, EMSGSIZE, EOPNOTSUPP:
            return .failed
        default:
            return .failed
        }
    }
}
