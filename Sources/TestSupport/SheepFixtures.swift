// The sheep behind sheepdog LUNs, for the end-to-end harness and the perf runner: the project's
// sheep-protocol test server (`ringtgt-sheep-testserver`, always available), and a real local sheepdog
// cluster (when `sheep` and `dog` are on PATH).
//
// The test server is started with port 0 and is ready when it has printed its `listening ...` lines on
// stdout (read from a pipe, no polling). A real cluster is `sheep -c local:SHM -z N -p PORT -f DIR`
// processes, started one at a time, each ready when `dog node list` counts it, then
// `dog cluster format -c COPIES -l` (-l: locking on, which ringtgt's LOCK_VDI relies on).

import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Bounds, with their units.
public enum SheepFixtureLimits {
    /// The test server prints its addresses within this long of starting.
    public static let serverReadySeconds = 20.0
    /// Any single dog or admin command.
    public static let dogTimeoutSeconds = 60.0
    /// `dog node list` attempts while a real cluster forms, and the backoff between them.
    public static let clusterReadyAttempts = 80
    public static let clusterFirstBackoffSeconds = 0.05
    public static let clusterMaxBackoffSeconds = 0.5
    /// Nodes in the real local cluster and the copies `dog cluster format -c` asks for.
    public static let clusterNodes = 3
    public static let clusterCopies = 2
}

/// A started `ringtgt-sheep-testserver serve`, and the addresses it printed.
public enum SheepTestServerFixture {
    /// Starts `executable serve ARGS` and waits until it printed a line starting with each of `readyPrefixes`
    /// ("listening unix ", "listening tcp ", "admin tcp "). The process is stopped if it never gets there.
    public static func start(_ executable: URL, _ args: [String], logDir: URL, readyPrefixes: [String],
                             uniqueLogNames: Bool = true) throws -> (process: ToolProcess, lines: [String]) {
        let p = try ToolProcess(executable, ["serve"] + args, logDir: logDir, label: "sheep-testserver", stdout: .pipe,
                                uniqueLogNames: uniqueLogNames)
        do {
            let lines = try p.waitForLines(timeoutSeconds: SheepFixtureLimits.serverReadySeconds) { lines in
                readyPrefixes.allSatisfy { prefix in lines.contains { $0.hasPrefix(prefix) } }
            }
            return (p, lines)
        } catch {
            p.terminate(graceSeconds: 1)
            throw error
        }
    }

    /// The host and port of a `PREFIX HOST:PORT` line ("listening tcp 127.0.0.1:PORT",
    /// "listening tcp [::1]:PORT", "admin tcp 127.0.0.1:PORT").
    public static func address(_ lines: [String], _ prefix: String) -> (host: String, port: Int)? {
        guard let line = lines.first(where: { $0.hasPrefix(prefix) }) else { return nil }
        let hostPort = line.dropFirst(prefix.count)
        guard let colon = hostPort.lastIndex(of: ":"), let n = Int(hostPort[hostPort.index(after: colon)...])
        else { return nil }
        return (String(hostPort[..<colon]), n)
    }
}

/// `dog` pointed at one sheep service: the real dog over TCP to a cluster node, or the test server's dog-like
/// client (`ringtgt-sheep-testserver dog`) on its unix socket or TCP port; both take the same subcommands.
public struct DogCommand {
    public let executable: URL
    /// Before the subcommand (the test server's `dog`), and after it (how to reach the service).
    public let leading: [String]
    public let connection: [String]
    public let logDir: URL
    public var uniqueLogNames = true

    public init(executable: URL, leading: [String] = [], connection: [String], logDir: URL, uniqueLogNames: Bool = true) {
        self.executable = executable
        self.leading = leading
        self.connection = connection
        self.logDir = logDir
        self.uniqueLogNames = uniqueLogNames
    }

    /// Real dog against node `127.0.0.1:port`.
    public static func real(_ dog: URL, port: Int, logDir: URL, uniqueLogNames: Bool = true) -> DogCommand {
        DogCommand(executable: dog, connection: ["-a", "127.0.0.1", "-p", "\(port)"], logDir: logDir,
                   uniqueLogNames: uniqueLogNames)
    }

    /// The test server's client on its unix socket.
    public static func testServer(_ server: URL, unixSocket: String, logDir: URL, uniqueLogNames: Bool = true) -> DogCommand {
        DogCommand(executable: server, leading: ["dog"], connection: ["--unix", unixSocket], logDir: logDir,
                   uniqueLogNames: uniqueLogNames)
    }

    /// Runs `dog ARGS` (e.g. ["vdi", "create", "v", "64M"]) with stdin and stdout optionally redirected to files
    /// (binary data never goes through a String).
    public func run(_ args: [String], stdin: URL? = nil, stdout: URL? = nil,
                    timeoutSeconds: Double = SheepFixtureLimits.dogTimeoutSeconds) throws -> ToolResult {
        let argv = leading + args + connection
        if stdin == nil && stdout == nil {
            return try runTool(executable, argv, logDir: logDir, timeoutSeconds: timeoutSeconds, label: "dog",
                               uniqueLogNames: uniqueLogNames)
        }
        var line = "exec " + ([executable.path] + argv).map(shellQuote).joined(separator: " ")
        if let stdin { line += " < " + shellQuote(stdin.path) }
        if let stdout { line += " > " + shellQuote(stdout.path) }
        return try runTool(URL(fileURLWithPath: "/bin/sh"), ["-c", line], logDir: logDir, timeoutSeconds: timeoutSeconds,
                           label: "dog", uniqueLogNames: uniqueLogNames)
    }

    /// A dog command that must succeed.
    @discardableResult
    public func must(_ args: [String], stdin: URL? = nil, stdout: URL? = nil) throws -> ToolResult {
        let r = try run(args, stdin: stdin, stdout: stdout)
        if !r.succeeded { throw FixtureError("dog failed: \(r)") }
        return r
    }
}

/// A real local sheepdog cluster of `SheepFixtureLimits.clusterNodes` nodes under `dir`. Its owner stops it.
public final class SheepLocalCluster {
    public let sheep: URL
    public let dog: URL
    public let dir: URL
    public let logDir: URL
    /// Each node's TCP port; LUNs use node 0 (its unix socket, or this port).
    public let ports: [Int]
    public private(set) var nodes: [ToolProcess] = []
    /// Each node's command line, for a restart.
    private var nodeArgs: [[String]] = []
    private let uniqueLogNames: Bool

    /// Node 0's unix socket: `unix:SOCKET:VDI`.
    public var socketPath: String { dir.appendingPathComponent("n0/sock").path }

    /// Clusters forming at the same moment lose a node now and then (seen on this machine: a node exits at
    /// start with nothing on stderr), so clusters form one at a time.
    private static let startLock = NSLock()

    private init(sheep: URL, dog: URL, dir: URL, logDir: URL, ports: [Int], uniqueLogNames: Bool) {
        self.sheep = sheep
        self.dog = dog
        self.dir = dir
        self.logDir = logDir
        self.ports = ports
        self.uniqueLogNames = uniqueLogNames
    }

    /// Starts the nodes one after another, each once `dog node list` counts it (nodes started together race
    /// on the local driver's lock files and one of them may exit), then formats the cluster. The local
    /// driver's shared-memory file lives in `dir`, so parallel runs and leftovers in /tmp/sheepdog_shm do
    /// not join each other's cluster. Whatever started is stopped when this throws.
    public static func start(sheep: URL, dog: URL, dir: URL, logDir: URL,
                             uniqueLogNames: Bool = true) throws -> SheepLocalCluster {
        startLock.lock()
        defer { startLock.unlock() }
        let c = SheepLocalCluster(sheep: sheep, dog: dog, dir: dir, logDir: logDir,
                                  ports: try freeTCPPorts(SheepFixtureLimits.clusterNodes), uniqueLogNames: uniqueLogNames)
        do {
            let shm = dir.appendingPathComponent("sheepdog_shm").path
            for (i, port) in c.ports.enumerated() {
                let nodeDir = dir.appendingPathComponent("n\(i)")
                try FileManager.default.createDirectory(at: nodeDir, withIntermediateDirectories: true)
                let args = ["-c", "local:\(shm)", "-z", "\(i)", "-p", "\(port)", "-f", nodeDir.path]
                c.nodeArgs.append(args)
                c.nodes.append(try ToolProcess(sheep, args, logDir: logDir, label: "sheep\(i)", uniqueLogNames: uniqueLogNames))
                try c.waitForNodes(i + 1)
            }
            let f = try c.dog(["cluster", "format", "-c", "\(SheepFixtureLimits.clusterCopies)", "-l"])
            if !f.succeeded { throw FixtureError("dog cluster format failed: \(f)") }
            return c
        } catch {
            c.stop(graceSeconds: 2)
            throw error
        }
    }

    /// dog against node `node`.
    public func dogCommand(node: Int = 0) -> DogCommand {
        .real(dog, port: ports[node], logDir: logDir, uniqueLogNames: uniqueLogNames)
    }

    /// `dog ARGS -a 127.0.0.1 -p PORT` against node `node`.
    public func dog(_ args: [String], node: Int = 0,
                    timeoutSeconds: Double = SheepFixtureLimits.dogTimeoutSeconds) throws -> ToolResult {
        try dogCommand(node: node).run(args, timeoutSeconds: timeoutSeconds)
    }

    /// Polls `dog node list` on `node` (bounded, with backoff) until it lists `count` nodes, or exactly
    /// `count` with `exactly`. Fails at once when one of the nodes this fixture runs has exited.
    public func waitForNodes(_ count: Int, askingNode node: Int = 0, exactly: Bool = false) throws {
        var backoff = SheepFixtureLimits.clusterFirstBackoffSeconds
        var last = ""
        for _ in 0..<SheepFixtureLimits.clusterReadyAttempts {
            if !exactly, let dead = nodes.firstIndex(where: { !$0.isRunning }) {
                throw FixtureError("sheep node \(dead) exited while the cluster formed:\n\(tail(nodes[dead].stderrText))")
            }
            let r = try dog(["node", "list", "-r"], node: node)
            last = r.output
            let listed = r.stdout.split(whereSeparator: \.isNewline).count
            if r.succeeded && (exactly ? listed == count : listed >= count) { return }
            usleep(useconds_t(backoff * 1_000_000))
            backoff = min(backoff * 1.5, SheepFixtureLimits.clusterMaxBackoffSeconds)
        }
        throw FixtureError("node \(node) of the local sheep cluster did not list \(count) nodes; last `dog node list`: \(last)")
    }

    /// Starts node 0 again on its directory and port after it died, and waits until the cluster has all its
    /// nodes. Real sheep panics (node_insert: "insert duplicate") when a node rejoins before the others saw
    /// it leave, so this first waits until node 1 lists the cluster without it.
    public func restartNode0() throws {
        if nodes[0].isRunning { throw FixtureError("restart of node 0 while it still runs") }
        try waitForNodes(ports.count - 1, askingNode: 1, exactly: true)
        nodes[0] = try ToolProcess(sheep, nodeArgs[0], logDir: logDir, label: "sheep0-restarted", uniqueLogNames: uniqueLogNames)
        try waitForNodes(ports.count)
    }

    /// SIGTERM to every node, then SIGKILL after `graceSeconds`.
    public func stop(graceSeconds: Double) {
        for n in nodes { n.signal(SIGTERM) }
        for n in nodes { n.terminate(graceSeconds: graceSeconds) }
    }
}
