import Floor
import URing
import ISCSIWire
import Store
import SCSI
import ISCSI
import NBD
import CURing
import Glibc

/// Connects the pure login state machine (Login.swift) to a connection: decodes Login PDUs, sends Login
/// Responses, and on success turns the connection into a session.
extension Connection {

    func handleLogin(_ bhs: BHS) {
        if heldLogin != nil {
            // An initiator waits for each Login Response; one that does not is not worth answering.
            reactor.closeConnection(self, reason: "Login Request while the previous one is unanswered")
            return
        }
        let flags = bhs.byte1
        let req = LoginRequest(
            transit: flags & LoginFlags.transit != 0, continueFlag: flags & LoginFlags.continue != 0,
            csg: (flags >> LoginFlags.csgShift) & LoginFlags.stageMask, nsg: flags & LoginFlags.stageMask,
            versionMax: bhs.byte(2), versionMin: bhs.byte(3),
            isid: UInt64(be16(hdr, 8)) << 32 | UInt64(be32(hdr, 10)),
            tsih: be16(hdr, 14), itt: bhs.itt, cid: bhs.u16(20),
            cmdSN: bhs.cmdSN, expStatSN: bhs.expStatSN)
        if !loginStarted {
            loginStarted = true
            // The first Login Request fixes the session's numbering (RFC 7143 §11.12.7-8).
            cmdSNWindow.begin(at: req.cmdSN)
            statSN = req.expStatSN
            isid = req.isid
            cid = req.cid
        }
        let env = reactor.loginEnvironment(for: self)
        let checksCHAPResponse = login.chapAwaitingResponse
        let (response, outcome) = controlData.withUnsafeBytes { raw in
            login.receive(req, data: UnsafeRawBufferPointer(rebasing: raw[0..<receiver.dataLength]), env: env)
        }
        if checksCHAPResponse && login.chapAttemptedUser != nil {
            let now = monotonicNanos()
            var refusal: String? = nil
            var due = now + LoginThrottle.maxHoldNanos
            switch reactor.loginThrottle.turn(address: peer, nowNanos: now) {
            case .refuse:
                // Refused unchecked, and only after the longest hold, so a guesser that keeps reconnecting
                // costs little and learns nothing.
                let failures = reactor.loginThrottle.failures(address: peer, nowNanos: now)
                refusal = "CHAP response not checked: \(failures) failed logins from \(peer) recently"
            case .at(let turn):
                due = turn
                if response.statusClass != LoginStatus.success.statusClass {
                    due = reactor.loginThrottle.failed(address: peer, account: login.chapAttemptedUser, turn: turn,
                                                       nowNanos: now)
                }
            }
            if due > now {
                heldLogin = HeldLogin(request: req, response: response, outcome: outcome, refusal: refusal, dueNanos: due)
                reactor.holdLogin(dueNanos: due)
                return
            }
        }
        answerLogin(req, response, outcome)
    }

    /// From the loop (`Reactor.answerHeldLogins`): the answer the login throttle held is due.
    func answerHeldLogin() {
        guard let held = heldLogin else { return }
        heldLogin = nil
        reactor.heldLogins -= 1
        if let refusal = held.refusal {
            logLoginFailure(status: LoginStatus.serviceUnavailable.rawValue, reason: refusal)
            sendLoginFailure(held.request, .serviceUnavailable)   // try later
            return
        }
        answerLogin(held.request, held.response, held.outcome)
    }

    private func answerLogin(_ req: LoginRequest, _ response: LoginResponse, _ outcome: LoginOutcome) {
        var finalParams: SessionParameters? = nil
        var closeAfter = false
        switch outcome {
        case .respondAndContinue: break
        case .respondAndClose:
            closeAfter = true
            logLoginFailure(status: response.status, reason: login.failureReason)
        case .respondAndEnterFullFeature(let p):
            if req.tsih != 0 {
                // Adding a connection to an existing session: MaxConnections is 1, so there is nothing to join.
                logLoginFailure(status: LoginStatus.sessionDoesNotExist.rawValue, reason: "MaxConnections is 1")
                sendLoginFailure(req, .sessionDoesNotExist)
                return
            }
            if p.sessionType == .normal, let target = login.target,
               !reactor.runtime.sessionMayStart(initiator: p.initiatorName, isid: req.isid, targetName: target.name,
                                                closeOld: true) {
                reactor.logger.info("login of \(p.initiatorName) (ISID 0x\(String(req.isid, radix: 16))) to \(target.name) waits for the commands of its previous session to end")
                parkedLogin = ParkedLogin(request: req, response: response, parameters: p)
                reactor.parkedLogins += 1
                return
            }
            finalParams = p
        }
        finishLogin(req, response, finalParams: finalParams, closeAfter: closeAfter)
    }

    /// From the loop (`Reactor.resumeParkedLogins`): a parked login goes on once the previous session of its
    /// initiator port has ended.
    func resumeParkedLogin() {
        guard let parked = parkedLogin, let target = login.target else { return }
        guard reactor.runtime.sessionMayStart(initiator: parked.parameters.initiatorName, isid: parked.request.isid,
                                              targetName: target.name, closeOld: false) else { return }
        parkedLogin = nil
        reactor.parkedLogins -= 1
        finishLogin(parked.request, parked.response, finalParams: parked.parameters, closeAfter: false)
    }

    /// Sends the login response; a final one turns the connection into a session.
    private func finishLogin(_ req: LoginRequest, _ response: LoginResponse, finalParams: SessionParameters?,
                             closeAfter: Bool) {
        // The final Login Response still belongs to the login phase and goes out without digests: the negotiated
        // digests apply to full feature phase PDUs only (RFC 7143 §13.1). So the session begins once it is queued.
        var tsihOut: UInt16 = 0
        if finalParams != nil {
            guard let t = reactor.runtime.allocateTSIH() else {
                logLoginFailure(status: LoginStatus.outOfResources.rawValue, reason: "all TSIHs in use")
                sendLoginFailure(req, .outOfResources)
                return
            }
            tsihOut = t
        }
        let text = response.text
        let n = text.count
        let isid = req.isid
        let itt = req.itt
        let build: (UnsafeMutableRawPointer) -> Void = { h in
            PDUBuild.loginResponse(h, transit: response.transit, cont: response.continueFlag, csg: response.csg,
                                   nsg: response.nsg, versionMax: response.versionMax,
                                   versionActive: response.versionActive, isid: isid, tsih: tsihOut, itt: itt,
                                   statusClass: response.statusClass, statusDetail: response.statusDetail,
                                   dataLength: n)
            // StatSN advances with each Login Response; a failed login has no session to number.
            self.stamp(h, advance: response.statusClass == LoginStatus.success.statusClass)
        }
        let token: SendToken = closeAfter ? .closeAfter : .none
        if n > OutQueue.inlineDataBytes {
            // The slot is released when the PDU is out; a close-after response still closes via phase.
            guard text.withUnsafeBytes({ queueFromBorrowedSlot($0, build: build) }) else {
                reactor.closeConnection(self, reason: "no buffer for login response")
                return
            }
            if closeAfter { queueControl(token: .closeAfter) { _, _ in } }
        } else {
            queueControl(dataLength: n, token: token) { h, d in
                build(h)
                text.withUnsafeBytes { s in if n > 0 { memcpy(d, s.baseAddress!, n) } }
            }
        }
        if closeAfter { phase = .loggingOut }
        if let p = finalParams { becomeSession(p, tsih: tsihOut) }
    }

    private func sendLoginFailure(_ req: LoginRequest, _ status: LoginStatus) {
        let isid = req.isid
        let itt = req.itt
        phase = .loggingOut
        queueControl(token: .closeAfter) { h, _ in
            PDUBuild.loginResponse(h, transit: false, cont: false, csg: req.csg, nsg: 0, versionMax: 0,
                                   versionActive: 0, isid: isid, tsih: 0, itt: itt,
                                   statusClass: status.statusClass, statusDetail: status.statusDetail, dataLength: 0)
            self.stamp(h, advance: false)
        }
    }

    /// Who was refused, from where, and why; a flood of failures is summarised (LoginLog's burst per interval).
    private func logLoginFailure(status: UInt16, reason: String?) {
        guard let suppressed = reactor.loginFailureLog.admit(nowNanos: monotonicNanos()) else { return }
        let line = LoginLog.failure(status: status, reason: reason, initiatorName: login.initiatorName, peer: peer,
                                    targetName: login.target?.name)
        reactor.logger.warning("\(line)\(RateLimitedLog.suffix(suppressed))")
    }

    /// The login succeeded: apply the negotiated parameters and register the session.
    private func becomeSession(_ p: SessionParameters, tsih: UInt16) {
        params = ConnectionParams(sessionParameters: p, slotBytes: reactor.pool.slotBytes)
        isDiscovery = p.sessionType == .discovery
        initiatorName = p.initiatorName
        // The login found its target in the snapshot of its first PDU; the session serves the one this core
        // applies now (a LUN deleted meanwhile is not served). The login machine lets go of the old one, so a
        // deleted LUN's store closes once its last command ends, not when this session does.
        let found = login.target
        chapAccount = login.chapAccount
        login = LoginStateMachine()
        phase = .fullFeature
        reactor.leftLogin(self)
        self.tsih = tsih
        if let found {
            if let now = reactor.snapshot.target(tid: found.tid), now.name == found.name {
                target = now
            } else {
                reactor.closeConnection(self, reason: "target \(found.name) removed during login")
                return
            }
        }
        if let target, !isDiscovery {
            nexus = Nexus(initiatorName: initiatorName, isid: isid, targetName: target.name,
                          portalGroupTag: target.portalGroupTag, relativeTargetPortID: target.relativeTargetPortID)
            // Session reinstatement (RFC 7143 §6.3.5): a new session with the same initiator port replaces the old.
            reactor.runtime.registerSession(initiator: initiatorName, isid: isid, targetName: target.name,
                                            core: reactor.core, tsih: tsih)
        }
        let started = LoginLog.sessionStarted(initiatorName: initiatorName, peer: peer, targetName: target?.name, tsih: tsih)
        if isDiscovery { reactor.logger.debug("\(started)") } else { reactor.logger.info("\(started)") }
    }
}

/// A Login Response the login throttle holds back until `dueNanos` (Connection.heldLogin).
public struct HeldLogin {
    let request: LoginRequest
    let response: LoginResponse
    let outcome: LoginOutcome
    /// Set when the throttle refused to reveal the verdict: Service Unavailable goes out instead, and why.
    let refusal: String?
    let dueNanos: UInt64
}

/// A successful login waiting for the previous session of its initiator port (Connection.parkedLogin).
public struct ParkedLogin {
    let request: LoginRequest
    let response: LoginResponse
    let parameters: SessionParameters
}

extension ConnectionParams {
    init(sessionParameters p: SessionParameters, slotBytes: Int) {
        self.init()
        headerDigest = p.headerDigest == .crc32c
        dataDigest = p.dataDigest == .crc32c
        maxSendDataSegment = max(512, p.initiatorMaxRecvDataSegmentLength)
        // Our MaxRecvDataSegmentLength never exceeds a buffer slot: immediate and Data-Out data land in one.
        maxRecvDataSegment = min(slotBytes, p.targetMaxRecvDataSegmentLength)
        maxBurst = min(slotBytes, p.maxBurstLength)
        firstBurst = min(slotBytes, p.firstBurstLength)
        immediateData = p.immediateData
        initialR2T = p.initialR2T
        defaultTime2Wait = UInt16(clamping: p.defaultTime2Wait)
        defaultTime2Retain = UInt16(clamping: p.defaultTime2Retain)
    }
}

