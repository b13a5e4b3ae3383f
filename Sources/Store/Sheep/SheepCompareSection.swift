// COMPARE AND WRITE across the gateways of one multipath sheepdog VDI (issue 14; docs/CLUSTER-STATE.md,
// "COMPARE AND WRITE across gateways"). The critical section is sheep's normal VDI lock on a companion VDI,
// `<vdi>.ringtgt-caw`: LOCK_VDI is a cluster op that exactly one requester wins. Sheep keeps a normal lock
// when its holder dies, and RELEASE_VDI frees it whoever sends it, so the holder also keeps a lease state in
// the companion's data object 0, and a waiter that sees one state unchanged for `leaseSeconds` breaks it:
//
//   - Every write of the lease object names a (writer, stamp) never written before: `held` after LOCK_VDI
//     succeeds and before anything else, `freed` before RELEASE_VDI, `broken` by a breaker before its
//     RELEASE_VDI.
//   - A holder acts (writes the lease, the data, `freed`, RELEASE_VDI) only until `leaseSeconds -
//     leaseSkewSeconds` after it sent its LOCK_VDI, by its own monotonic clock. After that it never acts again
//     for that acquisition; what it sent in time must reach sheep within the skew.
//   - A waiter times a state from the VDI_LOCKED answer to a LOCK_VDI it sent after reading that state: the
//     holder then locked before that answer, so the waiter's clock started after the holder's. No clocks are
//     compared between hosts.
//   - A waiter that has seen the state unchanged for `leaseSeconds` claims its break with an exclusive VDI
//     attribute `ringtgt.caw.break.<writer>.<stamp>.<level>` on the companion (a cluster op: exactly one
//     claimant wins), reads the state once more, and only if it is still the same writes `broken` and sends
//     RELEASE_VDI. A claimant that loses times the state again from its loss and may claim the next level,
//     should the winner die between claim and release.
//   - A `freed` (or `broken`, or absent) state does not say who holds the lock: between the old holder's
//     RELEASE_VDI and the new holder's `held` the lock changes hands with the state unchanged. Such a state is
//     broken only after `transitionBreakNanos` (18 s): by then the old holder's release, the new holder's
//     lock (the waiter's own LOCK_VDIs, at most a few seconds apart, would have taken a longer gap) and that
//     holder's `held` have all reached sheep. A holder whose LOCK_VDI answer took `leaseSkewSeconds` or more
//     does not enter (it leaves the lock to be broken), so its `held` follows its lock closely.
//
// The model: a request reaches sheep, and its answer comes back, within `leaseSkewSeconds / 2` each.
//
// Like SheepSCSIRecordSync it touches no socket: it says what to send and is told what came back, with the
// time passed in, so it is tested reply by reply. Only multipath sheep LUs reach it, and only for COMPARE
// AND WRITE.

import Floor
import URing
import SheepProtocol

public enum CompareSectionLimits {
    /// Appended to the VDI's name to name the companion VDI whose lock is the section.
    static let companionSuffix = ".ringtgt-caw"
    /// The companion holds only the lease state in its first object.
    static let companionBytes: UInt64 = 4 << 20
    static let breakKeyPrefix = "ringtgt.caw.break."
    /// A waiter asks again after this long, doubling up to `retryMaxNanos`.
    static let retryFirstNanos: UInt64 = 250_000
    static let retryMaxNanos: UInt64 = 20_000_000
    /// A COMPARE AND WRITE that has not entered after this long is answered BUSY. Longer than a break takes
    /// (`leaseSeconds` and a few round trips), so a dead holder's section is broken before anyone gives up.
    static let waitSecondsMax: UInt64 = 3 * ClusterStateLimits.leaseSeconds
    /// COMPARE AND WRITEs of one VDI waiting on its home core for the section; beyond, they are answered BUSY.
    static let waitersMax = 64
    /// The holder acts for this long after it sent LOCK_VDI.
    static let usableNanos: UInt64 = (ClusterStateLimits.leaseSeconds - ClusterStateLimits.leaseSkewSeconds) * 1_000_000_000
    /// A waiter breaks a `held` state it has seen unchanged for this long.
    static let breakAfterNanos: UInt64 = ClusterStateLimits.leaseSeconds * 1_000_000_000
    /// ... and a `freed`, `broken` or absent one after this long (the header says why).
    static let transitionBreakNanos: UInt64 = (ClusterStateLimits.leaseSeconds + 4 * ClusterStateLimits.leaseSkewSeconds) * 1_000_000_000
    /// A waiter whose LOCK_VDIs go out further apart than this (its own requests are slow) times the state
    /// afresh: the gap a new holder could take the lock in must stay short.
    static let lockGapMaxNanos: UInt64 = ClusterStateLimits.leaseSkewSeconds * 1_000_000_000
    /// A holder whose LOCK_VDI answer took this long does not enter.
    static let lockAnswerMaxNanos: UInt64 = ClusterStateLimits.leaseSkewSeconds * 1_000_000_000
}

/// The lease object's content: 32 bytes, little-endian. "RTCW", kind, 3 reserved, writer, stamp, 8 reserved.
public struct CompareLeaseState: Equatable {
    public enum Kind: UInt8 {
        case held = 1, freed = 2, broken = 3
    }
    static let magic: UInt32 = 0x5743_5452
    static let encodedBytes = SheepWordRecord.bytes

    var kind: Kind
    /// The writing gateway (`SheepVolume.gatewayID`, random per open) and its count of lease writes.
    var writer: UInt64
    var stamp: UInt64

    var id: CompareLeaseID { CompareLeaseID(writer: writer, stamp: stamp) }

    func encoded() -> [UInt8] {
        SheepWordRecord(magic: Self.magic, kind: kind.rawValue, first: writer, second: stamp).encoded()
    }

    init(kind: Kind, writer: UInt64, stamp: UInt64) {
        self.kind = kind
        self.writer = writer
        self.stamp = stamp
    }

    init?(decoding b: [UInt8]) {
        guard let r = SheepWordRecord(decoding: b[...]), r.magic == Self.magic, let k = Kind(rawValue: r.kind) else {
            return nil
        }
        self.init(kind: k, writer: r.first, stamp: r.second)
    }
}

/// What a waiter times: the state's (writer, stamp). (0, 0) is "no lease object yet" (NO_OBJ); a value that
/// is not a lease state gets writer 0 and a hash of its bytes, so it too can be timed and broken.
public struct CompareLeaseID: Equatable {
    var writer: UInt64
    var stamp: UInt64

    static let absent = CompareLeaseID(writer: 0, stamp: 0)

    init(writer: UInt64, stamp: UInt64) {
        self.writer = writer
        self.stamp = stamp
    }

    init(reading data: [UInt8]) {
        if let s = CompareLeaseState(decoding: data) { self = s.id; return }
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in data.prefix(CompareLeaseState.encodedBytes) { h = (h ^ UInt64(byte)) &* 0x100_0000_01b3 }
        self.init(writer: 0, stamp: h | 1)
    }

    var breakKey: String {
        CompareSectionLimits.breakKeyPrefix + String(writer, radix: 16) + "." + String(stamp, radix: 16)
    }
}

public struct SheepCompareSection {
    public enum Step: Equatable {
        /// Send this request with this payload; a READ_OBJ's reply data comes back through `reply`.
        case send(SheepRequestHeader, [UInt8])
        /// Call `timerFired` at this time (monotonic nanoseconds); nothing is in flight.
        case wait(untilNanos: UInt64)
        case done(Outcome)
    }

    public enum Outcome: Equatable {
        /// The section is this gateway's: act only while `mayAct(nowNanos:)`.
        case entered
        /// The section is given back (RELEASE_VDI answered), or there was nothing to give back.
        case left
        /// The holder's time ran out before it could give the section back properly: it sends nothing more for
        /// this acquisition, and a waiter breaks the lock it left.
        case abandoned(String)
        /// Waited `waitSecondsMax` without entering.
        case busy
        /// Sheep refused something the section needs; nothing is held.
        case failed(SheepResult, String)
    }

    /// One comment per phase: what the section waits for.
    private enum Phase: Equatable {
        /// Not held, nothing in flight.
        case idle
        /// GET_VDI_INFO of the companion (the first time), NEW_VDI when it does not exist, GET_VDI_INFO again
        /// when another gateway created it first.
        case lookup, create, lookupAgain
        /// LOCK_VDI (normal) of the companion.
        case lock
        /// VDI_LOCKED: reading the lease state to time it.
        case readLease
        /// Waiting to ask again (`.wait` was returned).
        case retry
        /// Claiming the break of the observed state at this level (exclusive attribute create).
        case claim(level: Int)
        /// The claim won: reading the state once more (a new holder's `held` may have landed meanwhile).
        case recheck
        /// The state is still the one claimed: writing `broken`, then RELEASE_VDI.
        case writeBroken, releaseBroken
        /// Locked, the first time this gateway: does the lease object exist yet?
        case readBeforeHeld
        /// Locked: writing `held`.
        case writeHeld
        /// Entered: the caller compares and writes.
        case held
        /// Leaving: writing `freed`, then RELEASE_VDI.
        case writeFreed, release
    }

    let vdiName: String
    let companionName: String
    let gateway: UInt64
    let copies: UInt8
    private(set) var companionVID: UInt32 = 0
    /// The lease object exists (once it does, it always does).
    private var objectExists = false
    /// Lease writes of this gateway so far: every write names a new stamp.
    private(set) var stamp: UInt64 = 0
    private var phase = Phase.idle
    /// When this acquisition's LOCK_VDI (or break claim) was sent: the holder acts until `usableNanos` after.
    private var acquiredAt: UInt64 = 0
    private var claimedAt: UInt64 = 0
    private var waitStartedAt: UInt64 = 0
    private var backoff = CompareSectionLimits.retryFirstNanos
    /// The state last read while locked out, and since when it is timed (nil: not yet, see the header).
    private var observed: CompareLeaseID? = nil
    private var observedSince: UInt64? = nil
    private var level = 1

    init(vdiName: String, gateway: UInt64, copies: UInt8) {
        self.vdiName = vdiName
        self.companionName = vdiName + CompareSectionLimits.companionSuffix
        self.gateway = gateway
        self.copies = copies
    }

    var isIdle: Bool { phase == .idle }
    var isHeld: Bool { phase == .held }
    var isWaiting: Bool { phase == .retry }

    /// Whether the holder may still send a write that depends on the section.
    func mayAct(nowNanos: UInt64) -> Bool { phase == .held && nowNanos &- acquiredAt < CompareSectionLimits.usableNanos }

    mutating func enter(nowNanos now: UInt64) -> Step {
        precondition(phase == .idle, "one COMPARE AND WRITE section at a time per VDI")
        waitStartedAt = now
        backoff = CompareSectionLimits.retryFirstNanos
        observed = nil
        observedSince = nil
        level = 1
        if companionVID == 0 {
            guard let payload = try? SheepVDIName.payload(name: companionName) else {
                return .done(.failed(.invalidParms, "sheep VDI '\(vdiName)': the name is too long for a COMPARE AND WRITE companion"))
            }
            phase = .lookup
            return .send(.vdiLookup(.getVDIInfo, id: 0), payload)
        }
        return lock(now)
    }

    /// The holder is done: `freed`, then RELEASE_VDI, if its time allows; otherwise it lets go silently.
    mutating func leave(nowNanos now: UInt64) -> Step {
        guard phase == .held else { return .done(.left) }
        guard mayAct(nowNanos: now) else { return abandon("held past its lease; left for a waiter to break") }
        return writeLease(.freed, then: .writeFreed)
    }

    /// The holder's time ran out with no leave: it sends nothing more (a task aborted while it held the section).
    mutating func expire(nowNanos now: UInt64) -> Step? {
        guard phase == .held, !mayAct(nowNanos: now) else { return nil }
        return abandon("held past its lease; left for a waiter to break")
    }

    /// The core stops while this waits to ask again: nothing is held, the waiting command is answered.
    mutating func giveUp() -> Step? {
        guard phase == .retry else { return nil }
        phase = .idle
        return .done(.busy)
    }

    mutating func timerFired(nowNanos now: UInt64) -> Step? {
        guard phase == .retry else { return nil }
        return lock(now)
    }

    /// Sheep's answer to the last `.send`: `vdiID` from a VDI op, `data` from a READ_OBJ.
    mutating func reply(_ result: SheepResult, vdiID: UInt32 = 0, data: [UInt8] = [], nowNanos now: UInt64) -> Step {
        switch phase {
        case .idle, .retry, .held:
            return .done(.failed(.unknown, "sheep VDI '\(vdiName)': a COMPARE AND WRITE reply with nothing outstanding"))
        case .lookup, .lookupAgain:
            if result == .success && vdiID != 0 {
                companionVID = vdiID
                return lock(now)
            }
            if phase == .lookup && result == .noVDI {
                phase = .create
                let payload = (try? SheepVDIName.payload(name: companionName, includeTag: false)) ?? []
                return .send(.newVDI(id: 0, size: CompareSectionLimits.companionBytes, copies: copies), payload)
            }
            return failed(result, "looking up '\(companionName)'")
        case .create:
            if result == .success && vdiID != 0 {
                companionVID = vdiID
                return lock(now)
            }
            guard result == .success || result == .vdiExist else { return failed(result, "creating '\(companionName)'") }
            phase = .lookupAgain
            return .send(.vdiLookup(.getVDIInfo, id: 0), (try? SheepVDIName.payload(name: companionName)) ?? [])
        case .lock:
            if result == .success {
                guard now &- acquiredAt < CompareSectionLimits.lockAnswerMaxNanos else {
                    return abandon("locked, but the answer came too late to use; left for a waiter to break")
                }
                if objectExists { return writeLease(.held, then: .writeHeld) }
                phase = .readBeforeHeld
                return readLease()
            }
            guard result == .vdiLocked || result == .collectingClusterInfo || result == .collectingClusterInfoV09 else {
                return failed(result, "locking '\(companionName)'")
            }
            // The holder now locked before this answer: time the state read before this LOCK_VDI from here.
            if observed != nil && observedSince == nil { observedSince = now }
            phase = .readLease
            return readLease()
        case .readLease:
            let id: CompareLeaseID?
            switch result {
            case .success: id = CompareLeaseID(reading: data)
            case .noObj: id = .absent
            default: id = nil
            }
            if let id, id == observed {
                if let since = observedSince, now &- since >= Self.breakAfter(data: result == .success ? data : []) {
                    return claim(id, now)
                }
            } else {
                observed = id
                observedSince = nil
                level = 1
            }
            return retry(now)
        case .claim:
            if result == .success {
                phase = .recheck
                return readLease()
            }
            if result == .vdiExist {
                // Another waiter claimed it: time the state again from here, then the next level.
                level += 1
                observedSince = now
            }
            return retry(now)
        case .recheck:
            let id: CompareLeaseID? = result == .success ? CompareLeaseID(reading: data) : result == .noObj ? .absent : nil
            guard let id, id == observed, now &- claimedAt < CompareSectionLimits.usableNanos else {
                // A new holder wrote `held` before its check, so it found no claim and is in: leave it be.
                observed = id
                observedSince = nil
                level = 1
                return retry(now)
            }
            return writeLease(.broken, then: .writeBroken, create: id == .absent)
        case .writeBroken:
            guard result == .success, now &- claimedAt < CompareSectionLimits.usableNanos else {
                // The state may or may not be ours now: start timing afresh; the next level rescues it.
                observed = nil
                observedSince = nil
                return retry(now)
            }
            objectExists = true
            observed = CompareLeaseID(writer: gateway, stamp: stamp)
            observedSince = nil
            level = 1
            phase = .releaseBroken
            return .send(.releaseVDI(id: 0, vid: companionVID), [])
        case .releaseBroken:
            return lock(now)
        case .readBeforeHeld:
            guard now &- acquiredAt < CompareSectionLimits.usableNanos, result == .success || result == .noObj else {
                return abandon("reading its lease state failed: \(result.name)")
            }
            objectExists = result == .success
            return writeLease(.held, then: .writeHeld, create: !objectExists)
        case .writeHeld:
            guard result == .success else { return abandon("writing its lease state failed: \(result.name)") }
            objectExists = true
            phase = .held
            return .done(.entered)
        case .writeFreed:
            guard result == .success else { return abandon("writing its lease state failed: \(result.name)") }
            guard now &- acquiredAt < CompareSectionLimits.usableNanos else {
                return abandon("freed past its lease; left for a waiter to break")
            }
            phase = .release
            return .send(.releaseVDI(id: 0, vid: companionVID), [])
        case .release:
            // Sheep answers RELEASE_VDI with SUCCESS whatever the lock's state.
            phase = .idle
            return .done(.left)
        }
    }

    /// How long a waiter must see `data` (the lease object, empty when absent) unchanged before it breaks it.
    static func breakAfter(data: [UInt8]) -> UInt64 {
        CompareLeaseState(decoding: data)?.kind == .held ? CompareSectionLimits.breakAfterNanos
                                                          : CompareSectionLimits.transitionBreakNanos
    }

    private mutating func lock(_ now: UInt64) -> Step {
        if observedSince != nil && now &- acquiredAt > CompareSectionLimits.lockGapMaxNanos { observedSince = nil }
        phase = .lock
        acquiredAt = now
        return .send(.vdiLookup(.lockVDI, id: 0, lockType: .normal), (try? SheepVDIName.payload(name: companionName)) ?? [])
    }

    private func readLease() -> Step {
        .send(.readObject(id: 0, oid: SheepOID.data(vid: companionVID, index: 0), offset: 0,
                          length: UInt32(CompareLeaseState.encodedBytes)), [])
    }

    private mutating func writeLease(_ kind: CompareLeaseState.Kind, then next: Phase, create: Bool = false) -> Step {
        stamp += 1
        phase = next
        let bytes = CompareLeaseState(kind: kind, writer: gateway, stamp: stamp).encoded()
        let oid = SheepOID.data(vid: companionVID, index: 0)
        let n = UInt32(bytes.count)
        return .send(create ? .createAndWrite(id: 0, oid: oid, offset: 0, length: n, copies: copies)
                            : .writeObject(id: 0, oid: oid, offset: 0, length: n, copies: copies), bytes)
    }

    private mutating func claim(_ id: CompareLeaseID, _ now: UInt64) -> Step {
        phase = .claim(level: level)
        claimedAt = now
        return .send(.getVDIAttr(id: 0, flags: [.attrCreate, .attrExclusive]),
                     SheepVDIAttr.encode(name: companionName, key: id.breakKey + "." + String(level)))
    }

    private mutating func retry(_ now: UInt64) -> Step {
        if now &- waitStartedAt >= CompareSectionLimits.waitSecondsMax * 1_000_000_000 {
            phase = .idle
            return .done(.busy)
        }
        phase = .retry
        let until = now &+ backoff
        backoff = min(backoff * 2, CompareSectionLimits.retryMaxNanos)
        return .wait(untilNanos: until)
    }

    private mutating func abandon(_ why: String) -> Step {
        phase = .idle
        return .done(.abandoned("sheep VDI '\(vdiName)': COMPARE AND WRITE section \(why)"))
    }

    private mutating func failed(_ r: SheepResult, _ what: String) -> Step {
        phase = .idle
        return .done(.failed(r, "sheep VDI '\(vdiName)': COMPARE AND WRITE section: \(what): \(r.name)"))
    }
}
