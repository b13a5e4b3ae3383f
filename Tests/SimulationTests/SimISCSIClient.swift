// An iSCSI initiator for the simulation. One connection per session: a one-PDU login straight to full feature
// phase (no security stage), then READ(10), WRITE(10) with immediate data, unsolicited Data-Out and Data-Out
// per R2T, and SYNCHRONIZE CACHE(10), inside the target's CmdSN window. NOP-In pings are answered; UNIT
// ATTENTION is retried. Everything is checked that a correct target guarantees: StatSN order, DataSN and
// buffer offsets, R2T bounds, tags in flight, the negotiated segment length.

import DeterministicRandom
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor

final class SimISCSIClient: SimClientBase, SimClient {
    /// Login responses that neither transit nor fail before the client drops the connection.
    static let maxLoginExchanges = 8
    /// The largest login text the target sends in one PDU (it continues the rest, RFC 7143 §6.4).
    static let loginTextChunkBytes = 8192
    /// Login text reassembled over continued responses, at most.
    static let maxLoginTextBytes = 65_536
    /// The largest login text this client sends (its keys are well under it).
    static let ourLoginTextBytes = 2048
    /// Re-issues of one command answered UNIT ATTENTION before another one counts as a failure.
    static let maxUnitAttentionRetries = 8
    /// NOP-In pings waiting for their NOP-Out; the target pings an idle connection once per interval.
    static let maxPendingPings = 4
    /// RFC 7143 §13 defaults, for keys the target leaves unanswered.
    static let defaultMaxRecvDataSegmentBytes = 8192
    static let defaultMaxBurstBytes = 262_144
    static let defaultFirstBurstBytes = 65_536
    /// What this initiator accepts per PDU: the RFC default, so a READ of more arrives in several Data-In.
    static let ourMaxRecvDataSegmentCapBytes = 8192
    /// The ITT of login requests: top bit set, which command tags never have (SimClientBase.newTag).
    static let loginTag: UInt32 = 0x8000_0000

    let targetName: String
    let lunField: UInt64
    let isid: UInt64
    let initiatorName: String
    let blockSize: Int
    let maxCommandBytes: Int
    let ourMaxRecvDataSegmentBytes: Int

    private enum Phase {
        /// No connection yet, or it died.
        case down
        /// A Login Request is out; `exchanges` responses came without reaching full feature phase.
        case login(exchanges: Int)
        /// Commands flow.
        case fullFeature
    }
    private var phase = Phase.down
    /// Login text of the responses so far (continued text is reassembled here).
    private var loginText: [UInt8] = []

    private var cmdSN: UInt32 = 0
    private var expStatSN: UInt32 = 0
    private var maxCmdSN: UInt32 = 0
    private var targetMaxRecvDataSegmentBytes = defaultMaxRecvDataSegmentBytes
    private var maxBurstBytes = defaultMaxBurstBytes
    private var firstBurstBytes = defaultFirstBurstBytes
    private var immediateData = true
    private var initialR2T = true
    /// A Data-Out segment: the target's MaxRecvDataSegmentLength, and never more than a command.
    private var maxDataOutBytes: Int { min(targetMaxRecvDataSegmentBytes, maxCommandBytes) }

    /// One command's transfer, reset each time it is (re)issued.
    private struct Transfer {
        var unitAttentions = 0
        /// Write: data sent unasked, immediate then unsolicited Data-Out, up to `unsolicitedEnd`.
        var unsolicitedNext = 0
        var unsolicitedEnd = 0
        var unsolicitedDataSN: UInt32 = 0
        /// Write: the R2T being answered (MaxOutstandingR2T=1, so one at a time).
        var r2tActive = false
        var r2tTTT: UInt32 = 0
        var r2tNext = 0
        var r2tEnd = 0
        var r2tDataSN: UInt32 = 0
        var nextR2TSN: UInt32 = 0
        /// Read: Data-In bytes so far and the DataSN expected next.
        var received = 0
        var nextDataSN: UInt32 = 0
    }
    private var transfers: [Transfer]
    private var pingTTTs: [UInt32]
    private var pingLUNs: [UInt64]
    private var pendingPings = 0
    /// What the transfers were made of, to show which paths a run went through.
    private(set) var r2ts = 0, dataOutPDUs = 0, dataInPDUs = 0, pingsAnswered = 0, logins = 0

    init(name: String, targetName: String, lun: UInt64, blocks: Range<UInt64>, blockSize: Int, queueDepth: Int,
         commands: Int, maxBlocksPerCommand: Int, verify: Bool, connect: @escaping () -> Int32) {
        // READ(10) and WRITE(10): 32-bit LBAs and 16-bit lengths.
        precondition(blocks.upperBound <= UInt64(UInt32.max) + 1, "\(name): blocks beyond READ(10)'s reach")
        precondition(maxBlocksPerCommand <= Int(UInt16.max), "\(name): commands beyond READ(10)'s length")
        self.targetName = targetName
        lunField = encodeLUN(lun)
        self.blockSize = blockSize
        maxCommandBytes = maxBlocksPerCommand * blockSize
        ourMaxRecvDataSegmentBytes = min(SimISCSIClient.ourMaxRecvDataSegmentCapBytes, max(512, maxCommandBytes))
        initiatorName = "iqn.2026-01.org.ringtgt.sim:\(name.lowercased())"
        // A random-type ISID (RFC 7143 §11.12.5, T=10b) derived from the name: a reconnect reinstates the session.
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for b in name.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
        isid = 0x80 << 40 | h & 0x00FF_FFFF_FFFF
        transfers = [Transfer](repeating: Transfer(), count: queueDepth)
        pingTTTs = [UInt32](repeating: 0, count: SimISCSIClient.maxPendingPings)
        pingLUNs = [UInt64](repeating: 0, count: SimISCSIClient.maxPendingPings)
        let workload = SimWorkload(name: name, range: blocks, blockSize: blockSize,
                                   maxBlocksPerCommand: maxBlocksPerCommand, commands: commands,
                                   queueDepth: queueDepth, verify: verify)
        // Send: every slot's command header and a ping answer each, plus two of the largest PDU.
        let largestOut = bhsBytes + padded4(max(maxCommandBytes, SimISCSIClient.ourLoginTextBytes))
        let txBytes = (queueDepth + SimISCSIClient.maxPendingPings) * bhsBytes + 2 * largestOut
        // Receive: two of the largest PDU the target may send (a Data-In, or a login text chunk).
        let largestIn = bhsBytes + padded4(max(ourMaxRecvDataSegmentBytes, SimISCSIClient.loginTextChunkBytes))
        super.init(name: name, workload: workload, queueDepth: queueDepth, txBytes: txBytes, rxBytes: 2 * largestIn,
                   connect: connect)
        loginText.reserveCapacity(SimISCSIClient.loginTextChunkBytes)
    }

    // MARK: Login

    override func sessionStarted() {
        phase = .login(exchanges: 0)
        cmdSN = 1
        expStatSN = 0
        maxCmdSN = 1
        pendingPings = 0
        loginText.removeAll(keepingCapacity: true)
        queueLoginRequest(withKeys: true)
    }

    /// CSG=operational, NSG=full feature, T=1 each time: the keys first, then empty requests while the target
    /// continues its text or holds the transition back.
    private func queueLoginRequest(withKeys: Bool) {
        var text: [UInt8] = []
        if withKeys {
            for (k, v) in [("InitiatorName", initiatorName), ("TargetName", targetName), ("SessionType", "Normal"),
                           ("HeaderDigest", "None"), ("DataDigest", "None"), ("ImmediateData", "Yes"),
                           ("InitialR2T", "No"), ("MaxRecvDataSegmentLength", "\(ourMaxRecvDataSegmentBytes)"),
                           ("MaxBurstLength", "\(SimISCSIClient.defaultMaxBurstBytes)"),
                           ("FirstBurstLength", "\(SimISCSIClient.defaultFirstBurstBytes)"),
                           ("MaxOutstandingR2T", "1"), ("MaxConnections", "1"), ("ErrorRecoveryLevel", "0"),
                           ("DataPDUInOrder", "Yes"), ("DataSequenceInOrder", "Yes")] {
                TextKeys.append(k, v, to: &text)
            }
        }
        precondition(text.count <= SimISCSIClient.ourLoginTextBytes)
        guard let h = tx.reserve(bhsBytes + padded4(text.count)) else {
            drop("no room for a Login Request")
            return
        }
        InitiatorPDUBuild.loginRequest(h, transit: true, csg: LoginStage.operational.rawValue,
                                       nsg: LoginStage.fullFeature.rawValue, isid: isid,
                                       itt: SimISCSIClient.loginTag, cmdSN: cmdSN, expStatSN: expStatSN,
                                       dataLength: text.count)
        text.withUnsafeBytes { (h + bhsBytes).copyMemory(from: $0.baseAddress!, byteCount: text.count) }
        zeroPad(h + bhsBytes, text.count)
        tx.commit(bhsBytes + padded4(text.count))
    }

    private func handleLoginResponse(_ bhs: BHS, _ data: UnsafeRawPointer, _ length: Int) {
        guard case .login(let exchanges) = phase else {
            workload.fail("Login Response in full feature phase")
            drop("protocol error")
            return
        }
        guard bhs.itt == SimISCSIClient.loginTag else {
            workload.fail("Login Response with ITT \(hex(bhs.itt))")
            drop("protocol error")
            return
        }
        let statusClass = bhs.byte(36), detail = bhs.byte(37)
        if statusClass == 3 {
            // Target error (out of resources, service unavailable): transient, so connect again.
            drop("login: target error \(hex(detail))")
            return
        }
        if statusClass != 0 {
            abandon("login refused: status class \(hex(statusClass)) detail \(hex(detail))")
            return
        }
        guard loginText.count + length <= SimISCSIClient.maxLoginTextBytes else {
            workload.fail("login text beyond \(SimISCSIClient.maxLoginTextBytes) bytes")
            drop("protocol error")
            return
        }
        loginText.append(contentsOf: UnsafeRawBufferPointer(start: data, count: length))
        expStatSN = bhs.u32(24) &+ 1
        cmdSN = bhs.u32(28)
        maxCmdSN = bhs.u32(32)
        let transit = bhs.byte1 & 0x80 != 0, cont = bhs.byte1 & 0x40 != 0
        if transit && !cont && bhs.byte1 & 3 == LoginStage.fullFeature.rawValue {
            negotiate()
            logins += 1
            return
        }
        guard exchanges + 1 < SimISCSIClient.maxLoginExchanges else {
            workload.fail("login did not reach full feature phase in \(SimISCSIClient.maxLoginExchanges) exchanges")
            drop("login stalled")
            return
        }
        phase = .login(exchanges: exchanges + 1)
        queueLoginRequest(withKeys: false)
    }

    private func negotiate() {
        guard let pairs = try? TextKeys.parse(loginText) else {
            workload.fail("login response text does not parse")
            drop("protocol error")
            return
        }
        var answered: [String: String] = [:]
        for p in pairs { answered[p.key] = p.value }
        func bytes(_ key: String, _ unanswered: Int) -> Int { answered[key].flatMap { Int($0) } ?? unanswered }
        targetMaxRecvDataSegmentBytes = bytes("MaxRecvDataSegmentLength", SimISCSIClient.defaultMaxRecvDataSegmentBytes)
        maxBurstBytes = min(bytes("MaxBurstLength", SimISCSIClient.defaultMaxBurstBytes), SimISCSIClient.defaultMaxBurstBytes)
        firstBurstBytes = min(bytes("FirstBurstLength", SimISCSIClient.defaultFirstBurstBytes),
                              SimISCSIClient.defaultFirstBurstBytes, maxBurstBytes)
        // InitialR2T is OR-ed and ImmediateData AND-ed (RFC 7143 §13.10, §13.11); both default to Yes.
        initialR2T = (answered["InitialR2T"] ?? "Yes") != "No"
        immediateData = (answered["ImmediateData"] ?? "Yes") == "Yes"
        if answered["HeaderDigest"] == "CRC32C" || answered["DataDigest"] == "CRC32C" {
            workload.fail("target chose a digest the initiator offered only None for")
        }
        guard targetMaxRecvDataSegmentBytes >= 512, firstBurstBytes >= 512 else {
            abandon("target declared MaxRecvDataSegmentLength \(targetMaxRecvDataSegmentBytes), FirstBurstLength \(firstBurstBytes)")
            return
        }
        phase = .fullFeature
    }

    override var summary: String {
        super.summary + "; \(logins) logins, \(r2ts) R2Ts, \(dataOutPDUs) Data-Out, \(dataInPDUs) Data-In, "
            + "\(pingsAnswered) pings answered"
    }

    // MARK: Sending

    override var idle: Bool {
        if case .fullFeature = phase { return pendingPings == 0 }
        return true
    }

    override func produce(_ rng: inout SeededRandom) -> Bool {
        guard case .fullFeature = phase else { return false }
        var did = false
        while pendingPings > 0, let h = tx.reserve(bhsBytes) {
            InitiatorPDUBuild.nopOutReply(h, lunField: pingLUNs[0], ttt: pingTTTs[0], cmdSN: cmdSN, expStatSN: expStatSN)
            tx.commit(bhsBytes)
            pendingPings -= 1
            pingsAnswered += 1
            for i in 0..<pendingPings { pingTTTs[i] = pingTTTs[i + 1]; pingLUNs[i] = pingLUNs[i + 1] }
            did = true
        }
        for s in 0..<queueDepth where slots[s]?.op == .write && queueDataOut(s) { did = true }
        // CmdSN ≤ MaxCmdSN: a command beyond the window would be dropped by the target (RFC 7143 §4.2.2.1).
        let issued = issueCommands(&rng, flushAllowed: true) { Serial.atLeast(maxCmdSN, cmdSN) }
        return did || issued
    }

    /// A slot's next command starts with no UNIT ATTENTION retries of its own (each new session's first command
    /// gets one: 29/00 for the new I_T nexus).
    override func end(_ slot: Int, _ outcome: SimOutcome) {
        transfers[slot].unitAttentions = 0
        super.end(slot, outcome)
    }

    override func issue(_ s: Int) -> Bool {
        guard let c = slots[s] else { preconditionFailure() }
        let bytes = c.blocks * blockSize
        var t = Transfer()
        t.unitAttentions = transfers[s].unitAttentions
        var immediate = 0
        if c.op == .write {
            immediate = immediateData ? min(bytes, firstBurstBytes, maxDataOutBytes) : 0
            t.unsolicitedNext = immediate
            t.unsolicitedEnd = initialR2T ? immediate : min(bytes, firstBurstBytes)
        }
        guard let h = tx.reserve(bhsBytes + padded4(immediate)) else { return false }
        let itt = newTag(s)
        InitiatorPDUBuild.scsiCommand(h, read: c.op == .read, write: c.op == .write,
                                      final: t.unsolicitedEnd == immediate, lunField: lunField, itt: itt,
                                      expectedLength: UInt32(bytes), cmdSN: cmdSN, expStatSN: expStatSN,
                                      immediateLength: immediate)
        let cdb = h + 32
        switch c.op {
        case .read, .write:
            cdb.storeBytes(of: c.op == .read ? Opcode.read10 : Opcode.write10, as: UInt8.self)
            put32(cdb, 2, UInt32(c.lba))
            put16(cdb, 7, UInt16(c.blocks))
        case .flush:
            // LBA 0 and 0 blocks: the whole medium (SBC-4 §5.24).
            cdb.storeBytes(of: Opcode.synchronizeCache10, as: UInt8.self)
        }
        if immediate > 0 {
            workload.fill(c, offset: 0, count: immediate, into: h + bhsBytes)
            zeroPad(h + bhsBytes, immediate)
        }
        tx.commit(bhsBytes + padded4(immediate))
        cmdSN &+= 1
        transfers[s] = t
        return true
    }

    /// Queues the Data-Out PDUs of slot `s` that fit: the unsolicited sequence, then the current R2T's.
    private func queueDataOut(_ s: Int) -> Bool {
        guard let c = slots[s] else { return false }
        var t = transfers[s]
        var did = false
        defer { transfers[s] = t }
        while t.unsolicitedNext < t.unsolicitedEnd {
            guard let n = queueDataOutPDU(c, s, ttt: reservedTag, offset: t.unsolicitedNext, end: t.unsolicitedEnd,
                                          dataSN: t.unsolicitedDataSN) else { return did }
            t.unsolicitedNext += n
            t.unsolicitedDataSN &+= 1
            did = true
        }
        while t.r2tActive {
            guard let n = queueDataOutPDU(c, s, ttt: t.r2tTTT, offset: t.r2tNext, end: t.r2tEnd,
                                          dataSN: t.r2tDataSN) else { return did }
            t.r2tNext += n
            t.r2tDataSN &+= 1
            t.r2tActive = t.r2tNext < t.r2tEnd
            did = true
        }
        return did
    }

    /// One Data-Out of [offset, end) split by the target's MaxRecvDataSegmentLength; F on the sequence's last.
    private func queueDataOutPDU(_ c: SimCommand, _ s: Int, ttt: UInt32, offset: Int, end: Int,
                                 dataSN: UInt32) -> Int? {
        let n = min(end - offset, maxDataOutBytes)
        assert(n > 0)
        guard let h = tx.reserve(bhsBytes + padded4(n)) else { return nil }
        InitiatorPDUBuild.dataOut(h, final: offset + n == end, lunField: lunField, itt: tags[s], ttt: ttt,
                                  expStatSN: expStatSN, dataSN: dataSN, bufferOffset: UInt32(offset), length: n)
        workload.fill(c, offset: offset, count: n, into: h + bhsBytes)
        zeroPad(h + bhsBytes, n)
        tx.commit(bhsBytes + padded4(n))
        dataOutPDUs += 1
        return n
    }

    private func zeroPad(_ p: UnsafeMutableRawPointer, _ n: Int) {
        if padded4(n) > n { (p + n).initializeMemory(as: UInt8.self, repeating: 0, count: padded4(n) - n) }
    }

    // MARK: Receiving

    override func consume() -> Bool {
        var did = false
        while rx.count >= bhsBytes && !dropping {
            let bhs = BHS(UnsafeRawPointer(rx.bytes))
            let length = bhs.dataSegmentLength
            let total = bhsBytes + bhs.ahsBytes + padded4(length)
            if case .fullFeature = phase, length > ourMaxRecvDataSegmentBytes {
                workload.fail("opcode \(hex(bhs.opcode)) carries \(length) bytes, beyond our MaxRecvDataSegmentLength "
                              + "\(ourMaxRecvDataSegmentBytes)")
                drop("protocol error")
                return true
            }
            guard total <= rx.capacity else {
                workload.fail("a login PDU of \(total) bytes")
                drop("protocol error")
                return true
            }
            guard rx.count >= total else { break }
            handle(bhs, UnsafeRawPointer(rx.bytes + bhsBytes + bhs.ahsBytes), length)
            rx.consume(total)
            did = true
        }
        return did
    }

    private func handle(_ bhs: BHS, _ data: UnsafeRawPointer, _ length: Int) {
        if bhs.opcode == ISCSIOpcode.loginResponse { return handleLoginResponse(bhs, data, length) }
        guard case .fullFeature = phase else {
            workload.fail("opcode \(hex(bhs.opcode)) during login")
            drop("protocol error")
            return
        }
        updateWindow(bhs)
        switch bhs.opcode {
        case ISCSIOpcode.scsiResponse: handleResponse(bhs, data, length)
        case ISCSIOpcode.dataIn: handleDataIn(bhs, data, length)
        case ISCSIOpcode.r2t: handleR2T(bhs)
        case ISCSIOpcode.nopIn: handleNopIn(bhs)
        case ISCSIOpcode.asyncMessage:
            // Event 1: the target asks for a logout. Leaving and logging in again is as good for this client.
            if bhs.byte(36) == 1 { drop("the target asked for a logout") }
        case ISCSIOpcode.reject:
            workload.fail("Reject, reason \(hex(bhs.byte(2)))")
            drop("rejected")
        default:
            workload.fail("unexpected opcode \(hex(bhs.opcode))")
            drop("protocol error")
        }
    }

    /// MaxCmdSN moves forward only, and only when consistent with ExpCmdSN (RFC 7143 §4.2.2.1).
    private func updateWindow(_ bhs: BHS) {
        let exp = bhs.u32(28), max = bhs.u32(32)
        if Serial.atLeast(max, exp &- 1) && Serial.greaterThan(max, maxCmdSN) { maxCmdSN = max }
        if Serial.lessThan(cmdSN, exp) {
            workload.fail("ExpCmdSN \(exp) is past the next CmdSN \(cmdSN)")
        }
    }

    private func checkStatSN(_ bhs: BHS) {
        let sn = bhs.u32(24)
        if sn != expStatSN { workload.fail("StatSN \(sn), expected \(expStatSN)") }
        expStatSN = sn &+ 1
    }

    private func describe(_ c: SimCommand) -> String {
        c.op == .flush ? "SYNCHRONIZE CACHE" : "\(c.op == .read ? "READ" : "WRITE") of \(c.blocks) block(s) at LBA \(c.lba)"
    }

    private func handleResponse(_ bhs: BHS, _ data: UnsafeRawPointer, _ length: Int) {
        guard let s = slot(forTag: UInt64(bhs.itt), "SCSI Response"), let c = slots[s] else { return }
        checkStatSN(bhs)
        let response = bhs.byte(2), status = bhs.byte(3)
        guard response == 0 else {
            end(s, .failed("\(describe(c)): iSCSI response \(hex(response))"))
            return
        }
        switch status {
        case SCSIStatus.good:
            finishGood(s, c, bhs)
        case SCSIStatus.checkCondition:
            workload.checkConditions += 1
            let (key, asc, ascq) = SimISCSIClient.sense(data, length)
            if key == SenseKey.unitAttention && transfers[s].unitAttentions < SimISCSIClient.maxUnitAttentionRetries {
                transfers[s].unitAttentions += 1
                reissue(s)
                return
            }
            end(s, .failed("\(describe(c)): CHECK CONDITION, sense key \(hex(key)) asc/ascq \(hex(asc))/\(hex(ascq))"))
        default:
            end(s, .failed("\(describe(c)): status \(hex(status))"))
        }
    }

    /// GOOD: a READ must have had all its data, and no command here expects a residual.
    private func finishGood(_ s: Int, _ c: SimCommand, _ bhs: BHS) {
        let bytes = c.op == .flush ? 0 : c.blocks * blockSize
        if c.op == .read && transfers[s].received != bytes {
            end(s, .failed("\(describe(c)): GOOD after \(transfers[s].received) of \(bytes) bytes"))
        } else if bhs.byte1 & 0x06 != 0 {
            end(s, .failed("\(describe(c)): GOOD with a residual of \(bhs.u32(44)) bytes (flags \(hex(bhs.byte1)))"))
        } else {
            end(s, .good)
        }
    }

    private func handleDataIn(_ bhs: BHS, _ data: UnsafeRawPointer, _ length: Int) {
        guard let s = slot(forTag: UInt64(bhs.itt), "Data-In"), let c = slots[s] else { return }
        var t = transfers[s]
        let offset = Int(bhs.bufferOffset), bytes = c.blocks * blockSize
        guard c.op == .read, bhs.dataSN == t.nextDataSN, offset == t.received, offset + length <= bytes else {
            end(s, .failed("\(describe(c)): Data-In DataSN \(bhs.dataSN) offset \(offset) length \(length); expected "
                           + "DataSN \(t.nextDataSN) at offset \(t.received) of \(bytes) bytes"))
            drop("protocol error")
            return
        }
        workload.check(c, offset: offset, count: length, from: data)
        t.received += length
        t.nextDataSN &+= 1
        dataInPDUs += 1
        transfers[s] = t
        guard bhs.byte1 & 0x01 != 0 else { return }
        checkStatSN(bhs)
        if bhs.byte(3) == SCSIStatus.good {
            finishGood(s, c, bhs)
        } else {
            end(s, .failed("\(describe(c)): status \(hex(bhs.byte(3))) in a Data-In"))
        }
    }

    private func handleR2T(_ bhs: BHS) {
        guard let s = slot(forTag: UInt64(bhs.itt), "R2T"), let c = slots[s] else { return }
        var t = transfers[s]
        let offset = Int(bhs.bufferOffset), length = Int(bhs.u32(44)), ttt = bhs.ttt, r2tSN = bhs.u32(36)
        guard c.op == .write, !t.r2tActive, length > 0, length <= maxBurstBytes, offset >= t.unsolicitedEnd,
              offset + length <= c.blocks * blockSize, ttt != reservedTag, r2tSN == t.nextR2TSN else {
            end(s, .failed("\(describe(c)): R2T #\(r2tSN) for \(length) bytes at \(offset), TTT \(hex(ttt)) "
                           + "(MaxBurstLength \(maxBurstBytes), R2T outstanding: \(t.r2tActive))"))
            drop("protocol error")
            return
        }
        t.r2tActive = true
        t.r2tTTT = ttt
        t.r2tNext = offset
        t.r2tEnd = offset + length
        t.r2tDataSN = 0
        t.nextR2TSN &+= 1
        transfers[s] = t
        r2ts += 1
    }

    private func handleNopIn(_ bhs: BHS) {
        if bhs.ttt != reservedTag {
            guard pendingPings < SimISCSIClient.maxPendingPings else {
                workload.fail("more than \(SimISCSIClient.maxPendingPings) NOP-In pings unanswered")
                return
            }
            pingTTTs[pendingPings] = bhs.ttt
            pingLUNs[pendingPings] = bhs.lunField
            pendingPings += 1
        } else if bhs.itt != reservedTag {
            workload.fail("NOP-In for ITT \(hex(bhs.itt)); this initiator sends no NOP-Out of its own")
        }
    }

    /// (key, ASC, ASCQ) from a SCSI Response's data segment: a 2-byte length, then fixed or descriptor sense.
    static func sense(_ data: UnsafeRawPointer, _ length: Int) -> (UInt8, UInt8, UInt8) {
        guard length >= 4 else { return (0, 0, 0) }
        let n = min(Int(be16(data, 0)), length - 2)
        let s = data + 2
        func at(_ i: Int) -> UInt8 { i < n ? s.load(fromByteOffset: i, as: UInt8.self) : 0 }
        let code = at(0) & 0x7F
        if code == 0x72 || code == 0x73 { return (at(1) & 0x0F, at(2), at(3)) }
        return (at(2) & 0x0F, at(12), at(13))
    }
}
