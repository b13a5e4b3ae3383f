import CURing
import DeterministicRandom
import Glibc

// A simulated io_uring for deterministic fault tests (TigerBeetle's habit: the same engine over a simulated IO).
//
// The reactor prepares SQEs with the same liburing helpers and reads CQEs through the same `Ring` calls; only
// `Ring` knows which ring is behind it. The simulated ring keeps the submitted SQEs and, one turn at a time,
// carries them out with non-blocking system calls on the real descriptors (AF_UNIX socket pairs instead of
// network sockets, real temporary files), completing them in an order and with results drawn from a seeded
// schedule: short transfers, EAGAIN, connection resets, delays over several turns and reordering. Nothing in
// it reads a clock or another thread: the same seed replays the same run exactly. Timeouts run on a virtual
// clock that the driver moves when nothing else can progress.

/// How often the simulated ring injects each fault, per mille of the operations it applies to.
public struct SimulatedFaults: Sendable, CustomStringConvertible {
    /// A recv, send or file transfer moves fewer bytes than asked (at least one).
    public var shortTransferPerMille = 150
    /// A recv, send or file transfer fails with EAGAIN without moving anything.
    public var eagainPerMille = 30
    /// A recv or send on a socket fails with ECONNRESET; the socket is shut down, as a reset peer leaves it.
    public var resetPerMille = 0
    /// An operation is held back for 1...maxDelayTurns turns before it may complete.
    public var delayPerMille = 200
    public var maxDelayTurns = 6
    /// A multishot accept ends with EMFILE (the reactor must back off and accept again).
    public var acceptFailurePerMille = 0
    /// Completions of one turn reach the reactor in a shuffled order.
    public var reorder = true

    public init() {}

    /// Every operation completes at its first chance, in submission order, in full.
    public static var none: SimulatedFaults {
        var f = SimulatedFaults()
        f.shortTransferPerMille = 0
        f.eagainPerMille = 0
        f.delayPerMille = 0
        f.reorder = false
        return f
    }

    public var description: String {
        "short \(shortTransferPerMille)‰ eagain \(eagainPerMille)‰ reset \(resetPerMille)‰ delay \(delayPerMille)‰"
            + "(≤\(maxDelayTurns)) acceptFail \(acceptFailurePerMille)‰ reorder \(reorder)"
    }
}

/// What a simulated ring did: operations completed and faults injected, by kind.
public struct SimulatedRingCounters: Sendable, CustomStringConvertible {
    public var submitted = 0
    public var completed = 0
    public var shortTransfers = 0
    public var eagains = 0
    public var resets = 0
    public var delays = 0
    public var acceptFailures = 0
    public var reorderedTurns = 0
    /// SQEs with an opcode the simulation does not know (completed with EINVAL): must stay 0.
    public var unsupported = 0
    public var faults: Int { shortTransfers + eagains + resets + delays + acceptFailures }

    public init() {}

    public var description: String {
        "\(completed) operations completed (\(submitted) submitted); faults: \(shortTransfers) short, \(eagains) EAGAIN, "
            + "\(resets) reset, \(delays) delayed, \(acceptFailures) accept failures; \(reorderedTurns) reordered turns"
    }
}

public final class SimulatedRing {
    public let seed: UInt64
    public let faults: SimulatedFaults
    public private(set) var counters = SimulatedRingCounters()
    /// Virtual time: only timeouts read it, and only `advanceClock` moves it.
    public private(set) var nowNanos: UInt64 = 0
    public private(set) var turns: UInt64 = 0

    /// Connects socket `fd` to `address` for a connect SQE: the driver puts its own endpoint in place (typically
    /// `dup2` of one end of a socket pair over `fd`). 0, or -errno (no hook: -ECONNREFUSED).
    public var connectHook: ((_ fd: Int32, _ address: UnsafePointer<sockaddr>, _ length: socklen_t) -> Int32)?

    /// The only randomness in a simulation.
    private var random: SeededRandom
    /// The submission queue: SQEs prepared since the last submit.
    let sq: UnsafeMutablePointer<io_uring_sqe>
    let sqCapacity: Int
    var sqCount = 0
    private var pending: [Pending] = []
    /// Completions not yet handed to the reactor, oldest first from `readyHead`.
    private var ready: [io_uring_cqe] = []
    private var readyHead = 0
    /// Where `peekBatch` copies completions for `Ring.cqe(i)`.
    @usableFromInline let batch: UnsafeMutablePointer<io_uring_cqe>
    /// Connections waiting for a multishot accept, per listening descriptor.
    private var incoming: [Int32: [Int32]] = [:]
    private var order: [Int] = []

    private struct Pending {
        var sqe: io_uring_sqe
        /// Turns it is still held back.
        var hold: Int
        /// For a timeout: virtual time it fires at.
        var deadline: UInt64
    }

    public init(seed: UInt64, faults: SimulatedFaults, entries: Int = 1024) {
        self.seed = seed
        self.faults = faults
        random = SeededRandom(seed: seed)
        sqCapacity = max(1, entries)
        sq = .allocate(capacity: sqCapacity)
        batch = .allocate(capacity: Ring.completionBatch)
    }

    deinit {
        sq.deallocate()
        batch.deallocate()
        for (_, fds) in incoming { for fd in fds { close(fd) } }
    }

    /// A connection for the multishot accept on listening descriptor `listener` (the reactor's listener).
    public func connect(_ fd: Int32, toListener listener: Int32) {
        incoming[listener, default: []].append(fd)
    }

    /// Operations submitted and not completed (including the reactor's standing accept, tick and mailbox read).
    public var pendingCount: Int { pending.count }
    /// Completions waiting for the reactor.
    public var readyCount: Int { ready.count - readyHead }

    /// The earliest virtual time a pending timeout fires, if any.
    public var nextDeadline: UInt64? {
        var best: UInt64? = nil
        for p in pending where p.sqe.opcode == UInt8(IORING_OP_TIMEOUT.rawValue) {
            if best == nil || p.deadline < best! { best = p.deadline }
        }
        return best
    }

    /// Moves virtual time forward (never back).
    public func advanceClock(to t: UInt64) { if t > nowNanos { nowNanos = t } }

    // MARK: - What Ring calls

    @usableFromInline func sqe() -> UnsafeMutablePointer<io_uring_sqe> {
        if sqCount == sqCapacity { _ = submit() }
        let s = sq + sqCount
        sqCount += 1
        s.initialize(to: io_uring_sqe())
        return s
    }

    @usableFromInline func submit() -> Int32 {
        let n = sqCount
        for i in 0..<n {
            var p = Pending(sqe: sq[i], hold: 0, deadline: 0)
            if p.sqe.opcode == UInt8(IORING_OP_TIMEOUT.rawValue) {
                let spec = UnsafePointer<__kernel_timespec>(bitPattern: UInt(p.sqe.addr))!.pointee
                p.deadline = nowNanos &+ UInt64(spec.tv_sec) * 1_000_000_000 &+ UInt64(spec.tv_nsec)
            }
            pending.append(p)
        }
        sqCount = 0
        counters.submitted += n
        return Int32(n)
    }

    /// Submits, then carries out one turn: each pending operation, in a seeded order, completes if it can.
    @usableFromInline func submitAndTurn() -> Int32 {
        let n = submit()
        turn()
        return n
    }

    @usableFromInline func peekBatch() -> Int {
        let n = min(Ring.completionBatch, ready.count - readyHead)
        for i in 0..<n { batch[i] = ready[readyHead + i] }
        return n
    }

    @usableFromInline func advance(_ n: Int) {
        readyHead += n
        if readyHead == ready.count { ready.removeAll(keepingCapacity: true); readyHead = 0 }
    }

    // MARK: - A turn

    private func turn() {
        turns += 1
        order.removeAll(keepingCapacity: true)
        order.append(contentsOf: pending.indices)
        // Fisher-Yates: which operation the kernel gets to first is not the order they were submitted in.
        if faults.reorder && order.count > 1 {
            for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, random.below(i + 1)) }
        }
        let firstOfTurn = ready.count
        var done: [Int] = []
        for i in order {
            if pending[i].hold > 0 { pending[i].hold -= 1; continue }
            let opcode = pending[i].sqe.opcode
            if opcode != UInt8(IORING_OP_TIMEOUT.rawValue) && random.chance(faults.delayPerMille) {
                pending[i].hold = 1 + random.below(max(1, faults.maxDelayTurns))
                counters.delays += 1
                continue
            }
            guard let outcome = perform(&pending[i].sqe, deadline: pending[i].deadline) else { continue }
            var cqe = io_uring_cqe()
            cqe.user_data = pending[i].sqe.user_data
            cqe.res = outcome.res
            cqe.flags = outcome.more ? RT_CQE_F_MORE : 0
            ready.append(cqe)
            counters.completed += 1
            if !outcome.more { done.append(i) }
        }
        if faults.reorder && ready.count - firstOfTurn > 1 {
            for i in stride(from: ready.count - 1, to: firstOfTurn, by: -1) {
                ready.swapAt(i, firstOfTurn + random.below(i - firstOfTurn + 1))
            }
            counters.reorderedTurns += 1
        }
        done.sort()
        for i in done.reversed() { pending.remove(at: i) }
    }

    private struct Outcome {
        var res: Int32
        /// A multishot operation that stays armed.
        var more = false
    }

    /// Carries out one SQE if it can complete now; nil when it would block (it stays pending).
    private func perform(_ s: inout io_uring_sqe, deadline: UInt64) -> Outcome? {
        let fd = s.fd
        switch UInt32(s.opcode) {
        case IORING_OP_TIMEOUT.rawValue:
            return nowNanos >= deadline ? Outcome(res: -ETIME) : nil

        case IORING_OP_ACCEPT.rawValue:
            if random.chance(faults.acceptFailurePerMille) {
                counters.acceptFailures += 1
                return Outcome(res: -EMFILE)
            }
            guard var queue = incoming[fd], !queue.isEmpty else { return nil }
            let accepted = queue.removeFirst()
            incoming[fd] = queue
            return Outcome(res: accepted, more: true)

        case IORING_OP_CONNECT.rawValue:
            guard let address = UnsafePointer<sockaddr>(bitPattern: UInt(s.addr)) else { return Outcome(res: -EFAULT) }
            return Outcome(res: connectHook?(fd, address, socklen_t(s.off)) ?? -ECONNREFUSED)

        case IORING_OP_RECV.rawValue:
            let base = UnsafeMutableRawPointer(bitPattern: UInt(s.addr))
            guard let fault = socketFault(fd, length: Int(s.len)) else { return nil }
            if let res = fault.res { return Outcome(res: res) }
            let n = Glibc.recv(fd, base, fault.length, Int32(MSG_DONTWAIT))
            return n >= 0 ? Outcome(res: Int32(n)) : blockedOr(errno)

        case IORING_OP_SENDMSG.rawValue:
            guard let msg = UnsafeMutablePointer<msghdr>(bitPattern: UInt(s.addr)) else { return Outcome(res: -EFAULT) }
            let total = (0..<Int(msg.pointee.msg_iovlen)).reduce(0) { $0 + msg.pointee.msg_iov[$1].iov_len }
            guard let fault = socketFault(fd, length: total) else { return nil }
            if let res = fault.res { return Outcome(res: res) }
            let n = sendPrefix(fd, msg, fault.length)
            return n >= 0 ? Outcome(res: Int32(n)) : blockedOr(errno)

        case IORING_OP_READ_FIXED.rawValue, IORING_OP_READ.rawValue, IORING_OP_WRITE_FIXED.rawValue,
             IORING_OP_WRITE.rawValue:
            let isRead = UInt32(s.opcode) == IORING_OP_READ_FIXED.rawValue || UInt32(s.opcode) == IORING_OP_READ.rawValue
            let base = UnsafeMutableRawPointer(bitPattern: UInt(s.addr))
            var length = Int(s.len)
            if !isRegularFile(fd) {
                // The mailbox's eventfd: readable or not, never faulted (a lost wake-up is not a fault the
                // kernel produces).
                guard readable(fd) else { return nil }
                let n = isRead ? Glibc.read(fd, base, length) : Glibc.write(fd, base, length)
                return n >= 0 ? Outcome(res: Int32(n)) : blockedOr(errno)
            }
            if length > 0 && random.chance(faults.eagainPerMille) { counters.eagains += 1; return Outcome(res: -EAGAIN) }
            if length > 1 && random.chance(faults.shortTransferPerMille) {
                length = 1 + random.below(length - 1)
                counters.shortTransfers += 1
            }
            let off = off_t(Int64(bitPattern: s.off))
            let n = isRead ? pread(fd, base, length, off) : pwrite(fd, base, length, off)
            return Outcome(res: n >= 0 ? Int32(n) : -errno)

        case IORING_OP_FSYNC.rawValue:
            let rc = s.fsync_flags & IORING_FSYNC_DATASYNC != 0 ? fdatasync(fd) : fsync(fd)
            return Outcome(res: rc == 0 ? 0 : -errno)

        case IORING_OP_FALLOCATE.rawValue:
            // liburing's layout: mode in len, offset in off, length in addr.
            let rc = rt_fallocate(fd, Int32(s.len), Int64(bitPattern: s.off), Int64(bitPattern: s.addr))
            return Outcome(res: rc == 0 ? 0 : -errno)

        case IORING_OP_NOP.rawValue:
            return Outcome(res: 0)

        default:
            counters.unsupported += 1
            return Outcome(res: -EINVAL)
        }
    }

    /// A socket transfer's fault: nil when the socket is not ready (the operation waits), a result to complete
    /// with at once, or the length to try (possibly short).
    private func socketFault(_ fd: Int32, length: Int) -> (res: Int32?, length: Int)? {
        if random.chance(faults.resetPerMille) {
            shutdown(fd, Int32(SHUT_RDWR))
            counters.resets += 1
            return (-ECONNRESET, 0)
        }
        if length > 0 && random.chance(faults.eagainPerMille) {
            counters.eagains += 1
            return (-EAGAIN, 0)
        }
        if length > 1 && random.chance(faults.shortTransferPerMille) {
            counters.shortTransfers += 1
            return (nil, 1 + random.below(length - 1))
        }
        return (nil, length)
    }

    /// EAGAIN from a non-blocking call means the kernel would still be waiting: not a completion.
    private func blockedOr(_ e: Int32) -> Outcome? {
        e == EAGAIN || e == EWOULDBLOCK ? nil : Outcome(res: -e)
    }

    /// sendmsg of at most `limit` bytes of `msg`'s iovecs (a short send the kernel could have made).
    private func sendPrefix(_ fd: Int32, _ msg: UnsafeMutablePointer<msghdr>, _ limit: Int) -> Int {
        let count = Int(msg.pointee.msg_iovlen)
        let iov = UnsafeMutablePointer<iovec>.allocate(capacity: max(1, count))
        defer { iov.deallocate() }
        var left = limit, used = 0
        for i in 0..<count where left > 0 {
            let v = msg.pointee.msg_iov[i]
            iov[used] = iovec(iov_base: v.iov_base, iov_len: min(left, v.iov_len))
            left -= iov[used].iov_len
            used += 1
        }
        var m = msghdr()
        m.msg_iov = iov
        m.msg_iovlen = used
        return Glibc.sendmsg(fd, &m, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
    }

    private func isRegularFile(_ fd: Int32) -> Bool {
        var st = stat()
        return fstat(fd, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
    }

    private func readable(_ fd: Int32) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, 0) == 1
    }
}
