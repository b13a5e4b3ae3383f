// The sheep behind the sheepdog LUNs: the project's sheep-protocol test server (always) and a real 3-node
// local sheepdog cluster (when `sheep` and `dog` are on PATH), started by the fixtures the end-to-end
// harness uses too (Sources/TestSupport/SheepFixtures.swift), plus the raw ceiling: the test server's
// `bench` driving sheep alone with pipelined READ_OBJ / WRITE_OBJ over a preallocated VDI's objects.
//
// A VDI is locked by whoever opens it, so every daemon gets its own VDI ("perf-ringtgt-1c", ...), all of
// the same size and preallocated over the measured region before anything is measured; the ceiling runs
// over one more VDI of the same shape ("perf-ceiling").
import Foundation
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

enum SheepLimits {
    /// The region of each sheepdog VDI the load touches, and the VDI's size (64 objects of 4 MiB). Smaller
    /// than the null/file LUNs' 1 GiB because a real cluster keeps 2 copies of each of 5 VDIs in tmpfs.
    static let regionBytes: Int64 = 256 << 20
    static let region = "256m"
    static let prepareTimeoutSeconds = 180.0
    /// `dog cluster shutdown` makes every node exit; after this long the rest are killed.
    static let shutdownGraceSeconds = 10.0
    static let ceilingVDI = "perf-ceiling"
}

/// A started sheep service that LUNs use through its unix socket.
final class SheepBackend {
    enum Kind { case testServer, cluster }
    let kind: Kind
    let lun: LUNKind
    let bins: Binaries
    let logDir: URL
    /// `unix:SOCKET:VDI` is what LUNs get.
    let socketPath: String
    private(set) var tcpPort = 0
    private var server: ToolProcess?
    private var cluster: SheepLocalCluster?

    private init(kind: Kind, bins: Binaries, logDir: URL, socketPath: String) {
        self.kind = kind
        lun = kind == .testServer ? .sheepTS : .sheep
        self.bins = bins
        self.logDir = logDir
        self.socketPath = socketPath
    }

    /// The processes serving requests (their CPU is the backend's, not "other load").
    var pids: [Int32] { (server.map { [$0.pid] } ?? []) + (cluster?.nodes ?? []).map(\.pid) }
    var name: String { kind == .testServer ? "sheep test server" : "3-node sheep cluster" }

    /// The test server on a unix socket in `dir` (results directory, or tmpfs when that path is too long
    /// for a socket address); objects in memory.
    static func startTestServer(bins: Binaries, dir: URL, fallbackDir: URL, logDir: URL) throws -> SheepBackend {
        var sock = dir.appendingPathComponent("sheep-ts.sock").path
        if sock.utf8.count > 100 { sock = fallbackDir.appendingPathComponent("sheep-ts.sock").path }
        let b = SheepBackend(kind: .testServer, bins: bins, logDir: logDir, socketPath: sock)
        do {
            b.server = try SheepTestServerFixture.start(URL(fileURLWithPath: bins.sheepTestServer), ["--unix", sock],
                                                        logDir: logDir, readyPrefixes: ["listening unix "],
                                                        uniqueLogNames: false).process
        } catch { throw RunnerError("the sheep test server did not start: \(error)") }
        b.server.map(Children.shared.add)
        return b
    }

    /// `SheepFixtureLimits.clusterNodes` real sheep in `dir` (tmpfs), one zone each, on free ports, formatted
    /// with `SheepFixtureLimits.clusterCopies` copies.
    static func startCluster(bins: Binaries, sheep: URL, dog: URL, dir: URL, logDir: URL) throws -> SheepBackend {
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let c = try SheepLocalCluster.start(sheep: sheep, dog: dog, dir: dir, logDir: logDir, uniqueLogNames: false)
        c.nodes.forEach(Children.shared.add)
        let b = SheepBackend(kind: .cluster, bins: bins, logDir: logDir, socketPath: c.socketPath)
        b.cluster = c
        b.tcpPort = c.ports[0]
        return b
    }

    /// dog (real) or the test server's dog-like client, pointed at this service.
    func dog(_ args: [String]) throws -> ToolResult {
        switch kind {
        case .testServer:
            return try DogCommand.testServer(URL(fileURLWithPath: bins.sheepTestServer), unixSocket: socketPath,
                                             logDir: logDir, uniqueLogNames: false).run(args)
        case .cluster:
            guard let cluster else { throw RunnerError("the cluster has stopped") }
            return try cluster.dog(args)
        }
    }

    func spec(_ vdi: String) -> String { "unix:\(socketPath):\(vdi)" }

    /// Creates the VDI (region-sized) if missing and allocates every object of the region (zeros).
    func prepare(vdi: String) throws {
        let r = try runTool(bins.sheepTestServer, ["bench", "--unix", socketPath, "--vdi", vdi, "--region", SheepLimits.region,
                                                   "--prepare", "--duration", "0"],
                            logDir: logDir, label: "sheep-prepare", timeoutSeconds: SheepLimits.prepareTimeoutSeconds)
        if !r.succeeded { throw RunnerError("preparing VDI \(vdi) on the \(name) failed: \(logExcerpt(r.stderr + r.stdout))") }
    }

    /// Releases a VDI's lock (a daemon that died, or a LUN re-added after a restart, held it).
    func unlock(vdi: String) {
        _ = try? dog(["vdi", "lock", "unlock", vdi])
    }

    /// One raw ceiling run: pipelined 4 KiB READ_OBJ (randread) or WRITE_OBJ (randwrite) at `qd` on one
    /// connection over the ceiling VDI's region objects, no target in between.
    func ceiling(rw: String, qd: Int, seconds: Double, warmup: Double, ios: Int? = nil) -> [String: Any] {
        var args = ["bench", "--unix", socketPath, "--vdi", SheepLimits.ceilingVDI, "--region", SheepLimits.region,
                    "--rw", rw == "randwrite" ? "write" : "read", "--qd", "\(qd)", "--block-size", "4096", "--json"]
        if let ios { args += ["--ios", "\(ios)"] } else { args += ["--duration", "\(seconds)", "--warmup", "\(warmup)"] }
        for p in pids { args += ["--server-pid", "\(p)"] }
        var out: [String: Any] = ["lun": lun.rawValue, "rw": rw, "queueDepth": qd]
        do {
            let r = try runTool(bins.sheepTestServer, args, logDir: logDir, label: "sheep-ceiling",
                                timeoutSeconds: (ios == nil ? seconds + warmup : 60) + 60)
            if let line = r.stdout.split(separator: "\n").last(where: { $0.hasPrefix("{") }),
               let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] {
                for (k, v) in obj { out[k] = v }
            }
            if !r.succeeded || out["opsPerSecond"] == nil {
                out["error"] = "bench \(r.outcome): \(logExcerpt(r.stderr + ((out["firstError"] as? String) ?? ""), lines: 2))"
            }
        } catch {
            out["error"] = "\(error)"
        }
        return out
    }

    /// The cluster: `dog cluster shutdown`, a bounded wait, then SIGTERM/SIGKILL of the nodes this runner
    /// started (by pid). The test server: SIGTERM.
    func stop() {
        if let c = cluster {
            if c.nodes.contains(where: { $0.isRunning }) { _ = try? dog(["cluster", "shutdown"]) }
            for n in c.nodes { _ = n.waitForExit(seconds: SheepLimits.shutdownGraceSeconds); Children.shared.remove(n) }
            c.stop(graceSeconds: 5)
        }
        cluster = nil
        if let s = server { s.terminate(graceSeconds: 5); Children.shared.remove(s) }
        server = nil
    }
}

/// A sheepdog LUN of a daemon: which service, which VDI.
struct SheepLUN {
    let backend: SheepBackend
    let vdi: String
}

/// The ceiling at a (LUN kind, workload, depth), best of the runs beside the target runs.
func ceilingEntry(_ samples: [[String: Any]], lun: LUNKind, rw: String, qd: Int) -> [String: Any] {
    let rates = samples.compactMap { $0["error"] == nil ? ($0["opsPerSecond"] as? NSNumber)?.doubleValue : nil }
    var e: [String: Any] = ["lun": lun.rawValue, "rw": rw, "queueDepth": qd, "samples": rates, "runs": samples]
    if let m = rates.max() { e["opsPerSecond"] = m } else { e["error"] = samples.compactMap { $0["error"] as? String }.first ?? "no result" }
    return e
}
