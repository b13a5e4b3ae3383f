// ringtgt-perf: runs ringtgt and Debian's tgt side by side and writes perf/results/<timestamp>/report.{md,json}
// with plots; compares against a stored baseline by ratios; runs the deterministic gates; or, with --smoke,
// a seconds-long functional pass for CI. perf/run and perf/smoke build everything and call this.
import ArgumentParser
import Foundation
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

struct PerfRunner: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ringtgt-perf",
        abstract: "ringtgt perf suite: scenarios beside tgt, loopback limit, gates, report, regression compare.")

    @Flag(help: "CI smoke: a few thousand I/Os per case against ringtgt and tgt, and the allocation gate.")
    var smoke = false

    @Option(help: "Directory of the release binaries (ringtgtd, ringtgtadm, ringtgt-loadgen, ringtgt-echo).")
    var bin: String

    @Option(name: .customLong("gates-dir"), help: "Directory holding malloccount.so and uringwait.so.")
    var gatesDir: String

    @Option(help: "Results directory (default perf/results/<timestamp>).")
    var out: String?

    @Option(help: "Measured seconds per run.")
    var duration: Double = 3

    @Option(help: "Warm-up seconds per run.")
    var warmup: Double = 1

    @Option(help: "Parts to run: scenarios,echo,crosscheck,thirdparty,idle,fio,gates (comma-separated).")
    var only: String = "scenarios,echo,crosscheck,thirdparty,idle,fio,gates"

    @Option(help: "Scenario ids containing this text only.")
    var filter: String?

    @Option(help: "Peers: ringtgt,tgt.")
    var peers: String = "ringtgt,tgt"

    @Option(help: "Target core counts: 1,2.")
    var cores: String = "1,2"

    @Option(name: .customLong("idle-sessions"), help: "Idle sessions beside one active session.")
    var idleSessions: Int = 1000

    @Option(help: "Compare with this baseline (perf/baseline.json or a report.json); exit 1 on a regression.")
    var compare: String?

    @Option(help: "Allowed fall of the geometric-mean ringtgt/tgt IOPS ratio before it counts as a regression (default: the baseline's, else 0.25).")
    var tolerance: Double?

    @Option(name: .customLong("cpu-tolerance"), help: "Allowed rise of the geometric-mean CPU-per-I/O ratio (default: the baseline's, else 0.15).")
    var cpuTolerance: Double?

    @Option(name: .customLong("instruction-tolerance"), help: "Allowed rise of instructions per I/O (default: the baseline's, else 0.05).")
    var instructionTolerance: Double?

    @Option(name: .customLong("write-baseline"), help: "Write this run's ratios and instruction counts as a baseline file.")
    var writeBaseline: String?

    @Flag(name: .customLong("no-plots"), help: "Skip the PNG plots.")
    var noPlots = false

    @Option(name: .customLong("compare-report"), help: "With --compare: compare this existing report.json instead of running.")
    var compareReport: String?

    @Option(name: .customLong("baseline-from"), help: "Comma-separated report.json files: write their per-key median to --write-baseline and exit (runs nothing).")
    var baselineFrom: String?

    func run() throws {
        if let c = compare, let reportPath = compareReport {
            // Compare an existing report with a baseline, running nothing.
            guard let rd = FileManager.default.contents(atPath: reportPath),
                  let rep = try JSONSerialization.jsonObject(with: rd) as? [String: Any],
                  let cur = rep["baseline"] as? [String: Any],
                  let bd = FileManager.default.contents(atPath: c),
                  let stored = try JSONSerialization.jsonObject(with: bd) as? [String: Any] else {
                throw RunnerError("cannot read \(reportPath) or \(c)")
            }
            let (lines, regressed) = compareWithBaseline(current: cur, stored: stored, tolerance: tolerance, cpuTolerance: cpuTolerance,
                                                         instructionTolerance: instructionTolerance)
            for l in lines { print("  " + l) }
            print(regressed ? "REGRESSION" : "no regression")
            if regressed { throw ExitCode(1) }
            return
        }
        if let from = baselineFrom {
            guard let outPath = writeBaseline else { throw ValidationError("--baseline-from needs --write-baseline FILE") }
            var sections: [[String: Any]] = []
            for path in from.split(separator: ",").map(String.init) {
                guard let data = FileManager.default.contents(atPath: path),
                      let obj = try JSONSerialization.jsonObject(with: data) as? [String: Any],
                      var b = obj["baseline"] as? [String: Any] else { throw RunnerError("no baseline section in \(path)") }
                // Reports from before the baseline kept third-party rows: derive them from the report's section.
                if b["thirdParty"] == nil, let tp = obj["thirdParty"] as? [String: Any] { b["thirdParty"] = thirdPartyRatios(tp) }
                sections.append(b)
            }
            let merged = medianBaseline(sections, tolerance: tolerance ?? Tolerance.iopsGeomean, instructionTolerance: instructionTolerance ?? Tolerance.instructions)
            try writeJSON(merged, to: URL(fileURLWithPath: outPath))
            print("baseline from \(sections.count) reports written to \(outPath)")
            return
        }
        raiseFileLimit()
        installSignalCleanup()
        let stamp: String = {
            let f = DateFormatter()
            f.dateFormat = "yyyyMMdd-HHmmss"
            f.timeZone = TimeZone(identifier: "UTC")
            return f.string(from: Date())
        }()
        let outDir = URL(fileURLWithPath: out ?? "perf/results/\(smoke ? "smoke-" : "")\(stamp)")
        let logDir = outDir.appendingPathComponent("logs")
        try FileManager.default.createDirectory(at: logDir, withIntermediateDirectories: true)
        let pidFile = outDir.appendingPathComponent("pids")
        _ = FileManager.default.createFile(atPath: pidFile.path, contents: nil)
        Children.shared.pidFile = pidFile

        let stripped = "\(gatesDir)/ringtgtd-callgrind"
        let bins = Binaries(ringtgtd: "\(bin)/ringtgtd",
                            ringtgtdUnderValgrind: FileManager.default.fileExists(atPath: stripped) ? stripped : "\(bin)/ringtgtd",
                            ringtgtadm: "\(bin)/ringtgtadm", loadgen: "\(bin)/ringtgt-loadgen",
                            echo: "\(bin)/ringtgt-echo", mallocCount: "\(gatesDir)/malloccount.so", uringWait: "\(gatesDir)/uringwait.so",
                            sheepTestServer: "\(bin)/ringtgt-sheep-testserver")
        let shm = URL(fileURLWithPath: "/dev/shm/ringtgt-perf-\(getpid())")
        try FileManager.default.createDirectory(at: shm, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: shm) }
        let fileLUN = try makeFileLUN(dir: shm)
        log("ringtgt-perf: results in \(outDir.path)")

        let code: Int32
        do {
            code = smoke ? try runSmoke(bins: bins, outDir: outDir, logDir: logDir, fileLUN: fileLUN)
                         : try runFull(bins: bins, outDir: outDir, logDir: logDir, fileLUN: fileLUN, stamp: stamp)
        } catch {
            Children.shared.stopAll()
            throw error
        }
        Children.shared.stopAll()
        if code != 0 { throw ExitCode(code) }
    }

    // MARK: - Full suite

    func runFull(bins: Binaries, outDir: URL, logDir: URL, fileLUN: String, stamp: String) throws -> Int32 {
        let parts = Set(only.split(separator: ",").map { String($0) })
        let peerSet = Set(peers.split(separator: ",").map { String($0) })
        let coreSet = cores.split(separator: ",").compactMap { Int($0) }
        var specs: [DaemonSpec] = []
        for c in coreSet {
            if peerSet.contains("ringtgt") {
                // An NBD listener too, for the fio runs (fio's nbd engine).
                var spec = DaemonSpec(peer: .ringtgt, cores: c)
                spec.extraArgs += ["--nbd", "portal=127.0.0.1:0"]
                specs.append(spec)
            }
            if peerSet.contains("tgt") { specs.append(DaemonSpec(peer: .tgt, cores: c)) }
        }
        var report: [String: Any] = ["timestamp": stamp, "host": hostInfo(),
                                     "config": ["durationSeconds": duration, "warmupSeconds": warmup, "parts": Array(parts).sorted()]]
        var scenarios = fullMatrix()
        if let f = filter {
            // Comma-separated alternatives: a scenario runs when its id contains any of them.
            let alternatives = f.split(separator: ",").map(String.init)
            scenarios = scenarios.filter { s in alternatives.contains { s.id.contains($0) } }
        }
        if !parts.contains("scenarios") { scenarios = [] }

        // The sheep behind the sheepdog LUNs, started before (and so stopped after) the daemons.
        var backends: [LUNKind: SheepBackend] = [:]
        defer { for b in backends.values { b.stop() } }
        var sheepInfo: [String: Any] = ["regionBytes": SheepLimits.regionBytes]
        let shmDir = URL(fileURLWithPath: fileLUN).deletingLastPathComponent()
        for kind in [LUNKind.sheepTS, .sheep] where scenarios.contains(where: { $0.lun == kind }) {
            do {
                let b: SheepBackend
                if kind == .sheepTS {
                    b = try SheepBackend.startTestServer(bins: bins, dir: outDir, fallbackDir: shmDir, logDir: logDir)
                } else {
                    guard let sheep = findOnPath("sheep"), let dog = findOnPath("dog") else {
                        throw RunnerError("sheep and dog are not on PATH: real-sheep scenarios skipped")
                    }
                    b = try SheepBackend.startCluster(bins: bins, sheep: sheep, dog: dog, dir: shmDir.appendingPathComponent("sheep"), logDir: logDir)
                }
                backends[kind] = b
                let t0 = Date()
                for vdi in specs.map({ "perf-\($0.name)" }) + [SheepLimits.ceilingVDI] { try b.prepare(vdi: vdi) }
                log("started the \(b.name) (\(b.socketPath), pids \(b.pids.map(String.init).joined(separator: ","))); \(specs.count + 1) VDIs of \(SheepLimits.region) preallocated in \(f1(Date().timeIntervalSince(t0))) s")
                sheepInfo[kind.rawValue] = ["socket": b.socketPath, "vdis": specs.map { "perf-\($0.name)" }, "ceilingVDI": SheepLimits.ceilingVDI]
            } catch {
                log("\(kind.rawValue): \(error)")
                sheepInfo[kind.rawValue] = ["skipped": "\(error)"]
                scenarios.removeAll { $0.lun == kind }
            }
        }

        var daemons: [Daemon] = []
        defer { for d in daemons { d.stop() } }
        let needDaemons = !parts.isDisjoint(with: ["scenarios", "crosscheck", "thirdparty", "idle", "fio"])
        if needDaemons {
            for s in specs {
                let d = Daemon(spec: s, bins: bins, logDir: logDir, fileLUN: fileLUN)
                for (kind, b) in backends { d.sheepLUNs[kind] = SheepLUN(backend: b, vdi: "perf-\(s.name)") }
                try d.start()
                log("started \(d.name) (pid \(d.pid), port \(d.port))")
                daemons.append(d)
            }
        }
        func daemon(_ name: String) -> Daemon? { daemons.first { $0.name == name } }

        // Scenarios, scenario-major.
        var runs: [RunRecord] = []
        // The loopback limit at a queue depth is measured right before and right after the null-LUN 4K read
        // runs at that depth (the same minute of a shared machine); the higher of the two is the limit.
        let echoDepths = [1, 32, 128]
        /// The depth of the 128 KiB sequential-read scenario, where the 128 KiB echo is its ceiling.
        let sequentialEchoDepth = 32
        var loopback: [[String: Any]] = []
        func echoPair(_ qd: Int, poll: Bool = false, payload: Int = EchoPayload.read4k, around body: () -> Void) {
            let a = loopbackLimit(bins: bins, logDir: logDir, depths: [qd], seconds: duration, warmup: warmup, poll: poll,
                                  payload: payload)
            body()
            let b = loopbackLimit(bins: bins, logDir: logDir, depths: [qd], seconds: duration, warmup: warmup, poll: poll,
                                  payload: payload)
            let samples = (a + b).compactMap { $0["roundTripsPerSecond"] as? Double }
            var e: [String: Any] = ["queueDepth": qd, "samples": samples, "poll": poll, "payloadBytes": payload]
            if let m = samples.max() { e["roundTripsPerSecond"] = m } else { e["error"] = "echo failed" }
            loopback.append(e)
        }
        // The raw sheep ceiling at a sheepdog scenario's workload and depth is measured right before its
        // target runs (and, for real sheep's 4K read at QD32 and QD128, the goal rows, right after them too);
        // the best counts.
        var ceilings: [[String: Any]] = []
        func ceilingAround(_ b: SheepBackend, _ s: Scenario, around body: () -> Void) {
            let rw = s.workload.rw, qd = s.workload.qd
            func one() -> [String: Any] {
                let c = b.ceiling(rw: rw, qd: qd, seconds: duration, warmup: min(warmup, 0.5))
                if let e = c["error"] { log("  ! ceiling \(s.lun.rawValue) \(rw) QD\(qd): \(e)") } else {
                    log("  ceiling \(s.lun.rawValue) \(rw == "randread" ? "READ_OBJ" : "WRITE_OBJ") QD\(qd): \(Int((c["opsPerSecond"] as? NSNumber)?.doubleValue ?? 0)) ops/s (client CPU \(f2((c["clientCPUMicrosPerOp"] as? NSNumber)?.doubleValue ?? 0)) us/op)")
                }
                return c
            }
            var samples = [one()]
            body()
            if s.lun == .sheep && rw == "randread" && (qd == 32 || qd == 128) { samples.append(one()) }
            ceilings.append(ceilingEntry(samples, lun: s.lun, rw: rw, qd: qd))
        }
        if parts.contains("scenarios") {
            log("scenarios: \(scenarios.count) x \(daemons.count) daemons, \(warmup) + \(duration) s each")
            for s in scenarios {
                let runAll = {
                    for d in daemons {
                        let r = runLoad(d, s, LoadOptions(durationSeconds: duration, warmupSeconds: warmup), bins: bins, logDir: logDir)
                        log("  " + describe(r))
                        runs.append(r)
                    }
                }
                if parts.contains("echo") && s.lun == .null && s.workload.rw == "randread" && s.workload.bs == "4k"
                    && s.workload.sessions == 1 && echoDepths.contains(s.workload.qd) {
                    echoPair(s.workload.qd, poll: s.workload.poll, around: runAll)
                } else if parts.contains("echo") && s.lun == .null && s.workload.rw == "read" && s.workload.bs == "128k"
                            && s.workload.sessions == 1 {
                    // The sequential-read ceiling (issue 13): the same echo with 128 KiB answers.
                    echoPair(s.workload.qd, payload: EchoPayload.read128k, around: runAll)
                } else if let b = backends[s.lun] {
                    ceilingAround(b, s, around: runAll)
                } else {
                    runAll()
                }
            }
        }
        report["runs"] = runs.map { $0.json }
        if parts.contains("echo") && loopback.isEmpty {
            log("loopback limit")
            for qd in echoDepths { echoPair(qd) {} }
            echoPair(sequentialEchoDepth, payload: EchoPayload.read128k) {}
        }
        report["loopback"] = loopback
        sheepInfo["ceilings"] = ceilings
        report["sheep"] = sheepInfo

        if parts.contains("crosscheck") {
            log("cross-check with iscsi-perf")
            var cc: [[String: Any]] = []
            if let t = daemon("tgt-1c") {
                cc.append(crossCheck(bins: bins, logDir: logDir, daemon: t, lun: .null, seconds: 4, rounds: 2))
                cc.append(crossCheck(bins: bins, logDir: logDir, daemon: t, lun: .file, seconds: 4, rounds: 2))
            }
            if let r = daemon("ringtgt-1c") {
                var x = crossCheck(bins: bins, logDir: logDir, daemon: r, lun: .null, seconds: 4, rounds: 1)
                x["note"] = "ringtgt is faster than iscsi-perf can drive: the initiator is the bottleneck here, so no agreement is expected"
                cc.append(x)
            }
            report["crossCheck"] = cc
        }

        if parts.contains("thirdparty") {
            log("third-party initiators (iscsi-perf, qemu-img bench, fio nbd) against each target, and the echo floor")
            let ds = ["tgt-1c", "ringtgt-1c"].compactMap { daemon($0) }
            report["thirdParty"] = thirdPartySection(bins: bins, logDir: logDir, daemons: ds,
                                                     seconds: max(3, Int(duration.rounded())))
        }

        var idle: [[String: Any]] = []
        if parts.contains("idle") && idleSessions > 0 {
            log("idle sessions")
            for name in ["ringtgt-1c", "tgt-1c"] {
                if let d = daemon(name) {
                    idle.append(idleSessionRun(bins: bins, logDir: logDir, daemon: d, idle: idleSessions, seconds: duration, warmup: max(warmup, 2)))
                }
            }
        }
        report["idle"] = idle

        var fioRuns: [[String: Any]] = []
        if parts.contains("fio"), let d = daemon("ringtgt-1c") {
            log("fio through NBD (fio's nbd engine, perf/fio/nbd.fio's workloads)")
            for lun in [LUNKind.null, .file] {
                for rw in ["randread", "randwrite"] {
                    fioRuns.append(fioNBDRun(bins: bins, logDir: logDir, daemon: d, lun: lun, rw: rw, qd: 32,
                                             seconds: duration, warmup: warmup))
                }
            }
        }
        report["fio"] = fioRuns

        var gates: [String: Any] = [:]
        var allocPass: Bool? = nil
        var instructions: [[String: Any]] = []
        if parts.contains("gates") {
            if let d = daemon("ringtgt-1c") {
                gates["loadgenAllocations"] = loadgenAllocationCheck(bins: bins, logDir: logDir, daemon: d)
            }
            for d in daemons { d.stop() }
            log("allocation gate")
            let a = allocationGate(bins: bins, logDir: logDir, fileLUN: fileLUN)
            gates["allocations"] = a.records
            if let e = a.error { gates["allocationError"] = e; log("  ! \(e)") }
            allocPass = a.pass
            log("instruction gate (callgrind)")
            instructions = instructionGate(bins: bins, logDir: logDir, fileLUN: fileLUN)
            gates["instructions"] = instructions
        }
        report["gates"] = gates
        var crashes: [String] = []
        for d in daemons { crashes += d.crashes }
        report["crashes"] = crashes

        let rs = ratios(runs, scenarios: scenarios, ceilings: ceilings)
        report["ratios"] = rs.map { $0.json }
        let gs = goals(runs: runs, ratios: rs, loopback: loopback, allocPass: allocPass, idle: idle, fio: fioRuns, sheep: sheepInfo)
        report["goals"] = gs.map { $0.json }
        let tol = tolerance ?? Tolerance.iopsGeomean
        let itol = instructionTolerance ?? Tolerance.instructions
        let base = baselineSection(ratios: rs, instructions: instructions, thirdParty: report["thirdParty"] as? [String: Any],
                                   tolerance: tol, instructionTolerance: itol)
        report["baseline"] = base
        try writeJSON(report, to: outDir.appendingPathComponent("report.json"))

        var plots: [String] = []
        if !noPlots && parts.contains("scenarios") {
            plots = makePlots(outDir: outDir, logDir: logDir)
        }
        let md = markdown(report, runs: runs, ratios: rs, goals: gs, plots: plots)
        try md.write(to: outDir.appendingPathComponent("report.md"), atomically: true, encoding: .utf8)
        if let wb = writeBaseline {
            try writeJSON(base, to: URL(fileURLWithPath: wb))
            log("baseline written to \(wb)")
        }
        log("\nreport: \(outDir.path)/report.md")
        printSummary(gs)

        var code: Int32 = 0
        if let c = compare {
            guard let data = FileManager.default.contents(atPath: c),
                  let stored = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                throw RunnerError("cannot read baseline \(c)")
            }
            let (lines, regressed) = compareWithBaseline(current: base, stored: stored, tolerance: tolerance, cpuTolerance: cpuTolerance,
                                                      instructionTolerance: instructionTolerance)
            print("\ncomparison with \(c):")
            for l in lines { print("  " + l) }
            if allocPass == false { print("  REGRESSION allocation gate failed"); code = 1 }
            if regressed { code = 1 }
            print(code == 0 ? "no regression" : "REGRESSION")
        }
        return code
    }

    // MARK: - Smoke

    func runSmoke(bins: Binaries, outDir: URL, logDir: URL, fileLUN: String) throws -> Int32 {
        let haveTgt = FileManager.default.isExecutableFile(atPath: bins.tgtd)
        let specs = [DaemonSpec(peer: .ringtgt, cores: 1)] + (haveTgt ? [DaemonSpec(peer: .tgt, cores: 1)] : [])
        var failures: [String] = []
        // The sheep test server (never real sheep here): a VDI per daemon and one for the ceiling.
        var sheepTS: SheepBackend?
        defer { sheepTS?.stop() }
        do {
            let b = try SheepBackend.startTestServer(bins: bins, dir: outDir, fallbackDir: URL(fileURLWithPath: fileLUN).deletingLastPathComponent(),
                                                     logDir: logDir)
            sheepTS = b
            for vdi in specs.map({ "perf-\($0.name)" }) + [SheepLimits.ceilingVDI] { try b.prepare(vdi: vdi) }
        } catch {
            failures.append("sheep test server: \(error)")
        }
        var daemons: [Daemon] = []
        defer { for d in daemons { d.stop() } }
        for s in specs {
            let d = Daemon(spec: s, bins: bins, logDir: logDir, fileLUN: fileLUN)
            if let b = sheepTS { d.sheepLUNs[.sheepTS] = SheepLUN(backend: b, vdi: "perf-\(s.name)") }
            try d.start()
            daemons.append(d)
        }
        if !haveTgt { log("smoke: tgtd not installed: tgt cases skipped") }
        struct Case { var scenario: Scenario; var options: LoadOptions; var ringtgtOnly = false }
        func w(_ id: String, _ rw: String, _ bs: String, _ qd: Int, sessions: Int = 1) -> Workload {
            Workload(id: id, title: id, rw: rw, bs: bs, qd: qd, sessions: sessions)
        }
        let cases: [Case] = [
            Case(scenario: Scenario(lun: .null, workload: w("randread-4k-qd32", "randread", "4k", 32)), options: LoadOptions(ios: 5000)),
            Case(scenario: Scenario(lun: .null, workload: w("randwrite-4k-qd32", "randwrite", "4k", 32)), options: LoadOptions(ios: 5000)),
            Case(scenario: Scenario(lun: .null, workload: w("randread-4k-s4-qd8", "randread", "4k", 8, sessions: 4)), options: LoadOptions(ios: 8000)),
            Case(scenario: Scenario(lun: .file, workload: w("randrw-4k-qd32-verify", "randrw", "4k", 32)), options: LoadOptions(ios: 5000, verify: true)),
            Case(scenario: Scenario(lun: .file, workload: w("rw-128k-qd8-verify", "rw", "128k", 8)), options: LoadOptions(ios: 600, verify: true)),
            // tgt answers None to digests unless configured for them, so digests are exercised on ringtgt only.
            Case(scenario: Scenario(lun: .file, workload: w("randrw-4k-qd16-digests-verify", "randrw", "4k", 16)),
                 options: LoadOptions(ios: 3000, verify: true, headerDigest: true, dataDigest: true), ringtgtOnly: true),
        ] + (sheepTS == nil ? [] : [
            // Sheepdog LUN on the test server: reads and writes on both targets, verified writes on ringtgt.
            Case(scenario: Scenario(lun: .sheepTS, workload: w("randread-4k-qd32", "randread", "4k", 32)), options: LoadOptions(ios: 4000)),
            Case(scenario: Scenario(lun: .sheepTS, workload: w("randwrite-4k-qd32", "randwrite", "4k", 32)), options: LoadOptions(ios: 3000)),
            Case(scenario: Scenario(lun: .sheepTS, workload: w("randrw-4k-qd32-verify", "randrw", "4k", 32)),
                 options: LoadOptions(ios: 4000, verify: true), ringtgtOnly: true),
        ])
        var warnings: [String] = []
        var runs: [RunRecord] = []
        for c in cases {
            for d in daemons where !(c.ringtgtOnly && d.peer == .tgt) {
                let r = runLoad(d, c.scenario, c.options, bins: bins, logDir: logDir)
                log("  " + describe(r))
                runs.append(r)
                if !r.ok { failures.append("\(d.name) \(c.scenario.id): \(r.note)") }
                for m in (r.result?["messages"] as? [String]) ?? [] where m.hasPrefix("target bug") {
                    warnings.append("\(d.name) \(c.scenario.id): \(m)")
                }
            }
        }
        // The raw ceiling tool, in count mode (deterministic): READ_OBJ and WRITE_OBJ at QD32.
        var ceilingRuns: [[String: Any]] = []
        if let b = sheepTS {
            for rw in ["randread", "randwrite"] {
                let c = b.ceiling(rw: rw, qd: 32, seconds: 0, warmup: 0, ios: 20000)
                ceilingRuns.append(c)
                let ops = (c["ops"] as? NSNumber)?.intValue ?? 0
                let errs = (c["errors"] as? NSNumber)?.intValue ?? -1
                if c["error"] != nil || ops != 20000 || errs != 0 {
                    failures.append("sheep ceiling \(rw): \(c["error"] ?? "ops \(ops), errors \(errs)")")
                    log("  ceiling sheep-ts \(rw) QD32: FAILED (\(c["error"] ?? "ops \(ops), errors \(errs)"))")
                } else {
                    log("  ceiling sheep-ts \(rw) QD32: \(ops) ops, \(Int((c["opsPerSecond"] as? NSNumber)?.doubleValue ?? 0)) ops/s")
                }
            }
        }
        for d in daemons { d.stop() }
        sheepTS?.stop()
        log("allocation gate")
        let a = allocationGate(bins: bins, logDir: logDir, fileLUN: fileLUN)
        if let e = a.error { failures.append("allocation gate: \(e)") }
        if !a.pass { failures.append("allocation gate failed: ringtgtd allocates on the I/O path (see \(logDir.path))") }
        // One callgrind pair is quick (seconds); it is reported, not gated, in the smoke.
        log("instruction count (reported only)")
        let ins = instructionGate(bins: bins, logDir: logDir, fileLUN: fileLUN, scale: 0.5)
        let report: [String: Any] = ["smoke": true, "runs": runs.map { $0.json }, "allocations": a.records, "sheepCeiling": ceilingRuns,
                                     "instructions": ins, "failures": failures, "warnings": warnings]
        try writeJSON(report, to: outDir.appendingPathComponent("smoke.json"))
        for wmsg in Set(warnings) { print("WARNING: \(wmsg)") }
        let passed = runs.filter { $0.ok }.count + a.records.filter { ($0["pass"] as? Bool) == true }.count
            + ceilingRuns.filter { $0["error"] == nil && ($0["errors"] as? NSNumber)?.intValue == 0 }.count
        let failed = failures.count
        for f in failures { print("FAIL: \(f)") }
        print("perf smoke: \(passed) passed, \(failed) failed")
        return failures.isEmpty ? 0 : 1
    }

    // MARK: - Helpers

    func hostInfo() -> [String: Any] {
        var h: [String: Any] = ["cpus": ProcessInfo.processInfo.activeProcessorCount]
        var u = utsname()
        uname(&u)
        h["kernel"] = withUnsafeBytes(of: &u.release) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        let tmp = FileManager.default.temporaryDirectory
        if let r = try? runTool("/usr/bin/git", ["rev-parse", "--short", "HEAD"], logDir: tmp, label: "ringtgt-perf-git", timeoutSeconds: 10), r.succeeded {
            h["ringtgtCommit"] = r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        if let r = try? runTool("/usr/bin/dpkg-query", ["-W", "-f=${Version}", "tgt"], logDir: tmp, label: "ringtgt-perf-dpkg", timeoutSeconds: 10), r.succeeded {
            h["tgtVersion"] = r.stdout
        }
        return h
    }

    func makePlots(outDir: URL, logDir: URL) -> [String] {
        let script = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path + "/plot.py"
        let candidates = [ProcessInfo.processInfo.environment["RINGTGT_PERF_PLOT"], "perf/plot.py", script].compactMap { $0 }
        guard let plot = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) else {
            log("plots skipped: perf/plot.py not found")
            return []
        }
        guard let r = try? runTool("/usr/bin/python3", [plot, outDir.appendingPathComponent("report.json").path, outDir.path],
                                   logDir: logDir, label: "plot", timeoutSeconds: 120), r.succeeded else {
            log("plots failed: see \(logDir.path)/plot.err (python3-matplotlib installed?)")
            return []
        }
        return r.stdout.split(separator: "\n").map { String($0) }.filter { $0.hasSuffix(".png") }
    }

    func printSummary(_ gs: [Goal]) {
        print("\nGoals (issue 4):")
        for g in gs { print("  [\(g.pass.map { $0 ? "met" : "NOT MET" } ?? "  -  ")] \(g.goal): \(g.measured)") }
    }
}

PerfRunner.main()
