// The target daemon under test, for the end-to-end harness and the perf runner: ringtgtd, or Debian's tgtd
// beside it. Started in the foreground with its portals on port 0 and its control endpoint in the caller's
// directory; ready once the admin tool lists every listener with the port the kernel chose (no sleeps, no
// guessed ports); stopped with SIGTERM, a bounded wait, then SIGKILL. Its log is what it printed.
//
// tgtd binds port 0 and reports the real port like ringtgtd, but only its last `--iscsi portal=` counts, it
// ignores SIGTERM, and its control endpoint is a number that names /var/run/tgtd/socket.N.

import Floor
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Which daemon serves: ringtgtd, or Debian's tgtd for comparison.
public enum Peer: String, Sendable {
    case ringtgt
    case tgt
}

/// Bounds, with their units.
public enum DaemonLimits {
    /// How long a daemon gets to list its portals after start (valgrind's start-up included), and the
    /// backoff between the admin tool's attempts.
    public static let readinessSeconds = 60.0
    public static let readinessFirstBackoffSeconds = 0.01
    public static let readinessMaxBackoffSeconds = 0.25
    /// ringtgtd logs its ready line just after its control socket starts answering: how long that may lag.
    public static let readyLineSeconds = 10.0
    /// How long a clean SIGTERM shutdown may take before SIGKILL.
    public static let stopGraceSeconds = 10.0
    /// Any single admin command.
    public static let adminTimeoutSeconds = 20.0
    /// tgtd control ports one process hands out before it reuses them.
    public static let tgtControlPortsPerProcess = 20
}

public let gibibyte: Int64 = 1 << 30
public let mebibyte: Int64 = 1 << 20

/// A listening address to ask the daemon for; port 0 lets the kernel choose.
public enum PortalSpec: Sendable {
    case ipv4Loopback
    case ipv6Loopback

    public var option: String {
        switch self {
        case .ipv4Loopback: return "portal=127.0.0.1:0"
        case .ipv6Loopback: return "portal=[::1]:0"
        }
    }
}

/// A portal the daemon really listens on, as `--op show --mode portal` reports it.
public struct Endpoint: Equatable, CustomStringConvertible, Sendable {
    /// The host as it appears in URLs: "127.0.0.1" or "[::1]".
    public let host: String
    public let port: Int
    public let portalGroupTag: Int

    public init(host: String, port: Int, portalGroupTag: Int) {
        self.host = host
        self.port = port
        self.portalGroupTag = portalGroupTag
    }

    public var isIPv6: Bool { host.hasPrefix("[") }
    public var description: String { "\(host):\(port)" }
    /// `iscsi://HOST:PORT`, the form iscsi-ls takes.
    public var portalURL: String { "iscsi://\(host):\(port)" }

    /// connect(2) for a stream socket `fd` of the endpoint's family (AF_INET6 when `isIPv6`); returns its
    /// result (0, or -1 with errno set).
    public func connect(_ fd: Int32) -> Int32 {
        guard let address = NumericSocketAddress(host: host, port: port) else { errno = EINVAL; return -1 }
        return address.connect(fd)
    }

    /// Parses every `Portal: HOST:PORT,TPGT` line (IPv6 hosts are bracketed).
    public static func parsePortals(_ text: String) -> [Endpoint] {
        var result: [Endpoint] = []
        for rawLine in text.split(whereSeparator: \.isNewline) {
            let line = rawLine.trimmingCharacters(in: .whitespaces)
            guard line.hasPrefix("Portal:") else { continue }
            let value = line.dropFirst("Portal:".count).trimmingCharacters(in: .whitespaces)
            guard let comma = value.lastIndex(of: ","),
                  let tpgt = Int(value[value.index(after: comma)...]) else { continue }
            let hostPort = value[..<comma]
            guard let colon = hostPort.lastIndex(of: ":"),
                  let port = Int(hostPort[hostPort.index(after: colon)...]) else { continue }
            result.append(Endpoint(host: String(hostPort[..<colon]), port: port, portalGroupTag: tpgt))
        }
        return result
    }
}

/// The admin tool bound to one daemon's control endpoint.
public struct Admin {
    public let executable: URL
    /// `--control-socket PATH` for ringtgtadm, `-C N` for tgtadm, after any wrapper's arguments.
    public let controlArgs: [String]
    public let logDir: URL
    public var label = "admin"
    /// False for the perf runner's logs: one file per role, rewritten by each command.
    public var uniqueLogNames = true

    public init(executable: URL, controlArgs: [String], logDir: URL, label: String = "admin",
                uniqueLogNames: Bool = true) {
        self.executable = executable
        self.controlArgs = controlArgs
        self.logDir = logDir
        self.label = label
        self.uniqueLogNames = uniqueLogNames
    }

    /// ringtgtd's control socket (the path after `--control-socket`); nil for tgtd's numbered endpoint.
    public var controlSocketPath: String? {
        guard let i = controlArgs.firstIndex(of: "--control-socket"), i + 1 < controlArgs.count else { return nil }
        return controlArgs[i + 1]
    }

    /// Runs `ADMIN <control> args...` and returns whatever happened.
    public func run(_ args: [String]) throws -> ToolResult {
        try runTool(executable, controlArgs + args, logDir: logDir, timeoutSeconds: DaemonLimits.adminTimeoutSeconds,
                    label: label, uniqueLogNames: uniqueLogNames)
    }

    /// Runs an admin command that must succeed.
    @discardableResult
    public func must(_ args: [String]) throws -> ToolResult {
        let r = try run(args)
        if !r.succeeded { throw FixtureError("admin command failed: \(r)") }
        return r
    }

    public func newTarget(tid: Int, name: String) throws {
        try must(["--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", "\(tid)", "--targetname", name])
    }

    public func bind(tid: Int, initiatorAddress: String = "ALL") throws {
        try must(["--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", "\(tid)", "-I", initiatorAddress])
    }

    public func newFileLUN(tid: Int, lun: Int, path: URL) throws {
        try must(["--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "\(tid)",
                  "--lun", "\(lun)", "--bstype", "rdwr", "--backing-store", path.path])
    }

    public func newNullLUN(tid: Int, lun: Int, bytes: Int64, peer: Peer) throws {
        try must(["--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "\(tid)",
                  "--lun", "\(lun)"] + nullLUNOptions(bytes: bytes, peer: peer))
    }

    /// Every listener of `lld` ("iscsi", "nbd") as the daemon reports it.
    public func portals(lld: String = "iscsi") throws -> [Endpoint] {
        Endpoint.parsePortals(try must(["--lld", lld, "--op", "show", "--mode", "portal"]).stdout)
    }
}

/// The one place that knows how a null LUN and its size are spelled on the admin command line.
public func nullLUNOptions(bytes: Int64, peer: Peer) -> [String] {
    switch peer {
    case .tgt:
        return ["--bstype", "null", "--backing-store", "/dev/null"]   // tgt: always 1 TiB
    case .ringtgt:
        let size: String
        if bytes % gibibyte == 0 { size = "\(bytes / gibibyte)G" }
        else if bytes % mebibyte == 0 { size = "\(bytes / mebibyte)M" }
        else { size = "\(bytes)" }
        return ["--bstype", "null", "--backing-store", "/dev/null", "--bsopts", "size=\(size)"]
    }
}

/// The programs a daemon fixture runs, and what wraps them.
public struct DaemonLauncher {
    /// ringtgtd or tgtd.
    public var daemon: URL
    /// ringtgtadm or tgtadm.
    public var admin: URL
    /// A command that execs the program path and arguments appended to it (valgrind's options, `taskset -c 0`,
    /// `prlimit --nofile=N:N --`), for the daemon and for the admin tool.
    public var daemonWrapper: [String]
    public var adminWrapper: [String]
    /// Added to the daemon's environment (LD_PRELOAD for the gates).
    public var environment: [String: String]

    public init(daemon: URL, admin: URL, daemonWrapper: [String] = [], adminWrapper: [String] = [],
                environment: [String: String] = [:]) {
        self.daemon = daemon
        self.admin = admin
        self.daemonWrapper = daemonWrapper
        self.adminWrapper = adminWrapper
        self.environment = environment
    }

    /// `(executable, leading arguments)` that run `program` through `wrapper`.
    static func command(_ program: URL, through wrapper: [String]) -> (URL, [String]) {
        guard let first = wrapper.first else { return (program, []) }
        return (URL(fileURLWithPath: first), Array(wrapper.dropFirst()) + [program.path])
    }
}

/// tgtd's control "port" names /var/run/tgtd/socket.N, shared by every process on the machine: each process
/// takes its own block, far from the small numbers people use, and under 32768.
private let tgtControlPorts = TgtControlPorts()
private final class TgtControlPorts: @unchecked Sendable {
    private let lock = NSLock()
    private let base = 10000 + Int(getpid() % 1000) * DaemonLimits.tgtControlPortsPerProcess
    private var taken = 0
    func take() -> Int {
        lock.lock(); defer { lock.unlock() }
        taken += 1
        return base + taken % DaemonLimits.tgtControlPortsPerProcess
    }
}

/// A running target daemon. Whoever starts one stops it; `deinit` is only the backstop.
public final class TargetDaemon {
    /// ringtgtd's default for --sheep-claim-dir.
    public static let sheepClaimDirectoryVariable = "RINGTGT_SHEEP_CLAIM_DIR"
    public let peer: Peer
    public let process: ToolProcess
    public let admin: Admin
    public private(set) var endpoints: [Endpoint] = []
    /// NBD listeners (`--nbd portal=`), as `--lld nbd --op show --mode portal` reports them.
    public private(set) var nbdEndpoints: [Endpoint] = []
    private let tgtControlPort: Int?
    private let reportProblem: (String) -> Void
    private var stopped = false

    /// Starts the daemon in the foreground with `portals` (port 0), and waits (bounded, no sleeps on a
    /// guess) until its admin tool lists them with real ports. The control socket and the logs live in
    /// `logDir`, named after `label`. `started` sees the process before the wait (to record its pid);
    /// `reportProblem` hears what `stop()` finds wrong. Whatever started is stopped when this throws.
    public init(peer: Peer, cores: Int, portals: [PortalSpec] = [.ipv4Loopback], nbdPortals: [PortalSpec] = [],
                extraArgs: [String] = [], launcher: DaemonLauncher, logDir: URL, label: String = "daemon",
                uniqueLogNames: Bool = true, readinessSeconds: Double = DaemonLimits.readinessSeconds,
                started: (ToolProcess) -> Void = { _ in }, reportProblem: @escaping (String) -> Void = { _ in }) throws {
        self.peer = peer
        self.reportProblem = reportProblem
        var args = ["-f"]
        for p in portals { args += ["--iscsi", p.option] }
        for p in nbdPortals { args += ["--nbd", p.option] }
        args += extraArgs
        let control: [String]
        switch peer {
        case .ringtgt:
            control = ["--control-socket", logDir.appendingPathComponent("\(label).ctl").path]
            args += control + ["--cores", "\(cores)"]
            tgtControlPort = nil
        case .tgt:
            let port = tgtControlPorts.take()
            control = ["-C", "\(port)"]
            args += control
            tgtControlPort = port
        }
        let (adminExe, adminLeading) = DaemonLauncher.command(launcher.admin, through: launcher.adminWrapper)
        admin = Admin(executable: adminExe, controlArgs: adminLeading + control, logDir: logDir,
                      label: "\(label)-admin", uniqueLogNames: uniqueLogNames)
        let (daemonExe, daemonLeading) = DaemonLauncher.command(launcher.daemon, through: launcher.daemonWrapper)
        // The claims of the daemons one test starts live in its scratch directory, as on one host; through
        // the environment, which a release binary older than the option ignores.
        var environment = launcher.environment
        if peer == .ringtgt { environment[Self.sheepClaimDirectoryVariable] = logDir.appendingPathComponent("sheep-claims").path }
        process = try ToolProcess(daemonExe, daemonLeading + args, logDir: logDir, label: label,
                                  environment: environment, uniqueLogNames: uniqueLogNames)
        started(process)
        do {
            endpoints = try waitForPortals(expected: peer == .tgt ? 1 : portals.count, seconds: readinessSeconds)
            if !nbdPortals.isEmpty {
                // Bound before the control socket opened, so one answer is final.
                nbdEndpoints = try admin.portals(lld: "nbd")
                if nbdEndpoints.count != nbdPortals.count || nbdEndpoints.contains(where: { $0.port == 0 }) {
                    throw FixtureError("expected \(nbdPortals.count) NBD portal(s) with real ports: \(nbdEndpoints)")
                }
            }
        } catch {
            stop(recordProblems: false)
            throw error
        }
    }

    public var isAlive: Bool { process.isRunning }
    /// Everything the daemon printed so far.
    public var log: String { process.stderrText + process.stdoutText }

    /// The port of `KEY HOST:PORT` in ringtgtd's ready line (`metrics`, the only listener the admin tool does
    /// not list). The line follows the control socket's first answer, so it is polled for (bounded, backoff).
    public func readyLinePort(_ key: String, seconds: Double = DaemonLimits.readyLineSeconds) throws -> Int {
        let deadline = Date().addingTimeInterval(seconds)
        var backoff = DaemonLimits.readinessFirstBackoffSeconds
        while true {
            if let line = log.split(whereSeparator: \.isNewline).first(where: { $0.contains("ringtgtd ready:") }) {
                guard let r = line.range(of: key + " ") else { throw FixtureError("no `\(key)` in the ready line: \(line)") }
                let hostPort = line[r.upperBound...].prefix { $0 != "," && $0 != " " }
                guard let colon = hostPort.lastIndex(of: ":"), let port = Int(hostPort[hostPort.index(after: colon)...]),
                      port > 0 else { throw FixtureError("no port after `\(key)` in the ready line: \(line)") }
                return port
            }
            if !process.isRunning || Date() >= deadline {
                throw FixtureError("ringtgtd printed no ready line within \(seconds) s:\n\(tail(log))")
            }
            usleep(useconds_t(backoff * 1_000_000))   // the backoff of a bounded poll, not synchronisation
            backoff = min(backoff * 1.5, DaemonLimits.readinessMaxBackoffSeconds)
        }
    }

    /// Polls `--op show --mode portal` with backoff until it lists `expected` listeners, all with real ports.
    /// A daemon that exits meanwhile fails the wait at once, with its log.
    private func waitForPortals(expected: Int, seconds: Double) throws -> [Endpoint] {
        let deadline = Date().addingTimeInterval(seconds)
        var backoff = DaemonLimits.readinessFirstBackoffSeconds
        var last: ToolResult? = nil
        while Date() < deadline {
            if !process.isRunning {
                let r = process.wait(timeoutSeconds: 1)
                throw FixtureError("\(peer) daemon exited before its control endpoint answered: \(r)")
            }
            let r = try admin.run(["--lld", "iscsi", "--op", "show", "--mode", "portal"])
            last = r
            if r.succeeded {
                let found = Endpoint.parsePortals(r.stdout)
                if found.count >= expected {
                    if let zero = found.first(where: { $0.port == 0 }) {
                        throw FixtureError("the daemon reports portal \(zero) with port 0; it must show the port " +
                                           "the kernel chose:\n\(r.stdout)")
                    }
                    return found
                }
            }
            usleep(useconds_t(backoff * 1_000_000))   // the backoff of a bounded poll, not synchronisation
            backoff = min(backoff * 1.5, DaemonLimits.readinessMaxBackoffSeconds)
        }
        throw FixtureError("""
            the daemon's control endpoint did not list \(expected) portal(s) within \(seconds) s. \
            Last answer: \(last.map { "\($0)" } ?? "none")
            --- daemon log ---
            \(tail(log))
            """)
    }

    /// Stops the daemon. ringtgtd must exit 0 within `graceSeconds` of SIGTERM; tgtd ignores SIGTERM, so it
    /// is killed outright. With `recordProblems`, a daemon that had already died, needed SIGKILL or exited
    /// unclean is reported, with the tail of its log.
    public func stop(recordProblems: Bool = true, graceSeconds: Double = DaemonLimits.stopGraceSeconds) {
        if stopped { return }
        stopped = true
        switch peer {
        case .ringtgt:
            let wasRunning = process.isRunning
            let clean = process.terminate(graceSeconds: graceSeconds)
            let r = process.result(timedOut: false)
            guard recordProblems else { return }
            if !wasRunning {
                reportProblem("ringtgtd was no longer running when the test ended: \(r)")
            } else if !clean {
                reportProblem("ringtgtd did not exit within \(graceSeconds) s of SIGTERM and was killed:\n\(tail(log))")
            } else if r.killedBySignal || r.exitStatus != 0 {
                reportProblem("ringtgtd did not stop cleanly on SIGTERM: \(r)")
            }
        case .tgt:
            process.killNow()
            if let port = tgtControlPort {
                try? FileManager.default.removeItem(atPath: "/var/run/tgtd/socket.\(port)")
                try? FileManager.default.removeItem(atPath: "/var/run/tgtd/socket.\(port).lock")
            }
        }
    }

    deinit { stop(recordProblems: false) }
}
