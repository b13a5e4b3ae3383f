// ringtgt-admin: tgt-admin's options (-e, --update, --delete, --offline, --ready, --dump, -s, -c, -f, -C,
// --ignore-errors, -p, -v) over ringtgtd's control socket. The work is ConfigFile and ConfigUpdate;
// this is the command line and what it prints, with the socket passed in so tests can use a registry.

import ArgumentParser

public struct RingtgtAdminOptions: ParsableArguments {
    @Flag(name: [.customShort("e"), .customLong("execute")], help: "Add the targets of the configuration file that do not exist yet.")
    public var execute = false
    @Option(name: .customLong("update"), help: ArgumentHelp("Make the running targets match the file, changing only what differs.", valueName: "ALL|tid=N|NAME"))
    public var update: String?
    @Option(name: .customLong("delete"), help: ArgumentHelp("Delete targets that no initiator is connected to (all with -f).", valueName: "ALL|tid=N|NAME"))
    public var delete: String?
    @Option(name: .customLong("offline"), help: ArgumentHelp("Put targets offline (no new logins).", valueName: "ALL|tid=N|NAME"))
    public var offline: String?
    @Option(name: .customLong("ready"), help: ArgumentHelp("Put targets back to ready.", valueName: "ALL|tid=N|NAME"))
    public var ready: String?
    @Flag(name: [.customShort("s"), .customLong("show")], help: "Show the running targets (tgtadm --op show --mode target).")
    public var show = false
    @Flag(name: .customLong("dump"), help: "Print the running configuration in targets.conf syntax.")
    public var dump = false
    @Option(name: [.customShort("c"), .customLong("conf")], help: ArgumentHelp("The configuration file (default \(ConfigFile.defaultPath)).", valueName: "FILE"),
            completion: .file())
    public var conf: String?
    @Flag(name: .customLong("ignore-errors"), help: "Apply what works even when some lines fail.")
    public var ignoreErrors = false
    @Flag(name: [.customShort("f"), .customLong("force")], help: "Also delete or change targets and LUNs that are in use.")
    public var force = false
    @Flag(name: [.customShort("p"), .customLong("pretend")], help: "Check and print what would change; change nothing.")
    public var pretend = false
    @Flag(name: [.customShort("v"), .customLong("verbose")], help: "Print every change.")
    public var verbose = false
    @Option(name: [.customShort("C"), .customLong("control-port")], help: "Control port N: socket /run/ringtgt/socket.N.")
    public var controlPort: Int?
    @Option(name: .customLong("control-socket"), help: "Control socket path (overrides -C).", completion: .file())
    public var controlSocket: String?
    @Flag(name: [.customShort("V"), .customLong("version")], help: "Print the version and exit.")
    public var version = false

    public init() {}
}

struct RingtgtAdminCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: RingtgtAdmin.programName,
        abstract: "tgt-admin for ringtgtd: applies targets.conf (only what changed), dumps, deletes, offlines targets.")
    @OptionGroup var options: RingtgtAdminOptions
}

public enum RingtgtAdmin {
    public struct Output: Equatable {
        public var stdout = ""
        public var stderr = ""
        public var exitCode: Int32 = 0
    }

    public static let programName = "ringtgt-admin"

    /// Runs a ringtgt-admin command line; `send` delivers one request to the socket at a path.
    public static func run(_ arguments: [String], environment: [String: String] = [:],
                           send: @escaping (AdminRequest, String) -> AdminResponse) -> Output {
        var out = Output()
        let options: RingtgtAdminOptions
        do {
            // A command, so that --help and --generate-completion-script come from swift-argument-parser.
            // parseAsRoot answers --help with swift-argument-parser's help command rather than an error.
            guard let command = try RingtgtAdminCommand.parseAsRoot(arguments) as? RingtgtAdminCommand else {
                out.stdout = RingtgtAdminCommand.helpMessage() + "\n"
                return out
            }
            options = command.options
        } catch {
            let code = RingtgtAdminCommand.exitCode(for: error)
            let text = RingtgtAdminCommand.fullMessage(for: error) + "\n"
            if code == .success { out.stdout = text } else { out.stderr = text; out.exitCode = code.rawValue }
            return out
        }
        if options.version {
            out.stdout = RingtgtVersion.string + "\n"
            return out
        }
        let actions = [options.execute, options.update != nil, options.delete != nil, options.offline != nil,
                       options.ready != nil, options.show, options.dump].filter { $0 }.count
        guard actions == 1 else {
            out.stderr = "\(programName): give one of -e, --update, --delete, --offline, --ready, -s, --dump (see --help)\n"
            out.exitCode = 1
            return out
        }

        // The file may name the control port (tgt-admin's control-port); -C wins.
        var parsed: ConfigFile.Parsed?
        if options.execute || options.update != nil {
            let path = options.conf ?? ConfigFile.defaultPath
            do {
                parsed = try ConfigFile.parse(path: path)
            } catch is ConfigFile.Missing where options.conf == nil {
                out.stdout = "# \(path) does not exist: nothing to do\n"
                return out
            } catch is ConfigFile.Missing {
                out.stderr = "Config file \(path) not found. Exiting...\n"
                out.exitCode = 1
                return out
            } catch {
                out.stderr = "\(error)\n"
                out.exitCode = 1
                return out
            }
            if options.ignoreErrors { parsed!.configuration.ignoreErrors = true }
        }
        let port = options.controlPort ?? parsed?.configuration.controlPort ?? 0
        let socket = options.controlSocket ?? ControlEndpoint.path(controlPort: port, environment: environment)
        let executor: ConfigUpdate.Executor = { send($0, socket) }

        if options.show {
            return forward(executor(AdminRequest(mode: .target, op: .show)))
        }
        if options.dump {
            return forward(executor(AdminRequest(mode: .system, op: .show, name: Registry.configDumpName)))
        }
        if let parsed {
            var mode = ConfigUpdate.Mode.execute
            if let update = options.update { mode = .update(scope(update)) }
            let report = ConfigUpdate.run(parsed, mode: mode, force: options.force, pretend: options.pretend, executor: executor)
            return print(report, verbose: options.verbose || options.pretend)
        }
        // --delete / --offline / --ready act on running targets.
        let selector = options.delete ?? options.offline ?? options.ready!
        let dumpResponse = executor(AdminRequest(mode: .system, op: .show, name: Registry.configDumpName))
        guard dumpResponse.exitCode == 0 else { return forward(dumpResponse) }
        let running = ConfigFile.parse(dumpResponse.stdout).configuration.targets
        let selected: [ConfigFile.Target]
        switch scope(selector) {
        case .all: selected = running
        case .tid(let tid): selected = running.filter { $0.tid == tid }
        case .name(let name): selected = running.filter { $0.name.lowercased() == name.lowercased() }
        }
        if selected.isEmpty && selector != "ALL" {
            out.stdout = "# Target \(selector) does not exist!\n"
            return out
        }
        let connected = ConfigUpdate.connectedTargets(executor(AdminRequest(mode: .target, op: .show)).stdout)
        for t in selected {
            let request: AdminRequest
            if options.delete != nil {
                if connected.contains(t.name.lowercased()) && !options.force {
                    // tgt-admin's main_delete wording.
                    out.stdout += "# Target with tid \(t.tid ?? 0) (\(t.name)) is in use, it won't be deleted.\n"
                    continue
                }
                request = AdminRequest(mode: .target, op: .delete, tid: t.tid, force: options.force)
            } else {
                request = AdminRequest(mode: .target, op: .update, tid: t.tid, name: "state",
                                       value: options.offline != nil ? "offline" : "ready")
            }
            let response = executor(request)
            out.stdout += response.stdout
            out.stderr += response.stderr
            if response.exitCode != 0 { out.exitCode = response.exitCode }
        }
        return out
    }

    static func scope(_ selector: String) -> ConfigUpdate.Scope {
        if selector == "ALL" { return .all }
        if selector.hasPrefix("tid="), let tid = Int(selector.dropFirst(4)) { return .tid(tid) }
        return .name(selector)
    }

    static func forward(_ response: AdminResponse) -> Output {
        Output(stdout: response.stdout, stderr: response.stderr, exitCode: response.exitCode)
    }

    /// Notes as tgt-admin's "# ..." comments; every error and warning with its file and line.
    static func print(_ report: ConfigUpdate.Report, verbose: Bool) -> Output {
        var out = Output()
        if verbose { out.stdout += report.changes.map { "\($0)\n" }.joined() }
        out.stdout += report.notes.map { "# \($0)\n" }.joined()
        out.stderr += report.warnings.map { "warning: \($0)\n" }.joined()
        out.stderr += report.errors.map { "error: \($0)\n" }.joined()
        if !report.errors.isEmpty {
            out.stderr += report.applied ? "# ignore-errors: the lines above were skipped\n"
                : "# \(report.errors.count) error(s): nothing was changed\n"
            if !report.applied { out.exitCode = 1 }
        }
        return out
    }
}
