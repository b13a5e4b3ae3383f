// Command line: `ringtgt-sheep-testserver [serve] …` runs the server; `… dog vdi …` is a dog-like client;
// `… admin COMMAND` talks to a running server's admin port.

#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Logging
import SheepProtocol

@main
struct SheepTestServerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ringtgt-sheep-testserver",
        abstract: "Test support: a sheep-protocol server that behaves like a small sheepdog cluster, and a dog-like client.",
        subcommands: [Serve.self, Dog.self, Admin.self, Bench.self],
        defaultSubcommand: Serve.self
    )
}

extension ReplyOrder: ExpressibleByArgument {}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the server until SIGTERM or SIGINT. SIGUSR1 toggles the fault plan, SIGUSR2 cuts / restores the service.")

    @Option(help: "Address the TCP listener binds.") var listen = "127.0.0.1"
    @Option(help: "TCP port (0: any free port). Without --port and --unix the server listens on 7000.") var port: Int?
    @Option(help: "Also (or only) listen on this unix socket.") var unix: String?
    @Option(help: "Admin line-protocol port on 127.0.0.1 (0: any free port).") var adminPort: Int?
    @Option(help: "Write the listening addresses here once ready (atomically).") var readyFile: String?
    @Option(help: "Keep objects and the VDI table under this directory (survives restarts). Default: memory.") var dataDir: String?
    @Option(help: "Reply order: fifo, random (default) or reorder (deterministic windows).") var order: ReplyOrder = .random
    @Option(help: "Requests per scheduling window in reorder mode.") var window = 8
    @Option(help: "Idle milliseconds after which a partial reorder window runs.") var windowIdleMs = 20
    @Option(help: "Seed for reply order and faults.") var seed: UInt64 = 1
    @Option(help: "Fault plan, e.g. 'drop-after=100,delay=0.1:5,error=WAIT_FOR_JOIN:0.05'.") var faults: String?
    @Flag(help: "Start with the fault plan disabled (enable with SIGUSR1 or 'faults on').") var faultsOff = false
    @Option(help: "Cluster default copies (dog cluster format -c).") var copies: UInt8 = SheepWire.defaultCopies
    @Option(help: "Cluster default object size shift (dog cluster format -z).") var blockSizeShift: UInt8 = SheepWire.defaultBlockSizeShift
    @Flag(help: "Cluster formatted without locking: LOCK_VDI behaves like GET_VDI_INFO.") var noLock = false
    @Option(help: "Sheep nodes in the cluster (1-8): node 0 on --port/--unix, node N on a free port and --unix PATH.N.") var nodes = 1
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.") var logLevel = "notice"

    func validate() throws {
        if let port, !(0...65535).contains(port) { throw ValidationError("--port must be 0…65535") }
        if let adminPort, !(0...65535).contains(adminPort) { throw ValidationError("--admin-port must be 0…65535") }
        if window < 1 { throw ValidationError("--window must be at least 1") }
        if !(1...ServerOptions.maxNodes).contains(nodes) { throw ValidationError("--nodes must be 1…\(ServerOptions.maxNodes)") }
        if blockSizeShift < SheepWire.minBlockSizeShift || blockSizeShift > 26 {
            throw ValidationError("--block-size-shift must be 20…26 (objects up to 64 MiB)")
        }
        if Logger.Level(rawValue: logLevel) == nil { throw ValidationError("unknown --log-level \(logLevel)") }
    }

    func run() throws {
        let level = Logger.Level(rawValue: logLevel) ?? .notice
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        var options = ServerOptions()
        options.listenHost = listen
        options.tcpPort = port ?? (unix == nil ? Int(SheepWire.defaultPort) : nil)
        options.unixPath = unix
        options.adminPort = adminPort
        options.order = order
        options.reorderWindow = window
        options.reorderIdleMilliseconds = windowIdleMs
        options.seed = seed
        options.faults = try FaultPlan.parse(faults ?? "")
        options.faultsEnabled = !faultsOff
        options.cluster.copies = copies
        options.cluster.blockSizeShift = blockSizeShift
        options.cluster.useLock = !noLock
        options.dataDirectory = dataDir
        options.nodes = nodes

        // Signals are taken synchronously by this thread; every thread the server starts inherits the mask.
        var set = sigset_t()
        sigemptyset(&set)
        for s in [SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGHUP] { sigaddset(&set, s) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        signal(SIGPIPE, SIG_IGN)

        let server = try SheepTestServer(options: options)
        try server.start()
        var lines: [String] = []
        if let p = server.tcpPort {
            let host = listen.contains(":") ? "[\(listen)]" : listen
            lines.append("listening tcp \(host):\(p)")
        }
        if let u = server.unixPath { lines.append("listening unix \(u)") }
        for node in 1..<nodes {
            let host = listen.contains(":") ? "[\(listen)]" : listen
            if let p = server.tcpPort(node: node) { lines.append("node \(node) tcp \(host):\(p)") }
            if let u = server.unixPath(node: node) { lines.append("node \(node) unix \(u)") }
        }
        if let a = server.adminPort { lines.append("admin tcp 127.0.0.1:\(a)") }
        let text = lines.joined(separator: "\n") + "\n"
        if let readyFile { try writeFileAtomically(readyFile, text) }
        print(text, terminator: "")
        fflush(stdout)

        var cut = false
        while true {
            var sig: Int32 = 0
            if sigwait(&set, &sig) != 0 { continue }
            switch sig {
            case SIGUSR1:
                server.setFaultsEnabled(!server.areFaultsEnabled)
                server.log.notice("faults \(server.areFaultsEnabled ? "enabled" : "disabled")")
            case SIGUSR2:
                if cut {
                    do { try server.restore(); cut = false; server.log.notice("service restored") } catch {
                        server.log.error("restore failed: \(error)")
                    }
                } else {
                    server.cut()
                    cut = true
                    server.log.notice("service cut")
                }
            default:
                server.stop()
                return
            }
        }
    }
}

// MARK: - dog

struct DogConnectionOptions: ParsableArguments {
    @Option(name: [.customShort("a"), .long], help: "Sheep address.") var address = "localhost"
    @Option(name: [.customShort("p"), .long], help: "Sheep port.") var port: UInt16 = SheepWire.defaultPort
    @Option(help: "Connect to this unix socket instead of TCP.") var unix: String?

    func connect() throws -> DogOperations {
        let endpoint: SheepBackingSpec.Endpoint = unix.map { .unix(path: $0) } ?? .tcp(host: address, port: port)
        return DogOperations(client: try SheepClient(endpoint: endpoint))
    }
}

/// One VDI, or one of its snapshots (`-s`), on one sheep: what most `dog vdi` subcommands name.
struct DogVDIOptions: ParsableArguments {
    @Option(name: [.customShort("s"), .long], help: "Snapshot id or tag.") var snapshot: String?
    @Argument var name: String
    @OptionGroup var connection: DogConnectionOptions

    var snapshotID: SheepBackingSpec.Snapshot { parseDogSnapshot(snapshot) }
}

struct Dog: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "A dog-like client for the subset the tests use.",
                                                    subcommands: [Vdi.self])
}

/// Runs a dog operation; failures print like dog and exit 1.
func dogRun(_ body: () throws -> Void) throws {
    do { try body() } catch let e as SheepClientError {
        FileHandleStderr.write("\(e)\n")
        throw ExitCode.failure
    } catch let e as SheepVDINameError {
        FileHandleStderr.write("\(e)\n")
        throw ExitCode.failure
    }
}

enum FileHandleStderr {
    static func write(_ s: String) {
        var bytes = Array(s.utf8)
        bytes.withUnsafeMutableBytes { _ = try? writeAll(2, $0.baseAddress!, $0.count) }
    }
}

func parseSizeArgument(_ s: String, _ what: String) throws -> UInt64 {
    guard let v = parseDogSize(s) else {
        throw ValidationError("Invalid size '\(s)' for \(what). You may use B, K, M, G, T or P suffixes.")
    }
    return v
}

struct Vdi: ParsableCommand {
    static let configuration = CommandConfiguration(
        subcommands: [Create.self, Snapshot.self, Clone.self, Delete.self, List.self, Read.self, Write.self, Lock.self,
                      Object.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "dog vdi create NAME SIZE")
        @Argument var name: String
        @Argument var size: String
        @Option(name: [.customShort("c"), .long], help: "Copies (0: cluster default).") var copies: UInt8 = 0
        @Option(name: [.customShort("z"), .long], help: "Object size shift (0: cluster default).") var blockSizeShift: UInt8 = 0
        @Flag(name: [.customShort("y"), .long], help: "Create a hyper volume (B-tree index).") var hyper = false
        @OptionGroup var connection: DogConnectionOptions
        func run() throws {
            let bytes = try parseSizeArgument(size, "VDI size")
            try dogRun {
                try connection.connect().create(name: name, size: bytes, copies: copies, blockSizeShift: blockSizeShift,
                                                hyperVolume: hyper)
            }
        }
    }

    struct Snapshot: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "dog vdi snapshot -s TAG NAME")
        @Option(name: [.customShort("s"), .long], help: "Snapshot tag.") var snapshot = ""
        @Flag(name: [.customShort("v"), .long]) var verbose = false
        @Argument var name: String
        @OptionGroup var connection: DogConnectionOptions
        func run() throws {
            if case .id = parseDogSnapshot(snapshot) {
                throw ValidationError("Please specify a non-integer value for a snapshot tag name")
            }
            try dogRun {
                let (w, s) = try connection.connect().snapshot(name: name, tag: snapshot)
                if verbose { print("new VID of original VDI: \(hex(w)), VDI ID of newly created snapshot: \(hex(s))") }
            }
        }
    }

    struct Clone: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "dog vdi clone -s SNAP SRC DST")
        @Option(name: [.customShort("s"), .long], help: "Snapshot id or tag.") var snapshot: String?
        @Argument var source: String
        @Argument var destination: String
        @OptionGroup var connection: DogConnectionOptions
        func run() throws {
            let snap = parseDogSnapshot(snapshot)
            guard snap != .working else { throw ValidationError("Only snapshot VDIs can be cloned; specify -s") }
            try dogRun { try connection.connect().clone(source: source, snapshot: snap, destination: destination) }
        }
    }

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "dog vdi delete [-s SNAP] NAME")
        @OptionGroup var vdi: DogVDIOptions
        func run() throws {
            try dogRun { try vdi.connection.connect().delete(name: vdi.name, snapshot: vdi.snapshotID) }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "dog vdi list [-r]")
        @Flag(name: [.customShort("r"), .long], help: "Raw output (as dog -r).") var raw = false
        @OptionGroup var connection: DogConnectionOptions
        func run() throws {
            try dogRun {
                let entries = try connection.connect().list()
                if !raw {
                    print("  Name        Id    Size    Used  Shared    Creation time   VDI id  Copies  Tag   Block Size Shift")
                }
                for e in entries {
                    if raw { print(e.rawLine); continue }
                    let kind = e.isSnapshot ? "s" : (e.isClone ? "c" : " ")
                    print("\(kind) \(pad(e.name, 8)) \(lpad("\(e.snapID)", 5)) \(lpad(human(e.size), 7)) \(lpad(human(e.usedBytes), 7)) \(lpad(human(e.sharedBytes), 7)) \(e.createSeconds)  \(lpad(hex(e.vid), 7)) \(lpad("\(e.copies)", 6)) \(lpad(e.tag, 13)) \(lpad("\(e.blockSizeShift)", 3))")
                }
            }
        }
        private func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
        private func lpad(_ s: String, _ n: Int) -> String { s.count >= n ? s : String(repeating: " ", count: n - s.count) + s }
        private func human(_ v: UInt64) -> String {
            let units = ["B", "KB", "MB", "GB", "TB", "PB"]
            var x = Double(v), u = 0
            while x >= 1024 && u < units.count - 1 { x /= 1024; u += 1 }
            let tenths = Int((x * 10).rounded())
            return "\(tenths / 10).\(tenths % 10) \(units[u])"
        }
    }

    struct Read: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "dog vdi read [-s SNAP] NAME [OFFSET [LEN]] (to stdout)")
        @OptionGroup var vdi: DogVDIOptions
        @Argument var offset: String?
        @Argument var length: String?
        func run() throws {
            let off = try offset.map { try parseSizeArgument($0, "offset") } ?? 0
            let len = try length.map { try parseSizeArgument($0, "length") }
            try dogRun {
                try vdi.connection.connect().read(name: vdi.name, snapshot: vdi.snapshotID, offset: off, length: len) { piece in
                    var p = piece
                    try p.withUnsafeMutableBytes { if $0.count > 0 { try writeAll(1, $0.baseAddress!, $0.count) } }
                }
            }
        }
    }

    struct Write: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "dog vdi write NAME [OFFSET [LEN]] (from stdin)")
        @Argument var name: String
        @Argument var offset: String?
        @Argument var length: String?
        @OptionGroup var connection: DogConnectionOptions
        func run() throws {
            let off = try offset.map { try parseSizeArgument($0, "offset") } ?? 0
            let len = try length.map { try parseSizeArgument($0, "length") }
            var data: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 1 << 16)
            while len.map({ UInt64(data.count) < $0 }) ?? true {
                let want = min(chunk.count, len.map { Int($0 - UInt64(data.count)) } ?? chunk.count)
                let n = chunk.withUnsafeMutableBytes { Glibc.read(0, $0.baseAddress!, want) }
                if n < 0 { if errno == EINTR { continue }; throw ValidationError("Failed to read from stdin: \(errnoString())") }
                if n == 0 { break }
                data.append(contentsOf: chunk[0..<n])
            }
            // Like dog: a short stdin ends the write after what was read.
            try dogRun { try connection.connect().write(name: name, offset: off, data: data) }
        }
    }

    struct Object: ParsableCommand {
        static let configuration = CommandConfiguration(subcommands: [Map.self])
        struct Map: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "dog vdi object map [-i INDEX] [-s SNAP] NAME")
            @Option(name: [.customShort("i"), .long], help: "One object index.") var index: UInt32?
            @OptionGroup var vdi: DogVDIOptions
            func run() throws {
                try dogRun {
                    let map = try vdi.connection.connect().objectMap(name: vdi.name, snapshot: vdi.snapshotID, index: index)
                    // dog's format: "%08" PRIu64 " %8" PRIx32.
                    print("Index       VID")
                    for (idx, vid) in map {
                        let i = String(idx), v = hex(vid)
                        print(String(repeating: "0", count: max(0, 8 - i.count)) + i + " "
                              + String(repeating: " ", count: max(0, 8 - v.count)) + v)
                    }
                }
            }
        }
    }

    struct Lock: ParsableCommand {
        static let configuration = CommandConfiguration(subcommands: [Unlock.self])
        struct Unlock: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "dog vdi lock unlock [-s SNAP] NAME")
            @OptionGroup var vdi: DogVDIOptions
            func run() throws {
                try dogRun { try vdi.connection.connect().unlock(name: vdi.name, snapshot: vdi.snapshotID) }
            }
        }
    }
}

// MARK: - admin

struct Admin: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send one admin command (ping, faults on|off|set SPEC, cut, restore, pause, resume, lock on|off, stats) to a running server.")
    @Option(help: "The server's admin port (on 127.0.0.1).") var port: UInt16
    @Argument(parsing: .remaining) var command: [String]

    func run() throws {
        let reply = try adminCommand(port: port, command.joined(separator: " "))
        print(reply)
        if !reply.hasPrefix("ok") { throw ExitCode.failure }
    }
}

/// Sends one admin line and returns the reply line.
func adminCommand(port: UInt16, _ line: String) throws -> String {
    let fd = try SheepClient.connect(.tcp(host: "127.0.0.1", port: port))
    defer { close(fd) }
    var bytes = Array((line + "\n").utf8)
    try bytes.withUnsafeMutableBytes { try writeAll(fd, $0.baseAddress!, $0.count) }
    var reply: [UInt8] = []
    var b: UInt8 = 0
    while true {
        let n = read(fd, &b, 1)
        if n < 0 { if errno == EINTR { continue }; throw SysError("read admin reply") }
        if n == 0 || b == 0x0A { break }
        reply.append(b)
    }
    return String(decoding: reply, as: UTF8.self)
}
