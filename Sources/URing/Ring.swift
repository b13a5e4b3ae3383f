import CURing
import Glibc

/// One io_uring instance, owned by one thread for its whole life (SINGLE_ISSUER).
/// The ring lives behind an UnsafeMutablePointer so calls do not pay exclusivity checks.
public struct Ring: ~Copyable {
    public let ring: UnsafeMutablePointer<io_uring>
    /// Completions copied out per batch.
    public static let completionBatch = 256
    @usableFromInline let cqes: UnsafeMutablePointer<UnsafeMutablePointer<io_uring_cqe>?>
    /// SQEs prepared while the submission queue was full and the kernel took none of it (it refused the submit:
    /// out of memory, or busy). They go into the queue, in order, before anything newer, at the next submit.
    @usableFromInline let spill: UnsafeMutablePointer<io_uring_sqe>
    /// Entries of `spill`: as many as the submission queue, so a full queue can be prepared twice over before
    /// `sqe()` has to wait for the kernel.
    public let spillCapacity: Int
    @usableFromInline let spillState: UnsafeMutablePointer<SpillState>
    /// The simulated ring behind this one, or nil for the kernel's (see SimulatedRing). Every call below tests
    /// it first: one predictable branch, no existential and no generic in the engine.
    @usableFromInline let simulated: SimulatedRing?

    @usableFromInline struct SpillState {
        @usableFromInline var count = 0
        /// The last submit error `sqe()` saw, for the reactor to report (0 = none).
        @usableFromInline var submitErrno: Int32 = 0

        @usableFromInline init() {}
    }

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
        spillCapacity = Int(max(1, entries))
        spill = .allocate(capacity: spillCapacity)
        spillState = .allocate(capacity: 1)
        spillState.initialize(to: SpillState())
        simulated = nil
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
            spill.deallocate()
            spillState.deallocate()
            ring.deallocate()
            throw .setup(errno: -rc)
        }
    }

    /// A ring whose operations the simulation carries out (tests).
    public init(simulated: SimulatedRing) {
        ring = .allocate(capacity: 1)
        ring.initialize(to: io_uring())
        cqes = .allocate(capacity: Ring.completionBatch)
        spillCapacity = 1
        spill = .allocate(capacity: spillCapacity)
        spillState = .allocate(capacity: 1)
        spillState.initialize(to: SpillState())
        self.simulated = simulated
    }

    deinit {
        if simulated == nil { io_uring_queue_exit(ring) }
        cqes.deallocate()
        spill.deallocate()
        spillState.deallocate()
        ring.deallocate()
    }

    public func registerBuffer(_ base: UnsafeMutableRawPointer, bytes: Int) throws(SetupError) {
        if simulated != nil { return }
        var iov = iovec(iov_base: base, iov_len: bytes)
        let rc = io_uring_register_buffers(ring, &iov, 1)
        if rc < 0 { throw .registerBuffers(errno: -rc, bytes: bytes) }
    }

    /// A free SQE. When the queue is full it submits to make room; when the kernel takes nothing, the SQE comes
    /// from the spill area and enters the queue at the next submit.
    @inlinable @inline(__always)
    public func sqe() -> UnsafeMutablePointer<io_uring_sqe> {
        if let simulated { return simulated.sqe() }
        if spillState.pointee.count == 0, let s = io_uring_get_sqe(ring) { return s }
        return sqeWhenFull()
    }

    @usableFromInline @inline(never)
    func sqeWhenFull() -> UnsafeMutablePointer<io_uring_sqe> {
        while true {
            let rc = submitPending()
            if rc < 0 { spillState.pointee.submitErrno = -rc }
            // Spilled SQEs go first: operations on one socket must reach the kernel in the order prepared.
            if spillState.pointee.count == 0, let s = io_uring_get_sqe(ring) { return s }
            if spillState.pointee.count < spillCapacity {
                defer { spillState.pointee.count += 1 }
                return spill + spillState.pointee.count
            }
            // Queue and spill area full, and the kernel refuses submissions: wait for it to recover (never drop
            // an operation: a lost recv or store completion would hang its connection for good).
            var pause = timespec(tv_sec: 0, tv_nsec: 1_000_000)
            nanosleep(&pause, nil)
        }
    }

    /// Moves spilled SQEs into the submission queue, as many as it has room for.
    func moveSpill() {
        let n = spillState.pointee.count
        var moved = 0
        while moved < n, let s = io_uring_get_sqe(ring) {
            s.pointee = spill[moved]
            moved += 1
        }
        if moved == 0 { return }
        spill.update(from: spill + moved, count: n - moved)
        spillState.pointee.count = n - moved
    }

    /// Submits the queue and the spill area behind it; the result of the last io_uring_submit.
    @usableFromInline func submitPending() -> Int32 {
        var rc: Int32 = 0
        repeat {
            moveSpill()
            rc = io_uring_submit(ring)
        } while rc > 0 && spillState.pointee.count > 0
        return rc
    }

    /// The last submit error `sqe()` met and retried past, once (0 = none).
    public func takeSubmitErrno() -> Int32 {
        defer { spillState.pointee.submitErrno = 0 }
        return spillState.pointee.submitErrno
    }

    /// SQEs waiting in the spill area.
    @inlinable public var spilled: Int { spillState.pointee.count }

    /// Submits and waits for at least one completion or the timeout (nanoseconds; <0 = forever). The result of
    /// io_uring_submit_and_wait(_timeout): SQEs submitted, or -errno (-ETIME when the timeout passed).
    @inlinable @inline(__always)
    public func submitAndWait(timeoutNanos: Int64) -> Int32 {
        if let simulated { return simulated.submitAndTurn() }
        if spillState.pointee.count > 0 {
            let rc = submitPending()
            if rc < 0 { return rc }
        }
        return rt_wait(ring, 1, timeoutNanos)
    }

    /// Submits without waiting: SQEs submitted, or -errno.
    @inlinable @inline(__always)
    public func submit() -> Int32 {
        if let simulated { return simulated.submit() }
        return submitPending()
    }

    /// Submits and reaps whatever has completed, without waiting (busy polling). With DEFER_TASKRUN this is
    /// what runs the ring's pending task work. SQEs submitted, or -errno.
    @inlinable @inline(__always)
    public func submitAndPoll() -> Int32 {
        if let simulated { return simulated.submitAndTurn() }
        if spillState.pointee.count > 0 {
            let rc = submitPending()
            if rc < 0 { return rc }
        }
        return io_uring_submit_and_get_events(ring)
    }

    /// Copies out ready completions; the caller must call `advance(n)` after processing them.
    @inlinable @inline(__always)
    public func peekBatch() -> Int {
        if let simulated {
            let n = simulated.peekBatch()
            for i in 0..<n { cqes[i] = simulated.batch + i }
            return n
        }
        return Int(rt_peek_batch(ring, cqes, UInt32(Ring.completionBatch)))
    }

    @inlinable @inline(__always)
    public func cqe(_ i: Int) -> UnsafeMutablePointer<io_uring_cqe> { cqes[i]! }

    @inlinable @inline(__always)
    public func advance(_ n: Int) {
        if let simulated { simulated.advance(n); return }
        io_uring_cq_advance(ring, UInt32(n))
    }
}


/// What a failed submit or wait means for the loop (the errno of io_uring_enter).
public enum RingWaitOutcome: Equatable {
    /// Nothing wrong: the wait ended by its timeout or a signal; the loop goes on.
    case fine
    /// The kernel could not take the submissions now; they stay queued and go in at the next pass, after a
    /// pause so the loop cannot spin.
    case retry
    /// Not expected from a correct caller: logged once per errno, then retried like `retry`.
    case unexpected

    public static func classify(errno e: Int32) -> RingWaitOutcome {
        switch e {
        case ETIME: return .fine        // the wait's timeout passed
        case EINTR: return .fine        // a signal interrupted the wait
        case EAGAIN: return .retry      // no memory for the requests right now
        case EBUSY: return .retry       // completion queue overflowed: reap completions first
        case ENOMEM: return .retry      // as EAGAIN, on some kernels
        case EBADF, EBADFD, EFAULT, EINVAL, ENXIO, EOPNOTSUPP, EEXIST: return .unexpected
        default: return .unexpected
        }
    }
}
