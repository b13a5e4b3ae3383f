// The simulation's clients against the real target on the real io_uring, before the simulated ring exists:
// an in-process Runtime (one core) serving a zeroed file LUN over iSCSI and NBD on ports the kernel picks,
// stepped by the test thread. Waiting in poll() for the reactor's thread is legitimate here; the simulation
// itself never waits.

import DeterministicRandom
import Glibc
import Logging
import Testing
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor

/// A Runtime with one file-backed LUN, exported over iSCSI and NBD on 127.0.0.1. `stop()` ends it and
/// removes the file.
final class RealRingTarget {
    static let targetName = "iqn.2026-01.org.ringtgt.sim:disk"
    static let lun: UInt64 = 1
    static let blockSize = 512
    static let lunBytes = 8 << 20
    /// The smallest slot the reactor takes, so that commands of more than 64 KiB need R2Ts and pieces.
    static let slotBytes = 65_536
    static let slotCount = 64

    let runtime: Runtime
    let path: String
    var iscsiPort: Int { runtime.boundPortals[0].port }
    var nbdPort: Int { runtime.boundNBDPortals[0].port }
    var nbdExport: String { "\(RealRingTarget.targetName)/\(RealRingTarget.lun)" }

    init(nopIntervalSeconds: UInt64 = ReactorConfig().nopIntervalSeconds) throws {
        var template = Array("/tmp/ringtgt-sim-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw SimTestError("mkstemp: \(String(cString: strerror(errno)))") }
        path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        // Sparse, so zeroed: the clients' shadows start as zeros.
        let truncated = ftruncate(fd, off_t(RealRingTarget.lunBytes))
        close(fd)
        guard truncated == 0 else { unlink(path); throw SimTestError("ftruncate \(path)") }
        var config = ReactorConfig()
        config.slotBytes = RealRingTarget.slotBytes
        config.slotCount = RealRingTarget.slotCount
        config.nopIntervalSeconds = nopIntervalSeconds
        runtime = Runtime(config: config, portals: [Portal(host: "127.0.0.1", port: 0)],
                          nbdPortals: [Portal(host: "127.0.0.1", port: 0)], logger: Logger(label: "sim-real-ring"))
        do {
            try runtime.start(cores: 1)
            let registry = Registry(fabric: runtime, opener: StoreOpener(runtime: runtime), options: Registry.Options())
            for line in ["--lld iscsi --op new --mode target --tid 1 --targetname \(RealRingTarget.targetName)",
                         "--lld iscsi --op new --mode logicalunit --tid 1 --lun \(RealRingTarget.lun) --backing-store \(path)",
                         "--lld iscsi --op bind --mode target --tid 1 -I ALL"] {
                guard case .send(let request, _) = TgtadmCommandLine.parse(line.split(separator: " ").map(String.init))
                else { throw SimTestError("does not parse: \(line)") }
                let r = registry.execute(request)
                guard r.exitCode == 0 else { throw SimTestError("\(line): \(r.stderr)") }
            }
            try runtime.startAccepting()
        } catch {
            runtime.stop()
            unlink(path)
            throw error
        }
    }

    func stop() {
        runtime.stop()
        unlink(path)
    }
}

struct SimTestError: Error, CustomStringConvertible {
    let description: String
    init(_ s: String) { description = s }
}

/// A non-blocking TCP connection to 127.0.0.1:`port`, or -1. Waiting for the handshake is setup, not I/O.
func connectNonBlocking(port: Int) -> Int32 {
    let connectWaitMillis: Int32 = 5000
    let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard s >= 0 else { return -1 }
    var one: Int32 = 1
    setsockopt(s, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = UInt16(port).bigEndian
    addr.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    if rc != 0 {
        var pfd = pollfd(fd: s, events: Int16(POLLOUT), revents: 0)
        var err: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        guard errno == EINPROGRESS, poll(&pfd, 1, connectWaitMillis) == 1,
              getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &len) == 0, err == 0 else {
            close(s)
            return -1
        }
    }
    return s
}

/// Steps the clients until all finish (or `until` holds). When none made progress, waits in poll() for their
/// sockets (the reactor runs on its own thread). `between` runs after every round (a test's fault injection).
func runToCompletion(_ clients: [SimClientBase & SimClient], seed: UInt64, until: (() -> Bool)? = nil,
                     between: (_ round: Int) -> Void = { _ in }) -> [String] {
    let pollWaitMillis: Int32 = 100
    /// Consecutive idle waits after which the run is declared stuck (30 s of a target that answers nothing).
    let maxIdleWaits = 300
    var rng = SeededRandom(seed: seed)
    var idleWaits = 0
    var round = 0
    var fds = [pollfd](repeating: pollfd(), count: clients.count)
    while !(until?() ?? clients.allSatisfy({ $0.isFinished })) {
        round += 1
        var progress = false
        for c in clients where !c.isFinished && c.step(&rng) { progress = true }
        between(round)
        if progress { idleWaits = 0; continue }
        idleWaits += 1
        if idleWaits > maxIdleWaits {
            return ["seed \(hex(seed)): no progress for \(maxIdleWaits * Int(pollWaitMillis)) ms after round \(round): "
                    + clients.map { "\($0.summary), \($0.inFlight) in flight" }.joined(separator: "; ")]
        }
        for (i, c) in clients.enumerated() {
            fds[i] = pollfd(fd: c.fd, events: Int16(POLLIN) | (c.tx.count > 0 ? Int16(POLLOUT) : 0), revents: 0)
        }
        _ = poll(&fds, nfds_t(fds.count), pollWaitMillis)
    }
    return clients.flatMap { c in c.failures.map { "seed \(hex(seed)): \($0)" } }
}

@Suite(.serialized) struct ClientsAgainstRealRingTests {
    static let commandsPerClient = 400
    static let queueDepth = 8
    static let maxBlocksPerCommand = 256
    /// Each client's own 2 MiB of the LUN.
    static let blocksPerClient: UInt64 = 4096

    static func clients(_ t: RealRingTarget, commands: Int = commandsPerClient) -> [SimClientBase & SimClient] {
        let iscsiPort = t.iscsiPort, nbdPort = t.nbdPort
        let n = blocksPerClient
        func iscsi(_ name: String, _ index: UInt64) -> SimISCSIClient {
            SimISCSIClient(name: name, targetName: RealRingTarget.targetName, lun: RealRingTarget.lun,
                           blocks: index * n ..< (index + 1) * n, blockSize: RealRingTarget.blockSize,
                           queueDepth: queueDepth, commands: commands, maxBlocksPerCommand: maxBlocksPerCommand,
                           verify: true, connect: { connectNonBlocking(port: iscsiPort) })
        }
        let nbd = SimNBDClient(name: "nbd0", export: t.nbdExport, blocks: 2 * n ..< 3 * n,
                               blockSize: RealRingTarget.blockSize, queueDepth: queueDepth, commands: commands,
                               maxBlocksPerCommand: maxBlocksPerCommand, verify: true,
                               connect: { connectNonBlocking(port: nbdPort) })
        return [iscsi("iscsi0", 0), iscsi("iscsi1", 1), nbd]
    }

    static func expectAllEnded(_ clients: [SimClientBase & SimClient], seed: UInt64) {
        for c in clients {
            print(c.summary)
            #expect(c.isFinished && c.inFlight == 0, "seed \(hex(seed)): \(c.summary)")
            #expect(c.workload.ended == commandsPerClient && c.workload.issued == commandsPerClient,
                    "seed \(hex(seed)): \(c.summary)")
            #expect(c.workload.reads > 0 && c.workload.writes > 0, "seed \(hex(seed)): \(c.summary)")
        }
    }

    @Test(arguments: [UInt64(0x5EED_0001)])
    func twoISCSIAndOneNBDClientReadBackEveryAcknowledgedWrite(seed: UInt64) throws {
        let target = try RealRingTarget()
        defer { target.stop() }
        let clients = Self.clients(target)
        let failures = runToCompletion(clients, seed: seed)
        #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
        Self.expectAllEnded(clients, seed: seed)
        // Nothing was reset: every command was answered, none lost.
        for c in clients { #expect(c.workload.lost == 0 && c.workload.reconnects == 0, "seed \(hex(seed)): \(c.summary)") }
        // Commands beyond FirstBurstLength went through R2T and Data-Out; READs beyond 8 KiB came in pieces.
        for case let c as SimISCSIClient in clients {
            #expect(c.logins == 1 && c.r2ts > 0 && c.dataOutPDUs >= c.r2ts && c.dataInPDUs > c.workload.reads,
                    "seed \(hex(seed)): \(c.summary)")
        }
    }

    /// The oracle is live against the real target: a block changed in the file behind the clients' back,
    /// after their plans ended and before their read-backs, fails the read-back of every client.
    @Test(arguments: [UInt64(0x5EED_0003)])
    func aBlockChangedBehindTheClientsBackFailsTheirReadBack(seed: UInt64) throws {
        let target = try RealRingTarget()
        defer { target.stop() }
        let clients = Self.clients(target)
        let file = open(target.path, O_WRONLY)
        try #require(file >= 0)
        defer { close(file) }
        var corrupted = [UInt64?](repeating: nil, count: clients.count)
        let junk = [UInt8](repeating: 0xA5, count: RealRingTarget.blockSize)
        let failures = runToCompletion(clients, seed: seed, between: { _ in
            // The plan's last command has ended and the read-back is not issued before the client's next step.
            for (i, c) in clients.enumerated() where corrupted[i] == nil && c.workload.ended == Self.commandsPerClient {
                let block = c.workload.range.upperBound - 1
                let n = junk.withUnsafeBytes { pwrite(file, $0.baseAddress!, $0.count, off_t(block) * off_t(RealRingTarget.blockSize)) }
                precondition(n == RealRingTarget.blockSize, "pwrite: \(n)")
                corrupted[i] = block
            }
        })
        for (i, c) in clients.enumerated() {
            let block = try #require(corrupted[i])
            let caught = failures.filter { $0.contains("\(c.name): READ") && $0.contains("(read-back): block \(block) ") }
            #expect(caught.count == 1 && failures.count == clients.count, "seed \(hex(seed)): \(failures)")
        }
    }

    @Test(arguments: [UInt64(0x5EED_0004)])
    func anIdleISCSIClientAnswersTheTargetsNOPInPing(seed: UInt64) throws {
        let pingWaitMillis: Int32 = 5000
        let target = try RealRingTarget(nopIntervalSeconds: 1)
        defer { target.stop() }
        let client = try #require(Self.clients(target, commands: 40).first as? SimISCSIClient)
        // Log in, then stay silent: with nothing in flight, what arrives next is the target's ping.
        var failures = runToCompletion([client], seed: seed, until: { client.logins == 1 })
        var pfd = pollfd(fd: client.fd, events: Int16(POLLIN), revents: 0)
        #expect(poll(&pfd, 1, pingWaitMillis) == 1, "seed \(hex(seed)): no NOP-In within \(pingWaitMillis) ms")
        failures += runToCompletion([client], seed: seed &+ 1)
        #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
        #expect(client.pingsAnswered >= 1 && client.workload.reconnects == 0 && client.workload.ended == 40,
                "seed \(hex(seed)): \(client.summary)")
    }

    @Test(arguments: [UInt64(0x5EED_0002)])
    func clientsReconnectAfterResetsAndStillReadBack(seed: UInt64) throws {
        let resetsPerClient = 3
        let target = try RealRingTarget()
        defer { target.stop() }
        let clients = Self.clients(target)
        var injected = [Int](repeating: 0, count: clients.count)
        let failures = runToCompletion(clients, seed: seed, between: { _ in
            // A reset whenever a client passes another quarter of its plan with commands in flight.
            for (i, c) in clients.enumerated() where injected[i] < resetsPerClient && c.fd >= 0 && c.inFlight > 0 {
                if c.workload.ended >= (injected[i] + 1) * Self.commandsPerClient / (resetsPerClient + 1) {
                    shutdown(c.fd, Int32(SHUT_RDWR))
                    injected[i] += 1
                }
            }
        })
        #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
        Self.expectAllEnded(clients, seed: seed)
        for (i, c) in clients.enumerated() {
            #expect(injected[i] == resetsPerClient, "seed \(hex(seed)): \(c.summary)")
            #expect(c.workload.reconnects >= resetsPerClient && c.workload.lost > 0, "seed \(hex(seed)): \(c.summary)")
        }
    }
}
