// Command dispatch by opcode, and the checks that come before any command runs: missing LUN, unit
// attentions and reservation conflicts (the slow path, taken only when LUNState says something is
// pending).

import Floor
import Store
extension SCSITask {
    /// The LUN number names no logical unit (SPC-4 §4.5.6 / SAM-5 §5.9.6): INQUIRY answers with
    /// peripheral qualifier 011b, REPORT LUNS and REQUEST SENSE work, everything else gets LOGICAL UNIT
    /// NOT SUPPORTED.
    @usableFromInline mutating func startWithoutLUN(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        if addressesControllerLUN { return startOnControllerLUN(buffer: buffer) }
        switch opcode {
        case Opcode.inquiry: return inquiry(buffer: buffer)
        case Opcode.reportLUNs: return reportLUNs(buffer: buffer)
        case Opcode.requestSense: return requestSense(buffer: buffer, pending: nil, lunMissing: true)
        default: return fail(SenseKey.illegalRequest, .logicalUnitNotSupported)
        }
    }

    /// Unit attentions and reservations, under the LU lock.
    @usableFromInline mutating func startSlow(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        guard let lun, let nexus, let target else { return internalError() }
        let state = lun.state
        // SPC-4 §5.14: INQUIRY and REPORT LUNS neither report nor clear a UA (REPORT LUNS clears the
        // LUN-inventory one); REQUEST SENSE reports it as its data.
        let consume: Bool
        switch opcode {
        case Opcode.inquiry, Opcode.reportLUNs: consume = false
        default: consume = true
        }
        let ua = state.admit(nexus: nexus, lunGeneration: target.lunGeneration, consume: consume,
                             clearsLUNsChanged: opcode == Opcode.reportLUNs)
        if let ua {
            if opcode == Opcode.requestSense { return requestSense(buffer: buffer, pending: ua, lunMissing: false) }
            return fail(SenseKey.unitAttention, ua)
        }
        if state.flags & (LUNState.flagPortInactive | LUNState.flagBackingUnavailable) != 0, let asc = aluaRefusal() {
            return fail(SenseKey.notReady, asc)
        }
        if state.flags & LUNState.flagReservationHeld != 0, reservationConflicts(state: state, nexus: nexus) {
            return sharedConflict()
        }
        return dispatch(buffer: buffer)
    }

    @usableFromInline mutating func dispatch(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        // Bits of the flags already loaded: the hot path pays one predicted branch for removable media and
        // sanitize.
        if _slowPath(lunFlags & LUNState.flagsRefusingCommands != 0), let refusal = mediumRefusal() {
            return refusal
        }
        switch opcode {
        // Hot path first.
        case Opcode.read10, Opcode.read16, Opcode.read12, Opcode.read6: return startRead(buffer: buffer)
        case Opcode.write10, Opcode.write16, Opcode.write12, Opcode.write6: return startWrite(buffer: buffer)
        case Opcode.testUnitReady: return testUnitReady()
        case Opcode.requestSense: return requestSense(buffer: buffer, pending: nil, lunMissing: false)
        case Opcode.inquiry: return inquiry(buffer: buffer)
        case Opcode.readCapacity10: return readCapacity10(buffer: buffer)
        case Opcode.serviceActionIn16:
            switch cdb[1] & 0x1F {
            case ServiceAction.readCapacity16: return readCapacity16(buffer: buffer)
            case ServiceAction.getLBAStatus: return startGetLBAStatus(buffer: buffer)
            default: return invalidField(byte: 1, bit: 4)
            }
        case Opcode.synchronizeCache10, Opcode.synchronizeCache16: return synchronizeCache()
        case Opcode.modeSense6, Opcode.modeSense10: return modeSense(buffer: buffer)
        case Opcode.modeSelect6, Opcode.modeSelect10: return startModeSelect(buffer: buffer)
        case Opcode.reportLUNs: return reportLUNs(buffer: buffer)
        case Opcode.startStopUnit: return startStopUnit()
        case Opcode.preventAllowMediumRemoval: return preventAllowMediumRemoval()
        case Opcode.verify10, Opcode.verify12, Opcode.verify16: return startVerify(buffer: buffer)
        case Opcode.writeAndVerify10, Opcode.writeAndVerify12, Opcode.writeAndVerify16:
            return startWrite(buffer: buffer)
        case Opcode.orWrite16: return startOrWrite(buffer: buffer)
        case Opcode.compareAndWrite: return startCompareAndWrite(buffer: buffer)
        case Opcode.writeSame10, Opcode.writeSame16: return startWriteSame(buffer: buffer)
        case Opcode.unmap: return startUnmap(buffer: buffer)
        case Opcode.prefetch10, Opcode.prefetch16: return startPrefetch()
        case Opcode.maintenanceIn:
            if cdb[1] & 0x1F == ServiceAction.reportSupportedOperationCodes {
                return reportSupportedOperationCodes(buffer: buffer)
            }
            if cdb[1] & 0x1F == ServiceAction.reportTargetPortGroups { return reportTargetPortGroups(buffer: buffer) }
            return invalidField(byte: 1, bit: 4)
        case Opcode.maintenanceOut:
            if cdb[1] & 0x1F == ServiceAction.setTargetPortGroups { return startSetTargetPortGroups() }
            return invalidField(byte: 1, bit: 4)
        case Opcode.reserve6, Opcode.reserve10: return reserve()
        case Opcode.release6, Opcode.release10: return release()
        case Opcode.persistentReserveIn: return persistentReserveIn(buffer: buffer)
        case Opcode.persistentReserveOut: return startPersistentReserveOut(buffer: buffer)
        case Opcode.extendedCopy: return startExtendedCopy(buffer: buffer)
        case Opcode.receiveCopyResults: return receiveCopyResults(buffer: buffer)
        case Opcode.readDefectData10, Opcode.readDefectData12: return readDefectData(buffer: buffer)
        case Opcode.sanitize: return startSanitize()
        default: return invalidOpcode()
        }
    }

    /// A removable LU without its medium, or a sanitize running or failed: what this command gets instead
    /// of running, or nil when it runs.
    mutating func mediumRefusal() -> SCSIAction? {
        if lunFlags & (LUNState.flagSanitizing | LUNState.flagSanitizeFailed) != 0, let refusal = sanitizeRefusal() {
            return refusal
        }
        if lunFlags & LUNState.flagMediumNotPresent != 0, accessesMedium { return fail(SenseKey.notReady, .mediumNotPresent) }
        return nil
    }

    /// The commands tgt's sbc.c refuses with MEDIUM NOT PRESENT while a removable LU is offline: those
    /// that read, write or size the medium.
    var accessesMedium: Bool {
        switch opcode {
        case Opcode.read6, Opcode.read10, Opcode.read12, Opcode.read16,
             Opcode.write6, Opcode.write10, Opcode.write12, Opcode.write16,
             Opcode.writeAndVerify10, Opcode.writeAndVerify12, Opcode.writeAndVerify16,
             Opcode.verify10, Opcode.verify12, Opcode.verify16, Opcode.orWrite16, Opcode.compareAndWrite,
             Opcode.writeSame10, Opcode.writeSame16, Opcode.unmap, Opcode.prefetch10, Opcode.prefetch16,
             Opcode.synchronizeCache10, Opcode.synchronizeCache16, Opcode.readCapacity10,
             Opcode.serviceActionIn16, Opcode.extendedCopy:
            return true
        default:
            return false
        }
    }
}
