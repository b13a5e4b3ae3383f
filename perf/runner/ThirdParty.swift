// The initiators people run, against each target in turn (issue 13): libiscsi's iscsi-perf at QD1, 8 and 32,
// 16 iscsi-perf processes at QD2 (a storage node serving many shallow guests), QEMU's own libiscsi client
// through `qemu-img bench`, and fio's nbd engine (ringtgt only: tgt has no NBD server). Each row gives the
// IOPS and the target's CPU per I/O; the loopback echo's server CPU per round trip at the same depths is the
// floor no target can go below. Initiators run on CPU 1, a one-core target on CPU 0.
import Foundation
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// One third-party initiator configuration.
struct ThirdPartyLoad {
    /// "iscsi-perf", "qemu-img bench", "fio nbd".
    let initiator: String
    let queueDepth: Int
    let processes: Int

    var id: String { "\(initiator) QD\(queueDepth)" + (processes > 1 ? " x\(processes)" : "") }
    /// The load's key in a baseline's third-party rows (one target core).
    var baselineKey: String { "\(id)@1c" }

    static let all: [ThirdPartyLoad] = [1, 8, 32].map { ThirdPartyLoad(initiator: "iscsi-perf", queueDepth: $0, processes: 1) }
        + [ThirdPartyLoad(initiator: "iscsi-perf", queueDepth: 2, processes: 16)]
        + [1, 8, 32].map { ThirdPartyLoad(initiator: "qemu-img bench", queueDepth: $0, processes: 1) }
        + [1, 32].map { ThirdPartyLoad(initiator: "fio nbd", queueDepth: $0, processes: 1) }
}

enum ThirdPartyLimits {
    /// qemu-img bench runs a request count, not a time: this many per second it is expected to last.
    static let qemuBenchRequestsPerSecond = 20_000
    /// Slack past a run's duration before its tools are killed.
    static let toolSlackSeconds = 60.0
}

/// Runs `load` against `d`'s null LUN for about `seconds`; the IOPS the initiator reports and the target CPU
/// used over the same interval.
func thirdPartyRun(bins: Binaries, logDir: URL, daemon d: Daemon, load: ThirdPartyLoad, seconds: Int) -> [String: Any] {
    var rec: [String: Any] = ["daemon": d.name, "initiator": load.initiator, "queueDepth": load.queueDepth,
                              "processes": load.processes, "id": load.id]
    if load.initiator == "fio nbd" && d.peer != .ringtgt { rec["error"] = "no NBD server"; return rec }
    _ = try? d.ensureRunning()
    let url = d.url(.null)
    let cpuBefore = ProcessStats.cpuSeconds(d.pid)
    let start = Date()
    var ios = 0.0
    var failure: String? = nil
    switch load.initiator {
    case "iscsi-perf":
        // Each process its own initiator name: sessions of one name and ISID would reinstate each other.
        var children: [ToolProcess] = []
        for k in 0..<load.processes {
            let args = ["-c", "1", bins.iscsiPerf, "-i", "iqn.2026-01.org.ringtgt.perf:p\(k)", "-t", "\(seconds)",
                        "-m", "\(load.queueDepth)", "-b", "8", "-r", url]
            if let c = try? startChild(bins.taskset, args, logDir: logDir, label: "iscsi-perf-\(k)") { children.append(c) }
        }
        for (k, c) in children.enumerated() {
            let r = c.wait(timeoutSeconds: Double(seconds) + ThirdPartyLimits.toolSlackSeconds)
            Children.shared.remove(c)
            if r.succeeded, let iops = iscsiPerfAverage(r.stdout) { ios += iops * Double(seconds) }
            else { failure = "iscsi-perf \(k): \(logExcerpt(r.stderr + r.stdout, lines: 2))" }
        }
        if children.count < load.processes { failure = "iscsi-perf did not start" }
    case "qemu-img bench":
        let count = ThirdPartyLimits.qemuBenchRequestsPerSecond * seconds
        let args = ["-c", "1", "qemu-img", "bench", "-f", "raw", "-c", "\(count)", "-d", "\(load.queueDepth)",
                    "-s", "4k", url]
        if let r = try? runTool(bins.taskset, args, logDir: logDir, label: "qemu-img-bench",
                                timeoutSeconds: Double(seconds) * 10 + ThirdPartyLimits.toolSlackSeconds), r.succeeded {
            ios = Double(count)
        } else {
            failure = "qemu-img bench failed"
        }
    default:
        guard let port = d.nbdPort() else { failure = "no NBD listener"; break }
        let uri = "nbd://127.0.0.1:\(port)/\(PerfTarget.iqn)/\(LUNKind.null.lun)"
        let args = ["-c", "1", bins.fio, "--name=tp", "--ioengine=nbd", "--uri=\(uri)", "--rw=randread", "--bs=4k",
                    "--iodepth=\(load.queueDepth)", "--size=1g", "--time_based=1", "--runtime=\(seconds)",
                    "--output-format=json"]
        if let r = try? runTool(bins.taskset, args, logDir: logDir, label: "fio-nbd-tp",
                                timeoutSeconds: Double(seconds) + ThirdPartyLimits.toolSlackSeconds),
           r.succeeded, let brace = r.stdout.firstIndex(of: "{"),
           let obj = try? JSONSerialization.jsonObject(with: Data(r.stdout[brace...].utf8)) as? [String: Any],
           let job = (obj["jobs"] as? [[String: Any]])?.first, let read = job["read"] as? [String: Any],
           let n = (read["total_ios"] as? NSNumber)?.doubleValue {
            ios = n
        } else {
            failure = "fio failed"
        }
    }
    let wall = Date().timeIntervalSince(start)
    let cpu = cpuBefore.flatMap { b in ProcessStats.cpuSeconds(d.pid).map { $0 - b } }
    if let failure { rec["error"] = failure }
    guard failure == nil, ios > 0, let cpu else {
        log("  \(d.name) \(load.id): \(failure ?? "no I/O measured")")
        return rec
    }
    // Wall time includes logins and tool start-up, which the I/O count does not: IOPS is the initiator's own
    // figure where it reports one (iscsi-perf, fio), else I/Os over wall time.
    let iops = ios / (load.initiator == "qemu-img bench" ? wall : Double(seconds))
    let cpuPerIO = cpu / ios * 1e6
    rec["iops"] = iops
    rec["targetCPUSeconds"] = cpu
    rec["targetCPUMicrosPerIO"] = cpuPerIO
    log("  \(d.name) \(load.id): \(Int(iops)) IOPS, target CPU \(String(format: "%.2f", cpuPerIO)) us/IO")
    return rec
}

/// The average IOPS iscsi-perf prints last ("... iops average N").
func iscsiPerfAverage(_ out: String) -> Double? {
    let text = out.replacingOccurrences(of: "\r", with: "\n")
    guard let line = text.split(separator: "\n").last(where: { $0.contains("iops average") }),
          let range = line.range(of: "iops average ") else { return nil }
    return Double(line[range.upperBound...].prefix(while: { $0.isNumber }))
}

/// The loopback echo server's CPU per round trip at `qd` on each of `connections` connections at once (server on
/// CPU 0 serving them all from one loop, clients on CPU 1, one process each): the cost of waking up, receiving
/// and sending that any target pays per request at this pacing.
func echoServerCPU(bins: Binaries, logDir: URL, qd: Int, connections: Int = 1, seconds: Double) -> [String: Any] {
    var rec: [String: Any] = ["queueDepth": qd, "processes": connections]
    let label = "echo QD\(qd)" + (connections > 1 ? " x\(connections)" : "")
    do {
        let (server, port) = try startEchoServer(bins: bins, logDir: logDir, label: "echo-server-cpu",
                                                 concurrent: connections > 1 ? connections : nil)
        defer { Children.shared.stop(server) }
        var clients: [ToolProcess] = []
        defer { clients.forEach { Children.shared.stop($0) } }
        for k in 0..<connections {
            clients.append(try startChild(bins.taskset, ["-c", "1", bins.echo, "client", "--port", "\(port)", "--qd", "\(qd)",
                                                         "--duration", "\(seconds)", "--warmup", "0", "--json"],
                                          logDir: logDir, label: "echo-client-cpu-\(k)"))
        }
        var rate = 0.0
        for c in clients {
            let r = c.wait(timeoutSeconds: seconds + ThirdPartyLimits.toolSlackSeconds)
            guard r.succeeded, let obj = try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any],
                  let one = (obj["roundTripsPerSecond"] as? NSNumber)?.doubleValue, one > 0 else {
                throw RunnerError("echo client failed: \(r.stderr)")
            }
            rate += one
        }
        // The server serves its connections, then prints its CPU time and exits.
        let lines = try server.waitForLines(timeoutSeconds: ThirdPartyLimits.toolSlackSeconds) { $0.contains { $0.hasPrefix("CPU ") } }
        guard let line = lines.last(where: { $0.hasPrefix("CPU ") }),
              let cpu = Double(line.dropFirst(4)) else { throw RunnerError("echo server reported no CPU time") }
        let perRoundTrip = cpu / (rate * seconds) * 1e6
        rec["roundTripsPerSecond"] = rate
        rec["serverCPUMicrosPerRoundTrip"] = perRoundTrip
        log("  \(label): \(Int(rate)) round trips/s, server CPU \(String(format: "%.2f", perRoundTrip)) us/round trip")
    } catch {
        rec["error"] = "\(error)"
        log("  \(label): \(error)")
    }
    return rec
}

/// Every load against every daemon given (alternating, so each pair is measured minutes apart at most), then
/// the echo floor at each depth.
func thirdPartySection(bins: Binaries, logDir: URL, daemons: [Daemon], seconds: Int) -> [String: Any] {
    var runs: [[String: Any]] = []
    for load in ThirdPartyLoad.all {
        for d in daemons { runs.append(thirdPartyRun(bins: bins, logDir: logDir, daemon: d, load: load, seconds: seconds)) }
    }
    // The floor at each pacing the loads use: a depth, on one connection or on several at once.
    let pacings = Set(ThirdPartyLoad.all.map { [$0.queueDepth, $0.processes] }).sorted { $0.lexicographicallyPrecedes($1) }
    let echo = pacings.map {
        echoServerCPU(bins: bins, logDir: logDir, qd: $0[0], connections: $0[1], seconds: Double(seconds))
    }
    return ["runs": runs, "echo": echo]
}

/// The report's table: per load, each target's IOPS and CPU per I/O, ringtgt's CPU as a fraction of tgt's, and
/// the echo floor at the same depth.
func thirdPartyMarkdown(_ section: [String: Any]) -> String {
    guard let runs = section["runs"] as? [[String: Any]], !runs.isEmpty else { return "" }
    let echo = section["echo"] as? [[String: Any]] ?? []
    func cell(_ r: [String: Any]?) -> String {
        guard let r else { return "—" }
        if let e = r["error"] { return "\(e)" }
        return String(format: "%.1fK, %.2f us", (r["iops"] as? Double ?? 0) / 1000, r["targetCPUMicrosPerIO"] as? Double ?? 0)
    }
    var md = "\n## Third-party initiators (null LUN, 4K random read, 1 target core on CPU 0, initiators on CPU 1)\n\n"
    md += "| Initiator | tgt IOPS, CPU/IO | ringtgt IOPS, CPU/IO | CPU ratio | echo server CPU/round trip | ringtgt ÷ echo |\n|---|---|---|---|---|---|\n"
    for load in ThirdPartyLoad.all {
        let t = runs.first { ($0["id"] as? String) == load.id && ($0["daemon"] as? String)?.hasPrefix("tgt") == true }
        let r = runs.first { ($0["id"] as? String) == load.id && ($0["daemon"] as? String)?.hasPrefix("ringtgt") == true }
        let tc = t?["targetCPUMicrosPerIO"] as? Double, rc = r?["targetCPUMicrosPerIO"] as? Double
        let e = echo.first {
            ($0["queueDepth"] as? Int) == load.queueDepth && ($0["processes"] as? Int ?? 1) == load.processes
        }?["serverCPUMicrosPerRoundTrip"] as? Double
        let ratio = (tc != nil && rc != nil && tc! > 0) ? String(format: "%.2f", rc! / tc!) : "—"
        let floor = e.map { String(format: "%.2f us", $0) } ?? "—"
        let overFloor = (rc != nil && e != nil && e! > 0) ? String(format: "%.2f", rc! / e!) : "—"
        md += "| \(load.id) | \(cell(t)) | \(cell(r)) | \(ratio) | \(floor) | \(overFloor) |\n"
    }
    md += "\nCPU/IO = the target's utime+stime (all threads, /proc/PID/stat) over the run ÷ I/Os completed. The echo is ringtgt-echo's server (io_uring, one 4 KiB read's message sizes, no iSCSI) at the same queue depth, and on as many connections at once as the load has processes (one loop serving them all): the floor for one wake-up per request.\n"
    return md
}

/// ringtgt over tgt for each load both served: target CPU per I/O and IOPS, keyed by `baselineKey`. Loads only
/// ringtgt serves (fio nbd) have no ratio and are not kept.
func thirdPartyRatios(_ section: [String: Any]) -> [String: Any] {
    let runs = section["runs"] as? [[String: Any]] ?? []
    var out: [String: Any] = [:]
    for load in ThirdPartyLoad.all {
        func row(_ prefix: String) -> [String: Any]? {
            runs.first { ($0["id"] as? String) == load.id && ($0["daemon"] as? String)?.hasPrefix(prefix) == true && $0["error"] == nil }
        }
        guard let t = row("tgt"), let r = row("ringtgt"),
              let tc = t["targetCPUMicrosPerIO"] as? Double, let rc = r["targetCPUMicrosPerIO"] as? Double,
              let ti = t["iops"] as? Double, let ri = r["iops"] as? Double, tc > 0, ti > 0 else { continue }
        out[load.baselineKey] = ["cpuPerIO": rc / tc, "iops": ri / ti]
    }
    return out
}
