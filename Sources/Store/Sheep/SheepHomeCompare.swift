// The home core's side of COMPARE AND WRITE across gateways (SheepCompareSection.swift, docs/CLUSTER-STATE.md):
// one section per VDI, entered for one command at a time. The LU's own gate (LogicalUnit.compareAndWriteGate)
// already orders this gateway's COMPARE AND WRITEs, so the queue here holds more than one only when a command
// was aborted while it held the section and the next one came. Lock and lease requests go without
// SD_FLAG_CMD_TGT: the companion VDI has no shared lock and no coherence.

import Floor
import URing
import SheepProtocol

extension SheepHomeMachine {
    /// Enter, confirm or leave for the command `req` belongs to (its core and tag name it).
    mutating func compareRequest(_ req: SheepHomeRequest, _ step: CompareSectionStep) {
        let vol = req.volume
        guard vol.coherent else {
            actions.append(.answer(req, nil))   // one gateway: the LU's gate is the whole section
            return
        }
        let h = home(vol)
        if h.compare == nil {
            h.compare = SheepCompareSection(vdiName: vol.name, gateway: vol.gatewayID, copies: vol.copies)
            h.compareVolume = vol
        }
        switch step {
        case .enter:
            guard h.compareQueue.count < CompareSectionLimits.waitersMax else {
                actions.append(.answer(req, .unavailable))
                return
            }
            h.compareQueue.append(req)
            startNextCompare(vol)
        case .confirm:
            let holds = h.compareHolder.map { Self.sameCommand($0, req) } ?? false
            actions.append(.answer(req, holds && h.compare!.mayAct(nowNanos: nowNanos) ? nil : .unavailable))
        case .leave:
            guard let holder = h.compareHolder, Self.sameCommand(holder, req), h.compareCurrent == nil else {
                actions.append(.answer(req, nil))   // not held for this command (any more): nothing to give back
                return
            }
            h.compareHolder = nil
            h.compareCurrent = req
            compareStep(vol, h.compare!.leave(nowNanos: nowNanos))
        }
    }

    /// A section held past its lease with no leave (its command was aborted) is let go of silently, and the
    /// next waiting command starts to enter (a waiter breaks the lock left behind).
    mutating func expireCompareSections() {
        var expired: [SheepVolume] = []
        for h in homes.values where h.compareHolder != nil {
            if let vol = h.compareVolume, !(h.compare?.mayAct(nowNanos: nowNanos) ?? false) { expired.append(vol) }
        }
        for vol in expired {
            let h = home(vol)
            guard let step = h.compare?.expire(nowNanos: nowNanos) else { continue }
            h.compareHolder = nil
            compareStep(vol, step)
        }
    }

    /// Sections whose wait fell due ask sheep again.
    mutating func compareTimers() {
        var due: [SheepVolume] = []
        var next: UInt64 = 0
        for h in homes.values where h.compareWakeNanos != 0 {
            if h.compareWakeNanos <= nowNanos, let vol = h.compareVolume {
                due.append(vol)
            } else {
                next = next == 0 ? h.compareWakeNanos : min(next, h.compareWakeNanos)
            }
        }
        compareWakeNanos = next
        for vol in due {
            let h = home(vol)
            h.compareWakeNanos = 0
            if stopping {
                // Nothing new goes to sheep: the waiting command is answered, and nothing is held.
                if let step = h.compare?.giveUp() { compareStep(vol, step) }
                continue
            }
            guard let step = h.compare?.timerFired(nowNanos: nowNanos) else { continue }
            compareStep(vol, step)
        }
    }

    /// Sheep's answer to a section step.
    mutating func compareReply(_ vol: SheepVolume, result: SheepResult, vdiID: UInt32) {
        let h = home(vol)
        guard h.compare != nil else { return }
        compareStep(vol, h.compare!.reply(result, vdiID: vdiID, data: h.compareRead.take(result), nowNanos: nowNanos))
    }

    private static func sameCommand(_ a: SheepHomeRequest, _ b: SheepHomeRequest) -> Bool {
        a.originCore == b.originCore && a.waiter == b.waiter
    }

    private mutating func startNextCompare(_ vol: SheepVolume) {
        let h = home(vol)
        guard h.compareCurrent == nil, h.compareHolder == nil, h.compare?.isIdle == true, !h.compareQueue.isEmpty else { return }
        let req = h.compareQueue.removeFirst()
        if stopping {
            actions.append(.answer(req, .unavailable))
            return startNextCompare(vol)
        }
        h.compareCurrent = req
        compareStep(vol, h.compare!.enter(nowNanos: nowNanos))
    }

    private mutating func compareStep(_ vol: SheepVolume, _ step: SheepCompareSection.Step) {
        let h = home(vol)
        switch step {
        case .send(let hdr, let payload):
            sendSideRequest(vol, stage: .compare, hdr, payload: payload, read: &h.compareRead)
        case .wait(let until):
            h.compareWakeNanos = until
            compareWakeNanos = compareWakeNanos == 0 ? until : min(compareWakeNanos, until)
        case .done(let outcome):
            let req = h.compareCurrent
            h.compareCurrent = nil
            var leaving = false
            if let req, case .compareSection(.leave) = req.kind { leaving = true }
            switch outcome {
            case .entered:
                h.compareHolder = req
                if let req { actions.append(.answer(req, nil)) }
            case .left:
                if let req { actions.append(.answer(req, nil)) }
            case .abandoned(let why):
                actions.append(.log(.warning, why))
                // A leave's command wrote in time (it confirmed first); an enter's never got the section.
                if let req { actions.append(.answer(req, leaving ? nil : .unavailable)) }
            case .busy:
                actions.append(.log(.warning, "sheep VDI '\(vol.name)': COMPARE AND WRITE waited \(CompareSectionLimits.waitSecondsMax) s for the section held through another gateway; answering BUSY"))
                if let req { actions.append(.answer(req, .unavailable)) }
            case .failed(_, let why):
                actions.append(.log(.error, why))
                if let req { actions.append(.answer(req, leaving ? nil : .unavailable)) }
            }
            startNextCompare(vol)
        }
    }
}
