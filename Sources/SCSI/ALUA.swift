// Asymmetric logical unit access (SPC-4 §5.15): target port groups, their access states, and the
// commands that report and set them (REPORT / SET TARGET PORT GROUPS).
//
// A target is one SCSI target port (its relative target port identifier) in one target port group. LUs
// are one device across ports when their NAA designators agree (the same `scsi_id`, as tgt's multipath
// setups make them), so the ports of a LU are every port whose target has a LUN with its NAA; that is
// also how gateways that share a VDI become ports of one LU; their groups and states are kept in the shared
// record in sheep (docs/ALUA.md, "Across gateways").
//
// A group's state is an atomic that STPG (on any core) and the control plane both write. READ and WRITE
// never read it: each LUN's `fastFlags` carries one bit, "this LUN's port is not active", set under the LU
// lock from the group's state, and that bit sends a command down the locked path (as a reservation does),
// where the state decides which commands run.

import Floor
import Store
import Synchronization

extension ALUAState {
    /// States SET TARGET PORT GROUPS may ask for: the primary states (offline and transitioning are the
    /// device's to enter, SPC-4 §6.45).
    var settableByInitiator: Bool { rawValue <= ALUAState.unavailable.rawValue }

    /// RTPG's supported-states byte: T_SUP, O_SUP, U_SUP, S_SUP, AN_SUP, AO_SUP (no LBA-dependent state).
    static let supportedStatesBits: UInt8 = 0x80 | 0x40 | 0x08 | 0x04 | 0x02 | 0x01

    /// The NOT READY additional sense a command gets through a port in this state, or nil when the
    /// state allows it (SPC-4 §5.15.2.4; LIO's target_core_alua.c lists the same commands, and lets
    /// READ CAPACITY through standby ports, which Linux needs to size the device of a standby path).
    func refusal(opcode: UInt8, serviceAction: UInt8) -> ASC? {
        let reportsGroups = opcode == Opcode.maintenanceIn && serviceAction == ServiceAction.reportTargetPortGroups
        let setsGroups = opcode == Opcode.maintenanceOut && serviceAction == ServiceAction.setTargetPortGroups
        let always = opcode == Opcode.inquiry || opcode == Opcode.reportLUNs || opcode == Opcode.requestSense
            || reportsGroups
        switch self {
        case .activeOptimized, .activeNonOptimized:
            return nil
        case .standby:
            switch opcode {
            case _ where always || setsGroups: return nil
            case Opcode.modeSense6, Opcode.modeSense10, Opcode.modeSelect6, Opcode.modeSelect10,
                 Opcode.persistentReserveIn, Opcode.persistentReserveOut, Opcode.readCapacity10:
                return nil
            case Opcode.serviceActionIn16 where serviceAction == ServiceAction.readCapacity16: return nil
            default: return .targetPortInStandbyState
            }
        case .unavailable:
            return always || setsGroups ? nil : .targetPortInUnavailableState
        case .transitioning:
            return always ? nil : .asymmetricAccessStateTransition
        case .offline:
            return always ? nil : .targetPortInOfflineState
        }
    }
}

extension ASC {
    static let asymmetricAccessStateTransition = ASC(0x04, 0x0A)
    static let targetPortInStandbyState = ASC(0x04, 0x0B)
    static let targetPortInUnavailableState = ASC(0x04, 0x0C)
    static let targetPortInOfflineState = ASC(0x04, 0x12)
    static let asymmetricAccessStateChanged = ASC(0x2A, 0x06)
}

extension Opcode {
    static let maintenanceOut: UInt8 = 0xA4
}

extension ServiceAction {
    /// MAINTENANCE IN / MAINTENANCE OUT service actions.
    static let reportTargetPortGroups: UInt8 = 0x0A
    static let setTargetPortGroups: UInt8 = 0x0A
}

/// RTPG's STATUS CODE (SPC-4 table 308).
public enum ALUAStatus {
    static let none: UInt8 = 0x00
    static let alteredBySetTargetPortGroups: UInt8 = 0x01
    static let alteredImplicitly: UInt8 = 0x02
}

public enum ALUALimits {
    /// RTPG's TARGET PORT COUNT is one byte.
    static let maxPortsPerGroupDescriptor = 255
    /// Longest SET TARGET PORT GROUPS parameter list accepted: the header and this many descriptors.
    static let maxSetDescriptors = 1024
    static let setDescriptorBytes = 4
    static let setHeaderBytes = 4
}

/// One target port group. Its id is fixed; its state is shared by every core and by the control plane,
/// and outlives configuration snapshots (the registry keeps the object while a target names the group).
public final class TargetPortGroup: Sendable {
    public let id: UInt16
    private let stateCode: Atomic<UInt8>
    private let statusCode = Atomic<UInt8>(ALUAStatus.none)

    public init(id: UInt16, state: ALUAState = .activeOptimized) {
        self.id = id
        stateCode = Atomic(state.rawValue)
    }

    public var state: ALUAState {
        ALUAState(rawValue: stateCode.load(ordering: .acquiring)) ?? .activeOptimized
    }

    var status: UInt8 { statusCode.load(ordering: .relaxed) }

    /// Sets the state; whether it changed. `explicit`: by SET TARGET PORT GROUPS (else by the device).
    @discardableResult
    public func setState(_ s: ALUAState, explicit: Bool) -> Bool {
        let old = stateCode.exchange(s.rawValue, ordering: .acquiringAndReleasing)
        if old != s.rawValue {
            statusCode.store(explicit ? ALUAStatus.alteredBySetTargetPortGroups : ALUAStatus.alteredImplicitly,
                             ordering: .relaxed)
        }
        return old != s.rawValue
    }
}

/// One target port: the target's relative target port identifier, its group and its LUNs.
public struct ALUAPort: Sendable {
    public let relativeTargetPortID: UInt16
    public let group: TargetPortGroup
    public let luns: [LogicalUnit]

    public init(relativeTargetPortID: UInt16, group: TargetPortGroup, luns: [LogicalUnit]) {
        self.relativeTargetPortID = relativeTargetPortID
        self.group = group
        self.luns = luns
    }

    /// Whether this port leads to the same LU as `lun` (the same LUN object, or the same NAA).
    func reaches(_ lun: LogicalUnit) -> Bool { luns.contains { $0 === lun || $0.naa == lun.naa } }
}

/// Every port and group of the daemon at one configuration snapshot. Immutable: the states live in the
/// groups.
public final class ALUATable: Sendable {
    public let ports: [ALUAPort]
    /// Distinct groups of `ports`, by id.
    public let groups: [TargetPortGroup]

    public init(ports: [ALUAPort]) {
        self.ports = ports
        var seen: [TargetPortGroup] = []
        for p in ports where !seen.contains(where: { $0 === p.group }) { seen.append(p.group) }
        groups = seen.sorted { $0.id < $1.id }
    }

    public func group(id: UInt16) -> TargetPortGroup? { groups.first { $0.id == id } }

    /// Brings every LUN's "port not active" bit in line with its group, raising no unit attention (a new
    /// snapshot: new LUNs, or targets moved between groups), and tells each LU its ports in this table.
    public func refreshAll() {
        for p in ports {
            for lun in p.luns {
                let mine = ports.filter { $0.reaches(lun) }
                    .map { LocalALUAPort(group: $0.group, relativeTargetPortID: $0.relativeTargetPortID) }
                lun.state.shared.withLock { s in
                    s.localPorts = mine
                    s.aluaTable = self
                }
                lun.state.refreshAccess(p.group, raising: false, except: nil)
            }
        }
    }

    /// This daemon's LUs for which group `id` is a group of the LU: through a port of this table, or (a
    /// multipath sheep LU) in the shared record's section it loaded. A state set by SET TARGET PORT GROUPS goes
    /// into the record of each of them, since a group's state is one for all its LUs.
    public func units(withGroup id: UInt16) -> [LogicalUnit] {
        var out: [LogicalUnit] = []
        for p in ports {
            for lun in p.luns where !out.contains(where: { $0 === lun }) {
                if p.group.id == id || lun.state.hasSharedPortGroup(id) { out.append(lun) }
            }
        }
        return out
    }

    /// The LU's groups on this daemon with their ports, as a gateway publishes them in the shared record.
    public func sharedGroups(of lun: LogicalUnit) -> [SharedPortGroup] {
        var out: [SharedPortGroup] = []
        for p in ports where p.reaches(lun) {
            if let i = out.firstIndex(where: { $0.id == p.group.id }) {
                if !out[i].ports.contains(p.relativeTargetPortID) { out[i].ports.append(p.relativeTargetPortID) }
            } else {
                out.append(SharedPortGroup(id: p.group.id, state: p.group.state, ports: [p.relativeTargetPortID]))
            }
        }
        return out.sorted { $0.id < $1.id }
    }

    /// `group` changed state: every LU with a port in it gets ASYMMETRIC ACCESS STATE CHANGED on every
    /// I_T nexus (through all its ports), except `except`, the nexus whose SET TARGET PORT GROUPS did it
    /// (SPC-4 §5.15.2.5). Walks the table without allocating: STPG runs this on a core.
    public func announce(changed group: TargetPortGroup, except: UInt64? = nil) {
        for p in ports {
            for lun in p.luns {
                let affected = p.group === group
                    || ports.contains { q in q.group === group && q.reaches(lun) }
                if affected { lun.state.refreshAccess(p.group, raising: true, except: except) }
            }
        }
    }
}

/// One of this daemon's ports to an LU: its group and relative target port identifier.
public struct LocalALUAPort {
    let group: TargetPortGroup
    let relativeTargetPortID: UInt16
}

extension LUNState {
    /// Loads the ALUA section of a shared record version (docs/ALUA.md, across gateways): the groups this
    /// daemon has take the record's state (a group's state is daemon-wide), and ASYMMETRIC ACCESS STATE
    /// CHANGED goes to every nexus of every LU in a group that changed, as a local change does; the other
    /// gateways' groups are kept for REPORT TARGET PORT GROUPS, and a change among them raises the same unit
    /// attention on this LU's nexuses (not for the first version loaded). `pending`: groups whose state this
    /// gateway changed and has not yet appended, which keep the state this gateway gave them. A version this
    /// gateway wrote changes nothing here, so it raises nothing twice.
    public func adoptPortGroups(_ groups: [SharedPortGroup], pending: [UInt16]) {
        var changed: [TargetPortGroup] = []
        var table: ALUATable? = nil
        shared.withLock { s in
            table = s.aluaTable
            var next = groups
            let pending = pending + s.portGroupStatesPosted
            for i in next.indices where pending.contains(next[i].id) {
                if let local = s.localPorts.first(where: { $0.group.id == next[i].id }) {
                    next[i].state = local.group.state
                } else if let old = s.sharedPortGroups.first(where: { $0.id == next[i].id }) {
                    next[i].state = old.state
                }
            }
            let localIDs = s.localPorts.map(\.group.id)
            let isLocal = { (id: UInt16) in localIDs.contains(id) }
            for g in next {
                guard let local = s.localPorts.first(where: { $0.group.id == g.id })?.group else { continue }
                if local.setState(g.state, explicit: false) { changed.append(local) }
            }
            let remoteBefore = s.sharedPortGroups.filter { !isLocal($0.id) }
            let remoteAfter = next.filter { !isLocal($0.id) }
            if s.sharedPortGroupsLoaded && remoteBefore != remoteAfter && changed.isEmpty {
                queueUAForAll(&s, except: nil, .asymmetricAccessStateChanged)
            }
            s.sharedPortGroups = next
            s.sharedPortGroupsLoaded = true
            publishFlags(s)
        }
        for g in changed { table?.announce(changed: g) }
    }

    /// SET TARGET PORT GROUPS through this gateway set another gateway's group of the LU: kept until the
    /// record says otherwise, with the unit attention for this LU's other nexuses. Whether `id` is such a group.
    func setSharedPortGroupState(_ id: UInt16, _ state: ALUAState, except: UInt64?) {
        shared.withLock { s in
            guard let i = s.sharedPortGroups.firstIndex(where: { $0.id == id }), s.sharedPortGroups[i].state != state
            else { return }
            s.sharedPortGroups[i].state = state
            queueUAForAll(&s, except: except, .asymmetricAccessStateChanged)
            publishFlags(s)
        }
    }

    /// A state change of group `id` is on its way to the home core (`portGroupStatePosted`), or arrived there
    /// (`portGroupStateArrived`, once the home core has it queued).
    public func portGroupStatePosted(_ id: UInt16) {
        shared.withLock { $0.portGroupStatesPosted.append(id) }
    }

    public func portGroupStateArrived(_ id: UInt16) {
        shared.withLock { s in
            if let i = s.portGroupStatesPosted.firstIndex(of: id) { s.portGroupStatesPosted.remove(at: i) }
        }
    }

    /// The state REPORT TARGET PORT GROUPS gives another gateway's group `g`: unavailable when every one of its
    /// ports is in `dead` (those gateways' heartbeats stopped, docs/ALUA.md), the record's state otherwise.
    static func reportedState(_ g: SharedPortGroup, dead: [UInt16]) -> ALUAState {
        !g.ports.isEmpty && g.ports.allSatisfy { dead.contains($0) } ? .unavailable : g.state
    }

    /// The other gateways' ports whose heartbeat stopped (SheepHomeLiveness.swift) are now `dead`: when that
    /// changes the state RTPG reports for one of the other gateways' groups, this LU's nexuses through this
    /// gateway get ASYMMETRIC ACCESS STATE CHANGED, as for a change in the record.
    public func setDeadPorts(_ dead: [UInt16]) {
        shared.withLock { s in
            guard s.deadPorts != dead else { return }
            let localIDs = s.localPorts.map(\.group.id)
            let remote = s.sharedPortGroups.filter { !localIDs.contains($0.id) }
            let before = remote.map { Self.reportedState($0, dead: s.deadPorts) }
            s.deadPorts = dead
            if before != remote.map({ Self.reportedState($0, dead: dead) }) {
                queueUAForAll(&s, except: nil, .asymmetricAccessStateChanged)
            }
            publishFlags(s)
        }
    }

    func hasSharedPortGroup(_ id: UInt16) -> Bool {
        shared.withLock { s in s.sharedPortGroups.contains { $0.id == id } }
    }
}

extension LUNState {
    /// Re-reads `group`'s state into the fast flags (under the LU lock, so the last writer's state wins
    /// whatever order concurrent changes reach the LUN in) and raises ASYMMETRIC ACCESS STATE CHANGED.
    func refreshAccess(_ group: TargetPortGroup, raising: Bool, except: UInt64?) {
        shared.withLock { s in
            s.portActive = group.state.isActive
            if raising { queueUAForAll(&s, except: except, .asymmetricAccessStateChanged) }
            publishFlags(s)
        }
    }
}

extension SCSITask {
    /// The NOT READY sense for this command through a port that is not active, nil if it may run.
    func aluaRefusal() -> ASC? {
        guard let target else { return nil }
        return aluaState(of: target.portGroup).refusal(opcode: opcode, serviceAction: cdb[1] & 0x1F)
    }

    /// `group`'s state for this LU: unavailable while the store has lost the LU's data (through every port
    /// of this daemon alike), the group's own otherwise. Not transitioning: Linux retries a command that
    /// gets that sense on the same path, and the point is to move it to another gateway.
    func aluaState(of group: TargetPortGroup) -> ALUAState {
        backingUnavailable ? .unavailable : group.state
    }

    /// The store has lost the LU's data long enough that this daemon reports it unavailable (LUNState).
    private var backingUnavailable: Bool { lunFlags & LUNState.flagBackingUnavailable != 0 }

    /// REPORT TARGET PORT GROUPS (SPC-4 §6.37): every group with a port to this LU, in the length-only
    /// or the extended-header format.
    mutating func reportTargetPortGroups(buffer b: UnsafeMutableRawBufferPointer) -> SCSIAction {
        guard let lun, let target else { return internalError() }
        let format = cdb[1] >> 5
        if format > 1 { return invalidField(byte: 1, bit: 7) }
        let allocation = Int(cdb.u32(6))
        let table = target.alua
        let header = format == 1 ? 8 : 4
        b.zero(0, header)
        var p = header
        // Another gateway's groups of a multipath sheep LU come from the shared record (empty elsewhere); a
        // group this daemon has lists its ports here and the other gateways' ports in it too.
        let (remote, dead) = lun.state.shared.withLock { ($0.sharedPortGroups, $0.deadPorts) }
        var ids: [UInt16] = table.groups.filter { g in table.ports.contains { $0.group === g && $0.reaches(lun) } }.map(\.id)
        for g in remote where !ids.contains(g.id) { ids.append(g.id) }
        ids.sort()
        for id in ids {
            var ports: [UInt16] = []
            // A group of this daemon counts here only with a port to this LU (adopting a version sets those).
            let local = table.group(id: id).flatMap { g in table.ports.contains { $0.group === g && $0.reaches(lun) } ? g : nil }
            if let g = local {
                for port in table.ports where port.group === g && port.reaches(lun) && !ports.contains(port.relativeTargetPortID) {
                    ports.append(port.relativeTargetPortID)
                }
            }
            let shared = remote.first { $0.id == id }
            for q in shared?.ports ?? [] where !ports.contains(q) { ports.append(q) }
            let count = min(ports.count, ALUALimits.maxPortsPerGroupDescriptor)
            if count == 0 || p + 8 + 4 * count > b.count { continue }
            b.zero(p, 8 + 4 * count)
            if let g = local {
                b.put8(p, aluaState(of: g).rawValue)
                b.put8(p + 5, backingUnavailable ? ALUAStatus.alteredImplicitly : g.status)
            } else if let shared {
                b.put8(p, LUNState.reportedState(shared, dead: dead).rawValue)
                b.put8(p + 5, ALUAStatus.alteredImplicitly)
            }
            b.put8(p + 1, ALUAState.supportedStatesBits)
            b.put16(p + 2, id)
            b.put8(p + 7, UInt8(count))
            p += 8
            for q in ports.prefix(count) {
                b.put16(p + 2, q)
                p += 4
            }
        }
        b.put32(0, UInt32(p - 4))
        if format == 1 { b.put8(4, 0x10) }          // FORMAT TYPE 001b; implicit transition time 0: none given
        return completeDataIn(generated: p, allocationLength: allocation)
    }

    /// SET TARGET PORT GROUPS (SPC-4 §6.45): the parameter list follows.
    mutating func startSetTargetPortGroups() -> SCSIAction {
        let length = Int(cdb.u32(6))
        if length == 0 { return completeGood() }
        if length < ALUALimits.setHeaderBytes
            || length > ALUALimits.setHeaderBytes + ALUALimits.maxSetDescriptors * ALUALimits.setDescriptorBytes {
            return fail(SenseKey.illegalRequest, .parameterListLengthError)
        }
        return requestParameterList(length: length)
    }

    /// Every descriptor is checked before any group changes, so a bad list changes nothing. On a multipath
    /// sheep LU another gateway's group of the LU is a group too, and each state set goes into the shared
    /// record before GOOD (docs/ALUA.md).
    mutating func setTargetPortGroups(_ list: UnsafeMutableRawBufferPointer) -> SCSIAction {
        guard let target, let nexus, let lun else { return internalError() }
        let table = target.alua
        if list.count < ALUALimits.setHeaderBytes { return fail(SenseKey.illegalRequest, .parameterListLengthError) }
        let count = (list.count - ALUALimits.setHeaderBytes) / ALUALimits.setDescriptorBytes
        for i in 0 ..< count {
            let p = ALUALimits.setHeaderBytes + i * ALUALimits.setDescriptorBytes
            guard let s = ALUAState(rawValue: list.get8(p) & 0x0F), s.settableByInitiator else {
                return invalidParameter(byte: p, bit: 3)
            }
            let id = list.get16(p + 2)
            if table.group(id: id) == nil && !lun.state.hasSharedPortGroup(id) { return invalidParameter(byte: p + 2) }
        }
        for i in 0 ..< count {
            let p = ALUALimits.setHeaderBytes + i * ALUALimits.setDescriptorBytes
            guard let s = ALUAState(rawValue: list.get8(p) & 0x0F) else { continue }
            if let g = table.group(id: list.get16(p + 2)) {
                if g.setState(s, explicit: true) { table.announce(changed: g, except: nexus.id) }
            } else {
                lun.state.setSharedPortGroupState(list.get16(p + 2), s, except: nexus.id)
            }
        }
        if count > 0, sharesReservations {
            phase = .aluaShare
            auxCount = 0
            return shareNextGroupState(list)
        }
        return completeGood()
    }

    /// Appends the state of descriptor `auxCount` to the shared record, or of the next one: a group named again
    /// later in the list ends in the later state, so only that one is sent, and a list sends at most one
    /// change per group of the LU (each valid group is this daemon's or in the record's bounded section).
    private mutating func shareNextGroupState(_ list: UnsafeMutableRawBufferPointer) -> SCSIAction {
        let count = (list.count - ALUALimits.setHeaderBytes) / ALUALimits.setDescriptorBytes
        func group(_ i: Int) -> UInt16 { list.get16(ALUALimits.setHeaderBytes + i * ALUALimits.setDescriptorBytes + 2) }
        while auxCount + 1 < count && (auxCount + 1 ..< count).contains(where: { group($0) == group(auxCount) }) {
            auxCount += 1
        }
        let p = ALUALimits.setHeaderBytes + auxCount * ALUALimits.setDescriptorBytes
        guard let s = ALUAState(rawValue: list.get8(p) & 0x0F) else { return internalError() }
        return .store(.sharePortGroupState(target: .own, group: list.get16(p + 2), stateCode: s.rawValue))
    }

    /// A group's state is in the shared record: the next descriptor's, or GOOD.
    mutating func aluaShareCompleted(_ r: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        if let fail = checkStore(r, reading: false) { return fail }
        let list = UnsafeMutableRawBufferPointer(rebasing: buffer[0 ..< min(chunkBytes, buffer.count)])
        let count = (list.count - ALUALimits.setHeaderBytes) / ALUALimits.setDescriptorBytes
        auxCount += 1
        if auxCount < count { return shareNextGroupState(list) }
        return completeGood()
    }
}
