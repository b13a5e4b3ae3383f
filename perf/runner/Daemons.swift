// The targets under test: ringtgtd at N cores, and Debian's tgtd pinned to one CPU or free on all. Each
// daemon serves the same LUNs (1: null, 2: a file on tmpfs) under the same IQN, is restarted if it dies
// (the crash is recorded with the tail of its log), and is always stopped at the end.
import Foundation
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Paths of everything the runner starts.
struct Binaries {
    var ringtgtd: String
    /// What valgrind runs for the instruction gate: ringtgtd without its debug sections (see perf/run).
    var ringtgtdUnderValgrind: String
    var ringtgtadm: String
    var loadgen: String
    var echo: String
    var mallocCount: String
    var uringWait: String
    var sheepTestServer = ""
    var tgtd = "/usr/sbin/tgtd"
    var tgtadm = "/usr/sbin/tgtadm"
    var iscsiPerf = "/usr/bin/iscsi-perf"
    var fio = "/usr/bin/fio"
    var taskset = "/usr/bin/taskset"
    var valgrind = "/usr/bin/valgrind"
}

/// How a daemon is started: which peer, how many cores, and extra process wrapping for the gates.
struct DaemonSpec {
    var peer: Peer
    var cores: Int
    /// LD_PRELOAD and environment (allocation gate), or a valgrind prefix (instruction gate).
    var environment: [String: String]? = nil
    var valgrindArgs: [String]? = nil
    /// More ringtgtd options (`--ringtgt-args`, e.g. "--coalesce-us 200").
    var extraArgs: [String] = ProcessInfo.processInfo.environment["PERF_RINGTGTD_ARGS"].map {
        $0.split(separator: " ").map(String.init)
    } ?? []
    var name: String { "\(peer.rawValue)-\(cores)c" }
}

enum LUNKind: String, CaseIterable {
    case null
    case file
    /// A VDI on the sheep test server (ringtgt-sheep-testserver), over its unix socket.
    case sheepTS = "sheep-ts"
    /// A VDI on a real 3-node sheep cluster (only when `sheep` is on PATH), over node 0's unix socket.
    case sheep
    var lun: Int {
        switch self {
        case .null: return 1
        case .file: return 2
        case .sheepTS: return 3
        case .sheep: return 4
        }
    }
    var isSheep: Bool { self == .sheepTS || self == .sheep }
    /// The region the load generator touches (`--region`).
    var region: String { isSheep ? SheepLimits.region : "1g" }
    var title: String {
        switch self {
        case .null: return "null LUN"
        case .file: return "file LUN on tmpfs (/dev/shm)"
        case .sheepTS: return "sheepdog LUN on the sheep test server"
        case .sheep: return "sheepdog LUN on real sheep (3 nodes, 2 copies)"
        }
    }
}

/// The target every daemon serves (the daemon's own bounds are TestSupport's `DaemonLimits`).
enum PerfTarget {
    static let iqn = "iqn.2026-01.org.ringtgt.perf:t1"
    /// Bytes of both LUNs the load touches, and the size of the tmpfs file.
    static let lunBytes: Int64 = 1 << 30
    /// How long valgrind's profile dump may take after SIGTERM.
    static let valgrindStopGraceSeconds = 60.0
}

/// One daemon of the suite on TestSupport's daemon fixture, restarted when it dies.
final class Daemon {
    let spec: DaemonSpec
    let bins: Binaries
    let logDir: URL
    let fileLUN: String
    private(set) var target: TargetDaemon?
    private var starts = 0
    /// Crashes seen, each with the tail of the daemon's log.
    private(set) var crashes: [String] = []
    /// Sheepdog LUNs (3: test server, 4: real sheep), each on this daemon's own VDI.
    var sheepLUNs: [LUNKind: SheepLUN] = [:]

    init(spec: DaemonSpec, bins: Binaries, logDir: URL, fileLUN: String) {
        self.spec = spec
        self.bins = bins
        self.logDir = logDir
        self.fileLUN = fileLUN
    }

    var name: String { spec.name }
    var pid: Int32 { target?.process.pid ?? 0 }
    var isAlive: Bool { target?.isAlive ?? false }
    var peer: Peer { spec.peer }
    var port: Int { target?.endpoints.first?.port ?? 0 }
    private var daemonLog: String { target?.process.stderrText ?? "" }

    func url(_ lun: LUNKind) -> String { "iscsi://127.0.0.1:\(port)/\(PerfTarget.iqn)/\(lun.lun)" }

    func start() throws {
        starts += 1
        var launcher: DaemonLauncher
        switch spec.peer {
        case .ringtgt:
            launcher = DaemonLauncher(daemon: URL(fileURLWithPath: bins.ringtgtd), admin: URL(fileURLWithPath: bins.ringtgtadm),
                                      environment: spec.environment ?? [:])
            if let v = spec.valgrindArgs {
                launcher.daemon = URL(fileURLWithPath: bins.ringtgtdUnderValgrind)
                launcher.daemonWrapper = [bins.valgrind] + v
            }
        case .tgt:
            launcher = DaemonLauncher(daemon: URL(fileURLWithPath: bins.tgtd), admin: URL(fileURLWithPath: bins.tgtadm))
            // One target core: tgtd's event loop and its I/O threads all on CPU 0, like ringtgtd's core 0.
            if spec.cores == 1 { launcher.daemonWrapper = [bins.taskset, "-c", "0"] }
        }
        do {
            target = try TargetDaemon(peer: spec.peer, cores: spec.cores, extraArgs: spec.peer == .ringtgt ? spec.extraArgs : [],
                                      launcher: launcher, logDir: logDir, label: "\(name)-daemon-\(starts)",
                                      uniqueLogNames: false, started: { Children.shared.add($0) })
        } catch {
            throw RunnerError("\(name) did not start: \(error)")
        }
        try configure()
    }

    /// ringtgt only: the NBD listener's port (`--lld nbd --op show --mode portal`), when it has one.
    func nbdPort() -> Int? {
        guard spec.peer == .ringtgt, let portals = try? target?.admin.portals(lld: "nbd") else { return nil }
        return portals.first(where: { $0.port > 0 })?.port
    }

    /// ringtgt only: the cores' busy-poll window (`--op update --mode sys --name poll_us`); true when set.
    @discardableResult
    func setPoll(microseconds: Int) -> Bool {
        guard spec.peer == .ringtgt, let r = try? target?.admin.run(["--lld", "iscsi", "--op", "update", "--mode", "sys",
                                                                      "--name", "poll_us", "--value", "\(microseconds)"])
        else { return false }
        return r.succeeded
    }

    private func configure() throws {
        guard let admin = target?.admin else { throw RunnerError("\(name) is not running") }
        do {
            try admin.newTarget(tid: 1, name: PerfTarget.iqn)
            // tgt's null LUN is always 1 TiB; the load touches the first PerfTarget.lunBytes of either.
            try admin.newNullLUN(tid: 1, lun: LUNKind.null.lun, bytes: PerfTarget.lunBytes, peer: spec.peer)
            try admin.newFileLUN(tid: 1, lun: LUNKind.file.lun, path: URL(fileURLWithPath: fileLUN))
            for kind in [LUNKind.sheepTS, .sheep] {
                guard let s = sheepLUNs[kind] else { continue }
                // A daemon that died (or was killed) still holds its VDI's lock.
                if starts > 1 { s.backend.unlock(vdi: s.vdi) }
                try admin.must(["--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "\(kind.lun)",
                                "--bstype", "sheepdog", "--backing-store", s.backend.spec(s.vdi)])
            }
            try admin.bind(tid: 1)
        } catch {
            throw RunnerError("\(name): \(error)")
        }
    }

    /// How the daemon ended, once it has: killed from outside (SIGKILL, which the suite only sends while
    /// stopping a daemon) or a crash of its own.
    enum Death { case killed, crashed }
    var death: Death? {
        guard let r = exitResult() else { return nil }
        return r.killedBySignal && r.exitStatus == SIGKILL ? .killed : .crashed
    }

    /// How the daemon process ended, or nil while it runs (or was never started).
    private func exitResult() -> ToolResult? {
        guard let t = target, !t.isAlive, t.process.waitForExit(seconds: 1) else { return nil }
        Children.shared.remove(t.process)
        return t.process.result(timedOut: false)
    }

    /// Restarts a daemon that died; returns a description of what happened, or nil if it was alive.
    func ensureRunning() throws -> String? {
        if isAlive { return nil }
        let what: String
        if let r = exitResult() {
            if r.killedBySignal && r.exitStatus == SIGKILL {
                what = "\(name) was killed with SIGKILL by something outside the suite (not a crash)"
            } else {
                let status = r.killedBySignal ? "signal \(r.exitStatus)" : "exit \(r.exitStatus)"
                what = "\(name) died (\(status)): \(symbolize(logExcerpt(daemonLog, lines: 12), binary: bins.ringtgtd))"
            }
        } else {
            what = "\(name) died (not started): \(logExcerpt(daemonLog, lines: 12))"
        }
        crashes.append(what)
        log("  ! \(what)")
        target?.stop(recordProblems: false)
        try start()
        return what
    }

    func stop() {
        guard let t = target else { return }
        // valgrind writes its profile on the way out.
        t.stop(recordProblems: false, graceSeconds: spec.valgrindArgs != nil ? PerfTarget.valgrindStopGraceSeconds
                                                                             : DaemonLimits.stopGraceSeconds)
        Children.shared.remove(t.process)
        target = nil
    }

    /// Sends a signal to the daemon process (the allocation counter dumps on SIGUSR2).
    func signal(_ sig: Int32) { target?.process.signal(sig) }
}

/// The last lines of a log, where a crash report or an error is.
func logExcerpt(_ s: String, lines: Int = 6) -> String {
    let all = s.split(separator: "\n", omittingEmptySubsequences: true)
    // A Swift crash report: keep the fatal message and the first frames, not the register dump.
    if let i = all.firstIndex(where: { $0.contains("Fatal") || $0.contains("Simultaneous accesses") || $0.contains("Crash") }) {
        return all[i..<min(all.count, i + lines)].joined(separator: " | ")
    }
    return all.suffix(lines).joined(separator: " | ")
}

/// The tmpfs file behind LUN 2: preallocated, so reads hit real pages rather than holes.
func makeFileLUN(dir: URL) throws -> String {
    let path = dir.appendingPathComponent("lun.img").path
    let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o644)
    guard fd >= 0 else { throw RunnerError("cannot create \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    let rc = posix_fallocate(fd, 0, off_t(PerfTarget.lunBytes))
    if rc != 0 { throw RunnerError("posix_fallocate(\(path)): \(String(cString: strerror(rc)))") }
    return path
}

/// Swift crash reports of a release build name frames as "ringtgtd <unavailable> + OFFSET"; addr2line and
/// swift-demangle turn the offsets into function names, so the report says where the crash is.
func symbolize(_ text: String, binary: String) -> String {
    var offsets: [String] = []
    for part in text.components(separatedBy: " | ") {
        let f = part.split(separator: " ", omittingEmptySubsequences: true)
        if let i = f.firstIndex(of: "<unavailable>"), i > 0, f[i - 2].hasSuffix("ringtgtd") || f.contains("ringtgtd"),
           i + 2 < f.count, f[i + 1] == "+", let off = Int(f[i + 2]) {
            offsets.append("0x" + String(off, radix: 16))
        }
    }
    guard !offsets.isEmpty, FileManager.default.isExecutableFile(atPath: "/usr/bin/addr2line") else { return text }
    let tmp = FileManager.default.temporaryDirectory
    guard let r = try? runTool("/usr/bin/addr2line", ["-f", "-e", binary] + offsets, logDir: tmp, label: "ringtgt-perf-addr2line",
                               timeoutSeconds: 30), r.succeeded else { return text }
    // addr2line prints two lines per address: the (mangled) function, then file:line.
    let lines = r.stdout.split(separator: "\n").map(String.init)
    var names: [String] = []
    for i in stride(from: 0, to: lines.count - 1, by: 2) { names.append(lines[i]) }
    var demangled = names
    if let d = try? runTool("/bin/sh", ["-c", "swift-demangle --simplified --compact " + names.map { "'\($0)'" }.joined(separator: " ")],
                            logDir: tmp, label: "ringtgt-perf-demangle", timeoutSeconds: 30), d.succeeded {
        let out = d.stdout.split(separator: "\n").map(String.init)
        if out.count == names.count { demangled = out }
    }
    let fatal = text.components(separatedBy: " | ").first ?? ""
    return fatal + " | frames (innermost first): " + demangled.joined(separator: " <- ")
}
