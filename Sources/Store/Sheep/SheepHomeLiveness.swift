// The home core's side of gateway liveness (SheepLiveness.swift; docs/CLUSTER-STATE.md, "Liveness and power
// loss"): every multipath VDI whose shared record is in use beats every `beatIntervalSeconds`, one beat at a
// time, through the volume's channel like the record's steps (without SD_FLAG_CMD_TGT: the companion has no
// shared lock and no coherence). After each beat the home core reports the other gateways' dead ports to the
// LU (ALUA) and, while the LU's power-on is undecided, decides it.

import Floor
import URing
import SheepProtocol

/// Where a gateway stands with the LU's power-on (docs/CLUSTER-STATE.md, "APTPL").
public enum PowerOnPhase: Equatable {
    /// The record has not been read yet.
    case unknown
    /// The record holds state a power-on would clear (SheepSCSIRecord.losesStateAtPowerOn): reservation commands
    /// wait (at most SharedStateLimits.syncWaitSecondsMax each) until the heartbeats say whether another gateway
    /// serves the LU. `seen` is the record's power-on count when this gateway first read it, `since` when
    /// (monotonic nanoseconds).
    case deciding(seen: UInt64, since: UInt64)
    /// Decided (or nothing to decide): this gateway serves the LU, and says so in its heartbeat.
    case serving
}

extension SheepHomeMachine {
    /// Starts a beat for every multipath VDI on this core whose record is in use and whose last beat started
    /// `beatIntervalSeconds` ago or more (called on each loop tick, `nowNanos` set).
    mutating func beatDue() {
        guard !stopping else { return }
        var due: [SheepVolume] = []
        for h in homes.values {
            if case .deciding(_, let since) = h.powerOn, nowNanos &- since >= GatewayLivenessLimits.decisionMaxNanos,
               let vol = h.recordVolume {
                // The heartbeats could not be read or written for this long (sheep refuses the companion): the
                // record is kept as it is rather than cleared on a guess, and the commands go on.
                h.powerOn = .serving
                actions.append(.log(.warning, "sheep VDI '\(vol.name)': no heartbeat read for \(GatewayLivenessLimits.decisionMaxNanos / 1_000_000_000) s; keeping the shared SCSI state without a power-on"))
                refreshRecord(vol)
            }
            guard h.record != nil, let vol = h.recordVolume, vol.coherent, h.liveness?.isIdle ?? true,
                  h.livenessStarted == 0 || nowNanos &- h.livenessStarted >= GatewayLivenessLimits.beatIntervalNanos
            else { continue }
            due.append(vol)
        }
        for vol in due { startBeat(vol) }
    }

    private mutating func startBeat(_ vol: SheepVolume) {
        let h = home(vol)
        if h.liveness == nil { h.liveness = SheepLiveness(vdiName: vol.name, gateway: vol.gatewayID, copies: vol.copies) }
        h.livenessStarted = max(nowNanos, 1)
        livenessStep(vol, h.liveness!.beat(own: h.ownPorts, serving: h.powerOn == .serving))
    }

    /// Sheep's answer to a beat's step.
    mutating func livenessReply(_ vol: SheepVolume, result: SheepResult, vdiID: UInt32) {
        let h = home(vol)
        guard h.liveness != nil else { return }
        livenessStep(vol, h.liveness!.reply(result, vdiID: vdiID, data: h.livenessRead.take(result), nowNanos: nowNanos))
    }

    private mutating func livenessStep(_ vol: SheepVolume, _ step: SheepLiveness.Step) {
        let h = home(vol)
        switch step {
        case .send(let hdr, let payload):
            sendSideRequest(vol, stage: .liveness, hdr, payload: payload, read: &h.livenessRead)
        case .done(.failed(_, let why)):
            // Logged once per run of failures (sheep away): the next beat tries again.
            if !h.livenessFailing { actions.append(.log(.warning, why)) }
            h.livenessFailing = true
        case .done(.beaten):
            h.livenessFailing = false
            livenessJudged(vol)
        }
    }

    /// After a beat: the other gateways' dead ports go to the LU when they changed, and an undecided power-on
    /// is decided when the slots allow it.
    private mutating func livenessJudged(_ vol: SheepVolume) {
        let h = home(vol)
        guard let seen = h.liveness?.liveness else { return }
        let dead = seen.deadPorts(own: h.ownPorts, nowNanos: nowNanos)
        if dead != h.deadPortsReported {
            actions.append(.log(.info, "sheep VDI '\(vol.name)': relative target port(s) \(dead) of other gateways: no heartbeat for \(GatewayLivenessLimits.deadAfterSeconds) s"))
            h.deadPortsReported = dead
            actions.append(.liveness(vol, dead))
        }
        guard case .deciding(let count, _) = h.powerOn,
              let decision = seen.powerOnDecision(own: h.ownPorts, nowNanos: nowNanos) else { return }
        h.powerOn = .serving
        switch decision {
        case .livePeer:
            actions.append(.log(.info, "sheep VDI '\(vol.name)': another gateway serves the LU; joining with the shared SCSI state as it is"))
        case .noLivePeer:
            actions.append(.log(.info, "sheep VDI '\(vol.name)': no live gateway of the LU; it powers on (APTPL decides what the shared SCSI state keeps)"))
            SharedStateChange.enqueue(.powerOn(seen: count), into: &h.changes)
        }
        // Runs the power-on (if any) first, then answers the reservation commands that waited for the decision.
        refreshRecord(vol)
    }

    /// The first time the record is known: whether this gateway must decide the LU's power-on before it answers
    /// reservation commands.
    mutating func notePowerOnPhase(_ vol: SheepVolume, _ known: SheepSCSIRecord) {
        let h = home(vol)
        guard h.powerOn == .unknown else { return }
        if known.losesStateAtPowerOn {
            h.powerOn = .deciding(seen: known.powerOns, since: nowNanos)
            actions.append(.log(.info, "sheep VDI '\(vol.name)': the shared SCSI state holds reservations a power-on would clear; reservation commands wait for the heartbeats (at most \(GatewayLivenessLimits.deadAfterSeconds) s)"))
        } else {
            h.powerOn = .serving
        }
    }
}
