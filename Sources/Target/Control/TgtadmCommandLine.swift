// ringtgtadm's command line: tgtadm's options (usr/tgtadm.c long_options and short_options
// "dhVL:o:m:t:s:c:l:n:v:b:E:f:y:T:I:Q:u:p:H:F:P:B:Y:O:C:S:") and tgtadm's client-side checks
// (verify_mode_params and the per-mode rules in main), with tgtadm's messages and exit statuses.
// Two differences: -F/--force and -O/--outgoing take no argument (tgt's getopt string gives them one by
// mistake), and --params is also accepted with `--op new --mode logicalunit`.

import ArgumentParser

/// Where ringtgtadm finds the daemon's control socket.
public enum ControlEndpoint {
    /// Like tgt's /var/run/tgtd/socket.N.
    public static let defaultDirectory = "/run/ringtgt"
    /// Like tgt's TGT_IPC_SOCKET: a path prefix to which ".N" is appended.
    public static let environmentVariable = "RINGTGT_IPC_SOCKET"

    /// The socket for control port `port`: "<prefix>.<port>", prefix from the environment or the default.
    public static func path(controlPort port: Int, environment: [String: String] = [:]) -> String {
        let prefix = environment[environmentVariable] ?? "\(defaultDirectory)/socket"
        return "\(prefix).\(port)"
    }
}

/// tgtadm's options, named as tgtadm names them. Numbers stay text so that a bad one gets tgtadm's message.
public struct TgtadmOptions: ParsableArguments {
    @Flag(name: [.customShort("d"), .customLong("debug")]) public var debug = false
    @Flag(name: [.customShort("V"), .customLong("version")]) public var version = false
    @Option(name: [.customShort("L"), .customLong("lld")], completion: .list(["iscsi", Registry.nbdDriverName]))
    public var lld: String?
    @Option(name: [.customShort("o"), .customLong("op")], completion: .list(AdminOperation.allCases.map(\.rawValue)))
    public var op: String?
    @Option(name: [.customShort("m"), .customLong("mode")], completion: .list(AdminMode.allCases.map(\.rawValue)))
    public var mode: String?
    @Option(name: [.customShort("t"), .customLong("tid")]) public var tid: String?
    @Option(name: [.customShort("s"), .customLong("sid")]) public var sid: String?
    @Option(name: [.customShort("c"), .customLong("cid")]) public var cid: String?
    @Option(name: [.customShort("l"), .customLong("lun")]) public var lun: String?
    @Option(name: [.customShort("n"), .customLong("name")]) public var name: String?
    @Option(name: [.customShort("v"), .customLong("value")]) public var value: String?
    @Option(name: [.customShort("b"), .customLong("backing-store")], completion: .file()) public var backingStore: String?
    @Option(name: [.customShort("E"), .customLong("bstype")], completion: .list(["rdwr", "null", "sheepdog"]))
    public var bstype: String?
    @Option(name: [.customShort("S"), .customLong("bsopts")]) public var bsopts: String?
    @Option(name: [.customShort("f"), .customLong("bsoflags")]) public var bsoflags: String?
    @Option(name: [.customShort("y"), .customLong("blocksize")]) public var blocksize: String?
    @Option(name: [.customShort("T"), .customLong("targetname")]) public var targetname: String?
    @Option(name: [.customShort("I"), .customLong("initiator-address")]) public var initiatorAddress: String?
    @Option(name: [.customShort("Q"), .customLong("initiator-name")]) public var initiatorName: String?
    @Option(name: [.customShort("u"), .customLong("user")]) public var user: String?
    @Option(name: [.customShort("p"), .customLong("password")]) public var password: String?
    @Option(name: [.customShort("H"), .customLong("host")]) public var host: String?
    @Flag(name: [.customShort("F"), .customLong("force")]) public var force = false
    @Option(name: [.customShort("P"), .customLong("params")]) public var params: String?
    @Option(name: [.customShort("B"), .customLong("bus")]) public var bus: String?
    @Option(name: [.customShort("Y"), .customLong("device-type")]) public var deviceType: String?
    @Flag(name: [.customShort("O"), .customLong("outgoing")]) public var outgoing = false
    @Option(name: [.customShort("C"), .customLong("control-port")]) public var controlPort: String?
    /// ringtgt's own: the control socket's full path (tests use temporary directories).
    @Option(name: .customLong("control-socket"), completion: .file()) public var controlSocket: String?

    public init() {}

    /// The short option letters given, in tgtadm's short_options order; --control-socket counts as -C.
    var givenOptionLetters: [Character] {
        var letters: [Character] = []
        func add(_ c: Character, _ present: Bool) { if present { letters.append(c) } }
        add("L", lld != nil); add("o", op != nil); add("m", mode != nil); add("t", tid != nil)
        add("s", sid != nil); add("c", cid != nil); add("l", lun != nil); add("n", name != nil)
        add("v", value != nil); add("b", backingStore != nil); add("E", bstype != nil); add("f", bsoflags != nil)
        add("y", blocksize != nil); add("T", targetname != nil); add("I", initiatorAddress != nil)
        add("Q", initiatorName != nil); add("u", user != nil); add("p", password != nil); add("H", host != nil)
        add("F", force); add("P", params != nil); add("B", bus != nil); add("Y", deviceType != nil)
        add("O", outgoing); add("C", controlPort != nil || controlSocket != nil); add("S", bsopts != nil)
        return letters
    }
}

/// What a ringtgtadm command line asks for.
public enum TgtadmInvocation: Equatable {
    /// Send `request` to the socket at `socketPath`.
    case send(AdminRequest, socketPath: String)
    /// Print `stdout`, exit 0 (--help, --version).
    case print(String)
    /// Print `stderr`, exit `exitCode`.
    case usageError(String, exitCode: Int32)
}

public enum TgtadmCommandLine {
    /// Parses `arguments` (without the program name) the way tgtadm does.
    public static func parse(_ arguments: [String], environment: [String: String] = [:]) -> TgtadmInvocation {
        if let script = completion(arguments) { return script }
        let canonical: [String]
        switch normalize(arguments) {
        case .success(let list): canonical = list
        case .failure(let failure): return failure.invocation
        }
        let options: TgtadmOptions
        do {
            options = try TgtadmOptions.parse(canonical)
        } catch {
            if TgtadmOptions.exitCode(for: error) == .success { return .print(usage) }
            let message = TgtadmOptions.message(for: error)
            return usageFailure(message)
        }
        return interpret(options, environment: environment)
    }

    /// tgtadm's long options: name, short letter, whether it takes a value (usr/tgtadm.c long_options),
    /// plus ringtgt's --control-socket.
    static let longOptions: [(name: String, letter: Character?, takesValue: Bool)] = [
        ("debug", "d", false), ("help", "h", false), ("version", "V", false), ("lld", "L", true), ("op", "o", true),
        ("mode", "m", true), ("tid", "t", true), ("sid", "s", true), ("cid", "c", true), ("lun", "l", true),
        ("name", "n", true), ("value", "v", true), ("backing-store", "b", true), ("bstype", "E", true),
        ("bsopts", "S", true), ("bsoflags", "f", true), ("blocksize", "y", true), ("targetname", "T", true),
        ("initiator-address", "I", true), ("initiator-name", "Q", true), ("user", "u", true), ("password", "p", true),
        ("host", "H", true), ("force", "F", false), ("params", "P", true), ("bus", "B", true),
        ("device-type", "Y", true), ("outgoing", "O", false), ("control-port", "C", true),
        ("control-socket", nil, true),
    ]

    struct NormalizeFailure: Error {
        var invocation: TgtadmInvocation
    }

    /// Rewrites a getopt_long command line into one swift-argument-parser reads: attached short values
    /// ("-t1"), grouped short flags ("-dF"), unambiguous long prefixes ("--targ"), and values that begin
    /// with '-' all become "--long=value". Unknown options and stray words get getopt's/tgtadm's messages.
    static func normalize(_ arguments: [String]) -> Result<[String], NormalizeFailure> {
        func fail(_ message: String) -> Result<[String], NormalizeFailure> {
            .failure(NormalizeFailure(invocation: usageFailure(message)))
        }
        var out: [String] = []
        var i = 0
        while i < arguments.count {
            let arg = arguments[i]
            i += 1
            if arg.hasPrefix("--") && arg.count > 2 {
                let body = arg.dropFirst(2)
                let name = body.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)[0]
                let attached: String? = body.contains("=") ? String(body[body.index(after: body.firstIndex(of: "=")!)...]) : nil
                var matches = longOptions.filter { $0.name == name }
                if matches.isEmpty { matches = longOptions.filter { $0.name.hasPrefix(name) } }
                guard !matches.isEmpty else { return fail("unrecognized option '--\(name)'") }
                guard matches.count == 1 else { return fail("option '--\(name)' is ambiguous") }
                let option = matches[0]
                if option.takesValue {
                    if let attached {
                        out.append("--\(option.name)=\(attached)")
                    } else {
                        guard i < arguments.count else { return fail("option '--\(option.name)' requires an argument") }
                        out.append("--\(option.name)=\(arguments[i])")
                        i += 1
                    }
                } else {
                    guard attached == nil else { return fail("option '--\(option.name)' doesn't allow an argument") }
                    out.append("--\(option.name)")
                }
            } else if arg.hasPrefix("-") && arg.count > 1 && arg != "--" {
                var letters = Substring(arg.dropFirst())
                while let letter = letters.first {
                    letters = letters.dropFirst()
                    guard let option = longOptions.first(where: { $0.letter == letter }) else {
                        return fail("invalid option -- '\(letter)'")
                    }
                    if option.takesValue {
                        if !letters.isEmpty {
                            out.append("--\(option.name)=\(letters)")
                        } else {
                            guard i < arguments.count else { return fail("option requires an argument -- '\(letter)'") }
                            out.append("--\(option.name)=\(arguments[i])")
                            i += 1
                        }
                        break
                    }
                    out.append("--\(option.name)")
                }
            } else {
                // getopt_long leaves non-options for the end; tgtadm rejects the first one.
                let stray = arg == "--" ? (i < arguments.count ? arguments[i] : nil) : arg
                if let stray { return fail("unrecognized option '\(stray)'") }
            }
        }
        return .success(out)
    }

    static func eprint(_ message: String, _ code: Int32 = AdminExitCode.usageError) -> TgtadmInvocation {
        .usageError("\(AdminProgram.name): \(message)\n", exitCode: code)
    }

    /// tgtadm's usage(1): the message, then the hint, exit EINVAL.
    static func usageFailure(_ message: String) -> TgtadmInvocation {
        var text = message.isEmpty ? "" : "\(AdminProgram.name): \(message)\n"
        text += "Try `\(AdminProgram.name) --help' for more information.\n"
        return .usageError(text, exitCode: AdminExitCode.usageError)
    }

    /// bad_optarg: "-t argument value 'abc' invalid", then the hint.
    static func badArgument(_ letter: Character, _ text: String) -> TgtadmInvocation {
        .usageError("-\(letter) argument value '\(text)' invalid\nTry `\(AdminProgram.name) --help' for more information.\n",
                    exitCode: AdminExitCode.usageError)
    }

    static func interpret(_ o: TgtadmOptions, environment: [String: String]) -> TgtadmInvocation {
        if o.version { return .print("\(RingtgtVersion.string)\n") }

        // Numbers, checked as tgtadm's str_to_int* do (tid and control port must be >= 0).
        var tid: Int?
        if let text = o.tid {
            guard let n = ISCSITargetKeys.parseUnsigned(text), n <= UInt64(Int32.max) else { return badArgument("t", text) }
            tid = Int(n)
        }
        var sid: UInt64?
        if let text = o.sid {
            guard let n = ISCSITargetKeys.parseUnsigned(text) else { return badArgument("s", text) }
            sid = n
        }
        var cid: UInt32?
        if let text = o.cid {
            guard let n = ISCSITargetKeys.parseUnsigned(text), n <= UInt64(UInt32.max) else { return badArgument("c", text) }
            cid = UInt32(n)
        }
        var lun: UInt64?
        if let text = o.lun {
            guard let n = ISCSITargetKeys.parseUnsigned(text), n != UInt64.max else { return badArgument("l", text) }
            lun = n
        }
        var controlPort = 0
        if let text = o.controlPort {
            guard let n = ISCSITargetKeys.parseUnsigned(text), n <= UInt64(Int16.max) else { return badArgument("C", text) }
            controlPort = Int(n)
        }
        if let text = o.host, ISCSITargetKeys.parseUnsigned(text) == nil { return badArgument("H", text) }
        if let type = o.deviceType, !["disk", "tape", "cd", "changer", "osd", "ssc", "pt"].contains(type) {
            return eprint("unknown target type: \(type)")
        }

        guard let opText = o.op else { return eprint("specify the operation type") }
        guard let op = AdminOperation.parse(opText) else {
            return eprint("unknown operation: \(opText)", AdminExitCode.unknownModeOrOperation)
        }
        guard let modeText = o.mode else { return eprint("specify the mode") }
        guard let mode = AdminMode.parse(modeText) else {
            return eprint("unknown mode: \(modeText)", AdminExitCode.unknownModeOrOperation)
        }

        if let failure = check(o, op: op, opText: opText, mode: mode, tid: tid, lun: lun) { return failure }

        let request = AdminRequest(
            mode: mode, op: op, lld: o.lld, tid: tid, sid: sid, cid: cid, lun: lun, name: o.name, value: o.value,
            backingStore: o.backingStore, bstype: o.bstype, bsopts: o.bsopts, bsoflags: o.bsoflags,
            blockSize: o.blocksize, targetName: o.targetname, initiatorAddress: o.initiatorAddress,
            initiatorName: o.initiatorName, user: o.user, password: o.password, force: o.force, params: o.params,
            deviceType: o.deviceType, outgoing: o.outgoing)
        let path = o.controlSocket ?? ControlEndpoint.path(controlPort: controlPort, environment: environment)
        return .send(request, socketPath: path)
    }

    /// The first given option not in `allowed` (tgtadm's verify_mode_params; -d is always allowed).
    static func disallowed(_ o: TgtadmOptions, _ allowed: String) -> Character? {
        o.givenOptionLetters.first { !allowed.contains($0) }
    }

    /// tgtadm main()'s per-mode checks, in its order and words.
    static func check(_ o: TgtadmOptions, op: AdminOperation, opText: String, mode: AdminMode, tid: Int?, lun: UInt64?)
        -> TgtadmInvocation? {
        func notAllowed(_ prefix: String, _ allowed: String) -> TgtadmInvocation? {
            guard let c = disallowed(o, allowed) else { return nil }
            return eprint("\(prefix)option '-\(c)' is not allowed/supported")
        }
        switch mode {
        case .system:
            switch op {
            case .update:
                if let f = notAllowed("system mode: ", "LmonvC") { return f }
                if o.name == nil || o.value == nil { return eprint("update operation requires 'name' and 'value' options") }
            case .show, .delete, .stat: break
            default: return eprint("operation \(opText) not supported in system mode")
            }
        case .target:
            if (tid ?? -1) <= 0 && op != .show {
                return eprint(tid == 0 ? "'tid' cannot be 0" : "'tid' option is necessary")
            }
            switch op {
            case .new:
                if let f = notAllowed("target mode: ", "LmotTC") { return f }
                if o.targetname == nil { return eprint("creating new target requires a name, use --targetname") }
            case .delete:
                if let f = notAllowed("target mode: ", "LmotCF") { return f }
            case .show, .stat:
                if let f = notAllowed("target mode: ", "LmotC") { return f }
            case .bind, .unbind:
                if let f = notAllowed("target mode: ", "LmotIQBHC") { return f }
                if o.initiatorAddress == nil && o.initiatorName == nil && o.host == nil && o.bus == nil {
                    // tgtadm's wording, missing space included.
                    return eprint("\(opText) operation requires initiator-address, initiator-nameor bus")
                }
            case .update:
                if let f = notAllowed("target mode: ", "LmotnvC") { return f }
                if o.name == nil || o.value == nil { return eprint("update operation requires 'name' and 'value' options") }
            default:
                return eprint("operation \(opText) not supported in target mode")
            }
        case .account:
            switch op {
            case .new:
                if let f = notAllowed("account mode: ", "LmoupfC") { return f }
                if o.user == nil || o.password == nil { return eprint("'user' and 'password' options are required") }
            case .show:
                if let f = notAllowed("account mode: ", "LmoC") { return f }
            case .delete:
                if let f = notAllowed("account mode: ", "LmouC") { return f }
            case .bind, .unbind:
                if let f = notAllowed("account mode: ", "LmotuOC") { return f }
                if o.user == nil { return eprint("'user' option is necessary") }
            default:
                return eprint("operation \(opText) not supported in account mode")
            }
        case .logicalUnit:
            if (tid ?? -1) <= 0 { return eprint(tid == 0 ? "'tid' must not be 0" : "'tid' option is necessary") }
            if lun == nil { return eprint("'lun' option is necessary") }
            switch op {
            case .new:
                // tgt's list plus P: ringtgt takes --params when creating a LUN too.
                if let f = notAllowed("logicalunit mode: ", "LmofytlbEYCSP") { return f }
            case .delete:
                // tgt's list plus F: ringtgt deletes a LUN with commands in flight when forced (they finish first).
                if let f = notAllowed("logicalunit mode: ", "LmotlCF") { return f }
            case .stat:
                if let f = notAllowed("logicalunit mode: ", "LmotlC") { return f }
            case .update:
                if let c = disallowed(o, "LmofytlPC") { return eprint("option '-\(c)' not supported in logicalunit mode") }
            default:
                return eprint("operation \(opText) not supported in logicalunit mode")
            }
        case .portal:
            switch op {
            case .new, .delete:
                if let f = notAllowed("portal mode: ", "LmoCP") { return f }
                if o.params == nil { return eprint("you must specify --param portal=<portal>") }
            case .show:
                if let c = disallowed(o, "LmoC") { return eprint("option '-\(c)' not supported in portal mode") }
            default:
                return eprint("operation \(opText) not supported in portal mode")
            }
        case .lld:
            switch op {
            case .start, .stop, .show:
                if let f = notAllowed("lld mode: ", "LmoC") { return f }
            default:
                let opNumber = AdminOperation.allCases.firstIndex(of: op) ?? 0
                return eprint("option \(opNumber) not supported in lld mode")
            }
        case .session, .connection:
            break
        }
        return nil
    }

    /// tgtadm's --help text, for the options ringtgt implements.
    public static let usage = """
        ringtgt administration utility (tgtadm \(RingtgtVersion.tgtCompatible) compatible), version \(RingtgtVersion.string)

        Usage: \(AdminProgram.name) [OPTION]
        --lld <driver> --mode target --op new --tid <id> --targetname <name>
        \tadd a new target with <id> and <name>. <id> must not be zero.
        --lld <driver> --mode target --op delete [--force] --tid <id>
        \tdelete the specific target with <id>.
        \tWith force option, the specific target is deleted
        \teven if there is an activity.
        --lld <driver> --mode target --op show
        \tshow all the targets.
        --lld <driver> --mode target --op show --tid <id>
        \tshow the specific target's parameters.
        --lld <driver> --mode target --op update --tid <id> --name <param> --value <value>
        \tchange the target parameters of the target with <id>.
        --lld <driver> --mode target --op bind --tid <id> --initiator-address <address>
        --lld <driver> --mode target --op bind --tid <id> --initiator-name <name>
        \tenable the target to accept the specific initiators.
        --lld <driver> --mode target --op unbind --tid <id> --initiator-address <address>
        --lld <driver> --mode target --op unbind --tid <id> --initiator-name <name>
        \tdisable the specific permitted initiators.
        --lld <driver> --mode logicalunit --op new --tid <id> --lun <lun>
          --backing-store <path> --bstype <type> --bsopts <bs options> --bsoflags <options>
          [--blocksize <512|4096>] [--params <key=value,...>]
        \tadd a new logical unit with <lun> to the specific
        \ttarget with <id>. bstype is rdwr (default), null or sheepdog.
        \tnull takes --backing-store /dev/null and --bsopts size=<bytes[KMGT]>.
        \tbsoflags supported options are sync and direct
        \t(sync:direct for both).
        --lld <driver> --mode logicalunit --op update --tid <id> --lun <lun> --params <key=value,...>
        \tset vendor_id, product_id, product_rev, scsi_id, scsi_sn, readonly,
        \tthin_provisioning, optimal_xfer_len or the caching mode_page.
        --lld <driver> --mode logicalunit --op delete [--force] --tid <id> --lun <lun>
        \tdelete the specific logical unit with <lun> that
        \tthe target with <id> has. With force option, a logical
        \tunit with commands in flight is deleted once they end.
        --lld <driver> --mode account --op new --user <name> --password <pass>
        \tadd a new account with <name> and <pass> (at least 12 bytes).
        --lld <driver> --mode account --op delete --user <name>
        \tdelete the specific account having <name>.
        --lld <driver> --mode account --op bind [--tid <id>] --user <name> [--outgoing]
        \tadd the specific account having <name> to the specific
        \ttarget with <id>, or without --tid to discovery sessions.
        \tIf you use --outgoing option, the account will
        \tbe added as an outgoing account.
        --lld <driver> --mode account --op unbind [--tid <id>] --user <name> [--outgoing]
        \tdelete the specific account having <name> from specific
        \ttarget (or discovery). The --outgoing option must be added if you
        \tdelete an outgoing account.
        --lld <driver> --mode account --op show
        \tshow all the accounts.
        --lld <driver> --mode portal --op show
        \tshow the portals the daemon listens on.
        --lld <driver> --mode system --op show
        --lld <driver> --mode system --op update --name State --value <ready|offline>
        --control-port <port> use control port <port> (socket \(ControlEndpoint.defaultDirectory)/socket.<port>)
        --control-socket <path> use the control socket at <path>
        --help
        \tdisplay this help and exit

        """
}
