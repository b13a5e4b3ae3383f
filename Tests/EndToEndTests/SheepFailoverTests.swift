// Failover over two sheep gateways (issue 14): two ringtgtd serve one VDI as one LU, each through its own
// sheep node; a verified write load runs over both paths while gateway A is killed with SIGKILL and
// restarted, or while A's sheep node leaves the cluster and comes back. Every acknowledged write must read
// back through both gateways, and the path through B must never stall longer than the bound below.
//
// The writers do what dm-multipath does for a path that fails: a command that gets no answer (the
// connection closed) is not acknowledged, so it is sent again through the other path, with the same data.

import Foundation
import ISCSIWire
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Bounds, with their units.
enum FailoverLimits {
    /// The longest the load through a surviving path may go without an acknowledged write, while the other
    /// gateway dies, restarts and takes its lock back. README "Multipath over sheepdog" quotes it.
    static let pathStallBoundSeconds = 5.0
    /// The longest a write caught by its gateway's death may take, from its first sending to its
    /// acknowledgement through the other gateway (the path fails, log in there, send again).
    static let failoverBoundSeconds = 5.0
    /// Any one command of the load: longer means the path is failed.
    static let commandTimeoutSeconds = 10.0
    /// Logins one writer tries, on each path in turn, before it gives up.
    static let loginAttempts = 40
    /// Acknowledged writes each phase waits for before the next fault.
    static let writesPerPhase = 64
    /// How long one phase may take to reach `writesPerPhase`.
    static let phaseSeconds = 60.0
    /// How long a gateway serves a LU whose sheep node is gone before it reports it unavailable
    /// (LUNState.unreachableSecondsBeforeUnavailable in the daemon).
    static let unavailableAfterSeconds = 5.0
    /// What the measurement of that bound may add: the checker's polling (SheepE2ELimits' backoff) and the
    /// gateway noticing that the node closed its connections.
    static let checkerSlackSeconds = 2.0
    /// How long a gateway takes to serve again once its node is back: its channel's reconnect backoff
    /// (SheepChannelLimits.maxBackoffSeconds) and the checker's polling.
    static let availableAgainSeconds = 8.0
}

/// One gateway: a ringtgtd serving the VDI as LUN 1 of target 1 through one sheep node, that a test can
/// kill and start again with the same configuration.
final class FailoverGateway {
    let name: String
    let backingStore: String
    let params: String
    /// Target keys set before the LUN is added (`alua_group`, `relative_target_port_id`), in order.
    let targetKeys: [(String, String)]
    let scratch: Scratch
    private(set) var daemon: TargetDaemon
    private var starts = 1

    static let iqn = "\(RunningTarget.iqnPrefix):t1"

    init(_ name: String, backingStore: String, params: String, targetKeys: [(String, String)] = []) throws {
        self.name = name
        self.backingStore = backingStore
        self.params = params
        self.targetKeys = targetKeys
        scratch = try Scratch()
        do {
            daemon = try Self.start(name, backingStore: backingStore, params: params, targetKeys: targetKeys,
                                    scratch: scratch, label: name)
        } catch {
            scratch.remove()
            throw error
        }
    }

    private static func start(_ name: String, backingStore: String, params: String, targetKeys: [(String, String)],
                              scratch: Scratch, label: String) throws -> TargetDaemon {
        let d = try TargetDaemon(peer: .ringtgt, cores: 2, portals: [.ipv4Loopback], extraArgs: [],
                                 launcher: try RingtgtLauncher().launcher(for: .ringtgt), logDir: scratch.url, label: label,
                                 reportProblem: { Issue.record(Comment(rawValue: "gateway \(name): \($0)")) })
        do {
            try d.admin.newTarget(tid: 1, name: iqn)
            for (key, value) in targetKeys {
                try d.admin.must(["--lld", "iscsi", "--op", "update", "--mode", "target", "--tid", "1", "--name", key,
                                  "--value", value])
            }
            try d.admin.must(["--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1",
                              "--bstype", "sheepdog", "--backing-store", backingStore, "--params", params])
            try d.admin.bind(tid: 1)
        } catch {
            d.stop(recordProblems: false)
            throw error
        }
        return d
    }

    var endpoint: Endpoint { daemon.endpoints[0] }

    /// SIGKILL, as a crash or an OOM kill: no lock released, no connection closed politely.
    func kill() throws {
        Glibc.kill(daemon.process.pid, SIGKILL)
        let r = daemon.process.wait(timeoutSeconds: DaemonLimits.stopGraceSeconds)
        daemon.stop(recordProblems: false)
        if !r.killedBySignal { throw E2EError("gateway \(name) did not die of SIGKILL: \(r)") }
    }

    /// Starts the gateway again with the same LUN (its portal port is new).
    func restart() throws {
        starts += 1
        daemon = try Self.start(name, backingStore: backingStore, params: params, targetKeys: targetKeys, scratch: scratch,
                                label: "\(name)-\(starts)")
    }

    /// A clean stop (SIGTERM), keeping the scratch directory for `restart()`.
    func halt() {
        daemon.stop()
    }

    func stop() {
        daemon.stop()
        scratch.remove()
    }
}

/// A writer on one region of the LU, at queue depth 1, over a list of paths. Each write fills a 4 KiB unit
/// with a pattern of (unit, generation); the last acknowledged generation of each unit is what must read
/// back at the end. Units go `unitsPerObject` to a 4 MiB object, so the load keeps allocating objects
/// through whichever gateway it is on (index updates, and the other gateway's inode invalidated). Runs on
/// its own thread until `stop()`.
final class FailoverWriter: @unchecked Sendable {
    static let unitBytes = 4096
    static let unitsPerObject = 16
    let name: String
    let firstLBA: UInt32
    let units: Int
    private let paths: [() -> Endpoint]
    private let lock = NSLock()
    // Guarded by `lock`.
    private var preferred: Int
    private var stopping = false
    private var finished = false
    private(set) var acked: [UInt32]
    private var ackCount = 0
    private var ackCountPerPath: [Int]
    private var lastAck = 0.0
    private var longestGap = 0.0
    private var failoverSeconds: [Double] = []
    private var problems: [String] = []
    private var failure: String? = nil
    /// Units whose write a path failed: never written again (see `run`).
    private var fenced: Set<Int> = []
    private let done = DispatchSemaphore(value: 0)

    init(_ name: String, firstLBA: UInt32, units: Int, paths: [() -> Endpoint], preferred: Int) {
        self.name = name
        self.firstLBA = firstLBA
        self.units = units
        self.paths = paths
        self.preferred = preferred
        acked = [UInt32](repeating: 0, count: units)
        ackCountPerPath = [Int](repeating: 0, count: paths.count)
    }

    static func data(unit: Int, generation: UInt32, writer: String) -> [UInt8] {
        patternBytes(unitBytes, seed: UInt64(generation) << 32 ^ UInt64(unit) << 8 ^ UInt64(writer.utf8.first ?? 0))
    }

    func lba(_ unit: Int) -> UInt32 {
        firstLBA + UInt32((unit / Self.unitsPerObject) * (4 << 20) / 512 + (unit % Self.unitsPerObject) * Self.unitBytes / 512)
    }

    private func locked<R>(_ body: () -> R) -> R {
        lock.lock()
        defer { lock.unlock() }
        return body()
    }

    func start() {
        Thread.detachNewThread { [self] in
            run()
            done.signal()
        }
    }

    /// Asks the writer to use path `i` from its next write (failback).
    func prefer(_ i: Int) { locked { preferred = i } }

    func acks(path: Int? = nil) -> Int { locked { path.map { ackCountPerPath[$0] } ?? ackCount } }

    /// Stops the writer and waits for its thread. Returns what it saw.
    func stop() -> (acked: [UInt32], longestGap: Double, failovers: [Double], problems: [String], failure: String?,
                    fenced: Set<Int>) {
        locked { stopping = true }
        done.wait()
        return locked { (acked, longestGap, failoverSeconds, problems, failure, fenced) }
    }

    private var isStopping: Bool { locked { stopping } }

    private func run() {
        var session: RawSession? = nil
        var sessionPath = -1
        var generation: UInt32 = 0
        var unit = 0
        var retrying = false
        var firstSent = 0.0
        lastAck = monotonicSeconds()
        var attempts = 0
        while !isStopping {
            let want = locked { preferred }
            if session == nil || sessionPath != want && !retrying {
                session?.close()
                session = nil
                // Log in on the preferred path, else on the next one, as multipath picks a working path.
                for step in 0..<paths.count where session == nil {
                    let p = (want + step) % paths.count
                    if let s = try? RawSession(paths[p](), target: FailoverGateway.iqn,
                                               options: RawLoginOptions(initiatorName: "iqn.2026-01.e2e:\(name)", isid: 1)) {
                        session = s
                        sessionPath = p
                        if p != want { locked { preferred = p } }
                    }
                }
                if session == nil {
                    attempts += 1
                    if attempts >= FailoverLimits.loginAttempts {
                        locked { failure = "\(name): no path logs in after \(attempts) rounds" }
                        return
                    }
                    usleep(50_000)   // the retry interval of a bounded loop, not synchronisation
                    continue
                }
                attempts = 0
            }
            // The pending write: sent again unchanged until one path acknowledges it.
            if !retrying {
                generation &+= 1
                firstSent = monotonicSeconds()
            }
            let data = Self.data(unit: unit, generation: generation, writer: name)
            let r = try? session!.run(RawCDB.write10(lba: lba(unit), blocks: UInt16(Self.unitBytes / 512)), writeData: data,
                                      timeoutSeconds: FailoverLimits.commandTimeoutSeconds)
            guard let r, r.status == RawCodes.good else {
                if let r { locked { problems.append("\(name) via path \(sessionPath): \(r)") } }
                retrying = true
                // A gateway that holds the write for a sheep node that is away still sends it when the node
                // returns (README, "Failover"): the same bytes as the resend, so harmless unless the unit is
                // rewritten in between. Multipath cannot order the two; this writer keeps to other units.
                locked { _ = fenced.insert(unit) }
                session?.close()
                session = nil
                // The path failed: the next login tries the other path first.
                locked { preferred = (sessionPath + 1) % paths.count }
                continue
            }
            let now = monotonicSeconds()
            locked {
                acked[unit] = generation
                ackCount += 1
                ackCountPerPath[sessionPath] += 1
                longestGap = max(longestGap, now - lastAck)
                lastAck = now
                if retrying { failoverSeconds.append(now - firstSent) }
            }
            retrying = false
            repeat { unit = (unit + 1) % units } while locked({ fenced.contains(unit) })
        }
        session?.close()
    }
}

extension EndToEnd {
    @Suite("Sheepdog failover")
    struct SheepFailover {
        typealias MP = SheepMultipath
        /// 64 objects of 4 MiB: half for each writer.
        static let vdiBytes: Int64 = 256 * mebibyte
        static let unitsPerWriter = 32 * FailoverWriter.unitsPerObject
        /// Writer B's region starts here (LBA), past writer A's.
        static let writerBFirstLBA: UInt32 = MP.lba(object: 32)

        /// Reads every unit of `w`'s region through `s` and throws at the first that is not the last
        /// acknowledged write (zeros for a unit never written).
        static func verify(_ w: FailoverWriter, acked: [UInt32], through s: RawSession, _ path: String) throws {
            for unit in 0..<w.units {
                let got = try MP.read(s, w.lba(unit), FailoverWriter.unitBytes)
                let want = acked[unit] == 0 ? [UInt8](repeating: 0, count: FailoverWriter.unitBytes)
                    : FailoverWriter.data(unit: unit, generation: acked[unit], writer: w.name)
                if got != want {
                    throw E2EError("\(w.name): unit \(unit) (generation \(acked[unit])) reads back other bytes through \(path)")
                }
            }
        }

        /// ASYMMETRIC ACCESS STATE (SPC-4 table 307) as RTPG reports it.
        enum AccessState {
            static let activeOptimized: UInt8 = 0x0
            static let unavailable: UInt8 = 0x3
        }

        /// NOT READY, LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE.
        static func isUnavailable(_ r: CommandResult) -> Bool {
            EndToEnd.ALUA.sense(r, 0x02, 0x04, 0x0C)
        }

        /// UNIT ATTENTION, ASYMMETRIC ACCESS STATE CHANGED.
        static func isStateChanged(_ r: CommandResult) -> Bool {
            EndToEnd.ALUA.sense(r, 0x06, 0x2A, 0x06)
        }

        /// The state of every group RTPG lists through `s` (not empty: an empty list fails the check).
        static func groupStates(_ s: RawSession) throws -> [UInt8] {
            let r = try s.run(EndToEnd.ALUA.rtpg, read: true, edtl: 1024)
            guard r.status == RawCodes.good else { throw E2EError("RTPG: \(r)") }
            let states = EndToEnd.ALUA.groups(r.data).map(\.state)
            if states.isEmpty { throw E2EError("RTPG lists no group") }
            return states
        }

        /// Waits until `condition` holds, or the phase bound passes; `what` names the phase.
        static func phase(_ what: String, _ condition: () -> Bool) throws {
            try waitUntil(what, timeoutSeconds: FailoverLimits.phaseSeconds) { condition() }
        }

        /// Runs `body` with gateways A (node 0) and B (node 1) on a fresh VDI, and writers A and B already
        /// writing through them; then stops the writers, checks their bounds, and reads every acknowledged
        /// write back through both gateways.
        static func withLoad(_ sheep: MultipathSheep, failoverBoundSeconds: Double = FailoverLimits.failoverBoundSeconds,
                             _ body: (FailoverGateway, FailoverGateway, FailoverWriter, FailoverWriter) throws -> Void) throws {
            try sheep.dog(["vdi", "create", "vol", "\(vdiBytes)"])
            let a = try FailoverGateway("gatewayA", backingStore: sheep.backingStore(node: 0, "vol"), params: MP.lunParams)
            defer { a.stop() }
            let b = try FailoverGateway("gatewayB", backingStore: sheep.backingStore(node: 1, "vol"), params: MP.lunParams)
            defer { b.stop() }
            let paths: [() -> Endpoint] = [{ a.endpoint }, { b.endpoint }]
            let wa = FailoverWriter("writerA", firstLBA: 0, units: unitsPerWriter, paths: paths, preferred: 0)
            let wb = FailoverWriter("writerB", firstLBA: writerBFirstLBA, units: unitsPerWriter, paths: paths, preferred: 1)
            wa.start()
            wb.start()
            var stopped = false
            defer { if !stopped { _ = wa.stop(); _ = wb.stop() } }
            try phase("both writers to get going") {
                wa.acks(path: 0) >= FailoverLimits.writesPerPhase && wb.acks(path: 1) >= FailoverLimits.writesPerPhase
            }
            try body(a, b, wa, wb)
            stopped = true
            let ra = wa.stop(), rb = wb.stop()
            for r in [ra, rb] { if let f = r.failure { throw E2EError(f) } }
            print("failover (\(sheep.kind)): writer A \(wa.acks()) writes, failovers \(ra.failovers.map { String(format: "%.3f s", $0) }), longest gap \(String(format: "%.3f", ra.longestGap)) s; writer B \(wb.acks()) writes, longest gap \(String(format: "%.3f", rb.longestGap)) s; problems \(ra.problems + rb.problems), units fenced \(ra.fenced.sorted())")
            #expect(rb.longestGap <= FailoverLimits.pathStallBoundSeconds, "the load through B stalled \(rb.longestGap) s")
            #expect(!ra.failovers.isEmpty && ra.failovers.allSatisfy { $0 <= failoverBoundSeconds }, "writer A's failovers: \(ra.failovers)")
            // Every acknowledged write, through each gateway.
            for g in [a, b] {
                let s = try RawSession(g.endpoint, target: FailoverGateway.iqn,
                                       options: RawLoginOptions(initiatorName: "iqn.2026-01.e2e:check", isid: 2))
                try verify(wa, acked: ra.acked, through: s, g.name)
                try verify(wb, acked: rb.acked, through: s, g.name)
                s.close()
            }
        }

        /// Gateway A is killed mid-load: writer A's unacknowledged write goes to B and the load carries on
        /// there, B never stalls; A restarts, takes its node's stale shared lock back without
        /// `dog vdi lock unlock`, and serves writer A again. Every acknowledged write reads back through both.
        @Test(arguments: SheepKind.allCases)
        func gatewayKilledUnderLoadFailsOverAndRejoins(kind: SheepKind) throws {
            try withMultipathSheep(kind) { sheep in
                try Self.withLoad(sheep) { a, b, wa, wb in
                    try a.kill()
                    let before = wa.acks(path: 1)
                    try Self.phase("writer A to carry on through B") { wa.acks(path: 1) >= before + FailoverLimits.writesPerPhase }
                    try a.restart()
                    try waitUntil("restarted gateway A to log that it took its stale lock back") {
                        a.daemon.log.contains("left by a gateway that died")
                    }
                    wa.prefer(0)
                    let back = wa.acks(path: 0)
                    try Self.phase("writer A to write through the restarted A") { wa.acks(path: 0) >= back + FailoverLimits.writesPerPhase }
                    let more = wb.acks(path: 1)
                    try Self.phase("writer B to carry on") { wb.acks(path: 1) >= more + FailoverLimits.writesPerPhase }
                }
            }
        }

        /// Gateway A's sheep node leaves the cluster mid-load (test server `node kill 0`; on a real 3-node
        /// cluster, SIGKILL to node 0 and a restart on its directory). A keeps the session and queues its sheep
        /// requests while it reconnects (SheepChannelLimits.giveUpSeconds), so writer A's command gets no
        /// answer; after its command timeout it is sent again through B, which never stalls. The node comes
        /// back: A reconnects and serves writer A again without a restart. Every acknowledged write reads back
        /// through both gateways. (On real sheep an earlier build, before a closing connection dropped its
        /// unsent held writes in 4b86662, went wrong in 3 runs of 11; 11 of 11 passed after it.)
        @Test(arguments: SheepKind.allCases)
        func gatewayLosingItsSheepNodeFailsOverAndServesAgainWhenTheNodeReturns(kind: SheepKind) throws {
            try withMultipathSheep(kind) { sheep in
                let bound = FailoverLimits.commandTimeoutSeconds + FailoverLimits.failoverBoundSeconds
                try Self.withLoad(sheep, failoverBoundSeconds: bound) { a, _, wa, wb in
                    // A path checker's session on A (multipathd's `tur`), logged in while all is well.
                    let checker = try RawSession(a.endpoint, target: FailoverGateway.iqn,
                                                 options: RawLoginOptions(initiatorName: "iqn.2026-01.e2e:checker", isid: 3))
                    defer { checker.close() }
                    try sheep.admin("node kill 0")
                    let killed = monotonicSeconds()
                    var sawChange = false
                    try waitUntil("TEST UNIT READY through A to answer NOT READY, unavailable",
                                  timeoutSeconds: FailoverLimits.unavailableAfterSeconds + FailoverLimits.phaseSeconds) {
                        let r = try checker.run(RawCDB.testUnitReady)
                        if Self.isStateChanged(r) { sawChange = true }
                        return Self.isUnavailable(r)
                    }
                    let unavailableAfter = monotonicSeconds() - killed
                    print("failover (\(sheep.kind)): TEST UNIT READY through A NOT READY (unavailable) \(String(format: "%.3f", unavailableAfter)) s after its node left")
                    #expect(unavailableAfter <= FailoverLimits.unavailableAfterSeconds + FailoverLimits.checkerSlackSeconds)
                    #expect(sawChange, "no ASYMMETRIC ACCESS STATE CHANGED before the first NOT READY")
                    #expect(try Self.groupStates(checker).allSatisfy { $0 == AccessState.unavailable }, "RTPG through A")
                    let read = try checker.run(RawCDB.read10(lba: 0, blocks: 8), read: true, edtl: FailoverWriter.unitBytes)
                    #expect(Self.isUnavailable(read), "a READ through A while its node is away: \(read)")
                    let before = wa.acks(path: 1)
                    try Self.phase("writer A to carry on through B") { wa.acks(path: 1) >= before + FailoverLimits.writesPerPhase }
                    try sheep.admin("node start 0")
                    let started = monotonicSeconds()
                    sawChange = false
                    try waitUntil("TEST UNIT READY through A to answer GOOD again",
                                  timeoutSeconds: FailoverLimits.availableAgainSeconds + FailoverLimits.phaseSeconds) {
                        let r = try checker.run(RawCDB.testUnitReady)
                        if Self.isStateChanged(r) { sawChange = true }
                        return r.status == RawCodes.good
                    }
                    let availableAfter = monotonicSeconds() - started
                    print("failover (\(sheep.kind)): TEST UNIT READY through A GOOD again \(String(format: "%.3f", availableAfter)) s after its node came back")
                    #expect(availableAfter <= FailoverLimits.availableAgainSeconds)
                    #expect(sawChange, "no ASYMMETRIC ACCESS STATE CHANGED when the node came back")
                    #expect(try Self.groupStates(checker).allSatisfy { $0 == AccessState.activeOptimized }, "RTPG through A")
                    try waitUntil("gateway A to take its shared lock again") { a.daemon.log.contains("took it again") }
                    wa.prefer(0)
                    let back = wa.acks(path: 0)
                    try Self.phase("writer A to write through A again") { wa.acks(path: 0) >= back + FailoverLimits.writesPerPhase }
                    let more = wb.acks(path: 1)
                    try Self.phase("writer B to carry on") { wb.acks(path: 1) >= more + FailoverLimits.writesPerPhase }
                    #expect(a.daemon.isAlive)
                }
            }
        }

        /// Two gateways on one VDI with a session each for `initiator`; block 0 is written (allocated) through A,
        /// A's sheep node is killed, and a second write of block 0 through A is held by A's store. `body` then
        /// decides what becomes of it. `pattern(g)` is generation g of block 0's data.
        struct HeldWrite {
            let sheep: MultipathSheep
            let a: FailoverGateway, b: FailoverGateway
            let sa: RawSession, sb: RawSession
            let heldITT: UInt32, heldCmdSN: UInt32
            let pattern: (UInt32) -> [UInt8]
            var bytes: Int { FailoverWriter.unitBytes }
        }

        static func withHeldWrite(initiator: String, _ body: (HeldWrite) throws -> Void) throws {
            try withMultipathSheep(.testServer) { sheep in
                try sheep.dog(["vdi", "create", "vol", "\(Self.vdiBytes)"])
                let a = try FailoverGateway("gatewayA", backingStore: sheep.backingStore(node: 0, "vol"), params: MP.lunParams)
                defer { a.stop() }
                let b = try FailoverGateway("gatewayB", backingStore: sheep.backingStore(node: 1, "vol"), params: MP.lunParams)
                defer { b.stop() }
                let sa = try RawSession(a.endpoint, target: FailoverGateway.iqn,
                                        options: RawLoginOptions(initiatorName: initiator, isid: 1))
                defer { sa.close() }
                let sb = try RawSession(b.endpoint, target: FailoverGateway.iqn,
                                        options: RawLoginOptions(initiatorName: initiator, isid: 2))
                defer { sb.close() }
                let bytes = FailoverWriter.unitBytes
                let pattern = { (g: UInt32) in FailoverWriter.data(unit: 0, generation: g, writer: initiator) }
                // Allocated first, so the held write is an object write of A's own channel, not the home core's.
                try MP.write(sa, 0, pattern(1), "the first write through A")
                try sheep.admin("node kill 0")
                // The write must wait for the node, not be on the wire to it when it goes.
                try waitUntil("gateway A to see its node go") { a.daemon.log.contains("connection lost") }
                let writeCmdSN = sa.cmdSN
                let held = try sa.sendCommand(RawCDB.write10(lba: 0, blocks: UInt16(bytes / 512)), writeData: pattern(2))
                // Commands of a connection start in order: when this answers, the write waits in A's store.
                let tur = try sa.run(RawCDB.testUnitReady)
                try #require(tur.status == RawCodes.good, "TEST UNIT READY behind the held write: \(tur)")
                try body(HeldWrite(sheep: sheep, a: a, b: b, sa: sa, sb: sb, heldITT: held, heldCmdSN: writeCmdSN, pattern: pattern))
            }
        }

        /// After the held write's fate: block 0 written (generation 3) through B, A's node back, and block 0
        /// read through `readThroughA` and through B must be generation 3.
        static func writeThroughBThenNodeReturns(_ h: HeldWrite, readThroughA: () throws -> RawSession) throws {
            try MP.write(h.sb, 0, h.pattern(3), "the write through B while A holds its write")
            try h.sheep.admin("node start 0")
            try waitUntil("gateway A to take its shared lock again") { h.a.daemon.log.contains("took it again") }
            let sa = try readThroughA()
            // The ALUA state may have changed meanwhile (unit attention, then NOT READY until A notices).
            try waitUntil("TEST UNIT READY through A to answer GOOD") { try sa.run(RawCDB.testUnitReady).status == RawCodes.good }
            // Through A's channel, behind anything it still held; then through B.
            #expect(try MP.read(sa, 0, h.bytes) == h.pattern(3), "through A: the held write reached the node")
            #expect(try MP.read(h.sb, 0, h.bytes) == h.pattern(3), "through B: the held write reached the node")
        }

        /// A write that gateway A holds for its missing node and that the initiator aborts (what Linux's SCSI
        /// error handling does when the command times out, before multipath sends it through B) is dropped:
        /// once ABORT TASK is answered, the bytes written through B since must not be overwritten by the held
        /// write when the node comes back.
        @Test func anAbortedWriteHeldForAMissingNodeIsNotSentWhenItReturns() throws {
            try Self.withHeldWrite(initiator: "iqn.2026-01.e2e:abort") { h in
                let tmf = try h.sa.sendTMF(function: TMFunction.abortTask, referencedITT: h.heldITT, refCmdSN: h.heldCmdSN)
                let p = try h.sa.expectPDU("the TMF Response to ABORT TASK")
                #expect(p.opcode == ISCSIOpcode.taskManagementResponse && p.itt == tmf && p.byte2 == TMResponse.functionComplete,
                        "ABORT TASK of the held write: \(p)")
                try Self.writeThroughBThenNodeReturns(h) { h.sa }
                #expect(!h.sa.others.contains { $0.itt == h.heldITT }, "the aborted write was answered: \(h.sa.others)")
            }
        }

        /// The same with the connection closed instead of the task aborted (the initiator's replacement timeout,
        /// or multipath giving the path up): the held write must not reach the node after the initiator wrote
        /// the block again through B, or B's acknowledged write is lost.
        @Test func aWriteHeldForAMissingNodeIsNotSentWhenItsConnectionClosed() throws {
            let initiator = "iqn.2026-01.e2e:closed"
            try Self.withHeldWrite(initiator: initiator) { h in
                h.sa.close()
                try waitUntil("gateway A to end the closed session") {
                    h.a.daemon.log.split(separator: "\n").contains {
                        $0.contains("session with target") && $0.contains("ended") && $0.contains(initiator)
                    }
                }
                var again: RawSession?
                defer { again?.close() }
                try Self.writeThroughBThenNodeReturns(h) {
                    let s = try RawSession(h.a.endpoint, target: FailoverGateway.iqn,
                                           options: RawLoginOptions(initiatorName: initiator, isid: 3))
                    again = s
                    return s
                }
            }
        }
    }
}
