// ringtgt-loadgen: an iSCSI initiator built for load. Sessions log in on plain sockets, then worker threads
// (one io_uring each) keep a closed loop of READ(16)/WRITE(16) commands going and report IOPS, MB/s,
// latency percentiles from an HdrHistogram, errors, and optionally the target's CPU time per I/O.
import ArgumentParser
import Glibc
import Histogram
import Target
import TestSupport

struct LoadGen: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ringtgt-loadgen",
        abstract: "iSCSI load generator on io_uring (one ring per thread, no allocation per I/O).")

    @Argument(help: "Target URL: iscsi://HOST[:PORT]/IQN/LUN")
    var url: String

    @Option(help: "randread, randwrite, randrw, read, write or rw (sequential).")
    var rw: String = "randread"

    @Option(help: "Percentage of reads for randrw/rw.")
    var rwmixread: Int = 50

    @Option(name: .customLong("bs"), help: "I/O size: bytes, or with k/m suffix (4k, 128k).")
    var blockSize: String = "4k"

    @Option(name: .customLong("qd"), help: "Commands in flight per session.")
    var queueDepth: Int = 32

    @Option(help: "Sessions (one TCP connection each).")
    var sessions: Int = 1

    @Option(help: "Worker threads, one io_uring each; sessions are spread over them.")
    var threads: Int = 1

    @Option(help: "Measured seconds (timed mode).")
    var duration: Double = 10

    @Option(help: "Seconds of load before measuring starts (timed mode).")
    var warmup: Double = 0

    @Option(help: "Total I/Os over all sessions (count mode; replaces --duration).")
    var ios: Int?

    @Option(help: "Count mode: give up after this many seconds.")
    var timeout: Double = 300

    @Option(help: "Bytes of the LUN to use from LBA 0 (k/m/g suffix); default the whole LUN.")
    var region: String?

    @Flag(help: "Write a pattern derived from LBA and generation; check it on every read (sessions own disjoint units).")
    var verify = false

    @Flag(name: .customLong("header-digest"), help: "Require HeaderDigest=CRC32C.")
    var headerDigest = false

    @Flag(name: .customLong("data-digest"), help: "Require DataDigest=CRC32C.")
    var dataDigest = false

    @Flag(help: "Print one JSON object instead of text.")
    var json = false

    @Option(name: .customLong("target-pid"), help: "Sample this process's CPU time (utime+stime, all threads) and peak RSS over the measured interval.")
    var targetPid: Int32?

    @Option(name: .customLong("backend-pid"), help: "Also sample these processes' CPU time over the measured interval (a LUN's backing service, e.g. sheep; repeatable).")
    var backendPids: [Int32] = []

    @Option(name: .customLong("idle-sessions"), help: "Extra sessions that log in and stay idle (they answer NOP-In pings).")
    var idleSessions: Int = 0

    @Option(name: .customLong("initiator-name"), help: "InitiatorName to log in with.")
    var initiatorName: String = "iqn.2026-01.org.ringtgt:loadgen"

    @Flag(help: "Busy-poll the ring instead of sleeping in the kernel (lower latency; each worker spins on a core).")
    var poll = false

    @Option(help: "Seed of the LBA and read/write choices.")
    var seed: UInt64 = 0x5eed

    mutating func validate() throws {
        guard TargetURL.parse(url) != nil else { throw ValidationError("bad URL '\(url)': want iscsi://HOST[:PORT]/IQN/LUN") }
        guard parseSize(blockSize) != nil else { throw ValidationError("bad --bs '\(blockSize)'") }
        guard ["randread", "randwrite", "randrw", "read", "write", "rw"].contains(rw) else { throw ValidationError("bad --rw '\(rw)'") }
        guard (0...100).contains(rwmixread) else { throw ValidationError("--rwmixread must be 0...100") }
        guard queueDepth >= 1 && queueDepth <= 4096 else { throw ValidationError("--qd must be 1...4096") }
        guard sessions >= 1 && sessions <= 4096 else { throw ValidationError("--sessions must be 1...4096") }
        guard threads >= 1 && threads <= 64 else { throw ValidationError("--threads must be 1...64") }
        guard idleSessions >= 0 && idleSessions <= 65536 else { throw ValidationError("--idle-sessions must be 0...65536") }
        guard duration > 0, warmup >= 0, timeout > 0 else { throw ValidationError("durations must be positive") }
        if let n = ios, n < 1 { throw ValidationError("--ios must be at least 1") }
        if let r = region, parseSize(r) == nil { throw ValidationError("bad --region '\(r)'") }
    }

    func run() throws {
        let target = TargetURL.parse(url)!
        let ioBytes = parseSize(blockSize)!
        raiseFileLimit()

        var cfg = RunConfig()
        cfg.ioBytes = ioBytes
        cfg.random = rw.hasPrefix("rand")
        switch rw {
        case "randread", "read": cfg.readPercent = 100
        case "randwrite", "write": cfg.readPercent = 0
        default: cfg.readPercent = rwmixread
        }
        cfg.verify = verify
        cfg.poll = poll
        cfg.totalSessions = sessions
        cfg.seed = seed

        // Log every session in (RawClients' raw session); READ CAPACITY on each, then hand its socket over.
        var opened: [(fd: Int32, neg: Negotiated)] = []
        let total = sessions + idleSessions
        var capacity: (blockBytes: Int, blocks: UInt64) = (512, 0)
        do {
            let endpoint = try target.endpoint()
            for i in 0..<total {
                let isid = UInt64(0x80) << 40 | UInt64(UInt32(getpid()) & 0xFFFF) << 16 | UInt64(i & 0xFFFF)
                var setup = try SetupSession(url: target, endpoint: endpoint, initiatorName: initiatorName,
                                             headerDigest: headerDigest, dataDigest: dataDigest, isid: isid)
                // Every session reads the capacity: it also takes the unit attention (power on, reset) a new
                // I_T nexus gets on its first command, so that the measured I/Os never see it.
                let c = try setup.readCapacity(lun: target.lun)
                if i == 0 { capacity = c }
                opened.append((try setup.session.socket.detach(), setup.neg))
            }
        } catch {
            for s in opened { close(s.fd) }
            printError("ringtgt-loadgen: \(error)")
            throw ExitCode(2)
        }
        defer { for s in opened { close(s.fd) } }
        cfg.lunBlockBytes = capacity.blockBytes
        var warnings: [String] = []
        if opened.contains(where: { $0.neg.loginResponseHadDigests }) {
            warnings.append("target bug: the final Login Response carried digests (RFC 7143 §13.1: digests start in full feature phase; libiscsi and Linux read that PDU without them)")
        }
        guard ioBytes % capacity.blockBytes == 0, ioBytes % 8 == 0 else {
            printError("ringtgt-loadgen: --bs \(ioBytes) is not a multiple of the LUN's \(capacity.blockBytes)-byte blocks")
            throw ExitCode(2)
        }
        var regionBytes = capacity.blocks.multipliedReportingOverflow(by: UInt64(capacity.blockBytes)).overflow
            ? UInt64.max : capacity.blocks &* UInt64(capacity.blockBytes)
        if let r = region { regionBytes = min(regionBytes, UInt64(parseSize(r)!)) }
        cfg.regionUnits = Int(min(regionBytes / UInt64(ioBytes), UInt64(Int32.max)))
        guard cfg.regionUnits >= 1 else {
            printError("ringtgt-loadgen: the LUN (\(regionBytes) bytes) is smaller than one I/O")
            throw ExitCode(2)
        }
        let verifyUnits = verify ? cfg.regionUnits / sessions : 0
        if verify && verifyUnits < queueDepth {
            printError("ringtgt-loadgen: --verify needs at least --qd units of --bs per session (have \(verifyUnits))")
            throw ExitCode(2)
        }

        // Storage, per worker, allocated once.
        let threadCount = min(threads, total)
        var perThread: [[Int]] = Array(repeating: [], count: threadCount)
        for i in 0..<sessions { perThread[i % threadCount].append(i) }
        for i in sessions..<total { perThread[(i - sessions) % threadCount].append(i) }
        var boxes: [WorkerBox] = []
        for t in 0..<threadCount {
            let ids = perThread[t]
            let states = UnsafeMutablePointer<SessionState>.allocate(capacity: max(1, ids.count))
            for (k, id) in ids.enumerated() {
                let (fd, neg) = opened[id]
                let s = states + k
                s.initialize(to: SessionState())
                s.pointee.fd = fd
                s.pointee.globalIndex = id
                s.pointee.headerDigest = neg.headerDigest
                s.pointee.dataDigest = neg.dataDigest
                s.pointee.maxSendSegmentBytes = neg.targetMaxRecvDataSegmentBytes
                s.pointee.firstBurstBytes = neg.firstBurstBytes
                s.pointee.initialR2T = neg.initialR2T
                s.pointee.immediateData = neg.immediateData
                s.pointee.lunField = encodeLUN(target.lun)
                s.pointee.cmdSN = neg.cmdSN
                s.pointee.expStatSN = neg.expStatSN
                s.pointee.maxCmdSN = neg.maxCmdSN
                let active = id < sessions
                if let n = ios, active {
                    s.pointee.quota = n / sessions + (id < n % sessions ? 1 : 0)
                }
                allocateSession(s, queueDepth: active ? queueDepth : 0, ioBytes: ioBytes,
                                maxBurstBytes: neg.maxBurstBytes, verifyUnits: active ? verifyUnits : 0)
            }
            boxes.append(WorkerBox(sessions: states, count: ids.count, index: t))
        }

        // Clocks: warm up, then measure; count mode measures from the start to the last completion.
        let startup: UInt64 = 2_000_000   // 2 ms for the threads to come up
        let t0 = monotonicNanos() &+ startup
        if let n = ios {
            _ = n
            cfg.countMode = true
            cfg.measureStartNanos = 0
            cfg.measureEndNanos = .max
            cfg.hardDeadlineNanos = t0 &+ UInt64(timeout * 1e9)
        } else {
            cfg.measureStartNanos = t0 &+ UInt64(warmup * 1e9)
            cfg.measureEndNanos = cfg.measureStartNanos &+ UInt64(duration * 1e9)
        }
        for b in boxes { b.config = cfg }

        let before = targetPid.map { ProcessStats.sample($0) } ?? nil
        var startSample = before
        func backendCPU() -> Double { backendPids.reduce(0) { $0 + (ProcessStats.cpuSeconds($1) ?? 0) } }
        var backendStart = backendCPU()
        var selfStart = selfCPUSeconds()
        var hostStart = ProcessStats.hostCPUSeconds()
        for b in boxes { b.start() }
        if !cfg.countMode {
            sleepUntil(cfg.measureStartNanos)
            if let pid = targetPid { startSample = ProcessStats.sample(pid) }
            backendStart = backendCPU()
            selfStart = selfCPUSeconds()
            hostStart = ProcessStats.hostCPUSeconds()
            sleepUntil(cfg.measureEndNanos)
        }
        var endSample = targetPid.flatMap { cfg.countMode ? nil : ProcessStats.sample($0) }
        var backendEnd = backendCPU()
        var selfEnd = selfCPUSeconds()
        var hostEnd = ProcessStats.hostCPUSeconds()
        for b in boxes { b.join() }
        if cfg.countMode {
            if let pid = targetPid { endSample = ProcessStats.sample(pid) }
            backendEnd = backendCPU()
            selfEnd = selfCPUSeconds()
            hostEnd = ProcessStats.hostCPUSeconds()
        }

        // Aggregate.
        var stats = WorkerStats()
        stats.messages = warnings
        var hist = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: WorkerLimits.histogramMaxNanos,
                                     numberOfSignificantValueDigits: .three)
        var last: UInt64 = 0
        for b in boxes {
            if let e = b.setupError { stats.errors += 1; stats.messages.append(e) }
            stats.reads += b.stats.reads
            stats.writes += b.stats.writes
            stats.readBytes += b.stats.readBytes
            stats.writeBytes += b.stats.writeBytes
            stats.errors += b.stats.errors
            stats.verifyFailures += b.stats.verifyFailures
            stats.verifiedReads += b.stats.verifiedReads
            stats.unverifiedReads += b.stats.unverifiedReads
            stats.nopPingsAnswered += b.stats.nopPingsAnswered
            stats.messages += b.stats.messages
            if let h = b.histogram { hist.add(h) }
            last = max(last, b.lastCompletion)
        }
        let seconds: Double
        if cfg.countMode {
            seconds = Double(max(last, t0 &+ 1) &- t0) / 1e9
        } else {
            seconds = Double(cfg.measureEndNanos &- cfg.measureStartNanos) / 1e9
        }
        let result = RunResult(url: target.description, rw: rw, readPercent: cfg.readPercent, ioBytes: ioBytes,
                               queueDepth: queueDepth, sessions: sessions, idleSessions: idleSessions,
                               threads: threadCount, seconds: seconds, stats: stats, histogram: hist,
                               headerDigest: headerDigest, dataDigest: dataDigest, verify: verify,
                               targetPid: targetPid, targetStart: startSample, targetEnd: endSample,
                               backendPids: backendPids, backendCPUSeconds: backendEnd - backendStart,
                               loadgenCPUSeconds: selfEnd - selfStart, hostStart: hostStart, hostEnd: hostEnd,
                               regionBytes: UInt64(cfg.regionUnits) * UInt64(ioBytes),
                               lunBlockBytes: capacity.blockBytes, countMode: cfg.countMode)
        print(json ? result.json() : result.text())
        if stats.errors > 0 || stats.verifyFailures > 0 { throw ExitCode(1) }
    }
}

/// "4k", "128K", "1m", "1g", or bytes.
func parseSize(_ s: String) -> Int? {
    let t = s.lowercased()
    var mult = 1
    var digits = Substring(t)
    if let last = t.last, !last.isNumber {
        switch last {
        case "k": mult = 1 << 10
        case "m": mult = 1 << 20
        case "g": mult = 1 << 30
        case "t": mult = 1 << 40
        default: return nil
        }
        digits = t.dropLast()
    }
    guard let n = Int(digits), n > 0 else { return nil }
    let (v, o) = n.multipliedReportingOverflow(by: mult)
    return o ? nil : v
}

func printError(_ s: String) {
    var line = s + "\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

func sleepUntil(_ nanos: UInt64) {
    var ts = timespec(tv_sec: Int(nanos / 1_000_000_000), tv_nsec: Int(nanos % 1_000_000_000))
    while clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nil) == EINTR {}
}

func selfCPUSeconds() -> Double {
    var ru = rusage()
    getrusage(RUSAGE_SELF.rawValue, &ru)
    return Double(ru.ru_utime.tv_sec) + Double(ru.ru_utime.tv_usec) / 1e6
        + Double(ru.ru_stime.tv_sec) + Double(ru.ru_stime.tv_usec) / 1e6
}

/// One worker thread and what it hands back.
final class WorkerBox {
    let sessions: UnsafeMutablePointer<SessionState>
    let count: Int
    let index: Int
    var config = RunConfig()
    var stats = WorkerStats()
    var histogram: Histogram<UInt64>?
    var lastCompletion: UInt64 = 0
    var setupError: String?
    var thread = pthread_t()

    init(sessions: UnsafeMutablePointer<SessionState>, count: Int, index: Int) {
        self.sessions = sessions
        self.count = count
        self.index = index
    }

    func start() {
        let ctx = Unmanaged.passRetained(self).toOpaque()
        let rc = pthread_create(&thread, nil, { arg in
            let box = Unmanaged<WorkerBox>.fromOpaque(arg!).takeRetainedValue()
            box.body()
            return nil
        }, ctx)
        if rc != 0 {
            Unmanaged<WorkerBox>.fromOpaque(ctx).release()
            setupError = "pthread_create failed: \(rc)"
        }
    }

    func join() {
        if setupError == nil { pthread_join(thread, nil) }
    }

    /// The ring is created here, on the thread that submits to it (SINGLE_ISSUER).
    func body() {
        do {
            var w = try Worker(sessions: sessions, count: count, config: config, threadIndex: index)
            w.run()
            stats = w.stats
            histogram = w.histogram.pointee
            lastCompletion = w.lastCompletionNanos
        } catch {
            setupError = "worker \(index): \(error)"
        }
    }
}

LoadGen.main()
