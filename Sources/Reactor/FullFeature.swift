import Floor
import URing
import ISCSIWire
import Store
import SCSI
import ISCSI
import NBD
import CURing
import Glibc

/// Full-feature phase: SCSI commands, Data-Out, NOP, Text, task management and Logout (RFC 7143 §11).
extension Connection {

    // MARK: - Header dispatch: where does the data go?

    /// Places the data segment in the receiver. Returns false when the parser must stop here (stalled on a
    /// buffer slot, or the connection closed).
    func prepareSink(_ bhs: BHS) -> Bool {
        let op = bhs.opcode
        if phase == .login {
            guard op == ISCSIOpcode.loginRequest else {
                // Anything but Login before full feature phase is a protocol error (RFC 7143 §6.1).
                reactor.closeConnection(self, reason: "opcode 0x\(String(op, radix: 16)) during login")
                return false
            }
            return sinkToControl()
        }
        switch op {
        case ISCSIOpcode.scsiCommand:
            return prepareCommand(bhs)
        case ISCSIOpcode.dataOut:
            prepareDataOut(bhs)
            return true
        case ISCSIOpcode.nopOut, ISCSIOpcode.textRequest:
            return sinkToControl()
        default:
            receiver.place(into: nil)
            return true
        }
    }

    private func sinkToControl() -> Bool {
        let dataLength = receiver.dataLength
        if dataLength > Connection.maxControlDataBytes {
            reactor.closeConnection(self, reason: "control data segment too large")
            return false
        }
        if controlData.count < dataLength { controlData = [UInt8](repeating: 0, count: dataLength) }
        receiver.place(into: controlData.withUnsafeMutableBytes { $0.baseAddress })
        return true
    }

    /// Allocates a task (and, when it needs one now, its buffer slot) for a SCSI Command. Immediate data lands
    /// in the slot.
    private func prepareCommand(_ bhs: BHS) -> Bool {
        if isDiscovery {
            receiver.place(into: nil)
            return true   // rejected in dispatch
        }
        let dataLength = receiver.dataLength
        let needsSlot = bhs.immediate || dataLength > 0 || cmdSNWindow.isNext(bhs.cmdSN)
        if needsSlot {
            // Commands whose turn came earlier and wait for a slot go first; their wake-up restarts the parser.
            if !slotQueue.isEmpty || !maySlot() {
                stalled = true
                return false
            }
        }
        guard let t = takeTaskEntry() else {
            // More commands than MaxCmdSN allowed (or too many immediate ones): answered TASK SET FULL in dispatch.
            receiver.place(into: nil)
            return true
        }
        if needsSlot { takeSlot(t) }
        tasks[t].state = .arriving
        sinkTask = Int32(t)
        receiver.place(into: dataLength > 0 ? reactor.pool.data(Int(tasks[t].slot)) : nil)
        return true
    }

    /// Data-Out goes straight to its place in the task's buffer, if everything about it checks out.
    private func prepareDataOut(_ bhs: BHS) {
        let ttt = bhs.ttt
        let t = taskForTTT(ttt)
        guard t >= 0 else { receiver.place(into: nil); return }   // unknown TTT: rejected in dispatch
        let task = tasks + t
        guard task.pointee.itt == bhs.itt, task.pointee.state == .receivingData,
              let at = task.pointee.dataOut.placement(offset: Int(bhs.bufferOffset), length: receiver.dataLength)
        else { receiver.place(into: nil); return }
        sinkTask = Int32(t)
        receiver.place(into: reactor.pool.data(Int(task.pointee.slot)) + at)
    }

    /// TTT = task index | connection-local sequence << 16, so a Data-Out finds its task without a search. The
    /// sequence keeps 15 bits, so no TTT is the reserved 0xFFFFFFFF.
    static let tttTaskBits: UInt32 = 16
    static let tttSequenceMask: UInt32 = 0x7FFF

    @inline(__always)
    func taskForTTT(_ ttt: UInt32) -> Int {
        if ttt == reservedTag { return -1 }
        let t = Int(ttt & (1 << Connection.tttTaskBits - 1))
        guard t < tasksInitialized, tasks[t].state == .receivingData, tasks[t].dataOut.ttt == ttt else { return -1 }
        return t
    }

    /// Data that arrived for a PDU we then refused: give back what prepareSink took.
    func abandonSink() {
        if BHS(hdr).opcode == ISCSIOpcode.scsiCommand && sinkTask >= 0 {
            releaseTask(Int(sinkTask))
        }
        sinkTask = -1
    }

    /// A buffer slot or send-queue room became available: start the commands waiting for a slot, then re-run
    /// the header that stalled and keep parsing.
    func iscsiResume() {
        if !slotQueue.isEmpty {
            serveSlotQueue()
            if !slotQueue.isEmpty || phase == .closing { return }
        }
        guard stalled else { return }
        stalled = false
        headerReady()
        if stalled || phase == .closing { return }
        parse()
        armISCSIRecv()
    }

    // MARK: - PDU dispatch

    func dispatchPDU() {
        let bhs = BHS(hdr)
        if phase == .login {
            handleLogin(bhs)
            return
        }
        let expBefore = cmdSNWindow.expCmdSN
        defer {
            // Whatever took ExpCmdSN (a command, or a non-immediate NOP-Out, Text, Task Management or Logout)
            // may have filled a gap: the commands parked behind it run now, after it, as their CmdSNs say.
            if cmdSNWindow.expCmdSN != expBefore && orderWaiting > 0 && phase != .closing { releaseOrdered() }
        }
        switch bhs.opcode {
        case ISCSIOpcode.scsiCommand:
            counters.commandPDUs &+= 1
            handleCommand(bhs)
        case ISCSIOpcode.dataOut:
            counters.dataOutPDUs &+= 1
            handleDataOut(bhs)
        case ISCSIOpcode.nopOut: handleNopOut(bhs)
        case ISCSIOpcode.textRequest: handleText(bhs)
        case ISCSIOpcode.taskManagement: handleTaskManagement(bhs)
        case ISCSIOpcode.logoutRequest: handleLogout(bhs)
        case ISCSIOpcode.snack:
            // ErrorRecoveryLevel=0: SNACK is not supported (RFC 7143 §11.16).
            queueReject(reason: RejectReason.protocolError)
        case ISCSIOpcode.loginRequest:
            // A Login on a connection in full feature phase is a protocol error.
            queueReject(reason: RejectReason.protocolError)
        default:
            queueReject(reason: RejectReason.commandNotSupported)
        }
    }

    /// CmdSN acceptance for non-command PDUs (RFC 7143 §3.2.2.1): immediate PDUs do not advance ExpCmdSN.
    private func acceptCmdSN(_ bhs: BHS) {
        cmdSNWindow.receivedNonCommand(bhs.cmdSN, immediate: bhs.immediate)
    }

    // MARK: - SCSI Command

    private func handleCommand(_ bhs: BHS) {
        if isDiscovery {
            queueReject(reason: RejectReason.protocolError)
            return
        }
        let t = Int(sinkTask)
        sinkTask = -1
        let cmdSN = bhs.cmdSN
        let position = cmdSNWindow.position(of: cmdSN, immediate: bhs.immediate)
        if t < 0 {
            // No task entry: the initiator exceeded the window. Out-of-window non-immediate CmdSN is silently
            // dropped (§3.2.2.1); otherwise the task set is full.
            if position == .outside { return }
            cmdSNWindow.received(position)
            respondNoTask(bhs, status: SCSIStatus.taskSetFull)
            return
        }
        // Filled in place, never replaced: the entry may hold a buffer slot from prepareCommand, and only a
        // non-free state lets releaseTask (and teardown) give it back.
        let flags = bhs.byte1
        let task = tasks + t
        task.pointee.itt = bhs.itt
        task.pointee.cmdSN = cmdSN
        task.pointee.lunField = bhs.lunField
        task.pointee.lunNumber = decodeLUN(bhs.lunField)
        task.pointee.edtl = bhs.expectedDataTransferLength
        task.pointee.dataOut = DataOutSequencer(immediateBytes: receiver.dataLength)
        task.pointee.flags = flags
        let cdbLength = cdbBytes()
        task.pointee.cdbLength = cdbLength
        withUnsafeMutableBytes(of: &task.pointee.cdb) { d in _ = memcpy(d.baseAddress!, hdr + 32, min(cdbLength, 32)) }
        let arrival = CommandArrival(immediate: bhs.immediate, cmdSN: cmdSN, dataLength: receiver.dataLength,
                                     writeBit: flags & PDUFlags.write != 0, edtl: task.pointee.edtl, cdbLength: cdbLength)
        let mayParkData = parkedWithData < reactor.config.parkedDataCommandsPerConnection
            && reactor.parkedDataSlots < reactor.config.parkedDataSlotsPerCore
        switch arrival.verdict(position: position, immediateData: params.immediateData, firstBurst: params.firstBurst,
                               mayParkData: mayParkData) {
        case .drop:
            releaseTask(t)
        case .rejectExtendedCDB:
            queueReject(reason: RejectReason.outOfResources)
            releaseTask(t)
        case .rejectImmediateData:
            // Immediate data where none was negotiated or allowed: reject the command (RFC 7143 §10.3).
            queueReject(reason: RejectReason.protocolError)
            releaseTask(t)
            cmdSNWindow.received(position)
        case .run:
            assert(task.pointee.slot >= 0 && slotQueue.isEmpty)
            cmdSNWindow.received(position)
            startTask(t, cdb: UnsafeRawBufferPointer(start: hdr + 32, count: cdbLength))
        case .park:
            assert(task.pointee.slot < 0)
            task.pointee.state = .waitingOrder
            orderWaiting += 1
        case .parkWithData:
            task.pointee.state = .waitingOrder
            orderWaiting += 1
            parkedWithData += 1
            reactor.parkedDataSlots += 1
        case .refuseParkedData:
            respondNoTask(bhs, status: SCSIStatus.taskSetFull)
            keepOnlyCmdSN(t)
        }
    }

    /// Runs parked commands whose turn has come, in CmdSN order. One without a buffer slot takes one now; when
    /// the connection may take none, it and every one after it wait on the slot queue.
    private func releaseOrdered() {
        var progressed = true
        while progressed && orderWaiting > 0 && phase != .closing {
            progressed = false
            for t in 0..<tasksInitialized where cmdSNWindow.isNext(tasks[t].cmdSN)
                && (tasks[t].state == .waitingOrder || tasks[t].state == .orderMarker) {
                cmdSNWindow.advance()
                if tasks[t].state == .orderMarker {
                    releaseTask(t)
                } else {
                    leaveOrderWait(t)
                    if slotQueue.isEmpty && (tasks[t].slot >= 0 || maySlot()) {
                        if tasks[t].slot < 0 { takeSlot(t) }
                        startStored(t)
                    } else {
                        tasks[t].state = .waitingSlot
                        slotQueue.push(t, tasks)
                    }
                }
                progressed = true
                break
            }
        }
    }

    /// Starts the commands waiting for a buffer slot, in CmdSN order, as far as slots may be taken.
    private func serveSlotQueue() {
        while !slotQueue.isEmpty && phase != .closing {
            let t = Int(slotQueue.head)
            if tasks[t].slot < 0 {
                guard maySlot() else { return }
                takeSlot(t)
            }
            _ = slotQueue.pop(tasks)
            startStored(t)
        }
    }

    /// Bookkeeping of a task that leaves .waitingOrder or .orderMarker.
    private func leaveOrderWait(_ t: Int) {
        orderWaiting -= 1
        if tasks[t].state == .waitingOrder && tasks[t].slot >= 0 {
            parkedWithData -= 1
            reactor.parkedDataSlots -= 1
        }
        assert(orderWaiting >= 0 && parkedWithData >= 0 && reactor.parkedDataSlots >= 0)
    }

    /// A command refused or aborted before its turn keeps only its CmdSN (received, RFC 7143 §3.2.2.1), so
    /// ExpCmdSN passes it when the gap before it fills. Its slot goes back now.
    private func keepOnlyCmdSN(_ t: Int) {
        if tasks[t].state == .waitingOrder {
            if tasks[t].slot >= 0 {
                parkedWithData -= 1
                reactor.parkedDataSlots -= 1
            }
        } else {
            orderWaiting += 1
        }
        tasks[t].state = .orderMarker
        let slot = Int(tasks[t].slot)
        tasks[t].slot = -1
        if slot >= 0 { returnSlot(slot) }
    }

    private func respondNoTask(_ bhs: BHS, status: UInt8) {
        let itt = bhs.itt
        counters.responsePDUs &+= 1
        counters.errors &+= 1
        queueControl { h, _ in
            PDUBuild.scsiResponse(h, itt: itt, status: status, residual: .none, dataLength: 0)
            self.stamp(h, advance: true)
        }
    }

    private func startTask(_ t: Int, cdb: UnsafeRawBufferPointer) {
        guard let session = sessionBinding() else { releaseTask(t); return }
        let lun = session.target.lun(tasks[t].lunNumber)
        if tasks[t].holdsCompareAndWriteGate && tasks[t].lun !== lun {
            // The LUN was replaced while this COMPARE AND WRITE waited: the gate it holds is the old unit's.
            tasks[t].holdsCompareAndWriteGate = false
            tasks[t].lun?.leaveCompareAndWrite()
        }
        if cdb.count > 0 && cdb[0] == Opcode.compareAndWrite, let lun, !tasks[t].holdsCompareAndWriteGate {
            if !lun.tryEnterCompareAndWrite() {
                // Held while waiting: the gate retry asks this LUN, and the gate is released on it.
                tasks[t].lun = lun
                tasks[t].state = .waitingGate
                reactor.gateWaiters.append(GateWaiter(connection: Int32(index), generation: generation, task: Int32(t)))
                return
            }
            tasks[t].holdsCompareAndWriteGate = true
        }
        tasks[t].state = .storeIO
        let buffer = reactor.pool.buffer(Int(tasks[t].slot))
        let flags = tasks[t].flags
        countStart(t, lun: lun)
        let action = tasks[t].scsi.start(
            cdb: cdb,
            expectedLength: tasks[t].edtl, readBit: flags & PDUFlags.read != 0, writeBit: flags & PDUFlags.write != 0,
            lunNumber: tasks[t].lunNumber, lun: consume lun, session: consume session, buffer: buffer)
        drive(t, action)
    }

    /// Statistics of a command that starts: tgt counts it as a read or a write by its data direction (the
    /// header's R and W bits), with the length it expects.
    @inline(__always)
    private func countStart(_ t: Int, lun: LogicalUnit?) {
        tasks[t].startNanos = monotonicNanos()
        let flags = tasks[t].flags
        let write = flags & PDUFlags.write != 0, read = flags & PDUFlags.read != 0
        let bytes = UInt64(tasks[t].edtl)
        if write {
            counters.writeCommands &+= 1
            counters.writeBytes &+= bytes
        } else if read {
            counters.readCommands &+= 1
            counters.readBytes &+= bytes
        }
        guard let lun else { return }
        tasks[t].statistics = LUNStatisticsKey(lun)
        reactor.lunStatistics.started(tasks[t].statistics, read: read, write: write, bytes: bytes)
    }

    /// Statistics of a command whose status is ready: its latency, the bytes it moved, and whether it failed.
    @inline(__always)
    private func countDone(_ t: Int, status: UInt8, dataInLength: Int, residual: Residual) {
        let good = status == SCSIStatus.good
        if !good { counters.errors &+= 1 }
        let key = tasks[t].statistics
        guard key.slot >= 0 else { return }
        let flags = tasks[t].flags
        let write = flags & PDUFlags.write != 0, read = flags & PDUFlags.read != 0
        var bytes: UInt64
        if write {
            bytes = UInt64(tasks[t].edtl)
            if case .underflow(let n) = residual { bytes -= min(bytes, UInt64(n)) }
        } else {
            bytes = UInt64(tasks[t].dataIn.streamOffset) &+ UInt64(dataInLength)
        }
        let start = tasks[t].startNanos
        let nanos = start == 0 ? 0 : monotonicNanos() &- start
        reactor.lunStatistics.done(key, read: read, write: write, bytes: bytes, good: good, nanos: nanos)
    }

    /// The BHS's 16 CDB bytes, or those and the rest of the CDB from an extended CDB AHS when one comes first.
    func cdbBytes() -> Int {
        let ahsBytes = receiver.ahsBytes
        if ahsBytes >= ExtendedCDB.ahsHeaderBytes {
            let ahs = hdr + bhsBytes
            let extensionBytes = Int(be16(ahs, 0)) - ExtendedCDB.reservedBytes
            if ahs.load(fromByteOffset: ExtendedCDB.typeOffset, as: UInt8.self) == ExtendedCDB.ahsType
                && extensionBytes >= 0 && ExtendedCDB.ahsHeaderBytes + extensionBytes <= ahsBytes {
                // Move the extension so the CDB is contiguous: BHS bytes 32..47, then the AHS's CDB bytes.
                memmove(ahs, ahs + ExtendedCDB.ahsHeaderBytes, extensionBytes)
                return ExtendedCDB.bhsCDBBytes + extensionBytes
            }
        }
        return ExtendedCDB.bhsCDBBytes
    }

    // MARK: - Driving a SCSI task

    /// Carries out SCSI actions until the task waits on I/O, data or the network.
    func drive(_ t: Int, _ first: SCSIAction) {
        var action = first
        while true {
            if tasks[t].aborted && phase != .closing {
                // Aborted by task management: stop here, no response (RFC 7143 §11.5.1).
                releaseTask(t)
                return
            }
            switch action {
            case .store(let op):
                guard let result = reactor.submitStore(self, t, op,
                                                      readGoesToWire: tasks[t].scsi.phase == .readStore) else { return }
                action = tasks[t].scsi.storeCompleted(result, buffer: reactor.pool.buffer(Int(tasks[t].slot)))
            case .dataOut(let offset, let length):
                guard let next = beginDataOut(t, offset: offset, length: length) else { return }
                action = next
            case .dataIn(let length):
                tasks[t].dataIn.beginPiece(length: length)
                emitDataIn(t)
                return
            case .complete(let status, let dataInLength, let residual):
                complete(t, status: status, dataInLength: dataInLength, residual: residual)
                return
            case .startJob:
                guard let next = reactor.startSanitizeJob(self, t) else { return }
                action = next
            }
        }
    }

    /// A store operation of task `t` finished (through Connection.storeDone).
    func iscsiStoreDone(_ t: Int, _ result: StoreResult) {
        let buffer = reactor.pool.buffer(Int(tasks[t].slot))
        let next = tasks[t].scsi.storeCompleted(result, buffer: buffer)
        tasks[t].state = .storeIO
        drive(t, next)
    }

    // MARK: Data-Out and R2T

    /// Sets up the next chunk of the data-out stream. Returns the next action when the bytes are already
    /// here (immediate data), nil when it must wait for R2T-solicited Data-Out.
    private func beginDataOut(_ t: Int, offset: Int, length: Int) -> SCSIAction? {
        let start = tasks[t].dataOut.beginChunk(offset: offset, length: length)
        if start.moveImmediateBytes > 0 {
            let src = reactor.pool.data(Int(tasks[t].slot))
            memmove(src, src + offset, start.moveImmediateBytes)
        }
        if start.complete {
            let buffer = reactor.pool.buffer(Int(tasks[t].slot))
            return tasks[t].scsi.dataOutReceived(buffer: buffer)
        }
        requestBurst(t)
        return nil
    }

    /// Sends the R2T for the next burst of the current chunk, if a permit is free; else queues for one.
    func requestBurst(_ t: Int) {
        if !tasks[t].holdsPermit {
            if !reactor.takeR2TPermit() {
                tasks[t].dataOut.awaitPermit(tick: reactor.tick)
                tasks[t].state = .waitingPermit
                reactor.waitForPermit(connection: index, task: t)
                return
            }
            tasks[t].holdsPermit = true
        }
        reactor.tttSequence &+= 1
        let ttt = UInt32(t) | (UInt32(truncatingIfNeeded: reactor.tttSequence) & Connection.tttSequenceMask) << Connection.tttTaskBits
        let r2t = tasks[t].dataOut.issueR2T(ttt: ttt, maxBurstLength: params.maxBurst, tick: reactor.tick)
        tasks[t].state = .receivingData
        let itt = tasks[t].itt
        let lunField = tasks[t].lunField
        let queued = queueControl { h, _ in
            PDUBuild.r2t(h, itt: itt, ttt: ttt, lunField: lunField, r2tSN: r2t.r2tSN,
                         bufferOffset: UInt32(r2t.bufferOffset), desiredLength: UInt32(r2t.desiredLength))
            self.stamp(h, advance: false)
        }
        if !queued {
            // No room to send the R2T: close rather than hang (the send queue is bounded and this should not occur
            // with sendQueueRecords >= 2 * window).
            reactor.closeConnection(self, reason: "send queue full")
        }
    }

    /// A permit became free for this parked task.
    func permitGranted(_ t: Int) {
        guard tasks[t].state == .waitingPermit else { reactor.returnR2TPermit(); return }
        tasks[t].holdsPermit = true
        requestBurst(t)
    }

    private func handleDataOut(_ bhs: BHS) {
        let t = Int(sinkTask)
        sinkTask = -1
        // Unknown TTT/ITT, offset out of order or beyond the burst: Reject and discard (RFC 7143 §11.7). So is one
        // whose task timed out while its data arrived: the task no longer expects it.
        guard t >= 0, tasks[t].state == .receivingData else {
            queueReject(reason: RejectReason.invalidPDUField)
            return
        }
        switch tasks[t].dataOut.received(dataSN: bhs.dataSN, length: receiver.dataLength, final: bhs.final) {
        case .burstContinues:
            return
        case .wrongDataSN, .wrongFinalBit:
            // ERL 0 cannot recover a lost Data-Out or a broken burst: reject it; the command fails.
            queueReject(reason: RejectReason.protocolError)
            abortDataOut(t)
            return
        case .burstDone:
            requestBurst(t)
            return
        case .chunkDone:
            break
        }
        if tasks[t].holdsPermit {
            tasks[t].holdsPermit = false
            reactor.returnR2TPermit()
        }
        tasks[t].state = .storeIO
        let buffer = reactor.pool.buffer(Int(tasks[t].slot))
        drive(t, tasks[t].scsi.dataOutReceived(buffer: buffer))
    }

    /// A Data-Out sequence broke: finish the command with CHECK CONDITION (ABORTED COMMAND, DATA PHASE ERROR).
    /// The initiator did not send the Data-Out an R2T asked for within the limit: the command fails and its
    /// buffer returns to the pool (a session must not pin buffers by never sending data).
    func dataOutTimedOut(_ t: Int) {
        if tasks[t].state == .waitingPermit { reactor.cancelPermitWait(connection: index, task: t) }
        reactor.logger.warning("\(peer): no Data-Out for ITT 0x\(String(tasks[t].itt, radix: 16)) in \(reactor.config.dataOutTimeoutSeconds)s; failing the command")
        abortDataOut(t)
    }

    private func abortDataOut(_ t: Int) {
        if tasks[t].holdsPermit {
            tasks[t].holdsPermit = false
            reactor.returnR2TPermit()
        }
        tasks[t].dataOut.abandon()
        tasks[t].state = .storeIO
        completeWithSense(t, key: SenseKey.abortedCommand, .dataPhaseError)
    }

    // MARK: Data-In and status

    private func complete(_ t: Int, status: UInt8, dataInLength: Int, residual: Residual) {
        countDone(t, status: status, dataInLength: dataInLength, residual: residual)
        tasks[t].finalStatus = status
        tasks[t].finalResidual = residual
        let collapse = status == SCSIStatus.good && tasks[t].scsi.senseLength == 0 && tasks[t].transportSense == nil
        tasks[t].dataIn.beginFinalPiece(length: dataInLength, collapseStatus: collapse)
        emitDataIn(t)
    }

    /// Queues Data-In PDUs for the current piece as far as the send queue allows (DataInEmitter cuts them). The
    /// last PDU of the final piece carries the status when it is GOOD (phase collapse); otherwise a SCSI
    /// Response follows.
    func emitDataIn(_ t: Int) {
        let base = tasks[t].dataInFromZeros ? reactor.pool.zeros : UnsafeRawPointer(reactor.pool.data(Int(tasks[t].slot)))
        let maxSeg = params.maxSendDataSegment
        let maxBurst = params.maxBurst
        let itt = tasks[t].itt
        let lunField = tasks[t].lunField
        while !tasks[t].dataIn.pieceQueuedFully {
            if out.free < 2 {
                parkForOutSpace(t)
                return
            }
            let pdu = tasks[t].dataIn.next(maxSegmentBytes: maxSeg, maxBurstBytes: maxBurst)
            let token: SendToken
            if pdu.endsPiece && !tasks[t].dataIn.pieceFinal { token = .dataInSent(task: Int32(t)) }
            else if pdu.carriesStatus { token = .taskDone(task: Int32(t)) }
            else { token = .none }
            // Built in place (no closure): this is the hot path of every read.
            let i = out.nextIndex()
            let h = out.header(i)
            counters.dataInPDUs &+= 1
            PDUBuild.dataIn(h, itt: itt, lunField: lunField, dataSN: pdu.dataSN, bufferOffset: pdu.bufferOffset,
                            length: pdu.length, final: pdu.final,
                            status: pdu.carriesStatus ? tasks[t].finalStatus : nil, residual: tasks[t].finalResidual)
            stamp(h, advance: pdu.carriesStatus)
            out.commit(i, data: UnsafeRawPointer(base + pdu.pieceOffset), dataLength: pdu.length,
                       headerDigest: params.headerDigest, dataDigest: params.dataDigest, token: token)
            markDirty()
        }
        if !tasks[t].dataIn.pieceFinal {
            tasks[t].state = .sendingData
            if tasks[t].dataIn.pieceEmpty { dataInPieceSent(t) }
            return
        }
        tasks[t].state = .finishing
        if !tasks[t].dataIn.needsResponse { return }
        // Separate SCSI Response (no data, or CHECK CONDITION with sense).
        if out.free < 1 {
            parkForOutSpace(t)
            return
        }
        let transportSense = tasks[t].transportSense
        let senseLength = transportSense != nil ? SenseData.fixedLengthBytes : tasks[t].scsi.senseLength
        let status = tasks[t].finalStatus
        let residual = tasks[t].finalResidual
        let dataLen = senseLength > 0 ? senseLength + 2 : 0
        counters.responsePDUs &+= 1
        queueControl(dataLength: dataLen, token: .taskDone(task: Int32(t))) { h, d in
            PDUBuild.scsiResponse(h, itt: itt, status: status, residual: residual, dataLength: dataLen)
            if senseLength > 0 {
                put16(d, 0, UInt16(senseLength))
                if let transportSense {
                    transportSense.render(to: d + 2)
                } else {
                    self.tasks[t].scsi.copySense(to: d + 2)
                }
            }
            self.stamp(h, advance: true)
        }
    }

    private func parkForOutSpace(_ t: Int) {
        tasks[t].state = .waitingOutSpace
        outWaiters.push(t, tasks)
    }

    func resumeOutWaiters() {
        while !outWaiters.isEmpty && out.free >= 2 {
            let t = outWaiters.pop(tasks)
            emitDataIn(t)
            if tasks[t].state == .waitingOutSpace { return }   // parked again
        }
    }

    /// A non-final Data-In piece is on the wire: the buffer may be reused for the next piece.
    func dataInPieceSent(_ t: Int) {
        guard tasks[t].state == .sendingData else { return }
        tasks[t].state = .storeIO
        let buffer = reactor.pool.buffer(Int(tasks[t].slot))
        drive(t, tasks[t].scsi.dataInSent(buffer: buffer))
    }

    /// CHECK CONDITION produced by the transport itself (data-phase errors).
    func completeWithSense(_ t: Int, key: UInt8, _ asc: ASC) {
        tasks[t].transportSense = SenseData(key: key, asc: asc)
        complete(t, status: SCSIStatus.checkCondition, dataInLength: 0, residual: .none)
    }

    /// A COMPARE AND WRITE got its LUN's gate: run it now.
    func gateOpened(_ t: Int) {
        guard tasks[t].state == .waitingGate else { return }
        tasks[t].holdsCompareAndWriteGate = true
        startStored(t)
    }

    /// Starts a command that waited (for its turn, a slot or a gate) from the CDB kept in its task entry.
    private func startStored(_ t: Int) {
        tasks[t].state = .storeIO
        var cdb = tasks[t].cdb
        let n = tasks[t].cdbLength
        withUnsafeBytes(of: &cdb) { c in startTask(t, cdb: UnsafeRawBufferPointer(start: c.baseAddress, count: n)) }
    }

    /// Gives back the task entry and its buffer slot.
    func releaseTask(_ t: Int) {
        guard tasks[t].state != .free else {
            // A free entry is skipped by teardown too: a slot it still held would be lost until restart.
            assert(tasks[t].slot < 0, "free task entry \(t) holds buffer slot \(tasks[t].slot)")
            return
        }
        if tasks[t].holdsCompareAndWriteGate {
            tasks[t].holdsCompareAndWriteGate = false
            tasks[t].lun?.leaveCompareAndWrite()
        }
        if tasks[t].holdsPermit {
            tasks[t].holdsPermit = false
            reactor.returnR2TPermit()
        }
        switch tasks[t].state {
        case .waitingOrder, .orderMarker: leaveOrderWait(t)
        case .waitingSlot: slotQueue.remove(t, tasks)
        case .waitingOutSpace: outWaiters.remove(t, tasks)
        default: break
        }
        let slot = Int(tasks[t].slot)
        tasks[t].slot = -1
        tasks[t].state = .free
        tasks[t].dataOut.abandon()
        // After the gate above, which still used the LUN: this may be the last reference to a deleted LUN, and
        // its store closes now rather than when the entry is next used.
        tasks[t].scsi.endCommand()
        tasks[t].nextFree = freeTask
        freeTask = Int32(t)
        activeTasks -= 1
        // Last: giving the slot back may run other parsers, which must find this entry consistent.
        if slot >= 0 { returnSlot(slot) }
        assert(activeTasks >= 0 && slotsHeld >= 0, "task \(activeTasks) / slot \(slotsHeld) counts below zero")
    }

    // MARK: - NOP

    private func handleNopOut(_ bhs: BHS) {
        acceptCmdSN(bhs)
        let ttt = bhs.ttt
        if ttt != reservedTag {
            // The answer to our NOP-In ping: nothing to send.
            return
        }
        let itt = bhs.itt
        if itt == reservedTag { return }   // a one-way ping from the initiator: no answer (RFC 7143 §11.18)
        let lunField = bhs.lunField
        let n = receiver.dataLength
        if n <= OutQueue.inlineDataBytes {
            let src = controlData
            queueControl(dataLength: n) { h, d in
                PDUBuild.nopIn(h, itt: itt, ttt: reservedTag, lunField: lunField, dataLength: n)
                src.withUnsafeBytes { s in if n > 0 { memcpy(d, s.baseAddress!, n) } }
                self.stamp(h, advance: true)
            }
        } else {
            // Echo larger ping data from a buffer slot (the control buffer may be overwritten by the next PDU).
            let queued = controlData.withUnsafeBytes { s in
                queueFromBorrowedSlot(UnsafeRawBufferPointer(rebasing: s[0..<n])) { h in
                    PDUBuild.nopIn(h, itt: itt, ttt: reservedTag, lunField: lunField, dataLength: n)
                    self.stamp(h, advance: true)
                }
            }
            if !queued { queueReject(reason: RejectReason.outOfResources) }
        }
    }

    /// Pings an idle initiator (NOP-In with a TTT it must answer).
    func sendPing(ttt: UInt32) {
        queueControl { h, _ in
            PDUBuild.nopIn(h, itt: reservedTag, ttt: ttt, lunField: 0, dataLength: 0)
            self.stamp(h, advance: false)
        }
    }

    /// The once-a-second checks of an iSCSI connection (through Connection.ticked): Data-Out that stopped
    /// coming, a CmdSN gap that never filled, and the NOP-In ping.
    func iscsiTick(_ tick: UInt64, limits: LivenessLimits) {
        guard phase == .fullFeature else { return }
        if activeTasks > 0 {
            for t in 0..<tasksInitialized {
                let s = tasks[t].state
                if (s == .receivingData || s == .waitingPermit)
                    && liveness.dataOutExpired(tasks[t].dataOut, tick: tick, limits: limits) {
                    dataOutTimedOut(t)
                }
            }
            guard phase == .fullFeature else { return }
        }
        if cmdSNGap.expired(waiting: orderWaiting, expCmdSN: cmdSNWindow.expCmdSN, tick: tick,
                            limitSeconds: reactor.config.cmdSNGapTimeoutSeconds) {
            reactor.logger.warning("\(peer): CmdSN gap: CmdSN \(cmdSNWindow.expCmdSN) missing for more than \(reactor.config.cmdSNGapTimeoutSeconds)s with \(orderWaiting) command(s) waiting behind it; closing the session")
            reactor.closeConnection(self, reason: "CmdSN gap")
            return
        }
        switch liveness.pingCheck(tick: tick, limits: limits, canSend: out.free > 0) {
        case .idle: break
        case .send(let ttt): sendPing(ttt: ttt)
        case .close(let failure): reactor.closeConnection(self, reason: failure.reason)
        }
    }

    // MARK: - Text

    private func handleText(_ bhs: BHS) {
        acceptCmdSN(bhs)
        let itt = bhs.itt
        let req = TextRequest(isFinal: bhs.final, continueFlag: bhs.byte1 & PDUFlags.continue != 0, itt: itt, ttt: bhs.ttt)
        let env = TextEnvironment(maxSendDataSegmentLength: params.maxSendDataSegment,
                                  sessionType: isDiscovery ? .discovery : .normal,
                                  sendTargets: { [unowned self] value in self.reactor.sendTargetsListing(for: self, request: value) })
        let n = receiver.dataLength
        let outcome = controlData.withUnsafeBytes { raw in
            text.receive(req, data: UnsafeRawBufferPointer(rebasing: raw[0..<n]), env: env)
        }
        switch outcome {
        case .reject(let reason):
            queueReject(reason: reason)
        case .respond(let r):
            sendText(itt: r.itt, ttt: r.ttt, final: r.isFinal, cont: r.continueFlag, data: r.text)
        }
    }

    private func sendText(itt: UInt32, ttt: UInt32, final: Bool, cont: Bool, data: [UInt8]) {
        let n = data.count
        if n <= OutQueue.inlineDataBytes {
            queueControl(dataLength: n) { h, d in
                PDUBuild.textResponse(h, itt: itt, ttt: ttt, final: final, cont: cont, lunField: 0, dataLength: n)
                data.withUnsafeBytes { s in if n > 0 { memcpy(d, s.baseAddress!, n) } }
                self.stamp(h, advance: true)
            }
            return
        }
        let queued = data.withUnsafeBytes { s in
            queueFromBorrowedSlot(s) { h in
                PDUBuild.textResponse(h, itt: itt, ttt: ttt, final: final, cont: cont, lunField: 0, dataLength: n)
                self.stamp(h, advance: true)
            }
        }
        if !queued { queueReject(reason: RejectReason.outOfResources) }
    }

    // MARK: - Task management (RFC 7143 §11.5)

    private func handleTaskManagement(_ bhs: BHS) {
        acceptCmdSN(bhs)
        let itt = bhs.itt
        let lunNumber = decodeLUN(bhs.lunField)
        let plan = TaskManagement.plan(function: bhs.byte1 & TMFunction.mask, referencedTask: bhs.u32(20),
                                       lunNumber: lunNumber, lunExists: target?.lun(lunNumber) != nil,
                                       sessionBound: target != nil && nexus != nil)
        var response = plan.response
        if plan.scope != .none {
            var found = false
            for t in 0..<tasksInitialized
            where TaskManagement.reaches(plan.scope, state: tasks[t].state, itt: tasks[t].itt, lunNumber: tasks[t].lunNumber) {
                found = true
                abortTask(t)
            }
            if !found, case .task = plan.scope {
                response = TaskManagement.responseForMissingTask(refCmdSN: bhs.u32(32), requestCmdSN: bhs.cmdSN,
                                                                 window: &cmdSNWindow)
            }
        }
        // On a multipath sheep LU the reset goes into the record the gateways share, and the response waits
        // for it: once the initiator has it, every gateway raises the reset's unit attention.
        let holder = heldResponses.count < SharedStateLimits.heldResponsesMax ? self : nil
        var awaited = 0
        switch plan.reset {
        case .none: break
        case .logicalUnit(let n):
            if let nexus, let lun = target?.lun(n) {
                SCSITask.logicalUnitReset(lun, by: nexus)
                if reactor.shareChange(lun, .reset, holding: holder) { awaited += 1 }
            }
        case .target:
            if let target, let nexus {
                SCSITask.targetReset(target, by: nexus)
                for lun in target.luns where reactor.shareChange(lun, .reset, holding: holder) { awaited += 1 }
            }
        }
        respond(HeldResponse(itt: itt, kind: .taskManagement(response: response, closesSession: plan.closesSession)),
                after: awaited)
    }

    /// Sends `r` now, or once `awaited` more shared state changes are in sheep.
    private func respond(_ r: HeldResponse, after awaited: Int) {
        if awaited == 0 { send(r); return }
        sharedChangesAwaited += awaited
        heldResponses.append(r)
    }

    /// A shared state change this connection waited for is in sheep (or could not get there, which the home
    /// core logged): once none is awaited, the held responses go, oldest first.
    func sharedChangeAnswered() {
        sharedChangesAwaited -= 1
        guard sharedChangesAwaited <= 0 else { return }
        sharedChangesAwaited = 0
        let held = heldResponses
        heldResponses.removeAll()
        for r in held { send(r) }
    }

    private func send(_ r: HeldResponse) {
        let itt = r.itt
        switch r.kind {
        case .taskManagement(let response, let closes):
            queueControl(token: closes ? .closeAfter : .none) { h, _ in
                PDUBuild.taskManagementResponse(h, itt: itt, response: response)
                self.stamp(h, advance: true)
            }
        case .logout(let response, let t2w, let t2r):
            queueControl(token: response == LogoutResponse.closedSuccessfully ? .closeAfter : .none) { h, _ in
                PDUBuild.logoutResponse(h, itt: itt, response: response, time2Wait: t2w, time2Retain: t2r)
                self.stamp(h, advance: true)
            }
        }
    }

    /// Stops a task: parked ones are released at once; ones with I/O in flight are released when it returns.
    private func abortTask(_ t: Int) {
        let effect = TaskManagement.abortEffect(of: tasks[t].state)
        if effect == .none { return }
        counters.aborts &+= 1
        if let lun = tasks[t].lun ?? target?.lun(tasks[t].lunNumber) { reactor.lunStatistics.aborted(LUNStatisticsKey(lun)) }
        switch effect {
        case .none:
            return
        case .keepOnlyCmdSN:
            keepOnlyCmdSN(t)
        case .releaseNow(let leavePermitQueue):
            if leavePermitQueue { reactor.cancelPermitWait(connection: index, task: t) }
            releaseTask(t)
        case .releaseWhenIOEnds:
            // Its buffer is in use by the ring or the socket; drive() releases it when that ends.
            tasks[t].aborted = true
            reactor.cancelStore(self, t)
        }
    }

    // MARK: - Logout (RFC 7143 §11.14)

    private func handleLogout(_ bhs: BHS) {
        acceptCmdSN(bhs)
        let reason = bhs.byte1 & LogoutReason.mask
        let itt = bhs.itt
        // Close session and close connection both end this (single-connection) session; remove connection for
        // recovery needs ErrorRecoveryLevel 2.
        let response = reason == LogoutReason.removeConnectionForRecovery
            ? LogoutResponse.recoveryNotSupported : LogoutResponse.closedSuccessfully
        let t2w = params.defaultTime2Wait
        let t2r = params.defaultTime2Retain
        let closes = response == LogoutResponse.closedSuccessfully
        if closes { phase = .loggingOut }
        // SPC-2 reservations of the session end with it. On a multipath sheep LU the release goes into the
        // shared record before the response, so that once the initiator has it no gateway refuses the others.
        var awaited = 0
        if closes, let nexus, let target, heldResponses.count < SharedStateLimits.heldResponsesMax {
            for lun in target.luns where reactor.sharesState(lun) && lun.state.releaseSPC2(heldBy: nexus.id) {
                if reactor.shareChange(lun, .releaseSPC2(PortIdentity(nexus)), holding: self) { awaited += 1 }
            }
        }
        respond(HeldResponse(itt: itt, kind: .logout(response: response, time2Wait: t2w, time2Retain: t2r)), after: awaited)
    }
}
