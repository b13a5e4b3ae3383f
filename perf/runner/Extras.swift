// The loopback limit, the cross-check against libiscsi's iscsi-perf, and the idle-sessions run.
import Foundation
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The echo's payload sizes: a 4 KiB random read's, and the 128 KiB sequential read's.
enum EchoPayload {
    static let read4k = 4096
    static let read128k = 128 * 1024
}

/// Starts ringtgt-echo's server on CPU 0 (where a one-core target runs) and waits for the port it prints.
func startEchoServer(bins: Binaries, logDir: URL, label: String, poll: Bool = false,
                     payload: Int = EchoPayload.read4k, concurrent: Int? = nil) throws -> (ToolProcess, Int) {
    let server = try startChild(bins.taskset, ["-c", "0", bins.echo, "server", "--payload", "\(payload)"] + (poll ? ["--poll"] : [])
                                    + (concurrent.map { ["--concurrent", "\($0)"] } ?? []),
                                logDir: logDir, label: label, stdout: .pipe)
    do {
        let lines = try server.waitForLines(timeoutSeconds: RunLimits.echoReadySeconds) { $0.contains { $0.hasPrefix("PORT ") } }
        if let line = lines.first(where: { $0.hasPrefix("PORT ") }), let p = Int(line.dropFirst("PORT ".count)) {
            return (server, p)
        }
        throw RunnerError("echo server printed no port: \(lines)")
    } catch {
        Children.shared.stop(server)
        throw RunnerError("echo server did not report its port: \(error)")
    }
}

/// ringtgt-echo at the scenario queue depths: server pinned to CPU 0 like a one-core target, client placed by
/// the kernel like the load generator, so the limit and the targets are measured in the same placement.
func loopbackLimit(bins: Binaries, logDir: URL, depths: [Int], seconds: Double, warmup: Double,
                   poll: Bool = false, payload: Int = EchoPayload.read4k) -> [[String: Any]] {
    var out: [[String: Any]] = []
    for qd in depths {
        do {
            let (server, port) = try startEchoServer(bins: bins, logDir: logDir, label: "echo-server", poll: poll,
                                                     payload: payload)
            let r = try runTool(bins.echo, ["client", "--port", "\(port)", "--payload", "\(payload)", "--qd", "\(qd)",
                                            "--duration", "\(seconds)",
                                            "--warmup", "\(warmup)", "--json"] + (poll ? ["--poll"] : []),
                                logDir: logDir, label: "echo-client", timeoutSeconds: seconds + warmup + 30)
            Children.shared.stop(server)
            guard r.succeeded, let obj = try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else {
                throw RunnerError("echo client failed: \(r.stderr)")
            }
            let rate = (obj["roundTripsPerSecond"] as? NSNumber)?.doubleValue ?? 0
            log("  loopback echo QD\(qd), \(payload) B\(poll ? ", both sides polling" : ""): \(Int(rate)) round trips/s")
            out.append(["queueDepth": qd, "roundTripsPerSecond": rate, "poll": poll, "payloadBytes": payload])
        } catch {
            log("  loopback echo QD\(qd): \(error)")
            out.append(["queueDepth": qd, "error": "\(error)"])
        }
    }
    return out
}

/// iscsi-perf and ringtgt-loadgen alternately on the same LUN (4K random read, QD32, one session), where
/// the target is the bottleneck; both must report the same IOPS within about 10%. Both initiators are pinned
/// to CPU 1, away from a one-core target on CPU 0, so that neither takes CPU time from the target.
func crossCheck(bins: Binaries, logDir: URL, daemon d: Daemon, lun: LUNKind, seconds: Int, rounds: Int) -> [String: Any] {
    var perf: [Double] = []
    var ours: [Double] = []
    let scenario = Scenario(lun: lun, workload: Workload(id: "randread-4k-qd32", title: "", rw: "randread", bs: "4k", qd: 32))
    for _ in 0..<rounds {
        let mine = runLoad(d, scenario, LoadOptions(durationSeconds: Double(seconds), warmupSeconds: 0, pinCPU: 1), bins: bins, logDir: logDir)
        if mine.ok { ours.append(mine.iops) }
        if let r = try? runTool(bins.taskset, ["-c", "1", bins.iscsiPerf, "-t", "\(seconds)", "-m", "32", "-b", "8", "-r", d.url(lun)],
                                logDir: logDir, label: "iscsi-perf", timeoutSeconds: Double(seconds) + 30) {
            // The last "iops average N" is the whole run's average.
            let text = r.stdout.replacingOccurrences(of: "\r", with: "\n")
            if let line = text.split(separator: "\n").last(where: { $0.contains("iops average") }),
               let range = line.range(of: "iops average ") {
                let num = line[range.upperBound...].prefix(while: { $0.isNumber })
                if let v = Double(num) { perf.append(v) }
            }
        }
    }
    let a = ours.isEmpty ? 0 : ours.reduce(0, +) / Double(ours.count)
    let b = perf.isEmpty ? 0 : perf.reduce(0, +) / Double(perf.count)
    let diff = b > 0 ? (a - b) / b : 0
    log("  cross-check \(d.name) \(lun.rawValue): ringtgt-loadgen \(Int(a)) IOPS, iscsi-perf \(Int(b)) IOPS (\(String(format: "%+.1f", diff * 100))%)")
    return ["daemon": d.name, "lun": lun.rawValue, "workload": "randread-4k-qd32", "loadgenIOPS": ours, "iscsiPerfIOPS": perf,
            "loadgenMean": a, "iscsiPerfMean": b, "difference": diff, "agreeWithin10Percent": abs(diff) <= 0.10 && !ours.isEmpty && !perf.isEmpty]
}

/// One active session (4K random read, QD32, null LUN) beside `idle` idle sessions on one target core.
func idleSessionRun(bins: Binaries, logDir: URL, daemon d: Daemon, idle: Int, seconds: Double, warmup: Double) -> [String: Any] {
    _ = try? d.ensureRunning()
    // The same active session alone, just before: the comparison must not span minutes of a shared machine.
    let alone = runLoad(d, Scenario(lun: .null, workload: Workload(id: "randread-4k-qd32", title: "", rw: "randread", bs: "4k", qd: 32)),
                        LoadOptions(durationSeconds: seconds, warmupSeconds: warmup), bins: bins, logDir: logDir)
    let before = ProcessStats.memoryKiB(d.pid) ?? (0, 0)
    let scenario = Scenario(lun: .null, workload: Workload(id: "randread-4k-qd32-idle\(idle)", title: "4K rand read QD32 + \(idle) idle sessions",
                                                           rw: "randread", bs: "4k", qd: 32))
    // Warm-up covers the idle logins' tail and the first NOP-In pings.
    let r = runLoad(d, scenario, LoadOptions(durationSeconds: seconds, warmupSeconds: warmup, idleSessions: idle), bins: bins, logDir: logDir)
    let withIdle = (r.target["vmRSSKiBAtStart"] as? NSNumber)?.intValue ?? 0
    let perSession = idle > 0 && withIdle > 0 ? Double(withIdle - before.rss) * 1024 / Double(idle) : 0
    log("  idle sessions \(d.name): alone \(Int(alone.iops)) IOPS; \(idle) idle + 1 active: \(Int(r.iops)) IOPS, RSS \(before.rss) -> \(withIdle) KiB (\(Int(perSession)) bytes per idle session)\(r.ok ? "" : " [\(r.note)]")")
    return ["daemon": d.name, "idleSessions": idle, "ok": r.ok && alone.ok, "note": r.note + alone.note, "iops": r.iops,
            "iopsWithoutIdle": alone.iops, "otherCoresWithoutIdle": alone.otherCores ?? 0, "otherCoresWithIdle": r.otherCores ?? 0,
            "rssBeforeKiB": before.rss, "rssWithIdleKiB": withIdle, "bytesPerIdleSession": perSession, "run": r.json]
}

/// fio's nbd engine (libnbd) against ringtgt's NBD export of a LUN: 4 KiB random I/O at a queue depth, the
/// workloads of perf/fio/nbd.fio. tgt has no NBD server, so this row has no peer; it shows that fio runs.
func fioNBDRun(bins: Binaries, logDir: URL, daemon d: Daemon, lun: LUNKind, rw: String, qd: Int,
               seconds: Double, warmup: Double) -> [String: Any] {
    var rec: [String: Any] = ["daemon": d.name, "lun": lun.rawValue, "rw": rw, "bs": "4k", "qd": qd]
    guard let port = d.nbdPort() else {
        rec["error"] = "no NBD listener"
        log("  fio nbd \(lun.rawValue) \(rw): no NBD listener")
        return rec
    }
    let uri = "nbd://127.0.0.1:\(port)/\(PerfTarget.iqn)/\(lun.lun)"
    let args = ["--name=\(lun.rawValue)-\(rw)", "--ioengine=nbd", "--uri=\(uri)", "--rw=\(rw)", "--bs=4k",
                "--iodepth=\(qd)", "--size=1g", "--time_based=1", "--runtime=\(Int(max(1, seconds.rounded())))",
                "--ramp_time=\(Int(max(0, warmup.rounded())))", "--output-format=json"]
    guard let r = try? runTool(bins.fio, args, logDir: logDir, label: "fio-nbd", timeoutSeconds: seconds + warmup + 60),
          r.succeeded, let start = r.stdout.firstIndex(of: "{"),
          let obj = try? JSONSerialization.jsonObject(with: Data(r.stdout[start...].utf8)) as? [String: Any],
          let job = (obj["jobs"] as? [[String: Any]])?.first,
          let side = job[rw == "randread" ? "read" : "write"] as? [String: Any],
          let iops = (side["iops"] as? NSNumber)?.doubleValue else {
        rec["error"] = "fio failed"
        log("  fio nbd \(lun.rawValue) \(rw): failed")
        return rec
    }
    rec["iops"] = iops
    if let lat = side["clat_ns"] as? [String: Any], let pct = lat["percentile"] as? [String: Any],
       let p50 = (pct["50.000000"] as? NSNumber)?.doubleValue {
        rec["p50us"] = p50 / 1000
    }
    log("  fio nbd \(lun.rawValue) \(rw) QD\(qd): \(Int(iops)) IOPS\((rec["p50us"] as? Double).map { String(format: ", p50 %.0f us", $0) } ?? "")")
    return rec
}
