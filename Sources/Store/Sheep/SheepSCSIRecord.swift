// The SCSI state every gateway of a multipath sheepdog LU must agree on (issue 14; docs/CLUSTER-STATE.md):
// persistent reservations, the SPC-2 reservation and the COMPARE AND WRITE lease, kept in sheep as a chain
// of VDI attributes. Version N of the record is the attribute `ringtgt.scsi.N`; a gateway that wants to
// write version N+1 creates that attribute with SD_FLAG_CMD_EXCL, a cluster op that exactly one creator
// wins, and the record travels in the create itself, so a version is never seen half written. This file is
// the pure part: the record's encoding, the chain's rules and the lease. The home core does the sheep I/O.
//
// Off the I/O path: a record is built, encoded and decoded only when a reservation changes or a gateway
// re-reads the chain, never per READ or WRITE.

import Floor
import URing
import SheepProtocol

public enum ClusterStateLimits {
    /// COMPARE AND WRITE's section (SheepCompareSection.swift): a waiter breaks a lease state it has seen
    /// unchanged this long, so a gateway that dies holding it blocks the others about this long.
    static let leaseSeconds: UInt64 = 10
    /// A holder stops acting this long before `leaseSeconds` by its own monotonic clock: what it sent in time
    /// must reach sheep within this margin, before a waiter may break its lock.
    static let leaseSkewSeconds: UInt64 = 2
    /// Gateways re-read the chain at least this often even without INODE_INVALIDATED (a gateway that sent
    /// no I/O meanwhile does not get one).
    static let refreshIntervalSeconds: UInt64 = 2
    /// Versions probed past the one a gateway knows before it gives up and reports the LU busy: a chain
    /// that grows faster than this per refresh means something writes records in a loop.
    static let chainProbeMax = 64
    /// Longest initiator port name the record stores (iSCSI names are at most 223 bytes, RFC 7143 §4.2.7.1).
    static let initiatorNameBytesMax = 223
    /// Target port groups of one LU the record holds (format 3), over all its gateways: a group published
    /// beyond this is left out (and logged by nobody: the LU keeps working through the groups it has).
    static let portGroupsMax = 16
    /// Relative target port identifiers one group of the record lists.
    static let portsPerGroupMax = 16
}

/// One target port group of a multipath LU as the shared record carries it (format 3): the group's id (an
/// LU-wide identity, SPC-4 §5.15.2.1), its asymmetric access state, and the relative target port identifiers
/// of the LU's ports in it, on every gateway that published them.
public struct SharedPortGroup: Equatable, Sendable {
    public var id: UInt16
    public var state: ALUAState
    public var ports: [UInt16]

    public init(id: UInt16, state: ALUAState, ports: [UInt16]) {
        self.id = id
        self.state = state
        self.ports = ports
    }
}

/// A change to the record's ALUA section, made by a gateway's configuration or by SET TARGET PORT GROUPS.
public enum PortGroupChange: Equatable, Sendable {
    /// This gateway's ports to the LU and their groups: `previous` are the ports it published before (gone now
    /// or moved), `groups` its groups now. A group the record already has keeps the record's state; a new one
    /// starts in the state given.
    case publish(previous: [UInt16], groups: [SharedPortGroup])
    /// A group's state changed (SET TARGET PORT GROUPS, ringtgtadm `alua_state`, a reload).
    case state(group: UInt16, ALUAState)
}

/// A COMPARE AND WRITE critical section granted to one gateway until `expiresAtSeconds` (CLOCK_REALTIME).
public struct ClusterLease: Equatable {
    var gateway: UInt64
    var expiresAtSeconds: UInt64

    /// Whether another gateway must still respect it at `nowSeconds`.
    func isHeld(nowSeconds: UInt64) -> Bool { nowSeconds < expiresAtSeconds }

    /// Whether its holder may still act on it at `nowSeconds`: it stops `leaseSkewSeconds` early.
    func holderMayUse(_ gateway: UInt64, nowSeconds: UInt64) -> Bool {
        self.gateway == gateway && nowSeconds + ClusterStateLimits.leaseSkewSeconds < expiresAtSeconds
    }

    static func granted(to gateway: UInt64, nowSeconds: UInt64) -> ClusterLease {
        ClusterLease(gateway: gateway, expiresAtSeconds: nowSeconds + ClusterStateLimits.leaseSeconds)
    }
}

/// One version of the record.
public struct SheepSCSIRecord: Equatable {
    /// "RTSC", then the format, so a gateway never adopts an attribute it does not understand. Format 2 is
    /// format 1 with `resets` appended, format 3 is format 2 with the ALUA section (`portGroups`) appended,
    /// format 4 is format 3 with a flags byte (bit 0: APTPL) and `powerOns` appended; older formats are still
    /// read (as no reset yet, no groups yet, APTPL 0 and no power-on yet: APTPL=1 was refused before format 4),
    /// and a gateway that only knows an older format refuses newer ones (it keeps its version and logs) rather
    /// than misread them.
    static let magic: UInt32 = 0x4353_5452
    static let format: UInt16 = 4
    static let formatsRead: ClosedRange<UInt16> = 1 ... 4
    static let attributePrefix = "ringtgt.scsi."

    /// Position in the chain: the attribute `ringtgt.scsi.<version>` holds it. Version 0 is "no record yet".
    var version: UInt64 = 0
    /// The gateway that wrote it (its daemon's id), for logs and for the lease.
    var writer: UInt64 = 0
    public var spc2Holder: PortIdentity? = nil
    var prGeneration: UInt32 = 0
    public var registrations: [PRRegistration] = []
    public var reserved = false
    var prType: UInt8 = 0
    var prHolder: PortIdentity? = nil
    var compareLease: ClusterLease? = nil
    /// LOGICAL UNIT RESETs and target resets of the LU through any gateway so far: a gateway that adopts a
    /// higher count raises the reset's unit attention for its own nexuses (format 2).
    public var resets: UInt64 = 0
    /// The LU's target port groups as the gateways published them, by id (format 3): every gateway reports
    /// all of them in REPORT TARGET PORT GROUPS, and takes the state of those it has itself from here.
    var portGroups: [SharedPortGroup] = []
    /// The last valid APTPL bit of a REGISTER or REGISTER AND IGNORE EXISTING KEY (SPC-4 §5.9.4): whether the
    /// registrations and the persistent reservation persist through the LU's power loss (format 4).
    var aptpl = false
    /// Power-ons of the LU so far (docs/CLUSTER-STATE.md, "APTPL"): a gateway that found no live peer appends
    /// one, clearing what APTPL 0 does not keep, only if the count is still the one it first read (format 4).
    public var powerOns: UInt64 = 0

    static func attributeKey(version: UInt64) -> String { attributePrefix + String(version) }

    /// The record that follows this one, written by `writer`.
    public func successor(writer: UInt64) -> SheepSCSIRecord {
        var next = self
        next.version = version &+ 1
        next.writer = writer
        return next
    }

    /// Whether the chain moved on past this record: a gateway adopts only newer versions, so a late reply
    /// to an older probe never rolls its state back.
    func isSuperseded(by other: SheepSCSIRecord) -> Bool { other.version > version }

    public var persistentReservation: PersistentReservationState {
        var pr = PersistentReservationState()
        pr.generation = prGeneration
        pr.registrations = registrations
        pr.reserved = reserved
        pr.type = prType
        pr.holder = prHolder
        pr.aptpl = aptpl
        return pr
    }

    public mutating func setPersistentReservation(_ pr: PersistentReservationState) {
        prGeneration = pr.generation
        registrations = pr.registrations
        reserved = pr.reserved
        prType = pr.type
        prHolder = pr.holder
        aptpl = pr.aptpl
    }

    /// What a power-on of the LU would take from this version: the SPC-2 reservation, and with APTPL 0 the
    /// registrations and the persistent reservation (SPC-4 §5.9.4, §5.9.5).
    var losesStateAtPowerOn: Bool {
        spc2Holder != nil || (!aptpl && (!registrations.isEmpty || reserved))
    }

    // MARK: Encoding (little-endian; strings as u16 length + bytes)

    func encoded() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(64 + registrations.count * 48)
        func u8(_ v: UInt8) { out.append(v) }
        func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func port(_ p: PortIdentity) {
            let name = Array(p.initiatorName.utf8.prefix(ClusterStateLimits.initiatorNameBytesMax))
            u16(UInt16(name.count))
            out += name
            u64(p.isid)
            u16(p.relativeTargetPortID)
        }
        func optionalPort(_ p: PortIdentity?) {
            u8(p == nil ? 0 : 1)
            if let p { port(p) }
        }
        u32(Self.magic)
        u16(Self.format)
        u64(version)
        u64(writer)
        optionalPort(spc2Holder)
        u32(prGeneration)
        u8(reserved ? 1 : 0)
        u8(prType)
        optionalPort(prHolder)
        u16(UInt16(registrations.count))
        for r in registrations {
            port(r.port)
            u64(r.key)
        }
        u8(compareLease == nil ? 0 : 1)
        if let l = compareLease {
            u64(l.gateway)
            u64(l.expiresAtSeconds)
        }
        u64(resets)
        let groups = portGroups.prefix(ClusterStateLimits.portGroupsMax)
        u16(UInt16(groups.count))
        for g in groups {
            u16(g.id)
            u8(g.state.rawValue)
            let ports = g.ports.prefix(ClusterStateLimits.portsPerGroupMax)
            u8(UInt8(ports.count))
            for p in ports { u16(p) }
        }
        u8(aptpl ? 1 : 0)
        u64(powerOns)
        return out
    }

    /// nil for anything that is not a whole record of this format within the bounds (a gateway keeps the
    /// version it has and logs, rather than adopt a damaged one).
    init?(decoding bytes: [UInt8]) {
        var reader = RecordReader(bytes: bytes)
        guard reader.u32() == Self.magic, let format = reader.u16(), Self.formatsRead.contains(format),
              let version = reader.u64(), let writer = reader.u64(),
              let spc2 = reader.optionalPort(), let generation = reader.u32(),
              let reserved = reader.u8(), reserved <= 1, let type = reader.u8(),
              let holder = reader.optionalPort(), let count = reader.u16(),
              Int(count) <= PersistentReservationState.maxRegistrations
        else { return nil }
        var regs: [PRRegistration] = []
        for _ in 0..<count {
            guard let p = reader.port(), let key = reader.u64() else { return nil }
            regs.append(PRRegistration(port: p, key: key))
        }
        guard let hasLease = reader.u8(), hasLease <= 1 else { return nil }
        var lease: ClusterLease? = nil
        if hasLease == 1 {
            guard let g = reader.u64(), let e = reader.u64() else { return nil }
            lease = ClusterLease(gateway: g, expiresAtSeconds: e)
        }
        var resets: UInt64 = 0
        if format >= 2 {
            guard let n = reader.u64() else { return nil }
            resets = n
        }
        var groups: [SharedPortGroup] = []
        if format >= 3 {
            guard let n = reader.u16(), Int(n) <= ClusterStateLimits.portGroupsMax else { return nil }
            for _ in 0 ..< n {
                guard let id = reader.u16(), let code = reader.u8(), let state = ALUAState(rawValue: code),
                      let count = reader.u8(), Int(count) <= ClusterStateLimits.portsPerGroupMax,
                      !groups.contains(where: { $0.id == id })
                else { return nil }
                var ports: [UInt16] = []
                for _ in 0 ..< count {
                    guard let p = reader.u16() else { return nil }
                    ports.append(p)
                }
                groups.append(SharedPortGroup(id: id, state: state, ports: ports))
            }
        }
        var flags: UInt8 = 0
        var powerOns: UInt64 = 0
        if format >= 4 {
            guard let f = reader.u8(), f <= 1, let n = reader.u64() else { return nil }
            flags = f
            powerOns = n
        }
        guard reader.atEnd else { return nil }
        self.aptpl = flags & 1 != 0
        self.powerOns = powerOns
        self.portGroups = groups
        self.resets = resets
        self.version = version
        self.writer = writer
        self.spc2Holder = spc2
        self.prGeneration = generation
        self.reserved = reserved == 1
        self.prType = type
        self.prHolder = holder
        self.registrations = regs
        self.compareLease = lease
    }

    init() {}
}

/// A change to the shared state made outside a command (docs/CLUSTER-STATE.md): nothing waits to apply it
/// again after a lost race, so the home core keeps it and applies it to whatever version is newest.
public enum SharedStateChange: Equatable {
    /// The SPC-2 reservation of this I_T nexus ended with its session (logout, nexus loss).
    case releaseSPC2(PortIdentity)
    /// A LOGICAL UNIT RESET or target reset through this gateway: it releases the SPC-2 reservation and
    /// counts one more reset, which the other gateways report to their nexuses.
    case reset
    /// The LU's target port groups: this gateway's ports and groups, or a group's state (docs/ALUA.md).
    case portGroups(PortGroupChange)
    /// The LU powers on (no live gateway of it was found, docs/CLUSTER-STATE.md): applied only to a record that
    /// still counts `seen` power-ons (else another gateway powered it on since, and serves), it counts one more,
    /// releases the SPC-2 reservation and, with APTPL 0, removes every registration and the reservation;
    /// PRgeneration starts again at 0 (SPC-4 §6.16.2).
    case powerOn(seen: UInt64)
}

extension SheepSCSIRecord {
    /// The version after this one with `changes` applied in order, written by `writer`; nil when they change
    /// nothing (a released reservation someone else has since replaced is not released again).
    func applying(_ changes: [SharedStateChange], writer: UInt64) -> SheepSCSIRecord? {
        var next = successor(writer: writer)
        for c in changes {
            switch c {
            case .releaseSPC2(let p):
                if next.spc2Holder == p { next.spc2Holder = nil }
            case .reset:
                next.spc2Holder = nil
                next.resets &+= 1
            case .portGroups(.publish(let previous, let groups)):
                next.portGroups = Self.publishing(groups, replacing: previous, in: next.portGroups)
            case .portGroups(.state(let id, let state)):
                if let i = next.portGroups.firstIndex(where: { $0.id == id }) { next.portGroups[i].state = state }
            case .powerOn(let seen):
                guard next.powerOns == seen else { continue }
                next.powerOns &+= 1
                next.spc2Holder = nil
                next.prGeneration = 0
                if !next.aptpl {
                    next.registrations = []
                    next.reserved = false
                    next.prType = 0
                    next.prHolder = nil
                }
            }
        }
        return next == successor(writer: writer) ? nil : next
    }

    /// `existing` with one gateway's ports replaced: its previous and present ports leave every group, then
    /// join their groups now. Relative target port ids are LU-wide (SPC-4), so a port id names one port
    /// whichever gateway has it. A group the record has keeps its state; a new one takes the publisher's. A
    /// group left without ports is no group of the LU any more. Sorted by id, within the bounds.
    static func publishing(_ groups: [SharedPortGroup], replacing previous: [UInt16],
                           in existing: [SharedPortGroup]) -> [SharedPortGroup] {
        var out = existing
        let leaving = previous + groups.flatMap(\.ports)
        for i in out.indices { out[i].ports.removeAll { leaving.contains($0) } }
        for g in groups {
            if let i = out.firstIndex(where: { $0.id == g.id }) {
                for p in g.ports where !out[i].ports.contains(p) { out[i].ports.append(p) }
            } else {
                out.append(g)
            }
        }
        out.removeAll { $0.ports.isEmpty }
        out.sort { $0.id < $1.id }
        for i in out.indices where out[i].ports.count > ClusterStateLimits.portsPerGroupMax {
            out[i].ports.removeLast(out[i].ports.count - ClusterStateLimits.portsPerGroupMax)
        }
        if out.count > ClusterStateLimits.portGroupsMax { out.removeLast(out.count - ClusterStateLimits.portGroupsMax) }
        return out
    }
}

extension PRRegistration: Equatable {
    public static func == (a: PRRegistration, b: PRRegistration) -> Bool { a.port == b.port && a.key == b.key }
}

/// Bounds-checked little-endian reads; every getter returns nil past the end.
private struct RecordReader {
    let bytes: [UInt8]
    var at = 0

    var atEnd: Bool { at == bytes.count }

    private mutating func take<T: FixedWidthInteger>(_: T.Type) -> T? {
        let n = MemoryLayout<T>.size
        guard at + n <= bytes.count else { return nil }
        var v: T = 0
        for i in 0..<n { v |= T(bytes[at + i]) << (8 * i) }
        at += n
        return v
    }

    mutating func u8() -> UInt8? { take(UInt8.self) }
    mutating func u16() -> UInt16? { take(UInt16.self) }
    mutating func u32() -> UInt32? { take(UInt32.self) }
    mutating func u64() -> UInt64? { take(UInt64.self) }

    mutating func port() -> PortIdentity? {
        guard let n = u16(), Int(n) <= ClusterStateLimits.initiatorNameBytesMax, at + Int(n) <= bytes.count else { return nil }
        let name = String(decoding: bytes[at..<(at + Int(n))], as: UTF8.self)
        at += Int(n)
        guard let isid = u64(), let rtpi = u16() else { return nil }
        return PortIdentity(initiatorName: name, isid: isid, relativeTargetPortID: rtpi)
    }

    /// .some(nil) for "absent", nil for a damaged field.
    mutating func optionalPort() -> PortIdentity?? {
        guard let present = u8(), present <= 1 else { return nil }
        if present == 0 { return .some(nil) }
        guard let p = port() else { return nil }
        return .some(p)
    }
}
