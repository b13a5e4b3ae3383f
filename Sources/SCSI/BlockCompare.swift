// Commands that combine data-out with a read of the medium: VERIFY (BYTCHK), ORWRITE, COMPARE AND
// WRITE; and WRITE SAME and PRE-FETCH. The buffer is split: data-out lands at its start, the medium is read
// into its second half (or third, for COMPARE AND WRITE), so one buffer serves any length.

import Floor
import Store
import ISCSIWire
import Glibc

extension SCSITask {
    /// Half of the buffer, in whole blocks: the per-chunk size when data-out and a read share the buffer.
    @inline(__always)
    func halfChunk(_ buffer: UnsafeMutableRawBufferPointer) -> Int {
        let half = buffer.count / 2
        return max(blockSize, half - half % blockSize)
    }

    /// Index of the first differing byte of two buffer regions, or nil.
    func firstDifference(_ b: UnsafeMutableRawBufferPointer, _ x: Int, _ y: Int, count: Int) -> Int? {
        guard let base = b.baseAddress, count > 0, x + count <= b.count, y + count <= b.count else { return nil }
        if memcmp(base + x, base + y, count) == 0 { return nil }
        var i = 0
        while i < count {
            if b[x + i] != b[y + i] { return i }
            i += 1
        }
        return nil
    }

    // MARK: VERIFY 10/12/16

    mutating func startVerify(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        if cdb[1] & 0xE0 != 0 { return invalidField(byte: 1, bit: 7) }       // VRPROTECT
        let bytchk = (cdb[1] >> 1) & 0x03
        if bytchk == 2 { return invalidField(byte: 1, bit: 2) }
        let (lba, n) = decodeBlockRange()
        if n > maxTransferBlocks { return invalidField(byte: opcode == Opcode.verify16 ? 10 : opcode == Opcode.verify12 ? 6 : 7) }
        if !rangeIsValid(lba: lba, blocks: n, capacity: capacityBlocks) { return lbaOutOfRange() }
        self.lba = lba
        let bs = UInt64(blockSize)
        switch bytchk {
        case 0:
            // Medium verification: a virtual medium has nothing to scan.
            wantedBytes = 0
            return completeGood()
        case 1:
            wantedBytes = n &* bs
            let available = writeBit ? UInt64(expectedLength) : 0
            totalBytes = min(wantedBytes, available / bs * bs)
            auxFlag = false
        default:
            // BYTCHK 11b: one block of data-out is compared with every block of the range.
            wantedBytes = n == 0 ? 0 : bs
            if n > 0 && (!writeBit || UInt64(expectedLength) < bs) { return invalidField(byte: 1, bit: 2) }
            totalBytes = n &* bs
            auxFlag = true
        }
        doneBytes = 0
        if totalBytes == 0 { return completeGood() }
        if auxFlag {
            chunkBytes = blockSize
            phase = .verifyData
            return .dataOut(offset: 0, length: blockSize)
        }
        return requestVerifyChunk(buffer: buffer)
    }

    mutating func requestVerifyChunk(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        chunkBytes = Int(min(totalBytes - doneBytes, UInt64(halfChunk(buffer))))
        phase = .verifyData
        return .dataOut(offset: Int(doneBytes), length: chunkBytes)
    }

    mutating func verifyDataReceived(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        if auxFlag { chunkBytes = Int(min(totalBytes - doneBytes, UInt64(halfChunk(buffer)))) }
        return issueVerifyRead(buffer: buffer)
    }

    mutating func issueVerifyRead(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        phase = .verifyRead
        return .store(.read(target: .own, offset: lba &* UInt64(blockSize) &+ doneBytes, length: chunkBytes,
                            bufferOffset: halfChunk(buffer)))
    }

    mutating func verifyReadCompleted(_ r: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        if let fail = checkStore(r, reading: true) { return fail }
        let half = halfChunk(buffer)
        if auxFlag {
            var off = 0
            while off < chunkBytes {
                if let i = firstDifference(buffer, 0, half + off, count: blockSize) {
                    return fail(SenseKey.miscompare, .miscompareDuringVerify, information: doneBytes + UInt64(off + i))
                }
                off += blockSize
            }
        } else if let i = firstDifference(buffer, 0, half, count: chunkBytes) {
            return fail(SenseKey.miscompare, .miscompareDuringVerify, information: doneBytes + UInt64(i))
        }
        doneBytes &+= UInt64(chunkBytes)
        if doneBytes >= totalBytes { return completeGood() }
        if auxFlag {
            chunkBytes = Int(min(totalBytes - doneBytes, UInt64(half)))
            return issueVerifyRead(buffer: buffer)
        }
        return requestVerifyChunk(buffer: buffer)
    }

    // MARK: ORWRITE(16)

    mutating func startOrWrite(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        if cdb[1] & 0xE0 != 0 { return invalidField(byte: 1, bit: 7) }       // ORPROTECT
        let (lba, n) = decodeBlockRange()
        if n > maxTransferBlocks { return invalidField(byte: 10) }
        if !rangeIsValid(lba: lba, blocks: n, capacity: capacityBlocks) { return lbaOutOfRange() }
        if isWriteProtected { return writeProtected() }
        self.lba = lba
        fua = cdb[1] & 0x08 != 0 || writeCacheDisabled
        let bs = UInt64(blockSize)
        wantedBytes = n &* bs
        totalBytes = min(wantedBytes, (writeBit ? UInt64(expectedLength) : 0) / bs * bs)
        doneBytes = 0
        if totalBytes == 0 { return completeGood() }
        return requestOrWriteChunk(buffer: buffer)
    }

    mutating func requestOrWriteChunk(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        chunkBytes = Int(min(totalBytes - doneBytes, UInt64(halfChunk(buffer))))
        phase = .orData
        return .dataOut(offset: Int(doneBytes), length: chunkBytes)
    }

    mutating func orWriteDataReceived(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        phase = .orRead
        return .store(.read(target: .own, offset: lba &* UInt64(blockSize) &+ doneBytes, length: chunkBytes,
                            bufferOffset: halfChunk(buffer)))
    }

    mutating func orWriteReadCompleted(_ r: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        if let fail = checkStore(r, reading: true) { return fail }
        let half = halfChunk(buffer)
        guard chunkBytes <= half, half + chunkBytes <= buffer.count else { return internalError() }
        for i in 0 ..< chunkBytes { buffer[i] |= buffer[half + i] }
        phase = .orWrite
        return .store(.write(target: .own, offset: lba &* UInt64(blockSize) &+ doneBytes, length: chunkBytes,
                             bufferOffset: 0, fua: fua))
    }

    mutating func orWriteWriteCompleted(_ r: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        if let fail = checkStore(r, reading: false) { return fail }
        doneBytes &+= UInt64(chunkBytes)
        if doneBytes < totalBytes { return requestOrWriteChunk(buffer: buffer) }
        return completeGood()
    }

    // MARK: COMPARE AND WRITE

    mutating func startCompareAndWrite(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        if cdb[1] & 0xE0 != 0 { return invalidField(byte: 1, bit: 7) }       // WRPROTECT
        let (lba, n) = decodeBlockRange()
        if n > UInt64(maxCompareAndWriteBlocks(bufferBytes: buffer.count)) { return invalidField(byte: 13) }
        if !rangeIsValid(lba: lba, blocks: n, capacity: capacityBlocks) { return lbaOutOfRange() }
        let half = n &* UInt64(blockSize)
        wantedBytes = 2 * half
        // SBC-4 §5.3: the Data-Out Buffer holds exactly the verify and write instances (none for zero blocks).
        if (n > 0 && !writeBit) || UInt64(expectedLength) != wantedBytes { return invalidField(byte: 13) }
        if n == 0 { return completeGood() }
        if isWriteProtected { return writeProtected() }
        self.lba = lba
        fua = cdb[1] & 0x08 != 0 || writeCacheDisabled
        chunkBytes = Int(half)
        // A multipath sheep LU: the read, compare and write also run inside the section shared with the other
        // gateways (docs/CLUSTER-STATE.md). Everything else has only the LU's own gate (FullFeature).
        auxFlag = sharesReservations
        phase = .cawData
        return .dataOut(offset: 0, length: 2 * chunkBytes)
    }

    mutating func compareAndWriteDataReceived(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        if auxFlag {
            phase = .cawEnter
            return .store(.compareSection(target: .own, step: .enter))
        }
        return compareAndWriteRead()
    }

    mutating func compareAndWriteRead() -> SCSIAction {
        phase = .cawRead
        return .store(.read(target: .own, offset: lba &* UInt64(blockSize), length: chunkBytes,
                            bufferOffset: 2 * chunkBytes))
    }

    /// Entered the section (or could not: another gateway held it for longer than a COMPARE AND WRITE waits,
    /// or sheep refused; the initiator retries on BUSY).
    mutating func compareAndWriteEntered(_ r: StoreResult) -> SCSIAction {
        if case .failed = r {
            phase = .idle
            hasSense = false
            return .complete(status: SCSIStatus.busy, dataInLength: 0, residual: .none)
        }
        return compareAndWriteRead()
    }

    mutating func compareAndWriteReadCompleted(_ r: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        if let fail = checkStore(r, reading: true) { return leaveCompareSection(fail) }
        if let i = firstDifference(buffer, 0, 2 * chunkBytes, count: chunkBytes) {
            return leaveCompareSection(fail(SenseKey.miscompare, .miscompareDuringVerify, information: UInt64(i)))
        }
        if auxFlag {
            // The write must leave before the lease runs out, or another gateway may be in the section by then.
            phase = .cawConfirm
            return .store(.compareSection(target: .own, step: .confirm))
        }
        return compareAndWriteWrite()
    }

    mutating func compareAndWriteConfirmed(_ r: StoreResult) -> SCSIAction {
        if case .failed = r {
            return leaveCompareSection(fail(SenseKey.abortedCommand, .commandTimeoutDuringProcessing))
        }
        return compareAndWriteWrite()
    }

    mutating func compareAndWriteWrite() -> SCSIAction {
        phase = .cawWrite
        return .store(.write(target: .own, offset: lba &* UInt64(blockSize), length: chunkBytes,
                             bufferOffset: chunkBytes, fua: fua))
    }

    mutating func compareAndWriteWriteCompleted(_ r: StoreResult) -> SCSIAction {
        if let fail = checkStore(r, reading: false) { return leaveCompareSection(fail) }
        return leaveCompareSection(completeGood())
    }

    /// In the shared section, the command's outcome (`done`, a completion) waits until the section is left;
    /// its status is kept in `auxByte` and its sense in the task meanwhile.
    mutating func leaveCompareSection(_ done: SCSIAction) -> SCSIAction {
        guard auxFlag, case .complete(let status, _, _) = done else { return done }
        auxByte = status
        phase = .cawLeave
        return .store(.compareSection(target: .own, step: .leave))
    }

    mutating func compareAndWriteLeft() -> SCSIAction {
        phase = .idle
        let good = auxByte == SCSIStatus.good
        return .complete(status: auxByte, dataInLength: 0, residual: good ? residual(wanted: wantedBytes) : .none)
    }

    // MARK: WRITE SAME 10/16

    var maxWriteSameBlocks: UInt64 { BlockLimits.maxWriteSameBytes / UInt64(blockSize) }

    mutating func startWriteSame(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        guard let lun else { return internalError() }
        let b1 = cdb[1]
        if b1 & 0xE0 != 0 { return invalidField(byte: 1, bit: 7) }            // WRPROTECT
        let anchor = b1 & 0x10 != 0
        let unmap = b1 & 0x08 != 0
        let ndob = opcode == Opcode.writeSame16 && b1 & 0x01 != 0
        // ANCHOR needs UNMAP, and anchored LBAs are not supported (ANC_SUP is zero).
        if anchor { return invalidField(byte: 1, bit: 4) }
        var (lba, n) = decodeBlockRange()
        if lba > lun.blockCount { return lbaOutOfRange() }
        // WSNZ is zero: a zero length means "to the end of the medium".
        if n == 0 { n = lun.blockCount - lba }
        if n > maxWriteSameBlocks { return invalidField(byte: opcode == Opcode.writeSame16 ? 10 : 7) }
        if !rangeIsValid(lba: lba, blocks: n, capacity: capacityBlocks) { return lbaOutOfRange() }
        // A write-protected LU refuses WRITE SAME with DATA PROTECT whether or not it could unmap (a read-only
        // LU does not advertise LBPWS), as libiscsi's ReadOnly.ReadOnlySBC expects.
        if isWriteProtected { return writeProtected() }
        if unmap && !lun.capabilities.canDiscard { return invalidField(byte: 1, bit: 3) }
        let bs = UInt64(blockSize)
        if !ndob && (!writeBit || UInt64(expectedLength) != bs) {
            // The Data-Out Buffer is exactly one logical block.
            return invalidField(byte: opcode == Opcode.writeSame16 ? 10 : 7)
        }
        wantedBytes = ndob ? 0 : bs
        self.lba = lba
        fua = writeCacheDisabled
        auxFlag = unmap
        totalBytes = n &* bs
        doneBytes = 0
        if n == 0 { return completeGood() }
        if ndob {
            buffer.zero(0, blockSize)
            return writeSameDataReceived(buffer: buffer)
        }
        phase = .wsData
        return .dataOut(offset: 0, length: blockSize)
    }

    mutating func writeSameDataReceived(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        // UNMAP asks the device server to deallocate the range; with LBPRZ it then reads back as zeros
        // whatever the Data-Out block held. This is what initiators expect (libiscsi's
        // WriteSame10.UnmapUntilEnd sends a block of 0xFF with UNMAP and checks for zeros), and what tgt
        // and LIO do. A store that refuses the discard gets the block written instead.
        if auxFlag {
            phase = .wsDiscard
            return .store(.discard(target: .own, offset: lba &* UInt64(blockSize), length: totalBytes))
        }
        // Replicate the block across as much of the buffer as one chunk needs.
        let cap = chunkCapacity(buffer.count)
        let fill = Int(min(UInt64(cap), totalBytes))
        if let base = buffer.baseAddress {
            var have = blockSize
            while have < fill {
                let n = min(have, fill - have)
                (base + have).copyMemory(from: base, byteCount: n)
                have += n
            }
        }
        return nextWriteSameChunk(buffer: buffer)
    }

    mutating func nextWriteSameChunk(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        chunkBytes = Int(min(totalBytes - doneBytes, UInt64(chunkCapacity(buffer.count))))
        phase = .wsWrite
        return .store(.write(target: .own, offset: lba &* UInt64(blockSize) &+ doneBytes, length: chunkBytes,
                             bufferOffset: 0, fua: fua))
    }

    mutating func writeSameWriteCompleted(_ r: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        if let fail = checkStore(r, reading: false) { return fail }
        doneBytes &+= UInt64(chunkBytes)
        if doneBytes < totalBytes { return nextWriteSameChunk(buffer: buffer) }
        return completeGood()
    }

    mutating func writeSameDiscardCompleted(_ r: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        if case .failed(.notSupported) = r {
            // The store cannot deallocate this range after all: write the block instead.
            auxFlag = false
            return writeSameDataReceived(buffer: buffer)
        }
        if let fail = checkStore(r, reading: false) { return fail }
        return completeGood()
    }

    // MARK: PRE-FETCH 10/16

    /// PRE-FETCH is a hint. It completes GOOD rather than CONDITION MET: a page cache gives no promise that
    /// the blocks stay resident, and SBC-3 allows GOOD when it cannot.
    mutating func startPrefetch() -> SCSIAction {
        guard let lun else { return internalError() }
        let (lba, n) = decodeBlockRange()
        if !rangeIsValid(lba: lba, blocks: n, capacity: capacityBlocks) { return lbaOutOfRange() }
        let bs = UInt64(blockSize)
        let count = n == 0 ? lun.blockCount - lba : n
        if count == 0 { return completeGood() }
        auxFlag = true
        auxByte = SCSIStatus.good
        phase = .singleStore
        return .store(.prefetch(target: .own, offset: lba &* bs, length: count &* bs))
    }
}

