// Turns a parsed targets.conf into the admin requests that make the running daemon match it, as tgt-admin
// does for -e / --update, but applying only the difference: a target that did not change gets no request,
// so its sessions keep running. The same code serves ringtgt-admin (over the control socket), the
// daemon's start-up and its SIGHUP reload (in process): both only need something that executes requests.
//
// The whole change first runs against a scratch registry seeded with the running configuration, so every
// error (with its line) is known before anything changes; a configuration with errors changes nothing
// unless it says `ignore-errors yes`.

import Foundation

public enum ConfigUpdate {
    public enum Scope: Equatable, Sendable {
        case all
        case tid(Int)
        case name(String)
    }

    public enum Mode: Equatable, Sendable {
        /// tgt-admin -e: add the targets that do not exist yet; leave the others alone.
        case execute
        /// tgt-admin --update: make the targets in scope match the file (deleting those it no longer has).
        case update(Scope)
    }

    public struct Report: Sendable {
        /// What changed, one line per request that succeeded.
        public var changes: [String] = []
        /// What was left alone and why (tgt-admin's "# Target ... is in use, it won't be updated.").
        public var notes: [String] = []
        public var errors: [ConfigFile.Failure] = []
        public var warnings: [ConfigFile.Failure] = []
        /// Whether the change was applied (false: nothing was changed).
        public var applied = false
    }

    public typealias Executor = (AdminRequest) -> AdminResponse

    struct Step {
        var request: AdminRequest
        var source: ConfigFile.Source
        var summary: String
        /// The target the step belongs to; when its creation fails the rest of the group is skipped.
        var group: String
        var createsGroup = false
        /// What the step makes that a later step needs (an account); when it fails, steps that need it are skipped.
        var provides: String? = nil
        var needs: String? = nil
    }

    /// Applies `parsed` through `executor`, which may be a Registry's `execute` or the control socket.
    /// With `pretend`, only checks: `changes` lists what would change.
    /// `checkStores`: the dry run also requires a new rdwr LUN's file to exist (off where the registry's
    /// opener is not the real store layer).
    public static func run(_ parsed: ConfigFile.Parsed, mode: Mode, force: Bool, pretend: Bool = false,
                           checkStores: Bool = true, executor: Executor) -> Report {
        var report = Report()
        report.warnings = parsed.warnings
        let desired = parsed.configuration
        // Syntax errors do not stop here: the dry run below may find more, and all are reported together.
        report.errors = parsed.errors

        let dumpResponse = executor(AdminRequest(mode: .system, op: .show, name: Registry.configDumpName))
        let running = ConfigFile.parse(dumpResponse.stdout, file: "(running configuration)")
        guard dumpResponse.exitCode == 0, running.errors.isEmpty else {
            let why = dumpResponse.exitCode != 0 ? dumpResponse.stderr : running.errors.map(\.description).joined(separator: "; ")
            report.errors.append(ConfigFile.Failure(line: 0, content: "", message: "cannot read the running configuration: "
                                                    + why.trimmingCharacters(in: .whitespacesAndNewlines)))
            return report
        }
        let connected = connectedTargets(executor(AdminRequest(mode: .target, op: .show)).stdout)
        let accounts = accountNames(executor(AdminRequest(mode: .account, op: .show)).stdout)
        let planned = plan(desired: desired, running: running.configuration, connected: connected, accounts: accounts,
                           mode: mode, force: force)
        report.notes = planned.notes
        report.errors += planned.errors

        // Dry run: the running configuration in a scratch registry, then the change on top of it.
        let dryOpener = DryRunOpener()
        let scratch = Registry(fabric: DryRunFabric(), opener: dryOpener)
        let seed = plan(desired: running.configuration, running: ConfigFile.Configuration(), connected: [],
                        accounts: [], mode: .execute, force: true)
        let runningPasswords = passwords(running.configuration)
        for user in accounts where runningPasswords[user] == nil {
            _ = scratch.execute(AdminRequest(mode: .account, op: .new, user: user, password: DryRunOpener.placeholderSecret))
        }
        _ = execute(seed.steps, scratch.execute)
        dryOpener.checksStores = true
        dryOpener.checksPaths = checkStores
        report.errors += execute(planned.steps, scratch.execute).errors
        report.errors.sort { ($0.file, $0.line) < ($1.file, $1.line) }
        if !report.errors.isEmpty && !desired.ignoreErrors { return report }
        if pretend {
            report.changes = planned.steps.map(\.summary)
            return report
        }

        let result = execute(planned.steps, executor)
        report.changes = result.changes
        for e in result.errors where !report.errors.contains(e) { report.errors.append(e) }
        report.applied = true
        return report
    }

    static func execute(_ steps: [Step], _ executor: Executor) -> (changes: [String], errors: [ConfigFile.Failure]) {
        var changes: [String] = []
        var errors: [ConfigFile.Failure] = []
        var failedGroups: Set<String> = []
        for step in steps where !failedGroups.contains(step.group) && !failedGroups.contains(step.needs ?? "") {
            let response = executor(step.request)
            if response.exitCode == 0 {
                changes.append(step.summary)
                continue
            }
            var message = response.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
            if message.hasPrefix("\(AdminProgram.name): ") { message.removeFirst(AdminProgram.name.count + 2) }
            errors.append(step.source.failure(message))
            if step.createsGroup { failedGroups.insert(step.group) }
            if let made = step.provides { failedGroups.insert(made) }
        }
        return (changes, errors)
    }

    /// Names of the targets with a connection, from `--op show --mode target` (tgt-admin's check_connected).
    static func connectedTargets(_ show: String) -> Set<String> {
        var result: Set<String> = []
        var current: String?
        for line in show.split(whereSeparator: \.isNewline) {
            if line.hasPrefix("Target "), let colon = line.firstIndex(of: ":") {
                current = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces).lowercased()
            } else if let current, line.trimmingCharacters(in: .whitespaces).hasPrefix("Connection:") {
                result.insert(current)
            }
        }
        return result
    }

    /// User names from `--op show --mode account`.
    static func accountNames(_ show: String) -> Set<String> {
        Set(show.split(whereSeparator: \.isNewline).filter { $0.hasPrefix(" ") || $0.hasPrefix("\t") }
            .map { $0.trimmingCharacters(in: .whitespaces) })
    }

    // MARK: - Planning

    struct Plan {
        var steps: [Step] = []
        var notes: [String] = []
        var errors: [ConfigFile.Failure] = []
    }

    static func plan(desired: ConfigFile.Configuration, running: ConfigFile.Configuration, connected: Set<String>,
                     accounts: Set<String>, mode: Mode, force: Bool) -> Plan {
        var p = Plan()
        var byName: [String: ConfigFile.Target] = [:]
        for r in running.targets { byName[r.name.lowercased()] = r }
        let wanted = Set(desired.targets.map { $0.name.lowercased() })
        let known = passwords(running)
        var ctx = Context(knownAccounts: accounts.union(known.keys), passwords: known, force: force,
                          lunDefaults: running.lunDefaults)
        func inUse(_ name: String) -> Bool { !force && connected.contains(name.lowercased()) }
        switch mode {
        case .execute: discoveryAccounts(desired, running, unbind: false, &ctx, &p)
        case .update(.all): discoveryAccounts(desired, running, unbind: true, &ctx, &p)
        case .update: break   // a scope names targets; the discovery accounts are no target's
        }

        var scopedOut: (String, Int?) -> Bool = { _, _ in false }
        if case .update(let scope) = mode {
            switch scope {
            case .all: break
            case .tid(let tid):
                guard running.targets.contains(where: { $0.tid == tid }) else {
                    p.errors.append(ConfigFile.Failure(line: 0, content: "", message: "there is no target with tid \(tid)"))
                    return p
                }
                scopedOut = { _, runningTid in runningTid != tid }
            case .name(let name):
                scopedOut = { n, _ in n.lowercased() != name.lowercased() }
            }
            for r in running.targets where !wanted.contains(r.name.lowercased()) && !scopedOut(r.name, r.tid)
                && !r.name.hasPrefix(NBDExports.targetNamePrefix) {
                if inUse(r.name) {
                    p.notes.append("target \(r.name) (tid \(r.tid ?? 0)) is in use; it won't be deleted (--force deletes it)")
                } else {
                    p.steps.append(deleteTarget(r, force: force))
                }
            }
        }
        // tgt-admin: a new target without a tid gets the largest running tid plus one (skipping tids the file fixes).
        var kept: Set<Int> = []
        for r in running.targets where wanted.contains(r.name.lowercased()) || scopedOut(r.name, r.tid)
            || r.name.hasPrefix(NBDExports.targetNamePrefix) || mode == .execute || inUse(r.name) {
            if let tid = r.tid { kept.insert(tid) }
        }
        var reserved = kept.union(desired.targets.compactMap(\.tid))
        var nextTid = (kept.max() ?? 0) + 1
        for d in desired.targets {
            let r = byName[d.name.lowercased()]
            if scopedOut(d.name, r?.tid) { continue }
            guard let r, let runningTid = r.tid else {
                var tid = d.tid ?? nextTid
                if d.tid == nil {
                    while reserved.contains(tid) { tid += 1 }
                    reserved.insert(tid)
                }
                nextTid = max(nextTid, tid + 1)
                create(d, tid: tid, &ctx, &p)
                continue
            }
            if mode == .execute {
                p.notes.append("target \(d.name) already exists")
                continue
            }
            if let tid = d.tid, tid != runningTid {
                if inUse(d.name) {
                    p.notes.append("target \(d.name) is in use; it won't be moved to tid \(tid)")
                } else {
                    p.steps.append(deleteTarget(r, force: force))
                    create(d, tid: tid, &ctx, &p)
                }
                continue
            }
            modify(d, r, tid: runningTid, inUse: inUse(d.name), &ctx, &p)
        }
        return p
    }

    /// The password of every account the configuration binds (the running one prints them all).
    static func passwords(_ c: ConfigFile.Configuration) -> [String: String] {
        var result: [String: String] = [:]
        for t in c.targets {
            for a in t.incoming + (t.outgoing.map { [$0] } ?? []) { result[a.user] = a.password }
        }
        for a in c.discoveryIncoming + (c.discoveryOutgoing.map { [$0] } ?? []) { result[a.user] = a.password }
        return result
    }

    /// tgt-admin's incomingdiscoveryuser / outgoingdiscoveryuser: accounts bound without a tid. New bindings
    /// go first, so discovery is never open for a moment while one account replaces another.
    static func discoveryAccounts(_ desired: ConfigFile.Configuration, _ running: ConfigFile.Configuration, unbind: Bool,
                                  _ ctx: inout Context, _ p: inout Plan) {
        let group = "discovery"
        for a in desired.discoveryIncoming where !running.discoveryIncoming.contains(where: { $0.user == a.user }) {
            bindAccount(a, tid: nil, outgoing: false, what: "discovery", group: group, &ctx, &p)
        }
        if unbind {
            for a in running.discoveryIncoming where !desired.discoveryIncoming.contains(where: { $0.user == a.user }) {
                p.steps.append(unbindAccount(a.user, tid: nil, outgoing: false, what: "discovery", group: group,
                                             source: ConfigFile.Source(file: "", line: 0, content: "incomingdiscoveryuser \(a.user)")))
            }
            if let old = running.discoveryOutgoing, desired.discoveryOutgoing?.user != old.user {
                let source = ConfigFile.Source(file: "", line: 0, content: "outgoingdiscoveryuser \(old.user)")
                p.steps.append(unbindAccount(old.user, tid: nil, outgoing: true, what: "discovery", group: group,
                                             source: desired.discoveryOutgoing?.source ?? source))
            }
        }
        if let a = desired.discoveryOutgoing, running.discoveryOutgoing?.user != a.user,
           unbind || running.discoveryOutgoing == nil {
            bindAccount(a, tid: nil, outgoing: true, what: "discovery", group: group, &ctx, &p)
        }
        checkPasswords(desired.discoveryIncoming + (desired.discoveryOutgoing.map { [$0] } ?? []), ctx, &p)
    }

    /// An account the file names with another password than the one it exists with.
    static func checkPasswords(_ wanted: [ConfigFile.Account], _ ctx: Context, _ p: inout Plan) {
        for a in wanted {
            if let known = ctx.passwords[a.user], known != a.password,
               !p.errors.contains(where: { $0.line == a.source.line && $0.file == a.source.file }) {
                p.errors.append(a.source.failure("account \(a.user) already exists with another password"))
            }
        }
    }

    /// Accounts known so far, and whether LUNs may be taken from a connected target.
    struct Context {
        var knownAccounts: Set<String>
        var passwords: [String: String]
        var force: Bool
        /// What a LUN without parameters looks like on the running daemon (its dump says so).
        var lunDefaults: LUNDefaults = .ringtgt
    }

    static func deleteTarget(_ r: ConfigFile.Target, force: Bool) -> Step {
        Step(request: AdminRequest(mode: .target, op: .delete, tid: r.tid, force: force),
             source: ConfigFile.Source(file: "", line: 0, content: "target \(r.name)"),
             summary: "deleted target \(r.name) (tid \(r.tid ?? 0))", group: r.name.lowercased() + "-old")
    }

    static func create(_ d: ConfigFile.Target, tid: Int, _ ctx: inout Context, _ p: inout Plan) {
        let group = d.name.lowercased()
        p.steps.append(Step(request: AdminRequest(mode: .target, op: .new, tid: tid, targetName: d.name), source: d.source,
                            summary: "added target \(d.name) (tid \(tid))", group: group, createsGroup: true))
        for lun in d.luns { p.steps.append(newLUN(lun, tid: tid, target: d.name)) }
        for item in wantedAddresses(d) {
            p.steps.append(bind(d, tid: tid, address: item, add: true))
        }
        for item in d.initiatorNames { p.steps.append(bind(d, tid: tid, name: item, add: true)) }
        for a in d.incoming { bindAccount(a, tid: tid, outgoing: false, what: "target \(d.name)", group: group, &ctx, &p) }
        if let a = d.outgoing { bindAccount(a, tid: tid, outgoing: true, what: "target \(d.name)", group: group, &ctx, &p) }
        for (name, item) in d.keysInApplyOrder { p.steps.append(setKey(d, tid: tid, name: name, value: item.value, source: item.source)) }
    }

    /// `initiator-address none` is what `--dump` writes for a target that admits no address (never bound, or
    /// bound by initiator name only): it binds no address rule. Without any initiator-address line a target
    /// admits ALL, as tgt-admin does.
    static let noAddressRule = "none"

    static func isNoAddressRule(_ item: ConfigFile.Item) -> Bool { item.value.lowercased() == noAddressRule }

    /// The address rules a target's block asks for.
    static func wantedAddresses(_ d: ConfigFile.Target) -> [ConfigFile.Item] {
        if d.addresses.isEmpty { return [ConfigFile.Item(value: "ALL", source: d.source)] }
        return d.addresses.filter { !isNoAddressRule($0) }
    }

    static func newLUN(_ lun: ConfigFile.LUN, tid: Int, target: String) -> Step {
        var request = AdminRequest(mode: .logicalUnit, op: .new, tid: tid, lun: lun.number, backingStore: lun.path,
                                   bstype: lun.bstype?.value, bsopts: lun.bsopts?.value, bsoflags: lun.bsoflags?.value,
                                   blockSize: lun.blockSize?.value)
        // LUN parameters go with creation (readonly must be known when the store is opened).
        if !lun.params.isEmpty { request.params = lun.params.map(\.value).joined(separator: ",") }
        return Step(request: request, source: lun.source, summary: "target \(target): added LUN \(lun.number) (\(lun.path))",
                    group: target.lowercased())
    }

    static func bind(_ d: ConfigFile.Target, tid: Int, address: ConfigFile.Item? = nil, name: ConfigFile.Item? = nil,
                     add: Bool) -> Step {
        let what = address.map { "initiator-address \($0.value)" } ?? "initiator-name \(name!.value)"
        return Step(request: AdminRequest(mode: .target, op: add ? .bind : .unbind, tid: tid, initiatorAddress: address?.value,
                                          initiatorName: name?.value),
                    source: (address ?? name)!.source, summary: "target \(d.name): \(add ? "allowed" : "removed") \(what)",
                    group: d.name.lowercased())
    }

    /// `tid` nil: a discovery account.
    static func bindAccount(_ a: ConfigFile.Account, tid: Int?, outgoing: Bool, what: String, group: String,
                            _ ctx: inout Context, _ p: inout Plan) {
        if let known = ctx.passwords[a.user], known != a.password {
            p.errors.append(a.source.failure("account \(a.user) already exists with another password"))
            return
        }
        // tgt-admin: create the account unless it exists, then bind it.
        if !ctx.knownAccounts.contains(a.user) {
            p.steps.append(Step(request: AdminRequest(mode: .account, op: .new, user: a.user, password: a.password),
                                source: a.source, summary: "added account \(a.user)", group: group,
                                provides: "account \(a.user)"))
            ctx.knownAccounts.insert(a.user)
            ctx.passwords[a.user] = a.password
        }
        p.steps.append(Step(request: AdminRequest(mode: .account, op: .bind, tid: tid, user: a.user, outgoing: outgoing),
                            source: a.source, summary: "\(what): bound \(outgoing ? "outgoing " : "")account \(a.user)",
                            group: group, needs: "account \(a.user)"))
    }

    static func unbindAccount(_ user: String, tid: Int?, outgoing: Bool, what: String, group: String,
                              source: ConfigFile.Source) -> Step {
        Step(request: AdminRequest(mode: .account, op: .unbind, tid: tid, user: user, outgoing: outgoing),
             source: source, summary: "\(what): unbound \(outgoing ? "outgoing " : "")account \(user)", group: group)
    }

    static func setKey(_ d: ConfigFile.Target, tid: Int, name: String, value: String, source: ConfigFile.Source) -> Step {
        Step(request: AdminRequest(mode: .target, op: .update, tid: tid, name: name, value: value), source: source,
             summary: "target \(d.name): \(name) = \(value)", group: d.name.lowercased())
    }

    /// The difference between a target as it runs and as the file has it, for a target that keeps its tid.
    static func modify(_ d: ConfigFile.Target, _ r: ConfigFile.Target, tid: Int, inUse: Bool,
                       _ ctx: inout Context, _ p: inout Plan) {
        let group = d.name.lowercased()
        func removeLUN(_ lun: ConfigFile.LUN, replacedBy: ConfigFile.LUN?) -> Bool {
            if inUse {
                p.notes.append("target \(d.name) is in use; LUN \(lun.number) won't be \(replacedBy == nil ? "removed" : "changed") (--force does it)")
                return false
            }
            p.steps.append(Step(request: AdminRequest(mode: .logicalUnit, op: .delete, tid: tid, lun: lun.number, force: ctx.force),
                                source: replacedBy?.source ?? d.source, summary: "target \(d.name): removed LUN \(lun.number)",
                                group: group))
            return true
        }
        for lun in r.luns where !d.luns.contains(where: { $0.number == lun.number }) { _ = removeLUN(lun, replacedBy: nil) }
        for lun in d.luns {
            guard let old = r.luns.first(where: { $0.number == lun.number }) else {
                p.steps.append(newLUN(lun, tid: tid, target: d.name))
                continue
            }
            let wanted = identity(lun, tid: tid, defaults: ctx.lunDefaults)
            let current = identity(old, tid: tid, defaults: ctx.lunDefaults)
            if sameStore(lun, old) {
                if wanted == current { continue }
                // What `--op update --params` can change on the LUN as it is: its identity text and what
                // LUNPresentation holds (only the knobs that change are sent: `online` alone loads or ejects).
                var updatable = current
                updatable.vendor = wanted.vendor; updatable.product = wanted.product; updatable.revision = wanted.revision
                updatable.scsiID = wanted.scsiID; updatable.serial = wanted.serial
                updatable.presentation = wanted.presentation
                // No parameter takes optimal_xfer_gran back to unset (one physical block): that needs a new LUN.
                if wanted.presentation.optimalTransferGranularityBlocks == nil {
                    updatable.presentation.optimalTransferGranularityBlocks = current.presentation.optimalTransferGranularityBlocks
                }
                if updatable == wanted {
                    let was = presentationParameters(current.presentation)
                    var params = "vendor_id=\(wanted.vendor),product_id=\(wanted.product),product_rev=\(wanted.revision),"
                        + "scsi_id=\(wanted.scsiID),scsi_sn=\(wanted.serial)"
                    for (i, item) in presentationParameters(wanted.presentation).enumerated() where item.value != was[i].value {
                        if let value = item.value { params += ",\(item.key)=\(value)" }
                    }
                    p.steps.append(Step(request: AdminRequest(mode: .logicalUnit, op: .update, tid: tid, lun: lun.number, params: params),
                                        source: lun.params.last?.source ?? lun.source,
                                        summary: "target \(d.name): updated LUN \(lun.number) parameters", group: group))
                    continue
                }
            }
            if removeLUN(old, replacedBy: lun) { p.steps.append(newLUN(lun, tid: tid, target: d.name)) }
        }

        let wantedAddresses = wantedAddresses(d)
        let runningAddresses = r.addresses.filter { !isNoAddressRule($0) }
        func rule(_ text: String) -> String { InitiatorAddressParser.parse(text).map { "\($0)" } ?? text }
        let runningRules = Set(runningAddresses.map { rule($0.value) })
        let wantedRules = Set(wantedAddresses.map { rule($0.value) })
        // New rules first: sessions are checked against every published ACL, and one that is briefly empty
        // would close a session that the new rules admit.
        let runningNames = Set(r.initiatorNames.map { $0.value.lowercased() })
        let wantedNames = Set(d.initiatorNames.map { $0.value.lowercased() })
        for item in wantedAddresses where !runningRules.contains(rule(item.value)) {
            p.steps.append(bind(d, tid: tid, address: item, add: true))
        }
        for item in d.initiatorNames where !runningNames.contains(item.value.lowercased()) {
            p.steps.append(bind(d, tid: tid, name: item, add: true))
        }
        for item in runningAddresses where !wantedRules.contains(rule(item.value)) {
            p.steps.append(bind(d, tid: tid, address: ConfigFile.Item(value: item.value, source: d.source), add: false))
        }
        for item in r.initiatorNames where !wantedNames.contains(item.value.lowercased()) {
            p.steps.append(bind(d, tid: tid, name: ConfigFile.Item(value: item.value, source: d.source), add: false))
        }

        let what = "target \(d.name)"
        for a in r.incoming where !d.incoming.contains(where: { $0.user == a.user }) {
            p.steps.append(unbindAccount(a.user, tid: tid, outgoing: false, what: what, group: group, source: d.source))
        }
        if let old = r.outgoing, d.outgoing?.user != old.user {
            p.steps.append(unbindAccount(old.user, tid: tid, outgoing: true, what: what, group: group, source: d.source))
        }
        for a in d.incoming where !r.incoming.contains(where: { $0.user == a.user }) {
            bindAccount(a, tid: tid, outgoing: false, what: what, group: group, &ctx, &p)
        }
        if let a = d.outgoing, r.outgoing?.user != a.user {
            bindAccount(a, tid: tid, outgoing: true, what: what, group: group, &ctx, &p)
        }
        checkPasswords(d.incoming + (d.outgoing.map { [$0] } ?? []), ctx, &p)

        var current: [String: String] = [:]
        for (name, item) in r.keys { current[canonicalKey(name)] = item.value }
        var named: Set<String> = []
        for (name, item) in d.keysInApplyOrder {
            let key = canonicalKey(name)
            named.insert(key)
            if let now = current[key], now == normalized(key, item.value) { continue }
            if key == "state" && current[key] == nil && item.value == Registry.State.ready.rawValue { continue }
            if key == ALUAKeys.state && current[key] == nil && ALUAState.parse(item.value) == .activeOptimized { continue }
            p.steps.append(setKey(d, tid: tid, name: name, value: item.value, source: item.source))
        }
        // A key the file no longer sets goes back to its default (state stays as --offline/--ready left it).
        for (key, _) in current.sorted(by: { $0.key < $1.key }) where !named.contains(key) && key != "state" {
            let value: String
            if key == ISCSITargetKeys.aliasKey { value = "" }
            else if key == ISCSITargetKeys.nopIntervalKey || key == ISCSITargetKeys.nopCountKey { value = "0" }
            else if key == ALUAKeys.group { value = String(ALUAKeys.defaultGroupID) }
            else if key == ALUAKeys.relativePort { value = String(ALUAKeys.defaultRelativePortID) }
            else if let k = ISCSITargetKeys.key(named: key), k.kind != .fixed { value = k.defaultText }
            else { continue }
            p.steps.append(setKey(d, tid: tid, name: key, value: value, source: d.source))
        }
    }

    static func canonicalKey(_ name: String) -> String {
        if name.lowercased() == ISCSITargetKeys.aliasKey.lowercased() { return ISCSITargetKeys.aliasKey }
        return ISCSITargetKeys.key(named: name)?.name ?? name
    }

    static func normalized(_ key: String, _ value: String) -> String {
        guard let k = ISCSITargetKeys.key(named: key) else { return value }
        return ISCSITargetKeys.normalize(value, for: k) ?? value
    }

    /// The identity a LUN gets from its parameters on a daemon whose LUNs start from `defaults`.
    static func identity(_ lun: ConfigFile.LUN, tid: Int, defaults: LUNDefaults) -> LUNIdentity {
        var id = LUNIdentity.tgtDefaults(tid: tid, lun: lun.number, defaults: defaults)
        for item in lun.params { try? id.apply(params: item.value) }
        settleLBPPBE(&id, bstype: lun.bstype?.value ?? "rdwr", path: lun.path,
                     blockSize: lun.blockSize.flatMap { Int($0.value) } ?? Registry.defaultBlockSize)
        return id
    }

    /// With tgt's defaults LBPPBE comes from the backing file, as the registry computes it at creation.
    static func settleLBPPBE(_ id: inout LUNIdentity, bstype: String, path: String, blockSize: Int) {
        guard id.lbppbeFromBacking else { return }
        id.presentation.lbppbe = Registry.backingLBPPBE(bstype: bstype, path: path, blockSize: blockSize)
        id.lbppbeFromBacking = false
    }

    /// The LUN parameters that LUNPresentation holds (tgt's, and ringtgt's sanitize_rate), in `--params` order and
    /// form (nil: not set).
    static func presentationParameters(_ p: LUNPresentation) -> [(key: String, value: String?)] {
        func flag(_ on: Bool) -> String { on ? "1" : "0" }
        return [("lbppbe", String(p.lbppbe)), ("la_lba", String(p.lowestAlignedLBA)),
                ("optimal_xfer_gran", p.optimalTransferGranularityBlocks.map { String($0) }),
                ("removable", flag(p.removable)), ("online", flag(p.online)), ("sense_format", flag(p.descriptorSense)),
                ("sanitize_rate", String(p.sanitizeRateMiB))]
    }

    /// Whether the running LUN's store is the one the file asks for (an unset setting matches what runs).
    static func sameStore(_ a: ConfigFile.LUN, _ running: ConfigFile.LUN) -> Bool {
        func flags(_ item: ConfigFile.Item?) -> BackingOpenFlags? { item.map { BackingOpenFlags.parse($0.value) } ?? [] }
        func size(_ item: ConfigFile.Item?) -> UInt64? { item.map { ISCSITargetKeys.parseUnsigned($0.value) } ?? UInt64(Registry.defaultBlockSize) }
        return a.path == running.path && (a.bstype == nil || a.bstype?.value == running.bstype?.value)
            && (a.bsopts?.value ?? "") == (running.bsopts?.value ?? "") && flags(a.bsoflags) == flags(running.bsoflags)
            && size(a.blockSize) == size(running.blockSize)
    }

    // MARK: - Dump

    /// The running configuration in targets.conf syntax, so that loading it gives the same state (the
    /// CHAP passwords included: the control socket is root's only, and root could set them anyway).
    static func dump(targets: [Registry.TargetRecord], accounts: [(user: String, password: String)],
                     discovery: Registry.AccountBindings = Registry.AccountBindings(),
                     lunDefaults: LUNDefaults = .ringtgt,
                     portGroupState: (UInt16) -> ALUAState = { _ in .activeOptimized }) -> String {
        func quoted(_ s: String) -> String { s.contains(where: { $0 == " " || $0 == "\t" || $0 == "#" }) ? "\"\(s)\"" : s }
        func password(_ user: String) -> String { accounts.first { $0.user == user }?.password ?? "" }
        var out = "# ringtgt's running configuration (ringtgt-admin --dump)\ndefault-driver \(Registry.driverName)\n"
        if lunDefaults == .tgt { out += "lun-defaults tgt\n" }
        for user in discovery.incoming { out += "incomingdiscoveryuser \(user) \(password(user))\n" }
        if let user = discovery.outgoing { out += "outgoingdiscoveryuser \(user) \(password(user))\n" }
        for t in targets.sorted(by: { $0.tid < $1.tid }) {
            out += "\n<target \(t.name)>\n    tid \(t.tid)\n"
            for number in t.luns.keys.sorted() {
                let r = t.luns[number]!
                let u = r.unit
                out += "    <backing-store \(quoted(u.path))>\n        lun \(number)\n        bs-type \(u.bstype)\n"
                if let bsopts = r.bsopts { out += "        bsopts \(quoted(bsopts))\n" }
                if !r.openFlags.isEmpty { out += "        bsoflags \(r.openFlags.text)\n" }
                if u.blockSize != Registry.defaultBlockSize { out += "        block-size \(u.blockSize)\n" }
                var base = LUNIdentity.tgtDefaults(tid: t.tid, lun: number, defaults: lunDefaults)
                settleLBPPBE(&base, bstype: u.bstype, path: u.path, blockSize: u.blockSize)
                let id = r.identity
                for (key, value, def) in [("vendor_id", id.vendor, base.vendor), ("product_id", id.product, base.product),
                                          ("product_rev", id.revision, base.revision), ("scsi_id", id.scsiID, base.scsiID),
                                          ("scsi_sn", id.serial, base.serial)] where value != def {
                    out += "        \(key) \(quoted(value))\n"
                }
                if id.readOnly { out += "        readonly 1\n" }
                if let thin = id.thinProvisioning { out += "        thin_provisioning \(thin ? 1 : 0)\n" }
                if let wce = id.writeCacheEnabled { out += "        write-cache \(wce ? "on" : "off")\n" }
                if let n = id.optimalTransferBlocks { out += "        optimal_xfer_len \(n)\n" }
                let defaults = presentationParameters(base.presentation)
                for (i, item) in presentationParameters(id.presentation).enumerated() where item.value != defaults[i].value {
                    if let value = item.value { out += "        \(item.key) \(value)\n" }
                }
                out += "    </backing-store>\n"
            }
            for rule in t.addressACL { out += "    initiator-address \(rule)\n" }
            // Without a line, loading the dump would admit ALL (tgt-admin's rule): say that none is admitted.
            if t.addressACL.isEmpty { out += "    initiator-address \(noAddressRule)\n" }
            for rule in t.nameACL { out += "    initiator-name \(rule)\n" }
            for user in t.incomingUsers { out += "    incominguser \(user) \(password(user))\n" }
            if let user = t.outgoingUser { out += "    outgoinguser \(user) \(password(user))\n" }
            if let alias = t.alias { out += "    \(ISCSITargetKeys.aliasKey) \(quoted(alias))\n" }
            for key in t.params.keys.sorted() { out += "    \(key) \(t.params[key]!)\n" }
            if t.state == .offline { out += "    state offline\n" }
            out += ALUAKeys.dumpLines(groupID: t.portGroupID, relativePortID: t.relativeTargetPortID,
                                      state: portGroupState(t.portGroupID))
            out += "</target>\n"
        }
        return out
    }
}

/// The dry run's runtime: no cores, no sessions.
final class DryRunFabric: ControlFabric {
    func publish(_ snapshot: ConfigSnapshot) {}
    func sessions() -> [SessionInfo] { [] }
    func commandsInFlight(on units: [LogicalUnit]) -> Int { 0 }
    func portals() -> [PortalInfo] { [] }
}

/// The dry run's stores: nothing is opened; once `checksStores` is set, a new rdwr LUN's path must exist.
final class DryRunOpener: BackingOpener {
    static let placeholderSecret = "dry-run-placeholder"
    /// BackingFactory's and the sheepdog store's types; `fileTypes` open a path of this machine.
    static let knownTypes: Set<String> = ["rdwr", "aio", "", "null", "sheepdog"]
    static let fileTypes: Set<String> = ["rdwr", "aio", ""]
    /// Stands in for a store's size (only whole blocks matter).
    static let placeholderBytes: UInt64 = 1 << 30
    /// Off while the running configuration is seeded (it opened already); then the new LUNs' types are
    /// checked, and with `checksPaths` their files too.
    var checksStores = false
    var checksPaths = false

    func open(_ spec: BackingSpec) throws -> OpenedBacking {
        if checksStores {
            guard Self.knownTypes.contains(spec.bstype) else {
                throw AdminError(.invalidRequest, "unknown backing store type \(spec.bstype)")
            }
            if checksPaths && Self.fileTypes.contains(spec.bstype) && !FileManager.default.fileExists(atPath: spec.path) {
                throw AdminError(.invalidRequest, "open \(spec.path): No such file or directory")
            }
        }
        let caps = StoreCapabilities(canDiscard: true, discardZeroes: true, canReportMapping: true, readOnly: spec.readOnly)
        return OpenedBacking(backing: .null, byteCount: Self.placeholderBytes, capabilities: caps)
    }

    func release(_ backing: Backing) {}
    var backingStoreDescriptions: [String] { [] }
}
