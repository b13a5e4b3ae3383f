// What the iSCSI and NBD simulation clients share: the socket (non-blocking, reconnected when it dies), the
// fixed send and receive buffers, the command slots and their tags, and the step loop. A subclass speaks its
// protocol through its hooks: sessionStarted, produce, issue, consume and idle.

import DeterministicRandom
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor

import Glibc

/// A byte queue over memory allocated once: appended at the tail, consumed at the head, compacted on demand.
struct SimByteBuffer {
    let base: UnsafeMutableRawPointer
    let capacity: Int
    private(set) var head = 0
    private(set) var tail = 0

    init(capacity: Int) {
        precondition(capacity > 0)
        self.capacity = capacity
        base = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 16)
    }

    func deallocate() { base.deallocate() }

    var count: Int { tail - head }
    var bytes: UnsafeMutableRawPointer { base + head }

    /// Room for `n` more bytes at the tail (compacting first if that makes room), or nil.
    mutating func reserve(_ n: Int) -> UnsafeMutableRawPointer? {
        if capacity - tail < n { compact() }
        return capacity - tail >= n ? base + tail : nil
    }

    mutating func commit(_ n: Int) {
        precondition(n >= 0 && tail + n <= capacity)
        tail += n
    }

    mutating func consume(_ n: Int) {
        precondition(n >= 0 && n <= count)
        head += n
        if head == tail { head = 0; tail = 0 }
    }

    mutating func compact() {
        guard head > 0 else { return }
        if count > 0 { base.copyMemory(from: base + head, byteCount: count) }
        tail -= head
        head = 0
    }

    mutating func reset() { head = 0; tail = 0 }
}

/// iSCSI data segments and NBD nothing: pad to 4 bytes (RFC 7143 §11.1).
@inline(__always) func padded4(_ n: Int) -> Int { (n + 3) & ~3 }

class SimClientBase {
    /// Reconnects after which a client gives up (a target that closes every connection must not loop forever).
    static let maxReconnects = 10_000
    /// Per mille of turns that send or receive only a random part of what they could, so the target sees
    /// headers and payloads split at every offset.
    static let partialTransferPerMille = 250
    /// Tags carry the slot in their low bits and an issue counter above, so a stale answer is told apart.
    static let slotTagBits = 10
    static let issueCounterMask: UInt32 = 0x1F_FFFF

    let name: String
    let workload: SimWorkload
    let queueDepth: Int
    let connect: () -> Int32
    private(set) var fd: Int32 = -1
    var tx: SimByteBuffer
    var rx: SimByteBuffer
    private(set) var finished = false
    /// Planned commands (or read-back chunks) by slot; nil = free.
    private(set) var slots: [SimCommand?]
    /// Per slot: the command went into the send buffer under `tags[slot]` (false: it waits to be (re)issued).
    private var sent: [Bool]
    private var abandoned = false
    private(set) var tags: [UInt32]
    private var issueCounter: UInt32 = 0
    private(set) var slotsInUse = 0
    /// The driver holds new commands back (the simulation's pause): what is in flight still ends.
    var holdingNewCommands = false
    /// Set by a hook when the connection must go (a protocol error, a Reject): handled after the hook returns.
    private var dropReason: String? = nil

    init(name: String, workload: SimWorkload, queueDepth: Int, txBytes: Int, rxBytes: Int,
         connect: @escaping () -> Int32) {
        precondition(queueDepth >= 1 && queueDepth < 1 << SimClientBase.slotTagBits, "\(name): queue depth \(queueDepth)")
        self.name = name
        self.workload = workload
        self.queueDepth = queueDepth
        self.connect = connect
        tx = SimByteBuffer(capacity: txBytes)
        rx = SimByteBuffer(capacity: rxBytes)
        slots = [SimCommand?](repeating: nil, count: queueDepth)
        tags = [UInt32](repeating: 0, count: queueDepth)
        sent = [Bool](repeating: false, count: queueDepth)
    }

    deinit {
        if fd >= 0 { close(fd) }
        tx.deallocate()
        rx.deallocate()
    }

    // MARK: Hooks

    /// A fresh connection: reset the protocol state and queue the first bytes of the handshake.
    func sessionStarted() {}
    /// Queue what may be sent now (commands, data, answers). True if anything was queued.
    func produce(_ rng: inout SeededRandom) -> Bool { false }
    /// Handle every complete message in `rx`. True if anything was handled.
    func consume() -> Bool { false }
    /// Queue the command in `slot` under `newTag(slot)`; false when the send buffer has no room yet.
    func issue(_ slot: Int) -> Bool { false }
    /// Nothing of the handshake or the protocol is half done, so the connection may close.
    var idle: Bool { true }

    // MARK: Slots

    func freeSlot() -> Int? {
        guard slotsInUse < queueDepth else { return nil }
        return slots.firstIndex { $0 == nil }
    }

    /// A new tag for the command in `slot`, as it is sent (a re-issue gets a new one too).
    func newTag(_ slot: Int) -> UInt32 {
        precondition(slots[slot] != nil)
        issueCounter = (issueCounter &+ 1) & SimClientBase.issueCounterMask
        tags[slot] = issueCounter << SimClientBase.slotTagBits | UInt32(slot)
        assert(tags[slot] != 0xFFFF_FFFF, "a tag must never be the reserved one")
        return tags[slot]
    }

    /// The slot a tag names, or nil (and a failure) for a tag not in flight.
    func slot(forTag tag: UInt64, _ what: String) -> Int? {
        let s = Int(tag & (1 << SimClientBase.slotTagBits - 1))
        if s < queueDepth, slots[s] != nil, sent[s], UInt64(tags[s]) == tag { return s }
        workload.fail("\(what) for tag \(hex(tag)), which is not in flight")
        return nil
    }

    /// Sends what waits to be (re)issued, then new commands from the plan, while slots, the buffer and
    /// `windowOpen` allow.
    func issueCommands(_ rng: inout SeededRandom, flushAllowed: Bool, windowOpen: () -> Bool) -> Bool {
        var did = false
        for s in 0..<queueDepth where slots[s] != nil && !sent[s] {
            guard windowOpen(), issue(s) else { return did }
            sent[s] = true
            did = true
        }
        while !holdingNewCommands, windowOpen(), let s = freeSlot(), let c = workload.next(&rng, flushAllowed: flushAllowed) {
            slots[s] = c
            sent[s] = false
            slotsInUse += 1
            did = true
            guard issue(s) else { return did }
            sent[s] = true
        }
        return did
    }

    /// The command in `slot` goes out again under a new tag (a retryable status).
    func reissue(_ slot: Int) {
        precondition(slots[slot] != nil)
        sent[slot] = false
        workload.retries += 1
    }

    func end(_ slot: Int, _ outcome: SimOutcome) {
        guard let c = slots[slot] else { preconditionFailure("\(name): slot \(slot) ended twice") }
        slots[slot] = nil
        sent[slot] = false
        slotsInUse -= 1
        assert(slotsInUse >= 0)
        workload.end(c, outcome)
    }

    /// Ends the connection from the client's side after a protocol error (recorded by the caller).
    func drop(_ reason: String) { if dropReason == nil { dropReason = reason } }

    /// Ends the connection and the run: the target refuses what no reconnect can change (an unknown export).
    func abandon(_ reason: String) {
        workload.fail(reason)
        abandoned = true
        drop(reason)
    }

    var dropping: Bool { dropReason != nil }

    // MARK: The step

    var inFlight: Int { slotsInUse }
    var isFinished: Bool { finished }
    var failures: [String] { workload.failures }
    var summary: String { workload.summary + (lastLoss.map { " (last connection lost: \($0))" } ?? "") }

    func step(_ rng: inout SeededRandom) -> Bool {
        if finished { return false }
        if fd < 0 { return reconnectOrFinish() }
        var did = produce(&rng)
        if tx.count > 0 {
            let limit = rng.chance(SimClientBase.partialTransferPerMille) ? 1 + rng.below(tx.count) : tx.count
            let n = send(fd, tx.bytes, limit, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
            if n > 0 {
                tx.consume(n)
                did = true
            } else if let reason = failed(n, "send") {
                connectionLost(reason)
                return true
            }
        }
        if rx.reserve(1) != nil {
            let room = rx.capacity - rx.tail
            let limit = rng.chance(SimClientBase.partialTransferPerMille) ? 1 + rng.below(room) : room
            let n = recv(fd, rx.base + rx.tail, limit, Int32(MSG_DONTWAIT))
            if n > 0 {
                rx.commit(n)
                did = true
            } else if let reason = n == 0 ? "the target closed the connection" : failed(n, "recv") {
                // What arrived before the close still counts: answers in it end their commands.
                _ = consume()
                connectionLost(reason)
                return true
            }
        }
        if rx.count > 0 && consume() { did = true }
        if let reason = dropReason {
            connectionLost(reason)
            if abandoned { finished = true }
            return true
        }
        if workload.isDone && slotsInUse == 0 && tx.count == 0 && idle {
            close(fd)
            fd = -1
            finished = true
            return true
        }
        return did
    }

    /// nil when the call only found nothing to do (EAGAIN, EINTR), else why the connection is dead.
    private func failed(_ n: Int, _ call: String) -> String? {
        precondition(n < 0)
        let e = errno
        switch e {
        case EAGAIN, EWOULDBLOCK, EINTR: return nil
        default: return "\(call): \(String(cString: strerror(e)))"
        }
    }

    private func reconnectOrFinish() -> Bool {
        if workload.isDone {
            finished = true
            return true
        }
        if workload.reconnects >= SimClientBase.maxReconnects {
            workload.fail("gave up after \(workload.reconnects) reconnects with \(workload.commands - workload.ended) commands unsent")
            finished = true
            return true
        }
        let s = connect()
        guard s >= 0 else {
            workload.reconnects += 1
            return true
        }
        fd = s
        tx.reset()
        rx.reset()
        dropReason = nil
        sessionStarted()
        return true
    }

    /// Every command in flight ends as lost; the next step connects again.
    func connectionLost(_ reason: String) {
        precondition(fd >= 0)
        close(fd)
        fd = -1
        dropReason = nil
        tx.reset()
        rx.reset()
        for s in 0..<queueDepth where slots[s] != nil { end(s, .lost) }
        assert(slotsInUse == 0)
        workload.reconnects += 1
        lastLoss = reason
    }

    /// Why the last connection ended, shown in the summary.
    private(set) var lastLoss: String? = nil
}
