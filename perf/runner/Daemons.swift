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

enum Peer: String {
    case ringtgt
    case tgt
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

/// Bounds with their units.
enum DaemonLimits {
    /// How long a daemon gets to answer its admin tool after start (valgrind start-up included).
    static let readySeconds = 60.0
    static let adminTimeoutSeconds = 20.0
    static let iqn = "iqn.2026-01.org.ringtgt.perf:t1"
    /// Bytes of both LUNs the load touches, and the size of the tmpfs file.
    static let lunBytes: Int64 = 1 << 30
}

final class Daemon {
    let spec: DaemonSpec
    let bins: Binaries
    let logDir: URL
    let fileLUN: String
    private(set) var child: Child?
    private(set) var port = 0
    private var controlArgs: [String] = []
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
    var pid: Int32 { child?.pid ?? 0 }
    var isAlive: Bool { child?.isRunning ?? false }
    var peer: Peer { spec.peer }

    func url(_ lun: LUNKind) -> String { "iscsi://127.0.0.1:\(port)/\(DaemonLimits.iqn)/\(lun.lun)" }

    func start() throws {
        starts += 1
        let label = "\(name)-daemon-\(starts)"
        switch spec.peer {
        case .ringtgt:
            let sock = logDir.appendingPathComponent("\(name)-\(starts).ctl").path
            controlArgs = ["--control-socket", sock]
            let program = spec.valgrindArgs != nil ? bins.ringtgtdUnderValgrind : bins.ringtgtd
            var args = [program, "-f", "--iscsi", "portal=127.0.0.1:0", "--control-socket", sock,
                        "--cores", "\(spec.cores)"] + spec.extraArgs
            var exe = bins.ringtgtd
            if let v = spec.valgrindArgs {
                exe = bins.valgrind
                args = v + args
            } else {
                args.removeFirst()
            }
            child = try Child(exe, args, logDir: logDir, label: label, environment: spec.environment)
        case .tgt:
            port = try freeTCPPorts(1)[0]
            // tgtd's control "port" names a socket file; keep it away from the numbers people use.
            let control = 20000 + Int(getpid() % 5000) * 2 + starts + (spec.cores == 1 ? 0 : 10000)
            controlArgs = ["-C", "\(control % 32768)"]
            let args = ["-f", "--iscsi", "portal=127.0.0.1:\(port)", "-C", "\(control % 32768)"]
            if spec.cores == 1 {
                // One target core: tgtd's event loop and its I/O threads all on CPU 0, like ringtgtd's core 0.
                child = try Child(bins.taskset, ["-c", "0", bins.tgtd] + args, logDir: logDir, label: label)
            } else {
                child = try Child(bins.tgtd, args, logDir: logDir, label: label)
            }
        }
        try waitReady()
        try configure()
    }

    /// ringtgt only: the NBD listener's port (`--lld nbd --op show --mode portal`), when it has one.
    func nbdPort() -> Int? {
        guard spec.peer == .ringtgt,
              let r = try? runTool(bins.ringtgtadm, controlArgs + ["--lld", "nbd", "--op", "show", "--mode", "portal"],
                                   logDir: logDir, label: "\(name)-admin", timeoutSeconds: 15), r.status == 0 else { return nil }
        for line in r.out.split(separator: "\n") where line.hasPrefix("Portal:") {
            // "Portal: 127.0.0.1:PORT,1"
            let v = line.dropFirst("Portal:".count).trimmingCharacters(in: .whitespaces)
            if let colon = v.lastIndex(of: ":"), let comma = v.lastIndex(of: ","),
               let p = Int(v[v.index(after: colon)..<comma]), p > 0 { return p }
        }
        return nil
    }

    /// ringtgt only: the cores' busy-poll window (`--op update --mode sys --name poll_us`); true when set.
    @discardableResult
    func setPoll(microseconds: Int) -> Bool {
        guard spec.peer == .ringtgt, let r = try? admin(["--op", "update", "--mode", "sys", "--name", "poll_us",
                                                         "--value", "\(microseconds)"]) else { return false }
        return r.status == 0
    }

    private func admin(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
        let exe = spec.peer == .ringtgt ? bins.ringtgtadm : bins.tgtadm
        return try runTool(exe, controlArgs + ["--lld", "iscsi"] + args, logDir: logDir, label: "\(name)-admin",
                           timeoutSeconds: DaemonLimits.adminTimeoutSeconds)
    }

    private func mustAdmin(_ args: [String]) throws {
        let r = try admin(args)
        if r.status != 0 { throw RunnerError("\(name): admin \(args.joined(separator: " ")) failed: \(r.err)\(r.out)") }
    }

    private func waitReady() throws {
        let deadline = Date().addingTimeInterval(DaemonLimits.readySeconds)
        var backoff = 0.02
        while Date() < deadline {
            guard let c = child, c.isRunning else {
                throw RunnerError("\(name) exited during start: \(logExcerpt(child?.stderr ?? ""))")
            }
            let r = try admin(spec.peer == .ringtgt ? ["--op", "show", "--mode", "portal"] : ["--op", "show", "--mode", "target"])
            if r.status == 0 {
                if spec.peer == .tgt { return }
                for line in r.out.split(separator: "\n") where line.hasPrefix("Portal:") {
                    let v = line.dropFirst("Portal:".count).trimmingCharacters(in: .whitespaces)
                    if let comma = v.lastIndex(of: ","), let colon = v[..<comma].lastIndex(of: ":"),
                       let p = Int(v[v.index(after: colon)..<comma]), p != 0 {
                        port = p
                        return
                    }
                }
            }
            Thread.sleep(forTimeInterval: backoff)
            backoff = min(backoff * 2, 0.5)
        }
        throw RunnerError("\(name) did not answer its admin tool within \(DaemonLimits.readySeconds) s")
    }

    private func configure() throws {
        try mustAdmin(["--op", "new", "--mode", "target", "--tid", "1", "--targetname", DaemonLimits.iqn])
        var null = ["--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "--bstype", "null",
                    "--backing-store", "/dev/null"]
        if spec.peer == .ringtgt { null += ["--bsopts", "size=1G"] }   // tgt's null LUN is always 1 TiB
        try mustAdmin(null)
        try mustAdmin(["--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "2", "--bstype", "rdwr",
                       "--backing-store", fileLUN])
        for kind in [LUNKind.sheepTS, .sheep] {
            guard let s = sheepLUNs[kind] else { continue }
            // A daemon that died (or was killed) still holds its VDI's lock.
            if starts > 1 { s.backend.unlock(vdi: s.vdi) }
            try mustAdmin(["--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "\(kind.lun)", "--bstype", "sheepdog",
                           "--backing-store", s.backend.spec(s.vdi)])
        }
        try mustAdmin(["--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"])
    }

    /// How the daemon ended, once it has: killed from outside (SIGKILL, which the suite only sends while
    /// stopping a daemon) or a crash of its own.
    enum Death { case killed, crashed }
    var death: Death? {
        guard let c = child, !c.isRunning else { return nil }
        c.wait(seconds: 1)
        if c.process.terminationReason == .uncaughtSignal && c.process.terminationStatus == SIGKILL { return .killed }
        return .crashed
    }

    /// Restarts a daemon that died; returns a description of what happened, or nil if it was alive.
    func ensureRunning() throws -> String? {
        if isAlive { return nil }
        let status = child.map { c -> String in
            c.wait(seconds: 1)
            return c.process.terminationReason == .uncaughtSignal ? "signal \(c.process.terminationStatus)"
                : "exit \(c.process.terminationStatus)"
        } ?? "not started"
        let what: String
        if death == .killed {
            what = "\(name) was killed with SIGKILL by something outside the suite (not a crash)"
        } else {
            what = "\(name) died (\(status)): \(symbolize(logExcerpt(child?.stderr ?? "", lines: 12), binary: bins.ringtgtd))"
        }
        crashes.append(what)
        log("  ! \(what)")
        try start()
        return what
    }

    func stop() {
        guard let c = child else { return }
        // tgtd ignores SIGTERM; ringtgtd shuts down cleanly on it (and valgrind writes its profile then).
        c.stop(signal: spec.peer == .tgt ? SIGKILL : SIGTERM, graceSeconds: spec.valgrindArgs != nil ? 60 : 10)
        child = nil
    }

    /// Sends a signal to the daemon process (the allocation counter dumps on SIGUSR2).
    func signal(_ sig: Int32) { if let c = child, c.isRunning { kill(c.pid, sig) } }
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
    let rc = posix_fallocate(fd, 0, off_t(DaemonLimits.lunBytes))
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
                               timeoutSeconds: 30), r.status == 0 else { return text }
    // addr2line prints two lines per address: the (mangled) function, then file:line.
    let lines = r.out.split(separator: "\n").map(String.init)
    var names: [String] = []
    for i in stride(from: 0, to: lines.count - 1, by: 2) { names.append(lines[i]) }
    var demangled = names
    if let d = try? runTool("/bin/sh", ["-c", "swift-demangle --simplified --compact " + names.map { "'\($0)'" }.joined(separator: " ")],
                            logDir: tmp, label: "ringtgt-perf-demangle", timeoutSeconds: 30), d.status == 0 {
        let out = d.out.split(separator: "\n").map(String.init)
        if out.count == names.count { demangled = out }
    }
    let fatal = text.components(separatedBy: " | ").first ?? ""
    return fatal + " | frames (innermost first): " + demangled.joined(separator: " <- ")
}
