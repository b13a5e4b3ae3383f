import Floor
import URing
import ISCSIWire
import Store
import SCSI
import ISCSI
import NBD
import CURing
import Glibc
import Logging

/// Sizes and limits of one core. Every bound the I/O path has is here.
public struct ReactorConfig: Sendable {
    /// Data area of one buffer slot; also caps MaxBurstLength, FirstBurstLength and our MaxRecvDataSegmentLength.
    public var slotBytes = 262_144
    /// Buffer slots per core (registered once at start).
    public var slotCount = 256
    /// Connections one core holds at most. When the table is full, a new connection evicts the oldest one
    /// that has not logged in yet; with none to evict it is refused.
    public var maxConnections = 4096
    /// Connections not yet logged in that one source address may hold on one core; more from that address
    /// are refused at accept. Per core: with N cores an address may hold up to N times this.
    public var maxLoginConnectionsPerAddress = 64
    /// Commands in flight per session (the MaxCmdSN window).
    public var commandWindow = 128
    /// Extra task entries for immediate commands, which do not consume CmdSN.
    public var immediateCommandAllowance = 8
    /// PDUs queued for sending per connection.
    public var sendQueueRecords = 256
    public var submissionEntries: UInt32 = 1024
    /// Busy-poll the ring for this long after the last completion before sleeping in the kernel (0 = never
    /// poll). Polling removes the wake-up from each request's latency at the price of a spinning core.
    public var pollNanos: UInt64 = 0
    /// NOP-In ping after this much silence (0 = never), and give up when unanswered this long.
    public var nopIntervalSeconds: UInt64 = 5
    public var nopTimeoutSeconds: UInt64 = 30
    /// A login must finish within this time.
    public var loginTimeoutSeconds: UInt64 = 15
    /// A connection whose queued PDUs make no progress for this long (initiator not reading) is closed.
    public var sendStallSeconds: UInt64 = 60
    /// A command whose solicited Data-Out does not arrive within this time fails (ABORTED COMMAND).
    public var dataOutTimeoutSeconds: UInt64 = 20
    /// Buffer slots one connection may hold at once: half a core's pool, plus room for immediate commands
    /// (which must be answered even when the CmdSN window is full of commands waiting for data).
    public var maxSlotsPerConnection: Int { max(2, slotCount / 2) + immediateCommandAllowance }
    /// Commands with immediate data one connection may keep parked behind a CmdSN gap: each keeps its buffer
    /// slot (the data cannot be asked for again). More are answered TASK SET FULL.
    public var parkedDataCommandsPerConnection = 4
    /// The same bound for all connections of a core, so parked data never holds more than a quarter of it.
    public var parkedDataSlotsPerCore: Int { max(1, slotCount / 4) }
    /// Commands waiting behind a missing CmdSN for longer than this end the session.
    public var cmdSNGapTimeoutSeconds: UInt64 = 20

    public init() {}
}

public struct GateWaiter {
    var connection: Int32
    var generation: UInt32
    var task: Int32
}

/// One core: one thread, one ring, its listeners, its connections, its buffers. Nothing here is shared.
public final class Reactor {
    let core: Int
    let config: ReactorConfig
    let ring: Ring
    var pool: BufferPool
    /// Each connection index's fixed-size memory (see ConnectionMemory).
    let connectionMemory: ConnectionMemory
    /// This core's counters per LUN (`--op stat`, metrics).
    let lunStatistics = LUNStatisticsTable()
    /// Task entries per connection: the CmdSN window plus immediate commands.
    let taskCapacity: Int
    /// The daemon holds the runtime until `Runtime.stop` has joined every reactor thread; no admin command ends it.
    unowned(unsafe) let runtime: Runtime
    let mailbox = Mailbox()
    public let logger: Logger
    var snapshot: ConfigSnapshot

    var listeners: [Int32] = []
    /// What each listener speaks (iSCSI portals and NBD portals share the loop).
    let listenerKinds: [FrontEnd]
    var connections: [Connection?]
    var freeConnections: [Int32] = []
    var generationCounter: UInt32 = 1
    var dirtyConnections: [Int32] = []
    var slotWaiters: [Int32] = []
    /// Buffer slots kept by commands parked behind CmdSN gaps with their immediate data (all connections).
    var parkedDataSlots = 0
    var closingConnections = 0
    /// The busy-poll window (ReactorConfig.pollNanos, or the admin's `poll_us`).
    var pollNanos: UInt64 = 0

    // R2T permits: at most half the slots wait for solicited data at once, so the other half always drains
    // (reads and writes in progress complete without needing the network), and stalled parsers make progress.
    var r2tPermits: Int
    /// The permits there are: taken ones plus free ones always add up to this.
    let r2tPermitCount: Int
    var permitQueue: [UInt64] = []
    var permitQueueHead = 0
    var tttSequence: UInt32 = 0

    // Sheepdog: one channel per sheep endpoint, home-core state per VDI homed here.
    private(set) var sheep: SheepStore<Reactor>!

    /// Background jobs of LUs started on this core (SANITIZE), with their slots and store records.
    let lunJobs = LUNJobTable()

    /// COMPARE AND WRITEs waiting for their LUN's gate; retried every loop pass (they are rare).
    var gateWaiters: [GateWaiter] = []

    /// Per listener: the pause before accepting again after running out of descriptors or memory, and the
    /// timeout that ends it.
    var acceptBackoff: [AcceptBackoff]
    let acceptRetrySpecs: UnsafeMutablePointer<__kernel_timespec>
    var acceptLog = RateLimitedLog(intervalSeconds: Reactor.admissionLogIntervalSeconds)
    var refusalLog = RateLimitedLog(intervalSeconds: Reactor.admissionLogIntervalSeconds)
    var loginFailureLog = RateLimitedLog(intervalSeconds: LoginLog.failureIntervalSeconds, burst: LoginLog.failureBurstLines)
    /// Connections still in login (or the NBD handshake) per source address, for maxLoginConnectionsPerAddress.
    var loginConnectionsByAddress: [String: Int] = [:]
    /// Accepted sockets waiting for the slot of the connection evicted for them (which is released once its
    /// operations on the ring complete).
    var pendingAccepts: [PendingAccept] = []
    var admissionCounter: UInt64 = 0

    /// Accept failures and refused connections are logged at most once per this interval.
    static let admissionLogIntervalSeconds: UInt64 = 10
    /// Accepted sockets that may wait for an evicted connection's slot at once; more are refused. An evicted
    /// connection's slot frees in the next loop pass, so one completion batch of accepts must fit.
    public static let pendingAcceptCapacity = Ring.completionBatch

    /// io_uring_enter errnos already logged (each is logged once).
    var ringErrorsLogged: [Int32] = []

    public var tick: UInt64 = 0
    /// Ticks count seconds since this instant, not timer completions: a core busy for seconds (10,000 logins
    /// at once) reaps one tick completion for all of them, and counting completions stretched every timeout.
    let tickEpochNanos = monotonicNanos()
    var running = true
    let tickSpec: UnsafeMutablePointer<__kernel_timespec>
    let mailboxBuffer: UnsafeMutablePointer<UInt64>

    init(core: Int, config: ReactorConfig, runtime: Runtime, listeners: [Int32], listenerKinds: [FrontEnd],
         logger: Logger, simulated: SimulatedRing? = nil) throws {
        precondition(listeners.count == listenerKinds.count)
        self.core = core
        self.listenerKinds = listenerKinds
        self.config = config
        self.runtime = runtime
        self.logger = logger
        self.listeners = listeners
        taskCapacity = config.commandWindow + config.immediateCommandAllowance
        if let why = UserData.check(maxConnections: config.maxConnections, taskCapacity: taskCapacity,
                                    listeners: listeners.count) {
            throw ReactorSetupError(description: why)
        }
        if let simulated { ring = Ring(simulated: simulated) } else { ring = try Ring(entries: config.submissionEntries) }
        pool = BufferPool(slotBytes: config.slotBytes, slotCount: config.slotCount)
        try ring.registerBuffer(pool.base, bytes: pool.totalBytes)
        r2tPermitCount = max(1, config.slotCount / 2)
        r2tPermits = r2tPermitCount
        connectionMemory = ConnectionMemory(count: config.maxConnections, taskCapacity: taskCapacity,
                                            sendQueueRecords: config.sendQueueRecords)
        connections = [Connection?](repeating: nil, count: config.maxConnections)
        freeConnections = (0..<config.maxConnections).reversed().map { Int32($0) }
        snapshot = runtime.currentSnapshot
        acceptBackoff = Array(repeating: AcceptBackoff(), count: listeners.count)
        acceptRetrySpecs = .allocate(capacity: max(1, listeners.count))
        acceptRetrySpecs.initialize(repeating: __kernel_timespec(tv_sec: 0, tv_nsec: 0), count: max(1, listeners.count))
        pendingAccepts.reserveCapacity(Reactor.pendingAcceptCapacity)
        tickSpec = .allocate(capacity: 1)
        tickSpec.initialize(to: __kernel_timespec(tv_sec: 1, tv_nsec: 0))
        mailboxBuffer = .allocate(capacity: 1)
        mailboxBuffer.initialize(to: 0)
        dirtyConnections.reserveCapacity(config.maxConnections)
        slotWaiters.reserveCapacity(config.maxConnections)
        permitQueue.reserveCapacity(config.slotCount * 2)
        sheep = SheepStore(host: self, core: core)
    }

    deinit {
        // Connections end their values' lifetimes in connectionMemory, which goes away after this body.
        for i in connections.indices { connections[i] = nil }
        acceptRetrySpecs.deallocate()
        tickSpec.deallocate()
        mailboxBuffer.deallocate()
    }

    // MARK: - Loop

    func run() {
        start()
        while running { turn() }
        shutdownAll()
    }

    /// Arms what the loop always has in flight. Accepts are armed by the `.startAccepting` message, once the
    /// configuration is applied.
    func start() {
        armTick()
        armMailbox()
        pollNanos = config.pollNanos
    }

    /// When the last completion was handled, for the busy-poll window.
    private var lastWorkNanos: UInt64 = 0

    /// Shortens the loop's `wait` (nanoseconds, -1 for none) so that it ends by `dueNanos` (CLOCK_MONOTONIC).
    private static func wake(_ wait: inout Int64, at dueNanos: UInt64) {
        let now = monotonicNanos()
        let untilDue = dueNanos > now ? Int64(clamping: dueNanos - now) : 0
        wait = wait < 0 ? untilDue : min(wait, untilDue)
    }

    /// One pass of the loop: submit and wait (or poll), then handle completions in batches. The simulation
    /// drives the reactor by calling this.
    func turn() {
        if pollNanos > 0 && monotonicNanos() &- lastWorkNanos < pollNanos {
            ringResult(ring.submitAndPoll())
        } else {
            // With a COMPARE AND WRITE waiting for a gate another core holds, wake up soon to try again.
            var wait: Int64 = gateWaiters.isEmpty ? -1 : Reactor.gatePollNanos
            // A held login answer falls due: wake for it, as nothing else may complete before then.
            if heldLogins > 0 { Self.wake(&wait, at: nextHeldLoginNanos) }
            // A COMPARE AND WRITE waits to ask sheep again for its section (SheepCompareSection).
            let sheepWake = sheep.wakeNanos
            if sheepWake != 0 { Self.wake(&wait, at: sheepWake) }
            ringResult(ring.submitAndWait(timeoutNanos: wait))
        }
        if !gateWaiters.isEmpty { retryGates() }
        if sheep.wakeNanos != 0 { sheep.runTimers() }
        runReady()
        // Completions are handled in batches; sends and recvs queued meanwhile go out in the next submit.
        while true {
            let n = ring.peekBatch()
            if n == 0 { break }
            for i in 0..<n {
                let c = ring.cqe(i)
                dispatch(c.pointee.user_data, c.pointee.res, c.pointee.flags)
            }
            ring.advance(n)
            runReady()
            flushDirty()
            sheep.flush()
            if pollNanos > 0 { lastWorkNanos = monotonicNanos() }
        }
        flushDirty()
        sheep.flush()
        // What the flushes gave back (a sheep request failing at once frees its slot) wakes its waiters now,
        // not after the next completion.
        runReady()
        if parkedLogins > 0 { resumeParkedLogins() }
        if heldLogins > 0 { answerHeldLogins() }
        flushDirty()
        // Only with no completion waiting: a recv's bytes may sit in a connection's staging before its
        // completion is handled.
        if trimDue && ring.peekBatch() == 0 { trimIdleConnections() }
    }

    /// A tick passed since idle connections last gave their pages back.
    var trimDue = false
    /// Idle connections whose task table went back to the kernel so far (the simulation checks it happens).
    private(set) var taskTablesReleased = 0
    /// Full ticks without a byte received or sent before a connection gives back its staging and send-queue
    /// pages: an idle session then costs its header page and its object, not the pages its login touched.
    static let idleTrimTicks: UInt64 = 1

    func trimIdleConnections() {
        trimDue = false
        for c in connections {
            guard let c, c.canTrimMemory(tick: tick, idleTicks: Reactor.idleTrimTicks) else { continue }
            connectionMemory.trimIdle(c.index)
            if c.canReleaseTaskTable {
                c.releaseTaskTable()
                connectionMemory.trimTasks(c.index)
                taskTablesReleased &+= 1
            }
            c.memoryTrimmed = true
        }
    }

    /// Brute-force brake on CHAP: this core's memory of failed logins per address and account.
    var loginThrottle = LoginThrottle()
    /// Connections whose login answer the throttle holds (Connection.heldLogin), and the earliest due time
    /// among them (it may be a closed connection's: then the next scan only finds nothing due).
    var heldLogins = 0
    var nextHeldLoginNanos: UInt64 = .max

    func holdLogin(dueNanos: UInt64) {
        heldLogins += 1
        nextHeldLoginNanos = min(nextHeldLoginNanos, dueNanos)
    }

    /// Sends the held login answers that are due. Scans only when one is: under attack that is a few times a
    /// second at most, each answer spaced by the throttle.
    func answerHeldLogins() {
        let now = monotonicNanos()
        guard now >= nextHeldLoginNanos else { return }
        var next = UInt64.max
        for c in connections {
            guard let c, c.phase == .login, let held = c.heldLogin else { continue }
            if held.dueNanos <= now { c.answerHeldLogin() } else { next = min(next, held.dueNanos) }
        }
        nextHeldLoginNanos = next
    }

    /// Logins (and NBD_OPT_GO answers) waiting for an old session's commands to end (Connection.parkedLogin).
    var parkedLogins = 0

    /// Lets parked logins go on whose old session has ended (rare: a reconnect after a lost connection). Every
    /// pass while any is parked; the tick wakes the loop when the old session ended on another core.
    func resumeParkedLogins() {
        for c in connections {
            guard let c, c.phase == .login else { continue }
            if c.parkedLogin != nil { c.resumeParkedLogin() } else if c.nbd.parked != nil { c.nbdResumeParked() }
        }
    }

    @inline(__always)
    func dispatch(_ userData: UInt64, _ res: Int32, _ flags: UInt32) {
        switch OpKind(rawValue: UserData.kind(userData)) {
        case .recv:
            let op = ConnectionOp.decode(userData)
            if let c = connection(op.connection, op.generation) { c.onRecv(res) }
        case .send:
            let op = ConnectionOp.decode(userData)
            if let c = connection(op.connection, op.generation) { c.onSend(res) }
        case .storeIO:
            let op = TaskOp.decode(userData)
            if let c = connection(op.connection, op.generation) { storeCompletion(c, op.task, res) }
        case .accept:
            onAccept(ListenerOp.decode(userData).listener, res, flags)
        case .acceptRetry:
            let i = ListenerOp.decode(userData).listener
            if running { armAccept(i, listeners[i]) }
        case .tick:
            onTick()
        case .mailbox:
            onMailbox()
        case .sheep:
            if let op = ChannelOp.decode(userData) { sheep.completion(op, res: res) }
        case .lunJob:
            jobCompletion(JobOp.decode(userData), res)
        case .cancel, .close, .none:
            break
        }
    }

    /// Acts on the result of a submit or wait, and on a submit error `ring.sqe()` retried past.
    @inline(__always)
    func ringResult(_ rc: Int32) {
        if rc < 0 { ringFailed(-rc) }
        let e = ring.takeSubmitErrno()
        if e != 0 { ringFailed(e) }
    }

    private func ringFailed(_ e: Int32) {
        switch RingWaitOutcome.classify(errno: e) {
        case .fine:
            return
        case .retry:
            break
        case .unexpected:
            if !ringErrorsLogged.contains(e) {
                ringErrorsLogged.append(e)
                logger.error("core \(core): io_uring_enter failed: \(String(cString: strerror(e))) (errno \(e)); retrying")
            }
        }
        // The wait returned without waiting: trying again at once would spin while the kernel refuses.
        var pause = timespec(tv_sec: 0, tv_nsec: Reactor.ringErrorPauseNanos)
        nanosleep(&pause, nil)
    }

    /// After a failed io_uring_enter the loop pauses this long before trying again.
    static let ringErrorPauseNanos = 1_000_000

    @inline(__always)
    func connection(_ index: Int, _ tag: UInt32) -> Connection? {
        guard index < connections.count, let c = connections[index], c.generation == tag else { return nil }
        return c
    }

    static let gatePollNanos: Int64 = 100_000

    func retryGates() {
        let waiting = gateWaiters
        gateWaiters.removeAll(keepingCapacity: true)
        for w in waiting {
            guard let c = connection(Int(w.connection), w.generation), c.phase == .fullFeature,
                  c.tasks[Int(w.task)].state == .waitingGate else { continue }
            if let lun = c.tasks[Int(w.task)].lun, lun.tryEnterCompareAndWrite() {
                c.gateOpened(Int(w.task))
            } else {
                gateWaiters.append(w)
            }
        }
        flushDirty()
    }

    func flushDirty() {
        if dirtyConnections.isEmpty { return }
        var i = 0
        while i < dirtyConnections.count {
            if let c = connections[Int(dirtyConnections[i])] { c.flush() }
            i += 1
        }
        dirtyConnections.removeAll(keepingCapacity: true)
    }

    // MARK: - Accept

    func armAccept(_ i: Int, _ fd: Int32) {
        let sqe = ring.sqe()
        io_uring_prep_multishot_accept(sqe, fd, nil, nil, RT_SOCK_CLOEXEC)
        sqe.pointee.user_data = ListenerOp(listener: i).encode(.accept)
    }

    func onAccept(_ listenerIndex: Int, _ res: Int32, _ flags: UInt32) {
        // A multishot accept ends with an error or a kernel limit; it goes on while F_MORE is set.
        let ended = flags & RT_CQE_F_MORE == 0
        if res >= 0 {
            acceptBackoff[listenerIndex].succeeded()
            if ended && running { armAccept(listenerIndex, listeners[listenerIndex]) }
            admit(res, listenerIndex)
            return
        }
        let e = -res
        switch AcceptFailure.classify(errno: e) {
        case .shutdown:
            return
        case .perConnection:
            if ended && running { armAccept(listenerIndex, listeners[listenerIndex]) }
        case .backOff:
            // Accepting again at once would fail again at once: wait, doubling the wait while it lasts.
            let delay = acceptBackoff[listenerIndex].failed()
            if let suppressed = acceptLog.admit(nowNanos: monotonicNanos()) {
                let line = "core \(core): accept failed: \(String(cString: strerror(e))) (\(AcceptFailure.errnoName(e))); "
                    + "accepting again in \(delay) ms\(RateLimitedLog.suffix(suppressed))"
                logger.warning("\(line)")
            }
            if ended && running { armAcceptRetry(listenerIndex, afterMilliseconds: delay) }
        }
    }

    func armAcceptRetry(_ i: Int, afterMilliseconds ms: UInt64) {
        acceptRetrySpecs[i] = __kernel_timespec(tv_sec: Int64(ms / 1000), tv_nsec: Int64(ms % 1000) * 1_000_000)
        let sqe = ring.sqe()
        io_uring_prep_timeout(sqe, acceptRetrySpecs + i, 0, 0)
        sqe.pointee.user_data = ListenerOp(listener: i).encode(.acceptRetry)
    }

    /// Takes an accepted socket into the connection table, subject to the per-address login cap; a full table
    /// makes room by evicting the oldest connection that has not logged in (logged-in sessions stay).
    func admit(_ fd: Int32, _ listenerIndex: Int) {
        let peer = SocketAddress.peerName(fd)
        if loginConnectionsByAddress[peer, default: 0] >= config.maxLoginConnectionsPerAddress {
            refuse(fd, "\(peer) already has \(config.maxLoginConnectionsPerAddress) connections not logged in")
            return
        }
        if let slot = freeConnections.popLast() {
            startConnection(PendingAccept(fd: fd, listenerIndex: listenerIndex, peer: peer), slot: slot)
            return
        }
        guard pendingAccepts.count < Reactor.pendingAcceptCapacity, let victim = oldestLoginConnection() else {
            refuse(fd, "connection limit \(config.maxConnections) reached, none waiting for login to evict")
            return
        }
        loginConnectionsByAddress[peer, default: 0] += 1
        pendingAccepts.append(PendingAccept(fd: fd, listenerIndex: listenerIndex, peer: peer))
        if let suppressed = refusalLog.admit(nowNanos: monotonicNanos()) {
            let line = "core \(core): connection limit \(config.maxConnections) reached; closing the oldest "
                + "connection not logged in (from \(victim.peer))\(RateLimitedLog.suffix(suppressed))"
            logger.warning("\(line)")
        }
        closeConnection(victim, reason: "evicted for a new connection (table full)")
    }

    private func refuse(_ fd: Int32, _ why: String) {
        close(fd)
        if let suppressed = refusalLog.admit(nowNanos: monotonicNanos()) {
            logger.warning("core \(core): refusing connection: \(why)\(RateLimitedLog.suffix(suppressed))")
        }
    }

    private func oldestLoginConnection() -> Connection? {
        var oldest: Connection? = nil
        for c in connections {
            guard let c, c.phase == .login else { continue }
            if oldest == nil || c.admission < oldest!.admission { oldest = c }
        }
        return oldest
    }

    /// `p` was already counted against its address when it was parked in pendingAccepts.
    private func startConnection(_ p: PendingAccept, slot: Int32, counted: Bool = false) {
        var one: Int32 = 1
        setsockopt(p.fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        generationCounter &+= 1
        if generationCounter == 0 { generationCounter = 1 }
        admissionCounter &+= 1
        let kind = listenerKinds[p.listenerIndex]
        let c = Connection(reactor: self, index: Int(slot), generation: generationCounter, fd: p.fd,
                           peer: p.peer, local: SocketAddress.localName(p.fd), frontEnd: kind)
        c.admission = admissionCounter
        c.countedAsLogin = true
        if !counted { loginConnectionsByAddress[p.peer, default: 0] += 1 }
        connections[Int(slot)] = c
        logger.debug("core \(core): connection from \(c.peer)")
        if kind == .nbd { c.nbdStart() }
        c.armRecv()
    }

    /// The connection logged in (or finished the NBD handshake), or is closing: it no longer counts against
    /// its address's login cap.
    func leftLogin(_ c: Connection) {
        guard c.countedAsLogin else { return }
        c.countedAsLogin = false
        if let n = loginConnectionsByAddress[c.peer], n > 1 {
            loginConnectionsByAddress[c.peer] = n - 1
        } else {
            loginConnectionsByAddress.removeValue(forKey: c.peer)
        }
    }

    // MARK: - Closing

    /// Starts tearing a connection down. Its memory is released once no operation on the ring refers to it.
    func closeConnection(_ c: Connection, reason: String) {
        guard c.phase != .closing else { return }
        logger.debug("core \(core): closing connection from \(c.peer): \(reason)")
        if c.frontEnd == .nbd && c.phase == .fullFeature && c.storeInFlight > 0, let t = c.target {
            c.drainingExport = (t.tid, c.nbd.lunNumber)
            runtime.exportDraining(tid: t.tid, lun: c.nbd.lunNumber, ended: false)
        }
        c.phase = .closing
        leftLogin(c)
        shutdown(c.fd, Int32(SHUT_RDWR))
        if c.stalled {
            c.stalled = false
        }
        if let nexus = c.nexus, let target = c.target {
            for lun in SCSITask.nexusLost(nexus, target: target) { shareChange(lun, .releaseSPC2(PortIdentity(nexus))) }
            // Commands still at a store hold back the next session of this initiator port until they end.
            c.drainingNexus = c.storeInFlight > 0 ? nexus : nil
            runtime.unregisterSession(initiator: c.initiatorName, isid: c.isid, targetName: target.name, tsih: c.tsih,
                                      stillRunning: c.drainingNexus != nil)
        }
        if c.tsih != 0 {
            let ended = LoginLog.sessionEnded(initiatorName: c.initiatorName, peer: c.peer, targetName: c.target?.name,
                                              reason: reason)
            if c.isDiscovery { logger.debug("\(ended)") } else if c.target != nil { logger.info("\(ended)") }
            runtime.releaseTSIH(c.tsih)
            c.tsih = 0
        }
        // Sheep requests of its commands that have not gone out are dropped, as for ABORT TASK: a write held
        // while a sheep node is away must not reach the node after the initiator, whose connection this was,
        // has written the same blocks through another path. Dropping may finish the last store operation and
        // release the connection here; maybeRelease below then finds it released.
        var t = 0
        while c.fd >= 0 && c.storeInFlight > 0 && t < c.tasksInitialized {
            if c.tasks[t].state == .storeIO { cancelStore(c, t) }
            t += 1
        }
        maybeRelease(c)
    }

    func maybeRelease(_ c: Connection) {
        // fd < 0: released already (a store completion inside closeConnection can get here first).
        guard c.phase == .closing, c.fd >= 0, !c.recvInFlight, !c.sendInFlight, c.storeInFlight == 0 else { return }
        c.out.drainAll { token in
            if case .freeSlot(let s) = token { self.releaseSlot(Int(s)) }
        }
        for t in 0..<c.tasksInitialized where c.tasks[t].state != .free {
            if c.tasks[t].state == .waitingPermit { cancelPermitWait(connection: c.index, task: t) }
            c.releaseTask(t)
        }
        assert(c.slotsHeld == 0 && c.activeTasks == 0,
               "connection \(c.index) torn down holding \(c.slotsHeld) buffer slot(s), \(c.activeTasks) task(s)")
        if c.parkedLogin != nil || c.nbd.parked != nil {
            c.parkedLogin = nil
            c.nbd.parked = nil
            parkedLogins -= 1
        }
        if c.heldLogin != nil {
            c.heldLogin = nil
            heldLogins -= 1
        }
        if let e = c.drainingExport {
            runtime.exportDraining(tid: e.tid, lun: e.lun, ended: true)
            c.drainingExport = nil
        }
        if let n = c.drainingNexus {
            runtime.endDraining(initiator: n.initiatorName, isid: n.isid, targetName: n.targetName)
            c.drainingNexus = nil
        }
        close(c.fd)
        c.fd = -1
        c.releaseMemory()
        connectionMemory.release(c.index)
        connections[c.index] = nil
        if pendingAccepts.isEmpty {
            freeConnections.append(Int32(c.index))
        } else {
            startConnection(pendingAccepts.removeFirst(), slot: Int32(c.index), counted: true)
        }
    }

    // MARK: - Buffers and permits

    /// A slot given back wakes no one here: the connections waiting for one resume from the loop (`runReady`),
    /// so a completion never runs another connection's code.
    @inline(__always)
    func releaseSlot(_ s: Int) {
        pool.give(s)   // asserts the slot count stays within the pool
    }

    /// Wake-ups of this pass: R2T permits and buffer slots given back go to the connections waiting for them, in
    /// the order they started waiting. Runs from the loop after a completion batch, before sends are flushed.
    @inline(__always)
    func runReady() {
        // A woken connection may give back slots or permits itself: go on while anyone waiting can be served.
        // Each turn shortens a queue (a granted task does not queue again; a resumed parser queues again only
        // when the pool is empty), so this ends.
        while (r2tPermits > 0 && permitQueueHead < permitQueue.count) || (pool.freeCount > 0 && !slotWaiters.isEmpty) {
            grantPermits()
            wakeSlotWaiters()
        }
    }

    private func wakeSlotWaiters() {
        while pool.freeCount > 0 && !slotWaiters.isEmpty {
            let ci = Int(slotWaiters.removeFirst())
            guard let c = connections[ci] else { continue }
            c.onSlotWaitList = false
            c.slotAvailable()
        }
    }

    /// Tasks waiting for a permit get them first (FIFO): a new burst takes one only when nobody waits.
    @inline(__always)
    func takeR2TPermit() -> Bool {
        if r2tPermits == 0 || permitQueueHead < permitQueue.count { return false }
        r2tPermits -= 1
        return true
    }

    /// The waiting task that gets this permit is started by `runReady`, from the loop.
    @inline(__always)
    func returnR2TPermit() {
        r2tPermits += 1
        assert(r2tPermits <= r2tPermitCount, "an R2T permit was returned twice")
    }

    private func grantPermits() {
        while r2tPermits > 0 && permitQueueHead < permitQueue.count {
            let e = permitQueue[permitQueueHead]
            permitQueueHead += 1
            if permitQueueHead == permitQueue.count { permitQueue.removeAll(keepingCapacity: true); permitQueueHead = 0 }
            if e == UInt64.max { continue }   // cancelled entry
            let ci = Int(e >> 32), t = Int(e & 0xFFFF_FFFF)
            if let c = connections[ci], c.phase != .closing, c.tasks[t].state == .waitingPermit {
                r2tPermits -= 1
                c.permitGranted(t)
            }
        }
    }

    func waitForPermit(connection: Int, task: Int) {
        permitQueue.append(UInt64(connection) << 32 | UInt64(task))
    }

    func cancelPermitWait(connection: Int, task: Int) {
        let key = UInt64(connection) << 32 | UInt64(task)
        for i in permitQueueHead..<permitQueue.count where permitQueue[i] == key { permitQueue[i] = UInt64.max }
    }

    // MARK: - Stores

    /// Starts a store operation for task `t` (an iSCSI command or an NBD request: both hold an IOTask with a
    /// buffer slot and a LUN). Returns the result when the operation completed synchronously (null store,
    /// metadata queries, refusals), nil when it is in flight; then `Connection.storeDone` follows.
    /// `readGoesToWire`: a read's data is only sent, never used (a SCSI READ's chunk, an NBD_CMD_READ), so the
    /// null store may send it from the zero region.
    func submitStore(_ c: Connection, _ t: Int, _ op: StoreOp, readGoesToWire: Bool) -> StoreResult? {
        var lun = c.tasks[t].lun
        let storeTarget: StoreTarget
        switch op {
        case .read(let tg, _, _, _), .write(let tg, _, _, _, _), .flush(let tg), .discard(let tg, _, _),
             .mapStatus(let tg, _, _), .prefetch(let tg, _, _), .shareState(let tg, _),
             .compareSection(let tg, _), .sharePortGroupState(let tg, _, _):
            storeTarget = tg
        }
        // Another LUN of the task's own target (EXTENDED COPY): that target is pinned while the task lives, the
        // session's current one may have been replaced since.
        if case .other(let n) = storeTarget { lun = c.tasks[t].scsi.target?.lun(n) }
        guard let lun else {
            return .failed(.unavailable)
        }
        let result: StoreResult?
        switch lun.backing {
        case .null:
            // A READ's chunk, or an NBD READ, goes only to the wire (`readGoesToWire`; COMPARE AND WRITE,
            // VERIFY and EXTENDED COPY read into the slot to use the data, and NBD reads only for NBD_CMD_READ):
            // it is sent from the zero region, and the slot is not zeroed. tgt's null store does no work for a
            // read either, but sends whatever its buffer held.
            if case .read(_, _, let length, _) = op, readGoesToWire {
                c.tasks[t].dataInFromZeros = true
                return .ok(length)
            }
            return NullStore.run(op, data: pool.data(Int(c.tasks[t].slot)), byteCount: lun.byteCount)
        case .sheep(let vol):
            c.tasks[t].storeTarget = storeTarget
            result = sheep.start(op, on: vol, &c.tasks[t].store, storeBuffer(c, t))
        case .file(let f):
            result = FileStore.start(op, on: f, &c.tasks[t].store, storeBuffer(c, t), ring: ring)
        }
        if result == nil {
            c.tasks[t].state = .storeIO
            c.storeInFlight += 1
        }
        return result
    }

    /// A change to a LU's SCSI state made outside a command (a session's end, a reset): on a multipath sheep
    /// LU it goes into the record the gateways share, so that the others see it (docs/CLUSTER-STATE.md).
    /// With `holding`, that connection is told when the change is in sheep; returns whether it will be.
    @discardableResult
    func shareChange(_ lun: LogicalUnit, _ change: SharedStateChange, holding c: Connection? = nil) -> Bool {
        guard sharesState(lun), case .sheep(let vol) = lun.backing else { return false }
        sheep.shareChange(vol, change, waiter: c.map { .connection(index: Int32($0.index), generation: $0.generation) } ?? .none)
        return c != nil
    }

    /// The LU's reservations and resets are shared with other gateways through sheep.
    func sharesState(_ lun: LogicalUnit) -> Bool {
        guard case .sheep(let vol) = lun.backing, vol.coherent, sheep != nil else { return false }
        return true
    }

    /// Task `t` was aborted with its store operation in flight: a sheep store drops the requests it has not
    /// sent (a write held for a node that is away would otherwise reach the node after the abort was
    /// answered, and overwrite what the initiator wrote through another path since).
    func cancelStore(_ c: Connection, _ t: Int) {
        guard c.tasks[t].state == .storeIO, let sheep else { return }
        sheep.cancel(tag: storeBuffer(c, t).tag)
    }

    /// The task's buffer and the tag its store operations carry back to `storeCompletion`.
    @inline(__always)
    private func storeBuffer(_ c: Connection, _ t: Int) -> StoreBuffer {
        StoreBuffer(data: pool.data(Int(c.tasks[t].slot)),
                    tag: TaskOp(connection: c.index, task: t, generation: c.generation).encode())
    }

    private func storeCompletion(_ c: Connection, _ t: Int, _ res: Int32) {
        if c.phase == .closing {
            c.storeInFlight -= 1
            assert(c.storeInFlight >= 0, "a store completion without a store operation in flight")
            maybeRelease(c)
            return
        }
        // nil: the rest was submitted again, the operation is still in flight.
        guard let result = FileStore.complete(&c.tasks[t].store, result: res, storeBuffer(c, t), ring: ring) else { return }
        storeFinished(c, t, result)
    }

    /// A store operation of task `t` ended (file or sheepdog): its connection goes on, or finishes closing.
    private func storeFinished(_ c: Connection, _ t: Int, _ result: StoreResult) {
        c.storeInFlight -= 1
        assert(c.storeInFlight >= 0, "a store request finished twice")
        if c.phase == .closing { maybeRelease(c); return }
        c.storeDone(t, result)
    }

    // MARK: - Timers

    func armTick() {
        let sqe = ring.sqe()
        io_uring_prep_timeout(sqe, tickSpec, 0, 0)
        sqe.pointee.user_data = ListenerOp(listener: 0).encode(.tick)
    }

    /// The tick after `previous`: the whole seconds elapsed, and at least one more than before (the timer
    /// may fire a little early).
    static func nextTick(previous: UInt64, elapsedNanos: UInt64) -> UInt64 {
        max(previous &+ 1, elapsedNanos / 1_000_000_000)
    }

    /// Once a second: login timeouts, NOP-In pings, dead and stalled initiators.
    func onTick() {
        tick = Reactor.nextTick(previous: tick, elapsedNanos: monotonicNanos() &- tickEpochNanos)
        if running { armTick() }
        trimDue = true
        sheep.onTick(tick)
        tickJobs()
        sheep.flush()
        for c in connections {
            guard let c, c.phase != .closing else { continue }
            let limits = livenessLimits(c)
            if let failure = c.liveness.check(tick: tick, loggingIn: c.phase == .login, sendQueued: c.out.count > 0,
                                              limits: limits) {
                closeConnection(c, reason: failure.reason)
                continue
            }
            c.ticked(tick, limits: limits)
        }
        flushDirty()
    }

    /// The daemon's limits, with a target's own nop_interval/nop_count (tgtadm --op update) winning over the
    /// daemon's --iscsi values.
    private func livenessLimits(_ c: Connection) -> LivenessLimits {
        let interval = c.target?.nopIntervalSeconds ?? config.nopIntervalSeconds
        let timeout = c.target?.nopCount.map { max(1, interval) * $0 } ?? config.nopTimeoutSeconds
        return LivenessLimits(loginSeconds: config.loginTimeoutSeconds, sendStallSeconds: config.sendStallSeconds,
                              dataOutSeconds: config.dataOutTimeoutSeconds, nopIntervalSeconds: interval,
                              nopTimeoutSeconds: timeout)
    }

    // MARK: - Mailbox

    func armMailbox() {
        let sqe = ring.sqe()
        io_uring_prep_read(sqe, mailbox.eventFD, mailboxBuffer, 8, 0)
        sqe.pointee.user_data = ListenerOp(listener: 0).encode(.mailbox)
    }

    func onMailbox() {
        for m in mailbox.drain() {
            switch m {
            case .config(let snap, let reply):
                applySnapshot(snap)
                reply.signal()
            case .closeSession(let tsih):
                for c in connections {
                    if let c, c.tsih == tsih, c.phase != .closing { closeConnection(c, reason: "session reinstated or removed") }
                }
            case .sessions(let q):
                q.result = sessionInfo()
                q.reply.signal()
            case .commandsInFlight(let q):
                q.result = commandsInFlight(on: q.units)
                q.reply.signal()
            case .statistics(let q):
                answer(q)
            case .startAccepting:
                for (i, fd) in listeners.enumerated() { armAccept(i, fd) }
            case .shutdown:
                running = false
            case .sheepHome(let req):
                sheep.homeHandle(req)
            case .sheepHomeDone(let waiter, let failure):
                sheep.homeAnswered(waiter, failure: failure)
            }
        }
        if running { armMailbox() }
    }

    func applySnapshot(_ snap: ConfigSnapshot) {
        let discoveryCHAPChanged = snap.discoveryCHAP != snapshot.discoveryCHAP
        snapshot = snap
        if let p = snap.pollNanos { pollNanos = p }
        for c in connections {
            guard let c, let old = c.target else { continue }
            if let new = snap.target(tid: old.tid), new.name == old.name {
                c.target = new
            } else if c.phase != .closing {
                closeConnection(c, reason: "target removed")
            }
        }
        closeSessionsNoLongerAdmitted(discoveryCHAPChanged: discoveryCHAPChanged)
    }

    /// After a configuration change, ends the sessions their target would no longer admit: the ACL dropped
    /// them, or the target now requires CHAP and they did not authenticate as an account still bound to it.
    /// Logins still in progress that a change to the target's ACL or accounts concerns end too: their CHAP
    /// exchange was set up from the old accounts; the initiator logs in again under the new ones.
    /// Discovery sessions answer to the accounts bound without a target in the same way.
    func closeSessionsNoLongerAdmitted(discoveryCHAPChanged: Bool = false) {
        for c in connections {
            guard let c else { continue }
            let refusal: String?
            switch c.phase {
            case .fullFeature:
                if c.isDiscovery {
                    refusal = SessionAdmission.discoveryRefusal(snapshot.discoveryCHAP, chapAccount: c.chapAccount)
                    break
                }
                guard let t = c.target else { continue }
                refusal = SessionAdmission.refusal(target: t, peerAddress: c.peer, initiatorName: c.initiatorName,
                                                   chapAccount: c.chapAccount)
            case .login:
                if discoveryCHAPChanged && c.login.sessionType == .discovery && c.login.initiatorName != nil {
                    refusal = "the discovery CHAP accounts changed during login"
                    break
                }
                guard let old = c.login.target, let t = snapshot.target(tid: old.tid) else { continue }
                if t.chap != old.chap || t.acl != old.acl { refusal = "the target's ACL or CHAP accounts changed during login" }
                else { refusal = nil }
            case .loggingOut, .closing:
                continue
            }
            guard let refusal else { continue }
            logger.info("core \(core): closing the session of \(c.initiatorName.isEmpty ? "?" : c.initiatorName) from \(c.peer): \(refusal)")
            closeConnection(c, reason: refusal)
        }
    }

    /// Tasks on this core, on any connection (closing ones too), that reference one of these units.
    func commandsInFlight(on units: [ObjectIdentifier]) -> Int {
        var n = 0
        for c in connections {
            guard let c else { continue }
            for t in 0..<c.tasksInitialized where c.tasks[t].state != .free {
                if let lun = c.tasks[t].lun, units.contains(ObjectIdentifier(lun)) { n += 1 }
                else if c.tasks[t].scsi.copyTouches(units) { n += 1 }
            }
        }
        return n + lunJobs.count(on: units)
    }

    /// This core's part of `--op stat` and the metrics: the LUNs asked about, and its logged-in iSCSI connections.
    func answer(_ q: StatisticsQuery) {
        q.luns = q.units.map { lunStatistics.read(slot: $0.slot, id: $0.id) }
        for c in connections {
            guard let c, c.phase == .fullFeature, c.frontEnd == .iscsi, !c.isDiscovery, let target = c.target else {
                continue
            }
            q.connections.append(ConnectionStatistics(tid: target.tid, targetName: target.name, sid: UInt64(c.tsih),
                                                      cid: UInt32(c.cid), initiatorName: c.initiatorName,
                                                      peerAddress: c.peer, counters: c.counters))
        }
        q.reply.signal()
    }

    func sessionInfo() -> [SessionInfo] {
        var out: [SessionInfo] = []
        for c in connections {
            guard let c, c.phase == .fullFeature, c.frontEnd == .iscsi else { continue }
            guard !c.isDiscovery, let target = c.target else { continue }
            out.append(SessionInfo(tid: target.tid, sid: UInt64(c.tsih), initiatorName: c.initiatorName,
                                   initiatorPortName: c.nexus?.initiatorPortName ?? c.initiatorName, tsih: c.tsih,
                                   connections: [SessionInfo.Connection(cid: UInt32(c.cid), peerAddress: c.peer)]))
        }
        return out
    }

    func shutdownAll() {
        for p in pendingAccepts { close(p.fd) }
        pendingAccepts.removeAll()
        for c in connections { if let c { closeConnection(c, reason: "shutdown") } }
        // Sheep requests would never be answered from here on: fail them, so their tasks let go of buffers.
        sheep.abandon()
        abandonJobs()
        // Wait for in-flight operations to finish so no buffer is referenced after the ring goes away.
        var spins = 0
        while (closingConnectionsLeft() || lunJobs.inFlight > 0) && spins < 1000 {
            // Answers from other cores' home-core work still arrive through the mailbox.
            for m in mailbox.drain() {
                switch m {
                case .sheepHome(let req): sheep.homeDone(req, failure: .unavailable)
                case .sheepHomeDone(let waiter, let failure): sheep.homeAnswered(waiter, failure: failure)
                case .config(_, let reply): reply.signal()
                case .sessions(let q): q.reply.signal()
                case .commandsInFlight(let q): q.result = commandsInFlight(on: q.units); q.reply.signal()
                case .statistics(let q): answer(q)
                case .closeSession, .startAccepting, .shutdown: break
                }
            }
            ringResult(ring.submitAndWait(timeoutNanos: 10_000_000))
            let n = ring.peekBatch()
            for i in 0..<n {
                let c = ring.cqe(i)
                let u = c.pointee.user_data
                switch OpKind(rawValue: UserData.kind(u)) {
                case .recv, .send:
                    let op = ConnectionOp.decode(u)
                    guard let conn = connection(op.connection, op.generation) else { continue }
                    if UserData.kind(u) == OpKind.recv.rawValue { conn.recvInFlight = false } else { conn.sendInFlight = false }
                    maybeRelease(conn)
                case .storeIO:
                    let op = TaskOp.decode(u)
                    guard let conn = connection(op.connection, op.generation) else { continue }
                    conn.storeInFlight -= 1
                    maybeRelease(conn)
                case .lunJob:
                    jobCompletionStopping(JobOp.decode(u))
                default: break
                }
            }
            ring.advance(n)
            spins += 1
        }
        for fd in listeners { close(fd) }
        // Connections hold the reactor (Connection.reactor): letting go of any still here lets both be freed.
        for i in connections.indices { connections[i] = nil }
    }

    private func closingConnectionsLeft() -> Bool { connections.contains { $0 != nil } }

    // MARK: - Login support

    func loginEnvironment(for c: Connection) -> LoginEnvironment {
        let snap = snapshot
        let peer = c.peer
        return LoginEnvironment(
            targetLookup: { name in snap.target(named: name) },
            isAllowed: { target, initiator in ACLCheck.allows(target.acl, address: peer, initiatorName: initiator) },
            defaults: { target in self.runtime.keyDefaults(for: target) },
            portalGroupTag: 1,
            systemOffline: snap.systemOffline,
            discoveryCHAP: snap.discoveryCHAP)
    }

    func sendTargetsListing(for c: Connection, request: String) -> [UInt8] {
        var list: [(name: String, addresses: [String])] = []
        for t in snapshot.targets where ACLCheck.allows(t.acl, address: c.peer, initiatorName: c.initiatorName) {
            list.append((name: t.name, addresses: runtime.portalAddresses(localAddress: c.local, tpgt: t.portalGroupTag)))
        }
        return Discovery.sendTargetsResponse(request: request, targets: list,
                                             sessionTarget: c.isDiscovery ? nil : c.target?.name)
    }
}

/// A configuration the reactor cannot run with.
public struct ReactorSetupError: Error, CustomStringConvertible {
    public var description: String
}

/// An accepted socket not yet in the connection table.
public struct PendingAccept {
    var fd: Int32
    var listenerIndex: Int
    var peer: String
}

extension Reactor: SheepStoreHost {
    public var isRunning: Bool { running }
    public var coreCount: Int { runtime.coreCount }

    @inline(__always)
    public func sqe() -> UnsafeMutablePointer<io_uring_sqe> { ring.sqe() }

    /// The task `tag` names, if its connection is still the one that started it.
    @inline(__always)
    private func storeTask(_ tag: UInt64) -> (Connection, Int)? {
        let op = TaskOp.decode(tag)
        guard let c = connection(op.connection, op.generation) else { return nil }
        return (c, op.task)
    }

    /// For a store tag of an LU job (SANITIZE), its entry (nil inside when the job is gone); nil for a task's tag.
    private func lunJobEntry(_ tag: UInt64) -> Int?? {
        UserData.kind(tag) == OpKind.lunJob.rawValue ? .some(lunJobs.entry(JobOp.decode(tag))) : nil
    }

    public func storeRequest(_ tag: UInt64) -> UnsafeMutablePointer<StoreRequest>? {
        if let job = lunJobEntry(tag) {
            guard let j = job else { return nil }
            return UnsafeMutableRawPointer(lunJobs.entries + j).advanced(by: MemoryLayout<LUNJob>.offset(of: \.store)!)
                .assumingMemoryBound(to: StoreRequest.self)
        }
        guard let (c, t) = storeTask(tag) else { return nil }
        return UnsafeMutableRawPointer(c.tasks + t).advanced(by: MemoryLayout<IOTask>.offset(of: \.store)!)
            .assumingMemoryBound(to: StoreRequest.self)
    }

    public func storeVolume(_ tag: UInt64) -> SheepVolume? {
        if let job = lunJobEntry(tag) {
            guard let j = job, case .sheep(let vol) = lunJobs.entries[j].sanitize!.lun.backing
            else { return nil }
            return vol
        }
        guard let (c, t) = storeTask(tag) else { return nil }
        var lun = c.tasks[t].lun
        if case .other(let n) = c.tasks[t].storeTarget { lun = c.tasks[t].scsi.target?.lun(n) }
        guard let lun, case .sheep(let vol) = lun.backing else { return nil }
        return vol
    }

    public func storeFinished(_ tag: UInt64, _ result: StoreResult) {
        if let job = lunJobEntry(tag) {
            if let j = job { jobStoreFinished(j, result) }
            return
        }
        guard let (c, t) = storeTask(tag) else { return }
        storeFinished(c, t, result)
    }

    public func postHome(core: Int, _ request: SheepHomeRequest) { runtime.post(core: core, .sheepHome(request)) }

    public func sharedChangeAnswered(connection index: Int, generation: UInt32) {
        guard let c = connection(index, generation), c.phase != .closing else { return }
        c.sharedChangeAnswered()
    }

    public func postHomeDone(core: Int, _ waiter: SheepWaiter, _ failure: StoreError?) {
        runtime.post(core: core, .sheepHomeDone(waiter, failure))
    }
}
