// The objects that the control plane builds and the reactors read: targets, logical units and I_T nexuses.
// A ConfigSnapshot is immutable once published; a LogicalUnit keeps its identity across snapshots, so a
// LUN that did not change keeps its state (reservations, unit attentions) when another LUN is added.

/// One exported SCSI logical unit. Created by the control plane when the LUN is added; shared by every
/// core. Its fields are immutable; mutable SCSI state (reservations, unit attentions, mode pages) lives
/// in `state`, which synchronises itself off the fast path.
import Floor
import Store
public final class LogicalUnit: @unchecked Sendable {
    public let number: UInt64
    public let blockSize: Int
    public let blockCount: UInt64
    public let capabilities: StoreCapabilities
    public let vendor: String            // INQUIRY T10 VENDOR IDENTIFICATION (8 chars)
    public let product: String           // INQUIRY PRODUCT IDENTIFICATION (16 chars)
    public let revision: String          // INQUIRY PRODUCT REVISION LEVEL (4 chars)
    public let serial: String            // VPD 0x80
    public let naa: [UInt8]              // 16-byte NAA IEEE Registered Extended designator (VPD 0x83)
    public let backing: Backing          // what the reactor drives
    public let state: LUNState           // SCSI-level shared state (SCSI/LUNState.swift)
    /// The store's word on whether its data can be reached (sheep: the node's connections); nil: always.
    let reachability: BackingReachability?
    /// COMPARE AND WRITE runs one at a time per LUN across all cores (its read, compare and write must not
    /// interleave with another's: VMware ATS). Taken with a compare-exchange by the command's core and polled
    /// by waiters; READ and WRITE never touch it.
    let compareAndWriteGate = Atomic<Bool>(false)
    /// Backing-store type and path as the admin gave them (shown by `--op show`).
    public let bstype: String
    public let path: String
    /// tgt's lbppbe, la_lba, optimal_xfer_gran, removable, online and sense_format.
    public let presentation: LUNPresentation
    /// Where each core counts this LUN's statistics (LUNStatisticsTable), -1 = not counted; and the id that
    /// tells this LUN's counts from those of an earlier LUN in the same slot. Kept by `--op update`.
    public let statisticsSlot: Int32
    public let statisticsID: UInt64

    public init(number: UInt64, blockSize: Int, blockCount: UInt64, capabilities: StoreCapabilities,
                vendor: String = "RINGTGT", product: String = "VIRTUAL-DISK", revision: String = "0001",
                serial: String, naa: [UInt8], backing: Backing, bstype: String, path: String,
                presentation: LUNPresentation = LUNPresentation(),
                statisticsSlot: Int32 = -1, statisticsID: UInt64 = 0) {
        precondition(blockSize == 512 || blockSize == 4096, "block size must be 512 or 4096")
        precondition(naa.count == 16, "NAA designator is 16 bytes")
        self.number = number
        self.blockSize = blockSize
        self.blockCount = blockCount
        self.capabilities = capabilities
        self.vendor = vendor
        self.product = product
        self.revision = revision
        self.serial = serial
        self.naa = naa
        self.backing = backing
        if case .sheep(let volume) = backing { reachability = volume.reachability } else { reachability = nil }
        self.bstype = bstype
        self.path = path
        self.presentation = presentation
        self.statisticsSlot = statisticsSlot
        self.statisticsID = statisticsID
        self.state = LUNState(blockSize: blockSize, blockCount: blockCount, capabilities: capabilities,
                              removable: presentation.removable, online: presentation.online)
        if case .sheep(let vol) = backing, vol.coherent { vol.lunState = state }
    }

    public var byteCount: UInt64 { blockCount &* UInt64(blockSize) }

    public func tryEnterCompareAndWrite() -> Bool {
        compareAndWriteGate.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged
    }

    public func leaveCompareAndWrite() { compareAndWriteGate.store(false, ordering: .releasing) }
}

/// One target as the reactors see it. Immutable; a configuration change publishes a new instance.
public final class TargetRuntime: @unchecked Sendable {
    public let tid: Int
    public let name: String
    public let alias: String?
    public let portalGroupTag: UInt16
    public let relativeTargetPortID: UInt16
    /// LUNs sorted by number. LUN 0 may be absent.
    public let luns: [LogicalUnit]
    public let acl: [ACLRule]
    /// iSCSI keys the admin set with `--op update --mode target --name K --value V`, as text.
    public let params: [String: String]
    /// Monotonic per-target version; a change of the LUN list raises REPORTED LUNS DATA HAS CHANGED.
    public let lunGeneration: UInt64
    /// Per-target NOP-In timing (`--name nop_interval` / `nop_count`), overriding the daemon's `--iscsi` values.
    public let nopIntervalSeconds: UInt64?
    public let nopCount: UInt64?
    /// CHAP accounts bound to the target (`tgtadm --op bind --mode account`).
    public let chap: CHAPCredentials
    /// `--op update --mode target --name state --value offline`: new logins are refused (tgt's
    /// SCSI_TARGET_OFFLINE); sessions already logged in go on.
    public let offline: Bool
    /// `ringtgtd --lun0-controller`: LUN 0, unless an LU is configured there, answers as tgt's storage
    /// array controller (SCSI/ControllerLUN.swift).
    public let controllerLUN0: Bool
    /// The target port group this target's port is in, and every port and group of the daemon (SCSI/ALUA.swift).
    public let portGroup: TargetPortGroup
    public let alua: ALUATable

    /// Without `portGroup`, the target is alone in a group of its own (id 1, active/optimized).
    public init(tid: Int, name: String, alias: String? = nil, portalGroupTag: UInt16 = 1,
                relativeTargetPortID: UInt16 = 1, luns: [LogicalUnit], acl: [ACLRule],
                params: [String: String], lunGeneration: UInt64, chap: CHAPCredentials = CHAPCredentials(),
                offline: Bool = false, controllerLUN0: Bool = false, portGroup: TargetPortGroup? = nil,
                alua: ALUATable? = nil) {
        self.tid = tid
        self.name = name
        self.alias = alias
        self.portalGroupTag = portalGroupTag
        self.relativeTargetPortID = relativeTargetPortID
        self.luns = luns.sorted { $0.number < $1.number }
        self.acl = acl
        self.params = params
        self.controllerLUN0 = controllerLUN0
        self.lunGeneration = lunGeneration
        self.chap = chap
        self.offline = offline
        let group = portGroup ?? TargetPortGroup(id: 1)
        self.portGroup = group
        self.alua = alua ?? ALUATable(ports: [ALUAPort(relativeTargetPortID: relativeTargetPortID, group: group,
                                                       luns: luns)])
        nopIntervalSeconds = params["nop_interval"].flatMap { UInt64($0) }
        nopCount = params["nop_count"].flatMap { UInt64($0) }.flatMap { $0 == 0 ? nil : $0 }
    }

    /// Binary search; LUN tables are small and sorted.
    @inline(__always)
    @inlinable public func lun(_ number: UInt64) -> LogicalUnit? {
        var lo = 0, hi = luns.count
        while lo < hi {
            let mid = (lo + hi) >> 1
            let n = luns[mid].number
            if n == number { return luns[mid] }
            if n < number { lo = mid + 1 } else { hi = mid }
        }
        return nil
    }
}

/// Everything the reactors need from the configuration at one instant.
public final class ConfigSnapshot: @unchecked Sendable {
    public let version: UInt64
    public let targets: [TargetRuntime]   // sorted by tid
    /// `--op update --mode sys --name poll_us`: each core's busy-poll window, nil = the `--poll-us` option.
    public let pollNanos: UInt64?
    /// `--op update --mode sys --name State --value offline`: every new login is refused, discovery too
    /// (tgt turns connections away at accept); sessions already logged in go on.
    public let systemOffline: Bool
    /// Accounts bound without a target (`tgtadm --op bind --mode account --user U`): tgt's global target,
    /// whose accounts discovery sessions authenticate with.
    public let discoveryCHAP: CHAPCredentials

    public init(version: UInt64, targets: [TargetRuntime], pollNanos: UInt64? = nil, systemOffline: Bool = false,
                discoveryCHAP: CHAPCredentials = CHAPCredentials()) {
        self.version = version
        self.targets = targets.sorted { $0.tid < $1.tid }
        self.pollNanos = pollNanos
        self.systemOffline = systemOffline
        self.discoveryCHAP = discoveryCHAP
    }

    public func target(named name: String) -> TargetRuntime? {
        let lower = name.lowercased()
        return targets.first { $0.name.lowercased() == lower }
    }

    public func target(tid: Int) -> TargetRuntime? { targets.first { $0.tid == tid } }

    public static let empty = ConfigSnapshot(version: 0, targets: [])
}

/// What a session's commands run against: the target as the session last saw it, and its I_T nexus. One
/// object per session, made again only when a reload replaces the target, so a command in flight holds both
/// with one reference. Through the target's LUN list that reference also keeps the command's LUN alive.
public final class SessionBinding: @unchecked Sendable {
    public let target: TargetRuntime
    public let nexus: Nexus

    public init(target: TargetRuntime, nexus: Nexus) {
        self.target = target
        self.nexus = nexus
    }
}

/// An I_T nexus: one iSCSI session's initiator port and target port. Reservations, persistent
/// reservation registrations and unit attentions are kept per nexus.
public final class Nexus: @unchecked Sendable {
    private static let counter = NexusCounter()

    /// Process-wide unique, never reused.
    public let id: UInt64
    public let initiatorName: String
    /// The 6-byte ISID as a 48-bit number.
    public let isid: UInt64
    public let targetName: String
    public let portalGroupTag: UInt16
    public let relativeTargetPortID: UInt16

    public init(initiatorName: String, isid: UInt64, targetName: String, portalGroupTag: UInt16,
                relativeTargetPortID: UInt16) {
        self.id = Nexus.counter.next()
        self.initiatorName = initiatorName
        self.isid = isid & 0xFFFF_FFFF_FFFF
        self.targetName = targetName
        self.portalGroupTag = portalGroupTag
        self.relativeTargetPortID = relativeTargetPortID
    }

    /// iSCSI initiator port name (RFC 7143 §4.2.7.4): "<name>,i,0x<isid 12 hex digits>".
    public var initiatorPortName: String {
        let hex = String(isid, radix: 16)
        return "\(initiatorName),i,0x\(String(repeating: "0", count: max(0, 12 - hex.count)))\(hex)"
    }

    /// iSCSI target port name: "<name>,t,0x<tpgt 4 hex digits>".
    public var targetPortName: String {
        let hex = String(portalGroupTag, radix: 16)
        return "\(targetName),t,0x\(String(repeating: "0", count: max(0, 4 - hex.count)))\(hex)"
    }
}

import Synchronization

public final class NexusCounter: Sendable {
    private let value = Atomic<UInt64>(0)
    func next() -> UInt64 { value.wrappingAdd(1, ordering: .relaxed).newValue }
}
