// SANITIZE (SBC-4 §5.30). OVERWRITE writes the initialization pattern over the whole LU through the store, one
// buffer of whole blocks at a time, OVERWRITE COUNT passes (inverted between passes with INVERT); BLOCK ERASE
// and CRYPTOGRAPHIC ERASE deallocate it (holes punched in a file, objects discarded on sheepdog); both end
// with a flush so the result survives a crash. EXIT FAILURE MODE leaves the failure mode a failed sanitize
// left behind.
//
// The sanitize itself is a job of the LU, not of its command: SBC-4 has it go on after the SANITIZE command
// is aborted, the LU or the target is reset or the I_T nexus is lost (libiscsi's Sanitize.Reset checks
// exactly that). The command validates, then asks its transport to start a `SanitizeJob` (`.startJob`);
// the reactor of the command's core runs it with its own buffer slot and store record, one piece in flight,
// holding the LU. With IMMED the command completes at once; without, it waits for the job, and if it is
// aborted or its session ends meanwhile only the command goes. A job that fails (a store error, or the
// daemon stopping under it) leaves the LU in sanitize failure mode, as SBC-4 prescribes.
//
// No store here encrypts, so CRYPTOGRAPHIC ERASE does what BLOCK ERASE does: the data is gone from the LU
// and its space given back. What a filesystem or sheep does with freed blocks is below the store boundary,
// as for UNMAP.

import Floor
import Store
public enum SanitizeLimits {
    /// Bytes one discard of an erase covers: one sheepdog object, so a store op stays short (a daemon
    /// shutdown waits for at most one piece) and REQUEST SENSE sees progress move.
    static let erasePieceBytes: UInt64 = 4 * 1024 * 1024
    /// Sanitize jobs one core runs at once (each holds a buffer slot while it runs); a SANITIZE beyond it is
    /// answered BUSY.
    public static let jobsPerCore = 8
    /// The OVERWRITE parameter list header: OVERWRITE COUNT and flags, reserved, INITIALIZATION PATTERN LENGTH.
    static let overwriteHeaderBytes = 4
}

public enum SanitizeServiceAction {
    static let overwrite: UInt8 = 0x01
    static let blockErase: UInt8 = 0x02
    static let cryptographicErase: UInt8 = 0x03
    static let exitFailureMode: UInt8 = 0x1F
}

/// The LU's sanitize state, behind the LU mutex (LUNSharedState.sanitize).
public struct SanitizeState {
    var running = false
    var failed = false
    /// AUSE of the SANITIZE that failed: whether EXIT FAILURE MODE may end the failure mode.
    var exitAllowed = false
    /// PROGRESS INDICATION: the sanitized fraction of the LU, in 1/65536ths.
    var progress: UInt16 = 0
}

extension LUNState {
    /// Marks a sanitize as started; false when one already runs on this LU.
    func beginSanitize(allowExit: Bool) -> Bool {
        shared.withLock { s in
            if s.sanitize.running { return false }
            s.sanitize = SanitizeState(running: true, failed: false, exitAllowed: allowExit, progress: 0)
            publishFlags(s)
            return true
        }
    }

    func sanitizeProgressed(_ progress: UInt16) {
        shared.withLock { s in s.sanitize.progress = progress }
    }

    func endSanitize(failed: Bool) {
        shared.withLock { s in
            s.sanitize.running = false
            s.sanitize.failed = failed
            publishFlags(s)
        }
    }

    /// EXIT FAILURE MODE: true when there was nothing to leave or leaving was allowed.
    func exitSanitizeFailureMode() -> Bool {
        shared.withLock { s in
            if s.sanitize.failed && !s.sanitize.exitAllowed { return false }
            s.sanitize.failed = false
            publishFlags(s)
            return true
        }
    }

    var sanitizeProgress: UInt16 { shared.withLock { $0.sanitize.progress } }
}

/// What a sanitize job does next.
public enum SanitizeStep: Equatable {
    /// Carry out this store operation on the job's LU (`.own`), with the job's buffer, then call `completed`.
    case store(StoreOp)
    /// The job is over; the LU's sanitize state says how it ended.
    case finished(failed: Bool)
}

/// One sanitize of a whole LU, as a pure machine: it names the next store operation and takes results; the
/// reactor carries the operations out (Reactor/LUNJobs.swift), as the test harness does. It holds its LU, so
/// the store stays open until the job ends, whatever the control plane or the command does meanwhile.
public struct SanitizeJob {
    public let lun: LogicalUnit
    public let overwrite: Bool
    let totalBytes: UInt64
    /// OVERWRITE: bytes of the job's buffer one write takes (whole blocks of the pattern).
    public let patternBytes: Int
    let passes: Int
    let invert: Bool
    private(set) var pass = 0
    private(set) var offset: UInt64 = 0
    private(set) var flushing = false
    private(set) var ended = false

    init(lun: LogicalUnit, overwrite: Bool, patternBytes: Int, passes: Int, invert: Bool) {
        self.lun = lun
        self.overwrite = overwrite
        self.totalBytes = lun.blockCount &* UInt64(lun.blockSize)
        self.patternBytes = patternBytes
        self.passes = max(1, passes)
        self.invert = invert
    }

    /// The next operation; `buffer` is the job's own (its first `patternBytes` hold the pattern).
    public mutating func next(buffer: UnsafeMutableRawBufferPointer) -> SanitizeStep {
        if offset >= totalBytes {
            if pass + 1 < passes {
                pass += 1
                offset = 0
                if overwrite && invert {
                    for i in 0 ..< patternBytes { buffer[i] = ~buffer[i] }
                }
            } else {
                flushing = true
                return .store(.flush(target: .own))
            }
        }
        let piece = overwrite ? UInt64(patternBytes) : SanitizeLimits.erasePieceBytes
        let n = min(piece, totalBytes - offset)
        let at = offset
        offset += n
        if overwrite { return .store(.write(target: .own, offset: at, length: Int(n), bufferOffset: 0, fua: false)) }
        return .store(.discard(target: .own, offset: at, length: n))
    }

    /// The last operation's result: `.finished`, or nil when the job goes on with `next`.
    public mutating func completed(_ r: StoreResult) -> SanitizeStep? {
        if case .failed = r { return end(failed: true) }
        if flushing { return end(failed: false) }
        lun.state.sanitizeProgressed(progress)
        return nil
    }

    /// The job stops before its end (the daemon is stopping): the LU is left in failure mode.
    public mutating func abandon() -> SanitizeStep { end(failed: true) }

    private mutating func end(failed: Bool) -> SanitizeStep {
        if !ended {
            ended = true
            lun.state.endSanitize(failed: failed)
        }
        return .finished(failed: failed)
    }

    /// Bytes the last operation moved, for pacing (a flush moves none).
    public var lastPieceBytes: UInt64 {
        if flushing { return 0 }
        return min(overwrite ? UInt64(patternBytes) : SanitizeLimits.erasePieceBytes, totalBytes)
    }

    var progress: UInt16 {
        let all = Double(totalBytes) * Double(passes)
        let done = Double(totalBytes) * Double(pass) + Double(offset)
        return UInt16(min(Double(UInt16.max), done / max(all, 1) * Double(UInt16.max)))
    }
}

extension SCSITask {
    /// Whether this LU offers SANITIZE: it needs a store that deallocates (for the erases).
    static func offersSanitize(_ lun: LogicalUnit?) -> Bool { lun?.capabilities.canDiscard ?? false }

    mutating func startSanitize() -> SCSIAction {
        guard let lun else { return internalError() }
        if !SCSITask.offersSanitize(lun) { return invalidOpcode() }
        let b1 = cdb[1]
        if b1 & 0x40 != 0 { return invalidField(byte: 1, bit: 6) }          // ZNR: no zones here
        for i in 2 ... 6 where cdb[i] != 0 { return invalidField(byte: i) }
        let action = b1 & 0x1F
        let listLength = Int(cdb.u16(7))
        switch action {
        case SanitizeServiceAction.overwrite:
            // The header and a pattern of one byte up to one block (SBC-4; libiscsi's Sanitize.Overwrite).
            let header = SanitizeLimits.overwriteHeaderBytes
            if listLength <= header || listLength > header + lun.blockSize { return invalidField(byte: 7) }
        case SanitizeServiceAction.blockErase, SanitizeServiceAction.cryptographicErase,
             SanitizeServiceAction.exitFailureMode:
            if listLength != 0 { return invalidField(byte: 7) }                // no parameter list for these
        default:
            return invalidField(byte: 1, bit: 4)
        }
        if action == SanitizeServiceAction.exitFailureMode {
            return lun.state.exitSanitizeFailureMode() ? completeGood() : invalidField(byte: 1, bit: 4)
        }
        if isWriteProtected { return writeProtected() }
        auxByte = action
        if action == SanitizeServiceAction.overwrite { return requestParameterList(length: listLength) }
        auxCount = 1
        auxFlag = false
        auxIndex = 0
        phase = .sanitizeStart
        return .startJob
    }

    /// The OVERWRITE parameter list (SBC-4): INVERT, TEST, OVERWRITE COUNT, INITIALIZATION PATTERN LENGTH and
    /// the pattern. The pattern is repeated over one block and the block over the buffer's whole blocks,
    /// which the job then writes over the LU piece by piece.
    mutating func sanitizeParametersReceived(_ list: UnsafeMutableRawBufferPointer,
                                             buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        let header = SanitizeLimits.overwriteHeaderBytes
        if list.count <= header { return fail(SenseKey.illegalRequest, .parameterListLengthError) }
        let b0 = list.get8(0)
        let count = Int(b0 & 0x1F)
        let patternLength = Int(list.get16(2))
        // libiscsi 1.19 wants INVALID FIELD IN CDB for a zero count, a pattern of zero bytes or longer than a
        // block, and a pattern that does not fill the list the CDB announced; no field pointer, since the
        // fault is in how the list and the CDB's length fit together.
        if count == 0 || patternLength == 0 || patternLength > blockSize || header + patternLength != list.count {
            return fail(SenseKey.illegalRequest, .invalidFieldInCDB)
        }
        if b0 & 0x60 != 0 { return invalidParameter(byte: 0, bit: 6) }       // TEST: no test modes
        for i in 0 ..< patternLength { buffer[i] = buffer[header + i] }       // forward: the source lies ahead
        for i in patternLength ..< blockSize { buffer[i] = buffer[i - patternLength] }
        let piece = chunkCapacity(buffer.count)
        var filled = blockSize
        while filled < piece {
            let n = min(filled, piece - filled)
            (buffer.baseAddress! + filled).copyMemory(from: buffer.baseAddress!, byteCount: n)
            filled += n
        }
        auxCount = count
        auxFlag = b0 & 0x80 != 0
        auxIndex = piece
        phase = .sanitizeStart
        return .startJob
    }

    /// The transport's side of `.startJob`: the job to run, or nil when the LU runs a sanitize already
    /// (another core's command got there first); then `sanitizeNotStarted(busy: false)` answers.
    public mutating func beginSanitizeJob() -> SanitizeJob? {
        guard let lun, phase == .sanitizeStart else { return nil }
        guard lun.state.beginSanitize(allowExit: cdb[1] & 0x20 != 0) else { return nil }
        return SanitizeJob(lun: lun, overwrite: auxByte == SanitizeServiceAction.overwrite, patternBytes: auxIndex,
                           passes: auxCount, invert: auxFlag)
    }

    /// The job did not start: the core runs as many jobs as it may (BUSY: try again later), or the LU runs one.
    public mutating func sanitizeNotStarted(busy: Bool) -> SCSIAction {
        if busy { return completeGood(status: SCSIStatus.busy) }
        return fail(SenseKey.notReady, .sanitizeInProgress)
    }

    /// The job runs: with IMMED the command is done; without, it waits (nil) for `storeCompleted` with the
    /// job's outcome.
    public mutating func sanitizeJobStarted() -> SCSIAction? {
        if cdb[1] & 0x80 != 0 { return completeGood() }
        phase = .sanitizeWait
        return nil
    }

    mutating func sanitizeJobEnded(_ r: StoreResult) -> SCSIAction {
        if case .failed = r { return fail(SenseKey.mediumError, .sanitizeCommandFailed) }
        return completeGood()
    }

    /// While a sanitize runs, only INQUIRY, REPORT LUNS and REQUEST SENSE are served (SBC-4); after one
    /// failed, everything else but SANITIZE gets SANITIZE COMMAND FAILED until a SANITIZE succeeds or EXIT
    /// FAILURE MODE. nil: the command runs.
    mutating func sanitizeRefusal() -> SCSIAction? {
        switch opcode {
        case Opcode.inquiry, Opcode.reportLUNs, Opcode.requestSense: return nil
        default: break
        }
        if lunFlags & LUNState.flagSanitizing != 0 { return fail(SenseKey.notReady, .sanitizeInProgress) }
        if opcode != Opcode.sanitize { return fail(SenseKey.mediumError, .sanitizeCommandFailed) }
        return nil
    }

    /// REQUEST SENSE during a sanitize: SANITIZE IN PROGRESS with the PROGRESS INDICATION (SPC-4 §4.5.2.4.4);
    /// in failure mode, SANITIZE COMMAND FAILED.
    func sanitizeSense(into data: inout SenseData) {
        guard let lun else { return }
        if lunFlags & LUNState.flagSanitizing != 0 {
            let progress = lun.state.sanitizeProgress
            data.key = SenseKey.notReady
            data.asc = .sanitizeInProgress
            data.senseKeySpecific = (0x80, UInt8(progress >> 8), UInt8(progress & 0xFF))
        } else if lunFlags & LUNState.flagSanitizeFailed != 0 {
            data.key = SenseKey.mediumError
            data.asc = .sanitizeCommandFailed
        }
    }
}
