import Floor
import URing
import CURing
import Glibc
import SheepProtocol

/// Who waits for a sheep reply.
public enum SheepWaiter: Equatable {
    case none
    /// One object piece of a store request, named by the tag its requester gave (SheepStore.start).
    case request(tag: UInt64)
    /// A step of the home core's metadata work (allocation, index update, reload).
    case home(op: Int32)
    /// The shared lock taken again after a reconnect (SheepRejoin).
    case rejoin
    /// A connection holding a logout or task management response until the shared SCSI state change it made
    /// is in sheep (SheepStore.shareChange); never a sheep reply's waiter.
    case connection(index: Int32, generation: UInt32)
}

/// A sheep channel's bounds and timeouts (outside the generic class, which cannot hold static stored properties).
public enum SheepChannelLimits {
    static let maxRequests = 2048
    static let rxBytes = 65_536
    static let batchRequests = 64
    /// A request without a reply for this long means the connection is stuck: reconnect and resend.
    static let replyTimeoutSeconds: UInt64 = 30
    /// After this long without a working connection, requests fail (sense: NOT READY, LOGICAL UNIT NOT READY).
    static let giveUpSeconds: UInt64 = 120
    static let maxBackoffSeconds: UInt64 = 4
    /// Transient results (WAIT_FOR_JOIN, HALT, ...) are retried this many times, a second apart.
    static let maxTransientRetries = 60
}

/// One request in flight (or queued) on a channel. Kept until its reply arrives, so it can be re-sent
/// after a reconnect.
public struct SheepRequest {
    var inUse = false
    var sent = false
    var generation: UInt16 = 0
    var payload: UnsafeRawPointer? = nil
    var payloadLength = 0
    var dest: UnsafeMutableRawPointer? = nil
    var destCapacity = 0
    var waiter: SheepWaiter = .none
    var nextQueued: Int32 = -1
    var sentTick: UInt64 = 0
    var retryAtTick: UInt64 = 0
    var retries = 0
    /// A read piece's index probe (object index, offset in the object), -1 otherwise: a read of the piece's
    /// 4-byte slot of our inode, whose reply lands in the channel's `probeSlots` word of this request; the
    /// piece's own buffer and length are kept here for the read that follows (or zeros).
    var probeIndex: Int32 = -1
    var probeObjectOffset: Int32 = 0
    var probeDest: UnsafeMutableRawPointer? = nil
    var probeLength = 0
}

/// A core's connection to one sheep endpoint. Many requests are in flight at once, matched by id; sheep
/// answers in completion order. A broken connection is reconnected with backoff and every request still
/// without a reply is sent again (creates are safe to repeat because the home core serialises them).
/// States:
/// - `idle`: no socket yet (first use connects).
/// - `connecting`: an IORING_OP_CONNECT is in flight.
/// - `ready`: requests flow.
/// - `backoff`: the last attempt failed; the tick retries at `retryTick`.
public final class SheepChannel<Host: SheepStoreHost> {
    public enum State { case idle, connecting, ready, backoff }

    /// The store owns its channels and outlives them; it lives as long as its reactor, whatever the admin does.
    unowned(unsafe) let store: SheepStore<Host>
    let endpointIndex: Int
    let endpoint: SheepBackingSpec.Endpoint
    var state: State = .idle
    var fd: Int32 = -1
    var generation: UInt32 = 1
    var downSinceTick: UInt64 = 0
    var retryTick: UInt64 = 0
    var backoffSeconds: UInt64 = 1
    var everConnected = false

    let reqs: UnsafeMutablePointer<SheepRequest>
    let headers: UnsafeMutableRawPointer      // one sheep header per request, encoded once, kept for resends
    /// One index slot per request: where an index probe's 4-byte reply lands (SheepRequest.probeIndex).
    let probeSlots: UnsafeMutablePointer<UInt32>
    var freeList: [Int32]
    // FIFO of requests waiting to be sent (intrusive through nextQueued)
    var queueHead: Int32 = -1
    var queueTail: Int32 = -1
    var inFlightCount = 0                     // requests sent and not yet answered
    /// Told when this channel loses its node and gets it back (the LU turns a long loss into an ALUA state).
    let reachability: BackingReachability
    // After a reconnect: shared locks taken again and not yet answered; meanwhile every other request waits
    // in the held FIFO (same links as the queue), so none reaches a node that does not count us in yet.
    var rejoinPending = 0
    var heldHead: Int32 = -1
    var heldTail: Int32 = -1
    /// The LOCK_VDI payloads of the rejoin under way (sent from here, so a LUN deleted meanwhile is no matter).
    var rejoinPayloads: UnsafeMutableRawPointer? = nil

    // Send state: one SENDMSG at a time.
    var sendInFlight = false
    var sendBatch: [Int32] = []
    var sendSkip = 0                          // bytes of the first batch request already sent
    let iov: UnsafeMutablePointer<iovec>
    let msg: UnsafeMutablePointer<msghdr>

    // Receive state
    let rx: UnsafeMutableRawPointer
    var rxStart = 0
    var rxEnd = 0
    var recvInFlight = false
    var recvDirect = false
    let replyHeader: UnsafeMutableRawPointer
    var headerHave = 0
    var current: Int32 = -1                   // request whose payload is arriving (-1: header stage, -2: discard)
    var payloadLeft = 0
    var payloadDone = 0
    var replyResult: SheepResult = .success
    var replyVDI: UInt32 = 0
    /// attr_id of the reply being read (GET_VDI_ATTR).
    var replyAttr: UInt32 = 0

    // Connect state
    let sockaddrBuf: UnsafeMutableRawPointer
    var sockaddrLen: socklen_t = 0

    init(store: SheepStore<Host>, endpointIndex: Int, endpoint: SheepBackingSpec.Endpoint) {
        reachability = SheepReachability.of(endpointIndex: endpointIndex)
        self.store = store
        self.endpointIndex = endpointIndex
        self.endpoint = endpoint
        reqs = .allocate(capacity: SheepChannelLimits.maxRequests)
        reqs.initialize(repeating: SheepRequest(), count: SheepChannelLimits.maxRequests)
        headers = .allocate(byteCount: SheepChannelLimits.maxRequests * SheepWire.headerSizeBytes, alignment: 64)
        probeSlots = .allocate(capacity: SheepChannelLimits.maxRequests)
        probeSlots.initialize(repeating: 0, count: SheepChannelLimits.maxRequests)
        freeList = (0..<SheepChannelLimits.maxRequests).reversed().map { Int32($0) }
        iov = .allocate(capacity: SheepChannelLimits.batchRequests * 2)
        msg = .allocate(capacity: 1)
        msg.initialize(to: msghdr())
        rx = .allocate(byteCount: SheepChannelLimits.rxBytes, alignment: 64)
        replyHeader = .allocate(byteCount: SheepWire.headerSizeBytes, alignment: 8)
        sockaddrBuf = .allocate(byteCount: MemoryLayout<sockaddr_storage>.size, alignment: 8)
        sendBatch.reserveCapacity(SheepChannelLimits.batchRequests)
    }

    deinit {
        if fd >= 0 { close(fd) }
        rejoinPayloads?.deallocate()
        reqs.deallocate()
        headers.deallocate()
        probeSlots.deallocate()
        iov.deallocate()
        msg.deallocate()
        rx.deallocate()
        replyHeader.deallocate()
        sockaddrBuf.deallocate()
    }

    var freeRequests: Int { freeList.count }

    // MARK: - Submitting

    /// Queues a request. Returns false when the channel's request table is full (the caller fails the I/O
    /// with BUSY-like semantics through the SCSI layer, or retries at the next tick).
    /// With `probe`, `header` reads the piece's 4-byte index slot: its reply goes to this request's word of
    /// `probeSlots`, and `dest`/`destCapacity` are the piece's, for the read that follows.
    @discardableResult
    func submit(_ header: SheepRequestHeader, payload: UnsafeRawPointer?, payloadLength: Int,
                dest: UnsafeMutableRawPointer?, destCapacity: Int, waiter: SheepWaiter,
                probe: (index: Int, objectOffset: Int)? = nil) -> Bool {
        guard let slot = freeList.popLast() else { return false }
        let i = Int(slot)
        var gen = reqs[i].generation &+ 1
        if gen == 0 { gen = 1 }
        if let probe {
            probeSlots[i] = 0
            reqs[i] = SheepRequest(inUse: true, sent: false, generation: gen, payload: nil, payloadLength: 0,
                                   dest: UnsafeMutableRawPointer(probeSlots + i), destCapacity: SheepInodeLayout.slotBytes, waiter: waiter,
                                   probeIndex: Int32(probe.index), probeObjectOffset: Int32(probe.objectOffset),
                                   probeDest: dest, probeLength: destCapacity)
        } else {
            reqs[i] = SheepRequest(inUse: true, sent: false, generation: gen, payload: payload,
                                   payloadLength: payloadLength, dest: dest, destCapacity: destCapacity, waiter: waiter)
        }
        var h = header
        h.id = UInt32(slot) << 16 | UInt32(gen)
        // The shared record's GET_VDI_ATTR is an internal op: sheep refuses it under the client version.
        if h.protoVersion != SheepWire.internalProtoVersion { h.protoVersion = SheepWire.clientProtoVersion }
        h.encode(to: headers + i * SheepWire.headerSizeBytes)
        enqueue(slot)
        kick()
        return true
    }

    private func enqueue(_ slot: Int32) {
        reqs[Int(slot)].nextQueued = -1
        if rejoinPending > 0 && reqs[Int(slot)].waiter != .rejoin {
            if heldTail >= 0 { reqs[Int(heldTail)].nextQueued = slot } else { heldHead = slot }
            heldTail = slot
            return
        }
        if queueTail >= 0 { reqs[Int(queueTail)].nextQueued = slot } else { queueHead = slot }
        queueTail = slot
    }

    /// Makes progress: connect if needed, else send what is queued.
    func kick() {
        switch state {
        case .idle: startConnect()
        case .connecting, .backoff: break
        case .ready: if !sendInFlight && queueHead >= 0 { store.markDirty(self) }
        }
    }

    // MARK: - Connecting

    private func startConnect() {
        // Resolution happens at LUN open time too, so a name that resolved then resolves now (cached by the
        // resolver); numeric addresses and unix paths never block.
        guard let address = try? SheepSocketAddress.resolve(endpoint).first else {
            connectFailed(EHOSTUNREACH)
            return
        }
        let family = address.family
        withUnsafeBytes(of: address.storage) { _ = memcpy(sockaddrBuf, $0.baseAddress!, $0.count) }
        sockaddrLen = address.length
        fd = socket(family, RT_SOCK_STREAM | RT_SOCK_CLOEXEC, 0)
        if fd < 0 { connectFailed(errno); return }
        state = .connecting
        generation &+= 1
        let sqe = store.host.sqe()
        io_uring_prep_connect(sqe, fd, sockaddrBuf.assumingMemoryBound(to: sockaddr.self), sockaddrLen)
        sqe.pointee.user_data = ChannelOp(endpoint: endpointIndex, op: .connect, generation: generation).encode()
    }

    func onConnect(_ res: Int32) {
        guard state == .connecting else { return }
        if res < 0 {
            close(fd)
            fd = -1
            connectFailed(-res)
            return
        }
        if case .tcp = endpoint {
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(4))
        }
        let again = everConnected
        if again { store.logger.info("sheep \(endpoint): reconnected") }
        everConnected = true
        state = .ready
        backoffSeconds = 1
        downSinceTick = 0
        reachability.markUp()
        rxStart = 0; rxEnd = 0; headerHave = 0; current = -1
        if again { startRejoin() }
        armRecv()
        kick()
    }

    /// Takes the shared lock of every VDI locked through this endpoint again (SheepRejoin), holding every
    /// other request until sheep has answered them all. A rejoin cut short by another reconnect carries on:
    /// its locks were put back at the front of the queue.
    private func startRejoin() {
        guard rejoinPending == 0 else { return }
        let payloads = SheepRejoin.payloads(endpointIndex: endpointIndex)
        if payloads.isEmpty { return }
        heldHead = queueHead
        heldTail = queueTail
        queueHead = -1
        queueTail = -1
        rejoinPayloads?.deallocate()
        let total = payloads.reduce(0) { $0 + $1.count }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: max(1, total), alignment: 8)
        rejoinPayloads = buffer
        rejoinPending = payloads.count
        var at = 0
        for p in payloads {
            p.withUnsafeBytes { _ = memcpy(buffer + at, $0.baseAddress!, p.count) }
            let header = SheepRequestHeader.vdiLookup(.lockVDI, id: 0, snapID: 0, lockType: .shared)
            if !submit(header, payload: buffer + at, payloadLength: p.count, dest: nil, destCapacity: 0, waiter: .rejoin) {
                rejoinAnswered(nil)
            }
            at += p.count
        }
    }

    /// One lock of the rejoin answered (nil: it could not be sent). The last one lets the held requests go.
    private func rejoinAnswered(_ result: SheepResult?) {
        if result == .success {
            store.logger.warning("sheep \(endpoint): the node had dropped our shared lock of a VDI (it left the cluster); took it again")
        } else if let result, result != .vdiLocked {
            store.logger.error("sheep \(endpoint): taking a VDI's shared lock again failed: \(result.name)")
        }
        rejoinPending -= 1
        guard rejoinPending == 0 else { return }
        if heldHead >= 0 {
            if queueTail >= 0 { reqs[Int(queueTail)].nextQueued = heldHead } else { queueHead = heldHead }
            queueTail = heldTail
        }
        heldHead = -1
        heldTail = -1
        kick()
    }

    private func connectFailed(_ e: Int32) {
        state = .backoff
        if downSinceTick == 0 { downSinceTick = store.host.tick; reachability.markDown(atNanos: monotonicNanos()) }
        retryTick = store.host.tick + backoffSeconds
        store.logger.warning("sheep \(endpoint): connect failed (\(String(cString: strerror(e)))); retrying in \(backoffSeconds)s")
        backoffSeconds = min(SheepChannelLimits.maxBackoffSeconds, backoffSeconds * 2)
    }

    /// The connection broke: close it, put every unanswered request back in the queue, and reconnect.
    func broken(_ why: String) {
        guard state == .ready || state == .connecting else { return }
        store.logger.warning("sheep \(endpoint): connection lost (\(why)); resending \(inFlightCount) request(s)")
        if fd >= 0 { shutdown(fd, Int32(SHUT_RDWR)) }
        state = .backoff
        if downSinceTick == 0 { downSinceTick = store.host.tick; reachability.markDown(atNanos: monotonicNanos()) }
        retryTick = store.host.tick   // next tick reconnects
        requeueSent()
        closeWhenIdle()
    }

    private func requeueSent() {
        // Requests already sent go back to the front, in slot order (sheep executes them again; each is
        // idempotent: reads, writes of the same bytes, creates serialised by the home core, slot writes).
        var resend: [Int32] = []
        for i in 0..<SheepChannelLimits.maxRequests where reqs[i].inUse && reqs[i].sent {
            reqs[i].sent = false
            resend.append(Int32(i))
        }
        // Requests taken off the queue into the send batch but not (completely) sent are in neither the queue
        // nor the sent set: without this they would wait forever (no reply timeout runs for unsent requests).
        for s in sendBatch where reqs[Int(s)].inUse && !reqs[Int(s)].sent {
            resend.append(s)
        }
        inFlightCount = 0
        for s in resend.reversed() {
            reqs[Int(s)].nextQueued = queueHead
            queueHead = s
            if queueTail < 0 { queueTail = s }
        }
        sendBatch.removeAll(keepingCapacity: true)
        sendSkip = 0
        current = -1
        headerHave = 0
    }

    /// The fd is closed once the ring holds no operation on it.
    private func closeWhenIdle() {
        if !recvInFlight && !sendInFlight && fd >= 0 {
            close(fd)
            fd = -1
            generation &+= 1
        }
    }

    /// Once a second: reconnect after backoff, time out stuck replies, retry transient failures, give up.
    func onTick(_ tick: UInt64) {
        switch state {
        case .backoff:
            if fd >= 0 { closeWhenIdle() }
            if fd < 0 && tick >= retryTick { startConnect() }
            if downSinceTick > 0 && tick &- downSinceTick >= SheepChannelLimits.giveUpSeconds { failAll(.unavailable) }
        case .ready:
            var oldest: UInt64 = tick
            for i in 0..<SheepChannelLimits.maxRequests where reqs[i].inUse {
                if reqs[i].sent && reqs[i].sentTick < oldest { oldest = reqs[i].sentTick }
                if !reqs[i].sent && reqs[i].retryAtTick != 0 && tick >= reqs[i].retryAtTick {
                    reqs[i].retryAtTick = 0
                    enqueue(Int32(i))
                }
            }
            if tick &- oldest > SheepChannelLimits.replyTimeoutSeconds { broken("no reply for \(tick &- oldest)s") }
            kick()
        case .idle, .connecting:
            if state == .connecting && downSinceTick > 0 && tick &- downSinceTick >= SheepChannelLimits.giveUpSeconds {
                failAll(.unavailable)
            }
        }
    }

    /// The daemon is stopping: every waiting request fails now and nothing reconnects.
    func abandon() {
        failAll(.unavailable)
        if fd >= 0 { shutdown(fd, Int32(SHUT_RDWR)) }
        state = .backoff
        retryTick = UInt64.max
        downSinceTick = 0
    }

    /// Sheep is gone for good: every waiting request fails.
    private func failAll(_ e: StoreError) {
        // Empty the table first: answering a waiter may submit new requests to this channel.
        var waiters: [SheepWaiter] = []
        for i in 0..<SheepChannelLimits.maxRequests where reqs[i].inUse {
            waiters.append(reqs[i].waiter)
            release(Int32(i))
        }
        queueHead = -1
        queueTail = -1
        heldHead = -1
        heldTail = -1
        rejoinPending = 0
        inFlightCount = 0
        sendBatch.removeAll(keepingCapacity: true)
        sendSkip = 0
        let n = waiters.count
        for w in waiters { store.reply(w, result: .eio, bytes: 0, failure: e) }
        if n > 0 { store.logger.error("sheep \(endpoint): unreachable for \(SheepChannelLimits.giveUpSeconds)s; failed \(n) request(s)") }
        downSinceTick = store.host.tick
    }

    /// Drops the requests of store request `tag` that have not gone out (queued, held for a rejoin, or
    /// waiting to retry), answering each as failed; returns how many. An aborted task's write held while
    /// the node is away must not reach the node once the abort is answered. Requests on the wire, or in
    /// the batch being sent, go on: sheep may already have them.
    func cancel(tag: UInt64) -> Int {
        var dropped = 0
        func unlink(_ head: inout Int32, _ tail: inout Int32) {
            var prev: Int32 = -1
            var at = head
            while at >= 0 {
                let next = reqs[Int(at)].nextQueued
                if reqs[Int(at)].waiter == .request(tag: tag) && !sendBatch.contains(at) {
                    if prev >= 0 { reqs[Int(prev)].nextQueued = next } else { head = next }
                    if tail == at { tail = prev }
                    reqs[Int(at)].retryAtTick = 0
                    release(at)
                    dropped += 1
                } else {
                    prev = at
                }
                at = next
            }
        }
        unlink(&queueHead, &queueTail)
        unlink(&heldHead, &heldTail)
        for i in 0..<SheepChannelLimits.maxRequests
        where reqs[i].inUse && !reqs[i].sent && reqs[i].retryAtTick != 0 && reqs[i].waiter == .request(tag: tag) {
            reqs[i].retryAtTick = 0
            release(Int32(i))
            dropped += 1
        }
        return dropped
    }

    private func release(_ slot: Int32) {
        reqs[Int(slot)].inUse = false
        reqs[Int(slot)].waiter = .none
        freeList.append(slot)
    }

    // MARK: - Sending

    /// Sends up to `batchRequests` queued requests in one SENDMSG.
    func flush() {
        guard state == .ready, !sendInFlight, fd >= 0 else { return }
        if sendBatch.isEmpty {
            while queueHead >= 0 && sendBatch.count < SheepChannelLimits.batchRequests {
                let s = queueHead
                queueHead = reqs[Int(s)].nextQueued
                if queueHead < 0 { queueTail = -1 }
                sendBatch.append(s)
            }
        }
        if sendBatch.isEmpty { return }
        var v = 0
        var skip = sendSkip
        for s in sendBatch {
            let i = Int(s)
            v = addIov(v, headers + i * SheepWire.headerSizeBytes, SheepWire.headerSizeBytes, &skip)
            if reqs[i].payloadLength > 0, let p = reqs[i].payload {
                v = addIov(v, UnsafeMutableRawPointer(mutating: p), reqs[i].payloadLength, &skip)
            }
        }
        msg.pointee.msg_iov = iov
        msg.pointee.msg_iovlen = v
        let sqe = store.host.sqe()
        io_uring_prep_sendmsg(sqe, fd, msg, UInt32(MSG_NOSIGNAL))
        sqe.pointee.user_data = ChannelOp(endpoint: endpointIndex, op: .send, generation: generation).encode()
        sendInFlight = true
    }

    @inline(__always)
    private func addIov(_ v: Int, _ p: UnsafeMutableRawPointer, _ len: Int, _ skip: inout Int) -> Int {
        appendIovec(iov, v, p, len, &skip)
    }

    func onSend(_ res: Int32) {
        sendInFlight = false
        if state != .ready { closeWhenIdle(); return }
        if res < 0 { broken("send: \(String(cString: strerror(-res)))"); return }
        var left = Int(res) + sendSkip
        var done = 0
        for s in sendBatch {
            let i = Int(s)
            let bytes = SheepWire.headerSizeBytes + reqs[i].payloadLength
            if left < bytes { break }
            left -= bytes
            reqs[i].sent = true
            reqs[i].sentTick = store.host.tick
            inFlightCount += 1
            done += 1
        }
        sendBatch.removeFirst(done)
        sendSkip = sendBatch.isEmpty ? 0 : left
        if !sendBatch.isEmpty || queueHead >= 0 { flush() }
    }

    // MARK: - Receiving

    private func armRecv() {
        guard state == .ready, !recvInFlight, fd >= 0 else { return }
        let sqe = store.host.sqe()
        if current >= 0, rxStart == rxEnd, payloadLeft >= 16_384, let d = reqs[Int(current)].dest {
            // A large reply payload goes straight to its buffer.
            recvDirect = true
            io_uring_prep_recv(sqe, fd, d + payloadDone, payloadLeft, 0)
        } else {
            recvDirect = false
            if rxStart == rxEnd { rxStart = 0; rxEnd = 0 }
            if rxEnd == SheepChannelLimits.rxBytes {
                memmove(rx, rx + rxStart, rxEnd - rxStart)
                rxEnd -= rxStart
                rxStart = 0
            }
            io_uring_prep_recv(sqe, fd, rx + rxEnd, SheepChannelLimits.rxBytes - rxEnd, 0)
        }
        sqe.pointee.user_data = ChannelOp(endpoint: endpointIndex, op: .recv, generation: generation).encode()
        recvInFlight = true
    }

    func onRecv(_ res: Int32) {
        recvInFlight = false
        if state != .ready { closeWhenIdle(); return }
        if res <= 0 { broken(res == 0 ? "closed by sheep" : "recv: \(String(cString: strerror(-res)))"); return }
        if recvDirect {
            payloadDone += Int(res)
            payloadLeft -= Int(res)
            if payloadLeft == 0 { replyComplete() }
        } else {
            rxEnd += Int(res)
        }
        parse()
        if state == .ready { armRecv() }
    }

    private func parse() {
        while state == .ready && rxStart < rxEnd {
            if current == -1 {
                let n = min(SheepWire.headerSizeBytes - headerHave, rxEnd - rxStart)
                memcpy(replyHeader + headerHave, rx + rxStart, n)
                headerHave += n
                rxStart += n
                if headerHave < SheepWire.headerSizeBytes { return }
                headerHave = 0
                startReply()
                continue
            }
            let n = min(payloadLeft, rxEnd - rxStart)
            if current >= 0, let d = reqs[Int(current)].dest {
                memcpy(d + payloadDone, rx + rxStart, n)
            }
            rxStart += n
            payloadDone += n
            payloadLeft -= n
            if payloadLeft == 0 { replyComplete() }
        }
    }

    private func startReply() {
        let rsp = SheepResponseHeader(from: UnsafeRawPointer(replyHeader))
        let slot = Int32(rsp.id >> 16)
        let gen = UInt16(truncatingIfNeeded: rsp.id)
        let length = Int(rsp.dataLength)
        guard slot < SheepChannelLimits.maxRequests, reqs[Int(slot)].inUse, reqs[Int(slot)].sent,
              reqs[Int(slot)].generation == gen else {
            // A reply matching nothing we sent: the stream cannot be trusted (sheepdog#39).
            broken("reply with unknown id \(rsp.id)")
            return
        }
        replyResult = rsp.result
        replyVDI = rsp.vdiID
        replyAttr = rsp.attrID
        if length > reqs[Int(slot)].destCapacity {
            broken("reply of \(length) bytes for a \(reqs[Int(slot)].destCapacity)-byte request")
            return
        }
        current = slot
        payloadLeft = length
        payloadDone = 0
        if length == 0 { replyComplete() }
    }

    private func replyComplete() {
        let slot = current
        current = -1
        guard slot >= 0 else { return }
        let i = Int(slot)
        inFlightCount -= 1
        let result = replyResult
        if result.isTransient && reqs[i].retries < SheepChannelLimits.maxTransientRetries {
            // WAIT_FOR_JOIN, HALT, ...: the cluster is busy; try the same request again in a second.
            reqs[i].retries += 1
            reqs[i].sent = false
            reqs[i].retryAtTick = store.host.tick + 1
            return
        }
        let w = reqs[i].waiter
        let bytes = payloadDone
        if case .rejoin = w {
            release(slot)
            rejoinAnswered(result)
            return
        }
        if reqs[i].probeIndex >= 0 && result == .success, case .request = w, let d = reqs[i].probeDest {
            let piece = (index: Int(reqs[i].probeIndex), objectOffset: Int(reqs[i].probeObjectOffset))
            let length = reqs[i].probeLength
            // A short reply names no owner: the piece fails rather than read as a hole.
            let owner: UInt32? = bytes == SheepInodeLayout.slotBytes ? UInt32(littleEndian: probeSlots[i]) : nil
            release(slot)
            store.probeAnswered(w, piece, owner: owner, length: length, dest: d, channel: self)
            return
        }
        if result == .inodeInvalidated, case .request = w, invalidated(i) {
            release(slot)
            return
        }
        if result == .readonly, case .request = w {
            let h = SheepRequestHeader(from: UnsafeRawPointer(headers + i * SheepWire.headerSizeBytes))
            if h.opcode == .writeObj && store.readonlyWrite(w, oid: h.oid, objectOffset: Int(h.objOffset),
                                                                  length: reqs[i].payloadLength,
                                                                  data: reqs[i].payload) {
                release(slot)
                return
            }
        }
        release(slot)
        store.reply(w, result: result, bytes: bytes, failure: nil, vdiID: replyVDI, attrID: replyAttr)
    }

    /// INODE_INVALIDATED for a piece of a store request: another gateway changed the index. The home core
    /// reloads the inode and redoes the piece; false when it cannot be handed over.
    private func invalidated(_ i: Int) -> Bool {
        let h = SheepRequestHeader(from: UnsafeRawPointer(headers + i * SheepWire.headerSizeBytes))
        let r = reqs[i]
        if r.probeIndex >= 0, let d = r.probeDest {
            return store.invalidatedPiece(r.waiter, .read(index: Int(r.probeIndex), objectOffset: Int(r.probeObjectOffset),
                                                          length: r.probeLength, dest: d))
        }
        let idx = Int(SheepOID.dataIndex(of: h.oid)), off = Int(h.objOffset)
        switch h.opcode {
        case .readObj:
            guard let d = r.dest else { return false }
            return store.invalidatedPiece(r.waiter, .read(index: idx, objectOffset: off, length: Int(h.dataLength), dest: d))
        case .writeObj, .createAndWriteObj:
            guard let p = r.payload else { return false }
            return store.invalidatedPiece(r.waiter, .write(index: idx, objectOffset: off, length: r.payloadLength, data: p))
        default:
            return false
        }
    }
}
