// The sheep side of the sheepdog end-to-end tests: either the project's sheep-protocol test server
// (`ringtgt-sheep-testserver`, test support, not sheepdog) or, when `sheep` and `dog` are on PATH, a real
// 3-node local sheepdog cluster. Both are driven through a dog CLI with the same subcommands
// (`vdi create|snapshot|read|write|list|lock unlock`), so every test body runs unchanged against either.
//
// The test server is started with port 0 and a unix socket in its own scratch directory; a real cluster
// lives in the scratch directory too. TestSupport's sheep fixtures start both and say when they are ready.
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

/// Bounds, with their units (the fixtures' own are `SheepFixtureLimits`).
enum SheepLimits {
    /// How long a clean SIGTERM shutdown may take before SIGKILL.
    static let stopGraceSeconds = 10.0
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
    private var server: ToolProcess?
    private var cluster: SheepLocalCluster?
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
        var args = ["--listen", options.listenHost, "--port", "\(tcpPort)", "--unix", socketPath,
                    "--admin-port", "0", "--seed", "\(options.seed)"]
        if options.persistent { args += ["--data-dir", scratch.path("sheep-data").path] }
        if let f = options.faults { args += ["--faults", f] }
        if let o = options.order { args += ["--order", o] }
        let (p, lines) = try SheepTestServerFixture.start(try testServerExecutable, args, logDir: scratch.url,
                                                          readyPrefixes: ["listening unix ", "admin tcp ", "listening tcp "])
        guard let tcp = SheepTestServerFixture.address(lines, "listening tcp "),
              let admin = SheepTestServerFixture.address(lines, "admin tcp ") else {
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
        cluster?.stop(graceSeconds: SheepLimits.stopGraceSeconds)
        scratch.remove()
    }

    deinit { if !stopped { server?.terminate(graceSeconds: 1); cluster?.stop(graceSeconds: 1) } }

    /// The test server's stderr (its log), for failure messages.
    var log: String { server?.stderrText ?? (cluster?.nodes ?? []).map { $0.stderrText }.joined(separator: "\n") }

    // MARK: Crashing and restarting

    /// SIGKILL: every connection drops at once and replies in flight are lost. The test server keeps what
    /// it stored in its data directory (`persistent`); of a real cluster, node 0 (whose socket LUNs use)
    /// dies and the other two carry on.
    func kill() throws {
        if let server {
            server.killNow()
        } else if let node = cluster?.nodes.first {
            node.killNow()
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
            guard let cluster else { throw E2EError("no node 0 to restart") }
            try cluster.restartNode0()
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

    /// dog (real) or the test server's dog-like client, pointed at this service.
    private var dogCommand: DogCommand {
        get throws {
            switch kind {
            case .testServer:
                return .testServer(try testServerExecutable, unixSocket: socketPath, logDir: scratch.url)
            case .localCluster:
                guard let dog = findOnPath("dog") else { throw E2EError("dog is not on PATH") }
                return .real(dog, port: tcpPort, logDir: scratch.url)
            }
        }
    }

    /// Runs `dog ARGS` (e.g. ["vdi", "create", "v", "64M"]) with stdin and stdout optionally redirected to
    /// files (binary data never goes through a String).
    func dog(_ args: [String], stdin: URL? = nil, stdout: URL? = nil,
             timeoutSeconds: Double = SheepFixtureLimits.dogTimeoutSeconds) throws -> ToolResult {
        try dogCommand.run(args, stdin: stdin, stdout: stdout, timeoutSeconds: timeoutSeconds)
    }

    /// A dog command that must succeed.
    @discardableResult
    func dogMust(_ args: [String], stdin: URL? = nil, stdout: URL? = nil) throws -> ToolResult {
        try dogCommand.must(args, stdin: stdin, stdout: stdout)
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
                            logDir: scratch.url, timeoutSeconds: SheepFixtureLimits.dogTimeoutSeconds, label: "sheep-admin")
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

    private static func startLocalCluster(scratch: Scratch) throws -> SheepService {
        guard let sheep = findOnPath("sheep"), let dog = findOnPath("dog") else {
            throw E2EError("sheep and dog are not both on PATH")
        }
        let cluster = try SheepLocalCluster.start(sheep: sheep, dog: dog, dir: scratch.url, logDir: scratch.url)
        let s = SheepService(kind: .localCluster, scratch: scratch, socketPath: cluster.socketPath,
                             tcpHost: "127.0.0.1", tcpPort: cluster.ports[0], options: SheepServerOptions())
        s.cluster = cluster
        return s
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
