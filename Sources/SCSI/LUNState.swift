// SCSI state that every core shares for one logical unit: unit attentions per I_T nexus, the SPC-2
// reservation, persistent reservations and the changeable mode parameters.
//
// Locking (the one exception to "no locks on the I/O path"): all of this state lives behind one
// `Mutex`, but READ and WRITE never take it in the common case. Two lock-free summaries let them skip it:
//   - `fastFlags`, an atomic bit word: "some reservation is held", "software write protect is on",
//     "write cache disabled". A command reads it with one relaxed load.
//   - `admitted`, a small direct-mapped cache of nexus ids that have been seen by this LU and have no
//     pending unit attention, plus `knownGeneration`, the target LUN-list generation the UA state was
//     last reconciled against. A command whose nexus id is in its slot and whose generation matches needs
//     no UA processing.
// Only when one of these says something is pending (a reservation exists, a UA is queued, a new nexus
// appears, the LUN list changed) does a command lock. Writers clear a nexus's cache slot before they
// queue a UA for it, so a command racing with that change is ordered as if it arrived first.

import Floor
import Store
import Synchronization

/// One unit-attention condition (ASC/ASCQ; the sense key is always UNIT ATTENTION).
public struct UnitAttention: Equatable {
    var asc: ASC
}

/// Unit attentions queued for one I_T nexus, oldest first. Bounded: SAM-5 §5.14 lets a device server
/// drop lower-precedence conditions; we keep at most `capacity`, merging duplicates and letting a
/// reset-class condition (ASC 29h) replace the whole queue because it implies every other change.
public struct UnitAttentionQueue {
    static let capacity = 4
    private(set) var items: [UnitAttention] = []

    var isEmpty: Bool { items.isEmpty }

    mutating func add(_ asc: ASC) {
        if asc.code == 0x29 {
            items.removeAll(keepingCapacity: true)
            items.append(UnitAttention(asc: asc))
            return
        }
        if items.contains(where: { $0.asc == asc }) { return }
        if items.count >= UnitAttentionQueue.capacity { items.removeLast() }
        items.append(UnitAttention(asc: asc))
    }

    mutating func pop() -> ASC? {
        if items.isEmpty { return nil }
        return items.removeFirst().asc
    }

    mutating func remove(_ asc: ASC) { items.removeAll { $0.asc == asc } }
}

/// What the LU remembers about one I_T nexus that has sent it a command.
public struct NexusRecord {
    let id: UInt64
    let initiatorName: String
    let isid: UInt64
    let relativeTargetPortID: UInt16
    var unitAttentions = UnitAttentionQueue()
    /// PREVENT ALLOW MEDIUM REMOVAL's PREVENT field from this nexus (SPC-4 §6.13).
    var preventsRemoval = false
}

extension PortIdentity {
    public init(_ n: Nexus) {
        self.init(initiatorName: n.initiatorName, isid: n.isid, relativeTargetPortID: n.relativeTargetPortID)
    }

    init(_ r: NexusRecord) {
        self.init(initiatorName: r.initiatorName, isid: r.isid, relativeTargetPortID: r.relativeTargetPortID)
    }
}

/// Current values of the mode parameters that MODE SELECT may change.
public struct ModeParameters: Equatable {
    var writeCacheEnabled: Bool
    var softwareWriteProtect: Bool = false

    init(capabilities: StoreCapabilities) {
        writeCacheEnabled = capabilities.hasVolatileCache
    }
}

/// Everything behind the LU mutex.
public struct LUNSharedState {
    /// Bound on nexus records; beyond it new nexuses are served without unit-attention tracking.
    static let maxNexusRecords = 1024
    static let unknownGeneration = UInt64.max

    var nexuses: [UInt64: NexusRecord] = [:]
    var lunGeneration: UInt64 = unknownGeneration
    /// SPC-2 RESERVE(6)/(10) holder (nexus id).
    var spc2Holder: UInt64? = nil
    /// Multipath sheep LU: the reset count of the newest shared record version loaded (ReservationsShared.swift);
    /// nil until the first one, which sets it without a unit attention.
    var sharedResets: UInt64? = nil
    var pr = PersistentReservationState()
    var mode: ModeParameters
    /// EXTENDED COPY results held for RECEIVE COPY RESULTS (bounded by ExtendedCopyLimits.maxHeldResults).
    var copyResults: [CopyResult] = []
    /// tgt's online: the medium is present. START STOP UNIT ejects and loads a removable LU's medium.
    var online = true
    /// SANITIZE progress and failure mode (Sanitize.swift).
    var sanitize = SanitizeState()
    /// The ALUA state of the LU's target port is active (SCSI/ALUA.swift keeps it in step with the group).
    var portActive = true
    /// The store has not reached the LU's data for `LUNState.unreachableSecondsBeforeUnavailable`: every
    /// port of this daemon reports the LU unavailable (SCSI/ALUA.swift), whatever its group's state.
    var backingUnavailable = false
    /// This daemon's ports to the LU and their groups, and the table they belong to (ALUATable.refreshAll
    /// keeps both): adopting a shared record version sets these groups' states and announces through it.
    var localPorts: [LocalALUAPort] = []
    weak var aluaTable: ALUATable? = nil
    /// Multipath sheep LU: the ALUA section of the newest shared record version loaded, with the states this
    /// gateway's SET TARGET PORT GROUPS gave other gateways' groups since (ALUA.swift). Empty elsewhere.
    var sharedPortGroups: [SharedPortGroup] = []
    var sharedPortGroupsLoaded = false
    /// Group ids of state changes on their way to the VDI's home core (a mailbox away): from when they are
    /// made until the home core queues them, a version it loads must not undo them either.
    var portGroupStatesPosted: [UInt16] = []
    /// Multipath sheep LU: the power-on count of the newest shared record version loaded (nil until the first).
    var sharedPowerOns: UInt64? = nil
    /// Multipath sheep LU: relative target ports of other gateways whose heartbeat this gateway has seen
    /// unchanged for `GatewayLivenessLimits.deadAfterSeconds` (SheepLiveness.swift): a group of the record all of whose
    /// ports are here is reported unavailable (docs/ALUA.md).
    var deadPorts: [UInt16] = []

    /// tgt's lu_prevent_removal: some nexus has prevented medium removal.
    var removalPrevented: Bool { nexuses.values.contains { $0.preventsRemoval } }
}

public final class LUNState: @unchecked Sendable {
    /// Slots in the lock-free admission cache (nexus id modulo this). Nexus ids are handed out in
    /// sequence, so up to this many live sessions on one LU never share a slot; beyond that two sessions
    /// may evict each other and take the locked path more often, which is slower but still correct.
    static let admissionCacheSlots = 256

    static let flagReservationHeld: UInt64 = 1 << 0
    static let flagSoftwareWriteProtect: UInt64 = 1 << 1
    static let flagWriteCacheDisabled: UInt64 = 1 << 2
    /// The LU is offline (tgt's online=0): TEST UNIT READY answers NOT READY.
    static let flagOffline: UInt64 = 1 << 3
    /// Offline and removable: commands that touch the medium get MEDIUM NOT PRESENT.
    static let flagMediumNotPresent: UInt64 = 1 << 4
    /// A SANITIZE is erasing the medium: only INQUIRY, REPORT LUNS and REQUEST SENSE are served.
    static let flagSanitizing: UInt64 = 1 << 5
    /// The last SANITIZE did not finish (SBC-4 sanitize failure mode): the medium holds neither the old
    /// data nor the erased state until a SANITIZE completes or EXIT FAILURE MODE is allowed.
    static let flagSanitizeFailed: UInt64 = 1 << 6
    /// The flags under which `dispatch` looks before running a command.
    static let flagsRefusingCommands = flagMediumNotPresent | flagSanitizing | flagSanitizeFailed
    /// The LU's target port is in a target port group that is not active: commands take the locked path,
    /// where the ALUA state decides (SCSI/ALUA.swift).
    static let flagPortInactive: UInt64 = 1 << 7
    /// The store lost the LU's data long enough (`backingUnavailable`): commands take the locked path, where
    /// ALUA's unavailable state decides.
    static let flagBackingUnavailable: UInt64 = 1 << 8
    /// How long the store may be without its data (a sheep node gone) before this gateway says the LU is
    /// unavailable through it, so a multipath TUR checker fails the path and I/O moves to another gateway.
    /// Well under dm-multipath's polling_interval (5 s) times no_path_retry, and long enough that a
    /// reconnect that succeeds at once (a node restarted, a connection reset) changes nothing.
    static let unreachableSecondsBeforeUnavailable: UInt64 = 5

    let blockSize: Int
    let blockCount: UInt64
    let capabilities: StoreCapabilities
    let removable: Bool

    let fastFlags: Atomic<UInt64>
    let knownGeneration: Atomic<UInt64>
    let admitted: InlineArray<256, Atomic<UInt64>>
    let shared: Locked<LUNSharedState>

    public init(blockSize: Int, blockCount: UInt64, capabilities: StoreCapabilities, removable: Bool = false,
                online: Bool = true) {
        self.blockSize = blockSize
        self.blockCount = blockCount
        self.capabilities = capabilities
        self.removable = removable
        let mode = ModeParameters(capabilities: capabilities)
        var initial = LUNSharedState(mode: mode)
        initial.online = online
        fastFlags = Atomic(LUNState.flags(of: initial, removable: removable))
        knownGeneration = Atomic(LUNSharedState.unknownGeneration)
        admitted = InlineArray { _ in Atomic<UInt64>(0) }
        shared = Locked(initial)
        precondition(admitted.count == LUNState.admissionCacheSlots, "admission cache size and constant disagree")
    }

    // MARK: Fast path

    @inline(__always)
    func isAdmitted(nexusID: UInt64, lunGeneration: UInt64) -> Bool {
        admitted[Int(nexusID % UInt64(LUNState.admissionCacheSlots))].load(ordering: .acquiring) == nexusID
            && knownGeneration.load(ordering: .acquiring) == lunGeneration
    }

    @inline(__always) var flags: UInt64 { fastFlags.load(ordering: .acquiring) }

    // MARK: Slow path helpers (call with the lock held, on `s`)

    private func evict(_ id: UInt64) {
        let slot = Int(id % UInt64(LUNState.admissionCacheSlots))
        _ = admitted[slot].compareExchange(expected: id, desired: 0, ordering: .acquiringAndReleasing)
    }

    /// Queue a UA for one nexus record (lock held).
    func queueUA(_ s: inout LUNSharedState, nexusID: UInt64, _ asc: ASC) {
        guard s.nexuses[nexusID] != nil else { return }
        evict(nexusID)
        s.nexuses[nexusID]!.unitAttentions.add(asc)
    }

    /// Queue a UA for every known nexus except `except`, or for those matching `filter`.
    func queueUAForAll(_ s: inout LUNSharedState, except: UInt64?, _ asc: ASC,
                       where filter: (NexusRecord) -> Bool = { _ in true }) {
        for id in Array(s.nexuses.keys) where id != except {
            if let r = s.nexuses[id], filter(r) { queueUA(&s, nexusID: id, asc) }
        }
    }

    func publishFlags(_ s: LUNSharedState) {
        fastFlags.store(LUNState.flags(of: s, removable: removable), ordering: .releasing)
    }

    static func flags(of s: LUNSharedState, removable: Bool) -> UInt64 {
        var f: UInt64 = 0
        if s.spc2Holder != nil || s.pr.reserved { f |= LUNState.flagReservationHeld }
        if s.mode.softwareWriteProtect { f |= LUNState.flagSoftwareWriteProtect }
        if !s.mode.writeCacheEnabled { f |= LUNState.flagWriteCacheDisabled }
        if !s.online {
            f |= LUNState.flagOffline
            if removable { f |= LUNState.flagMediumNotPresent }
        }
        if s.sanitize.running { f |= LUNState.flagSanitizing }
        if s.sanitize.failed { f |= LUNState.flagSanitizeFailed }
        if !s.portActive { f |= LUNState.flagPortInactive }
        if s.backingUnavailable { f |= LUNState.flagBackingUnavailable }
        return f
    }

    /// Brings `backingUnavailable` in line with the store's reachability: one load while all is well.
    @inline(__always)
    func followBacking(_ r: BackingReachability) {
        let down = r.downSinceNanos
        if _fastPath(down == 0 && flags & LUNState.flagBackingUnavailable == 0) { return }
        followBackingChange(downSinceNanos: down)
    }

    /// The store lost its data or got it back: once the loss has lasted the bound, or once it ends, the LU's
    /// ALUA state through this daemon changes, and every nexus hears ASYMMETRIC ACCESS STATE CHANGED
    /// (SPC-4 §5.15.2.5: a change made by the device server).
    @inline(never)
    func followBackingChange(downSinceNanos down: UInt64) {
        let bound = LUNState.unreachableSecondsBeforeUnavailable * 1_000_000_000
        let unavailable = down != 0 && monotonicNanos() &- down >= bound
        if unavailable == (flags & LUNState.flagBackingUnavailable != 0) { return }
        shared.withLock { s in
            // Re-checked under the lock: of two cores that saw the change, one announces it.
            guard s.backingUnavailable != unavailable else { return }
            s.backingUnavailable = unavailable
            queueUAForAll(&s, except: nil, .asymmetricAccessStateChanged)
            publishFlags(s)
        }
    }

    /// Unit-attention bookkeeping for a command from `nexus`. Returns the condition to report, already
    /// removed from the queue, when `consume` is true and one is pending. Also reconciles the target's
    /// LUN-list generation: when it moved, every known nexus gets REPORTED LUNS DATA HAS CHANGED.
    func admit(nexus: Nexus, lunGeneration: UInt64, consume: Bool, clearsLUNsChanged: Bool = false) -> ASC? {
        shared.withLock { s -> ASC? in
            if s.lunGeneration != lunGeneration {
                if s.lunGeneration != LUNSharedState.unknownGeneration {
                    queueUAForAll(&s, except: nil, .reportedLUNsDataChanged)
                }
                s.lunGeneration = lunGeneration
                knownGeneration.store(lunGeneration, ordering: .releasing)
            }
            if s.nexuses[nexus.id] == nil {
                guard s.nexuses.count < LUNSharedState.maxNexusRecords else { return nil }
                var r = NexusRecord(id: nexus.id, initiatorName: nexus.initiatorName, isid: nexus.isid,
                                    relativeTargetPortID: nexus.relativeTargetPortID)
                r.unitAttentions.add(.powerOnResetOccurred)
                s.nexuses[nexus.id] = r
            }
            var result: ASC? = nil
            if clearsLUNsChanged { s.nexuses[nexus.id]!.unitAttentions.remove(.reportedLUNsDataChanged) }
            if consume { result = s.nexuses[nexus.id]!.unitAttentions.pop() }
            if s.nexuses[nexus.id]!.unitAttentions.isEmpty {
                admitted[Int(nexus.id % UInt64(LUNState.admissionCacheSlots))].store(nexus.id, ordering: .releasing)
            }
            return result
        }
    }

    /// Forget a nexus: its UAs go, and an SPC-2 reservation it held is released. True when it held one.
    @discardableResult
    func nexusLost(_ nexus: Nexus) -> Bool {
        shared.withLock { s in
            evict(nexus.id)
            s.nexuses[nexus.id] = nil
            let held = s.spc2Holder == nexus.id
            if held { s.spc2Holder = nil }
            publishFlags(s)
            return held
        }
    }

    /// The session of `nexusID` is logging out: the SPC-2 reservation it holds, if any, is released now, before
    /// the logout response (a multipath sheep LU appends the release to the shared record first). True when
    /// it held one.
    public func releaseSPC2(heldBy nexusID: UInt64) -> Bool {
        shared.withLock { s in
            guard s.spc2Holder == nexusID else { return false }
            s.spc2Holder = nil
            publishFlags(s)
            return true
        }
    }

    /// LOGICAL UNIT RESET / target reset: release the SPC-2 reservation, restore default mode
    /// parameters, end every prevention of medium removal (SPC-4 §6.13) and raise `asc` for every known
    /// nexus (SAM-5 §6.3.3). PR state persists.
    func reset(raising asc: ASC) {
        shared.withLock { s in
            reset(&s, raising: asc)
            publishFlags(s)
        }
    }

    /// `reset(raising:)` with the lock held (also for a reset through another gateway, ReservationsShared.swift).
    func reset(_ s: inout LUNSharedState, raising asc: ASC) {
        s.spc2Holder = nil
        s.mode = ModeParameters(capabilities: capabilities)
        for id in Array(s.nexuses.keys) { s.nexuses[id]!.preventsRemoval = false }
        queueUAForAll(&s, except: nil, asc)
    }

    var modeParameters: ModeParameters { shared.withLock { $0.mode } }

    // MARK: Medium (tgt's online, removable and prevent removal)

    public var isOnline: Bool { shared.withLock { $0.online } }
    public var isRemovalPrevented: Bool { shared.withLock { $0.removalPrevented } }

    /// PREVENT ALLOW MEDIUM REMOVAL from `nexus`. Beyond maxNexusRecords a nexus is served without a
    /// record (and without unit attentions), so its PREVENT is not remembered: the bound wins.
    func setPreventsRemoval(_ prevent: Bool, nexusID: UInt64) {
        shared.withLock { s in
            if s.nexuses[nexusID] != nil { s.nexuses[nexusID]!.preventsRemoval = prevent }
        }
    }

    /// Brings the medium online or takes it offline, as tgt's spc_lu_online / spc_lu_offline: going
    /// offline is refused while some nexus prevents removal. Returns false when refused.
    @discardableResult
    public func setOnline(_ online: Bool) -> Bool {
        shared.withLock { s in
            if !online && s.removalPrevented { return false }
            s.online = online
            publishFlags(s)
            return true
        }
    }
}
