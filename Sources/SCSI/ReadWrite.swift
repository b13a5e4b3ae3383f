// READ and WRITE (6/10/12/16), WRITE AND VERIFY and WRITE ATOMIC: the hot path. Decoding and range
// checks use only the CDB and the LU's immutable geometry; the data moves in buffer-sized whole-block
// chunks, so a command of any length needs one buffer and no allocation.

/// Limits the device server advertises in the Block Limits VPD page and enforces.
import Floor
import Store
import ISCSIWire
public enum BlockLimits {
    /// MAXIMUM TRANSFER LENGTH, in bytes (converted to blocks per LU). Longer commands are refused with
    /// INVALID FIELD IN CDB; the data moves in buffer-sized chunks, so this bounds one command's time,
    /// not memory.
    static let maxTransferBytes: UInt64 = 32 * 1024 * 1024
    /// MAXIMUM WRITE SAME LENGTH, in bytes, for WRITE SAME that writes (an unmapping WRITE SAME is bounded
    /// by maxUnmapBytes instead).
    static let maxWriteSameBytes: UInt64 = 64 * 1024 * 1024
    /// MAXIMUM UNMAP LBA COUNT, in bytes (converted to blocks per LU): 256 MiB keeps the count within
    /// the 1 Mi blocks initiators (libiscsi's BlockLimits test among them) consider sane.
    static let maxUnmapBytes: UInt64 = 256 * 1024 * 1024
    /// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT.
    static let maxUnmapDescriptors = 256
    /// Logical blocks per physical block exponent (READ CAPACITY 16) unless the LUN's lbppbe parameter
    /// says otherwise (LUNPresentation). Zero: provisioning and GET LBA STATUS
    /// work per logical block, and reporting 4 KiB physical blocks would make GET LBA STATUS descriptors
    /// disagree with initiators that assume one logical block per physical block (libiscsi's
    /// GetLBAStatus.UnmapSingle).
    static let logicalBlocksPerPhysicalBlockExponent: UInt8 = 0
}

extension SCSITask {
    /// LBA and transfer length (blocks) of a READ/WRITE-shaped CDB.
    @inline(__always)
    func decodeBlockRange() -> (lba: UInt64, blocks: UInt64) {
        switch opcode {
        case Opcode.read6, Opcode.write6:
            let lba = UInt64(cdb[1] & 0x1F) << 16 | UInt64(cdb.u16(2))
            let n = UInt64(cdb[4])
            return (lba, n == 0 ? 256 : n)
        case Opcode.read12, Opcode.write12, Opcode.verify12, Opcode.writeAndVerify12:
            return (UInt64(cdb.u32(2)), UInt64(cdb.u32(6)))
        case Opcode.read16, Opcode.write16, Opcode.verify16, Opcode.writeAndVerify16, Opcode.orWrite16,
             Opcode.prefetch16, Opcode.writeSame16:
            return (cdb.u64(2), UInt64(cdb.u32(10)))
        case Opcode.compareAndWrite:
            return (cdb.u64(2), UInt64(cdb[13]))
        default:   // 10-byte shapes
            return (UInt64(cdb.u32(2)), UInt64(cdb.u16(7)))
        }
    }

    /// SBC-3 §4.5: the range must lie inside the medium.
    @inline(__always)
    func rangeIsValid(lba: UInt64, blocks: UInt64, capacity: UInt64) -> Bool {
        lba <= capacity && blocks <= capacity - lba
    }

    @inline(__always)
    var maxTransferBlocks: UInt64 { BlockLimits.maxTransferBytes / UInt64(blockSize) }

    /// Read-only store or software write protect (control mode page SWP), as of start().
    @inline(__always)
    var isWriteProtected: Bool { lunReadOnly || lunFlags & LUNState.flagSoftwareWriteProtect != 0 }

    @inline(__always)
    var writeCacheDisabled: Bool { lunFlags & LUNState.flagWriteCacheDisabled != 0 }

    // MARK: READ

    mutating func startRead(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        if opcode != Opcode.read6, cdb[1] & 0xE0 != 0 { return invalidField(byte: 1, bit: 7) }   // RDPROTECT
        let (lba, n) = decodeBlockRange()
        if n > maxTransferBlocks { return invalidField(byte: opcode == Opcode.read6 ? 4 : 7) }
        if !rangeIsValid(lba: lba, blocks: n, capacity: capacityBlocks) { return lbaOutOfRange() }
        self.lba = lba
        wantedBytes = n &* UInt64(blockSize)
        // The initiator gets at most the EDTL, and nothing when it did not set the R bit.
        totalBytes = min(wantedBytes, readBit ? UInt64(expectedLength) : 0)
        if totalBytes == 0 { return completeGood() }
        doneBytes = 0
        return nextReadChunk(buffer: buffer)
    }

    @inline(__always)
    mutating func nextReadChunk(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { nextReadChunk(bufferBytes: buffer.count) }

    mutating func nextReadChunk(bufferBytes: Int) -> SCSIAction {
        let remaining = totalBytes - doneBytes
        let cap = UInt64(chunkCapacity(bufferBytes))
        let send = min(remaining, cap)
        chunkBytes = Int(send)
        // Read whole blocks even when the EDTL cuts a block short: stores may need aligned I/O.
        let bs = UInt64(blockSize)
        let readLength = min((send + bs - 1) / bs * bs, cap)
        phase = .readStore
        return .store(.read(target: .own, offset: lba &* bs &+ doneBytes, length: Int(readLength), bufferOffset: 0))
    }

    mutating func readStoreCompleted(_ r: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        if let fail = checkStore(r, reading: true) { return fail }
        if case .ok(let n) = r, n < chunkBytes {
            // A store that returns short (a file shorter than the LU) reads as zeros past its end.
            buffer.zero(max(0, n), chunkBytes - max(0, n))
        }
        doneBytes &+= UInt64(chunkBytes)
        if doneBytes < totalBytes {
            phase = .readSending
            return .dataIn(length: chunkBytes)
        }
        phase = .idle
        return .complete(status: SCSIStatus.good, dataInLength: chunkBytes, residual: residual(wanted: wantedBytes))
    }

    // MARK: WRITE, WRITE AND VERIFY, WRITE ATOMIC

    mutating func startWrite(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        let isVerify = opcode == Opcode.writeAndVerify10 || opcode == Opcode.writeAndVerify12
            || opcode == Opcode.writeAndVerify16
        if opcode != Opcode.write6, cdb[1] & 0xE0 != 0 { return invalidField(byte: 1, bit: 7) }  // WRPROTECT
        let (lba, n) = decodeBlockRange()
        if n > maxTransferBlocks {
            let field = opcode == Opcode.write6 ? 4 : (opcode == Opcode.write16 || opcode == Opcode.writeAndVerify16)
                ? 10 : (opcode == Opcode.write12 || opcode == Opcode.writeAndVerify12) ? 6 : 7
            return invalidField(byte: field)
        }
        if !rangeIsValid(lba: lba, blocks: n, capacity: capacityBlocks) { return lbaOutOfRange() }
        if isWriteProtected { return writeProtected() }
        self.lba = lba
        // FUA makes this write durable; so does a disabled write cache, and WRITE AND VERIFY (the verify
        // must see the medium, not a cache).
        fua = (opcode != Opcode.write6 && cdb[1] & 0x08 != 0) || isVerify || writeCacheDisabled
        wantedBytes = n &* UInt64(blockSize)
        // Only whole blocks the initiator will actually send are written.
        let available = writeBit ? UInt64(expectedLength) : 0
        let bs = UInt64(blockSize)
        totalBytes = min(wantedBytes, available / bs * bs)
        if totalBytes == 0 { return completeGood() }
        doneBytes = 0
        return requestWriteChunk(buffer: buffer)
    }

    mutating func requestWriteChunk(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        let cap = UInt64(chunkCapacity(buffer.count))
        chunkBytes = Int(min(totalBytes - doneBytes, cap))
        phase = .writeData
        return .dataOut(offset: Int(doneBytes), length: chunkBytes)
    }

    mutating func writeDataReceived(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { storeWriteChunk() }

    /// Writes the chunk in the buffer (again, after another gateway's reservation change was checked).
    @inline(__always)
    mutating func storeWriteChunk() -> SCSIAction {
        phase = .writeStore
        return .store(.write(target: .own, offset: lba &* UInt64(blockSize) &+ doneBytes, length: chunkBytes,
                             bufferOffset: 0, fua: fua))
    }

    mutating func writeStoreCompleted(_ r: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        if let fail = checkStore(r, reading: false) { return fail }
        doneBytes &+= UInt64(chunkBytes)
        if doneBytes < totalBytes { return requestWriteChunk(buffer: buffer) }
        return completeGood()
    }

    /// A single store operation whose success completes the command.
    mutating func singleStoreCompleted(_ r: StoreResult) -> SCSIAction {
        // PRE-FETCH is a hint: a store that cannot prefetch has still done what was asked.
        if opcode == Opcode.prefetch10 || opcode == Opcode.prefetch16 { return completeGood(status: auxByte) }
        if let fail = checkStore(r, reading: auxFlag) { return fail }
        return completeGood(status: auxByte)
    }
}
