// The sheep side of the sheepdog end-to-end tests: either the project's sheep-protocol test server
// (`ringtgt-sheep-testserver`, test support, not sheepdog) or, when `sheep` and `dog` are on PATH, a real
// 3-node local sheepdog cluster. Both are driven through a dog CLI with the same subcommands
// (`vdi create|snapshot|read|write|list|lock unlock`), so every test body runs unchanged against either.
//
// The test server is started with port 0 and a unix socket in its own scratch directory; it is ready
// when it has printed its `listening ...` and `admin tcp ...` lines on stdout (read from a pipe, no
// polling). A real cluster is three `sheep -c local:SHM -z N -p PORT -f DIR` processes, ready when
// `dog node list` shows all three, then `dog cluster format -c 2 -l` (-l: locking on, which ringtgt's
// LOCK_VDI relies on; the test server locks by default).
//
// Run:   swift test --filter 'EndToEndTests.EndToEnd/Sheep'              (every sheepdog suite)
//        PATH=/opt/sheepdog/sbin:/opt/sheepdog/bin:$PATH swift test ...   (also against real sheep, where
//                                                                          sheepdog is installed there)
// Without sheep and dog on PATH, each real-cluster test case prints a note and is cancelled (skipped).

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Bounds, with their units.
enum SheepLimits {
    /// The test server prints its addresses within this long of starting.
    static let serverReadySeconds = 20.0
    /// Any single dog or admin command.
    static let dogTimeoutSeconds = 60.0
    /// How long a clean SIGTERM shutdown may take before SIGKILL.
    static let stopGraceSeconds = 10.0
    /// `dog node list` attempts while a real cluster forms, and the backoff between them.
    static let clusterReadyAttempts = 80
    static let clusterFirstBackoffSeconds = 0.05
    static let clusterMaxBackoffSeconds = 0.5
    /// Nodes in the real local cluster and the copies `dog cluster format -c` asks for.
    static let clusterNodes = 3
    static let clusterCopies = 2
}

/// Which sheep the tests talk to.
enum SheepKind: String, CaseIterable, Sendable, CustomStringConvertible {
    /// ringtgt-sheep-testserver: always available (built with the package).
    case testServer
    /// Three real sheep daemons with the local cluster driver: only when `sheep` and `dog` are installed.
    case localCluster

    var description: String { self == .testServer ? "sheep test server" : "3-node sheep cluster" }

    /// Why this kind cannot run here, or nil when it can.
    var unavailableReason: String? {
        switch self {
        case .testServer: return nil
        case .localCluster:
            let missing = ["sheep", "dog"].filter { findOnPath($0) == nil }
            return missing.isEmpty ? nil
                : "\(missing.joined(separator: " and ")) not on PATH: the real-cluster run is skipped"
        }
    }
}

/// Options for the test server (ignored by a real cluster, which has none of these controls).
struct SheepServerOptions {
    /// Keep objects under a directory, so that a killed server restarted on it still has them.
    var persistent = false
    /// `--faults SPEC` with `--seed`.
    var faults: String? = nil
    var seed: UInt64 = 1
    /// `--order fifo|random|reorder`; nil keeps the server's default (random).
    var order: String? = nil
    /// `--listen` address of the TCP listener ("::1" for IPv6 tests).
    var listenHost = "127.0.0.1"
}

/// A started sheep service (test server or real cluster) that is always stopped by its owner.
final class SheepService {
    let kind: SheepKind
    let scratch: Scratch
    /// The unix socket a LUN uses: `unix:SOCKET:VDI`.
    let socketPath: String
    /// Host and port a LUN uses for `tcp:HOST:PORT:VDI` (IPv6 hosts bracketed).
    private(set) var tcpHost: String
    private(set) var tcpPort: Int
    /// The test server's admin port (nil for a real cluster).
    private(set) var adminPort: Int?

    private let options: SheepServerOptions
    private var server: LineReadyProcess?
    private var nodes: [ToolProcess] = []
    /// Each node's command line, for a restart.
    private var nodeArgs: [[String]] = []
    private var stopped = false

    private init(kind: SheepKind, scratch: Scratch, socketPath: String, tcpHost: String, tcpPort: Int,
                 options: SheepServerOptions) {
        self.kind = kind
        self.scratch = scratch
        self.socketPath = socketPath
        self.tcpHost = tcpHost
        self.tcpPort = tcpPort
        self.options = options
    }

    // MARK: Starting and stopping

    static func start(_ kind: SheepKind, options: SheepServerOptions = SheepServerOptions()) throws -> SheepService {
        let scratch = try Scratch()
        do {
            switch kind {
            case .testServer:
                let s = SheepService(kind: kind, scratch: scratch, socketPath: scratch.path("sheep.sock").path,
                                     tcpHost: "", tcpPort: 0, options: options)
                try s.startTestServer(tcpPort: 0)
                return s
            case .localCluster:
                return try startLocalCluster(scratch: scratch)
            }
        } catch {
            scratch.remove()
            throw error
        }
    }

    private var testServerExecutable: URL { get throws { try Paths.packageBinary("ringtgt-sheep-testserver") } }

    /// Starts (or restarts) the test server; `tcpPort` 0 picks a free port, a restart passes the old one.
    private func startTestServer(tcpPort: Int) throws {
        var args = ["serve", "--listen", options.listenHost, "--port", "\(tcpPort)", "--unix", socketPath,
                    "--admin-port", "0", "--seed", "\(options.seed)"]
        if options.persistent { args += ["--data-dir", scratch.path("sheep-data").path] }
        if let f = options.faults { args += ["--faults", f] }
        if let o = options.order { args += ["--order", o] }
        let p = try LineReadyProcess(try testServerExecutable, args, logDir: scratch.url, label: "sheep-testserver")
        let lines: [String]
        do {
            lines = try p.waitForLines(timeoutSeconds: SheepLimits.serverReadySeconds) { lines in
                lines.contains { $0.hasPrefix("listening unix ") } && lines.contains { $0.hasPrefix("admin tcp ") }
                    && lines.contains { $0.hasPrefix("listening tcp ") }
            }
        } catch {
            p.terminate(graceSeconds: 1)
            throw error
        }
        // "listening tcp 127.0.0.1:PORT" / "listening tcp [::1]:PORT", "admin tcp 127.0.0.1:PORT".
        func port(_ prefix: String) -> (host: String, port: Int)? {
            guard let line = lines.first(where: { $0.hasPrefix(prefix) }) else { return nil }
            let hostPort = line.dropFirst(prefix.count)
            guard let colon = hostPort.lastIndex(of: ":"), let n = Int(hostPort[hostPort.index(after: colon)...])
            else { return nil }
            return (String(hostPort[..<colon]), n)
        }
        guard let tcp = port("listening tcp "), let admin = port("admin tcp ") else {
            p.terminate(graceSeconds: 1)
            throw E2EError("cannot read the test server's addresses from: \(lines)")
        }
        server = p
        tcpHost = tcp.host
        self.tcpPort = tcp.port
        adminPort = admin.port
    }

    /// SIGTERM, then SIGKILL after a grace period. Problems are recorded as test issues.
    func stop() {
        if stopped { return }
        stopped = true
        if let server {
            let wasRunning = server.isRunning
            if !server.terminate(graceSeconds: SheepLimits.stopGraceSeconds) {
                Issue.record("the sheep test server did not exit within \(SheepLimits.stopGraceSeconds) s of SIGTERM:\n\(tail(server.stderrText))")
            } else if !wasRunning {
                Issue.record("the sheep test server was no longer running when the test ended:\n\(tail(server.stderrText))")
            }
        }
        for n in nodes { n.terminate(graceSeconds: SheepLimits.stopGraceSeconds) }
        scratch.remove()
    }

    deinit { if !stopped { server?.terminate(graceSeconds: 1); for n in nodes { n.terminate(graceSeconds: 1) } } }

    /// The test server's stderr (its log), for failure messages.
    var log: String { server?.stderrText ?? nodes.map { $0.stderrText }.joined(separator: "\n") }

    // MARK: Crashing and restarting

    /// SIGKILL: every connection drops at once and replies in flight are lost. The test server keeps what
    /// it stored in its data directory (`persistent`); of a real cluster, node 0 (whose socket LUNs use)
    /// dies and the other two carry on.
    func kill() throws {
        if let server {
            server.killNow()
        } else if let node = nodes.first {
            if node.isRunning { Glibc.kill(node.pid, SIGKILL) }
            _ = node.wait(timeoutSeconds: SheepLimits.stopGraceSeconds)
        }
    }

    /// Starts the test server again on the same unix socket, TCP port and data directory, or node 0 again
    /// on its directory and port (and waits until the cluster has all its nodes).
    func restart() throws {
        switch kind {
        case .testServer:
            if let server, server.isRunning { throw E2EError("restart() while the test server still runs") }
            try startTestServer(tcpPort: tcpPort)
        case .localCluster:
            guard let sheep = findOnPath("sheep"), !nodeArgs.isEmpty else { throw E2EError("no node 0 to restart") }
            if nodes[0].isRunning { throw E2EError("restart() while node 0 still runs") }
            nodes[0] = try ToolProcess(sheep, nodeArgs[0], logDir: scratch.url, label: "sheep0-restarted")
            try waitForNodes(SheepLimits.clusterNodes)
        }
    }

    /// SIGSTOP / SIGCONT of the test server: its sockets stay open and nothing is answered until it resumes
    /// (holds a daemon's start-up in the middle of opening a LUN).
    func pause() { if let server, server.isRunning { Glibc.kill(server.pid, SIGSTOP) } }
    func resume() { if let server, server.isRunning { Glibc.kill(server.pid, SIGCONT) } }

    // MARK: Backing-store specs

    /// `unix:SOCKET:VDI[:SNAP]` or `tcp:HOST:PORT:VDI[:SNAP]`.
    func backingStore(_ vdi: String, snapshot: String? = nil, tcp: Bool = false) -> String {
        let base = tcp ? "tcp:\(tcpHost):\(tcpPort):\(vdi)" : "unix:\(socketPath):\(vdi)"
        return snapshot.map { "\(base):\($0)" } ?? base
    }

    // MARK: dog

    /// The dog executable, what goes before the subcommand, and how it reaches this service.
    private var dogCommand: (exe: URL, prefix: [String], connection: [String]) {
        get throws {
            switch kind {
            case .testServer:
                return (try testServerExecutable, ["dog"], ["--unix", socketPath])
            case .localCluster:
                guard let dog = findOnPath("dog") else { throw E2EError("dog is not on PATH") }
                return (dog, [], ["-a", "127.0.0.1", "-p", "\(tcpPort)"])
            }
        }
    }

    /// Runs `dog ARGS` (e.g. ["vdi", "create", "v", "64M"]) with stdin and stdout optionally redirected to
    /// files (binary data never goes through a String).
    func dog(_ args: [String], stdin: URL? = nil, stdout: URL? = nil,
             timeoutSeconds: Double = SheepLimits.dogTimeoutSeconds) throws -> ToolResult {
        let (exe, prefix, connection) = try dogCommand
        let argv = prefix + args + connection
        if stdin == nil && stdout == nil {
            return try runTool(exe, argv, logDir: scratch.url, timeoutSeconds: timeoutSeconds, label: "dog")
        }
        var line = "exec " + ([exe.path] + argv).map(shellQuote).joined(separator: " ")
        if let stdin { line += " < " + shellQuote(stdin.path) }
        if let stdout { line += " > " + shellQuote(stdout.path) }
        return try runTool(URL(fileURLWithPath: "/bin/sh"), ["-c", line], logDir: scratch.url,
                           timeoutSeconds: timeoutSeconds, label: "dog")
    }

    /// A dog command that must succeed.
    @discardableResult
    func dogMust(_ args: [String], stdin: URL? = nil, stdout: URL? = nil) throws -> ToolResult {
        let r = try dog(args, stdin: stdin, stdout: stdout)
        if !r.succeeded { throw E2EError("dog failed: \(r)") }
        return r
    }

    func createVDI(_ name: String, bytes: Int64) throws {
        try dogMust(["vdi", "create", name, "\(bytes)"])
    }

    /// `dog vdi snapshot -s TAG NAME` (while a LUN may be using NAME).
    func snapshotVDI(_ name: String, tag: String) throws {
        try dogMust(["vdi", "snapshot", "-s", tag, name])
    }

    /// `dog vdi read [-s SNAP] NAME` into a file: the whole VDI.
    func readVDI(_ name: String, snapshot: String? = nil, to file: URL) throws {
        try dogMust(["vdi", "read"] + (snapshot.map { ["-s", $0] } ?? []) + [name], stdout: file)
    }

    /// `dog vdi write NAME OFFSET LENGTH < file`.
    func writeVDI(_ name: String, offset: Int64, from file: URL) throws {
        try dogMust(["vdi", "write", name, "\(offset)", "\(fileSize(file))"], stdin: file)
    }

    func unlockVDI(_ name: String) throws {
        try dogMust(["vdi", "lock", "unlock", name])
    }

    /// `dog vdi list -r`: one line per VDI, `s|c|= NAME ID SIZE USED SHARED CTIME VID COPIES TAG SHIFT`.
    func listVDIs() throws -> [DogListEntry] {
        let r = try dogMust(["vdi", "list", "-r"])
        return r.stdout.split(whereSeparator: \.isNewline).compactMap { DogListEntry(String($0)) }
    }

    // MARK: Test server admin

    /// One admin command (`cut`, `restore`, `pause`, `resume`, `faults on|off|set SPEC`, `stats`); returns
    /// the reply after "ok".
    @discardableResult
    func admin(_ command: String) throws -> String {
        guard let port = adminPort, kind == .testServer else { throw E2EError("admin needs the test server") }
        let r = try runTool(try testServerExecutable, ["admin", "--port", "\(port)"] + command.split(separator: " ").map(String.init),
                            logDir: scratch.url, timeoutSeconds: SheepLimits.dogTimeoutSeconds, label: "sheep-admin")
        let reply = r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        guard r.succeeded, reply.hasPrefix("ok") else { throw E2EError("sheep admin '\(command)' failed: \(r)") }
        return String(reply.dropFirst(2)).trimmingCharacters(in: .whitespaces)
    }

    /// `stats`: connections open and objects stored.
    func stats() throws -> (connections: Int, objects: Int) {
        let fields = keyValueWords(try admin("stats"))
        guard let c = fields["connections"].flatMap(Int.init), let o = fields["objects"].flatMap(Int.init) else {
            throw E2EError("cannot parse the test server's stats")
        }
        return (c, o)
    }

    // MARK: A real local cluster

    /// Tests run in parallel; two clusters forming at the same moment lose a node now and then (seen on this
    /// machine: a node exits at start with nothing on stderr), so clusters form one at a time.
    private static let clusterStartLock = NSLock()

    private static func startLocalCluster(scratch: Scratch) throws -> SheepService {
        guard let sheep = findOnPath("sheep") else { throw E2EError("sheep is not on PATH") }
        clusterStartLock.lock()
        defer { clusterStartLock.unlock() }
        let ports = try freeTCPPorts(SheepLimits.clusterNodes)
        let s = SheepService(kind: .localCluster, scratch: scratch, socketPath: scratch.path("n0/sock").path,
                             tcpHost: "127.0.0.1", tcpPort: ports[0], options: SheepServerOptions())
        do {
            // The local driver's shared-memory file lives in the scratch directory, so parallel runs and
            // leftovers in /tmp/sheepdog_shm do not join each other's cluster.
            let shm = scratch.path("sheepdog_shm").path
            for (i, port) in ports.enumerated() {
                let dir = scratch.path("n\(i)")
                try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
                let args = ["-c", "local:\(shm)", "-z", "\(i)", "-p", "\(port)", "-f", dir.path]
                s.nodeArgs.append(args)
                s.nodes.append(try ToolProcess(sheep, args, logDir: scratch.url, label: "sheep\(i)"))
                // One at a time: nodes started together race on the local driver's lock files and one of
                // them may exit (seen on this machine); each joins before the next starts.
                try s.waitForNodes(i + 1)
            }
            try s.dogMust(["cluster", "format", "-c", "\(SheepLimits.clusterCopies)", "-l"])
            return s
        } catch {
            for n in s.nodes { n.terminate(graceSeconds: 2) }
            s.stopped = true
            throw error
        }
    }

    /// Polls `dog node list` (bounded, with backoff) until it lists `count` nodes.
    private func waitForNodes(_ count: Int) throws {
        var backoff = SheepLimits.clusterFirstBackoffSeconds
        var last = ""
        for _ in 0..<SheepLimits.clusterReadyAttempts {
            if let dead = nodes.firstIndex(where: { !$0.isRunning }) {
                throw E2EError("sheep node \(dead) exited while the cluster formed:\n\(tail(nodes[dead].stderrText))")
            }
            let r = try dog(["node", "list", "-r"])
            last = r.output
            if r.succeeded && r.stdout.split(whereSeparator: \.isNewline).count >= count { return }
            usleep(useconds_t(backoff * 1_000_000))
            backoff = min(backoff * 1.5, SheepLimits.clusterMaxBackoffSeconds)
        }
        throw E2EError("the local sheep cluster did not list \(count) nodes; last `dog node list`: \(last)")
    }
}

/// One line of `dog vdi list -r`.
struct DogListEntry: Equatable {
    let isSnapshot: Bool
    let name: String
    let snapshotID: Int
    /// Bytes of objects this VDI owns.
    let usedBytes: Int64
    let tag: String

    init?(_ line: String) {
        let f = line.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        // s NAME ID SIZE USED SHARED CTIME VID COPIES TAG SHIFT (TAG may be empty).
        guard f.count >= 10, ["s", "c", "="].contains(f[0]), let id = Int(f[2]), let used = Int64(f[4]) else { return nil }
        isSnapshot = f[0] == "s"
        name = f[1]
        snapshotID = id
        usedBytes = used
        tag = f[9]
    }
}

/// "connections=1 objects=2" -> ["connections": "1", "objects": "2"].
func keyValueWords(_ text: String) -> [String: String] {
    var out: [String: String] = [:]
    for word in text.split(separator: " ") {
        let kv = word.split(separator: "=", maxSplits: 1)
        if kv.count == 2 { out[String(kv[0])] = String(kv[1]) }
    }
    return out
}

/// An executable on PATH (or in sbin), or nil.
func findOnPath(_ name: String) -> URL? {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    for dir in path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin"] where !dir.isEmpty {
        let candidate = URL(fileURLWithPath: dir).appendingPathComponent(name)
        if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
    }
    return nil
}

/// Ports the kernel calls free right now (bound to port 0, read back, closed). Only for daemons that cannot
/// bind port 0 themselves (sheep); another process could take one in between, which would fail the start
/// loudly, not silently.
func freeTCPPorts(_ count: Int) throws -> [Int] {
    var fds: [Int32] = []
    defer { fds.forEach { close($0) } }
    var ports: [Int] = []
    for _ in 0..<count {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw E2EError("socket: errno \(errno)") }
        fds.append(fd)   // held open until all are chosen, so the same port is not handed out twice
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        a.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &a) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0
            }
        }
        guard ok else { throw E2EError("bind/getsockname: errno \(errno)") }
        ports.append(Int(UInt16(bigEndian: a.sin_port)))
    }
    return ports
}

/// A child process whose readiness is a set of lines on its stdout (read from a pipe), with stderr in a
/// log file. Like ToolProcess it is always waited for, and a reaped pid is never signalled.
final class LineReadyProcess {
    let command: String
    private let process = Process()
    private let exited = DispatchSemaphore(value: 0)
    private let stdoutPipe = Pipe()
    private let stderrURL: URL
    private var finished = false
    private var buffered = Data()

    init(_ executable: URL, _ args: [String], logDir: URL, label: String) throws {
        command = ([executable.lastPathComponent] + args).map(shellQuote).joined(separator: " ")
        stderrURL = logDir.appendingPathComponent("\(label)-\(UUID().uuidString.prefix(8)).stderr")
        _ = FileManager.default.createFile(atPath: stderrURL.path, contents: nil)
        let err = try FileHandle(forWritingTo: stderrURL)
        defer { try? err.close() }
        process.executableURL = executable
        process.arguments = args
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = stdoutPipe
        process.standardError = err
        let sem = exited
        process.terminationHandler = { _ in sem.signal() }
        do { try process.run() } catch { throw E2EError("could not start \(command): \(error)") }
    }

    var pid: Int32 { process.processIdentifier }
    var isRunning: Bool { !finished && process.isRunning }
    var stderrText: String { (try? String(contentsOf: stderrURL, encoding: .utf8)) ?? "" }

    /// Reads stdout lines until `done(lines)` holds. Blocks in poll(2) on the pipe, bounded by the deadline.
    func waitForLines(timeoutSeconds: Double, until done: ([String]) -> Bool) throws -> [String] {
        let fd = stdoutPipe.fileHandleForReading.fileDescriptor
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let lines = String(decoding: buffered, as: UTF8.self).split(whereSeparator: \.isNewline).map(String.init)
            if done(lines) { return lines }
            let left = deadline.timeIntervalSinceNow
            if left <= 0 {
                throw E2EError("`\(command)` printed no ready lines within \(timeoutSeconds) s; stdout: \(lines)\n\(tail(stderrText))")
            }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let rc = poll(&pfd, 1, Int32(left * 1000) + 1)
            if rc < 0 && errno == EINTR { continue }
            if rc <= 0 { continue }
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 {
                _ = exited.wait(timeout: .now() + 5)
                let status = process.isRunning ? "still running" : "exit status \(process.terminationStatus)"
                throw E2EError("`\(command)` closed its stdout before it was ready (\(status)); stdout: \(lines)\n\(tail(stderrText))")
            }
            buffered.append(contentsOf: chunk[0..<n])
        }
    }

    /// SIGTERM, a bounded wait, then SIGKILL. True if SIGTERM alone was enough (or it had already exited).
    @discardableResult
    func terminate(graceSeconds: Double) -> Bool {
        if finished { return true }
        if !process.isRunning {
            _ = exited.wait(timeout: .now() + killGraceSeconds)
            finished = true
            return true
        }
        Glibc.kill(pid, SIGTERM)
        if exited.wait(timeout: .now() + graceSeconds) == .success { finished = true; return true }
        Glibc.kill(pid, SIGKILL)
        _ = exited.wait(timeout: .now() + 30)
        finished = true
        return false
    }

    /// SIGKILL and wait: a crash, as far as clients can tell.
    func killNow() {
        if finished { return }
        if process.isRunning { Glibc.kill(pid, SIGKILL) }
        _ = exited.wait(timeout: .now() + 30)
        finished = true
    }

    deinit {
        if !finished && process.isRunning {
            Glibc.kill(pid, SIGKILL)
            _ = exited.wait(timeout: .now() + 30)
        }
    }
}
