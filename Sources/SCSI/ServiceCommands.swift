// The small commands: TEST UNIT READY, REQUEST SENSE, READ CAPACITY, REPORT LUNS, SYNCHRONIZE CACHE,
// START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL, READ DEFECT DATA, PRE-FETCH.

import Floor
import Store
extension SCSITask {
    /// tgt's spc_test_unit: an offline LU is NOT READY, its medium absent if removable.
    mutating func testUnitReady() -> SCSIAction {
        // A LU shared with other gateways: a reset through another one reaches this path's nexuses as a unit
        // attention once this gateway reads the record, and TEST UNIT READY is what initiators and multipath
        // checkers poll a path with. So it reads the record first (one GET_VDI_ATTR when nothing changed),
        // then takes the unit attention check again (docs/CLUSTER-STATE.md). Not while the store has lost its
        // sheep node: the read would wait for the node, and ALUA answers for the path then.
        if phase != .sharedApply, sharesReservations, lun?.reachability?.downSinceNanos ?? 0 == 0 {
            phase = .sharedRecheck
            return .store(.shareState(target: .own, publish: false))
        }
        if lunFlags & LUNState.flagOffline == 0 { return completeGood() }
        return fail(SenseKey.notReady, lunFlags & LUNState.flagMediumNotPresent != 0 ? .mediumNotPresent : .becomingReady)
    }

    /// REQUEST SENSE (SPC-4 §6.29). iSCSI delivers sense with the failing status (autosense), so the only
    /// thing left to report here is a pending unit attention or, for a missing LU, LOGICAL UNIT NOT
    /// SUPPORTED. The DESC bit chooses the format, as SPC-4 says, whatever the LU's sense_format.
    mutating func requestSense(buffer: UnsafeMutableRawBufferPointer, pending: ASC?, lunMissing: Bool) -> SCSIAction {
        let allocation = Int(cdb[4])
        var data = SenseData()
        data.descriptorFormat = cdb[1] & 0x01 != 0
        if lunMissing {
            data.key = SenseKey.illegalRequest
            data.asc = .logicalUnitNotSupported
        } else if let pending {
            data.key = SenseKey.unitAttention
            data.asc = pending
        } else {
            sanitizeSense(into: &data)
        }
        guard let base = buffer.baseAddress, buffer.count >= data.length else { return internalError() }
        data.render(to: base)
        return completeDataIn(generated: data.length, allocationLength: allocation)
    }

    mutating func readCapacity10(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        guard let lun else { return internalError() }
        let pmi = cdb[8] & 0x01 != 0
        if !pmi && cdb.u32(2) != 0 { return invalidField(byte: 2) }
        let last = lun.blockCount == 0 ? 0 : lun.blockCount - 1
        buffer.put32(0, last > 0xFFFF_FFFE ? 0xFFFF_FFFF : UInt32(last))
        buffer.put32(4, UInt32(lun.blockSize))
        return completeDataIn(generated: 8, allocationLength: 8)
    }

    mutating func readCapacity16(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        guard let lun else { return internalError() }
        let allocation = Int(cdb.u32(10))
        let n = 32
        buffer.zero(0, n)
        buffer.put64(0, lun.blockCount == 0 ? 0 : lun.blockCount - 1)
        buffer.put32(8, UInt32(lun.blockSize))
        buffer.put8(13, lun.presentation.lbppbe & 0x0F)
        var b14 = UInt8(truncatingIfNeeded: lun.presentation.lowestAlignedLBA >> 8) & 0x3F
        buffer.put8(15, UInt8(truncatingIfNeeded: lun.presentation.lowestAlignedLBA))
        if lun.capabilities.canDiscard {
            b14 |= 0x80                                        // LBPME
            if lun.capabilities.discardZeroes { b14 |= 0x40 }  // LBPRZ
        }
        buffer.put8(14, b14)
        return completeDataIn(generated: n, allocationLength: allocation)
    }

    /// REPORT LUNS (SPC-4 §6.33): SELECT REPORT 0 and 2 list every LU of the target, 1 (well-known LUs
    /// only) an empty list.
    mutating func reportLUNs(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        guard let target else { return internalError() }
        /// SPC-4: an allocation length below 16 is an error.
        let minimumAllocationBytes = 16
        let select = cdb[2]
        if select > 2 { return invalidField(byte: 2) }
        let allocation = Int(cdb.u32(6))
        if allocation < minimumAllocationBytes { return invalidField(byte: 6) }
        let fit = (buffer.count - 8) / 8
        var count = 0
        if select != 1 {
            // The emulated controller is LUN 0, listed first (it exists only where no LU is LUN 0).
            if target.controllerLUN0, target.luns.first?.number != 0, count < fit {
                buffer.put64(8, 0)
                count += 1
            }
            for l in target.luns where count < fit {
                let n = l.number
                // Peripheral addressing below 256, flat space addressing up to 16383.
                var v: UInt64
                if n < 256 { v = n << 48 } else if n < 0x4000 { v = (0x4000 | n) << 48 } else { continue }
                v = v & 0xFFFF_0000_0000_0000
                buffer.put64(8 + 8 * count, v)
                count += 1
            }
        }
        buffer.put32(0, UInt32(count * 8))
        buffer.put32(4, 0)
        return completeDataIn(generated: 8 + 8 * count, allocationLength: allocation)
    }

    mutating func synchronizeCache() -> SCSIAction {
        guard let lun else { return internalError() }
        let (lba, n): (UInt64, UInt64) = opcode == Opcode.synchronizeCache16
            ? (cdb.u64(2), UInt64(cdb.u32(10))) : (UInt64(cdb.u32(2)), UInt64(cdb.u16(7)))
        if !rangeIsValid(lba: lba, blocks: n, capacity: lun.blockCount) { return lbaOutOfRange() }
        auxFlag = false
        auxByte = SCSIStatus.good
        phase = .singleStore
        return .store(.flush(target: .own))
    }

    /// START STOP UNIT: nothing to spin. LOEJ ejects or loads a removable LU's medium as tgt's
    /// spc_start_stop does. While a nexus prevents removal both are refused (tgt refuses only the eject;
    /// libiscsi's PreventAllow.Eject expects the load refused too). A stop flushes (unless NO_FLUSH) so
    /// an initiator that powers down after it finds its data durable.
    mutating func startStopUnit() -> SCSIAction {
        let b4 = cdb[4]
        let start = b4 & 0x01 != 0
        let loadEject = b4 & 0x02 != 0
        let noFlush = b4 & 0x04 != 0
        let powerCondition = b4 >> 4
        if loadEject, powerCondition == 0, let lun, lun.presentation.removable {
            if start && lun.state.isRemovalPrevented { return fail(SenseKey.illegalRequest, .mediumRemovalPrevented) }
            if !lun.state.setOnline(start) {
                let present = lun.state.isOnline
                return fail(present ? SenseKey.illegalRequest : SenseKey.notReady, .mediumRemovalPrevented)
            }
        }
        if !start && !noFlush && powerCondition == 0 {
            auxFlag = false
            auxByte = SCSIStatus.good
            phase = .singleStore
            return .store(.flush(target: .own))
        }
        return completeGood()
    }

    /// PREVENT ALLOW MEDIUM REMOVAL: remembered per I_T nexus, as tgt does; while any nexus prevents
    /// removal, an eject and the admin's online=0 are refused.
    mutating func preventAllowMediumRemoval() -> SCSIAction {
        guard let lun, let nexus else { return internalError() }
        lun.state.setPreventsRemoval(cdb[4] & 0x03 != 0, nexusID: nexus.id)
        return completeGood()
    }

    /// READ DEFECT DATA: a virtual disk has no defects; report an empty list in the requested format.
    mutating func readDefectData(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        if opcode == Opcode.readDefectData10 {
            let allocation = Int(cdb.u16(7))
            buffer.put8(0, 0)
            buffer.put8(1, cdb[2] & 0x1F)
            buffer.put16(2, 0)
            return completeDataIn(generated: 4, allocationLength: allocation)
        }
        let allocation = Int(cdb.u32(6))
        buffer.zero(0, 8)
        buffer.put8(1, cdb[1] & 0x1F)
        return completeDataIn(generated: 8, allocationLength: allocation)
    }
}
