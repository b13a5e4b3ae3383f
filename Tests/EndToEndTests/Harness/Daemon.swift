// Starting and stopping the target daemon, configuring it through its admin tool, and the scoped
// `withTarget` that every test uses so that no daemon outlives its test.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Bounds, with their units.
enum DaemonLimits {
    /// Attempts at `--op show --mode portal` while the daemon starts, and the backoff between them.
    static let readinessAttempts = 60
    static let readinessFirstBackoffSeconds = 0.01
    static let readinessMaxBackoffSeconds = 0.25
    /// How long a clean SIGTERM shutdown may take before the harness uses SIGKILL.
    static let stopGraceSeconds = 10.0
    /// Any single admin command.
    static let adminTimeoutSeconds = 15.0
}

let gibibyte: Int64 = 1 << 30
let mebibyte: Int64 = 1 << 20

/// A listening address to ask the daemon for; port 0 lets the kernel choose.
enum PortalSpec {
    case ipv4Loopback
    case ipv6Loopback

    var option: String {
        switch self {
        case .ipv4Loopback: return "portal=127.0.0.1:0"
        case .ipv6Loopback: return "portal=[::1]:0"
        }
    }
}

/// A portal the daemon really listens on, as `--op show --mode portal` reports it.
struct Endpoint: Equatable, CustomStringConvertible {
    /// The host as it appears in URLs: "127.0.0.1" or "[::1]".
    let host: String
    let port: Int
    let portalGroupTag: Int

    var isIPv6: Bool { host.hasPrefix("[") }
    var description: String { "\(host):\(port)" }
    /// `iscsi://HOST:PORT`, the form iscsi-ls takes.
    var portalURL: String { "iscsi://\(host):\(port)" }

    /// connect(2) for a stream socket `fd` of the endpoint's family (AF_INET6 when `isIPv6`); returns its
    /// result (0, or -1 with errno set).
    func connect(_ fd: Int32) -> Int32 {
        let bare = host.trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        if isIPv6 {
            var a = sockaddr_in6()
            a.sin6_family = sa_family_t(AF_INET6)
            a.sin6_port = in_port_t(UInt16(port).bigEndian)
            inet_pton(AF_INET6, bare, &a.sin6_addr)
            return withUnsafePointer(to: &a) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size))
                }
            }
        }
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, bare, &a.sin_addr)
        return withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
    }

    /// Parses every `Portal: HOST:PORT,TPGT` line (IPv6 hosts are bracketed).
    static func parsePortals(_ text: String) -> [Endpoint] {
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

/// What backs one LUN.
enum LUNSpec {
    /// A sparse regular file of this size, `--bstype rdwr`.
    case file(bytes: Int64)
    /// `--bstype null`: reads zeros, drops writes.
    case null(bytes: Int64)
}

/// The admin tool bound to one daemon's control endpoint.
struct Admin {
    let executable: URL
    /// `--control-socket PATH` for ringtgtadm, `-C N` for tgtadm.
    let controlArgs: [String]
    let logDir: URL

    /// Runs `ADMIN <control> args...` and returns whatever happened.
    func run(_ args: [String]) throws -> ToolResult {
        try runTool(executable, controlArgs + args, logDir: logDir,
                    timeoutSeconds: DaemonLimits.adminTimeoutSeconds, label: "admin")
    }

    /// Runs an admin command that must succeed.
    @discardableResult
    func must(_ args: [String]) throws -> ToolResult {
        let r = try run(args)
        if !r.succeeded { throw E2EError("admin command failed: \(r)") }
        return r
    }

    func newTarget(tid: Int, name: String) throws {
        try must(["--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", "\(tid)",
                  "--targetname", name])
    }

    func bind(tid: Int, initiatorAddress: String = "ALL") throws {
        try must(["--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", "\(tid)",
                  "-I", initiatorAddress])
    }

    func newFileLUN(tid: Int, lun: Int, path: URL) throws {
        try must(["--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "\(tid)",
                  "--lun", "\(lun)", "--bstype", "rdwr", "--backing-store", path.path])
    }

    func newNullLUN(tid: Int, lun: Int, bytes: Int64, peer: Peer) throws {
        try must(["--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "\(tid)",
                  "--lun", "\(lun)"] + nullLUNOptions(bytes: bytes, peer: peer))
    }
}

/// The one place that knows how a null LUN and its size are spelled on the admin command line.
func nullLUNOptions(bytes: Int64, peer: Peer) -> [String] {
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

private let controlPortCounter = ControlPortCounter()
private final class ControlPortCounter: @unchecked Sendable {
    private let lock = NSLock()
    // tgtd's control "port" names /var/run/tgtd/socket.N; start far from the small numbers people use.
    private var next = 10000 + Int(getpid() % 10000) * 2
    func take() -> Int { lock.lock(); defer { lock.unlock() }; next += 1; return next }
}

/// How the harness starts ringtgtd and ringtgtadm: the package's build, or the binaries in `binDir`, run
/// through `wrapper` (a command that execs the binary path and arguments appended to it).
struct RingtgtLauncher {
    var binDir: URL? = nil
    var wrapper: [String] = []

    func command(_ name: String) throws -> (executable: URL, leadingArgs: [String]) {
        let binary = try binDir.map { $0.appendingPathComponent(name) } ?? Paths.packageBinary(name)
        guard let first = wrapper.first else { return (binary, []) }
        return (URL(fileURLWithPath: first), Array(wrapper.dropFirst()) + [binary.path])
    }
}

/// A running target daemon.
final class TargetDaemon {
    let peer: Peer
    let process: ToolProcess
    let admin: Admin
    private(set) var endpoints: [Endpoint] = []
    /// NBD listeners (`--nbd portal=`), as `--lld nbd --op show --mode portal` reports them.
    private(set) var nbdEndpoints: [Endpoint] = []
    private let tgtControlPort: Int?
    private var stopped = false

    /// Starts the daemon in the foreground and waits (bounded) until its control endpoint answers.
    init(peer: Peer, cores: Int, portals: [PortalSpec], nbdPortals: [PortalSpec] = [], extraArgs: [String] = [],
         scratch: Scratch, launcher: RingtgtLauncher = RingtgtLauncher()) throws {
        self.peer = peer
        var args = ["-f"]
        for p in portals { args += ["--iscsi", p.option] }
        for p in nbdPortals { args += ["--nbd", p.option] }
        args += extraArgs
        let daemonExe: URL
        switch peer {
        case .ringtgt:
            let daemonCommand = try launcher.command("ringtgtd")
            daemonExe = daemonCommand.executable
            let socket = scratch.path("ctl").path
            args = daemonCommand.leadingArgs + args + ["--control-socket", socket, "--cores", "\(cores)"]
            let adminCommand = try launcher.command("ringtgtadm")
            admin = Admin(executable: adminCommand.executable,
                          controlArgs: adminCommand.leadingArgs + ["--control-socket", socket], logDir: scratch.url)
            tgtControlPort = nil
        case .tgt:
            daemonExe = try Tools.require("tgtd")
            let port = controlPortCounter.take()
            args += ["-C", "\(port)"]
            admin = Admin(executable: try Tools.require("tgtadm"), controlArgs: ["-C", "\(port)"],
                          logDir: scratch.url)
            tgtControlPort = port
        }
        process = try ToolProcess(daemonExe, args, logDir: scratch.url, label: "daemon")
        do {
            endpoints = try waitForPortals(expected: peer.traits.honoursAllPortals ? portals.count : 1)
            if !nbdPortals.isEmpty {
                // Bound before the control socket opened, so one answer is final.
                let r = try admin.must(["--lld", "nbd", "--op", "show", "--mode", "portal"])
                nbdEndpoints = Endpoint.parsePortals(r.stdout)
                if nbdEndpoints.count != nbdPortals.count || nbdEndpoints.contains(where: { $0.port == 0 }) {
                    throw E2EError("expected \(nbdPortals.count) NBD portal(s) with real ports:\n\(r.stdout)")
                }
            }
        } catch {
            stop(recordProblems: false)
            throw error
        }
    }

    var isAlive: Bool { process.isRunning }
    var log: String { process.stderrText + process.stdoutText }

    /// Polls `--op show --mode portal` until it lists the listeners with real ports.
    private func waitForPortals(expected: Int) throws -> [Endpoint] {
        var backoff = DaemonLimits.readinessFirstBackoffSeconds
        var last: ToolResult? = nil
        for _ in 0..<DaemonLimits.readinessAttempts {
            if !process.isRunning {
                let r = process.wait(timeoutSeconds: 1)
                throw E2EError("""
                    \(peer) daemon exited before its control endpoint answered: \(r)
                    (If ringtgtd is still the placeholder, this is expected until the daemon is merged.)
                    """)
            }
            let r = try admin.run(["--lld", "iscsi", "--op", "show", "--mode", "portal"])
            last = r
            if r.succeeded {
                let found = Endpoint.parsePortals(r.stdout)
                if found.count >= expected {
                    if let zero = found.first(where: { $0.port == 0 }) {
                        throw E2EError("the daemon reports portal \(zero) with port 0; it must show the " +
                                       "port the kernel chose:\n\(r.stdout)")
                    }
                    return found
                }
            }
            usleep(useconds_t(backoff * 1_000_000))
            backoff = min(backoff * 1.5, DaemonLimits.readinessMaxBackoffSeconds)
        }
        throw E2EError("""
            the daemon's control endpoint did not list \(expected) portal(s) after \
            \(DaemonLimits.readinessAttempts) attempts. Last answer: \(last.map { "\($0)" } ?? "none")
            --- daemon log ---
            \(tail(log))
            """)
    }

    /// Stops the daemon. ringtgtd must exit 0 within the grace period after SIGTERM; tgtd ignores
    /// SIGTERM, so it is killed outright. Problems are recorded as test issues.
    func stop(recordProblems: Bool = true) {
        if stopped { return }
        stopped = true
        switch peer {
        case .ringtgt:
            let wasRunning = process.isRunning
            let clean = process.terminate(graceSeconds: DaemonLimits.stopGraceSeconds)
            let r = process.result(timedOut: false)
            guard recordProblems else { return }
            if !wasRunning {
                Issue.record(Comment(rawValue: "ringtgtd was no longer running when the test ended: \(r)"))
            } else if !clean {
                let text = "ringtgtd did not exit within \(DaemonLimits.stopGraceSeconds) s of SIGTERM "
                    + "and was killed:\n\(tail(log))"
                Issue.record(Comment(rawValue: text))
            } else if r.killedBySignal || r.exitStatus != 0 {
                Issue.record(Comment(rawValue: "ringtgtd did not stop cleanly on SIGTERM: \(r)"))
            }
        case .tgt:
            if process.isRunning { kill(process.pid, SIGKILL) }
            _ = process.wait(timeoutSeconds: 30)
            if let port = tgtControlPort {
                try? FileManager.default.removeItem(atPath: "/var/run/tgtd/socket.\(port)")
                try? FileManager.default.removeItem(atPath: "/var/run/tgtd/socket.\(port).lock")
            }
        }
    }

    deinit { stop(recordProblems: false) }
}

/// A daemon serving one target (tid 1, `iqnPrefix:t1`) with LUNs 1...n, bound to ALL.
struct RunningTarget {
    static let iqnPrefix = "iqn.2026-01.org.ringtgt"

    let daemon: TargetDaemon
    let scratch: Scratch
    let iqn: String
    /// LUN number -> backing file (file LUNs only).
    let lunFiles: [Int: URL]
    /// LUN number -> size in bytes as configured.
    let lunBytes: [Int: Int64]

    var peer: Peer { daemon.peer }
    var admin: Admin { daemon.admin }
    var endpoints: [Endpoint] { daemon.endpoints }
    /// The first IPv4 listener (or the first listener of any kind).
    var endpoint: Endpoint { endpoints.first(where: { !$0.isIPv6 }) ?? endpoints[0] }
    var ipv6Endpoint: Endpoint? { endpoints.first(where: \.isIPv6) }
    var port: Int { endpoint.port }
    /// The first NBD listener (the target must have been started with `nbdPortals`).
    var nbdEndpoint: Endpoint { daemon.nbdEndpoints[0] }

    /// `nbd://HOST:PORT/IQN/LUN`; `export: ""` is the server's default export.
    func nbdURL(lun: Int = 1, export: String? = nil) -> String {
        "nbd://\(nbdEndpoint.host):\(nbdEndpoint.port)/\(export ?? "\(iqn)/\(lun)")"
    }

    /// `iscsi://HOST:PORT/IQN/LUN`.
    func url(lun: Int, via: Endpoint? = nil, target: String? = nil) -> String {
        "\((via ?? endpoint).portalURL)/\(target ?? iqn)/\(lun)"
    }

    /// Runs a tool that must be installed, in this target's scratch directory.
    func tool(_ name: String, _ args: [String], timeoutSeconds: Double = 60) throws -> ToolResult {
        try runTool(try Tools.require(name), args, logDir: scratch.url, timeoutSeconds: timeoutSeconds)
    }

    /// Starts a tool without waiting for it.
    func launch(_ name: String, _ args: [String], label: String? = nil) throws -> ToolProcess {
        try ToolProcess(try Tools.require(name), args, logDir: scratch.url, label: label ?? name)
    }

    /// Throws unless the daemon process is still running (a crash would otherwise pass unnoticed).
    func requireAlive(_ when: String) throws {
        if !daemon.isAlive {
            throw E2EError("the daemon died \(when):\n\(tail(daemon.log))")
        }
    }
}

/// Starts a daemon with one target (tid 1) holding `luns` as LUN 1, 2, ..., bound to ALL initiators,
/// runs `body`, and always stops the daemon afterwards, also when `body` throws.
func withTarget<R>(cores: Int = 1, luns: [LUNSpec], portals: [PortalSpec] = [.ipv4Loopback],
                   nbdPortals: [PortalSpec] = [], _ body: (RunningTarget) throws -> R) throws -> R {
    let peer = Peer.current
    let scratch = try Scratch()
    defer { scratch.remove() }
    let daemon = try TargetDaemon(peer: peer, cores: cores, portals: portals, nbdPortals: nbdPortals, scratch: scratch)
    defer { daemon.stop() }

    let iqn = "\(RunningTarget.iqnPrefix):t1"
    var files: [Int: URL] = [:]
    var sizes: [Int: Int64] = [:]
    try daemon.admin.newTarget(tid: 1, name: iqn)
    for (i, spec) in luns.enumerated() {
        let lun = i + 1
        switch spec {
        case .file(let bytes):
            let f = try scratch.makeSparseFile("lun\(lun).img", bytes: bytes)
            try daemon.admin.newFileLUN(tid: 1, lun: lun, path: f)
            files[lun] = f
            sizes[lun] = bytes
        case .null(let bytes):
            try daemon.admin.newNullLUN(tid: 1, lun: lun, bytes: bytes, peer: peer)
            sizes[lun] = peer.traits.nullLUNFixedBytes ?? bytes
        }
    }
    try daemon.admin.bind(tid: 1)
    let target = RunningTarget(daemon: daemon, scratch: scratch, iqn: iqn, lunFiles: files, lunBytes: sizes)
    let result = try body(target)
    try target.requireAlive("during the test")
    return result
}
