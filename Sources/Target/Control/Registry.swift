// The control plane's model of every target, and the executor of admin requests against it.
// Each change builds a new immutable ConfigSnapshot and publishes it through the ControlFabric; the
// reactors never see the registry itself. LogicalUnit objects are created once, when a LUN is added,
// and reused by every later snapshot, because their identity carries the LUN's SCSI state.

import Foundation

public final class Registry: @unchecked Sendable {
    public struct Options: Sendable {
        /// tgt gives every target a LUN 0 of type "controller" (0x0c) that it creates itself: it cannot be
        /// added or deleted by the admin, and `show` lists it. Turn this on only when the SCSI layer
        /// answers LUN 0 as such a controller when the admin configured no LUN 0 there.
        public var controllerLUN0: Bool
        /// The backing store type used when `--bstype` is absent (tgt's iSCSI default_bst).
        public var defaultBackingStoreType: String
        /// What a new LUN looks like before its `--params` (`ringtgtd --tgt-defaults`: tgt's values).
        public var lunDefaults: LUNDefaults = .ringtgt

        public init(controllerLUN0: Bool = false, defaultBackingStoreType: String = "rdwr") {
            self.controllerLUN0 = controllerLUN0
            self.defaultBackingStoreType = defaultBackingStoreType
        }
    }

    /// tgt's scsi_target_state / tgt_system_state names.
    public enum State: String, Sendable {
        case ready, offline
    }

    /// `--op show --mode system --name targets.conf`: the running configuration in targets.conf syntax
    /// (ringtgt-admin --dump, and the base of every config reload's difference).
    public static let configDumpName = "targets.conf"
    /// The iSCSI driver is the only one ringtgt has (tgt's "iscsi" lld).
    public static let driverName = "iscsi"
    /// Accepted only by `--op show --mode portal` (the NBD server has no other admin objects).
    public static let nbdDriverName = "nbd"
    /// Block sizes LogicalUnit supports.
    public static let supportedBlockSizes: Set<Int> = [512, 4096]
    public static let defaultBlockSize = 512
    /// Largest LUN number in SAM's flat space addressing (14 bits), which REPORT LUNS can express.
    public static let maxLUNNumber: UInt64 = 16383
    /// RFC 7143 §4.2.7.1: iSCSI names are at most 223 bytes.
    public static let maxTargetNameBytes = 223

    struct LUNRecord {
        var unit: LogicalUnit
        var identity: LUNIdentity
        var openFlags: BackingOpenFlags
        /// What the store itself offers, before `--params` narrowed it.
        var storeCapabilities: StoreCapabilities
        /// `--bsopts` as given (ringtgt-admin --dump prints it).
        var bsopts: String? = nil
    }

    struct TargetRecord {
        var tid: Int
        var name: String
        var alias: String?
        var luns: [UInt64: LUNRecord] = [:]
        /// tgt keeps address rules and name rules in two lists and shows addresses first.
        var addressACL: [ACLRule] = []
        var nameACL: [ACLRule] = []
        var params: [String: String] = [:]
        var state: State = .ready
        var lunGeneration: UInt64
        /// CHAP accounts bound to the target, in bind order; at most one outgoing account.
        var accounts = AccountBindings()
        /// ALUA (Control/PortGroups.swift).
        var portGroupID = ALUAKeys.defaultGroupID
        var relativeTargetPortID = ALUAKeys.defaultRelativePortID
        var incomingUsers: [String] { accounts.incoming }
        var outgoingUser: String? { accounts.outgoing }
    }

    struct AccountBindings: Equatable {
        var incoming: [String] = []
        var outgoing: String?
    }

    public let options: Options
    private let fabric: ControlFabric
    private let opener: BackingOpener
    /// One request at a time: the control server has one thread, but the daemon also applies the config
    /// file and may call from elsewhere.
    private let lock = NSLock()
    private var targets: [Int: TargetRecord] = [:]
    /// CHAP accounts (`--mode account`), newest first as tgt lists them.
    private var accounts: [(user: String, password: String)] = []
    /// Accounts bound without `--tid`: tgt's global target, whose accounts discovery sessions use.
    private var discovery = AccountBindings()
    /// tgt's limit on accounts (usr/target.c: a fixed table).
    static let maxAccounts = 1024
    private var snapshotVersion: UInt64 = 0
    /// Registry-wide, so a target deleted and created again never repeats a generation.
    private var generationCounter: UInt64 = 0
    private var systemState: State = .ready
    /// Set by `--op update --mode sys --name poll_us`; nil until then.
    private var pollNanos: UInt64?
    private var debug = false
    private var published: ConfigSnapshot = .empty
    private var portGroups = PortGroupDirectory()
    /// What each multipath sheep LU's ports and groups were when this daemon last published them in the
    /// shared record (sharePortGroupMembership), by LU.
    private var sharedPortGroups: [ObjectIdentifier: [SharedPortGroup]] = [:]
    /// Each LUN's place in the cores' statistics tables.
    private let statisticsSlots = StatisticsSlots()

    /// Called for `--op delete --mode system` (tgt's "stop the daemon") once no target is left.
    /// When nil, that request is refused.
    public var shutdownHandler: (() -> Void)?

    public init(fabric: ControlFabric, opener: BackingOpener, options: Options = Options()) {
        self.fabric = fabric
        self.opener = opener
        self.options = options
    }

    /// The snapshot last handed to the fabric.
    public var currentSnapshot: ConfigSnapshot {
        lock.lock(); defer { lock.unlock() }
        return published
    }

    /// `--op update --mode sys --name State --value offline|ready`; published to the cores, which refuse
    /// new logins while it is offline.
    public var isSystemReady: Bool {
        lock.lock(); defer { lock.unlock() }
        return systemState == .ready
    }

    /// Whether a CHAP account with this user and password exists (the config file reuses it).
    public func hasAccount(user: String, password: String) -> Bool {
        lock.lock(); defer { lock.unlock() }
        return accounts.contains { $0.user == user && $0.password == password }
    }

    /// The target state tgt shows ("ready" / "offline"), nil if there is no such target.
    public func targetState(tid: Int) -> State? {
        lock.lock(); defer { lock.unlock() }
        return targets[tid]?.state
    }

    // MARK: - Executing requests

    public func execute(_ request: AdminRequest) -> AdminResponse {
        lock.lock(); defer { lock.unlock() }
        do {
            return .ok(try dispatch(request))
        } catch let error as AdminError {
            return .failure(error)
        } catch {
            return .failure(AdminError(.invalidRequest, String(describing: error)))
        }
    }

    private func dispatch(_ r: AdminRequest) throws -> String {
        if r.lld == Self.nbdDriverName && r.mode == .portal && r.op == .show {
            // The NBD listeners, in the iSCSI portal format, so tools find their (possibly kernel-chosen) ports.
            return ShowFormatter.portals(fabric.nbdPortals())
        }
        if let lld = r.lld, !lld.isEmpty, lld != Self.driverName { throw AdminError(.noDriver) }
        switch r.mode {
        case .system: return try systemMode(r)
        case .target: return try targetMode(r)
        case .logicalUnit: return try logicalUnitMode(r)
        case .portal: return try portalMode(r)
        case .lld: return try lldMode(r)
        case .account: return try accountMode(r)
        case .connection: return try connectionMode(r)
        case .session:
            // tgt's session_mgmt answers "invalid request" for everything but stat.
            guard r.op == .stat else { throw AdminError(.invalidRequest) }
            return try connectionStat(r)
        }
    }

    private func requireTID(_ r: AdminRequest) throws -> Int {
        guard let tid = r.tid, tid > 0 else { throw AdminError(.invalidRequest, "a positive --tid is required") }
        return tid
    }

    private func requireTarget(_ r: AdminRequest) throws -> Int {
        let tid = try requireTID(r)
        guard targets[tid] != nil else { throw AdminError(.noTarget) }
        return tid
    }

    // MARK: system

    private func systemMode(_ r: AdminRequest) throws -> String {
        switch r.op {
        case .show:
            if r.name == Self.configDumpName {
                return ConfigUpdate.dump(targets: Array(targets.values), accounts: accounts, discovery: discovery,
                                         lunDefaults: options.lunDefaults,
                                         portGroupState: { self.portGroups.state($0) })
            }
            return ShowFormatter.system(state: systemState, debug: debug, driverState: "ready",
                                        backingStores: opener.backingStoreDescriptions, discovery: discovery)
        case .stat:
            return StatFormatter.luns(lunStatLines(targets.values.sorted { $0.tid < $1.tid }))
        case .update:
            guard let name = r.name, let value = r.value else { throw AdminError(.invalidRequest) }
            switch name.lowercased() {
            case "debug":
                guard value == "on" || value == "off" else { throw AdminError(.invalidRequest) }
                debug = value == "on"
            case "state":
                guard let state = State(rawValue: value) else { throw AdminError(.invalidRequest) }
                systemState = state
                publish()
            case "poll_us":
                // ringtgt's own: the cores' busy-poll window (ringtgtd --poll-us), changed at run time.
                guard let us = UInt64(value), us <= 1_000_000 else {
                    throw AdminError(.invalidRequest, "poll_us must be 0...1000000")
                }
                pollNanos = us * 1000
                publish()
            default:
                throw AdminError(.invalidRequest)
            }
            return ""
        case .delete:
            // tgt's rule (is_system_inactive): not while a target exists. --force, ringtgt's, stops anyway; the
            // sessions end and the sheep locks are released as on SIGTERM.
            guard targets.isEmpty || r.force else {
                let tids = targets.keys.sorted().map(String.init).joined(separator: ", ")
                throw AdminError(.invalidRequest, "target(s) \(tids) still exist; delete them first or use --force")
            }
            guard let shutdownHandler else { throw AdminError(.unsupportedOperation) }
            shutdownHandler()
            return ""
        default:
            throw AdminError(.invalidRequest)
        }
    }

    // MARK: target

    private func targetMode(_ r: AdminRequest) throws -> String {
        switch r.op {
        case .new: try newTarget(r); return ""
        case .delete: try deleteTarget(r); return ""
        case .bind: try bind(r, add: true); return ""
        case .unbind: try bind(r, add: false); return ""
        case .update: try updateTarget(r); return ""
        case .show:
            guard let tid = r.tid, tid >= 0 else {
                return ShowFormatter.targets(targets.values.sorted { $0.tid < $1.tid }, sessions: fabric.sessions(),
                                             controllerLUN0: options.controllerLUN0)
            }
            guard let target = targets[tid] else { throw AdminError(.noTarget) }
            return ShowFormatter.targetParameters(target)
                + ALUAKeys.showLines(groupID: target.portGroupID, relativePortID: target.relativeTargetPortID,
                                     state: portGroups.state(target.portGroupID))
        case .stat:
            guard let target = targets[try requireTID(r)] else { throw AdminError(.noTarget) }
            return StatFormatter.luns(lunStatLines([target]))
        default: throw AdminError(.invalidRequest)
        }
    }

    private func newTarget(_ r: AdminRequest) throws {
        let tid = try requireTID(r)
        guard tid <= Int(Int32.max) else { throw AdminError(.invalidRequest, "tid out of range") }
        guard let name = r.targetName, !name.isEmpty else { throw AdminError(.invalidRequest) }
        // tgt_target_create: letters, digits, ':', '.', '-' only.
        guard name.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A)
                                        || $0 == UInt8(ascii: ":") || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "-") }) else {
            throw AdminError(.invalidRequest, "target name \(name) has invalid characters")
        }
        guard name.utf8.count <= Self.maxTargetNameBytes else {
            throw AdminError(.invalidRequest, "target name is longer than \(Self.maxTargetNameBytes) bytes")
        }
        guard targets[tid] == nil else { throw AdminError(.targetExists) }
        let lower = name.lowercased()
        guard !targets.values.contains(where: { $0.name.lowercased() == lower }) else { throw AdminError(.targetExists) }
        targets[tid] = TargetRecord(tid: tid, name: name, lunGeneration: nextGeneration())
        publish()
    }

    private func deleteTarget(_ r: AdminRequest) throws {
        let tid = try requireTarget(r)
        if !r.force && fabric.sessions().contains(where: { $0.tid == tid }) { throw AdminError(.targetActive) }
        guard let removed = targets.removeValue(forKey: tid) else { throw AdminError(.noTarget) }
        publish()
        releaseWhenIdle(removed.luns.values.map(\.unit))
    }

    private func bind(_ r: AdminRequest, add: Bool) throws {
        let tid = try requireTarget(r)
        guard r.initiatorAddress != nil || r.initiatorName != nil else {
            throw AdminError(.invalidRequest, "\(add ? "bind" : "unbind") requires --initiator-address or --initiator-name")
        }
        var target = targets[tid]!
        if let text = r.initiatorAddress {
            guard let rule = InitiatorAddressParser.parse(text) else {
                throw AdminError(.invalidRequest, "'\(text)' is not ALL, an IP address or a network")
            }
            let index = target.addressACL.firstIndex(of: rule)
            if add {
                guard index == nil else { throw AdminError(.aclExists) }
                target.addressACL.append(rule)
            } else {
                guard let index else { throw AdminError(.aclMissing) }
                target.addressACL.remove(at: index)
            }
        }
        if let name = r.initiatorName {
            guard !name.isEmpty, name.utf8.count <= Self.maxTargetNameBytes else {
                throw AdminError(.invalidRequest, "initiator name must be 1 to \(Self.maxTargetNameBytes) bytes")
            }
            let lower = name.lowercased()
            let index = target.nameACL.firstIndex {
                if case .initiatorName(let n) = $0 { return n.lowercased() == lower }
                return false
            }
            if add {
                guard index == nil else { throw AdminError(.aclExists) }
                target.nameACL.append(.initiatorName(name))
            } else {
                guard let index else { throw AdminError(.aclMissing) }
                target.nameACL.remove(at: index)
            }
        }
        targets[tid] = target
        publish()
    }

    private func updateTarget(_ r: AdminRequest) throws {
        let tid = try requireTarget(r)
        guard let name = r.name, let value = r.value else { throw AdminError(.invalidRequest) }
        var target = targets[tid]!
        if ALUAKeys.all.contains(name) {
            let changed = try portGroups.update(&target, name: name, value: value)
            targets[tid] = target
            publish()
            if let changed {
                portGroups.table.announce(changed: changed)
                if name == ALUAKeys.state {
                    // A multipath sheep LU's group: the state goes into the record, so every gateway reports it.
                    for unit in sharedUnits(of: changed) {
                        fabric.sharePortGroups(unit, .state(group: changed.id, changed.state))
                    }
                }
            }
            return
        }
        if name == "state" {
            guard let state = State(rawValue: value) else { throw AdminError(.invalidRequest) }
            target.state = state
            targets[tid] = target
            publish()
            return
        }
        if name.lowercased() == ISCSITargetKeys.aliasKey.lowercased() {
            guard value.utf8.count <= ISCSITargetKeys.maxAliasBytes, !value.utf8.contains(0) else {
                throw AdminError(.invalidRequest, "TargetAlias must be at most \(ISCSITargetKeys.maxAliasBytes) bytes")
            }
            target.alias = value.isEmpty ? nil : value
        } else if name == ISCSITargetKeys.nopIntervalKey || name == ISCSITargetKeys.nopCountKey {
            let limit = name == ISCSITargetKeys.nopIntervalKey ? ISCSITargetKeys.maxNopIntervalSeconds : ISCSITargetKeys.maxNopCount
            guard let n = ISCSITargetKeys.parseUnsigned(value), n <= limit else { throw AdminError(.invalidRequest) }
            target.params[name] = String(n)
        } else {
            guard let key = ISCSITargetKeys.key(named: name) else { throw AdminError(.invalidRequest) }
            guard let normalized = ISCSITargetKeys.normalize(value, for: key) else { throw AdminError(.invalidRequest) }
            target.params[key.name] = normalized
        }
        targets[tid] = target
        publish()
    }

    // MARK: logical unit

    private func logicalUnitMode(_ r: AdminRequest) throws -> String {
        let tid = try requireTID(r)
        guard let lun = r.lun else { throw AdminError(.invalidRequest, "--lun is required") }
        switch r.op {
        case .new: try newLogicalUnit(r, tid: tid, lun: lun)
        case .delete: try deleteLogicalUnit(tid: tid, lun: lun, force: r.force)
        case .update: try updateLogicalUnit(r, tid: tid, lun: lun)
        case .stat:
            // tgt_stat_device_by_id: the target first, then the LUN.
            guard let target = targets[tid] else { throw AdminError(.noTarget) }
            guard target.luns[lun] != nil else { throw AdminError(.noLUN) }
            return StatFormatter.luns(lunStatLines([target], only: lun))
        default: throw AdminError(.unsupportedOperation)
        }
        return ""
    }

    private func newLogicalUnit(_ r: AdminRequest, tid: Int, lun: UInt64) throws {
        guard var target = targets[tid] else { throw AdminError(.noTarget) }
        if target.luns[lun] != nil || (lun == 0 && options.controllerLUN0) { throw AdminError(.lunExists) }
        guard lun <= Self.maxLUNNumber else { throw AdminError(.invalidRequest, "LUN numbers go up to \(Self.maxLUNNumber)") }
        if let type = r.deviceType, type != "disk" {
            throw AdminError(.invalidRequest, "device type \(type) is not supported; ringtgt serves disks")
        }
        guard let path = r.backingStore, !path.isEmpty else {
            throw AdminError(.invalidRequest, "--backing-store is required")
        }
        let bstype = r.bstype ?? options.defaultBackingStoreType
        var flags: BackingOpenFlags = []
        if let text = r.bsoflags {
            guard let parsed = BackingOpenFlags.parse(text) else {
                throw AdminError(.invalidRequest, "bsoflags must be sync, direct or sync:direct")
            }
            flags = parsed
        }
        var blockSize = Self.defaultBlockSize
        if let text = r.blockSize {
            guard let n = ISCSITargetKeys.parseUnsigned(text), Self.supportedBlockSizes.contains(Int(clamping: n)) else {
                throw AdminError(.invalidRequest, "block size must be 512 or 4096")
            }
            blockSize = Int(n)
        }
        var identity = LUNIdentity.tgtDefaults(tid: tid, lun: lun, defaults: self.options.lunDefaults)
        if let params = r.params { try identity.apply(params: params) }
        if identity.lbppbeFromBacking {
            identity.presentation.lbppbe = Self.backingLBPPBE(bstype: bstype, path: path, blockSize: blockSize)
        }

        var options: [String: String] = [:]
        if let raw = r.bsopts {
            for item in raw.split(separator: ";", omittingEmptySubsequences: true) {
                if let eq = item.firstIndex(of: "=") {
                    options[String(item[..<eq])] = String(item[item.index(after: eq)...])
                } else {
                    options[String(item)] = ""
                }
            }
        }
        let spec = BackingSpec(tid: tid, lun: lun, bstype: bstype, path: path, rawOptions: r.bsopts, options: options,
                               openFlags: flags, blockSize: blockSize, readOnly: identity.readOnly)
        let opened: OpenedBacking
        do {
            opened = try opener.open(spec)
        } catch let error as AdminError {
            throw error
        } catch {
            throw AdminError(.invalidRequest, String(describing: error))
        }
        let unit: LogicalUnit
        guard let statistics = statisticsSlots.take() else {
            opener.release(opened.backing)
            throw AdminError(.invalidRequest, "too many logical units (at most \(StatisticsSlots.capacity))")
        }
        do {
            unit = try Self.makeUnit(number: lun, blockSize: blockSize, byteCount: opened.byteCount,
                                     storeCapabilities: opened.capabilities, identity: identity,
                                     backing: opened.backing, bstype: bstype, path: path,
                                     statisticsSlot: statistics.slot, statisticsID: statistics.id)
        } catch {
            statisticsSlots.give(statistics.slot)
            opener.release(opened.backing)
            throw error
        }
        target.luns[lun] = LUNRecord(unit: unit, identity: identity, openFlags: flags, storeCapabilities: opened.capabilities,
                                     bsopts: r.bsopts)
        target.lunGeneration = nextGeneration()
        targets[tid] = target
        publish()
    }

    private func deleteLogicalUnit(tid: Int, lun: UInt64, force: Bool) throws {
        // tgt_device_destroy refuses LUN 0 (its controller) before looking anything up.
        if lun == 0 && options.controllerLUN0 { throw AdminError(.invalidRequest) }
        guard var target = targets[tid], let record = target.luns[lun] else { throw AdminError(.noLUN) }
        // tgt refuses to delete a LUN with commands queued; --force takes it from new commands at once.
        if !force && fabric.commandsInFlight(on: [record.unit]) > 0 { throw AdminError(.lunActive) }
        target.luns.removeValue(forKey: lun)
        target.lunGeneration = nextGeneration()
        targets[tid] = target
        publish()
        releaseWhenIdle([record.unit])
    }

    /// How often a forced delete looks again for commands still in flight on what it removed.
    static let drainPollMicroseconds: UInt32 = 10_000

    /// `units` are no longer in the published configuration, so no command can start on them. Commands
    /// already in flight finish against the store as it is: each holds its LUN and the target it started under,
    /// and the LUN's file descriptor closes with the last reference to it (FileBacking.deinit). What a
    /// store holds outside the process (a sheepdog VDI lock) is given back once no command is left; a command
    /// may wait as long as sheep's own retry bound, so that wait runs off the control thread.
    private func releaseWhenIdle(_ units: [LogicalUnit]) {
        if units.isEmpty { return }
        let fabric = self.fabric, opener = self.opener, slots = self.statisticsSlots
        // The statistics slots go back last too: a command still running would count into the next LUN's.
        if fabric.commandsInFlight(on: units) == 0 {
            for u in units { opener.release(u.backing); slots.give(u.statisticsSlot) }
            return
        }
        Thread.detachNewThread {
            while fabric.commandsInFlight(on: units) > 0 { usleep(Registry.drainPollMicroseconds) }
            for u in units { opener.release(u.backing); slots.give(u.statisticsSlot) }
        }
    }

    /// `--op update --mode logicalunit --params ...`. LogicalUnit is immutable, so a changed identity
    /// means a new LogicalUnit over the same backing: the LUN's SCSI state (reservations, unit
    /// attentions) starts afresh, as after a LUN reset. tgt-admin sends these right after `--op new`.
    /// `online` alone is the medium state of the LU as it is (tgt's lu_online / lu_offline), refused
    /// while an initiator prevents removal.
    private func updateLogicalUnit(_ r: AdminRequest, tid: Int, lun: UInt64) throws {
        guard var target = targets[tid] else { throw AdminError(.noTarget) }
        guard var record = target.luns[lun] else { throw AdminError(.noLUN) }
        guard let params = r.params else { throw AdminError(.invalidRequest, "--params is required") }
        var identity = record.identity
        try identity.apply(params: params)
        let setsOnline = params.split(separator: ",").contains { $0.hasPrefix("online=") }
        // An eject (START STOP UNIT) may have taken the medium away since: a new LogicalUnit keeps that.
        if !setsOnline { identity.presentation.online = record.unit.state.isOnline }
        if setsOnline && !identity.presentation.online && record.unit.state.isRemovalPrevented {
            throw AdminError(.preventRemoval)
        }
        var unchanged = identity
        unchanged.presentation.online = record.identity.presentation.online
        if unchanged == record.identity {
            if setsOnline, !record.unit.state.setOnline(identity.presentation.online) { throw AdminError(.preventRemoval) }
            record.identity = identity
            target.luns[lun] = record
            targets[tid] = target
            return
        }
        let old = record.unit
        record.unit = try Self.makeUnit(number: lun, blockSize: old.blockSize, byteCount: old.byteCount,
                                        storeCapabilities: record.storeCapabilities, identity: identity,
                                        backing: old.backing, bstype: old.bstype, path: old.path,
                                        statisticsSlot: old.statisticsSlot, statisticsID: old.statisticsID)
        record.identity = identity
        target.luns[lun] = record
        targets[tid] = target
        publish()
    }

    static func makeUnit(number: UInt64, blockSize: Int, byteCount: UInt64, storeCapabilities: StoreCapabilities,
                         identity: LUNIdentity, backing: Backing, bstype: String, path: String,
                         statisticsSlot: Int32 = -1, statisticsID: UInt64 = 0) throws -> LogicalUnit {
        var caps = storeCapabilities
        if identity.readOnly { caps.readOnly = true }
        switch identity.thinProvisioning {
        case .some(false):
            caps.canDiscard = false
            caps.discardZeroes = false
            caps.canReportMapping = false
        case .some(true):
            guard storeCapabilities.canDiscard else {
                throw AdminError(.invalidRequest, "backing store type \(bstype) cannot deallocate (thin_provisioning)")
            }
        case .none:
            break
        }
        if let wce = identity.writeCacheEnabled { caps.hasVolatileCache = wce }
        if let blocks = identity.optimalTransferBlocks {
            let (bytes, overflow) = blocks.multipliedReportingOverflow(by: blockSize)
            guard !overflow else { throw AdminError(.invalidRequest, "optimal_xfer_len is too large") }
            caps.optimalTransferBytes = bytes
        }
        return LogicalUnit(number: number, blockSize: blockSize, blockCount: byteCount / UInt64(blockSize),
                           capabilities: caps, vendor: identity.vendor, product: identity.product,
                           revision: identity.revision, serial: identity.serial,
                           naa: LUNIdentity.naaDesignator(scsiID: identity.scsiID),
                           backing: backing, bstype: bstype, path: path, presentation: identity.presentation,
                           statisticsSlot: statisticsSlot, statisticsID: statisticsID)
    }

    /// tgt's bs_rdwr/bs_aio set LBPPBE from the backing file's st_blksize; a block device (blksize 0
    /// there) and its other stores leave it 0.
    static func backingLBPPBE(bstype: String, path: String, blockSize: Int) -> UInt8 {
        guard bstype == "rdwr" || bstype == "aio" else { return 0 }
        var st = stat()
        guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return 0 }
        return LUNIdentity.lbppbe(preferredIOBytes: Int(st.st_blksize), blockSize: blockSize)
    }

    // MARK: portal, lld, account, connection

    private func portalMode(_ r: AdminRequest) throws -> String {
        switch r.op {
        case .show: return ShowFormatter.portals(fabric.portals())
        case .new, .delete: throw AdminError(.unsupportedOperation, "portals are set when ringtgtd starts (--iscsi portal=)")
        default: throw AdminError(.invalidRequest)
        }
    }

    private func lldMode(_ r: AdminRequest) throws -> String {
        switch r.op {
        case .show: return ShowFormatter.llds(targets.values.sorted { $0.tid < $1.tid })
        case .start: return ""
        case .stop:
            if !targets.isEmpty { throw AdminError(.driverActive) }
            throw AdminError(.unsupportedOperation)
        default: throw AdminError(.invalidRequest)
        }
    }

    /// tgt's account commands (usr/target.c account_add/account_del/account_ctl, usr/mgmt.c): accounts are
    /// daemon-wide; binding one to a target makes CHAP mandatory there (incoming), or lets the target
    /// answer mutual CHAP (outgoing, one per target). Deleting an account unbinds it everywhere.
    private func accountMode(_ r: AdminRequest) throws -> String {
        switch r.op {
        case .show:
            // tgt prints nothing at all for an empty list.
            if accounts.isEmpty { return "" }
            return "Account list:\n" + accounts.map { "\(ShowFormatter.tab1)\($0.user)\n" }.joined()
        case .new:
            guard let user = r.user, !user.isEmpty, let password = r.password else {
                throw AdminError(.invalidRequest, "'user' and 'password' options are required")
            }
            guard user.utf8.count <= CHAP.maxNameBytes, password.utf8.count <= CHAP.maxNameBytes else {
                throw AdminError(.invalidRequest, "user and password are at most \(CHAP.maxNameBytes) bytes")
            }
            guard password.utf8.count >= CHAP.minSecretBytes else {
                throw AdminError(.invalidRequest,
                                 "a CHAP secret must be at least \(CHAP.minSecretBytes) bytes (RFC 7143 12.1.3)")
            }
            if accounts.contains(where: { $0.user == user }) { throw AdminError(.userExists) }
            if accounts.count >= Self.maxAccounts { throw AdminError(.tooManyUsers) }
            accounts.insert((user, password), at: 0)
            return ""
        case .delete:
            guard let user = r.user, let i = accounts.firstIndex(where: { $0.user == user }) else {
                throw AdminError(.noUser)
            }
            accounts.remove(at: i)
            var changed = discovery.remove(user)
            for (tid, var t) in targets where t.accounts.remove(user) {
                targets[tid] = t
                changed = true
            }
            if changed { publish() }
            return ""
        case .bind, .unbind:
            // tgtadm sends GLOBAL_TID when --tid is absent: the accounts of discovery sessions.
            var bindings: AccountBindings
            if let tid = r.tid {
                guard let t = targets[tid] else { throw AdminError(.noTarget) }
                bindings = t.accounts
            } else {
                bindings = discovery
            }
            if r.op == .bind {
                guard let user = r.user, accounts.contains(where: { $0.user == user }) else { throw AdminError(.noUser) }
                if r.outgoing {
                    if bindings.outgoing != nil { throw AdminError(.outgoingAccountExists) }
                    try requireDistinctSecrets(outgoing: user, incoming: bindings.incoming)
                    bindings.outgoing = user
                } else {
                    if bindings.incoming.contains(user) { throw AdminError(.userExists) }
                    if let out = bindings.outgoing { try requireDistinctSecrets(outgoing: out, incoming: [user]) }
                    bindings.incoming.append(user)
                }
            } else {
                guard let user = r.user else { throw AdminError(.noUser) }
                if r.outgoing {
                    guard bindings.outgoing == user else { throw AdminError(.noUser) }
                    bindings.outgoing = nil
                } else {
                    guard let i = bindings.incoming.firstIndex(of: user) else { throw AdminError(.noUser) }
                    bindings.incoming.remove(at: i)
                }
            }
            if let tid = r.tid { targets[tid]!.accounts = bindings } else { discovery = bindings }
            publish()
            return ""
        default:
            throw AdminError(.invalidRequest)
        }
    }

    /// RFC 7143 §12.1.3: a secret used to authenticate initiators must not authenticate the target.
    private func requireDistinctSecrets(outgoing: String, incoming: [String]) throws {
        func password(_ user: String) -> String? { accounts.first { $0.user == user }?.password }
        let out = password(outgoing)
        if let same = incoming.first(where: { password($0) == out }) {
            throw AdminError(.invalidRequest, "the outgoing account \(outgoing) has the same secret as the incoming "
                             + "account \(same); a target's secrets must differ in each direction (RFC 7143 12.1.3)")
        }
    }

    private func credentials(_ bindings: AccountBindings) -> CHAPCredentials {
        func account(_ user: String) -> CHAPAccount? {
            accounts.first { $0.user == user }.map { CHAPAccount(user: $0.user, password: $0.password) }
        }
        return CHAPCredentials(incoming: bindings.incoming.compactMap(account), outgoing: bindings.outgoing.flatMap(account))
    }

    private func connectionMode(_ r: AdminRequest) throws -> String {
        switch r.op {
        case .stat: return try connectionStat(r)
        case .show:
            let tid = try requireTarget(r)
            return ShowFormatter.connections(fabric.sessions().filter { $0.tid == tid })
        case .delete: throw AdminError(.unsupportedOperation)
        default: throw AdminError(.invalidRequest)
        }
    }

    // MARK: - Statistics

    /// One line per LUN of `targets` (or only LUN `only`), with every core's counters summed.
    private func lunStatLines(_ targets: [TargetRecord], only: UInt64? = nil) -> [LUNStatLine] {
        var places: [(tid: Int, name: String, lun: UInt64)] = []
        var units: [LogicalUnit] = []
        for t in targets {
            for number in t.luns.keys.sorted() where only == nil || only == number {
                places.append((t.tid, t.name, number))
                units.append(t.luns[number]!.unit)
            }
        }
        let sample = fabric.statistics(of: units)
        return places.indices.map { i in
            LUNStatLine(tid: places[i].tid, targetName: places[i].name, lun: places[i].lun, statistics: sample.luns[i])
        }
    }

    /// `--op stat --mode session|connection`: tgt's iscsi_stat looks the session up by TSIH (`--sid`), and the
    /// connection by `--cid`. Without `--sid`, every connection of the target (ringtgt's addition).
    private func connectionStat(_ r: AdminRequest) throws -> String {
        let tid = try requireTarget(r)
        var list = fabric.statistics(of: []).connections.filter { $0.tid == tid }
        if let sid = r.sid {
            list = list.filter { $0.sid == sid }
            guard !list.isEmpty else { throw AdminError(.noSession) }
            if r.mode == .connection, let cid = r.cid {
                list = list.filter { $0.cid == cid }
                guard !list.isEmpty else { throw AdminError(.noConnection) }
            }
        }
        return StatFormatter.connections(list)
    }

    /// The metrics endpoint's page: every LUN and every logged-in connection, as `--op stat` counts them.
    public func metricsText() -> String {
        lock.lock(); defer { lock.unlock() }
        let lines = lunStatLines(targets.values.sorted { $0.tid < $1.tid })
        return StatFormatter.prometheus(luns: lines, connections: fabric.statistics(of: []).connections)
    }

    // MARK: - Snapshots

    private func nextGeneration() -> UInt64 {
        generationCounter &+= 1
        return generationCounter
    }

    private func publish() {
        snapshotVersion &+= 1
        let alua = portGroups.publish(Array(targets.values))
        let runtimes = targets.values.map { t in
            TargetRuntime(tid: t.tid, name: t.name, alias: t.alias, relativeTargetPortID: t.relativeTargetPortID,
                          luns: t.luns.values.map(\.unit), acl: t.addressACL + t.nameACL, params: t.params,
                          lunGeneration: t.lunGeneration, chap: credentials(t.accounts), offline: t.state == .offline,
                          controllerLUN0: options.controllerLUN0, portGroup: portGroups.group(t.portGroupID), alua: alua)
        }
        let snapshot = ConfigSnapshot(version: snapshotVersion, targets: runtimes, pollNanos: pollNanos,
                                      systemOffline: systemState == .offline, discoveryCHAP: credentials(discovery))
        fabric.publish(snapshot)
        published = snapshot
        sharePortGroupMembership(alua)
    }

    /// Multipath sheep LUs `group` is a group of (ALUATable.units(withGroup:)).
    private func sharedUnits(of group: TargetPortGroup) -> [LogicalUnit] {
        portGroups.table.units(withGroup: group.id).filter { unit in
            if case .sheep(let vol) = unit.backing { return vol.coherent }
            return false
        }
    }

    /// Publishes each multipath sheep LU's ports and groups on this daemon in the shared record when they
    /// differ from what it published last (a new LU, a target moved to another group or port).
    private func sharePortGroupMembership(_ table: ALUATable) {
        var seen: [ObjectIdentifier] = []
        func membership(_ g: [SharedPortGroup]) -> [SharedPortGroup] {
            g.map { SharedPortGroup(id: $0.id, state: .activeOptimized, ports: $0.ports) }
        }
        for t in targets.values.sorted(by: { $0.tid < $1.tid }) {
            for l in t.luns.values {
                let unit = l.unit
                guard case .sheep(let vol) = unit.backing, vol.coherent else { continue }
                let key = ObjectIdentifier(unit)
                if seen.contains(key) { continue }
                seen.append(key)
                let groups = table.sharedGroups(of: unit)
                let before = sharedPortGroups[key]
                if let before, membership(before) == membership(groups) { continue }
                fabric.sharePortGroups(unit, .publish(previous: (before ?? []).flatMap(\.ports), groups: groups))
                sharedPortGroups[key] = groups
            }
        }
        sharedPortGroups = sharedPortGroups.filter { seen.contains($0.key) }
    }
}

extension Registry.AccountBindings {
    /// Unbinds `user` in both directions (tgt's account_del); whether it was bound.
    mutating func remove(_ user: String) -> Bool {
        let wasBound = incoming.contains(user) || outgoing == user
        incoming.removeAll { $0 == user }
        if outgoing == user { outgoing = nil }
        return wasBound
    }
}
