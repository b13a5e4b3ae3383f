// One client connection, served by one thread with a poll loop: read what has arrived, cut it into
// requests, run them through the scheduler, write replies in completion order.
//
// Like a sheep (request.c), a connection accepts any number of requests in flight and executes them
// concurrently; replies go out in completion order, matched by id. The order is chosen by a scheduler:
//   fifo     requests run one after another in arrival order (replies in request order);
//   random   the requests that arrived together run interleaved in a seeded random order, one step at a
//            time (a create is two steps, a snapshot two), so replies overtake each other;
//   reorder  as random, but over fixed windows of N consecutive requests, so that a client keeping at least
//            N requests in flight sees exactly the same interleaving and reply order for the same seed (a
//            window that does not fill runs after the connection has been idle for a short while).
// Other connections run on their own threads, so their requests interleave with these for real.

#if canImport(Glibc)
import Glibc
#endif
import SheepProtocol
import TestSupport

enum ReplyOrder: String, Sendable, CaseIterable {
    case fifo, random, reorder
}

/// A request waiting to run: its payload is either still in the input buffer or owned.
private struct QueuedRequest {
    enum Payload {
        case none
        case input(offset: Int, count: Int)
        case owned([UInt8])
    }
    var header: SheepRequestHeader
    var payload: Payload
    var phase: RequestPhase = .start
    var started = false
    /// Monotonic nanoseconds before which a delayed request must not run.
    var notBefore: UInt64 = 0
}

final class ClientConnection: @unchecked Sendable {
    /// Largest payload accepted in one request; a larger one closes the connection (sheep would try to
    /// allocate it). Objects above 64 MiB (block_size_shift > 26) are not supported by the test server.
    static let maxPayloadBytes = SheepCluster.maxObjectBytes
    /// Stop reading while this many reply bytes are unsent, so a client that does not read cannot make the
    /// server buffer without bound.
    static let maxOutputBacklogBytes = 32 << 20
    static let initialInputBytes = 1 << 20

    let fd: Int32
    /// Accept order, 0-based: selects the seeded streams.
    let number: UInt64
    private unowned let server: SheepTestServer
    private let cluster: SheepCluster
    /// The sheep node this connection reached.
    let node: Int
    private let out = OutputBuffer()
    private var input: UnsafeMutableRawPointer
    private var inputCapacity: Int
    private var inputStart = 0
    private var inputEnd = 0
    private var requestCount: UInt64 = 0
    private var dice: FaultDice
    private var order: SeededRandom
    private var held: [QueuedRequest] = []
    private var delayed: [QueuedRequest] = []
    private var lastInputNanoseconds = monotonicNanoseconds()
    private var closed = false

    init(fd: Int32, number: UInt64, server: SheepTestServer, node: Int = 0) {
        self.fd = fd
        self.number = number
        self.node = node
        self.server = server
        cluster = server.cluster
        inputCapacity = Self.initialInputBytes
        input = .allocate(byteCount: inputCapacity, alignment: 64)
        dice = FaultDice(seed: server.options.seed, connection: number)
        order = SeededRandom(seed: server.options.seed, stream: number, purpose: 4)
    }

    deinit { input.deallocate() }

    func run() {
        setNonBlocking(fd)
        while !closed {
            if !server.waitWhilePaused() { break }
            if server.isStopping { break }
            if !pollOnce() { break }
        }
        closed = true
    }

    /// One pass that never waits, for a caller driving this connection from its own loop (the ring simulation
    /// in the tests): reads what arrived, runs it, writes what the socket takes. False when the connection is over.
    func serveAvailable() -> Bool {
        if !drivenFromOutside {
            setNonBlocking(fd)
            drivenFromOutside = true
        }
        if closed { return false }
        if !pollOnce(wait: false) { closed = true }
        return !closed
    }

    private var drivenFromOutside = false

    // MARK: - Loop

    private func pollOnce(wait: Bool = true) -> Bool {
        let now = monotonicNanoseconds()
        var timeoutMs: Int32 = -1
        if let due = delayed.map(\.notBefore).min() {
            timeoutMs = Int32(clamping: due > now ? (due - now + 999_999) / 1_000_000 : 0)
        }
        if !held.isEmpty {
            let idleDue = lastInputNanoseconds + UInt64(server.options.reorderIdleMilliseconds) * 1_000_000
            let t = Int32(clamping: idleDue > now ? (idleDue - now + 999_999) / 1_000_000 : 0)
            timeoutMs = timeoutMs < 0 ? t : min(timeoutMs, t)
        }
        let backlogged = out.pendingBytes >= Self.maxOutputBacklogBytes
        var pfd = pollfd(fd: fd, events: Int16(backlogged ? 0 : POLLIN), revents: 0)
        if !out.isEmpty { pfd.events |= Int16(POLLOUT) }
        let rc = poll(&pfd, 1, wait ? timeoutMs : 0)
        if rc < 0 {
            return errno == EINTR
        }
        if pfd.revents & Int16(POLLNVAL) != 0 { return false }
        if pfd.revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 && !backlogged {
            if !readAndRun() { return false }
        }
        if (!delayed.isEmpty || !held.isEmpty) && !server.waitWhilePaused() { return false }
        runDueDelayed()
        if !held.isEmpty {
            let idleDue = lastInputNanoseconds + UInt64(server.options.reorderIdleMilliseconds) * 1_000_000
            if monotonicNanoseconds() >= idleDue { runHeld(all: true) }
        }
        if !out.isEmpty && !out.flush(to: fd) { return false }
        return true
    }

    /// Reads what is available, parses complete requests and runs them. False when the connection is over.
    private func readAndRun() -> Bool {
        while true {
            if inputEnd == inputCapacity { growInput(minimumFree: 1) }
            let n = recv(fd, input + inputEnd, inputCapacity - inputEnd, Int32(MSG_DONTWAIT))
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { return true }
                return false
            }
            if n == 0 { return false }
            inputEnd += n
            lastInputNanoseconds = monotonicNanoseconds()
            guard parseAndRun() else { return false }
            if out.pendingBytes >= Self.maxOutputBacklogBytes { return true }
            if inputEnd < inputCapacity { return true }  // drained what was there
        }
    }

    /// Cuts complete requests out of the input buffer and hands them to the scheduler.
    private func parseAndRun() -> Bool {
        // A pause taken while this thread sat in poll still holds back what arrived.
        guard server.waitWhilePaused() else { return false }
        var batch: [QueuedRequest] = []
        let plan = server.currentFaults()
        var cursor = inputStart
        var cutAfterBatch = false
        while !cutAfterBatch && inputEnd - cursor >= SheepWire.headerSizeBytes {
            let h = SheepRequestHeader(from: input + cursor)
            let needsPayload = h.flags.contains(.write)
            let payloadCount = needsPayload ? Int(h.dataLength) : 0
            if payloadCount > Self.maxPayloadBytes {
                server.log.warning("connection \(number): request \(h.opcode) id \(h.id) carries \(payloadCount) bytes, over the \(Self.maxPayloadBytes)-byte limit; closing")
                return false
            }
            if !needsPayload && h.dataLength > 0 && Self.carriesData(h.opcode) {
                // sheep reads no payload without the WRITE flag, so the payload that follows would be taken
                // for the next header: the stream is desynchronised. Say so and close.
                server.log.warning("connection \(number): \(h.opcode) id \(h.id) has data_length \(h.dataLength) but no WRITE flag; the stream would desynchronise, closing")
                return false
            }
            let total = SheepWire.headerSizeBytes + payloadCount
            // Incomplete: wait for more (the buffer is grown after this batch if the request cannot fit).
            if inputEnd - cursor < total { break }
            requestCount += 1
            let payload: QueuedRequest.Payload = payloadCount > 0
                ? .input(offset: cursor + SheepWire.headerSizeBytes, count: payloadCount) : .none
            var q = QueuedRequest(header: h, payload: payload)
            if let plan {
                switch dice.drop(plan, sequence: requestCount) {
                case .none:
                    break
                case .beforeExecuting:
                    server.log.info("connection \(number): fault cuts the connection at request \(requestCount) (\(h.opcode) id \(h.id)), not executed")
                    return false
                case .afterExecuting:
                    server.log.info("connection \(number): fault cuts the connection after executing request \(requestCount) (\(h.opcode) id \(h.id))")
                    batch.append(q)
                    cursor += total
                    cutAfterBatch = true
                    continue
                }
            }
            if let plan, case let ms = dice.delayMilliseconds(plan), ms > 0 {
                q.payload = own(q.payload)
                q.notBefore = monotonicNanoseconds() + UInt64(ms) * 1_000_000
                delayed.append(q)
            } else {
                batch.append(q)
            }
            cursor += total
        }
        switch server.options.order {
        case .fifo, .random:
            run(&batch, interleave: server.options.order == .random)
        case .reorder:
            for q in batch { var q = q; q.payload = own(q.payload); held.append(q) }
            runHeld(all: cutAfterBatch)
        }
        if cutAfterBatch {
            // The connection breaks with these replies unsent.
            out.discardAll()
            return false
        }
        // Everything before `cursor` has run or owns a copy: drop it.
        inputStart = cursor
        compactInput()
        // A request larger than the buffer needs more room before the next read.
        if inputEnd - inputStart >= SheepWire.headerSizeBytes {
            let h = SheepRequestHeader(from: input + inputStart)
            let payloadCount = h.flags.contains(.write) ? Int(h.dataLength) : 0
            let total = SheepWire.headerSizeBytes + payloadCount
            if total > inputCapacity { growInput(minimumFree: total - (inputEnd - inputStart)) }
        }
        return true
    }

    /// Opcodes whose data_length counts payload bytes the client sends.
    private static func carriesData(_ op: SheepOpcode) -> Bool {
        switch op {
        case .writeObj, .createAndWriteObj, .newVDI, .lockVDI, .getVDIInfo, .delVDI: return true
        default: return false
        }
    }

    private func own(_ p: QueuedRequest.Payload) -> QueuedRequest.Payload {
        if case .input(let offset, let count) = p {
            return .owned(Array(UnsafeRawBufferPointer(start: input + offset, count: count)))
        }
        return p
    }

    private func compactInput() {
        if inputStart == inputEnd {
            inputStart = 0
            inputEnd = 0
        } else if inputStart > 0 && inputStart > inputCapacity / 2 {
            input.copyMemory(from: input + inputStart, byteCount: inputEnd - inputStart)
            inputEnd -= inputStart
            inputStart = 0
        }
    }

    private func growInput(minimumFree: Int) {
        if inputStart > 0 {
            input.copyMemory(from: input + inputStart, byteCount: inputEnd - inputStart)
            inputEnd -= inputStart
            inputStart = 0
        }
        if inputCapacity - inputEnd >= minimumFree { return }
        var cap = inputCapacity * 2
        while cap - inputEnd < minimumFree { cap *= 2 }
        let nb = UnsafeMutableRawPointer.allocate(byteCount: cap, alignment: 64)
        nb.copyMemory(from: input, byteCount: inputEnd)
        input.deallocate()
        input = nb
        inputCapacity = cap
    }

    private func runHeld(all: Bool) {
        let window = max(1, server.options.reorderWindow)
        while held.count >= window || (all && !held.isEmpty) {
            let n = min(window, held.count)
            var batch = Array(held[0..<n])
            held.removeFirst(n)
            run(&batch, interleave: true)
        }
    }

    private func runDueDelayed() {
        guard !delayed.isEmpty else { return }
        let now = monotonicNanoseconds()
        var due: [QueuedRequest] = []
        delayed.removeAll { q in
            if q.notBefore <= now { due.append(q); return true }
            return false
        }
        if !due.isEmpty { run(&due, interleave: server.options.order != .fifo) }
    }

    // MARK: - Scheduler

    /// Runs a batch to completion. With `interleave`, each step picks a random unfinished request; a cluster
    /// op waits while another request of the batch holds the cluster-op lock (between snapshot steps).
    private func run(_ batch: inout [QueuedRequest], interleave: Bool) {
        let plan = server.currentFaults()
        while !batch.isEmpty {
            var i = interleave ? order.below(batch.count) : 0
            if !batch[i].started && SheepCluster.isClusterOp(batch[i].header.opcode),
               let holder = batch.firstIndex(where: { if case .commitSnapshot = $0.phase { return true }; return false }) {
                i = holder
            }
            if step(&batch[i], plan: plan) { batch.remove(at: i) }
        }
    }

    /// One step of one request; true when it has replied.
    private func step(_ q: inout QueuedRequest, plan: FaultPlan?) -> Bool {
        let h = q.header
        if !q.started {
            q.started = true
            if let early = Self.admissionCheck(h) {
                cluster.reply(out, h, early)
                return true
            }
            if let plan, SheepCluster.isObjectIO(h.opcode), let injected = dice.injectedError(plan, opcode: h.opcode) {
                cluster.reply(out, h, injected)
                return true
            }
            let result: StepResult
            switch q.payload {
            case .none:
                result = cluster.begin(h, UnsafeRawBufferPointer(start: nil, count: 0), out: out, node: node)
            case .input(let offset, let count):
                result = cluster.begin(h, UnsafeRawBufferPointer(start: input + offset, count: count), out: out, node: node)
            case .owned(let bytes):
                result = bytes.withUnsafeBytes { cluster.begin(h, $0, out: out, node: node) }
            }
            q.payload = .none  // consumed by the first step
            if case .pending(let phase) = result { q.phase = phase; return false }
            return true
        }
        _ = cluster.resume(h, phase: q.phase, out: out)
        return true
    }

    /// `queue_request`'s checks before an op runs.
    static func admissionCheck(_ h: SheepRequestHeader) -> SheepResult? {
        if h.opcode.rawValue >= SheepWire.firstInternalOpcode {
            // Internal ops need the release's internal version; of them the test server implements only
            // GET_VDI_ATTR, the one a client uses (dog vdi setattr/getattr).
            guard h.protoVersion == internalProtoVersion else { return .verMismatch }
            return h.opcode == .getVDIAttr ? nil : .invalidParms
        }
        if h.protoVersion > SheepWire.serverProtoVersion { return .verMismatch }
        return nil
    }

    /// `SD_SHEEP_PROTO_VER` of sheepdog v1.0+.
    static let internalProtoVersion = SheepWire.internalProtoVersion

    /// Called by the server (under its registry lock) to make the thread leave its poll.
    func shutdownSocket() {
        shutdown(fd, Int32(SHUT_RDWR))
    }
}
