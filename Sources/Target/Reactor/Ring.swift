import CURing
import Glibc

/// One io_uring instance, owned by one thread for its whole life (SINGLE_ISSUER).
/// The ring lives behind an UnsafeMutablePointer so calls do not pay exclusivity checks.
public struct Ring: ~Copyable {
    public let ring: UnsafeMutablePointer<io_uring>
    /// Completions copied out per batch.
    public static let completionBatch = 256
    let cqes: UnsafeMutablePointer<UnsafeMutablePointer<io_uring_cqe>?>

    public enum SetupError: Error, CustomStringConvertible {
        case setup(errno: Int32)
        case registerBuffers(errno: Int32, bytes: Int)
        public var description: String {
            switch self {
            case .setup(let e): return "io_uring_queue_init_params failed: \(String(cString: strerror(e)))"
            case .registerBuffers(let e, let bytes):
                if e == ENOMEM {
                    return "registering \(bytes) bytes of I/O buffers failed (ENOMEM): RLIMIT_MEMLOCK is too small. "
                        + "Run as root/with CAP_IPC_LOCK, raise LimitMEMLOCK= in the systemd unit, or use a smaller pool (--buffers/--buffer-size)."
                }
                return "io_uring_register_buffers(\(bytes) bytes) failed: \(String(cString: strerror(e)))"
            }
        }
    }

    /// - entries: submission queue size. Completion queue is twice that (kernel default).
    public init(entries: UInt32) throws(SetupError) {
        ring = .allocate(capacity: 1)
        ring.initialize(to: io_uring())
        cqes = .allocate(capacity: Ring.completionBatch)
        var params = io_uring_params()
        params.flags = RT_SETUP_SINGLE_ISSUER | RT_SETUP_DEFER_TASKRUN | RT_SETUP_SUBMIT_ALL
        params.flags |= UInt32(IORING_SETUP_CQSIZE)
        params.cq_entries = entries &* 4
        var rc = io_uring_queue_init_params(entries, ring, &params)
        if rc == -EINVAL {
            // Older kernels: fall back to COOP_TASKRUN, then to plain.
            params = io_uring_params()
            params.flags = RT_SETUP_COOP_TASKRUN | UInt32(IORING_SETUP_CQSIZE)
            params.cq_entries = entries &* 4
            rc = io_uring_queue_init_params(entries, ring, &params)
        }
        if rc < 0 {
            cqes.deallocate()
            ring.deallocate()
            throw .setup(errno: -rc)
        }
    }

    deinit {
        io_uring_queue_exit(ring)
        cqes.deallocate()
        ring.deallocate()
    }

    public func registerBuffer(_ base: UnsafeMutableRawPointer, bytes: Int) throws(SetupError) {
        var iov = iovec(iov_base: base, iov_len: bytes)
        let rc = io_uring_register_buffers(ring, &iov, 1)
        if rc < 0 { throw .registerBuffers(errno: -rc, bytes: bytes) }
    }

    /// A free SQE; submits pending ones to make room when the queue is full.
    @inline(__always)
    public func sqe() -> UnsafeMutablePointer<io_uring_sqe> {
        if let s = io_uring_get_sqe(ring) { return s }
        _ = io_uring_submit(ring)
        if let s = io_uring_get_sqe(ring) { return s }
        // The SQ was just flushed, so this cannot fail unless the kernel refuses submissions entirely.
        fatalError("io_uring: no SQE available after submit")
    }

    /// Submits and waits for at least one completion or the timeout (nanoseconds; <0 = forever).
    @inline(__always)
    public func submitAndWait(timeoutNanos: Int64) -> Int32 {
        rt_wait(ring, 1, timeoutNanos)
    }

    @inline(__always)
    public func submit() { _ = io_uring_submit(ring) }

    /// Submits and reaps whatever has completed, without waiting (busy polling). With DEFER_TASKRUN this is
    /// what runs the ring's pending task work.
    @inline(__always)
    public func submitAndPoll() { _ = io_uring_submit_and_get_events(ring) }

    /// Copies out ready completions; the caller must call `advance(n)` after processing them.
    @inline(__always)
    public func peekBatch() -> Int {
        Int(rt_peek_batch(ring, cqes, UInt32(Ring.completionBatch)))
    }

    @inline(__always)
    public func cqe(_ i: Int) -> UnsafeMutablePointer<io_uring_cqe> { cqes[i]! }

    @inline(__always)
    public func advance(_ n: Int) { io_uring_cq_advance(ring, UInt32(n)) }
}

/// user_data layout: kind (8 bits) | index (24 bits) | tag (32 bits). Completions dispatch by switch on kind;
/// the tag guards against a completion for a slot that was reused (generation counter).
public enum OpKind: UInt8 {
    case accept = 1
    case recv = 2
    case send = 3
    case storeIO = 4
    case tick = 5
    case mailbox = 6
    case cancel = 7
    case close = 8
    case sheep = 9
    /// The end of an accept back-off: arm the listener's accept again.
    case acceptRetry = 10
}

@inline(__always)
public func packUserData(_ kind: OpKind, index: Int, tag: UInt32) -> UInt64 {
    (UInt64(kind.rawValue) << 56) | (UInt64(UInt32(truncatingIfNeeded: index) & 0xFF_FFFF) << 32) | UInt64(tag)
}

@inline(__always)
public func unpackUserData(_ u: UInt64) -> (kind: UInt8, index: Int, tag: UInt32) {
    (UInt8(truncatingIfNeeded: u >> 56), Int((u >> 32) & 0xFF_FFFF), UInt32(truncatingIfNeeded: u))
}
