// Persistent and SPC-2 reservations as the shared record carries them between the gateways of one sheepdog
// VDI (docs/CLUSTER-STATE.md): a version built from an LU's state after a local change, and a version another
// gateway wrote adopted into the LU's state. Off the I/O path: both take the LU lock once per version.

import Floor
import Store
import ISCSIWire
extension LUNSharedState {
    /// An SPC-2 reservation held through another gateway: no local nexus has this id (ids count up from 1).
    static let remoteSPC2Holder = UInt64.max
}

extension SheepSCSIRecord {
    /// The version after `base`, written by `writer`, with the reservations of `s` (the LU's state after this
    /// gateway applied a command to it). An SPC-2 reservation held through another gateway stays as `base` has
    /// it; the lease and anything else not about reservations is carried over.
    init(successorOf base: SheepSCSIRecord, writer: UInt64, state s: LUNSharedState) {
        self = base.successor(writer: writer)
        setPersistentReservation(s.pr)
        switch s.spc2Holder {
        case nil: spc2Holder = nil
        case LUNSharedState.remoteSPC2Holder?: spc2Holder = base.spc2Holder
        case let id?: spc2Holder = s.nexuses[id].map { PortIdentity($0) }
        }
    }
}

extension LUNState {
    /// Adopts a version another gateway wrote: its registrations and reservation replace ours, its SPC-2 holder
    /// becomes the local nexus with that identity (or a remote one), and this gateway's nexuses get the unit
    /// attentions SPC-4 §5.9 gives those a PREEMPT, CLEAR or RELEASE elsewhere concerns. A version this gateway
    /// wrote itself is not adopted this way: applying the command locally already queued them.
    public func adoptShared(_ r: SheepSCSIRecord) {
        shared.withLock { s in
            if let seen = s.sharedResets, r.resets > seen {
                // A LOGICAL UNIT RESET or target reset through another gateway reset this LU too (SAM-5 §6.3.3):
                // its nexuses here hear BUS DEVICE RESET FUNCTION OCCURRED, as those of the gateway that took it.
                reset(&s, raising: .busDeviceResetOccurred)
            }
            s.sharedResets = max(s.sharedResets ?? r.resets, r.resets)
            if adoptPowerOn(&s, r) { return }
            let before = s.pr
            s.pr = r.persistentReservation
            if let holder = r.spc2Holder {
                s.spc2Holder = s.nexuses.first { PortIdentity($0.value) == holder }?.key ?? LUNSharedState.remoteSPC2Holder
            } else {
                s.spc2Holder = nil
            }
            let lost = before.registrations.map(\.port).filter { p in !r.registrations.contains { $0.port == p } }
            if !lost.isEmpty {
                // CLEAR removes every registration and the reservation; PREEMPT leaves the preemptor's.
                let asc: ASC = r.registrations.isEmpty && !r.reserved ? .reservationsPreempted : .registrationsPreempted
                queueUAForAll(&s, except: nil, asc) { lost.contains(PortIdentity($0)) }
            } else if before.reserved && !r.reserved
                        && (PRType.isRegistrantsOnly(before.type) || PRType.isAllRegistrants(before.type)) {
                queueUAForAll(&s, except: nil, .reservationsReleased) { rec in
                    r.registrations.contains { $0.port == PortIdentity(rec) }
                }
            }
            publishFlags(s)
        }
    }
}

extension LUNState {
    /// Loads a version this gateway wrote. Applying the command or change here already did what it says, so
    /// it raises nothing; it notes the reset count, and clears an SPC-2 reservation this LU still takes for
    /// another gateway's when the version released it (a change appended after a lost race, which re-read
    /// the winner's version into the LU).
    public func adoptOwn(_ r: SheepSCSIRecord) {
        shared.withLock { s in
            s.sharedResets = max(s.sharedResets ?? r.resets, r.resets)
            if adoptPowerOn(&s, r) { return }
            if r.spc2Holder == nil, s.spc2Holder == LUNSharedState.remoteSPC2Holder {
                s.spc2Holder = nil
                publishFlags(s)
            }
        }
    }
}

// Reservation commands on a multipath sheep LU (docs/CLUSTER-STATE.md, steps 2 and 4): the record is read
// (and loaded into the LU) before the command applies, and a change is appended to it and announced before
// GOOD. Other LUs never take these paths: `phase` is never `.sharedApply` there and `sharesReservations` is
// only asked by reservation commands and conflicts.
extension SCSITask {
    /// The LU's reservations are shared with other gateways through sheep.
    var sharesReservations: Bool {
        if case .sheep(let vol)? = lun?.backing { return vol.coherent }
        return false
    }

    /// Before a reservation command applies (or PERSISTENT RESERVE IN reports) on a shared LU, the record is
    /// brought up to date; nil when the command may go on now.
    mutating func syncSharedFirst() -> SCSIAction? {
        guard phase != .sharedApply, sharesReservations else { return nil }
        phase = .sharedSync
        auxCount = 0
        return .store(.shareState(target: .own, publish: false))
    }

    /// A reservation command succeeded: on a shared LU its change goes into the record before GOOD.
    mutating func completeShared(changed: Bool = true) -> SCSIAction {
        guard changed, phase == .sharedApply else { return completeGood() }
        phase = .sharedPublish
        return .store(.shareState(target: .own, publish: true))
    }

    /// A command conflicts with the reservation this gateway knows: on a shared LU the holder may have
    /// released it through another gateway, so the record is read before RESERVATION CONFLICT is answered.
    mutating func sharedConflict() -> SCSIAction {
        guard phase != .sharedApply, sharesReservations else { return reservationConflict() }
        phase = .sharedRecheck
        return .store(.shareState(target: .own, publish: false))
    }

    mutating func sharedSyncCompleted(_ r: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        if let fail = checkStore(r, reading: false) { return fail }
        phase = .sharedApply
        switch opcode {
        case Opcode.persistentReserveOut:
            return persistentReserveOut(UnsafeMutableRawBufferPointer(rebasing: buffer[0 ..< min(chunkBytes, buffer.count)]))
        case Opcode.persistentReserveIn: return persistentReserveIn(buffer: buffer)
        case Opcode.reserve6, Opcode.reserve10: return reserve()
        default: return release()
        }
    }

    mutating func sharedRecheckCompleted(_ r: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        // TEST UNIT READY answers from what this gateway knows when the record cannot be read: whether the LU
        // is reachable is ALUA's to say (backingUnavailable), not a record read's.
        if opcode != Opcode.testUnitReady, let fail = checkStore(r, reading: false) { return fail }
        phase = .sharedApply
        return startSlow(buffer: buffer)
    }

    mutating func sharedPublishCompleted(_ r: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        if case .failed(.stateChanged) = r {
            // Another gateway's version came first and is in the LU now: apply the command to that state.
            auxCount += 1
            if auxCount >= SharedStateLimits.publishAttemptsMax {
                phase = .idle
                return .complete(status: SCSIStatus.busy, dataInLength: 0, residual: .none)
            }
            return sharedSyncCompleted(.ok(0), buffer: buffer)
        }
        if let fail = checkStore(r, reading: false) { return fail }
        return completeGood()
    }

    /// A read or write met INODE_INVALIDATED and, after the reload, a newer record from another gateway with a
    /// reservation: it is checked against that reservation before it is redone. Each redo needs another gateway to have written
    /// a new version meanwhile, so it is not bounded here.
    mutating func sharedStateChanged() -> SCSIAction {
        guard let lun, let nexus else { return internalError() }
        if reservationConflicts(state: lun.state, nexus: nexus) { return reservationConflict() }
        if phase == .writeStore { return storeWriteChunk() }
        // The smallest slot a transport hands in: the read may come back in smaller chunks, never too large.
        if phase == .readStore { return nextReadChunk(bufferBytes: SCSITask.minimumBufferBytes) }
        phase = .idle
        return .complete(status: SCSIStatus.busy, dataInLength: 0, residual: .none)
    }
}

extension LUNState {
    /// A version with more power-ons than this LU has seen (docs/CLUSTER-STATE.md, "APTPL"), appended by this
    /// gateway or another one: the LU takes what APTPL kept, and its nexuses here hear POWER ON, RESET, OR BUS
    /// DEVICE RESET OCCURRED, as after a restart. False (the count noted) when the version brings none.
    fileprivate func adoptPowerOn(_ s: inout LUNSharedState, _ r: SheepSCSIRecord) -> Bool {
        guard let seen = s.sharedPowerOns, r.powerOns > seen else {
            s.sharedPowerOns = max(s.sharedPowerOns ?? r.powerOns, r.powerOns)
            return false
        }
        s.sharedPowerOns = r.powerOns
        s.pr = r.persistentReservation
        reset(&s, raising: .powerOnResetOccurred)
        publishFlags(s)
        return true
    }
}

/// The LU's side of the shared record (the store knows the LU only through this). `adoptShared`, `adoptOwn`
/// (above), `adoptPortGroups`, `setDeadPorts` and the STPG bookkeeping (ALUA.swift) are its requirements.
extension LUNState: SharedSCSIStateHolder {
    public func successorRecord(of base: SheepSCSIRecord, writer: UInt64) -> SheepSCSIRecord {
        SheepSCSIRecord(successorOf: base, writer: writer, state: shared.withLock { $0 })
    }

    public func coherentVolumes(inGroup group: UInt16, except vol: SheepVolume) -> [SheepVolume] {
        let table = shared.withLock { $0.aluaTable }
        var out: [SheepVolume] = []
        for unit in table?.units(withGroup: group) ?? [] {
            if case .sheep(let other) = unit.backing, other !== vol, other.coherent { out.append(other) }
        }
        return out
    }
}
