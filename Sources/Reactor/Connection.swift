import Floor
import URing
import ISCSIWire
import Store
import SCSI
import ISCSI
import NBD
import CURing
import Glibc

/// The operational values a connection runs with after login (RFC 7143 §13), in the form the I/O path uses.
public struct ConnectionParams {
    var headerDigest = false
    var dataDigest = false
    /// The most data we may put in one PDU (the initiator's MaxRecvDataSegmentLength).
    var maxSendDataSegment = 8192
    /// The most data we accept in one PDU (our MaxRecvDataSegmentLength; 8192 during login).
    var maxRecvDataSegment = 8192
    var maxBurst = 262_144
    var firstBurst = 65_536
    var immediateData = true
    var initialR2T = true
    var defaultTime2Wait: UInt16 = 2
    var defaultTime2Retain: UInt16 = 0
}

public enum ConnPhase: UInt8 {
    /// Login PDUs only, until the final Login Response with T=1, NSG=3.
    case login
    /// Normal or discovery session in full feature phase.
    case fullFeature
    /// Logout accepted: only the Logout Response still goes out, then the socket closes.
    case loggingOut
    /// Being torn down: waits for its in-flight operations to complete, then releases everything.
    case closing
}

/// The protocol a connection speaks, fixed by the listener that accepted it. Both share the reactor's
/// connection table, buffers, send queue and store path; only parsing and replies differ.
public enum FrontEnd: UInt8 {
    case iscsi
    /// NBD (NBDConnection.swift): `phase` is `.login` during the handshake, `.fullFeature` in transmission.
    case nbd
}

/// NBD's receive stage as the shared receive path sees it (iSCSI's framing is `PDUReceiver`): in `.data` a
/// recv may land straight in `sinkPtr`.
public enum RxStage: UInt8 {
    case bhs, data
}

public final class Connection {
    static let rxBytes = 16_384
    static let headerAreaBytes = PDUReceiver.headerAreaBytes
    /// A data segment with at least this much still to come is received straight into its sink, not staged.
    static let directRecvMinBytes = 4096
    /// Largest data segment accepted on control PDUs.
    static let maxControlDataBytes = 65_536
    static let maxTextResponseBytes = 65_536

    /// The reactor owns its connections and outlives them; the control plane only posts to it, never ends it.
    /// Strong, and immutable: the compiler then borrows it for every call without a retain and a release (an
    /// unowned(unsafe) reference is retained around each use). The cycle ends when the reactor lets go of the
    /// connection: on close, and at the end of `Reactor.shutdownAll` for any still there.
    let reactor: Reactor
    let frontEnd: FrontEnd
    let index: Int
    var generation: UInt32
    var fd: Int32
    var phase: ConnPhase = .login
    var peer: String
    var local: String
    var cid: UInt16 = 0
    /// Order of admission on this core: the oldest connection still in login is evicted first.
    var admission: UInt64 = 0
    /// Counted in the reactor's per-address tally of connections not logged in.
    var countedAsLogin = false

    // Receive state
    let rx: UnsafeMutableRawPointer
    var rxStart = 0
    var rxEnd = 0
    var recvInFlight = false
    var recvDirect = false             // the recv in flight writes straight into the data sink
    /// iSCSI PDU framing; `hdr` is its header area.
    var receiver: PDUReceiver
    let hdr: UnsafeMutableRawPointer
    /// The task whose buffer slot the current SCSI Command's or Data-Out's data segment goes to.
    var sinkTask: Int32 = -1
    // NBD's receive state (NBDConnection.swift).
    var stage: RxStage = .bhs
    var stageHave = 0
    var stageNeed = 48
    var dataLength = 0
    var sinkPtr: UnsafeMutableRawPointer? = nil
    var stalled = false                // parser waits for a buffer slot or send-queue room
    var onSlotWaitList = false
    var stalledOnCap = false           // stalled because this connection holds its share of buffers
    var slotsHeld = 0
    var controlData: [UInt8] = []

    /// `--op stat --mode conn` and the metrics; this core alone writes them.
    var counters = ConnectionCounters()

    // Send state
    var out: OutQueue
    var sendInFlight = false
    var dirty = false

    // Session state
    var params = ConnectionParams()
    var statSN: UInt32 = 0
    var cmdSNWindow = CmdSNWindow()
    var cmdWindow: Int
    var login = LoginStateMachine()
    var loginStarted = false
    var isDiscovery = false
    var isid: UInt64 = 0
    var tsih: UInt16 = 0
    /// The session's target. A configuration change replaces it; tasks in flight hold the one they started under.
    var target: TargetRuntime? = nil { didSet { if target !== oldValue { binding = nil } } }
    var nexus: Nexus? = nil { didSet { if nexus !== oldValue { binding = nil } } }
    /// `target` and `nexus` as one object that each command holds while in flight; made on first use after
    /// either changes, so a command costs one reference count and not two.
    private var binding: SessionBinding? = nil

    @inline(__always)
    func sessionBinding() -> SessionBinding? {
        if let binding { return binding }
        return makeSessionBinding()
    }

    private func makeSessionBinding() -> SessionBinding? {
        guard let target, let nexus else { return nil }
        let made = SessionBinding(target: target, nexus: nexus)
        binding = made
        return made
    }
    /// Set when the session ended with commands still at a store: the nexus whose next session waits for them.
    var drainingNexus: Nexus? = nil
    /// The same for an NBD connection: the export whose next connections wait.
    var drainingExport: (tid: Int, lun: UInt64)? = nil
    /// A login that succeeded while an older session of its initiator port was still running (see
    /// `Runtime.sessionMayStart`): its final response waits, retried from the loop within the login timeout.
    var parkedLogin: ParkedLogin? = nil
    /// The answer to a checked CHAP response, held by the login throttle (LoginThrottle) until its turn.
    var heldLogin: HeldLogin? = nil
    var initiatorName = ""
    /// How the session authenticated: the CHAP account it proved it knows, nil for none. Re-checked against
    /// the target's accounts whenever a configuration is published.
    var chapAccount: CHAPAccount? = nil
    var text = TextExchange()

    // Tasks
    let tasks: UnsafeMutablePointer<IOTask>
    let taskCapacity: Int
    /// Tasks [0, tasksInitialized) have been used at least once; the rest of the table is reserved but not yet
    /// touched, so an idle session costs only the pages it has used.
    var tasksInitialized = 0
    var freeTask: Int32 = -1
    var activeTasks = 0
    var orderWaiting = 0               // tasks in .waitingOrder or .orderMarker: behind a CmdSN gap
    var parkedWithData = 0             // of those, .waitingOrder ones keeping immediate data (and its slot)
    var outWaiters = TaskQueue()       // tasks in .waitingOutSpace
    var slotQueue = TaskQueue()        // tasks in .waitingSlot, in CmdSN order
    var cmdSNGap = CmdSNGapWatch()
    var storeInFlight = 0
    /// Logout and task management responses held until the shared SCSI state changes they made are in sheep
    /// (at most SharedStateLimits.heldResponsesMax), and how many of those changes are still awaited.
    var heldResponses: [HeldResponse] = []
    var sharedChangesAwaited = 0

    /// Login timeout, send stall, NOP-In ping and Data-Out timeout, fed by the reactor's tick.
    var liveness: ConnectionLiveness

    /// NBD front end state (unused on iSCSI connections).
    var nbd = NBDConnectionState()

    init(reactor: Reactor, index: Int, generation: UInt32, fd: Int32, peer: String, local: String,
         frontEnd: FrontEnd = .iscsi) {
        self.reactor = reactor
        self.frontEnd = frontEnd
        self.index = index
        self.generation = generation
        self.fd = fd
        self.peer = peer
        self.local = local
        // Fixed-size memory comes from this index's region of the core's ConnectionMemory, not the heap.
        let memory = reactor.connectionMemory.region(index)
        let layout = reactor.connectionMemory.layout
        rx = memory + layout.rx
        hdr = memory + layout.header
        receiver = PDUReceiver(header: hdr)
        out = OutQueue(capacity: reactor.config.sendQueueRecords, memory: memory + layout.out)
        cmdWindow = reactor.config.commandWindow
        taskCapacity = reactor.taskCapacity
        tasks = (memory + layout.tasks).bindMemory(to: IOTask.self, capacity: taskCapacity)
        nbd.requestMemory = memory + layout.nbdRequests
        liveness = ConnectionLiveness(tick: reactor.tick)
    }

    deinit {
        releaseMemory()
    }

    /// Ends the lifetimes of the values in the connection's region (the reactor then returns its pages).
    func releaseMemory() {
        deinitializeTasks()
        nbd.deinitializeRequests()
    }

    /// Ends the lifetimes of the tasks initialized so far; the next command initializes its task again.
    private func deinitializeTasks() {
        tasks.deinitialize(count: tasksInitialized)
        tasksInitialized = 0
    }

    // MARK: - Receive

    /// Arms the next recv: into the staging buffer, or straight into the data sink when the rest of a large
    /// data segment is not staged yet (so write data lands in its buffer slot without a copy).
    ///
    /// `direct` is where the front end would have the next bytes land (`armISCSIRecv`, `armNBDRecv`), asked only
    /// when nothing is staged; nil stages them.
    @inline(__always)
    func armRecv(direct: () -> (UnsafeMutableRawPointer, Int)? = { nil }) {
        guard !recvInFlight, phase != .closing, !stalled else { return }
        let sqe = reactor.ring.sqe()
        if rxStart == rxEnd, let (p, n) = direct() {
            recvDirect = true
            io_uring_prep_recv(sqe, fd, p, n, 0)
        } else {
            recvDirect = false
            if rxStart == rxEnd { rxStart = 0; rxEnd = 0 }
            if rxEnd == Connection.rxBytes {
                // Compact: move the unparsed tail to the front.
                let n = rxEnd - rxStart
                memmove(rx, rx + rxStart, n)
                rxStart = 0
                rxEnd = n
            }
            io_uring_prep_recv(sqe, fd, rx + rxEnd, Connection.rxBytes - rxEnd, 0)
        }
        sqe.pointee.user_data = ConnectionOp(connection: index, generation: generation).encode(.recv)
        recvInFlight = true
    }

    /// Arms the next recv of an iSCSI connection, straight into the data segment's sink where the receiver
    /// allows it.
    @inline(__always)
    func armISCSIRecv() {
        armRecv { self.receiver.directSpace(minBytes: Connection.directRecvMinBytes) }
    }

    // MARK: - Events
    //
    // The front end is chosen once per event, here: each event's common part, then one switch on `frontEnd`
    // into the iSCSI handler (below and FullFeature.swift) or the NBD one (NBDConnection.swift). Nothing
    // below a handler asks which front end it is.

    /// A recv completed.
    func onRecv(_ res: Int32) {
        recvInFlight = false
        if phase == .closing { reactor.maybeRelease(self); return }
        if res == 0 {
            reactor.closeConnection(self, reason: "peer closed")
            return
        }
        if res < 0 {
            // Staged: right for either front end (a direct recv only saves a copy).
            socketFailed("recv", -res) { $0.armRecv() }
            return
        }
        liveness.received(tick: reactor.tick)
        memoryTrimmed = false
        counters.rxBytes &+= UInt64(res)
        switch frontEnd {
        case .iscsi: iscsiReceived(Int(res))
        case .nbd: nbdReceived(Int(res))
        }
    }

    /// A send completed.
    func onSend(_ res: Int32) {
        sendInFlight = false
        if phase == .closing {
            reactor.maybeRelease(self)
            return
        }
        if res < 0 {
            // The same message again: nothing of it was sent.
            socketFailed("send", -res) { $0.armSend() }
            return
        }
        liveness.sent(tick: reactor.tick)
        counters.txBytes &+= UInt64(res)
        let n = out.completed(sent: Int(res))
        for i in 0..<n { fire(out.fired[i]) }
        if phase == .closing { return }
        switch frontEnd {
        case .iscsi: iscsiSent()
        case .nbd: nbdSent()
        }
    }

    /// A buffer slot or send-queue room became available (Reactor.wakeSlotWaiters).
    func slotAvailable() {
        guard phase != .closing else { return }
        switch frontEnd {
        case .iscsi: iscsiResume()
        case .nbd: if stalled { nbdResume() }
        }
    }

    /// A store operation of task `t` finished (Reactor.storeFinished, LUN jobs).
    func storeDone(_ t: Int, _ result: StoreResult) {
        switch frontEnd {
        case .iscsi: iscsiStoreDone(t, result)
        case .nbd: nbdStoreDone(t, result)
        }
    }

    /// The once-a-second tick, after the liveness checks common to both front ends (Reactor.tickConnections).
    func ticked(_ tick: UInt64, limits: LivenessLimits) {
        switch frontEnd {
        case .iscsi: iscsiTick(tick, limits: limits)
        case .nbd: nbdTick(tick)
        }
    }

    // MARK: - iSCSI receive and send

    private func iscsiReceived(_ n: Int) {
        if recvDirect { receiver.receivedDirectly(n) } else { rxEnd += n }
        parse()
        armISCSIRecv()
    }

    private func iscsiSent() {
        resumeOutWaiters()
        if stalled && reactor.pool.freeCount > 0 { iscsiResume() }
        if out.count > 0 { flush() }
    }

    /// Consumes staged bytes through the receiver, carrying out what it asks for.
    func parse() {
        while phase != .closing && !stalled {
            switch receiver.receive(rx, from: &rxStart, to: rxEnd, framing: rxFraming) {
            case .needBytes: return
            case .header: headerReady()
            case .pdu(let dataDigestOK): pduComplete(dataDigestOK: dataDigestOK)
            case .failed(let error): reactor.closeConnection(self, reason: Connection.describe(error))
            }
        }
    }

    /// The framing the next bytes are judged by: what login negotiated, from full feature phase on.
    @inline(__always)
    private var rxFraming: RxFraming {
        if phase == .login { return .login }
        return RxFraming(headerDigest: params.headerDigest, dataDigest: params.dataDigest,
                         maxDataSegmentBytes: params.maxRecvDataSegment, loginRequestsOnly: false)
    }

    private static func describe(_ error: RxProtocolError) -> String {
        switch error {
        case .notLoginRequest: return "not a Login Request before login"
        case .ahsOnOpcode(let op): return "AHS on opcode 0x\(String(op, radix: 16))"
        case .headerDigest: return "header digest error"
        case .dataSegmentTooLong(let length, let limit): return "data segment of \(length) bytes exceeds \(limit)"
        }
    }

    /// The full header is in `hdr`: place the data segment. May stall (no buffer slot) or close the connection;
    /// resumeParser calls it again after a stall.
    func headerReady() {
        sinkTask = -1
        _ = prepareSink(BHS(hdr))
    }

    private func pduComplete(dataDigestOK: Bool) {
        if !dataDigestOK {
            // RFC 7143 §7.8: answer a payload digest error with Reject (Data-Digest-Error) and discard the PDU.
            queueReject(reason: RejectReason.dataDigestError)
            abandonSink()
            return
        }
        dispatchPDU()
    }

    // MARK: - Send

    /// Marks the connection for a send at the end of this event-loop pass (batches PDUs).
    @inline(__always)
    func markDirty() {
        if !dirty {
            dirty = true
            reactor.dirtyConnections.append(Int32(index))
        }
    }

    func flush() {
        dirty = false
        guard !sendInFlight, phase != .closing else { return }
        if !out.prepareSend() { return }
        armSend()
    }

    /// Sends the message `out.prepareSend` built.
    private func armSend() {
        let sqe = reactor.ring.sqe()
        io_uring_prep_sendmsg(sqe, fd, out.msg, UInt32(MSG_NOSIGNAL))
        sqe.pointee.user_data = ConnectionOp(connection: index, generation: generation).encode(.send)
        sendInFlight = true
        memoryTrimmed = false
    }

    /// An iSCSI connection with no task in use that has used its table: the table can go back to the kernel
    /// while it is idle (Reactor.trimIdleConnections). NBD connections keep theirs.
    var canReleaseTaskTable: Bool { frontEnd == .iscsi && activeTasks == 0 && tasksInitialized > 0 }

    /// Deinitializes every task, so that the table's pages can be given back; the next command initializes
    /// its task again, as on a new connection.
    func releaseTaskTable() {
        precondition(activeTasks == 0, "a task table in use cannot be released")
        deinitializeTasks()
        freeTask = -1
    }

    /// The connection gave its idle pages back and has not received or sent since (Reactor.trimIdleConnections).
    var memoryTrimmed = false

    /// Idle, with nothing staged or queued: the pages `ConnectionMemory.trimIdle` gives back hold nothing it
    /// still needs.
    func canTrimMemory(tick: UInt64, idleTicks: UInt64) -> Bool {
        phase == .fullFeature && !memoryTrimmed && !sendInFlight && out.count == 0 && rxStart == rxEnd && !stalled
            && tick &- max(liveness.lastRxTick, liveness.lastSendProgressTick) >= idleTicks
    }

    /// A recv or send failed with `e`: issued again when it was only interrupted (`again`), else the connection
    /// ends.
    private func socketFailed(_ op: String, _ e: Int32, again: (Connection) -> Void) {
        switch SocketErrno.classify(errno: e) {
        case .retry:
            again(self)
        case .peerGone:
            reactor.closeConnection(self, reason: "\(op): \(String(cString: strerror(e)))")
        case .failed:
            reactor.logger.warning("\(peer): \(op) failed: \(String(cString: strerror(e))) (errno \(e)); closing the connection")
            reactor.closeConnection(self, reason: "\(op): \(String(cString: strerror(e)))")
        }
    }


    /// A queued PDU went out completely.
    private func fire(_ token: SendToken) {
        if phase == .closing {
            // Teardown releases tasks; only buffers lent to control PDUs are returned here.
            if case .freeSlot(let s) = token { reactor.releaseSlot(Int(s)) }
            return
        }
        switch token {
        case .none: break
        case .dataInSent(let t):
            dataInPieceSent(Int(t))
        case .taskDone(let t):
            releaseTask(Int(t))
        case .freeSlot(let s):
            reactor.releaseSlot(Int(s))
        case .closeAfter:
            reactor.closeConnection(self, reason: "logout")
        }
    }

    /// Room for `n` more PDUs in the send queue?
    @inline(__always)
    func hasRoom(_ n: Int) -> Bool { out.free >= n }

    /// Queues a header-only or inline-data PDU built by `build` into the arena header.
    @discardableResult
    func queueControl(dataLength: Int = 0, token: SendToken = .none,
                      build: (UnsafeMutableRawPointer, UnsafeMutableRawPointer) -> Void) -> Bool {
        guard out.free > 0 else { return false }
        let i = out.nextIndex()
        let h = out.header(i)
        let d = out.inlineData(i)
        build(h, d)
        out.commit(i, data: dataLength > 0 ? UnsafeRawPointer(d) : nil, dataLength: dataLength,
                   headerDigest: params.headerDigest && phase != .login,
                   dataDigest: params.dataDigest && phase != .login, token: token)
        markDirty()
        return true
    }

    /// Queues a PDU whose data lives outside the arena (a buffer slot or the control buffer).
    @discardableResult
    func queuePDU(data: UnsafeRawPointer?, dataLength: Int, token: SendToken,
                  build: (UnsafeMutableRawPointer) -> Void) -> Bool {
        guard out.free > 0 else { return false }
        let i = out.nextIndex()
        build(out.header(i))
        out.commit(i, data: data, dataLength: dataLength, headerDigest: params.headerDigest && phase != .login,
                   dataDigest: params.dataDigest && phase != .login, token: token)
        markDirty()
        return true
    }

    /// Queues a PDU whose data is larger than a send-queue entry holds (a NOP-In echo, a Text or Login
    /// Response) from a borrowed buffer slot holding a copy of `bytes`; the slot returns when the PDU has been
    /// sent, or at once should the send queue be full. False when no slot is free: the caller answers.
    func queueFromBorrowedSlot(_ bytes: UnsafeRawBufferPointer, build: (UnsafeMutableRawPointer) -> Void) -> Bool {
        let slot = reactor.pool.take()
        if slot < 0 { return false }
        let p = reactor.pool.data(slot)
        if bytes.count > 0 { memcpy(p, bytes.baseAddress!, bytes.count) }
        if !queuePDU(data: UnsafeRawPointer(p), dataLength: bytes.count, token: .freeSlot(Int32(slot)), build: build) {
            reactor.releaseSlot(slot)
        }
        return true
    }

    /// Stamps StatSN/ExpCmdSN/MaxCmdSN; `advance` consumes a StatSN (responses and status-carrying Data-In).
    /// Commands parked behind a CmdSN gap are inside the window already, so they leave their entries free.
    @inline(__always)
    func stamp(_ h: UnsafeMutableRawPointer, advance: Bool) {
        let max = cmdSNWindow.advertise(freeEntries: cmdWindow - (activeTasks - orderWaiting))
        PDUBuild.setSequence(h, statSN: statSN, expCmdSN: cmdSNWindow.expCmdSN, maxCmdSN: max)
        if advance { statSN &+= 1 }
    }

    /// Reject carries the offending header as its data (RFC 7143 §11.17).
    func queueReject(reason: UInt8) {
        let copy = hdr
        queueControl(dataLength: bhsBytes) { h, d in
            PDUBuild.reject(h, reason: reason)
            memcpy(d, copy, bhsBytes)
            self.stamp(h, advance: true)
        }
    }
}

/// A logout or task management response held until shared SCSI state changes are in sheep (FullFeature.swift).
public struct HeldResponse {
    public enum Kind {
        case taskManagement(response: UInt8, closesSession: Bool)
        case logout(response: UInt8, time2Wait: UInt16, time2Retain: UInt16)
    }
    var itt: UInt32
    var kind: Kind
}
