// Two gateways, one VDI (issue 14): two ringtgtd, each serving the same VDI through a different sheep node
// as one LU (same scsi_id and scsi_sn). Sheep's shared lock and inode coherence make what one gateway
// allocates visible through the other, also across a snapshot taken while both serve. Against the test
// server started with two nodes, and against a real 3-node cluster formatted with -l when sheep is on PATH.

import Foundation
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// A sheep cluster whose nodes 0 and 1 each serve one gateway: the test server with `--nodes 2`, or a real
/// local cluster. Always stopped by its owner.
final class MultipathSheep {
    let kind: SheepKind
    let scratch: Scratch
    /// TCP port of each node the gateways use.
    let ports: [Int]
    /// The test server's admin port (`node kill N`, `node start N`); nil for a real cluster, where `admin`
    /// knows only `node kill 0` and `node start 0`.
    let adminPort: Int?
    private let server: ToolProcess?
    private let cluster: SheepLocalCluster?
    private var stopped = false

    private init(kind: SheepKind, scratch: Scratch, ports: [Int], adminPort: Int? = nil, server: ToolProcess?,
                 cluster: SheepLocalCluster?) {
        self.kind = kind; self.scratch = scratch; self.ports = ports; self.adminPort = adminPort
        self.server = server; self.cluster = cluster
    }

    /// `noLock`: the test server's cluster is formatted without locking (`dog cluster format` without -l).
    static func start(_ kind: SheepKind, noLock: Bool = false) throws -> MultipathSheep {
        let scratch = try Scratch()
        do {
            switch kind {
            case .testServer:
                let exe = try Paths.packageBinary("ringtgt-sheep-testserver")
                let args = ["--port", "0", "--admin-port", "0", "--nodes", "2"] + (noLock ? ["--no-lock"] : [])
                let (p, lines) = try SheepTestServerFixture.start(exe, args, logDir: scratch.url,
                                                                  readyPrefixes: ["listening tcp ", "node 1 tcp ", "admin tcp "])
                guard let n0 = SheepTestServerFixture.address(lines, "listening tcp "),
                      let n1 = SheepTestServerFixture.address(lines, "node 1 tcp "),
                      let admin = SheepTestServerFixture.address(lines, "admin tcp ") else {
                    p.terminate(graceSeconds: 1)
                    throw E2EError("cannot read the test server's node addresses from: \(lines)")
                }
                return MultipathSheep(kind: kind, scratch: scratch, ports: [n0.port, n1.port], adminPort: admin.port,
                                      server: p, cluster: nil)
            case .localCluster:
                guard let sheep = findOnPath("sheep"), let dog = findOnPath("dog") else { throw E2EError("sheep and dog are not on PATH") }
                let c = try SheepLocalCluster.start(sheep: sheep, dog: dog, dir: scratch.url, logDir: scratch.url)
                return MultipathSheep(kind: kind, scratch: scratch, ports: c.ports, server: nil, cluster: c)
            }
        } catch {
            scratch.remove()
            throw error
        }
    }

    func stop() {
        if stopped { return }
        stopped = true
        if let server, !server.terminate(graceSeconds: SheepLimits.stopGraceSeconds) {
            Issue.record("the sheep test server did not exit on SIGTERM:\n\(tail(server.stderrText))")
        }
        cluster?.stop(graceSeconds: SheepLimits.stopGraceSeconds)
        scratch.remove()
    }

    deinit { if !stopped { server?.terminate(graceSeconds: 1); cluster?.stop(graceSeconds: 1) } }

    func backingStore(node: Int, _ vdi: String) -> String { "tcp:127.0.0.1:\(ports[node]):\(vdi)" }

    /// One test server admin command (`node kill 0`) that must answer "ok".
    func admin(_ command: String) throws {
        if let cluster {
            // A real cluster: node 0 dies by SIGKILL and starts again on its directory, as the test server's
            // `node kill 0` / `node start 0` do. Other nodes and commands are the test server's only.
            switch command {
            case "node kill 0": cluster.nodes[0].killNow(); return
            case "node start 0": try cluster.restartNode0(); return
            default: throw E2EError("admin '\(command)' needs the test server")
            }
        }
        guard let adminPort else { throw E2EError("admin needs the test server") }
        let r = try runTool(try Paths.packageBinary("ringtgt-sheep-testserver"),
                            ["admin", "--port", "\(adminPort)"] + command.split(separator: " ").map(String.init),
                            logDir: scratch.url, timeoutSeconds: SheepFixtureLimits.dogTimeoutSeconds, label: "sheep-admin")
        if !r.succeeded || !r.stdout.hasPrefix("ok") { throw E2EError("sheep admin '\(command)' failed: \(r)") }
    }

    /// A dog command through node 0 that must succeed.
    @discardableResult
    func dog(_ args: [String]) throws -> ToolResult {
        let r: ToolResult
        if let cluster {
            r = try cluster.dog(args)
        } else {
            r = try runTool(try Paths.packageBinary("ringtgt-sheep-testserver"),
                            ["dog"] + args + ["-a", "127.0.0.1", "-p", "\(ports[0])"], logDir: scratch.url,
                            timeoutSeconds: SheepFixtureLimits.dogTimeoutSeconds, label: "dog")
        }
        if !r.succeeded { throw E2EError("dog \(args.joined(separator: " ")) failed: \(r)") }
        return r
    }
}

/// Runs `body` with a started multipath sheep of `kind`, or cancels the case when it cannot run here.
func withMultipathSheep<R>(_ kind: SheepKind, noLock: Bool = false, _ body: (MultipathSheep) throws -> R) throws -> R {
    try cancelUnlessSheepRuns(kind)
    let sheep = try MultipathSheep.start(kind, noLock: noLock)
    defer { sheep.stop() }
    return try body(sheep)
}

extension EndToEnd {
    @Suite("Sheepdog multipath")
    struct SheepMultipath {
        static let vdiBytes: Int64 = 64 * mebibyte
        static let lunParams = "scsi_id=ringtgt-mp-e2e,scsi_sn=MP0001"
        static let blockBytes = 512
        /// First LBA of object `n` (4 MiB objects).
        static func lba(object n: Int, plus blocks: Int = 0) -> UInt32 { UInt32(n * (4 << 20) / blockBytes + blocks) }

        /// Two daemons, gateway A on node 0 and gateway B on node 1, each with the VDI as LUN 1 of target 1.
        static func withGateways<R>(_ sheep: MultipathSheep, vdi: String,
                                    _ body: (RunningTarget, RunningTarget) throws -> R) throws -> R {
            try withTarget(cores: 2, luns: []) { a in
                try withTarget(cores: 2, luns: []) { b in
                    for (t, node) in [(a, 0), (b, 1)] {
                        try t.admin.must(["--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1",
                                          "--bstype", "sheepdog", "--backing-store", sheep.backingStore(node: node, vdi),
                                          "--params", lunParams])
                    }
                    return try body(a, b)
                }
            }
        }

        static func session(_ t: RunningTarget, _ name: String) throws -> RawSession {
            try RawSession(t.endpoint, target: t.iqn, options: RawLoginOptions(initiatorName: "iqn.2026-01.e2e:\(name)", isid: 1))
        }

        static func write(_ s: RawSession, _ lba: UInt32, _ data: [UInt8], _ what: String) throws {
            let r = try s.run(RawCDB.write10(lba: lba, blocks: UInt16(data.count / blockBytes)), writeData: data)
            if r.status != RawCodes.good { throw E2EError("\(what): WRITE(10) at \(lba): \(r)") }
        }

        static func read(_ s: RawSession, _ lba: UInt32, _ count: Int) throws -> [UInt8] {
            let r = try s.run(RawCDB.read10(lba: lba, blocks: UInt16(count / blockBytes)), read: true, edtl: count)
            if r.status != RawCodes.good { throw E2EError("READ(10) at \(lba): \(r)") }
            return r.data
        }

        /// The LU's own designators of VPD 0x83 (association 00b), each as its bytes.
        static func luDesignators(_ page: [UInt8]) -> [[UInt8]] {
            var out: [[UInt8]] = []
            var at = 4
            while at + 4 <= page.count {
                let len = Int(page[at + 3])
                if (page[at + 1] >> 4) & 3 == 0 { out.append(Array(page[at..<min(page.count, at + 4 + len)])) }
                at += 4 + len
            }
            return out
        }

        /// What A allocates B reads (not zeros) and the reverse, including overwrites of the other's objects;
        /// then a snapshot while both serve, after which writes through each (copy-on-write of objects either
        /// allocated, and new ones) read back through the other. Both paths report one LU in VPD 0x83 and 0x80.
        @Test(arguments: SheepKind.allCases)
        func whatOneGatewayAllocatesTheOtherReads(kind: SheepKind) throws {
            try withMultipathSheep(kind) { sheep in
                try sheep.dog(["vdi", "create", "vol", "\(Self.vdiBytes)"])
                try Self.withGateways(sheep, vdi: "vol") { a, b in
                    let sa = try Self.session(a, "a"), sb = try Self.session(b, "b")
                    for s in [sa, sb] { _ = try s.run(RawCDB.testUnitReady) }   // the power-on unit attention
                    let p1 = patternBytes(8192, seed: 1), p2 = patternBytes(4096, seed: 2), p3 = patternBytes(4096, seed: 3)
                    try Self.write(sa, Self.lba(object: 2), p1, "A allocates object 2")
                    #expect(try Self.read(sb, Self.lba(object: 2), p1.count) == p1, "B reads what A allocated")
                    try Self.write(sb, Self.lba(object: 5, plus: 8), p2, "B allocates object 5")
                    #expect(try Self.read(sa, Self.lba(object: 5, plus: 8), p2.count) == p2, "A reads what B allocated")
                    try Self.write(sb, Self.lba(object: 2, plus: 4), p3, "B overwrites part of A's object 2")
                    #expect(try Self.read(sa, Self.lba(object: 2), p1.count) == Array(p1[0..<2048]) + p3 + Array(p1[6144...]))

                    try sheep.dog(["vdi", "snapshot", "-s", "snap1", "vol"])
                    let p4 = patternBytes(4096, seed: 4), p5 = patternBytes(4096, seed: 5), p6 = patternBytes(4096, seed: 6)
                    try Self.write(sa, Self.lba(object: 5, plus: 8), p4, "A copies B's object 5 on write after the snapshot")
                    // B has not written since the snapshot: only A's word through sheep tells it to move on.
                    #expect(try Self.read(sb, Self.lba(object: 5, plus: 8), p4.count) == p4, "B reads A's copy of object 5")
                    try Self.write(sb, Self.lba(object: 2), p5, "B copies A's object 2 on write after the snapshot")
                    try Self.write(sb, Self.lba(object: 9), p6, "B allocates object 9 after the snapshot")
                    #expect(try Self.read(sa, Self.lba(object: 2), p1.count) == p5 + Array(p3[2048...]) + Array(p1[6144...]), "A reads B's copy of object 2")
                    #expect(try Self.read(sa, Self.lba(object: 9), p6.count) == p6, "A reads B's new object 9")
                    #expect(try Self.read(sa, Self.lba(object: 12), 4096) == [UInt8](repeating: 0, count: 4096))

                    // One LU on both paths.
                    let inquiry83: [UInt8] = [0x12, 1, 0x83, 0, 255, 0], inquiry80: [UInt8] = [0x12, 1, 0x80, 0, 255, 0]
                    let va = try sa.run(inquiry83, read: true, edtl: 255), vb = try sb.run(inquiry83, read: true, edtl: 255)
                    let lu = Self.luDesignators(va.data)
                    #expect(!lu.isEmpty && lu == Self.luDesignators(vb.data), "VPD 0x83: \(va.data) vs \(vb.data)")
                    let sa80 = try sa.run(inquiry80, read: true, edtl: 255), sb80 = try sb.run(inquiry80, read: true, edtl: 255)
                    #expect(sa80.status == RawCodes.good && sa80.data == sb80.data && sa80.data.count > 4)
                    // Locking is on: neither gateway warns.
                    let show = try a.admin.must(["--lld", "iscsi", "--op", "show", "--mode", "target"])
                    #expect(show.stdout.contains("Backing store path: tcp:") && !show.stdout.contains("WARNING"))
                    sa.close()
                    sb.close()
                }
            }
        }

        /// Sheep invalidates the other participants *before* it writes the index (`gateway_write_obj`), and a
        /// refresh read in between revalidates a participant with the old index (`validate_myself`): nothing
        /// tells it later that its index lacks the write. The test server holds B's index write for a new object
        /// in that window while A reloads; once B's write is acknowledged, A must read it, and A's own write
        /// into that object must not create it again over B's data. (On real sheep the window is narrow: the
        /// failover test once read zeros through A for the first write to an object.)
        @Test func aGatewayRevalidatedBeforeAnIndexWriteLandsStillSeesTheObject() throws {
            try withMultipathSheep(.testServer) { sheep in
                try sheep.dog(["vdi", "create", "vol", "\(Self.vdiBytes)"])
                try Self.withGateways(sheep, vdi: "vol") { a, b in
                    let sa = try Self.session(a, "a"), sb = try Self.session(b, "b")
                    defer { sa.close(); sb.close() }
                    for s in [sa, sb] { _ = try s.run(RawCDB.testUnitReady) }   // the power-on unit attention
                    let zeros = [UInt8](repeating: 0, count: 4096)
                    let p1 = patternBytes(4096, seed: 11), p2 = patternBytes(4096, seed: 12)
                    try sheep.admin("index hold 5")
                    // B allocates object 5: the data is in place, the index write waits after invalidating A.
                    let written = DispatchSemaphore(value: 0)
                    nonisolated(unsafe) var writeError: Error? = nil
                    Thread.detachNewThread {
                        do { try Self.write(sb, Self.lba(object: 5), p1, "B allocates object 5") } catch { writeError = error }
                        written.signal()
                    }
                    try sheep.admin("index wait")
                    // A meets INODE_INVALIDATED and reloads the index, which lacks object 5; sheep counts A valid
                    // again. B's write is not acknowledged yet, so zeros are a right answer here.
                    #expect(try Self.read(sa, Self.lba(object: 5), 4096) == zeros)
                    try sheep.admin("index release")
                    written.wait()
                    if let writeError { throw writeError }
                    #expect(try Self.read(sa, Self.lba(object: 5), 4096) == p1, "A reads what B wrote")
                    try Self.write(sa, Self.lba(object: 5, plus: 16), p2, "A writes into B's object 5")
                    #expect(try Self.read(sb, Self.lba(object: 5), 4096) == p1, "A's write left B's data in place")
                    #expect(try Self.read(sb, Self.lba(object: 5, plus: 16), 4096) == p2, "B reads A's write")
                }
            }
        }

        /// `--bsopts multipath=off`: the exclusive lock, so a second gateway through another node is refused
        /// (and this one pays for no probes); an unknown value is refused.
        @Test func multipathOffKeepsOtherGatewaysOut() throws {
            try withMultipathSheep(.testServer) { sheep in
                try sheep.dog(["vdi", "create", "vol", "\(Self.vdiBytes)"])
                func add(_ t: RunningTarget, node: Int, _ bsopts: String) throws -> ToolResult {
                    try t.admin.run(["--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1",
                                     "--bstype", "sheepdog", "--backing-store", sheep.backingStore(node: node, "vol"),
                                     "--bsopts", bsopts])
                }
                try withTarget(cores: 1, luns: []) { a in
                    let bad = try add(a, node: 0, "multipath=maybe")
                    #expect(!bad.succeeded && bad.output.contains("multipath must be on or off"), "\(bad)")
                    let ok = try add(a, node: 0, "multipath=off")
                    #expect(ok.succeeded, "\(ok)")
                    try withTarget(cores: 1, luns: []) { b in
                        let refused = try add(b, node: 1, "multipath=on")
                        #expect(!refused.succeeded && refused.output.contains("is locked"), "\(refused)")
                    }
                }
            }
        }

        /// A cluster formatted without locking gives neither a shared lock nor coherence: each gateway says so
        /// in its log and in `--op show` (it cannot see the other one, so it cannot refuse it).
        @Test func aClusterWithoutLockingIsReportedOnEveryGateway() throws {
            try withMultipathSheep(.testServer, noLock: true) { sheep in
                try sheep.dog(["vdi", "create", "vol", "\(Self.vdiBytes)"])
                try Self.withGateways(sheep, vdi: "vol") { a, b in
                    for (name, t) in [("A", a), ("B", b)] {
                        let show = try t.admin.must(["--lld", "iscsi", "--op", "show", "--mode", "target"])
                        #expect(show.stdout.contains("WARNING: sheep cluster formatted without locking"), "\(name): \(show.stdout)")
                        try waitUntil("gateway \(name) to log the warning") { t.daemon.log.contains("formatted without locking") }
                    }
                }
            }
        }
    }
}
