// Thin provisioning: UNMAP and GET LBA STATUS (SBC-3 §5.28, §5.7).

import Floor
import Store
public enum LBAStatus {
    /// Descriptors one GET LBA STATUS returns at most; the initiator asks again from where it stopped.
    static let maxDescriptors = 64
    /// Store queries one GET LBA STATUS makes at most, so a store that reports tiny alternating extents
    /// cannot make one command run long. Every query advances at least one block.
    static let maxQueries = 256
    static let descriptorBytes = 16
    static let headerBytes = 8
}

extension SCSITask {
    // MARK: UNMAP

    mutating func startUnmap(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        guard let lun else { return internalError() }
        if !lun.capabilities.canDiscard { return invalidOpcode() }           // LBPU is zero
        if cdb[1] & 0x01 != 0 { return invalidField(byte: 1, bit: 0) }      // ANCHOR: ANC_SUP is zero
        let length = Int(cdb.u16(7))
        if length == 0 { return completeGood() }
        if length < 8 { return fail(SenseKey.illegalRequest, .parameterListLengthError) }
        if isWriteProtected { return writeProtected() }
        return requestParameterList(length: length)
    }

    /// Validate the whole list before deallocating anything, then discard descriptor by descriptor. The
    /// list stays in the buffer meanwhile: discards do not touch it.
    mutating func unmapListReceived(_ list: UnsafeMutableRawBufferPointer, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        if list.count < 8 { return fail(SenseKey.illegalRequest, .parameterListLengthError) }
        let descriptorLength = Int(list.get16(2))
        if 8 + descriptorLength > list.count { return fail(SenseKey.illegalRequest, .parameterListLengthError) }
        let count = descriptorLength / 16
        if count > BlockLimits.maxUnmapDescriptors { return invalidParameter(byte: 2) }
        let maxBlocks = BlockLimits.maxUnmapBytes / UInt64(blockSize)
        for d in 0 ..< count {
            let p = 8 + 16 * d
            let lba = list.get64(p)
            let n = UInt64(list.get32(p + 8))
            if n > maxBlocks { return invalidParameter(byte: p + 8) }
            if !rangeIsValid(lba: lba, blocks: n, capacity: capacityBlocks) { return lbaOutOfRange() }
        }
        auxIndex = 0
        auxCount = count
        return nextUnmapDescriptor(list: list)
    }

    mutating func nextUnmapDescriptor(list: UnsafeMutableRawBufferPointer) -> SCSIAction {
        let bs = UInt64(blockSize)
        while auxIndex < auxCount {
            let p = 8 + 16 * auxIndex
            auxIndex += 1
            let lba = list.get64(p)
            let n = UInt64(list.get32(p + 8))
            if n == 0 { continue }
            phase = .unmapDiscard
            return .store(.discard(target: .own, offset: lba &* bs, length: n &* bs))
        }
        return completeGood()
    }

    mutating func unmapDiscardCompleted(_ r: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        if let fail = checkStore(r, reading: false) { return fail }
        let list = UnsafeMutableRawBufferPointer(rebasing: buffer[0 ..< min(chunkBytes, buffer.count)])
        return nextUnmapDescriptor(list: list)
    }

    // MARK: GET LBA STATUS

    mutating func startGetLBAStatus(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        guard let lun else { return internalError() }
        let lba = cdb.u64(2)
        let allocation = Int(cdb.u32(10))
        if lba >= lun.blockCount { return lbaOutOfRange() }
        self.lba = lba
        // Descriptors that fit the allocation length (at least one is built; the reply is truncated).
        let fit = max(1, (min(allocation, buffer.count) - LBAStatus.headerBytes) / LBAStatus.descriptorBytes)
        auxCount = min(LBAStatus.maxDescriptors, fit)
        auxIndex = 0          // descriptors built
        auxLength = 0         // queries made
        auxOffset = lba       // next LBA to ask about
        wantedBytes = UInt64(allocation)
        if !lun.capabilities.canReportMapping {
            // The store cannot tell: everything is mapped.
            appendLBAStatus(buffer, lba: lba, blocks: lun.blockCount - lba, mapped: true)
            return finishLBAStatus(buffer)
        }
        return nextLBAStatusQuery()
    }

    mutating func nextLBAStatusQuery() -> SCSIAction {
        guard let lun else { return internalError() }
        let remaining = (lun.blockCount - auxOffset) &* UInt64(blockSize)
        // One descriptor covers at most 2^32-1 blocks.
        let limit = min(remaining, UInt64(UInt32.max) &* UInt64(blockSize))
        auxLength += 1
        phase = .lbaStatus
        return .store(.mapStatus(target: .own, offset: auxOffset &* UInt64(blockSize), maxLength: limit))
    }

    mutating func lbaStatusCompleted(_ r: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        guard let lun else { return internalError() }
        let bs = UInt64(blockSize)
        let remainingBlocks = lun.blockCount - auxOffset
        var mapped = true
        var blocks = remainingBlocks
        switch r {
        case .extent(let m, let length, _):
            mapped = m
            // A partial block counts as one block of that state; every answer advances at least one block.
            blocks = min(remainingBlocks, max(1, length / bs))
        case .ok:
            break
        case .failed(.notSupported):
            break
        case .failed(let e):
            return storeFailed(e, reading: true)
        }
        // Stop at the end of the medium, when the list is full and this extent did not fit, or when the
        // query budget is spent.
        if !appendLBAStatus(buffer, lba: auxOffset, blocks: blocks, mapped: mapped) { return finishLBAStatus(buffer) }
        auxOffset += blocks
        if auxOffset >= lun.blockCount || auxLength >= UInt64(LBAStatus.maxQueries) {
            return finishLBAStatus(buffer)
        }
        return nextLBAStatusQuery()
    }

    /// Append a descriptor, merging with the previous one when the state is the same and it is contiguous.
    /// Returns false when the list is full and the extent could not be merged.
    @discardableResult
    mutating func appendLBAStatus(_ b: UnsafeMutableRawBufferPointer, lba: UInt64, blocks: UInt64, mapped: Bool) -> Bool {
        let status: UInt8 = mapped ? 0 : 1
        if auxIndex > 0 {
            let p = LBAStatus.headerBytes + LBAStatus.descriptorBytes * (auxIndex - 1)
            let prevLBA = b.get64(p)
            let prevBlocks = UInt64(b.get32(p + 8))
            if b.get8(p + 12) == status && prevLBA &+ prevBlocks == lba && prevBlocks + blocks <= UInt64(UInt32.max) {
                b.put32(p + 8, UInt32(prevBlocks + blocks))
                return true
            }
        }
        guard auxIndex < auxCount else { return false }
        let p = LBAStatus.headerBytes + LBAStatus.descriptorBytes * auxIndex
        b.zero(p, LBAStatus.descriptorBytes)
        b.put64(p, lba)
        b.put32(p + 8, UInt32(min(blocks, UInt64(UInt32.max))))
        b.put8(p + 12, status)
        auxIndex += 1
        return true
    }

    mutating func finishLBAStatus(_ b: UnsafeMutableRawBufferPointer) -> SCSIAction {
        let n = LBAStatus.headerBytes + LBAStatus.descriptorBytes * auxIndex
        b.put32(0, UInt32(n - 4))
        b.put32(4, 0)
        return completeDataIn(generated: n, allocationLength: Int(wantedBytes))
    }
}
