// The scenario matrix and one load generator run. Scenarios run scenario-major: each workload is measured
// on every daemon back to back, so ringtgt and tgt see the same minute of a shared, noisy machine.
import Foundation
import TestSupport

struct Workload {
    var id: String
    var title: String
    var rw: String
    var bs: String
    var qd: Int
    var sessions: Int = 1
    /// Latency mode: the load generator busy-polls its ring (for every daemon, so the initiator's own wake-up
    /// leaves the measurement) and ringtgt's cores poll too (`poll_us`, set for the run only).
    var poll = false

    var ioBytes: Int { bs.hasSuffix("k") ? (Int(bs.dropLast()) ?? 4) * 1024 : Int(bs) ?? 4096 }
}

struct Scenario {
    var lun: LUNKind
    var workload: Workload
    var id: String { "\(lun.rawValue)-\(workload.id)" }
}

/// The full matrix (issue 4): 4 KiB random read and write at QD1/32/128, 128 KiB sequential read and write,
/// and 16 sessions, on null and tmpfs-file LUNs.
func fullMatrix() -> [Scenario] {
    let w: [Workload] = [
        Workload(id: "randread-4k-qd1", title: "4K rand read QD1", rw: "randread", bs: "4k", qd: 1),
        Workload(id: "randread-4k-qd32", title: "4K rand read QD32", rw: "randread", bs: "4k", qd: 32),
        Workload(id: "randread-4k-qd128", title: "4K rand read QD128", rw: "randread", bs: "4k", qd: 128),
        Workload(id: "randread-4k-qd1-poll", title: "4K rand read QD1, polling", rw: "randread", bs: "4k", qd: 1, poll: true),
        Workload(id: "randwrite-4k-qd1", title: "4K rand write QD1", rw: "randwrite", bs: "4k", qd: 1),
        Workload(id: "randwrite-4k-qd32", title: "4K rand write QD32", rw: "randwrite", bs: "4k", qd: 32),
        Workload(id: "randwrite-4k-qd128", title: "4K rand write QD128", rw: "randwrite", bs: "4k", qd: 128),
        Workload(id: "read-128k-qd32", title: "128K seq read QD32", rw: "read", bs: "128k", qd: 32),
        Workload(id: "write-128k-qd32", title: "128K seq write QD32", rw: "write", bs: "128k", qd: 32),
        Workload(id: "randread-4k-s16-qd8", title: "4K rand read 16 sessions x QD8", rw: "randread", bs: "4k", qd: 8, sessions: 16),
        Workload(id: "randwrite-4k-s16-qd8", title: "4K rand write 16 sessions x QD8", rw: "randwrite", bs: "4k", qd: 8, sessions: 16),
        Workload(id: "randread-4k-s16-qd32", title: "4K rand read 16 sessions x QD32", rw: "randread", bs: "4k", qd: 32, sessions: 16),
        Workload(id: "randwrite-4k-s16-qd32", title: "4K rand write 16 sessions x QD32", rw: "randwrite", bs: "4k", qd: 32, sessions: 16),
    ]
    var out: [Scenario] = []
    for lun in [LUNKind.null, .file] { for x in w { out.append(Scenario(lun: lun, workload: x)) } }
    // Sheepdog LUNs: 4 KiB random read and write at QD1/32/128 (the issue's sheep rows), on the test server
    // and on real sheep.
    for lun in [LUNKind.sheepTS, .sheep] {
        for x in w where x.bs == "4k" && x.sessions == 1 && !x.poll { out.append(Scenario(lun: lun, workload: x)) }
    }
    return out
}

/// One load generator run, as the report needs it.
struct RunRecord {
    var scenario: String
    var lun: String
    var workload: String
    var title: String
    var peer: String
    var cores: Int
    var ok: Bool
    var crashed: Bool
    /// The daemon was SIGKILLed from outside during the run (another session on a shared machine).
    var killed = false
    var note: String
    /// The load generator's JSON object (nil when it did not produce one).
    var result: [String: Any]?

    var iops: Double { (result?["iops"] as? NSNumber)?.doubleValue ?? 0 }
    var mbps: Double { (result?["mbps"] as? NSNumber)?.doubleValue ?? 0 }
    var errors: Int { (result?["errors"] as? NSNumber)?.intValue ?? 0 }
    var latency: [String: Double] {
        var out: [String: Double] = [:]
        for (k, v) in (result?["latencyUs"] as? [String: Any]) ?? [:] { out[k] = (v as? NSNumber)?.doubleValue }
        return out
    }
    var target: [String: Any] { (result?["target"] as? [String: Any]) ?? [:] }
    var cpuMicrosPerIO: Double? { (target["cpuMicrosPerIO"] as? NSNumber)?.doubleValue }
    var cpuSeconds: Double? { (target["cpuSeconds"] as? NSNumber)?.doubleValue }
    var seconds: Double { (result?["seconds"] as? NSNumber)?.doubleValue ?? 0 }
    var vmHWMKiB: Int { (target["vmHWMKiB"] as? NSNumber)?.intValue ?? 0 }
    var loadgenCPU: Double { (result?["loadgenCPUSeconds"] as? NSNumber)?.doubleValue ?? 0 }
    /// CPU of the LUN's backing service (sheep) over the measured interval.
    var backendCPU: Double? { ((result?["backend"] as? [String: Any])?["cpuSeconds"] as? NSNumber)?.doubleValue }
    var backendCPUMicrosPerIO: Double? { ((result?["backend"] as? [String: Any])?["cpuMicrosPerIO"] as? NSNumber)?.doubleValue }
    /// CPU (in cores) that neither the target nor the load generator used during the measured interval:
    /// other work on a shared machine, and stolen time. Large values mean the run was disturbed.
    var otherCores: Double? {
        guard let h = result?["host"] as? [String: Any], let busy = (h["busyCPUSeconds"] as? NSNumber)?.doubleValue,
              let t = cpuSeconds, seconds > 0 else { return nil }
        return max(0, busy - t - loadgenCPU - (backendCPU ?? 0)) / seconds
    }
    /// Retries of a disturbed run.
    var attempts = 1
    /// IOPS per target CPU-second: the scaling measure.
    var iopsPerCPUSecond: Double? {
        guard let c = cpuSeconds, c > 0 else { return nil }
        return iops * seconds / c
    }

    var json: [String: Any] {
        var o: [String: Any] = ["scenario": scenario, "lun": lun, "workload": workload, "title": title, "peer": peer,
                                "cores": cores, "ok": ok, "crashed": crashed, "killed": killed, "note": note,
                                "iops": iops, "mbps": mbps, "errors": errors, "latencyUs": latency,
                                "vmHWMKiB": vmHWMKiB, "loadgenCPUSeconds": loadgenCPU]
        if let c = cpuMicrosPerIO { o["cpuMicrosPerIO"] = c }
        if let c = cpuSeconds { o["cpuSeconds"] = c }
        if let c = iopsPerCPUSecond { o["iopsPerCPUSecond"] = c }
        if let c = otherCores { o["otherCores"] = c }
        if let c = backendCPU { o["backendCPUSeconds"] = c }
        if let c = backendCPUMicrosPerIO { o["backendCPUMicrosPerIO"] = c }
        o["attempts"] = attempts
        if let d = result?["latencyDistribution"] { o["latencyDistribution"] = d }
        if let m = result?["messages"] { o["messages"] = m }
        return o
    }
}

struct LoadOptions {
    var durationSeconds = 3.0
    var warmupSeconds = 1.0
    /// Count mode instead of timed.
    var ios: Int? = nil
    var verify = false
    var headerDigest = false
    var dataDigest = false
    var idleSessions = 0
    /// Pin the load generator to this CPU (the cross-check keeps both initiators off the target's CPU).
    var pinCPU: Int? = nil
    var extra: [String] = []
}

/// Runs the load generator against one daemon; restarts the daemon first if it died. A run during which
/// the daemon was killed from outside is run again once; a crash is recorded as it is.
func runLoad(_ d: Daemon, _ s: Scenario, _ o: LoadOptions, bins: Binaries, logDir: URL) -> RunRecord {
    let first = runLoadOnce(d, s, o, bins: bins, logDir: logDir)
    if first.killed {
        log("  ! \(d.name) was killed from outside during \(s.id): running it again")
        var again = runLoadOnce(d, s, o, bins: bins, logDir: logDir)
        again.note = "(run again: the first attempt's daemon was SIGKILLed from outside) " + again.note
        again.attempts = 2
        return again
    }
    // A run that other work on the machine disturbed is run once more; the quieter of the two is kept.
    if first.ok, let other = first.otherCores, other > RunLimits.disturbedCores, RunLimits.retryBudget.take() {
        log("  ~ \(d.name) \(s.id): \(String(format: "%.2f", other)) cores of other load during the run: running it again")
        var again = runLoadOnce(d, s, o, bins: bins, logDir: logDir)
        again.attempts = 2
        if again.ok, let o2 = again.otherCores, o2 < other { return again }
        var kept = first
        kept.attempts = 2
        return kept
    }
    return first
}

enum RunLimits {
    /// Other load (cores) above which a run counts as disturbed.
    static let disturbedCores = 0.3
    /// Re-runs of disturbed runs in one suite run at most (keeps the suite's time bounded).
    static let retryBudget = Budget(24)
    /// ringtgt's busy-poll window in the latency (polling) scenarios.
    static let pollMicroseconds = 1000
    /// How long ringtgt-echo's server gets to print its port.
    static let echoReadySeconds = 20.0
}

final class Budget: @unchecked Sendable {
    private var left: Int
    private let lock = NSLock()
    init(_ n: Int) { left = n }
    func take() -> Bool { lock.lock(); defer { lock.unlock() }; if left > 0 { left -= 1; return true }; return false }
}

func runLoadOnce(_ d: Daemon, _ s: Scenario, _ o: LoadOptions, bins: Binaries, logDir: URL) -> RunRecord {
    var rec = RunRecord(scenario: s.id, lun: s.lun.rawValue, workload: s.workload.id, title: s.workload.title,
                        peer: d.peer.rawValue, cores: d.spec.cores, ok: false, crashed: false, note: "", result: nil)
    do {
        if let crash = try d.ensureRunning() { rec.note = "restarted before this run: \(crash)" }
    } catch {
        rec.note = "daemon could not be started: \(error)"
        return rec
    }
    var args = [d.url(s.lun), "--rw", s.workload.rw, "--bs", s.workload.bs, "--qd", "\(s.workload.qd)",
                "--sessions", "\(s.workload.sessions)", "--region", s.lun.region, "--json", "--target-pid", "\(d.pid)"]
    // The sheep's CPU is the LUN's, not other load on the machine.
    for p in d.sheepLUNs[s.lun]?.backend.pids ?? [] { args += ["--backend-pid", "\(p)"] }
    if let n = o.ios {
        args += ["--ios", "\(n)", "--timeout", "60"]
    } else {
        args += ["--duration", "\(o.durationSeconds)", "--warmup", "\(o.warmupSeconds)"]
    }
    if o.verify { args.append("--verify") }
    if o.headerDigest { args.append("--header-digest") }
    if o.dataDigest { args.append("--data-digest") }
    if o.idleSessions > 0 { args += ["--idle-sessions", "\(o.idleSessions)"] }
    if s.workload.poll {
        args.append("--poll")
        d.setPoll(microseconds: RunLimits.pollMicroseconds)
    }
    defer { if s.workload.poll { d.setPoll(microseconds: 0) } }
    args += o.extra
    let budget = (o.ios == nil ? o.durationSeconds + o.warmupSeconds : 60) + 60
    let r: ToolResult
    do {
        if let cpu = o.pinCPU {
            r = try runTool(bins.taskset, ["-c", "\(cpu)", bins.loadgen] + args, logDir: logDir, label: "loadgen", timeoutSeconds: budget)
        } else {
            r = try runTool(bins.loadgen, args, logDir: logDir, label: "loadgen", timeoutSeconds: budget)
        }
    } catch {
        rec.note = "load generator did not start: \(error)"
        return rec
    }
    if let line = r.stdout.split(separator: "\n").last(where: { $0.hasPrefix("{") }),
       let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] {
        rec.result = obj
    }
    if !d.isAlive {
        if d.death == .killed {
            rec.killed = true
            rec.note = "\(d.name) was SIGKILLed from outside during the run" + (rec.note.isEmpty ? "" : "; " + rec.note)
        } else {
            rec.crashed = true
            rec.note = "\(d.name) crashed during the run" + (rec.note.isEmpty ? "" : "; " + rec.note)
        }
        _ = try? d.ensureRunning()
    }
    rec.ok = r.succeeded && rec.result != nil && !rec.crashed && !rec.killed
    if !r.succeeded && !rec.crashed {
        let msg = ((rec.result?["messages"] as? [String]) ?? []).prefix(2).joined(separator: "; ")
        rec.note = (rec.note.isEmpty ? "" : rec.note + "; ") + "the load generator \(r.outcome): " + (msg.isEmpty ? logExcerpt(r.stderr, lines: 2) : msg)
    }
    return rec
}

func describe(_ r: RunRecord) -> String {
    let lat = r.latency
    var s = "\(r.peer)-\(r.cores)c \(r.scenario): "
    if r.result == nil { return s + "FAILED (\(r.note))" }
    s += "\(Int(r.iops)) IOPS \(String(format: "%.0f", r.mbps)) MB/s p50 \(String(format: "%.0f", lat["p50"] ?? 0))us"
    if let c = r.cpuMicrosPerIO { s += " cpu/io \(String(format: "%.2f", c))us" }
    if let o = r.otherCores, o > 0.1 { s += " (other load \(String(format: "%.2f", o)) cores)" }
    if !r.ok { s += " [\(r.note)]" }
    return s
}
