import Floor
import URing
import ISCSIWire
import Store
import SCSI
import ISCSI
import NBD
import CURing
import Glibc

/// Receive stages of an NBD connection. Each tracks how much it has in the connection's `stageHave`.
public enum NBDRxStage: UInt8 {
    /// The greeting is out; the client's 4 flag bytes come next.
    case clientFlags
    /// A 16-byte option header (IHAVEOPT, option, length).
    case optionHeader
    /// Option data into the control buffer.
    case optionData
    /// Option data too large to keep, read and dropped.
    case optionSkip
    /// A 28-byte request header.
    case request
    /// A write's payload, straight into the request's buffer slot.
    case payload
    /// The payload of a write that is refused (answered after it is read past).
    case payloadSkip
    /// NBD_CMD_DISC arrived: nothing more is read; the socket closes once every reply is out.
    case draining
}

public struct NBDConnectionState {
    var stage: NBDRxStage = .clientFlags
    var handshake = NBDHandshake()
    var option: UInt32 = 0
    var skipLeft = 0
    var skipCookie: UInt64 = 0
    var skipError: UInt32 = 0
    var payloadTask: Int32 = -1
    var payloadSinceTick: UInt64 = 0
    /// The export chosen in the handshake; the LUN is looked up by number in the connection's current target
    /// for every request, so a configuration change is seen at once.
    var lunNumber: UInt64 = 0
    var limits = NBDExportLimits(sizeBytes: 0, readOnly: true, maxPayloadBytes: 0, minimumBlockBytes: 1)
    var stalledOnSendQueue = false
    /// NBD_OPT_GO's answer, held while a closed connection's commands on the export still run (see
    /// `Runtime.exportMayStart`); retried from the loop (`Reactor.resumeParkedLogins`) within the login timeout.
    var parked: NBDHandshake.Step? = nil
    /// Per-task request state, set up when the transmission phase starts in `requestMemory` (the connection's
    /// region of the core's ConnectionMemory).
    var requests: UnsafeMutablePointer<NBDRequest>? = nil
    var requestCapacity = 0
    var requestMemory: UnsafeMutableRawPointer? = nil

    mutating func deinitializeRequests() {
        requests?.deinitialize(count: requestCapacity)
        requests = nil
    }
}

/// The NBD front end of a connection: handshake, then transmission requests carried out on the same store
/// path as SCSI commands (Reactor.submitStore), without SCSI in between.
extension Connection {

    // MARK: - Start

    /// Called once at accept: the server speaks first.
    func nbdStart() {
        nbd.stage = .clientFlags
        stage = .bhs
        stageHave = 0
        stageNeed = NBDWire.clientFlagsBytes
        nbdSendHandshake(NBDEncode.greeting(), closeAfter: false)
    }

    // MARK: - Receive

    /// A recv completed (through Connection.onRecv): `n` bytes landed in the payload's sink or were staged.
    func nbdReceived(_ n: Int) {
        if recvDirect {
            stageHave += n
            if stageHave == dataLength { nbdPayloadComplete() }
        } else {
            rxEnd += n
        }
        nbdParse()
        armNBDRecv()
    }

    /// Arms the next recv, straight into the payload's sink when enough of it is still to come.
    @inline(__always)
    private func armNBDRecv() {
        armRecv {
            guard self.stage == .data, let p = self.sinkPtr,
                  self.dataLength - self.stageHave >= Connection.directRecvMinBytes else { return nil }
            return (p + self.stageHave, self.dataLength - self.stageHave)
        }
    }

    func nbdParse() {
        while phase != .closing && !stalled {
            let avail = rxEnd - rxStart
            switch nbd.stage {
            case .clientFlags, .optionHeader, .request:
                if avail == 0 { return }
                let n = min(avail, stageNeed - stageHave)
                memcpy(hdr + stageHave, rx + rxStart, n)
                rxStart += n
                stageHave += n
                if stageHave < stageNeed { return }
                nbdHeaderDone()
            case .optionData, .payload:
                if stageHave < dataLength {
                    if avail == 0 { return }
                    let n = min(avail, dataLength - stageHave)
                    memcpy(sinkPtr! + stageHave, rx + rxStart, n)
                    rxStart += n
                    stageHave += n
                    if stageHave < dataLength { return }
                }
                if nbd.stage == .payload { nbdPayloadComplete() } else { nbdOptionComplete() }
            case .optionSkip, .payloadSkip:
                if nbd.skipLeft > 0 {
                    if avail == 0 { return }
                    let n = min(avail, nbd.skipLeft)
                    rxStart += n
                    nbd.skipLeft -= n
                    if nbd.skipLeft > 0 { return }
                }
                nbdSkipComplete()
            case .draining:
                // proto.md: the client sends nothing after NBD_CMD_DISC; whatever comes is ignored.
                rxStart = rxEnd
                return
            }
        }
    }

    private func nbdHeaderDone() {
        switch nbd.stage {
        case .clientFlags:
            let step = nbd.handshake.clientFlags(be32(hdr, 0))
            nbdApply(step)
            if phase == .closing { return }
            nbdExpectOption()
        case .optionHeader:
            guard be64(hdr, 0) == NBDWire.optionMagic else {
                reactor.closeConnection(self, reason: "bad NBD option magic")
                return
            }
            nbd.option = be32(hdr, 8)
            let length = Int(be32(hdr, 12))
            stageHave = 0
            if length > NBDHandshake.maxOptionDataBytes {
                nbd.stage = .optionSkip
                nbd.skipLeft = length
                return
            }
            if controlData.count < length { controlData = [UInt8](repeating: 0, count: length) }
            dataLength = length
            sinkPtr = controlData.withUnsafeMutableBytes { $0.baseAddress }
            nbd.stage = .optionData
        case .request:
            nbdRequestReady()
        default:
            break
        }
    }

    private func nbdExpectOption() {
        nbd.stage = .optionHeader
        stageHave = 0
        stageNeed = NBDWire.optionHeaderBytes
        sinkPtr = nil
    }

    private func nbdOptionComplete() {
        let data = Array(controlData[0..<dataLength])
        sinkPtr = nil
        let catalog = NBDExportCatalog(snapshot: reactor.snapshot, peerAddress: peer,
                                       maxPayloadBytes: reactor.config.slotBytes)
        let step = nbd.handshake.option(nbd.option, data: data, catalog: catalog)
        nbdApply(step)
        if phase == .login && nbd.stage != .draining { nbdExpectOption() }
    }

    private func nbdSkipComplete() {
        if nbd.stage == .optionSkip {
            nbdApply(nbd.handshake.oversizedOption(nbd.option))
            if phase == .login && nbd.stage != .draining { nbdExpectOption() }
            return
        }
        // A refused write: its payload is behind us, so the error can be answered.
        nbdQueueReply(error: nbd.skipError, cookie: nbd.skipCookie)
        nbdExpectRequest()
    }

    /// Carries out one handshake step.
    private func nbdApply(_ step: NBDHandshake.Step) {
        switch step.next {
        case .proceed:
            if !step.reply.isEmpty { nbdSendHandshake(step.reply, closeAfter: false) }
        case .close(let reason):
            if step.reply.isEmpty {
                reactor.closeConnection(self, reason: reason)
            } else {
                reactor.logger.debug("\(peer): \(reason)")
                nbdSendHandshake(step.reply, closeAfter: true)
                // Nothing more is read; the socket closes when the reply is out.
                nbd.stage = .draining
                stalled = true
            }
        case .transmission(let export):
            // A client that reconnects after losing its connection resends what it had in flight; the writes
            // of the dead connection must end before the new one's begin, or one could land after a newer
            // write (no NBD session identity says whose they were: any closed connection to the export counts).
            if nbd.parked == nil && !reactor.runtime.exportMayStart(tid: export.tid, lun: export.lunNumber) {
                nbd.parked = step
                reactor.parkedLogins += 1
                return
            }
            if !step.reply.isEmpty { nbdSendHandshake(step.reply, closeAfter: false) }
            if phase == .closing { return }
            nbdEnterTransmission(export)
        }
    }

    private func nbdEnterTransmission(_ export: NBDExport) {
        guard let t = reactor.snapshot.target(tid: export.tid) else {
            reactor.closeConnection(self, reason: "NBD export's target went away")
            return
        }
        target = t
        nbd.lunNumber = export.lunNumber
        nbd.limits = nbd.handshake.limits(for: export)
        if nbd.requests == nil {
            nbd.requests = nbd.requestMemory!.bindMemory(to: NBDRequest.self, capacity: taskCapacity)
            nbd.requests!.initialize(repeating: NBDRequest(), count: taskCapacity)
            nbd.requestCapacity = taskCapacity
        }
        phase = .fullFeature
        reactor.leftLogin(self)
        reactor.logger.debug("\(peer): NBD export \(export.name)")
        nbdExpectRequest()
    }

    private func nbdExpectRequest() {
        nbd.stage = .request
        stage = .bhs
        stageHave = 0
        stageNeed = NBDWire.requestBytes
        dataLength = 0
        sinkPtr = nil
    }

    /// Handshake bytes go out from the send queue's arena, or from a buffer slot when they do not fit
    /// (a long NBD_OPT_LIST). A client that does not read its option replies is cut off.
    private func nbdSendHandshake(_ bytes: [UInt8], closeAfter: Bool) {
        guard out.free >= 2 else {
            reactor.closeConnection(self, reason: "NBD client does not read its option replies")
            return
        }
        let n = bytes.count
        if n <= OutQueue.arenaEntryBytes {
            let i = out.nextIndex()
            bytes.withUnsafeBytes { _ = memcpy(out.header(i), $0.baseAddress!, n) }
            out.commitRaw(i, headerLength: n, data: nil, dataLength: 0, token: closeAfter ? .closeAfter : .none)
        } else {
            let slot = reactor.pool.take()
            guard slot >= 0, n <= reactor.config.slotBytes else {
                reactor.closeConnection(self, reason: "NBD option reply of \(n) bytes does not fit a buffer")
                if slot >= 0 { reactor.releaseSlot(slot) }
                return
            }
            let p = reactor.pool.data(slot)
            bytes.withUnsafeBytes { _ = memcpy(p, $0.baseAddress!, n) }
            var i = out.nextIndex()
            out.commitRaw(i, headerLength: 0, data: UnsafeRawPointer(p), dataLength: n, token: .freeSlot(Int32(slot)))
            if closeAfter {
                i = out.nextIndex()
                out.commitRaw(i, headerLength: 0, data: nil, dataLength: 0, token: .closeAfter)
            }
        }
        markDirty()
    }

    // MARK: - Transmission: requests

    /// The 28-byte request header is in `hdr`. Also re-run when a stall (no buffer slot, no task entry, no
    /// send-queue room) ends.
    private func nbdRequestReady() {
        let r = NBDRequestHeader(decoding: hdr)
        guard r.magic == NBDWire.requestMagic else {
            reactor.closeConnection(self, reason: "bad NBD request magic 0x\(String(r.magic, radix: 16))")
            return
        }
        if r.type == NBDWire.cmdDisc {
            nbd.stage = .draining
            stalled = true
            nbdCheckDrained()
            return
        }
        // Every task will need one reply record: a reply queued now must leave room for theirs.
        guard out.free > activeTasks + 1 else {
            stalled = true
            nbd.stalledOnSendQueue = true
            return
        }
        let lun = target?.lun(nbd.lunNumber)
        if let lun {
            // The LUN may have been replaced since the handshake: judge against the one that serves now.
            nbd.limits.sizeBytes = lun.byteCount
            nbd.limits.readOnly = lun.capabilities.readOnly
        }
        var check = nbd.limits.check(r)
        if check == .accept && lun == nil {
            check = r.type == NBDWire.cmdWrite && Int(r.length) > NBDWire.maxSkippedPayloadBytes
                ? .disconnect : .refuse(NBDWire.errIO)
        }
        switch check {
        case .disconnect:
            reactor.closeConnection(self, reason: "NBD write of \(r.length) bytes beyond every limit")
            return
        case .refuse(let e):
            if r.type == NBDWire.cmdWrite && r.length > 0 {
                nbd.stage = .payloadSkip
                nbd.skipLeft = Int(r.length)
                nbd.skipCookie = r.cookie
                nbd.skipError = e
                nbd.payloadSinceTick = reactor.tick
                return
            }
            nbdQueueReply(error: e, cookie: r.cookie)
            nbdExpectRequest()
            return
        case .accept:
            break
        }
        if freeTask < 0 && tasksInitialized == taskCapacity {
            // Every entry holds a slot, so this is the connection's share: wait for one of its own to come back.
            stalled = true
            stalledOnCap = true
            return
        }
        guard maySlot() else {
            stalled = true
            return
        }
        let t = takeTaskEntry()!
        takeSlot(t)
        tasks[t].state = .storeIO
        tasks[t].lun = lun
        nbd.requests![t] = NBDRequest(r, contexts: nbd.limits.metaContexts)
        // The LUN's statistics count NBD requests as `--op stat` counts SCSI commands (reads, writes, the rest).
        tasks[t].startNanos = monotonicNanos()
        if let lun {
            tasks[t].statistics = LUNStatisticsKey(lun)
            reactor.lunStatistics.started(tasks[t].statistics, read: r.type == NBDWire.cmdRead, write: r.type == NBDWire.cmdWrite,
                                          bytes: UInt64(r.length))
        }
        if r.type == NBDWire.cmdWrite && r.length > 0 {
            // The payload lands in the slot; a large one is received into it directly (Connection.armRecv).
            nbd.stage = .payload
            nbd.payloadTask = Int32(t)
            nbd.payloadSinceTick = reactor.tick
            stage = .data
            stageHave = 0
            dataLength = Int(r.length)
            sinkPtr = reactor.pool.data(Int(tasks[t].slot))
            return
        }
        nbdExpectRequest()
        nbdStart(t)
    }

    /// A write's payload is complete (parsed from the staging buffer or received directly).
    func nbdPayloadComplete() {
        let t = Int(nbd.payloadTask)
        nbd.payloadTask = -1
        nbdExpectRequest()
        nbdStart(t)
    }

    /// A stall ended (a buffer slot, a task entry or send-queue room came free).
    func nbdResume() {
        if nbd.stage == .draining { return }
        stalled = false
        nbd.stalledOnSendQueue = false
        if nbd.stage == .request && stageHave == NBDWire.requestBytes { nbdRequestReady() }
        if stalled || phase == .closing { return }
        nbdParse()
        armNBDRecv()
    }

    // MARK: - Transmission: store operations

    private func nbdStart(_ t: Int) {
        nbdRun(t, nbd.requests![t].start(capabilities: tasks[t].lun!.capabilities, slotBytes: reactor.config.slotBytes))
    }

    /// Carries out task `t`'s actions until a store operation is in flight or the request is answered.
    private func nbdRun(_ t: Int, _ first: NBDRequest.Action) {
        var action = first
        while true {
            let op: StoreOp
            switch action {
            case .reply(let error):
                nbdFinish(t, error: error)
                return
            case .submit(let next):
                op = next
            case .zeroSlotAndSubmit(let bytes, let next):
                memset(reactor.pool.data(Int(tasks[t].slot)), 0, bytes)
                op = next
            case .describeAndSubmit(let described, let next):
                nbdDescribe(t, described)
                op = next
            case .describeAndReply(let described):
                nbdDescribe(t, described)
                nbdFinish(t, error: 0, descriptors: (described.first.index + 1, (described.second?.index ?? -1) + 1))
                return
            }
            guard let result = reactor.submitStore(self, t, op, readGoesToWire: true) else { return }
            action = nbd.requests![t].storeDone(result, slotBytes: reactor.config.slotBytes)
        }
    }

    /// BLOCK_STATUS builds its reply in its slot, one region per selected context (chunk header, context ID,
    /// descriptors: `NBDMetaContexts.laneOffset`).
    private func nbdDescribe(_ t: Int, _ described: NBDBlockDescriptors) {
        let slot = UnsafeMutableRawPointer(reactor.pool.data(Int(tasks[t].slot)))
        let contexts = nbd.requests![t].contexts
        func put(_ lane: Int, _ d: NBDBlockDescriptor) {
            let p = slot + contexts.descriptorOffset(lane: lane, index: d.index, slotBytes: reactor.config.slotBytes)
            put32(p, 0, d.length)
            put32(p, 4, d.status)
        }
        put(0, described.first)
        if let second = described.second { put(1, second) }
    }

    /// A store operation of task `t` finished on the ring (or in a sheep reply).
    func nbdStoreDone(_ t: Int, _ result: StoreResult) {
        tasks[t].state = .storeIO
        nbdRun(t, nbd.requests![t].storeDone(result, slotBytes: reactor.config.slotBytes))
    }

    /// Queues the reply; a successful READ carries the slot's data, a BLOCK_STATUS the `descriptors` in its
    /// slot. The task (and its slot) is released when the reply is out. With structured replies, READ and
    /// BLOCK_STATUS answer in one chunk flagged DONE (so NBD_CMD_FLAG_DF always holds); other commands keep
    /// simple replies, which proto.md allows.
    private func nbdFinish(_ t: Int, error: UInt32, descriptors: (Int, Int) = (0, 0)) {
        let rq = nbd.requests![t]
        if tasks[t].statistics.slot >= 0 {
            reactor.lunStatistics.done(tasks[t].statistics, read: rq.command == NBDWire.cmdRead, write: rq.command == NBDWire.cmdWrite,
                                       bytes: error == 0 ? UInt64(rq.length) : 0, good: error == 0,
                                       nanos: monotonicNanos() &- tasks[t].startNanos)
        }
        tasks[t].state = .finishing
        let token = SendToken.taskDone(task: Int32(t))
        let slot = reactor.pool.data(Int(tasks[t].slot))
        // A null LUN's READ is answered from the pool's zero region (Reactor.submitStore).
        let readData = tasks[t].dataInFromZeros ? reactor.pool.zeros : UnsafeRawPointer(slot)
        let structured = nbd.limits.structuredReplies
            && (rq.command == NBDWire.cmdRead || rq.command == NBDWire.cmdBlockStatus)
        if !structured {
            if error == 0 && rq.command == NBDWire.cmdRead {
                nbdQueueReply(error: 0, cookie: rq.cookie, data: readData, dataLength: Int(rq.length),
                              token: token)
            } else {
                nbdQueueReply(error: error, cookie: rq.cookie, token: token)
            }
            return
        }
        precondition(out.free > 0, "NBD send queue overrun")
        let i = out.nextIndex()
        let h = out.header(i)
        let header = NBDWire.structuredReplyHeaderBytes
        let done = NBDWire.replyFlagDone
        if error != 0 {
            nbdStructuredReplyHeader(h, flags: done, type: NBDWire.replyTypeError, cookie: rq.cookie,
                                     length: UInt32(NBDWire.errorChunkPayloadBytes))
            put32(h, header, error)
            put16(h, header + 4, 0)
            out.commitRaw(i, headerLength: header + NBDWire.errorChunkPayloadBytes, data: nil, dataLength: 0, token: token)
        } else if rq.command == NBDWire.cmdBlockStatus {
            // One chunk per context; the second is moved down to follow the first, so the slot goes out whole.
            let base = UnsafeMutableRawPointer(slot)
            let lanes = rq.contexts.count
            var at = 0
            for lane in 0..<lanes {
                let n = lane == 0 ? descriptors.0 : descriptors.1
                let payload = NBDWire.blockStatusContextBytes + n * NBDWire.blockDescriptorBytes
                let from = rq.contexts.descriptorOffset(lane: lane, index: 0, slotBytes: reactor.config.slotBytes)
                let to = at + NBDMetaContexts.descriptorsStartBytes
                if from != to { memmove(base + to, base + from, n * NBDWire.blockDescriptorBytes) }
                nbdStructuredReplyHeader(base + at, flags: lane == lanes - 1 ? done : 0,
                                         type: NBDWire.replyTypeBlockStatus, cookie: rq.cookie, length: UInt32(payload))
                put32(base + at, header, rq.contexts.id(lane: lane))
                at += header + payload
            }
            out.commitRaw(i, headerLength: 0, data: UnsafeRawPointer(base), dataLength: at, token: token)
        } else if rq.length == 0 {
            nbdStructuredReplyHeader(h, flags: done, type: NBDWire.replyTypeNone, cookie: rq.cookie, length: 0)
            out.commitRaw(i, headerLength: header, data: nil, dataLength: 0, token: token)
        } else {
            nbdStructuredReplyHeader(h, flags: done, type: NBDWire.replyTypeOffsetData, cookie: rq.cookie,
                                     length: UInt32(NBDWire.offsetDataPrefixBytes) + rq.length)
            put64(h, header, rq.offset)
            out.commitRaw(i, headerLength: header + NBDWire.offsetDataPrefixBytes, data: readData,
                          dataLength: Int(rq.length), token: token)
        }
        markDirty()
    }

    /// One simple reply record: 16 bytes in the arena, then the data (if any) straight from its slot.
    @inline(__always)
    private func nbdQueueReply(error: UInt32, cookie: UInt64, data: UnsafeRawPointer? = nil, dataLength: Int = 0,
                               token: SendToken = .none) {
        // Room is guaranteed: a request is admitted only while the queue has room for every active task's reply.
        precondition(out.free > 0, "NBD send queue overrun")
        let i = out.nextIndex()
        nbdSimpleReply(out.header(i), error: error, cookie: cookie)
        out.commitRaw(i, headerLength: NBDWire.simpleReplyBytes, data: data, dataLength: dataLength, token: token)
        markDirty()
    }

    // MARK: - Send progress, disconnect, liveness

    /// A send completed (called from Connection.onSend after the records' tokens fired).
    func nbdSent() {
        if nbd.stage == .draining {
            nbdCheckDrained()
            if phase == .closing { return }
        } else if stalled && (nbd.stalledOnSendQueue || reactor.pool.freeCount > 0) {
            nbdResume()
            if phase == .closing { return }
        }
        if out.count > 0 { flush() }
    }

    /// After NBD_CMD_DISC: "handle all outstanding requests", then close.
    private func nbdCheckDrained() {
        if activeTasks == 0 && out.count == 0 && phase != .closing {
            reactor.closeConnection(self, reason: "NBD disconnect")
        }
    }

    /// An NBD_OPT_GO answer held back (nbd.parked) goes out once the export's closed connections are done.
    func nbdResumeParked() {
        guard let step = nbd.parked, phase == .login, case .transmission(let export) = step.next,
              reactor.runtime.exportMayStart(tid: export.tid, lun: export.lunNumber) else { return }
        nbd.parked = nil
        reactor.parkedLogins -= 1
        nbdApply(step)
    }

    /// Once a second from the reactor: a write payload that stops arriving must not pin its buffer slot.
    func nbdTick(_ tick: UInt64) {
        if (nbd.stage == .payload || nbd.stage == .payloadSkip)
            && tick &- nbd.payloadSinceTick > reactor.config.dataOutTimeoutSeconds {
            reactor.closeConnection(self, reason: "NBD write payload stalled")
        }
    }
}

extension OutQueue {
    /// A record that is not an iSCSI PDU (NBD): `headerLength` bytes of the arena entry (at most
    /// `arenaEntryBytes`), then optional data elsewhere; no digests, no padding.
    @inline(__always)
    mutating func commitRaw(_ i: Int, headerLength: Int, data: UnsafeRawPointer?, dataLength: Int, token: SendToken) {
        assert(headerLength <= OutQueue.arenaEntryBytes)
        records[i] = OutRecord(headerLength: Int32(headerLength), data: data, dataLength: Int32(dataLength),
                               trailerLength: 0, token: token)
        count += 1
    }
}
