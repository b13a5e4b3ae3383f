// SANITIZE (SBC-4 §5.30): BLOCK ERASE and CRYPTOGRAPHIC ERASE deallocate the whole LU through the store
// (holes punched in a file, objects discarded on sheepdog), then flush so the erase survives a crash; EXIT
// FAILURE MODE leaves the failure mode an interrupted sanitize left behind.
//
// OVERWRITE is not offered: SBC-4 says a sanitize goes on after the SANITIZE command is aborted, the LU is
// reset or the nexus is lost (libiscsi's Sanitize.Reset checks exactly that), and an overwrite runs long
// enough for that to happen, while ringtgt's store operations belong to a command. An erase is one discard
// per `SanitizeLimits.erasePieceBytes`; if its command ends early anyway, the LU enters failure mode rather
// than pretend the erase finished. IMMED is refused for the same reason.
//
// No store here encrypts, so CRYPTOGRAPHIC ERASE does what BLOCK ERASE does: the data is gone from the LU
// and its space given back. What a filesystem or sheep does with freed blocks is below the store boundary,
// as for UNMAP.

enum SanitizeLimits {
    /// Bytes one discard of an erase covers: one sheepdog object, so a store op stays short (a command
    /// abort or a store timeout waits for at most one piece) and REQUEST SENSE sees progress move.
    static let erasePieceBytes: UInt64 = 4 * 1024 * 1024
}

enum SanitizeServiceAction {
    static let overwrite: UInt8 = 0x01
    static let blockErase: UInt8 = 0x02
    static let cryptographicErase: UInt8 = 0x03
    static let exitFailureMode: UInt8 = 0x1F
}

/// The LU's sanitize state, behind the LU mutex (LUNSharedState.sanitize).
struct SanitizeState {
    var running = false
    var failed = false
    /// AUSE of the SANITIZE that failed: whether EXIT FAILURE MODE may end the failure mode.
    var exitAllowed = false
    /// PROGRESS INDICATION: the erased fraction of the LU, in 1/65536ths.
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

extension SCSITask {
    /// Whether this LU offers SANITIZE: it needs a store that deallocates.
    static func offersSanitize(_ lun: LogicalUnit?) -> Bool { lun?.capabilities.canDiscard ?? false }

    mutating func startSanitize() -> SCSIAction {
        guard let lun else { return internalError() }
        if !SCSITask.offersSanitize(lun) { return invalidOpcode() }
        let b1 = cdb[1]
        if b1 & 0x40 != 0 { return invalidField(byte: 1, bit: 6) }          // ZNR: no zones here
        for i in 2 ... 6 where cdb[i] != 0 { return invalidField(byte: i) }
        let action = b1 & 0x1F
        switch action {
        case SanitizeServiceAction.blockErase, SanitizeServiceAction.cryptographicErase,
             SanitizeServiceAction.exitFailureMode:
            break
        default:
            return invalidField(byte: 1, bit: 4)
        }
        if cdb.u16(7) != 0 { return invalidField(byte: 7) }                   // no parameter list for these
        if b1 & 0x80 != 0 { return invalidField(byte: 1, bit: 7) }          // IMMED: see the file comment
        if action == SanitizeServiceAction.exitFailureMode {
            return lun.state.exitSanitizeFailureMode() ? completeGood() : invalidField(byte: 1, bit: 4)
        }
        if isWriteProtected { return writeProtected() }
        if !lun.state.beginSanitize(allowExit: b1 & 0x20 != 0) { return fail(SenseKey.notReady, .sanitizeInProgress) }
        auxOffset = 0
        auxLength = capacityBlocks &* UInt64(blockSize)
        return nextSanitizePiece()
    }

    mutating func nextSanitizePiece() -> SCSIAction {
        if auxOffset >= auxLength {
            phase = .sanitizeFlush
            return .store(.flush(target: .own))
        }
        let n = min(SanitizeLimits.erasePieceBytes, auxLength - auxOffset)
        let offset = auxOffset
        auxOffset += n
        phase = .sanitizeErase
        return .store(.discard(target: .own, offset: offset, length: n))
    }

    mutating func sanitizeStoreCompleted(_ r: StoreResult) -> SCSIAction {
        guard let lun else { return internalError() }
        if case .failed = r {
            lun.state.endSanitize(failed: true)
            return fail(SenseKey.mediumError, .sanitizeCommandFailed)
        }
        if phase == .sanitizeFlush {
            lun.state.endSanitize(failed: false)
            return completeGood()
        }
        lun.state.sanitizeProgressed(UInt16(Double(auxOffset) / Double(max(auxLength, 1)) * Double(UInt16.max)))
        return nextSanitizePiece()
    }

    /// The SANITIZE command ended (aborted, reset, session gone) before its erase did.
    mutating func sanitizeInterrupted() {
        lun?.state.endSanitize(failed: true)
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
