// The home core's side of the shared SCSI record (docs/CLUSTER-STATE.md): it runs the VDI's
// SheepSCSIRecordSync, one operation at a time, through the volume's channel like any other home step.
// Attribute requests go without SD_FLAG_CMD_TGT: an attribute object is named by the hash of the VDI
// name, which is often the VDI's own VID, and an invalidated node would refuse a flagged read of it.

import Floor
import URing
import SheepProtocol

extension SheepHomeMachine {
    /// Groups whose state this gateway changed (SET TARGET PORT GROUPS, ringtgtadm) and has not yet appended
    /// to the VDI's record: a version loaded meanwhile does not undo them (LUNState.adoptPortGroups).
    func pendingPortGroupStates(_ vol: SheepVolume) -> [UInt16] {
        guard let h = homes[ObjectIdentifier(vol)] else { return [] }
        var ids: [UInt16] = []
        for case .portGroups(.state(let id, _)) in h.changes + h.changesInFlight { ids.append(id) }
        return ids
    }

    /// Re-reads every record in use on this core whose last refresh started `refreshIntervalSeconds` ago or
    /// more: a gateway without I/O gets no INODE_INVALIDATED.
    mutating func refreshDueRecords(tick: UInt64) {
        self.tick = tick
        var due: [SheepVolume] = []
        for h in homes.values {
            // A command that waited this long for the record (its sheep node went away under the read, which
            // the channel holds until it reconnects) goes on with what this gateway knows, as `.unavailable`;
            // a Logout or TMF Response held for a change goes too (the change stays queued and lands later).
            expireWaiters(&h.recordSyncWaiters, tick: tick)
            expireWaiters(&h.changeWaiters, tick: tick)
            expireWaiters(&h.changeWaitersInFlight, tick: tick)
            guard let r = h.record, !r.isBusy, let vol = h.recordVolume,
                  tick &- h.recordTick >= ClusterStateLimits.refreshIntervalSeconds else { continue }
            due.append(vol)
        }
        for vol in due { refreshRecord(vol, tick: tick) }
    }

    private mutating func expireWaiters(_ waiters: inout [SheepHomeRequest], tick: UInt64) {
        guard waiters.contains(where: { tick &- $0.queuedTick >= SharedStateLimits.syncWaitSecondsMax }) else { return }
        for r in waiters where tick &- r.queuedTick >= SharedStateLimits.syncWaitSecondsMax {
            actions.append(.answer(r, .unavailable))
        }
        waiters.removeAll { tick &- $0.queuedTick >= SharedStateLimits.syncWaitSecondsMax }
    }

    /// Brings the VDI's record up to date; a refresh asked for while another operation runs follows it.
    mutating func refreshRecord(_ vol: SheepVolume, tick: UInt64? = nil) {
        guard vol.coherent else {
            actions.append(.record(vol, SheepSCSIRecord(), .failed(.invalidParms, "sheep VDI '\(vol.name)': not multipath")))
            return
        }
        if stopping { return }
        let h = home(vol)
        if h.record == nil {
            h.record = SheepSCSIRecordSync(vdiName: vol.name)
            h.recordVolume = vol
        }
        if h.recordRunning { h.recordAgain = true; return }
        if let tick { h.recordTick = tick }
        recordStep(vol, h.record!.refresh())
    }

    /// Appends `next` (the successor of the newest version this gateway knows) to the VDI's chain. Refused
    /// with `.lostRace` when another operation runs or `next` does not follow: the caller refreshes and retries.
    mutating func publishRecord(_ vol: SheepVolume, _ next: SheepSCSIRecord) {
        let h = home(vol)
        guard vol.coherent, !stopping, let r = h.record, !r.isBusy, next.version == r.known.version + 1 else {
            actions.append(.record(vol, h.record?.known ?? SheepSCSIRecord(), .lostRace))
            return
        }
        recordStep(vol, h.record!.publish(next))
    }

    /// Sheep's answer to a record step.
    mutating func recordReply(_ vol: SheepVolume, result: SheepResult, vdiID: UInt32, attrID: UInt32) {
        let h = home(vol)
        guard h.record != nil else { return }
        if h.recordAnnouncing {
            h.recordAnnouncing = false
            if result != .success {
                // The version is in sheep; the others find it at their next refresh instead.
                actions.append(.log(.warning, "sheep VDI '\(vol.name)': announcing shared SCSI record version \(h.record!.known.version) failed: \(result.name)"))
            }
            recordEnded(vol, .published)
            return
        }
        recordStep(vol, h.record!.reply(result, vdiID: vdiID, attrID: attrID, data: h.recordRead.take(result)))
    }

    private mutating func recordStep(_ vol: SheepVolume, _ step: SheepSCSIRecordSync.Step) {
        let h = home(vol)
        switch step {
        case .send(let hdr, let payload):
            sendSideRequest(vol, stage: .record, hdr, payload: payload, read: &h.recordRead)
        case .done(let outcome):
            if outcome == .published, let slot = Self.announceSlot(vol) {
                // Sheep invalidates every other participant before it forwards an index write
                // (gateway_write_obj), so once this is acknowledged their next I/O meets INODE_INVALIDATED and
                // their reload reads the new version. 0 into a slot past the end of the VDI changes nothing.
                // Without SD_FLAG_CMD_TGT: were we invalidated, sheep would refuse it before invalidating.
                h.recordAnnouncing = true
                let hdr = SheepRequestHeader.writeIndexSlot(id: 0, vid: vol.vid, index: UInt32(slot), copies: vol.copies)
                actions.append(.send(op: newHomeOp(SheepHomeOp(request: nil, volume: vol, stage: .record)), volume: vol,
                                     header: hdr, payload: ZeroPages.base, payloadLength: SheepInodeLayout.slotBytes, dest: nil,
                                     destCapacity: 0))
                return
            }
            recordEnded(vol, outcome)
        }
    }

    private mutating func recordEnded(_ vol: SheepVolume, _ outcome: SheepSCSIRecordSync.Outcome) {
        let h = home(vol)
        var failure: StoreError? = nil
        if case .failed(_, let why) = outcome {
            actions.append(.log(.error, why))
            failure = .unavailable
        } else {
            notePowerOnPhase(vol, h.record!.known)
        }
        // Before the answers below: the store loads the version into the LU, then the commands go on.
        actions.append(.record(vol, h.record!.known, outcome))
        if !h.changesInFlight.isEmpty {
            if changesStepEnded(vol, outcome, failure) { return }
        } else if let p = h.recordPublisher {
            h.recordPublisher = nil
            if outcome == .lostRace && !stopping {
                // Another gateway wrote that version: read it (the store loads it into the LU) before the
                // command applies again, or it would apply to the state it lost with and lose again.
                h.recordLostPublisher = p
                recordStep(vol, h.record!.refresh())
                return
            }
            actions.append(.answer(p, outcome == .published ? nil : (failure ?? .stateChanged)))
        } else if let p = h.recordLostPublisher {
            h.recordLostPublisher = nil
            actions.append(.answer(p, failure ?? .stateChanged))
        }
        if !h.changes.isEmpty {
            // Changes made outside a command go first: a reservation command or a held write after them must
            // see them (a RESERVE through this gateway after a logout released the holder's reservation).
            startChanges(vol)
            if h.recordRunning { return }
        }
        if h.recordAgain {
            h.recordAgain = false
            refreshRecord(vol)
            return
        }
        // While the LU's power-on is undecided, reservation commands keep waiting (bounded by
        // syncWaitSecondsMax): they must not apply to, or report, state the power-on may clear.
        if !h.powerOnUndecided || failure != nil {
            for r in h.recordSyncWaiters { actions.append(.answer(r, failure)) }
            h.recordSyncWaiters.removeAll()
        }
        let held = h.waitingRecord
        h.waitingRecord = []
        // Only a reservation can make held I/O conflict now; without one it is redone as it is (NBD, which cannot
        // check reservations, then never sees `.stateChanged`).
        let known = h.record!.known
        let recheck = known.version > h.waitingRecordVersion && known.writer != vol.gatewayID
            && (known.reserved || known.spc2Holder != nil)
        for r in held {
            switch r.kind {
            case .write, .read: if recheck { actions.append(.answer(r, .stateChanged)); continue }
            case .deallocate, .record, .compareSection, .change: break
            }
            request(r)
        }
        if !h.recordPublishQueue.isEmpty { startPublish(vol, h.recordPublishQueue.removeFirst()) }
    }

    /// A reservation command on the LU: `publish` false waits for the record to be current (and loaded into
    /// the LU); true appends the LU's state as the next version once no other record operation runs.
    mutating func recordRequest(_ req: SheepHomeRequest, publish: Bool) {
        let vol = req.volume
        let h = home(vol)
        if !publish {
            req.queuedTick = tick
            h.recordSyncWaiters.append(req)
            refreshRecord(vol)
            return
        }
        if h.record != nil, !h.recordRunning, h.recordPublisher == nil {
            startPublish(vol, req)
        } else {
            h.recordPublishQueue.append(req)
        }
    }

    /// A change made outside a command (SharedStateChange): queued, then appended after a refresh, before
    /// any reservation command or held I/O waiting behind it. `req` is answered once it is in sheep.
    mutating func recordChange(_ req: SheepHomeRequest, _ change: SharedStateChange) {
        let vol = req.volume
        guard vol.coherent else {
            actions.append(.answer(req, nil))   // one gateway: the LU's own state is the whole state
            return
        }
        let h = home(vol)
        if case .portGroups(.publish(_, let groups)) = change {
            h.ownPorts = groups.flatMap(\.ports)   // the slots this gateway beats (SheepHomeLiveness.swift)
        }
        if !SharedStateChange.enqueue(change, into: &h.changes) {
            actions.append(.log(.warning, "sheep VDI '\(vol.name)': more than \(SharedStateLimits.changesQueuedMax) shared SCSI state changes queued; the oldest SPC-2 release is dropped"))
        }
        if req.waiter != .none {
            req.queuedTick = tick
            if h.changeWaiters.count < SharedStateLimits.changesQueuedMax {
                h.changeWaiters.append(req)
            } else {
                actions.append(.answer(req, .unavailable))   // the change is queued; only the wait for it is refused
            }
        }
        if h.changesInFlight.isEmpty, !h.recordRunning, h.recordPublisher == nil, h.recordLostPublisher == nil {
            startChanges(vol)
        }
    }

    private mutating func startChanges(_ vol: SheepVolume) {
        let h = home(vol)
        h.changesInFlight = h.changes
        h.changeWaitersInFlight = h.changeWaiters
        h.changes.removeAll()
        h.changeWaiters.removeAll()
        h.changeAttempts = 0
        if stopping {
            changesEnded(h, .unavailable)
            return
        }
        if h.record == nil {
            h.record = SheepSCSIRecordSync(vdiName: vol.name)
            h.recordVolume = vol
        }
        recordStep(vol, h.record!.refresh())
    }

    /// A step of appending the changes in flight ended (a refresh, or the version): true when another follows.
    private mutating func changesStepEnded(_ vol: SheepVolume, _ outcome: SheepSCSIRecordSync.Outcome,
                                           _ failure: StoreError?) -> Bool {
        let h = home(vol)
        switch outcome {
        case .current:
            guard !stopping else { changesEnded(h, .unavailable); return false }
            // The newest version is known: append the changes to it, unless they change nothing there.
            guard let next = h.record!.known.applying(h.changesInFlight, writer: vol.gatewayID) else {
                changesEnded(h, nil)
                return false
            }
            recordStep(vol, h.record!.publish(next))
            return true
        case .published:
            changesEnded(h, nil)
        case .lostRace:
            h.changeAttempts += 1
            if h.changeAttempts < SharedStateLimits.publishAttemptsMax && !stopping {
                recordStep(vol, h.record!.refresh())
                return true
            }
            actions.append(.log(.error, "sheep VDI '\(vol.name)': other gateways' versions beat a shared SCSI state change \(h.changeAttempts) times; it is not in the record"))
            changesEnded(h, .unavailable)
        case .failed:
            actions.append(.log(.error, "sheep VDI '\(vol.name)': a shared SCSI state change (\(h.changesInFlight)) is not in the record"))
            changesEnded(h, failure ?? .unavailable)
        }
        return false
    }

    private mutating func changesEnded(_ h: SheepHome, _ failure: StoreError?) {
        for r in h.changeWaitersInFlight { actions.append(.answer(r, failure)) }
        h.changeWaitersInFlight.removeAll()
        h.changesInFlight.removeAll()
    }

    private mutating func startPublish(_ vol: SheepVolume, _ req: SheepHomeRequest) {
        let h = home(vol)
        guard vol.coherent, !stopping, let state = vol.lunState, let r = h.record else {
            actions.append(.answer(req, .unavailable))
            return
        }
        h.recordPublisher = req
        publishRecord(vol, state.successorRecord(of: r.known, writer: vol.gatewayID))
    }
}
