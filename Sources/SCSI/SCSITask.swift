// The SCSI command state machine's public face. The transport (iSCSI today, others later) owns one
// SCSITask per outstanding command, in preallocated storage, and drives it:
//
//   start(...)              -> SCSIAction
//   dataOutReceived()       -> SCSIAction   after the transport filled the buffer asked for by .dataOut
//   storeCompleted(result)  -> SCSIAction   after the reactor carried out a .store op
//   dataInSent()            -> SCSIAction   after the transport finished sending a non-final .dataIn piece
//
// until it returns .complete. SCSI performs no I/O and allocates nothing on READ/WRITE.
//
// Transport obligations the task relies on:
//   - Data-Out the task never asks for (immediate or unsolicited data beyond what a .dataOut requested,
//     or any data for a command that completes at once) must be received and discarded by the transport.
//   - `buffer` is the command's own data slot, at least `minimumBufferBytes` long, and the same slot (or
//     one of the same size) on every call for one command.
//   - `endCommand()` is called once the command is over (completed, aborted, or its session torn down).

import Floor
import Store
import ISCSIWire
public enum SCSIAction: Equatable, Sendable {
    /// Put bytes [offset, offset+length) of the command's data-out stream into buffer[0 ..< length],
    /// then call dataOutReceived(). length <= buffer.count.
    case dataOut(offset: Int, length: Int)
    /// Carry out this store operation, then call storeCompleted(_:).
    case store(StoreOp)
    /// buffer[0 ..< length] is the next piece of the data-in stream and more follows.
    /// Send it, and call dataInSent() once the buffer may be reused.
    case dataIn(length: Int)
    /// The command is done. buffer[0 ..< dataInLength] is the last piece of data-in (may be 0).
    /// With status CHECK CONDITION the sense data is in the task (senseLength > 0).
    case complete(status: UInt8, dataInLength: Int, residual: Residual)
    /// Start the LU's sanitize job (SCSI/Sanitize.swift): take it with `beginSanitizeJob()`, then go on with
    /// `sanitizeJobStarted()`, or with `sanitizeNotStarted(busy:)` when it cannot start.
    case startJob
}

public enum SCSIStatus {
    public static let good: UInt8 = 0x00
    public static let checkCondition: UInt8 = 0x02
    public static let conditionMet: UInt8 = 0x04
    public static let busy: UInt8 = 0x08
    public static let reservationConflict: UInt8 = 0x18
    public static let taskSetFull: UInt8 = 0x28
    public static let taskAborted: UInt8 = 0x40
}

/// Where a multi-step command resumes. One comment per state says what the task is waiting for.
public enum TaskPhase: UInt8 {
    /// No command, or the command has completed.
    case idle
    /// READ family: a store read of the current chunk is outstanding.
    case readStore
    /// READ family: the transport is sending a non-final chunk.
    case readSending
    /// WRITE family: waiting for the current chunk of data-out.
    case writeData
    /// WRITE family: a store write of the current chunk is outstanding.
    case writeStore
    /// A single store op whose success completes the command (flush, prefetch, discard of one range).
    case singleStore
    /// VERIFY with BYTCHK: waiting for the data-out chunk to compare.
    case verifyData
    /// VERIFY with BYTCHK: the store read of the matching chunk is outstanding.
    case verifyRead
    /// ORWRITE: data-out chunk, then the old data read, then the ORed write.
    case orData, orRead, orWrite
    /// COMPARE AND WRITE: data-out (verify + write halves), read, then write. On a multipath sheep LU the read
    /// waits to enter the section shared across gateways (`cawEnter`), the write waits for the holder's
    /// lease to be confirmed (`cawConfirm`), and the status waits until the section is left (`cawLeave`).
    case cawData, cawRead, cawWrite, cawEnter, cawConfirm, cawLeave
    /// WRITE SAME: the one block of data-out, then repeated writes, or a discard.
    case wsData, wsWrite, wsDiscard
    /// A parameter list (MODE SELECT, PR OUT, UNMAP, XCOPY) is arriving.
    case parameterData
    /// UNMAP: discarding descriptor `auxIndex`.
    case unmapDiscard
    /// GET LBA STATUS: a mapStatus query is outstanding.
    case lbaStatus
    /// EXTENDED COPY: reading from the source, then writing to the destination.
    case xcopyRead, xcopyWrite
    /// SANITIZE: validated, its job asked for (`.startJob`); then, without IMMED, waiting for the job's end.
    case sanitizeStart, sanitizeWait
    /// Multipath sheep LU (SCSI/ReservationsShared.swift): the shared record is being read before a reservation
    /// command applies (or, `sharedRecheck`, before a conflict is answered); `sharedApply` while the command
    /// applies to the current state; `sharedPublish` while its change is appended to the record.
    case sharedSync, sharedRecheck, sharedApply, sharedPublish
    /// SET TARGET PORT GROUPS on a multipath sheep LU: a state set goes into the shared record (ALUA.swift).
    case aluaShare
}

public struct SCSITask {
    /// Every data buffer the transport hands in is at least this long.
    public static let minimumBufferBytes = 65536
    /// Longest CDB the transport may hand in (16 in the BHS plus an extended-CDB AHS).
    public static let maxCDBBytes = 260

    // Command identity.
    @usableFromInline var cdb = CDBBytes()
    @usableFromInline var opcode: UInt8 = 0
    /// Strong: the control plane can delete the LUN, replace the target and end the session while the command
    /// is in flight, and the command must go on against what it started on (the LUN lifetime rule,
    /// docs/DESIGN.md). The transport drops them with `endCommand` when the command ends.
    public var lun: LogicalUnit? = nil
    @usableFromInline var session: SessionBinding? = nil
    public var target: TargetRuntime? { session?.target }
    var nexus: Nexus? { session?.nexus }
    @usableFromInline var lunNumber: UInt64 = 0
    @usableFromInline var expectedLength: UInt32 = 0
    @usableFromInline var readBit = false
    @usableFromInline var writeBit = false
    public var phase: TaskPhase = .idle
    /// Snapshot of the LU taken in start(), so the hot path reads plain fields instead of going back
    /// through the class references (no ARC traffic, one atomic load per command).
    var capacityBlocks: UInt64 = 0
    var lunFlags: UInt64 = 0
    var lunReadOnly = false

    // Outcome.
    var sense = SenseData()
    @usableFromInline var hasSense = false

    // Block I/O progress, in bytes unless named otherwise.
    var blockSize = 512
    var lba: UInt64 = 0
    /// Bytes the CDB asks to move; residuals compare it with the Expected Data Transfer Length.
    @usableFromInline var wantedBytes: UInt64 = 0
    /// Bytes this command will actually move (the CDB's length clamped by the EDTL).
    @usableFromInline var totalBytes: UInt64 = 0
    @usableFromInline var doneBytes: UInt64 = 0
    @usableFromInline var chunkBytes: Int = 0
    @usableFromInline var fua = false
    /// Command-specific scratch: compare offsets, descriptor indexes, counters.
    var auxIndex: Int = 0
    var auxCount: Int = 0
    var auxOffset: UInt64 = 0
    var auxLength: UInt64 = 0
    var auxFlag = false
    var auxByte: UInt8 = 0
    /// EXTENDED COPY: source and destination LUN numbers and progress.
    var xcopy = ExtendedCopyProgress()

    @inlinable public init() {}

    // MARK: Public API

    /// `lun` and `session` are consumed: the caller's references move into the task, which holds them until
    /// `endCommand`, so starting a command costs no retain beyond the caller's own.
    @inlinable
    public mutating func start(cdb raw: UnsafeRawBufferPointer, expectedLength: UInt32, readBit: Bool,
                               writeBit: Bool, lunNumber: UInt64, lun: consuming LogicalUnit?,
                               session: consuming SessionBinding, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        self.cdb = CDBBytes(raw)
        self.opcode = cdb[0]
        let nexusID = session.nexus.id
        let lunGeneration = session.target.lunGeneration
        self.session = consume session
        self.lunNumber = lunNumber
        self.expectedLength = expectedLength
        self.readBit = readBit
        self.writeBit = writeBit
        self.phase = .idle
        self.hasSense = false
        self.fua = false
        self.doneBytes = 0
        self.totalBytes = 0
        self.wantedBytes = 0
        self.chunkBytes = 0

        // 6..16 bytes in the BHS, up to 260 with an extended-CDB AHS. Only the first 32 are kept: no
        // command this device server implements is longer, and the opcode alone rejects the rest.
        if raw.count < 6 || raw.count > SCSITask.maxCDBBytes {
            self.lun = consume lun
            return fail(SenseKey.illegalRequest, .invalidFieldInCDB, field: SenseData.fieldPointer(byte: 0))
        }
        guard let unit = consume lun else {
            self.lun = nil
            return startWithoutLUN(buffer: buffer)
        }
        // Hot path: READ/WRITE with nothing pending on this LU go straight to the handler, which reads the
        // snapshot's plain fields and not the LU.
        let admitted = takeSnapshot(unit, nexusID: nexusID, lunGeneration: lunGeneration)
        // A COMPARE AND WRITE that waited for its LUN's gate comes back with the LUN already held here.
        self.lun = consume unit
        if _fastPath(admitted) { return dispatch(buffer: buffer) }
        return startSlow(buffer: buffer)
    }

    /// Takes the flag snapshot; true when this nexus has no pending unit attention and no reservation is
    /// held, so the command needs no locked check.
    @inline(never)
    @usableFromInline mutating func takeSnapshot(_ lun: LogicalUnit, nexusID: UInt64, lunGeneration: UInt64) -> Bool {
        blockSize = lun.blockSize
        capacityBlocks = lun.blockCount
        lunReadOnly = lun.capabilities.readOnly
        let state = lun.state
        if let r = lun.reachability { state.followBacking(r) }
        lunFlags = state.flags
        return state.isAdmitted(nexusID: nexusID, lunGeneration: lunGeneration)
            && lunFlags & (LUNState.flagReservationHeld | LUNState.flagPortInactive | LUNState.flagBackingUnavailable) == 0
    }

    /// The command ended (completed, aborted or torn down): lets go of its LUN, target and nexus now, so a
    /// deleted LUN's store closes with its last command, not when the task entry is next used.
    public mutating func endCommand() {
        lun = nil
        session = nil
    }

    public mutating func dataOutReceived(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        switch phase {
        case .writeData: return writeDataReceived(buffer: buffer)
        case .verifyData: return verifyDataReceived(buffer: buffer)
        case .orData: return orWriteDataReceived(buffer: buffer)
        case .cawData: return compareAndWriteDataReceived(buffer: buffer)
        case .wsData: return writeSameDataReceived(buffer: buffer)
        case .parameterData: return parameterListReceived(buffer: buffer)
        default: return internalError()
        }
    }

    public mutating func storeCompleted(_ result: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        switch phase {
        case .readStore: return readStoreCompleted(result, buffer: buffer)
        case .writeStore: return writeStoreCompleted(result, buffer: buffer)
        case .singleStore: return singleStoreCompleted(result)
        case .verifyRead: return verifyReadCompleted(result, buffer: buffer)
        case .orRead: return orWriteReadCompleted(result, buffer: buffer)
        case .orWrite: return orWriteWriteCompleted(result, buffer: buffer)
        case .cawRead: return compareAndWriteReadCompleted(result, buffer: buffer)
        case .cawWrite: return compareAndWriteWriteCompleted(result)
        case .cawEnter: return compareAndWriteEntered(result)
        case .cawConfirm: return compareAndWriteConfirmed(result)
        case .cawLeave: return compareAndWriteLeft()
        case .wsWrite: return writeSameWriteCompleted(result, buffer: buffer)
        case .wsDiscard: return writeSameDiscardCompleted(result, buffer: buffer)
        case .unmapDiscard: return unmapDiscardCompleted(result, buffer: buffer)
        case .lbaStatus: return lbaStatusCompleted(result, buffer: buffer)
        case .xcopyRead: return extendedCopyReadCompleted(result, buffer: buffer)
        case .xcopyWrite: return extendedCopyWriteCompleted(result, buffer: buffer)
        case .sanitizeWait: return sanitizeJobEnded(result)
        case .sharedSync: return sharedSyncCompleted(result, buffer: buffer)
        case .sharedRecheck: return sharedRecheckCompleted(result, buffer: buffer)
        case .sharedPublish: return sharedPublishCompleted(result, buffer: buffer)
        case .aluaShare: return aluaShareCompleted(result, buffer: buffer)
        default: return internalError()
        }
    }

    public mutating func dataInSent(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        switch phase {
        case .readSending: return nextReadChunk(buffer: buffer)
        default: return internalError()
        }
    }

    public var senseLength: Int { hasSense ? sense.length : 0 }

    public func copySense(to p: UnsafeMutableRawPointer) {
        guard hasSense else { return }
        sense.render(to: p)
    }

    /// The sense key, ASC and ASCQ of the last failure (for logging and tests).
    public var senseTriple: (key: UInt8, asc: UInt8, ascq: UInt8) { (sense.key, sense.asc.code, sense.asc.qualifier) }

    // MARK: Task management hooks

    /// LOGICAL UNIT RESET from `nexus`: releases the SPC-2 reservation and raises BUS DEVICE RESET
    /// FUNCTION OCCURRED (29h/03h) for every nexus, the requester's included (SAM-5 §6.3.3; libiscsi's
    /// MultipathIO.Reset expects it on every path).
    public static func logicalUnitReset(_ lun: LogicalUnit, by nexus: Nexus) {
        lun.state.reset(raising: .busDeviceResetOccurred)
    }

    /// TARGET WARM RESET: every LU resets. POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (29h/00h) is
    /// raised because initiators (libiscsi's RESERVE(6) helpers among them) retry on exactly that code.
    public static func targetReset(_ target: TargetRuntime, by nexus: Nexus) {
        for lun in target.luns { lun.state.reset(raising: .powerOnResetOccurred) }
    }

    /// The session behind `nexus` ended: SPC-2 reservations it held are released and its unit
    /// attentions dropped. Persistent reservation registrations persist (SPC-4 §5.9.1).
    /// Returns the LUs whose SPC-2 reservation it held: on a multipath sheep LU the release must reach the
    /// shared record too (Reactor.shareChange).
    @discardableResult
    public static func nexusLost(_ nexus: Nexus, target: TargetRuntime) -> [LogicalUnit] {
        var released: [LogicalUnit] = []
        for lun in target.luns where lun.state.nexusLost(nexus) { released.append(lun) }
        return released
    }

    // MARK: Completion helpers

    /// Complete with CHECK CONDITION and the given sense.
    @usableFromInline mutating func fail(_ key: UInt8, _ asc: ASC, field: (UInt8, UInt8, UInt8)? = nil,
                       information: UInt64? = nil) -> SCSIAction {
        sense = SenseData(key: key, asc: asc, information: information, senseKeySpecific: field,
                          descriptorFormat: lun?.presentation.descriptorSense ?? false)
        hasSense = true
        phase = .idle
        return .complete(status: SCSIStatus.checkCondition, dataInLength: 0, residual: .none)
    }

    mutating func invalidField(byte: Int, bit: Int? = nil) -> SCSIAction {
        fail(SenseKey.illegalRequest, .invalidFieldInCDB, field: SenseData.fieldPointer(byte: byte, bit: bit))
    }

    mutating func invalidParameter(byte: Int, bit: Int? = nil) -> SCSIAction {
        fail(SenseKey.illegalRequest, .invalidFieldInParameterList,
             field: SenseData.fieldPointer(byte: byte, bit: bit, inCDB: false))
    }

    mutating func invalidOpcode() -> SCSIAction {
        fail(SenseKey.illegalRequest, .invalidOperationCode, field: SenseData.fieldPointer(byte: 0))
    }

    mutating func lbaOutOfRange() -> SCSIAction { fail(SenseKey.illegalRequest, .lbaOutOfRange) }

    mutating func writeProtected() -> SCSIAction { fail(SenseKey.dataProtect, .writeProtected) }

    mutating func reservationConflict() -> SCSIAction {
        phase = .idle
        hasSense = false
        return .complete(status: SCSIStatus.reservationConflict, dataInLength: 0, residual: .none)
    }

    /// A state-machine event that cannot happen in the phase the task is in: a transport bug. Answer
    /// it rather than trap.
    mutating func internalError() -> SCSIAction { fail(SenseKey.hardwareError, .internalTargetFailure) }

    /// The residual for a command that wanted `wanted` bytes against the Expected Data Transfer Length.
    func residual(wanted: UInt64) -> Residual {
        let edtl = UInt64(expectedLength)
        if wanted > edtl { return .overflow(UInt32(truncatingIfNeeded: min(wanted - edtl, UInt64(UInt32.max)))) }
        if wanted < edtl { return .underflow(UInt32(truncatingIfNeeded: edtl - wanted)) }
        return .none
    }

    /// Complete GOOD for a data-in command that generated `generated` bytes in the buffer, limited by
    /// the CDB allocation length and the EDTL.
    mutating func completeDataIn(generated: Int, allocationLength: Int) -> SCSIAction {
        let wanted = max(0, min(generated, allocationLength))
        let limit = readBit ? Int(expectedLength) : 0
        let sent = min(wanted, limit)
        phase = .idle
        return .complete(status: SCSIStatus.good, dataInLength: sent, residual: residual(wanted: UInt64(wanted)))
    }

    /// Complete GOOD for a command without data-in.
    mutating func completeGood(status: UInt8 = SCSIStatus.good) -> SCSIAction {
        phase = .idle
        return .complete(status: status, dataInLength: 0, residual: residual(wanted: wantedBytes))
    }

    /// Map a store failure to sense (see StoreOp.swift).
    mutating func storeFailed(_ e: StoreError, reading: Bool) -> SCSIAction {
        switch e {
        case .mediumError:
            return fail(SenseKey.mediumError, reading ? .unrecoveredReadError : .writeError)
        case .noSpace: return fail(SenseKey.dataProtect, .spaceAllocationFailedWriteProtect)
        case .writeProtected: return fail(SenseKey.dataProtect, .writeProtected)
        case .notSupported: return invalidOpcode()
        case .unavailable: return fail(SenseKey.notReady, .logicalUnitNotReady)
        case .outOfRange: return lbaOutOfRange()
        case .stateChanged: return sharedStateChanged()
        }
    }

    /// Common handling of a StoreResult that is not success. Returns nil when the result is `.ok`.
    mutating func checkStore(_ r: StoreResult, reading: Bool) -> SCSIAction? {
        switch r {
        case .ok: return nil
        case .extent: return nil
        case .failed(let e): return storeFailed(e, reading: reading)
        }
    }

    /// The largest whole-block chunk that fits `bytes` of buffer.
    @inline(__always)
    func chunkCapacity(_ bytes: Int) -> Int { max(blockSize, bytes - bytes % blockSize) }
}

/// Per-command EXTENDED COPY progress (one block-to-block segment at a time).
public struct ExtendedCopyProgress {
    var listID: UInt8 = 0
    var listIDUsage: UInt8 = 0
    /// LUN numbers the (at most two) target descriptors resolved to.
    var target0LUN: UInt64 = 0
    var target1LUN: UInt64 = 0
    var sourceLUN: UInt64 = 0
    var destinationLUN: UInt64 = 0
    var sourceOffset: UInt64 = 0
    var destinationOffset: UInt64 = 0
    var remainingBytes: UInt64 = 0
    var chunkBytes = 0
    var transferred: UInt64 = 0
    var segmentIndex = 0
    var segmentCount = 0
    var segmentListOffset = 0
}
