// ringtgtd: parses tgtd's everyday options and starts the cores and the control socket.
import ArgumentParser
import Glibc
import Logging
import Target

struct RingTgtd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ringtgtd",
        abstract: "iSCSI target on io_uring, one ring per core (drop-in for tgtd).")

    @Option(name: .customLong("iscsi"), help: ArgumentHelp(
        "iSCSI driver options, tgtd style: portal=HOST:PORT (repeatable; IPv6 as [ADDR]:PORT; port 0 = any), "
            + "nop_interval=SECONDS, nop_count=N.", valueName: "key=value[,key=value]"))
    var iscsi: [String] = []

    @Option(name: .customLong("nbd"), help: ArgumentHelp(
        "NBD server options: portal=HOST:PORT (repeatable; port 10809 if omitted; port 0 = any), unix=PATH (a "
            + "unix-domain socket, as qemu-nbd -k). Exports are the LUNs, named IQN/LUN.", valueName: "key=value[,key=value]"))
    var nbd: [String] = []

    @Option(name: .customLong("export"), help: ArgumentHelp(
        "Serve a backing store over NBD without a configuration, like qemu-nbd (repeatable): a sheepdog URI "
            + "(sheepdog:VDI, sheepdog:HOST:PORT:VDI[:SNAP], sheepdog+unix:///VDI?socket=PATH) or a path; NAME= "
            + "names the export. Listens on 0.0.0.0:10809 unless --nbd portal= or unix= says otherwise.",
        valueName: "[NAME=]SPEC"))
    var exports: [String] = []

    @Option(name: .customLong("metrics"), help: ArgumentHelp(
        "Serve Prometheus metrics (the --op stat counters) over HTTP at /metrics: portal=HOST:PORT (port 0 = any; "
            + "the ready line names the bound port). Off unless given.", valueName: "portal=HOST:PORT"))
    var metrics: String?

    @Option(name: .customLong("bstype"), help: "Backing store type for --export paths (rdwr, null, sheepdog).")
    var exportBSType: String = "rdwr"

    @Flag(name: [.customShort("r"), .customLong("read-only")], help: "Export the --export stores read-only (qemu-nbd's -r): writes get EPERM.")
    var exportReadOnly = false

    @Flag(name: [.short, .long], help: "Stay in the foreground, logging to stderr (the journal under systemd). Without it ringtgtd detaches like tgtd, logs to syslog, and returns once its portals and control socket answer.")
    var foreground = false

    @Option(name: [.customShort("p"), .customLong("pid-file")], help: "Write the daemon's pid to this file once it serves (removed when it stops); none by default, as tgtd.")
    var pidFile: String?

    @Option(name: [.customShort("C"), .customLong("control-port")], help: "Control port N: socket /run/ringtgt/socket.N.")
    var controlPort: Int = 0

    @Option(name: .customLong("control-socket"), help: "Control socket path (overrides -C).")
    var controlSocket: String?

    @Option(name: .customLong("sheep-claim-dir"), help: ArgumentHelp(
        "Where sheepdog LUNs record the shared locks this host's gateways hold, so that a gateway restarted after "
            + "a crash takes its node's stale lock back. Every ringtgtd on the host must use the same one "
            + "(default: $RINGTGT_SHEEP_CLAIM_DIR, else /run/ringtgt/sheep-claims).",
        valueName: "DIR"))
    var sheepClaimDirectory: String?

    @Option(name: .long, help: "Reactor cores (default: all online CPUs).")
    var cores: Int?

    @Option(name: .long, help: "I/O buffer slots per core.")
    var buffers: Int = 256

    @Option(name: .customLong("buffer-size"), help: "Bytes per buffer slot (caps MaxBurstLength and MaxRecvDataSegmentLength).")
    var bufferSize: Int = 262_144

    @Option(name: .customLong("max-connections"), help: "Connections per core.")
    var maxConnections: Int = 4096

    @Option(name: .customLong("max-login-per-address"), help: ArgumentHelp(
        "Connections not yet logged in that one source address may hold per core (up to cores times this in all)."))
    var maxLoginPerAddress: Int = 64

    @Option(name: .customLong("config"), help: "A targets.conf-style file applied at start and again, as a difference, on SIGHUP.")
    var configFile: String?

    @Option(name: .customLong("poll-us"), help: "Busy-poll each core's ring for this many microseconds after its last completion before sleeping (0 = never; lowers latency, costs CPU).")
    var pollMicroseconds: Int = 0

    @Flag(name: .customLong("tgt-defaults"), help: ArgumentHelp(
        "New LUNs start with tgt's values: vendor IET, no thin provisioning, LBPPBE from the backing file, "
            + "no optimal transfer granularity (migration from tgt; --params still override)."))
    var tgtDefaults = false

    @Flag(name: .customLong("lun0-controller"), help: ArgumentHelp(
        "Every target has a LUN 0 that is a storage array controller (device type 0x0c), as tgt creates it: "
            + "the admin cannot add or delete LUN 0, and initiators see tgt's LUN map."))
    var lun0Controller = false

    @Option(name: [.short, .long], help: "Debug level (0 = info, 1 = debug).")
    var debug: Int = 0

    @Flag(name: [.customShort("V"), .long], help: "Print the version and exit.")
    var version = false

    mutating func validate() throws {
        // Before the value checks: like tgtd -V, just the version, even beside a bad --cores.
        if version { throw CleanExit.message(RingtgtVersion.string) }
        if let c = cores, c < 1 || c > 256 { throw ValidationError("--cores must be between 1 and 256") }
        if bufferSize < 65536 || bufferSize % 4096 != 0 { throw ValidationError("--buffer-size must be a multiple of 4096, at least 65536") }
        if buffers < 8 { throw ValidationError("--buffers must be at least 8") }
        if maxConnections < 1 || maxConnections > 16384 { throw ValidationError("--max-connections must be 1...16384") }
        if maxLoginPerAddress < 1 { throw ValidationError("--max-login-per-address must be at least 1") }
        if pollMicroseconds < 0 || pollMicroseconds > 1_000_000 { throw ValidationError("--poll-us must be 0...1000000") }
    }

    func run() throws {
        // Started by a `ringtgtd` without -f to be the detached daemon: report to it on this pipe.
        let readiness = ReadinessPipe.inherited()
        readiness?.detachFromTerminal()
        let sink: LogSink = readiness != nil ? .syslog : DaemonLogFormat.foregroundSink()
        if sink == .syslog { DaemonLogHandler.openSyslog() }
        LoggingSystem.bootstrap { _ in DaemonLogHandler(sink: sink) }
        var logger = Logger(label: "ringtgtd")
        logger.logLevel = debug > 0 ? .debug : .info

        var portals: [Portal] = []
        var config = ReactorConfig()
        config.slotBytes = bufferSize
        config.slotCount = buffers
        config.maxConnections = maxConnections
        config.maxLoginConnectionsPerAddress = maxLoginPerAddress
        config.pollNanos = UInt64(pollMicroseconds) * 1000
        // nop_count is a number of intervals: applied after the loop, so the order of the options does not matter.
        var nopCount: UInt64? = nil
        for arg in iscsi {
            for item in arg.split(separator: ",") {
                let kv = item.split(separator: "=", maxSplits: 1).map(String.init)
                guard kv.count == 2 else { throw ValidationError("bad --iscsi option '\(item)'") }
                switch kv[0] {
                case "portal":
                    guard let p = Portal.parse(kv[1]) else { throw ValidationError("bad portal '\(kv[1])'") }
                    portals.append(p)
                case "nop_interval":
                    guard let v = UInt64(kv[1]), v <= ISCSITargetKeys.maxNopIntervalSeconds else {
                        throw ValidationError("bad nop_interval '\(kv[1])'")
                    }
                    config.nopIntervalSeconds = v
                case "nop_count":
                    guard let v = UInt64(kv[1]), v > 0, v <= ISCSITargetKeys.maxNopCount else {
                        throw ValidationError("bad nop_count '\(kv[1])'")
                    }
                    nopCount = v
                default:
                    throw ValidationError("unknown --iscsi option '\(kv[0])'")
                }
            }
        }
        if let nopCount { config.nopTimeoutSeconds = max(1, config.nopIntervalSeconds) * nopCount }
        var nbdPortals: [Portal] = []
        for arg in nbd {
            for item in arg.split(separator: ",") {
                let kv = item.split(separator: "=", maxSplits: 1).map(String.init)
                if kv.count == 2, kv[0] == "unix" {
                    guard !kv[1].isEmpty, kv[1].utf8.count <= Portal.unixPathCapacityBytes else {
                        throw ValidationError("bad NBD unix socket path '\(kv[1])' (1 to \(Portal.unixPathCapacityBytes) bytes)")
                    }
                    nbdPortals.append(Portal(unixPath: kv[1]))
                    continue
                }
                guard kv.count == 2, kv[0] == "portal" else { throw ValidationError("bad --nbd option '\(item)'") }
                guard let p = Portal.parse(kv[1], defaultPort: Portal.nbdDefaultPort) else {
                    throw ValidationError("bad NBD portal '\(kv[1])'")
                }
                nbdPortals.append(p)
            }
        }
        var exportOptions: [NBDExportOption] = []
        for e in exports {
            do {
                var o = try NBDExportOption.parse(e, defaultBSType: exportBSType)
                o.readOnly = exportReadOnly
                exportOptions.append(o)
            } catch { throw ValidationError("\(error)") }
        }
        if !exportOptions.isEmpty && nbdPortals.isEmpty {
            nbdPortals = [Portal(host: "0.0.0.0", port: Portal.nbdDefaultPort)]
        }
        // The iSCSI default portal only when no listener at all was asked for (an NBD-only daemon opens none).
        if portals.isEmpty && nbdPortals.isEmpty { portals = [Portal(host: "0.0.0.0", port: 3260)] }
        var metricsPortal: Portal? = nil
        if let metrics {
            let kv = metrics.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.count == 2, kv[0] == "portal" else { throw ValidationError("bad --metrics option '\(metrics)'") }
            guard let p = Portal.parse(kv[1]) else { throw ValidationError("bad metrics portal '\(kv[1])'") }
            metricsPortal = p
        }

        if !foreground && readiness == nil {
            // The options are valid: start the detached daemon and return once it serves (or say why not).
            throw ExitCode(Detach.runDetached(arguments: Array(CommandLine.arguments.dropFirst())))
        }

        let socketPath = controlSocket ?? ControlEndpoint.path(controlPort: controlPort)
        let coreCount = cores ?? Int(cpuCount())
        raiseDescriptorLimit(cores: coreCount, logger: logger)
        let runtime = Runtime(config: config, portals: portals, nbdPortals: nbdPortals, logger: logger)
        var registryOptions = Registry.Options()
        if tgtDefaults { registryOptions.lunDefaults = .tgt }
        registryOptions.controllerLUN0 = lun0Controller
        let opener = StoreOpener(runtime: runtime)
        opener.sheepClaimDirectory = sheepClaimDirectory
            ?? getenv("RINGTGT_SHEEP_CLAIM_DIR").map { String(cString: $0) } ?? StoreOpener.defaultSheepClaimDirectory
        let registry = Registry(fabric: runtime, opener: opener, options: registryOptions)
        let server = ControlServer(path: socketPath, registry: registry, logger: logger)
        var metricsServer: MetricsServer? = nil
        /// A start-up step that failed: log why (and tell a waiting parent), stop what started, exit 1.
        func orExit(_ what: String, _ step: () throws -> Void) throws {
            do {
                try step()
            } catch {
                logger.critical("\(what): \(error)")
                readiness?.failed("\(what): \(error)")
                metricsServer?.stop()
                server.stop()
                runtime.stop()
                throw ExitCode(1)
            }
        }
        // The control socket listens before anything else starts and answers once all is up: `ringtgtd -f &
        // ringtgtadm ...` finds the socket at once, and its request waits until the daemon is ready.
        try orExit("cannot start the control socket") { try server.listen() }
        try orExit("cannot start") { try runtime.start(cores: coreCount) }
        // `--op delete --mode system` stops the daemon as SIGTERM does (tgtd's system_active = 0).
        registry.shutdownHandler = {
            logger.info("--op delete --mode system: shutting down")
            kill(getpid(), SIGTERM)
        }
        if let configFile {
            // Every error names its file and line; a missing file is not fatal (ConfigReload).
            try orExit(configFile) { try ConfigReload.start(path: configFile, registry: registry, logger: logger) }
        }
        if !exportOptions.isEmpty {
            try orExit("--export") { try NBDExports.add(exportOptions, to: registry) }
        }
        // The portals accept only now: a login during start-up would meet a half-applied configuration
        // (an ACL already bound, its CHAP account not yet).
        try orExit("cannot open the portals") { try runtime.startAccepting() }
        // Before the control socket answers, so the ready line can name its port.
        if let metricsPortal {
            let m = MetricsServer(portal: metricsPortal) { registry.metricsText() }
            try orExit("cannot start the metrics endpoint") { try m.start() }
            metricsServer = m
        }
        // The control socket answers last: a test or script that polls it sees the configured targets and
        // exports, and portals that accept.
        try orExit("cannot start the control socket") { try server.serve() }
        if let pidFile {
            // As tgtd's create_pid_file: a pid file that cannot be written is logged, not fatal.
            do { try PidFile.write(pidFile) } catch { logger.error("\(error)") }
        }
        let where_ = runtime.boundPortals.isEmpty ? "none"
            : runtime.boundPortals.map { $0.description }.joined(separator: " ")
        let nbdWhere = runtime.boundNBDPortals.isEmpty ? ""
            : ", NBD " + runtime.boundNBDPortals.map { $0.description }.joined(separator: " ")
        let metricsWhere = metricsServer.map { ", metrics \($0.bound)" } ?? ""
        let ready = "ringtgtd ready: \(coreCount) core(s), portals \(where_)\(nbdWhere), control \(socketPath)"
        logger.info("\(ready)\(metricsWhere)")
        SystemdNotify.send("READY=1\nSTATUS=serving")
        readiness?.ready()

        // Wait for SIGTERM/SIGINT, then stop the cores (they close their sessions) and the control socket.
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGHUP)
        pthread_sigmask(SIG_BLOCK, &set, nil)
        var sig: Int32 = 0
        sigwait(&set, &sig)
        // SIGHUP (systemctl reload): apply the difference to --config, as ringtgt-admin --update ALL does.
        while sig == SIGHUP {
            ConfigReload.reload(path: configFile, registry: registry, logger: logger)
            sigwait(&set, &sig)
        }
        logger.info("signal \(sig): shutting down")
        SystemdNotify.send("STOPPING=1")
        server.stopServing()
        metricsServer?.stop()
        runtime.stop()
        // Sheepdog locks are the sheep node's, not the connection's: release them, or the VDI stays locked.
        for target in registry.currentSnapshot.targets {
            for lun in target.luns { if case .sheep(let vol) = lun.backing { vol.releaseLock() } }
        }
        if let pidFile { PidFile.remove(pidFile) }
        // Last: `ringtgtadm --op delete --mode system` returns when the socket's name is gone.
        server.stop()
        logger.info("stopped")
    }

    /// Descriptors beyond the connections: stores, listeners, sheep channels, rings, eventfds, the control socket.
    static let descriptorMarginCount = 1024

    /// Like tgtd (nr_file_adjust), raise RLIMIT_NOFILE at start: every core may hold maxConnections sockets
    /// (plus the ones waiting for an evicted connection's slot). Only up to the hard limit; short of what is
    /// needed, accept backs off when descriptors run out, and this says so once.
    func raiseDescriptorLimit(cores: Int, logger: Logger) {
        let need = rlim_t(cores * (maxConnections + Reactor.pendingAcceptCapacity) + RingTgtd.descriptorMarginCount)
        var rl = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &rl) == 0 else { return }
        if rl.rlim_cur >= need { return }
        let want = min(need, rl.rlim_max)   // RLIM_INFINITY is the largest rlim_t
        if want > rl.rlim_cur {
            var raised = rl
            raised.rlim_cur = want
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { rl.rlim_cur = want }
        }
        if rl.rlim_cur < need {
            let line = "open file limit is \(rl.rlim_cur) (hard limit \(rl.rlim_max)); \(cores) core(s) x "
                + "\(maxConnections) connections need \(need): raise LimitNOFILE= or ulimit -n"
            logger.warning("\(line)")
        }
    }

    func cpuCount() -> Int32 {
        let n = sysconf(Int32(_SC_NPROCESSORS_ONLN))
        return n > 0 ? Int32(n) : 1
    }
}

// Signals must be blocked before any thread starts, so sigwait() in main receives them.
var blockSet = sigset_t()
sigemptyset(&blockSet)
sigaddset(&blockSet, SIGTERM)
sigaddset(&blockSet, SIGINT)
sigaddset(&blockSet, SIGHUP)
pthread_sigmask(SIG_BLOCK, &blockSet, nil)
signal(SIGPIPE, SIG_IGN)
// tgtd's exit statuses: 0, or 1 for anything that keeps it from serving, a bad option included
// (ArgumentParser's own status for those is 64).
do {
    var command = try RingTgtd.parseAsRoot()
    try command.run()
} catch {
    if error is ExitCode || RingTgtd.exitCode(for: error) == .success { RingTgtd.exit(withError: error) }
    fputs(RingTgtd.fullMessage(for: error) + "\n", stderr)
    exit(1)
}
