// One worker thread: one ring, a set of sessions, a closed loop of I/Os. Each completion batch is taken as
// far as it goes (parse PDUs, complete commands, issue their successors, queue PDUs) before one
// io_uring_enter submits every send and receive and waits for the next batch.
import CURing
import Glibc
import Histogram
import Target

/// What the run asks of every worker.
struct RunConfig {
    var readPercent = 100
    var random = true
    var ioBytes = 4096
    var lunBlockBytes = 512
    /// I/O units in the region the run touches (region bytes / ioBytes).
    var regionUnits = 0
    var totalSessions = 1
    var verify = false
    var measureStartNanos: UInt64 = 0
    var measureEndNanos: UInt64 = .max
    /// Count mode: the run ends when every session has issued its quota; the clock only bounds it.
    var countMode = false
    /// Busy-poll the ring (never sleep in the kernel).
    var poll = false
    var hardDeadlineNanos: UInt64 = .max
    var seed: UInt64 = 0x1234_5678
}

/// Bounds of the worker loop.
enum WorkerLimits {
    /// Longest wait in the kernel before the loop looks at the clock again.
    static let waitSliceNanos: Int64 = 10_000_000
    /// After the run ends, commands still in flight get this long to finish.
    static let drainNanos: UInt64 = 5_000_000_000
    static let submissionEntries: UInt32 = 1024
    /// Error messages kept per worker (the counts are always complete).
    static let keptMessages = 8
    /// Latency histogram range: 1 ns to 60 s at 3 significant digits.
    static let histogramMaxNanos: UInt64 = 60_000_000_000
}

/// Counters a worker hands back.
struct WorkerStats {
    var reads = 0
    var writes = 0
    var readBytes = 0
    var writeBytes = 0
    var errors = 0
    var verifyFailures = 0
    var verifiedReads = 0
    var unverifiedReads = 0
    var nopPingsAnswered = 0
    var messages: [String] = []
}

enum UserDataKind: UInt64 {
    case recv = 1
    case send = 2
}

@inline(__always) func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

struct Worker: ~Copyable {
    let ring: Ring
    let sessions: UnsafeMutablePointer<SessionState>
    let sessionCount: Int
    let config: RunConfig
    let histogram: UnsafeMutablePointer<Histogram<UInt64>>
    var stats = WorkerStats()
    var rng: UInt64
    var inFlightTotal = 0
    var stopping = false
    var drainDeadlineNanos: UInt64 = .max
    /// Sessions still connected (kept as a count: the loop must not scan a thousand idle sessions per turn).
    var liveCount: Int
    /// When the last command of the run completed (count mode measures up to here).
    var lastCompletionNanos: UInt64 = 0

    init(sessions: UnsafeMutablePointer<SessionState>, count: Int, config: RunConfig, threadIndex: Int) throws {
        ring = try Ring(entries: WorkerLimits.submissionEntries)
        self.sessions = sessions
        sessionCount = count
        liveCount = count
        self.config = config
        histogram = .allocate(capacity: 1)
        histogram.initialize(to: Histogram<UInt64>(lowestDiscernibleValue: 1,
                                                   highestTrackableValue: WorkerLimits.histogramMaxNanos,
                                                   numberOfSignificantValueDigits: .three))
        rng = config.seed ^ (UInt64(threadIndex + 1) &* 0x9E37_79B9_7F4A_7C15)
        if rng == 0 { rng = 1 }
    }

    deinit {
        histogram.deinitialize(count: 1)
        histogram.deallocate()
    }

    // MARK: - Loop

    mutating func run() {
        let now = monotonicNanos()
        for i in 0..<sessionCount {
            let s = sessions + i
            postRecv(s, index: i)
            issue(s, now: now)
            flush(s, index: i)
        }
        while true {
            let t = monotonicNanos()
            if !stopping && !config.countMode && t >= config.measureEndNanos { beginStopping() }
            if !stopping && t >= config.hardDeadlineNanos { beginStopping() }
            if stopping && inFlightTotal == 0 { break }
            if stopping && t >= drainDeadlineNanos {
                note("\(inFlightTotal) command(s) still in flight \(WorkerLimits.drainNanos / 1_000_000_000) s after the run ended")
                stats.errors += inFlightTotal
                break
            }
            if !stopping && config.countMode && allQuotasDone() { beginStopping(); continue }
            if liveCount == 0 { break }
            if config.poll { _ = ring.submitAndPoll() } else { _ = ring.submitAndWait(timeoutNanos: WorkerLimits.waitSliceNanos) }
            while true {
                let n = ring.peekBatch()
                if n == 0 { break }
                for k in 0..<n {
                    let c = ring.cqe(k)
                    dispatch(c.pointee.user_data, c.pointee.res)
                }
                ring.advance(n)
            }
        }
    }

    mutating func beginStopping() {
        stopping = true
        drainDeadlineNanos = monotonicNanos() &+ WorkerLimits.drainNanos
        for i in 0..<sessionCount { sessions[i].draining = true }
    }

    func allQuotasDone() -> Bool {
        // Idle sessions (queue depth 0) have no quota.
        for i in 0..<sessionCount where sessions[i].alive && sessions[i].queueDepth > 0 && sessions[i].issued < sessions[i].quota {
            return false
        }
        return true
    }


    @inline(__always)
    mutating func dispatch(_ userData: UInt64, _ res: Int32) {
        let index = Int(truncatingIfNeeded: userData & 0xFFFF_FFFF)
        guard index < sessionCount else { return }
        let s = sessions + index
        switch UserDataKind(rawValue: userData >> 32) {
        case .recv: onRecv(s, index: index, res: res)
        case .send: onSend(s, index: index, res: res)
        case nil: break
        }
    }

    // MARK: - Receive

    @inline(__always)
    func postRecv(_ s: UnsafeMutablePointer<SessionState>, index: Int) {
        guard s.pointee.alive, let rx = s.pointee.rx else { return }
        let sqe = ring.sqe()
        io_uring_prep_recv(sqe, s.pointee.fd, rx + s.pointee.rxTail, s.pointee.rxCapacity - s.pointee.rxTail, 0)
        sqe.pointee.user_data = UserDataKind.recv.rawValue << 32 | UInt64(index)
    }

    mutating func onRecv(_ s: UnsafeMutablePointer<SessionState>, index: Int, res: Int32) {
        guard s.pointee.alive else { return }
        if res <= 0 {
            if res == -EINTR || res == -EAGAIN { postRecv(s, index: index); return }
            fail(s, res == 0 ? "target closed the connection" : "recv: \(String(cString: strerror(-res)))")
            return
        }
        s.pointee.rxTail += Int(res)
        let now = monotonicNanos()
        guard let rx = s.pointee.rx else { return }
        let hd = s.pointee.headerDigest
        let dd = s.pointee.dataDigest
        while s.pointee.alive {
            let avail = s.pointee.rxTail - s.pointee.rxHead
            if avail < bhsBytes { break }
            let h = rx + s.pointee.rxHead
            let ahs = BHS(h).ahsBytes
            let dsl = BHS(h).dataSegmentLength
            let headerTotal = bhsBytes + ahs + (hd ? Framing.digestBytes : 0)
            let dataTotal = dsl > 0 ? Framing.padded(dsl) + (dd ? Framing.digestBytes : 0) : 0
            let total = headerTotal + dataTotal
            if total > s.pointee.maxPDUBytes {
                fail(s, "target sent a PDU of \(total) bytes (opcode \(hex(BHS(h).opcode))), beyond what we negotiated")
                return
            }
            if avail < total { break }
            if hd {
                let want = CRC32C.checksum(UnsafeRawPointer(h), count: bhsBytes + ahs)
                let got = UInt32(littleEndian: h.loadUnaligned(fromByteOffset: bhsBytes + ahs, as: UInt32.self))
                if want != got { fail(s, "header digest mismatch"); return }
            }
            let data = h + headerTotal
            if dd && dsl > 0 {
                let want = CRC32C.checksum(UnsafeRawPointer(data), count: Framing.padded(dsl))
                let got = UInt32(littleEndian: data.loadUnaligned(fromByteOffset: Framing.padded(dsl), as: UInt32.self))
                if want != got { fail(s, "data digest mismatch"); return }
            }
            s.pointee.rxHead += total
            handlePDU(s, h, data: data, dataLength: dsl, now: now)
        }
        guard s.pointee.alive else { return }
        let left = s.pointee.rxTail - s.pointee.rxHead
        if left == 0 {
            s.pointee.rxHead = 0
            s.pointee.rxTail = 0
        } else if s.pointee.rxCapacity - s.pointee.rxTail < s.pointee.maxPDUBytes {
            // Only a partial PDU is left: move it to the front so the next PDU always fits.
            memmove(rx, rx + s.pointee.rxHead, left)
            s.pointee.rxHead = 0
            s.pointee.rxTail = left
        }
        postRecv(s, index: index)
        flush(s, index: index)
    }

    /// Every target PDU that has them carries ExpCmdSN and MaxCmdSN (RFC 7143 §11).
    @inline(__always)
    func updateWindow(_ s: UnsafeMutablePointer<SessionState>, _ h: UnsafeRawPointer) {
        let exp = BHS(h).expCmdSN
        let maxSN = BHS(h).maxCmdSN
        // §4.2.2.1: MaxCmdSN is only valid if MaxCmdSN - ExpCmdSN >= -1 (serial), and never moves back.
        if Serial.atLeast(maxSN, exp &- 1) && Serial.greaterThan(maxSN, s.pointee.maxCmdSN) {
            s.pointee.maxCmdSN = maxSN
        }
    }

    @inline(__always)
    func task(_ s: UnsafeMutablePointer<SessionState>, itt: UInt32) -> UnsafeMutablePointer<IOTask>? {
        let index = Int(itt & 0xFFFF)
        guard index < s.pointee.queueDepth, let tasks = s.pointee.tasks else { return nil }
        let t = tasks + index
        guard t.pointee.active, t.pointee.generation == UInt16(truncatingIfNeeded: itt >> 16) else { return nil }
        return t
    }

    mutating func handlePDU(_ s: UnsafeMutablePointer<SessionState>, _ h: UnsafeMutableRawPointer,
                            data: UnsafeMutableRawPointer, dataLength: Int, now: UInt64) {
        let bhs = BHS(h)
        let op = bhs.opcode
        switch op {
        case ISCSIOpcode.dataIn:
            updateWindow(s, h)
            guard let t = task(s, itt: bhs.itt), !t.pointee.write else {
                fail(s, "Data-In for an unknown task \(hex(bhs.itt))"); return
            }
            let offset = Int(bhs.bufferOffset)
            if offset &+ dataLength > config.ioBytes || offset != t.pointee.receivedBytes {
                fail(s, "Data-In at offset \(offset) length \(dataLength) for a \(config.ioBytes)-byte read"); return
            }
            if config.verify && dataLength > 0 { verifyRead(s, t, data: data, offset: offset, length: dataLength) }
            t.pointee.receivedBytes += dataLength
            if bhs.hasStatus {
                // Status collapsed into the last Data-In (phase collapse, §11.7.4).
                s.pointee.expStatSN = bhs.statSN &+ 1
                let status = bhs.status
                let residual = bhs.hasResidual
                let ok = status == 0 && !residual && t.pointee.receivedBytes == config.ioBytes
                if !ok {
                    note("read LBA \(t.pointee.lba): status \(hex(status))\(residual ? " with a residual" : "") after \(t.pointee.receivedBytes) bytes")
                }
                complete(s, t, ok: ok, now: now)
            }
        case ISCSIOpcode.scsiResponse:
            updateWindow(s, h)
            guard let t = task(s, itt: bhs.itt) else {
                fail(s, "SCSI Response for an unknown task \(hex(bhs.itt))"); return
            }
            s.pointee.expStatSN = bhs.statSN &+ 1
            let response = bhs.response
            let status = bhs.status
            var ok = response == 0 && status == 0 && !bhs.hasResidual
            if !t.pointee.write && t.pointee.receivedBytes != config.ioBytes { ok = false }
            if !ok {
                var sense: [UInt8] = []
                if dataLength >= 2 {
                    let n = min(Int(be16(data, 0)), dataLength - 2)
                    sense = Array(UnsafeRawBufferPointer(start: data + 2, count: max(0, n)))
                }
                note("\(t.pointee.write ? "write" : "read") LBA \(t.pointee.lba): response \(hex(response)) status \(hex(status)) \(describeSense(sense))")
            }
            complete(s, t, ok: ok, now: now)
        case ISCSIOpcode.r2t:
            updateWindow(s, h)
            guard let t = task(s, itt: bhs.itt), t.pointee.write else {
                fail(s, "R2T for an unknown task \(hex(bhs.itt))"); return
            }
            let ttt = bhs.ttt
            let offset = Int(bhs.bufferOffset)
            let length = Int(bhs.desiredDataTransferLength)
            guard length > 0, offset &+ length <= config.ioBytes else {
                fail(s, "R2T for offset \(offset) length \(length) of a \(config.ioBytes)-byte write"); return
            }
            queueDataOut(s, t, ttt: ttt, offset: offset, end: offset + length)
        case ISCSIOpcode.nopIn:
            updateWindow(s, h)
            let ttt = bhs.ttt
            if ttt != reservedTag {
                // A ping from the target: answer with the same TTT, LUN and data (§11.19).
                let n = min(dataLength, SessionLimits.nopEchoBytes)
                if let echo = s.pointee.nopEcho, n > 0 { echo.copyMemory(from: data, byteCount: n) }
                guard let (slot, seq) = allocSlot(s) else { return }
                InitiatorPDUBuild.nopOutReply(slot, lunField: bhs.lunField, ttt: ttt, cmdSN: s.pointee.cmdSN,
                                              expStatSN: s.pointee.expStatSN, dataLength: n)
                appendHeader(s, slot, seq)
                if n > 0, let echo = s.pointee.nopEcho { appendData(s, echo, n, slot: slot, seq: seq) }
                stats.nopPingsAnswered += 1
            }
        case ISCSIOpcode.reject:
            updateWindow(s, h)
            stats.errors += 1
            note("target rejected a PDU: reason \(hex(bhs.response))")
            if dataLength >= bhsBytes, let t = task(s, itt: BHS(data).itt) {
                complete(s, t, ok: false, now: now)
            }
        case ISCSIOpcode.asyncMessage:
            updateWindow(s, h)
            let event = bhs.asyncEvent
            note("async message event \(event)")
            if event >= 1 && event <= 3 { s.pointee.draining = true }
        case ISCSIOpcode.logoutResponse:
            s.pointee.draining = true
        default:
            fail(s, "unexpected opcode \(hex(op)) from the target")
        }
        if s.pointee.alive { issue(s, now: now) }
    }

    // MARK: - Completion and issue

    @inline(__always)
    mutating func complete(_ s: UnsafeMutablePointer<SessionState>, _ t: UnsafeMutablePointer<IOTask>, ok: Bool, now: UInt64) {
        if now >= config.measureStartNanos && now < config.measureEndNanos {
            let latency = now &- t.pointee.startNanos
            if !histogram.pointee.record(min(max(latency, 1), WorkerLimits.histogramMaxNanos)) {}
            if t.pointee.write {
                stats.writes += 1
                stats.writeBytes += config.ioBytes
            } else {
                stats.reads += 1
                stats.readBytes += config.ioBytes
            }
        }
        lastCompletionNanos = now
        if !ok || t.pointee.failedVerify { stats.errors += 1 }
        if config.verify, t.pointee.unit >= 0, let gens = s.pointee.unitGeneration, let busy = s.pointee.unitBusy {
            let u = t.pointee.unit
            if t.pointee.write { gens[u] = ok ? t.pointee.writeGeneration : 0 }
            busy[u] = 0
        }
        t.pointee.active = false
        t.pointee.generation &+= 1
        let index = t - s.pointee.tasks!
        s.pointee.freeTasks![s.pointee.freeCount] = Int32(index)
        s.pointee.freeCount += 1
        s.pointee.inFlight -= 1
        inFlightTotal -= 1
    }

    @inline(__always)
    mutating func nextRandom() -> UInt64 {
        // xorshift64*: fast, and good enough to spread LBAs and choose reads from writes.
        rng ^= rng >> 12
        rng ^= rng << 25
        rng ^= rng >> 27
        return rng &* 0x2545_F491_4F6C_DD1D
    }

    /// Starts commands until the queue depth, the MaxCmdSN window or the quota says stop.
    mutating func issue(_ s: UnsafeMutablePointer<SessionState>, now: UInt64) {
        while !s.pointee.draining && s.pointee.alive && s.pointee.freeCount > 0 && s.pointee.issued < s.pointee.quota
            && Serial.atLeast(s.pointee.maxCmdSN, s.pointee.cmdSN) {
            let write: Bool
            switch config.readPercent {
            case 100: write = false
            case 0: write = true
            default: write = Int(nextRandom() % 100) >= config.readPercent
            }
            guard let unit = pickUnit(s) else { return }
            s.pointee.freeCount -= 1
            let index = Int(s.pointee.freeTasks![s.pointee.freeCount])
            let t = s.pointee.tasks! + index
            t.pointee.active = true
            t.pointee.write = write
            t.pointee.receivedBytes = 0
            t.pointee.failedVerify = false
            t.pointee.startNanos = now
            let blocksPerIO = config.ioBytes / config.lunBlockBytes
            if config.verify {
                t.pointee.unit = unit.local
                s.pointee.unitBusy![unit.local] = 1
                if write {
                    // Generations count from 1 per unit; 0 means "content unknown".
                    var g = s.pointee.unitGeneration![unit.local] &+ 1
                    if g == 0 { g = 1 }
                    t.pointee.writeGeneration = g
                    Pattern.fill(t.pointee.data!, bytes: config.ioBytes, unit: unit.global, generation: g)
                }
            } else {
                t.pointee.unit = -1
            }
            t.pointee.lba = UInt64(unit.global) &* UInt64(blocksPerIO)
            s.pointee.issued += 1
            s.pointee.inFlight += 1
            inFlightTotal += 1
            sendCommand(s, t, itt: UInt32(t.pointee.generation) << 16 | UInt32(index), blocks: UInt32(blocksPerIO))
        }
    }

    /// The unit of the next I/O: (global unit number, index among the session's own units in verify mode).
    @inline(__always)
    mutating func pickUnit(_ s: UnsafeMutablePointer<SessionState>) -> (global: Int, local: Int)? {
        if !config.verify {
            if config.random {
                let u = Int(nextRandom() % UInt64(config.regionUnits))
                return (u, -1)
            }
            let u = s.pointee.sequentialCursor
            s.pointee.sequentialCursor = u + 1 == config.regionUnits ? 0 : u + 1
            return (u, -1)
        }
        // Verify: the session owns units g ≡ globalIndex (mod totalSessions), at most one I/O on each.
        let owned = s.pointee.unitsOwned
        let busy = s.pointee.unitBusy!
        var local = -1
        if config.random {
            for _ in 0..<SessionLimits.unitPickAttempts {
                let k = Int(nextRandom() % UInt64(owned))
                if busy[k] == 0 { local = k; break }
            }
        }
        if local < 0 {
            var k = s.pointee.sequentialCursor
            for _ in 0..<owned {
                if busy[k] == 0 { local = k; break }
                k = k + 1 == owned ? 0 : k + 1
            }
            if local < 0 { return nil }
            s.pointee.sequentialCursor = local + 1 == owned ? 0 : local + 1
        }
        return (local * config.totalSessions + s.pointee.globalIndex, local)
    }

    mutating func verifyRead(_ s: UnsafeMutablePointer<SessionState>, _ t: UnsafeMutablePointer<IOTask>,
                             data: UnsafeRawPointer, offset: Int, length: Int) {
        guard t.pointee.unit >= 0, let gens = s.pointee.unitGeneration else { return }
        let g = gens[t.pointee.unit]
        if g == 0 {
            if offset == 0 { stats.unverifiedReads += 1 }
            return
        }
        let global = t.pointee.unit * config.totalSessions + s.pointee.globalIndex
        if Pattern.matches(data, offset: offset, length: length, unit: global, generation: g) {
            if offset &+ length == config.ioBytes { stats.verifiedReads += 1 }
        } else {
            stats.verifyFailures += 1
            note("verify: LBA \(t.pointee.lba) bytes \(offset)..<\(offset + length) do not hold generation \(g)")
            t.pointee.failedVerify = true
        }
    }

    // MARK: - Send

    @inline(__always)
    mutating func allocSlot(_ s: UnsafeMutablePointer<SessionState>) -> (UnsafeMutableRawPointer, UInt32)? {
        if s.pointee.slotHead &- s.pointee.slotTail > s.pointee.slotMask {
            fail(s, "header arena exhausted (a load generator bug)")
            return nil
        }
        let seq = s.pointee.slotHead
        s.pointee.slotHead &+= 1
        let p = s.pointee.slots! + Int(seq & s.pointee.slotMask) * SessionLimits.headerSlotBytes
        return (p, seq)
    }

    @inline(__always)
    func appendIovec(_ s: UnsafeMutablePointer<SessionState>, _ base: UnsafeMutableRawPointer, _ length: Int, _ seq: UInt32) {
        let i = s.pointee.iovCount
        s.pointee.iov![i] = iovec(iov_base: base, iov_len: length)
        s.pointee.iovSlot![i] = seq
        s.pointee.iovCount = i + 1
    }

    @inline(__always)
    func appendHeader(_ s: UnsafeMutablePointer<SessionState>, _ slot: UnsafeMutableRawPointer, _ seq: UInt32) {
        if s.pointee.headerDigest {
            Framing.storeHeaderDigest(slot)
            appendIovec(s, slot, bhsBytes + Framing.digestBytes, seq)
        } else {
            appendIovec(s, slot, bhsBytes, seq)
        }
    }

    /// Appends a data segment, its pad bytes and (when negotiated) its digest, kept in the PDU's header slot.
    @inline(__always)
    func appendData(_ s: UnsafeMutablePointer<SessionState>, _ data: UnsafeMutableRawPointer, _ length: Int,
                    slot: UnsafeMutableRawPointer, seq: UInt32) {
        appendIovec(s, data, length, seq)
        let pad = Framing.padded(length) - length
        if pad == 0 && !s.pointee.dataDigest { return }
        let tail = slot + SessionLimits.dataDigestOffsetInSlot
        tail.storeBytes(of: 0, as: UInt64.self)
        var tailBytes = pad
        if s.pointee.dataDigest {
            var acc = CRC32C.Accumulator()
            acc.update(UnsafeRawPointer(data), count: length)
            acc.updateZeros(count: pad)
            tail.storeBytes(of: acc.value.littleEndian, toByteOffset: pad, as: UInt32.self)
            tailBytes += Framing.digestBytes
        }
        appendIovec(s, tail, tailBytes, seq)
    }

    mutating func sendCommand(_ s: UnsafeMutablePointer<SessionState>, _ t: UnsafeMutablePointer<IOTask>,
                              itt: UInt32, blocks: UInt32) {
        guard let (slot, seq) = allocSlot(s) else { return }
        let n = config.ioBytes
        var immediate = 0
        var unsolicitedEnd = 0
        if t.pointee.write {
            if s.pointee.immediateData { immediate = min(n, s.pointee.firstBurstBytes, s.pointee.maxSendSegmentBytes) }
            unsolicitedEnd = s.pointee.initialR2T ? immediate : min(n, s.pointee.firstBurstBytes)
        }
        InitiatorPDUBuild.scsiCommand(slot, read: !t.pointee.write, write: t.pointee.write,
                                      final: unsolicitedEnd == immediate, lunField: s.pointee.lunField, itt: itt,
                                      expectedLength: UInt32(n), cmdSN: s.pointee.cmdSN,
                                      expStatSN: s.pointee.expStatSN, immediateLength: immediate)
        Wire.rw16CDB(slot, write: t.pointee.write, lba: t.pointee.lba, blocks: blocks)
        s.pointee.cmdSN &+= 1
        appendHeader(s, slot, seq)
        if immediate > 0 { appendData(s, t.pointee.data!, immediate, slot: slot, seq: seq) }
        if unsolicitedEnd > immediate {
            queueDataOut(s, t, ttt: reservedTag, offset: immediate, end: unsolicitedEnd)
        }
    }

    /// Data-Out PDUs for bytes [offset, end) of a write, each at most the target's MaxRecvDataSegmentLength.
    mutating func queueDataOut(_ s: UnsafeMutablePointer<SessionState>, _ t: UnsafeMutablePointer<IOTask>,
                               ttt: UInt32, offset: Int, end: Int) {
        let itt = UInt32(t.pointee.generation) << 16 | UInt32(t - s.pointee.tasks!)
        var off = offset
        var dataSN: UInt32 = 0
        while off < end {
            let n = min(s.pointee.maxSendSegmentBytes, end - off)
            guard let (slot, seq) = allocSlot(s) else { return }
            InitiatorPDUBuild.dataOut(slot, final: off + n == end, lunField: s.pointee.lunField, itt: itt, ttt: ttt,
                                      expStatSN: s.pointee.expStatSN, dataSN: dataSN, bufferOffset: UInt32(off),
                                      length: n)
            appendHeader(s, slot, seq)
            appendData(s, t.pointee.data! + off, n, slot: slot, seq: seq)
            dataSN &+= 1
            off += n
        }
    }

    /// Starts a sendmsg of the queued iovecs unless one is in flight (one send per socket keeps the order).
    @inline(__always)
    func flush(_ s: UnsafeMutablePointer<SessionState>, index: Int) {
        guard s.pointee.alive, !s.pointee.sendInFlight, s.pointee.iovCount > 0 else { return }
        let n = min(s.pointee.iovCount, SessionLimits.maxIovecsPerSend)
        let msg = s.pointee.msg!
        msg.pointee.msg_iov = s.pointee.iov
        msg.pointee.msg_iovlen = n
        let sqe = ring.sqe()
        io_uring_prep_sendmsg(sqe, s.pointee.fd, msg, UInt32(MSG_NOSIGNAL))
        sqe.pointee.user_data = UserDataKind.send.rawValue << 32 | UInt64(index)
        s.pointee.sendInFlight = true
        s.pointee.iovInFlight = n
    }

    mutating func onSend(_ s: UnsafeMutablePointer<SessionState>, index: Int, res: Int32) {
        s.pointee.sendInFlight = false
        guard s.pointee.alive else { return }
        if res < 0 {
            if res == -EINTR || res == -EAGAIN { flush(s, index: index); return }
            fail(s, "send: \(String(cString: strerror(-res)))")
            return
        }
        var sent = Int(res)
        let iov = s.pointee.iov!
        var i = 0
        while i < s.pointee.iovInFlight && sent >= iov[i].iov_len {
            sent -= iov[i].iov_len
            i += 1
        }
        if i < s.pointee.iovInFlight && sent > 0 {
            // A short send: the rest of this iovec goes first next time.
            iov[i].iov_base = iov[i].iov_base! + sent
            iov[i].iov_len -= sent
        }
        // Header slots of PDUs wholly sent are free again; the first unsent iovec's PDU keeps its slot.
        s.pointee.slotTail = i < s.pointee.iovCount ? s.pointee.iovSlot![i] : s.pointee.slotHead
        let left = s.pointee.iovCount - i
        if i > 0 && left > 0 {
            memmove(iov, iov + i, left * MemoryLayout<iovec>.stride)
            memmove(s.pointee.iovSlot!, s.pointee.iovSlot! + i, left * MemoryLayout<UInt32>.stride)
        }
        s.pointee.iovCount = left
        flush(s, index: index)
    }

    // MARK: - Errors

    mutating func note(_ message: String) {
        if stats.messages.count < WorkerLimits.keptMessages { stats.messages.append(message) }
    }

    /// A session that broke the protocol or lost its connection: its commands count as errors.
    mutating func fail(_ s: UnsafeMutablePointer<SessionState>, _ why: String) {
        guard s.pointee.alive else { return }
        s.pointee.alive = false
        s.pointee.draining = true
        liveCount -= 1
        if !stopping || s.pointee.inFlight > 0 {
            stats.errors += s.pointee.inFlight + 1
            note("session \(s.pointee.globalIndex): \(why)")
        }
        inFlightTotal -= s.pointee.inFlight
        s.pointee.inFlight = 0
        shutdown(s.pointee.fd, Int32(SHUT_RDWR))
    }
}
