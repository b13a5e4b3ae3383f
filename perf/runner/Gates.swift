// Deterministic gates, independent of the clock:
// - heap allocations per I/O in steady state: ringtgtd under a malloc-counting LD_PRELOAD interposer; the
//   counts after runs of N and 2N I/Os differ only by per-I/O allocations, which must be 0;
// - instructions per I/O: ringtgtd under callgrind serving runs of N and 2N I/Os; (Ir(2N) - Ir(N)) / N.
import Foundation
#if canImport(Glibc)
import Glibc
#endif

struct GateWorkload {
    var id: String
    var lun: LUNKind
    var rw: String
    var bs: String
    var qd: Int
    var ios: Int
    /// Driven through the NBD server by fio's nbd engine instead of the iSCSI load generator.
    var nbd = false
}

let allocationWorkloads: [GateWorkload] = [
    GateWorkload(id: "null-randread-4k-qd32", lun: .null, rw: "randread", bs: "4k", qd: 32, ios: 20000),
    GateWorkload(id: "null-randwrite-4k-qd32", lun: .null, rw: "randwrite", bs: "4k", qd: 32, ios: 20000),
    GateWorkload(id: "null-write-128k-qd32", lun: .null, rw: "write", bs: "128k", qd: 32, ios: 2000),
    GateWorkload(id: "file-randrw-4k-qd32", lun: .file, rw: "randrw", bs: "4k", qd: 32, ios: 20000),
    GateWorkload(id: "nbd-file-randrw-4k-qd32", lun: .file, rw: "randrw", bs: "4k", qd: 32, ios: 20000, nbd: true),
]

/// fio's nbd engine (libnbd) for `ios` I/Os against the LUN's NBD export, `IQN/LUN`.
func fioNBDArgs(port: Int, _ w: GateWorkload, ios: Int) -> [String] {
    ["--name=gate", "--ioengine=nbd", "--uri=nbd://127.0.0.1:\(port)/\(PerfTarget.iqn)/\(w.lun.lun)",
     "--rw=\(w.rw)", "--bs=\(w.bs)", "--iodepth=\(w.qd)", "--size=1g", "--number_ios=\(ios)",
     "--randrepeat=0", "--output-format=terse"]
}

let instructionWorkloads: [GateWorkload] = [
    GateWorkload(id: "null-randread-4k-qd32", lun: .null, rw: "randread", bs: "4k", qd: 32, ios: 10000),
    GateWorkload(id: "null-randwrite-4k-qd32", lun: .null, rw: "randwrite", bs: "4k", qd: 32, ios: 10000),
    GateWorkload(id: "null-write-128k-qd32", lun: .null, rw: "write", bs: "128k", qd: 32, ios: 2000),
]

enum GateLimits {
    /// A per-I/O allocation shows up as at least 1.0 per I/O; below this the difference is session noise.
    static let maxAllocationsPerIO = 0.01
    /// Snapshots of the counters are retried until two in a row agree (connection teardown is asynchronous).
    static let snapshotAttempts = 30
    static let snapshotIntervalSeconds = 0.1
}

/// Allocation counts dumped by perf/gates/malloccount.c.
struct AllocCounts {
    var malloc = 0, calloc = 0, realloc = 0, memalign = 0, free = 0
    var allocations: Int { malloc + calloc + realloc + memalign }

    static func parse(_ s: String) -> AllocCounts? {
        let f = s.split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard f.count >= 10 else { return nil }
        var c = AllocCounts()
        for i in stride(from: 0, to: f.count - 1, by: 2) {
            let v = Int(f[i + 1]) ?? 0
            switch f[i] {
            case "malloc": c.malloc = v
            case "calloc": c.calloc = v
            case "realloc": c.realloc = v
            case "memalign": c.memalign = v
            case "free": c.free = v
            default: break
            }
        }
        return c
    }
    static func - (a: AllocCounts, b: AllocCounts) -> AllocCounts {
        AllocCounts(malloc: a.malloc - b.malloc, calloc: a.calloc - b.calloc, realloc: a.realloc - b.realloc,
                    memalign: a.memalign - b.memalign, free: a.free - b.free)
    }
    var json: [String: Any] { ["malloc": malloc, "calloc": calloc, "realloc": realloc, "memalign": memalign, "free": free] }
}

func loadgenArgs(_ d: Daemon, _ w: GateWorkload, ios: Int) -> [String] {
    [d.url(w.lun), "--rw", w.rw, "--bs", w.bs, "--qd", "\(w.qd)", "--ios", "\(ios)", "--region", "1g", "--json",
     "--timeout", "120"]
}

/// Runs the allocation gate. Returns per-workload records and whether every workload passed.
func allocationGate(bins: Binaries, logDir: URL, fileLUN: String) -> (records: [[String: Any]], pass: Bool, error: String?) {
    let countsFile = logDir.appendingPathComponent("malloccount.txt").path
    var spec = DaemonSpec(peer: .ringtgt, cores: 1,
                          environment: ["LD_PRELOAD": bins.mallocCount, "MALLOCCOUNT_OUT": countsFile,
                                        "MALLOCCOUNT_SIGNAL": "\(SIGUSR2)"])
    spec.extraArgs += ["--nbd", "portal=127.0.0.1:0"]
    let d = Daemon(spec: spec, bins: bins, logDir: logDir, fileLUN: fileLUN)
    defer { d.stop() }
    do { try d.start() } catch { return ([], false, "ringtgtd under the allocation counter did not start: \(error)") }

    func snapshot() -> AllocCounts? {
        var last: AllocCounts? = nil
        for _ in 0..<GateLimits.snapshotAttempts {
            try? FileManager.default.removeItem(atPath: countsFile)
            d.signal(SIGUSR2)
            var got: AllocCounts? = nil
            for _ in 0..<50 {
                if let s = try? String(contentsOfFile: countsFile, encoding: .utf8), let c = AllocCounts.parse(s) { got = c; break }
                usleep(10_000)
            }
            guard let c = got else { return nil }
            if let l = last, l.allocations == c.allocations && l.free == c.free { return c }
            last = c
            Thread.sleep(forTimeInterval: GateLimits.snapshotIntervalSeconds)
        }
        return last
    }

    var records: [[String: Any]] = []
    var pass = true
    for w in allocationWorkloads {
        func load(_ n: Int) -> Bool {
            if w.nbd {
                guard let port = d.nbdPort(),
                      let r = try? runTool(bins.fio, fioNBDArgs(port: port, w, ios: n), logDir: logDir, label: "gate-fio",
                                           timeoutSeconds: 150) else { return false }
                return r.succeeded
            }
            guard let r = try? runTool(bins.loadgen, loadgenArgs(d, w, ios: n), logDir: logDir, label: "gate-loadgen",
                                       timeoutSeconds: 150) else { return false }
            return r.succeeded
        }
        // A first run warms every lazily built structure; then N and 2N.
        guard load(w.ios), let a = snapshot(), load(w.ios), let b = snapshot(), load(2 * w.ios), let c = snapshot() else {
            records.append(["workload": w.id, "pass": false, "error": "a run failed or the counters could not be read",
                            "daemonAlive": d.isAlive])
            pass = false
            if !d.isAlive { _ = try? d.ensureRunning() }
            continue
        }
        let first = b - a
        let second = c - b
        let extra = second.allocations - first.allocations
        let perIO = Double(extra) / Double(w.ios)
        let ok = perIO < GateLimits.maxAllocationsPerIO
        if !ok { pass = false }
        records.append(["workload": w.id, "ios": w.ios, "allocationsRunN": first.allocations,
                        "allocationsRun2N": second.allocations, "countsRunN": first.json, "countsRun2N": second.json,
                        "extraAllocationsPerIO": perIO, "pass": ok])
        log("  allocations \(w.id): N=\(w.ios) run \(first.allocations), 2N run \(second.allocations) -> \(String(format: "%.4f", perIO)) per extra I/O \(ok ? "PASS" : "FAIL")")
    }
    return (records, pass, nil)
}

/// The load generator itself under the same counter (it is held to the same rule).
func loadgenAllocationCheck(bins: Binaries, logDir: URL, daemon d: Daemon) -> [String: Any] {
    let w = allocationWorkloads[0]
    var counts: [Int] = []
    for n in [w.ios, 2 * w.ios] {
        let out = logDir.appendingPathComponent("loadgen-malloccount-\(n).txt").path
        guard let r = try? runTool(bins.loadgen, loadgenArgs(d, w, ios: n), logDir: logDir, label: "loadgen-alloc",
                                   timeoutSeconds: 120,
                                   environment: ["LD_PRELOAD": bins.mallocCount, "MALLOCCOUNT_OUT": out]),
              r.succeeded, let s = try? String(contentsOfFile: out, encoding: .utf8), let c = AllocCounts.parse(s) else {
            return ["workload": w.id, "error": "run failed"]
        }
        counts.append(c.allocations)
    }
    let perIO = Double(counts[1] - counts[0]) / Double(w.ios)
    log("  load generator allocations: N run \(counts[0]), 2N run \(counts[1]) -> \(String(format: "%.4f", perIO)) per extra I/O")
    return ["workload": w.id, "ios": w.ios, "allocationsRunN": counts[0], "allocationsRun2N": counts[1], "extraAllocationsPerIO": perIO]
}

/// Instructions per I/O under callgrind. Each run is a fresh daemon: Ir(run of 2N) - Ir(run of N) = N I/Os.
func instructionGate(bins: Binaries, logDir: URL, fileLUN: String, scale: Double = 1) -> [[String: Any]] {
    var records: [[String: Any]] = []
    for w in instructionWorkloads {
        let n = max(500, Int(Double(w.ios) * scale))
        var totals: [Int] = []
        var profiles: [String] = []
        for ios in [n, 2 * n] {
            let out = logDir.appendingPathComponent("callgrind-\(w.id)-\(ios).out").path
            let spec = DaemonSpec(peer: .ringtgt, cores: 1, environment: ["LD_PRELOAD": bins.uringWait],
                                  valgrindArgs: ["--tool=callgrind", "--callgrind-out-file=\(out)"])
            let d = Daemon(spec: spec, bins: bins, logDir: logDir, fileLUN: fileLUN)
            do {
                try d.start()
                let r = try runTool(bins.loadgen, loadgenArgs(d, w, ios: ios), logDir: logDir, label: "callgrind-loadgen",
                                    timeoutSeconds: 300)
                d.stop()
                guard r.succeeded else { throw RunnerError("the load generator \(r.outcome): \(logExcerpt(r.stderr))") }
                let text = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
                guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("summary:") }),
                      let ir = Int(line.split(separator: " ").last ?? "") else { throw RunnerError("no summary in \(out)") }
                totals.append(ir)
                profiles.append(out)
            } catch {
                d.stop()
                log("  ! instructions \(w.id): \(logExcerpt("\(error)", lines: 3))")
                records.append(["workload": w.id, "error": "\(error)"])
                break
            }
        }
        guard totals.count == 2 else { continue }
        let perIO = Double(totals[1] - totals[0]) / Double(n)
        log("  instructions \(w.id): Ir(\(n))=\(totals[0]) Ir(\(2 * n))=\(totals[1]) -> \(Int(perIO)) per I/O")
        var rec: [String: Any] = ["workload": w.id, "ios": n, "irRunN": totals[0], "irRun2N": totals[1], "instructionsPerIO": perIO]
        if let top = callgrindPerIO(runN: profiles[0], run2N: profiles[1], n: n, logDir: logDir, name: w.id) { rec["topFunctions"] = top }
        records.append(rec)
    }
    return records
}

/// Self cost per function in a callgrind profile, as callgrind_annotate prints it.
func callgrindFunctions(_ profile: String, logDir: URL) -> [String: Int] {
    guard let r = try? runTool("/usr/bin/callgrind_annotate", ["--inclusive=no", "--threshold=100", "--auto=no", profile],
                               logDir: logDir, label: "callgrind-annotate", timeoutSeconds: 60), r.succeeded else { return [:] }
    var out: [String: Int] = [:]
    for line in r.stdout.split(separator: "\n") {
        // "  82,338,599 (49.04%)  file:function [object]"
        let t = line.trimmingCharacters(in: .whitespaces)
        guard let first = t.first, first.isNumber, !t.contains("=>"), let paren = t.range(of: "%)") else { continue }
        let costText = t.prefix(while: { $0.isNumber || $0 == "," }).replacingOccurrences(of: ",", with: "")
        guard let cost = Int(costText) else { continue }
        var name = String(t[paren.upperBound...]).trimmingCharacters(in: .whitespaces)
        if name.hasPrefix("PROGRAM TOTALS") { continue }
        if let bracket = name.range(of: " [", options: .backwards) { name = String(name[..<bracket.lowerBound]) }
        out[name, default: 0] += cost
    }
    return out
}

/// Where the instructions of one extra I/O go: per function, (self Ir in the 2N run - in the N run) / N,
/// demangled. Start-up and shutdown cancel out, unlike in a plain profile.
func callgrindPerIO(runN: String, run2N: String, n: Int, logDir: URL, name: String, count: Int = 15) -> String? {
    let a = callgrindFunctions(runN, logDir: logDir)
    let b = callgrindFunctions(run2N, logDir: logDir)
    guard !a.isEmpty, !b.isEmpty else { return nil }
    var diff: [(String, Double)] = []
    for (k, v) in b {
        let d = Double(v - (a[k] ?? 0)) / Double(n)
        if d >= 1 { diff.append((k, d)) }
    }
    diff.sort { $0.1 > $1.1 }
    let total = diff.reduce(0) { $0 + $1.1 }
    var names = diff.prefix(count).map { $0.0 }
    // file:function; demangle the function part.
    let funcs = names.map { n -> String in
        if let colon = n.firstIndex(of: ":") { return String(n[n.index(after: colon)...]) }
        return n
    }
    let tmp = logDir.appendingPathComponent("callgrind-names-\(name).txt")
    try? funcs.joined(separator: "\n").write(to: tmp, atomically: true, encoding: .utf8)
    if let d = try? runTool("/bin/sh", ["-c", "swift-demangle --simplified < '\(tmp.path)'"], logDir: logDir,
                            label: "demangle", timeoutSeconds: 60), d.succeeded {
        let out = d.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if out.count >= funcs.count {
            names = zip(names, out.prefix(funcs.count)).map { full, dem in
                if let colon = full.firstIndex(of: ":") { return String(full[..<colon]) + ": " + dem }
                return dem
            }
        }
    }
    var text = String(format: "%8.0f  all functions (sum of per-function increases)\n", total)
    for (i, n) in names.enumerated() {
        text += String(format: "%8.0f  ", diff[i].1) + String(n.prefix(170)) + "\n"
    }
    try? text.write(to: logDir.appendingPathComponent("callgrind-per-io-\(name).txt"), atomically: true, encoding: .utf8)
    return text
}
