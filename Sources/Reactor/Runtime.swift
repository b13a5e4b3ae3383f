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
import SheepProtocol

/// The daemon's cores and what they share: the published configuration, the session registry (for
/// reinstatement across cores) and TSIH numbering. Only login, logout and the control plane touch the
/// shared parts; the I/O path never does.
public final class Runtime: @unchecked Sendable {
    public let config: ReactorConfig
    public let requestedPortals: [Portal]
    /// `--nbd portal=`: NBD listeners, on every core like the iSCSI portals.
    public let requestedNBDPortals: [Portal]
    let logger: Logger
    private(set) var reactors: [Reactor] = []
    private var threads: [pthread_t] = []
    private let snapshotBox = Locked<ConfigSnapshot>(.empty)
    private let sessionsBox = Locked(SessionTable())
    private let tsihs = Locked(TSIHAllocator())
    /// Listening ports after binding (a portal asked with port 0 gets the kernel's choice).
    public private(set) var boundPortals: [Portal] = []
    public private(set) var boundNBDPortals: [Portal] = []
    /// Sockets bound by `start` that `startAccepting` makes listen (the cores own and close them).
    private var boundSockets: [(fd: Int32, portal: Portal)] = []
    /// Unix listeners' socket files, removed when the runtime stops.
    private var unixSocketPaths: [String] = []
    let defaultKeys: TargetKeyDefaults

    /// Per initiator port and target (the I_T nexus): the live session, and how many connections of ended
    /// sessions still have commands running at a store. A new session of that nexus starts only once both are
    /// gone (`sessionMayStart`): otherwise a write of the dead session could land after a newer write of the
    /// new one (found by the ring simulation: seed 0x5eed, sheep store).
    public struct SessionTable {
        var live: [SessionKey: (core: Int, tsih: UInt16)] = [:]
        var draining = DrainingCounts<SessionKey>()
        /// NBD has no session identity: per export (tid, LUN), closed connections with commands still at a store.
        var exportsDraining = DrainingCounts<ExportKey>()
    }

    /// Closed connections per key whose commands are still at a store.
    public struct DrainingCounts<Key: Hashable> {
        private var counts: [Key: Int] = [:]
        mutating func add(_ key: Key) { counts[key, default: 0] += 1 }
        mutating func remove(_ key: Key) {
            if let n = counts[key], n > 1 { counts[key] = n - 1 } else { counts.removeValue(forKey: key) }
        }
        func contains(_ key: Key) -> Bool { counts[key] != nil }
    }

    public struct ExportKey: Hashable {
        var tid: Int
        var lun: UInt64
    }

    public struct SessionKey: Hashable {
        var initiator: String
        var isid: UInt64
        var target: String
    }

    public init(config: ReactorConfig, portals: [Portal], nbdPortals: [Portal] = [], logger: Logger) {
        self.config = config
        self.requestedPortals = portals
        self.requestedNBDPortals = nbdPortals
        self.logger = logger
        var d = TargetKeyDefaults()
        // InitialR2T=Yes: unsolicited data is immediate data only, so no buffer waits on a Data-Out that a
        // stalled connection might never deliver (see Reactor's R2T permits).
        d.initialR2T = true
        d.maxRecvDataSegmentLength = min(d.maxRecvDataSegmentLength, config.slotBytes)
        d.maxBurstLength = min(d.maxBurstLength, config.slotBytes)
        d.firstBurstLength = min(d.firstBurstLength, config.slotBytes)
        defaultKeys = d
    }

    var currentSnapshot: ConfigSnapshot { snapshotBox.withLock { $0 } }

    /// Binds every portal once per core (SO_REUSEPORT) and starts one pinned thread per core. The portals
    /// refuse connections until `startAccepting`: a login must never meet a half-applied configuration.
    public func start(cores: Int) throws {
        precondition(cores >= 1)
        var perCore: [[Int32]] = Array(repeating: [], count: cores)
        var kinds: [FrontEnd] = []
        func bind(_ requested: [Portal], _ kind: FrontEnd) throws -> [Portal] {
            var bound: [Portal] = []
            for p in requested {
                var portal = p
                for core in 0..<cores {
                    // A unix socket has no SO_REUSEPORT: one socket, and each further core accepts on a duplicate.
                    let fd = portal.unixPath != nil && core > 0 ? dup(perCore[0].last!) : try SocketAddress.bound(portal)
                    if fd < 0 { throw NetError.system("dup", errno) }
                    if portal.unixPath == nil && portal.port == 0 { portal.port = SocketAddress.boundPort(fd) }
                    perCore[core].append(fd)
                    boundSockets.append((fd, portal))
                }
                if let path = portal.unixPath { unixSocketPaths.append(path) }
                kinds.append(kind)
                bound.append(portal)
            }
            return bound
        }
        boundPortals = try bind(requestedPortals, .iscsi)
        boundNBDPortals = try bind(requestedNBDPortals, .nbd)
        // Each ring is created on the thread that drives it: SINGLE_ISSUER rings refuse any other submitter.
        let online = Int(rt_cpu_online_count())
        var boxes: [ThreadBox] = []
        for core in 0..<cores {
            var log = logger
            log[metadataKey: "core"] = "\(core)"
            let box = ThreadBox(core: core, config: config, runtime: self, listeners: perCore[core],
                                listenerKinds: kinds, logger: log, cpu: online > 1 ? core % online : -1)
            boxes.append(box)
            let ref = Unmanaged.passRetained(box)
            var tid = pthread_t()
            let rc = pthread_create(&tid, nil, { arg in
                let box = Unmanaged<ThreadBox>.fromOpaque(arg!).takeRetainedValue()
                if box.cpu >= 0 { _ = rt_pin_to_cpu(Int32(box.cpu)) }
                do {
                    box.reactor = try Reactor(core: box.core, config: box.config, runtime: box.runtime,
                                              listeners: box.listeners, listenerKinds: box.listenerKinds,
                                              logger: box.logger)
                } catch {
                    box.error = error
                }
                box.ready.signal()
                box.reactor?.run()
                box.reactor = nil
                return nil
            }, ref.toOpaque())
            precondition(rc == 0, "pthread_create failed")
            threads.append(tid)
        }
        var failure: Error? = nil
        for box in boxes {
            box.ready.wait()
            if let r = box.reactor { reactors.append(r) } else if failure == nil { failure = box.error }
        }
        if let failure {
            stop()
            throw failure
        }
    }

    /// The simulation's runtime: one core, whose reactor runs on the calling thread over `ring`, turned by the
    /// caller (`Reactor.turn`). Each requested portal gets a listening descriptor that only names it: its
    /// connections come from `SimulatedRing.connect(_:toListener:)`. Replies the control plane waits for are
    /// awaited by turning the reactor, so the whole run stays on one thread.
    public func startSimulated(_ ring: SimulatedRing) throws -> SimulatedCore {
        var fds: [Int32] = []
        var kinds: [FrontEnd] = []
        for (portals, kind) in [(requestedPortals, FrontEnd.iscsi), (requestedNBDPortals, .nbd)] {
            for p in portals {
                fds.append(socket(AF_UNIX, Int32(RT_SOCK_STREAM | RT_SOCK_CLOEXEC), 0))
                kinds.append(kind)
                if kind == .iscsi { boundPortals.append(p) } else { boundNBDPortals.append(p) }
            }
        }
        let r = try Reactor(core: 0, config: config, runtime: self, listeners: fds, listenerKinds: kinds,
                            logger: logger, simulated: ring)
        reactors = [r]
        simulationTurn = { [unowned r] in r.turn() }
        r.start()
        for (i, fd) in fds.enumerated() { r.armAccept(i, fd) }
        return SimulatedCore(reactor: r, listeners: fds)
    }

    /// Set for a simulated runtime: one pass of its reactor.
    private var simulationTurn: (() -> Void)?

    /// Waits for a core's reply: blocks (a control-plane thread), or in a simulation turns the reactor until
    /// it has answered.
    private func awaitReply(_ reply: CoreReply) {
        guard let simulationTurn else { reply.wait(); return }
        while !reply.tryWait() { simulationTurn() }
    }

    /// Opens the portals: every bound socket listens and every core arms its accepts. Called once the
    /// configuration and exports are applied.
    public func startAccepting() throws {
        for s in boundSockets { try SocketAddress.listen(s.fd, portal: s.portal) }
        boundSockets = []
        for r in reactors { r.mailbox.post(.startAccepting) }
    }

    /// Stops every core and waits for their threads.
    public func stop() {
        for r in reactors { r.mailbox.post(.shutdown) }
        for t in threads { pthread_join(t, nil) }
        threads = []
        for path in unixSocketPaths { unlink(path) }
        unixSocketPaths = []
    }

    public var coreCount: Int { reactors.count }

    /// Sends a message to a core's mailbox (cross-core work never touches another core's state directly).
    func post(core: Int, _ m: CoreMessage) {
        reactors[core].mailbox.post(m)
    }

    /// ControlFabric: the VDI's home core appends the change to the shared record, as it does a reset's.
    public func sharePortGroups(_ unit: LogicalUnit, _ change: PortGroupChange) {
        guard case .sheep(let vol) = unit.backing, vol.coherent, vol.homeCore < reactors.count else { return }
        if case .state(let id, _) = change { unit.state.portGroupStatePosted(id) }
        post(core: vol.homeCore, .sheepHome(SheepHomeRequest(volume: vol, kind: .change(.portGroups(change)),
                                                             originCore: vol.homeCore, waiter: .none)))
    }

    // MARK: - Control fabric

    /// Publishes a configuration and returns once every core applied it.
    public func publish(_ snapshot: ConfigSnapshot) {
        snapshotBox.withLock { $0 = snapshot }
        let replies = reactors.map { r -> CoreReply in
            let reply = CoreReply()
            r.mailbox.post(.config(snapshot, reply))
            return reply
        }
        for r in replies { awaitReply(r) }
    }

    public func sessions() -> [SessionInfo] {
        var all: [SessionInfo] = []
        for r in reactors {
            let q = SessionQuery()
            r.mailbox.post(.sessions(q))
            awaitReply(q.reply)
            all += q.result
        }
        return all
    }

    public func commandsInFlight(on units: [LogicalUnit]) -> Int {
        let ids = units.map(ObjectIdentifier.init)
        var total = 0
        for r in reactors {
            let q = InFlightQuery(units: ids)
            r.mailbox.post(.commandsInFlight(q))
            awaitReply(q.reply)
            total += q.result
        }
        return total
    }

    /// Every core's counters for `units` and its connections, summed per LUN.
    public func statistics(of units: [LogicalUnit]) -> StatisticsSample {
        let keys = units.map { (slot: $0.statisticsSlot, id: $0.statisticsID) }
        var sample = StatisticsSample(luns: Array(repeating: LUNStatistics(), count: units.count), connections: [])
        for r in reactors {
            let q = StatisticsQuery(units: keys)
            r.mailbox.post(.statistics(q))
            awaitReply(q.reply)
            for i in q.luns.indices { sample.luns[i].add(q.luns[i]) }
            sample.connections += q.connections
        }
        return sample
    }

    /// Closes every session of a target (admin delete with --force).
    public func closeSessions(tid: Int) {
        for s in sessions() where s.tid == tid {
            for r in reactors { r.mailbox.post(.closeSession(tsih: s.tsih)) }
        }
    }

    // MARK: - Sessions

    /// A TSIH no live session holds (nil when all are held); `releaseTSIH` returns it when the session ends.
    func allocateTSIH() -> UInt16? {
        tsihs.withLock { $0.allocate() }
    }

    func releaseTSIH(_ tsih: UInt16) {
        tsihs.withLock { $0.release(tsih) }
    }

    /// Registers a new session; an older one with the same initiator port and target is closed (reinstatement).
    func registerSession(initiator: String, isid: UInt64, targetName: String, core: Int, tsih: UInt16) {
        let key = SessionKey(initiator: initiator.lowercased(), isid: isid, target: targetName.lowercased())
        let old = sessionsBox.withLock { m -> (core: Int, tsih: UInt16)? in
            let o = m.live[key]
            m.live[key] = (core, tsih)
            return o
        }
        if let old, old.core < reactors.count {
            reactors[old.core].mailbox.post(.closeSession(tsih: old.tsih))
        }
    }

    /// Forgets a session that ended, unless a newer session with the same initiator port already took its place.
    /// `stillRunning`: its connection still has commands at a store; `endDraining` follows when they ended.
    func unregisterSession(initiator: String, isid: UInt64, targetName: String, tsih: UInt16, stillRunning: Bool = false) {
        let key = SessionKey(initiator: initiator.lowercased(), isid: isid, target: targetName.lowercased())
        sessionsBox.withLock { m in
            if m.live[key]?.tsih == tsih { m.live.removeValue(forKey: key) }
            if stillRunning { m.draining.add(key) }
        }
    }

    /// The commands of an ended session's connection (`unregisterSession(stillRunning: true)`) have all ended.
    func endDraining(initiator: String, isid: UInt64, targetName: String) {
        let key = SessionKey(initiator: initiator.lowercased(), isid: isid, target: targetName.lowercased())
        sessionsBox.withLock { $0.draining.remove(key) }
    }

    /// Whether a new session of this initiator port may start now (RFC 7143 §6.3.5: the old session's tasks
    /// are terminated before the new one goes on). An old session still live is asked to close; the login
    /// waits (LoginDriver parks it) while that session or the commands of an ended one are still running.
    /// `closeOld`: ask a live old session to close (the first time only; a parked login asks again without).
    func sessionMayStart(initiator: String, isid: UInt64, targetName: String, closeOld: Bool) -> Bool {
        let key = SessionKey(initiator: initiator.lowercased(), isid: isid, target: targetName.lowercased())
        let (old, draining) = sessionsBox.withLock { m in (m.live[key], m.draining.contains(key)) }
        if closeOld, let old, old.core < reactors.count { reactors[old.core].mailbox.post(.closeSession(tsih: old.tsih)) }
        return old == nil && !draining
    }

    /// An NBD connection closed with commands still at a store (`ended: false`), or they have all ended.
    func exportDraining(tid: Int, lun: UInt64, ended: Bool) {
        let key = ExportKey(tid: tid, lun: lun)
        sessionsBox.withLock { m in if ended { m.exportsDraining.remove(key) } else { m.exportsDraining.add(key) } }
    }

    /// Whether an NBD connection may begin transmission on an export: not while a closed connection's commands
    /// on it still run.
    func exportMayStart(tid: Int, lun: UInt64) -> Bool {
        sessionsBox.withLock { !$0.exportsDraining.contains(ExportKey(tid: tid, lun: lun)) }
    }

    // MARK: - Login support

    /// Target parameters that tgt keeps beside the login keys (NOP-In timing), not negotiated.
    static let nonLoginKeys: Set<String> = ["nop_interval", "nop_count"]

    func keyDefaults(for target: TargetRuntime?) -> TargetKeyDefaults {
        guard let target else { return defaultKeys }
        if target.params.isEmpty {
            var d = defaultKeys
            d.targetAlias = target.alias
            return d
        }
        var d = (try? TargetKeyDefaults.from(params: target.params.filter { !Runtime.nonLoginKeys.contains($0.key) }))
            ?? defaultKeys
        // Unsolicited Data-Out is not accepted (see ReactorConfig and docs/DESIGN.md): InitialR2T stays Yes.
        d.initialR2T = true
        if d.targetAlias == nil { d.targetAlias = target.alias }
        d.maxRecvDataSegmentLength = min(d.maxRecvDataSegmentLength, config.slotBytes)
        d.maxBurstLength = min(d.maxBurstLength, config.slotBytes)
        d.firstBurstLength = min(d.firstBurstLength, config.slotBytes)
        return d
    }

    /// TargetAddress values for SendTargets: each portal as "addr:port,tpgt"; a wildcard portal answers with
    /// the address the initiator connected to.
    func portalAddresses(localAddress: String, tpgt: UInt16) -> [String] {
        boundPortals.map { p in
            var host = p.host
            if host == "0.0.0.0" || host == "::" { host = localAddress }
            let h = host.contains(":") ? "[\(host)]" : host
            return "\(h):\(p.port),\(tpgt)"
        }
    }
}

public final class ThreadBox {
    let core: Int
    let config: ReactorConfig
    unowned let runtime: Runtime
    let listeners: [Int32]
    let listenerKinds: [FrontEnd]
    let logger: Logger
    let cpu: Int
    let ready = CoreReply()
    var reactor: Reactor?
    var error: Error?

    init(core: Int, config: ReactorConfig, runtime: Runtime, listeners: [Int32], listenerKinds: [FrontEnd],
         logger: Logger, cpu: Int) {
        self.core = core
        self.config = config
        self.runtime = runtime
        self.listeners = listeners
        self.listenerKinds = listenerKinds
        self.logger = logger
        self.cpu = cpu
    }
}

extension Runtime: ControlFabric {
    public func portals() -> [PortalInfo] {
        boundPortals.map { PortalInfo(host: $0.host, port: $0.port, portalGroupTag: 1) }
    }

    public func nbdPortals() -> [PortalInfo] {
        boundNBDPortals.map { PortalInfo(host: $0.host, port: $0.port, portalGroupTag: 1, unixPath: $0.unixPath) }
    }
}

/// The one core of a simulated runtime, for the driver: turn it, hand it connections, stop it.
public final class SimulatedCore {
    let reactor: Reactor
    /// The listening descriptor of each portal, iSCSI ones first, in the order they were requested.
    public let listeners: [Int32]

    init(reactor: Reactor, listeners: [Int32]) {
        self.reactor = reactor
        self.listeners = listeners
    }

    /// One pass of the reactor's loop.
    public func turn() { reactor.turn() }

    /// Connections open (any phase).
    public var connectionCount: Int { reactor.connections.reduce(0) { $0 + ($1 == nil ? 0 : 1) } }
    /// Buffer slots in use (held by commands or queued sends).
    public var slotsInUse: Int { reactor.pool.slotCount - reactor.pool.freeCount }
    /// R2T permits taken.
    public var permitsTaken: Int { reactor.r2tPermitCount - reactor.r2tPermits }
    /// Tasks active over all connections.
    public var activeTasks: Int { reactor.connections.reduce(0) { $0 + ($1?.activeTasks ?? 0) } }
    /// Idle connections whose task table was given back (Reactor.trimIdleConnections).
    public var taskTablesReleased: Int { reactor.taskTablesReleased }
    /// Store operations in flight over all connections.
    public var storeOperationsInFlight: Int { reactor.connections.reduce(0) { $0 + ($1?.storeInFlight ?? 0) } }

    /// Stops the loop and tears every connection down, as a shutdown does.
    public func stop() {
        reactor.running = false
        reactor.shutdownAll()
    }
}
