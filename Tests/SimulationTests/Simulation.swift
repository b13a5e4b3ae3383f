// The ring simulation's driver (issue 8): one reactor over a SimulatedRing, iSCSI and NBD clients on socket
// pairs, and for sheepdog LUNs the test server's own request handling pumped in the same loop. Everything runs
// on the calling thread, one step at a time, so a seed replays a run exactly.
//
// A run checks the engine's invariants:
//   - every acknowledged write reads back (the clients' shadows and final read-back);
//   - every command ends (the run must finish within its turn budget: a hung command never does);
//   - no task, buffer slot, R2T permit or store operation leaks (all zero once every client has gone);
//   - memory stays bounded (operations pending on the ring and connections stay under fixed caps).

#if canImport(Glibc)
import DeterministicRandom
import Glibc
#endif
import Logging
import SheepProtocol
@testable import SheepTestServer
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor

enum SimStore: String, CaseIterable, Sendable {
    case file, null, sheep
}

struct SimulationOptions: Sendable, CustomStringConvertible {
    var seed: UInt64
    var store: SimStore
    var faults = SimulatedFaults()
    var iscsiClients = 2
    var nbdClients = 1
    var commandsPerClient = 200
    var queueDepth = 8
    var maxBlocksPerCommand = 256
    /// Blocks each client owns on the shared LUN (disjoint ranges).
    var blocksPerClient: UInt64 = 4096
    /// A run that has not finished after this many turns has a command that never ends.
    var turnBudget = 400_000
    /// Virtual time that passes per turn (ticks, login and Data-Out timeouts run on it).
    var nanosPerTurn: UInt64 = 1_000_000
    /// Each iSCSI client, once this many of its commands ended and none is in flight, goes quiet for this
    /// much virtual time (longer than the idle trim, shorter than the NOP-In interval), then carries on.
    var pause: (afterCommands: Int, nanos: UInt64)? = nil

    var description: String {
        "seed 0x\(String(seed, radix: 16)) store \(store.rawValue) faults [\(faults)] iscsi \(iscsiClients) nbd \(nbdClients) "
            + "commands \(commandsPerClient) qd \(queueDepth)"
    }

    /// How to run this one seed again.
    var reproduce: String {
        "RINGTGT_SIM_SEED=0x\(String(seed, radix: 16)) RINGTGT_SIM_STORE=\(store.rawValue) swift test --filter RingSimulation/replay"
    }
}

struct SimulationResult {
    var turns = 0
    var ring = SimulatedRingCounters()
    var failures: [String] = []
    var summaries: [String] = []
    var commandsEnded = 0
    var taskTablesReleased = 0
    /// With `pause`: the task tables given back so far, as each paused client carries on.
    var taskTablesReleasedAtResume: [Int] = []
}

final class Simulation {
    static let blockSize = 512
    static let targetName = "iqn.2026-12.org.ringtgt:sim"
    static let lun: UInt64 = 1
    /// Caps for "memory stays bounded": operations pending on the ring at once (each connection has at most a
    /// recv, a send and its store operations; plus the accept, tick and mailbox), and open connections.
    static let pendingOperationsCap = 4_096
    /// Turns without any progress before virtual time jumps to the next timeout.
    static let idleTurnsBeforeClockJump = 16

    let options: SimulationOptions
    let ring: SimulatedRing
    let runtime: Runtime
    let core: SimulatedCore
    let registry: Registry
    private var clients: [SimClient] = []
    private var random: SeededRandom
    private let scratch: String
    private var sheepServer: SheepTestServer?
    private var sheepConnections: [ClientConnection] = []
    private var sheepConnectionCount: UInt64 = 0
    private var failures: [String] = []
    private var connectionCap: Int

    init(_ options: SimulationOptions) throws {
        self.options = options
        ring = SimulatedRing(seed: options.seed, faults: options.faults)
        // The clients draw from another stream than the ring, so a change of fault rates keeps their plans.
        random = SeededRandom(seed: options.seed ^ 0x5EED_C11E_47AA_0000)
        var template = Array("/tmp/ringtgt-sim-XXXXXX".utf8CString)
        scratch = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
        var config = ReactorConfig()
        config.slotCount = 32
        // The smallest slots: writes over 64 KiB go through R2T and Data-Out, commands over a slot in pieces.
        config.slotBytes = 65_536
        config.maxConnections = 16
        config.submissionEntries = 64
        connectionCap = config.maxConnections
        var log = Logger(label: "sim")
        // RINGTGT_SIM_LOG=debug shows the daemon's log lines (why a connection closed, ...).
        log.logLevel = getenv("RINGTGT_SIM_LOG").flatMap { Logger.Level(rawValue: String(cString: $0)) } ?? .critical
        runtime = Runtime(config: config, portals: [Portal(host: "127.0.0.1", port: 3260)],
                          nbdPortals: [Portal(host: "127.0.0.1", port: 10809)], logger: log)
        core = try runtime.startSimulated(ring)
        registry = Registry(fabric: runtime, opener: StoreOpener(runtime: runtime))
        try configure()
    }

    deinit {
        sheepServer?.stop()
        let dir = scratch
        unlink(dir + "/lun.img")
        rmdir(dir)
    }

    private var clientBlocks: UInt64 {
        options.blocksPerClient * UInt64(options.iscsiClients + options.nbdClients)
    }

    private func configure() throws {
        let bytes = clientBlocks * UInt64(Simulation.blockSize)
        var lu = ["--lld", "iscsi", "--op", "new", "--mode", "lu", "--tid", "1", "--lun", "\(Simulation.lun)"]
        switch options.store {
        case .file:
            let path = scratch + "/lun.img"
            let fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
            guard fd >= 0, ftruncate(fd, off_t(bytes)) == 0 else { throw SimulationError("cannot create \(path)") }
            close(fd)
            lu += ["--backing-store", path]
        case .null:
            lu += ["--bstype", "null", "--backing-store", "sim-null"]
        case .sheep:
            var o = ServerOptions()
            o.tcpPort = 0
            o.seed = options.seed
            let server = try SheepTestServer(options: o)
            try server.start()
            sheepServer = server
            let port = Int(server.tcpPort ?? 0)
            let dog = DogOperations(client: try SheepClient(endpoint: .tcp(host: "127.0.0.1", port: UInt16(port))))
            try dog.create(name: "sim", size: bytes)
            lu += ["--bstype", "sheepdog", "--backing-store", "tcp:127.0.0.1:\(port):sim"]
            // The reactor's sheep channels connect through the ring: each gets a socket pair whose other end
            // the test server's connection logic serves from this loop.
            ring.connectHook = { [unowned self] fd, _, _ in self.connectSheep(fd) }
        }
        for line in [["--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", "1", "--targetname", Simulation.targetName],
                     lu,
                     ["--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"]] {
            guard case .send(let request, _) = TgtadmCommandLine.parse(line) else { throw SimulationError("cannot parse \(line)") }
            let r = registry.execute(request)
            if r.exitCode != 0 { throw SimulationError("tgtadm \(line.joined(separator: " ")): \(r.stderr)") }
        }
        var first: UInt64 = 0
        func range() -> Range<UInt64> {
            defer { first += options.blocksPerClient }
            return first..<(first + options.blocksPerClient)
        }
        let verify = options.store != .null
        for i in 0..<options.iscsiClients {
            clients.append(SimISCSIClient(name: "iscsi\(i)", targetName: Simulation.targetName, lun: Simulation.lun,
                                          blocks: range(), blockSize: Simulation.blockSize, queueDepth: options.queueDepth,
                                          commands: options.commandsPerClient, maxBlocksPerCommand: options.maxBlocksPerCommand,
                                          verify: verify, connect: { [unowned self] in self.connect(listener: 0) }))
        }
        for i in 0..<options.nbdClients {
            clients.append(SimNBDClient(name: "nbd\(i)", export: "\(Simulation.targetName)/\(Simulation.lun)",
                                        blocks: range(), blockSize: Simulation.blockSize, queueDepth: options.queueDepth,
                                        commands: options.commandsPerClient, maxBlocksPerCommand: options.maxBlocksPerCommand,
                                        verify: verify, connect: { [unowned self] in self.connect(listener: 1) }))
        }
    }

    /// A new connection to portal `listener` (0 iSCSI, 1 NBD): the client's end, non-blocking.
    private func connect(listener: Int) -> Int32 {
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else { return -1 }
        _ = fcntl(pair[0], F_SETFL, fcntl(pair[0], F_GETFL) | O_NONBLOCK)
        ring.connect(pair[1], toListener: core.listeners[listener])
        return pair[0]
    }

    private func connectSheep(_ fd: Int32) -> Int32 {
        guard let server = sheepServer else { return -ECONNREFUSED }
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else { return -errno }
        dup2(pair[0], fd)
        close(pair[0])
        sheepConnections.append(ClientConnection(fd: pair[1], number: sheepConnectionCount, server: server))
        sheepConnectionCount += 1
        return 0
    }

    /// Serves what the reactor's sheep channels sent; drops connections that ended.
    private func pumpSheep() -> Bool {
        var progressed = false
        var i = 0
        while i < sheepConnections.count {
            if sheepConnections[i].serveAvailable() {
                i += 1
            } else {
                close(sheepConnections[i].fd)
                sheepConnections.remove(at: i)
                progressed = true
            }
        }
        return progressed
    }

    private func fail(_ what: String) {
        failures.append(what)
    }

    /// Runs the clients to the end, then lets them go and checks that nothing leaked.
    func run() -> SimulationResult {
        var result = SimulationResult()
        var idle = 0
        var turns = 0
        var pauseTaken = [Bool](repeating: false, count: clients.count)
        var pausedUntilNanos = [UInt64](repeating: 0, count: clients.count)
        while !clients.allSatisfy(\.isFinished) {
            var progressed = false
            for (i, c) in clients.enumerated() {
                if let p = options.pause, !pauseTaken[i], let b = c as? SimISCSIClient, b.workload.ended >= p.afterCommands {
                    // Drain first: no new commands until what is in flight has ended, then go quiet.
                    b.holdingNewCommands = true
                    if c.inFlight == 0 {
                        pauseTaken[i] = true
                        pausedUntilNanos[i] = ring.nowNanos + p.nanos
                    }
                }
                if pauseTaken[i], let b = c as? SimISCSIClient, b.holdingNewCommands {
                    if ring.nowNanos < pausedUntilNanos[i] { continue }
                    b.holdingNewCommands = false
                    result.taskTablesReleasedAtResume.append(core.taskTablesReleased)
                }
                if c.step(&random) { progressed = true }
            }
            if pumpSheep() { progressed = true }
            let before = ring.counters.completed
            core.turn()
            if ring.counters.completed != before { progressed = true }
            turns += 1
            ring.advanceClock(to: ring.nowNanos + options.nanosPerTurn)
            if progressed { idle = 0 } else { idle += 1 }
            if idle >= Simulation.idleTurnsBeforeClockJump, let next = ring.nextDeadline {
                ring.advanceClock(to: next)
                idle = 0
            }
            if ring.pendingCount > Simulation.pendingOperationsCap {
                fail("\(ring.pendingCount) operations pending on the ring (cap \(Simulation.pendingOperationsCap))")
                break
            }
            if core.connectionCount > connectionCap {
                fail("\(core.connectionCount) connections open (cap \(connectionCap))")
                break
            }
            if turns >= options.turnBudget {
                let stuck = clients.filter { !$0.isFinished }.map { "\($0.name): \($0.inFlight) in flight; \($0.summary)" }
                fail("not finished after \(turns) turns (a command never ended?): " + stuck.joined(separator: "; "))
                break
            }
        }
        // Every client has ended its commands: nothing may still be held for them.
        if failures.isEmpty {
            let settled = (0..<64).contains { _ in
                _ = pumpSheep()
                core.turn()
                return core.activeTasks == 0 && core.storeOperationsInFlight == 0
            }
            if !settled {
                fail("\(core.activeTasks) task(s), \(core.storeOperationsInFlight) store operation(s) still active after every command ended")
            }
        }
        for c in clients { result.summaries.append("\(c.name): \(c.summary)"); failures += c.failures.map { "\(c.name): \($0)" } }
        // The clients go; their connections close and must give everything back.
        clients.removeAll()
        for _ in 0..<10_000 where core.connectionCount > 0 {
            _ = pumpSheep()
            core.turn()
            ring.advanceClock(to: ring.nowNanos + options.nanosPerTurn)
        }
        if core.connectionCount != 0 { fail("\(core.connectionCount) connection(s) never closed after their clients left") }
        if core.slotsInUse != 0 { fail("\(core.slotsInUse) buffer slot(s) leaked") }
        if core.permitsTaken != 0 { fail("\(core.permitsTaken) R2T permit(s) leaked") }
        if ring.counters.unsupported != 0 { fail("\(ring.counters.unsupported) SQE(s) with an opcode the simulation does not know") }
        result.taskTablesReleased = core.taskTablesReleased
        core.stop()
        result.turns = turns
        result.ring = ring.counters
        result.failures = failures
        return result
    }
}

struct SimulationError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
