// EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 §6.4, §6.18): block-to-block copies between LUs
// of this target, named by identification descriptors (0xE4) that carry an LU's NAA designator.
//
// The parameter list is moved to the tail of the buffer and parsed from there segment by segment; the
// rest of the buffer carries the data, read from the source LU and written to the destination.

import Floor
import Store
public enum ExtendedCopyLimits {
    /// Target descriptors per command: a source and a destination.
    static let maxTargetDescriptors = 2
    /// Segment descriptors per command.
    static let maxSegmentDescriptors = 16
    /// MAXIMUM DESCRIPTOR LIST LENGTH, in bytes (target plus segment descriptor lists).
    static let maxDescriptorListBytes = 1024
    /// MAXIMUM SEGMENT LENGTH, in bytes: a block-to-block segment moves at most 65535 blocks anyway.
    static let maxSegmentBytes: UInt32 = 256 * 1024 * 1024
    static let headerBytes = 16
    static let targetDescriptorBytes = 32
    static let blockToBlockSegmentBytes = 28
    static let identificationDescriptorType: UInt8 = 0xE4
    static let blockToBlockSegmentType: UInt8 = 0x02
    /// Buffer bytes kept at the tail for the parameter list while data moves through the rest.
    static let reservedListBytes = 2048
    /// Copy results a LU remembers for RECEIVE COPY RESULTS (oldest dropped first).
    static let maxHeldResults = 16
}

/// The outcome of one EXTENDED COPY, kept for RECEIVE COPY RESULTS (COPY STATUS).
public struct CopyResult {
    let nexusID: UInt64
    let listID: UInt8
    let status: UInt8          // 01h completed without errors, 02h completed with errors
    let segmentsProcessed: UInt16
    let transferredBytes: UInt64
}

extension SCSITask {
    mutating func startExtendedCopy(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        if cdb[1] & 0x1F != ServiceAction.extendedCopyLID1 { return invalidField(byte: 1, bit: 4) }
        let length = Int(cdb.u32(10))
        if length == 0 { return completeGood() }
        if length > ExtendedCopyLimits.headerBytes + ExtendedCopyLimits.maxDescriptorListBytes {
            return fail(SenseKey.illegalRequest, .parameterListLengthError)
        }
        if buffer.count < ExtendedCopyLimits.reservedListBytes * 2 { return internalError() }
        return requestParameterList(length: length)
    }

    /// The parameter list at the buffer's tail.
    func xcopyList(_ buffer: UnsafeMutableRawBufferPointer) -> UnsafeMutableRawBufferPointer {
        let start = buffer.count - ExtendedCopyLimits.reservedListBytes
        return UnsafeMutableRawBufferPointer(rebasing: buffer[start ..< start + min(chunkBytes, ExtendedCopyLimits.reservedListBytes)])
    }

    /// Resolve a target descriptor to a LUN of this target by its NAA designator.
    func resolveCopyTarget(_ l: UnsafeMutableRawBufferPointer, at p: Int) -> LogicalUnit? {
        guard let target else { return nil }
        let designatorType = l.get8(p + 5) & 0x0F
        let length = Int(l.get8(p + 7))
        guard designatorType == 0x03, length == 16 || length == 8 else { return nil }
        for lu in target.luns where lu.naa.count >= length {
            var same = true
            for i in 0 ..< length where lu.naa[i] != l.get8(p + 8 + i) { same = false; break }
            if same { return lu }
        }
        return nil
    }

    mutating func extendedCopyListReceived(_ list: UnsafeMutableRawBufferPointer, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        guard let target else { return internalError() }
        // Move the list to the tail so the front of the buffer can carry data.
        let n = list.count
        let tail = buffer.count - ExtendedCopyLimits.reservedListBytes
        if let base = buffer.baseAddress, n > 0 { (base + tail).copyMemory(from: base, byteCount: n) }
        let l = xcopyList(buffer)
        if n < ExtendedCopyLimits.headerBytes { return fail(SenseKey.illegalRequest, .parameterListLengthError) }
        let targetListBytes = Int(l.get16(2))
        let segmentListBytes = Int(l.get32(8))
        let inlineBytes = Int(l.get32(12))
        if ExtendedCopyLimits.headerBytes + targetListBytes + segmentListBytes + inlineBytes > n {
            return fail(SenseKey.illegalRequest, .parameterListLengthError)
        }
        if targetListBytes + segmentListBytes > ExtendedCopyLimits.maxDescriptorListBytes {
            return fail(SenseKey.illegalRequest, .parameterListLengthError)
        }
        if inlineBytes != 0 { return invalidParameter(byte: 12) }
        if targetListBytes % ExtendedCopyLimits.targetDescriptorBytes != 0 { return invalidParameter(byte: 2) }
        let targetCount = targetListBytes / ExtendedCopyLimits.targetDescriptorBytes
        if targetCount > ExtendedCopyLimits.maxTargetDescriptors {
            return fail(SenseKey.illegalRequest, .tooManyTargetDescriptors)
        }
        // Count segment descriptors by walking their own length fields.
        var segments = 0
        var p = ExtendedCopyLimits.headerBytes + targetListBytes
        let segmentEnd = p + segmentListBytes
        while p < segmentEnd {
            if p + 4 > segmentEnd { return fail(SenseKey.illegalRequest, .parameterListLengthError) }
            let len = 4 + Int(l.get16(p + 2))
            if p + len > segmentEnd { return fail(SenseKey.illegalRequest, .parameterListLengthError) }
            segments += 1
            p += len
        }
        if segments > ExtendedCopyLimits.maxSegmentDescriptors {
            return fail(SenseKey.illegalRequest, .tooManySegmentDescriptors)
        }
        // Target descriptors: identification descriptors naming LUs of this target, block devices.
        xcopy = ExtendedCopyProgress()
        xcopy.listID = l.get8(0)
        xcopy.listIDUsage = (l.get8(1) >> 3) & 0x03
        for t in 0 ..< targetCount {
            let q = ExtendedCopyLimits.headerBytes + t * ExtendedCopyLimits.targetDescriptorBytes
            if l.get8(q) != ExtendedCopyLimits.identificationDescriptorType {
                return fail(SenseKey.illegalRequest, .unsupportedTargetDescriptorType,
                            field: SenseData.fieldPointer(byte: q, inCDB: false))
            }
            if l.get8(q + 1) & 0x1F != 0 {                         // peripheral type: block devices only
                return fail(SenseKey.illegalRequest, .unsupportedTargetDescriptorType,
                            field: SenseData.fieldPointer(byte: q + 1, inCDB: false))
            }
            guard let lu = resolveCopyTarget(l, at: q) else {
                return fail(SenseKey.copyAborted, ASC(0x08, 0x04))   // UNREACHABLE COPY TARGET
            }
            if t == 0 { xcopy.target0LUN = lu.number } else { xcopy.target1LUN = lu.number }
        }
        // Segment descriptors: validate every one before copying anything.
        p = ExtendedCopyLimits.headerBytes + targetListBytes
        for s in 0 ..< segments {
            if l.get8(p) != ExtendedCopyLimits.blockToBlockSegmentType
                || 4 + Int(l.get16(p + 2)) != ExtendedCopyLimits.blockToBlockSegmentBytes {
                return fail(SenseKey.illegalRequest, .unsupportedSegmentDescriptorType,
                            field: SenseData.fieldPointer(byte: p, inCDB: false))
            }
            switch validateSegment(l, at: p, targetCount: targetCount, target: target) {
            case .ok: break
            case .unreachable: return fail(SenseKey.copyAborted, .copyTargetDeviceNotReachable, information: UInt64(s))
            case .outOfRange: return fail(SenseKey.copyAborted, .none, information: UInt64(s))
            case .writeProtected: return fail(SenseKey.dataProtect, .writeProtected)
            }
            p += ExtendedCopyLimits.blockToBlockSegmentBytes
        }
        xcopy.segmentCount = segments
        xcopy.segmentIndex = 0
        xcopy.segmentListOffset = ExtendedCopyLimits.headerBytes + targetListBytes
        xcopy.transferred = 0
        return startCopySegment(buffer: buffer)
    }

    public enum SegmentCheck { case ok, unreachable, outOfRange, writeProtected }

    func copySegmentGeometry(_ l: UnsafeMutableRawBufferPointer, at p: Int, target: TargetRuntime)
        -> (src: LogicalUnit, dst: LogicalUnit, srcLBA: UInt64, dstLBA: UInt64, bytes: UInt64)? {
        let si = Int(l.get16(p + 4)), di = Int(l.get16(p + 6))
        func lun(_ i: Int) -> LogicalUnit? {
            switch i {
            case 0: return target.lun(xcopy.target0LUN)
            case 1: return target.lun(xcopy.target1LUN)
            default: return nil
            }
        }
        guard let src = lun(si), let dst = lun(di) else { return nil }
        let dc = l.get8(p + 1) & 0x02 != 0
        let blocks = UInt64(l.get16(p + 10))
        let bytes = blocks &* UInt64(dc ? dst.blockSize : src.blockSize)
        return (src, dst, l.get64(p + 12), l.get64(p + 20), bytes)
    }

    func validateSegment(_ l: UnsafeMutableRawBufferPointer, at p: Int, targetCount: Int, target: TargetRuntime) -> SegmentCheck {
        let si = Int(l.get16(p + 4)), di = Int(l.get16(p + 6))
        if si >= targetCount || di >= targetCount { return .unreachable }
        guard let g = copySegmentGeometry(l, at: p, target: target) else { return .unreachable }
        if g.bytes % UInt64(g.src.blockSize) != 0 || g.bytes % UInt64(g.dst.blockSize) != 0 { return .outOfRange }
        let srcBlocks = g.bytes / UInt64(g.src.blockSize), dstBlocks = g.bytes / UInt64(g.dst.blockSize)
        if !rangeIsValid(lba: g.srcLBA, blocks: srcBlocks, capacity: g.src.blockCount)
            || !rangeIsValid(lba: g.dstLBA, blocks: dstBlocks, capacity: g.dst.blockCount) {
            return .outOfRange
        }
        if g.dst.capabilities.readOnly || g.dst.state.flags & LUNState.flagSoftwareWriteProtect != 0 { return .writeProtected }
        return .ok
    }

    func storeTarget(_ lunNumber: UInt64) -> StoreTarget { lunNumber == self.lunNumber ? .own : .other(lun: lunNumber) }

    /// Begin the segment at `xcopy.segmentIndex`, or finish.
    mutating func startCopySegment(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        guard let target else { return internalError() }
        let l = xcopyList(buffer)
        while xcopy.segmentIndex < xcopy.segmentCount {
            let p = xcopy.segmentListOffset + xcopy.segmentIndex * ExtendedCopyLimits.blockToBlockSegmentBytes
            guard let g = copySegmentGeometry(l, at: p, target: target) else { return internalError() }
            if g.bytes == 0 { xcopy.segmentIndex += 1; continue }
            xcopy.sourceLUN = g.src.number
            xcopy.destinationLUN = g.dst.number
            xcopy.sourceOffset = g.srcLBA &* UInt64(g.src.blockSize)
            xcopy.destinationOffset = g.dstLBA &* UInt64(g.dst.blockSize)
            xcopy.remainingBytes = g.bytes
            return nextCopyChunk(buffer: buffer)
        }
        recordCopyResult(status: 0x01)
        return completeGood()
    }

    mutating func nextCopyChunk(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        let cap = UInt64(chunkCapacity(buffer.count - ExtendedCopyLimits.reservedListBytes))
        let n = Int(min(cap, xcopy.remainingBytes))
        xcopy.chunkBytes = n
        phase = .xcopyRead
        return .store(.read(target: storeTarget(xcopy.sourceLUN), offset: xcopy.sourceOffset, length: n, bufferOffset: 0))
    }

    mutating func extendedCopyReadCompleted(_ r: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        if case .failed = r {
            recordCopyResult(status: 0x02)
            return fail(SenseKey.copyAborted, .unrecoveredReadError, information: UInt64(xcopy.segmentIndex))
        }
        phase = .xcopyWrite
        let fua = target?.lun(xcopy.destinationLUN).map { $0.state.flags & LUNState.flagWriteCacheDisabled != 0 } ?? false
        return .store(.write(target: storeTarget(xcopy.destinationLUN), offset: xcopy.destinationOffset,
                             length: xcopy.chunkBytes, bufferOffset: 0, fua: fua))
    }

    mutating func extendedCopyWriteCompleted(_ r: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        if case .failed = r {
            recordCopyResult(status: 0x02)
            return fail(SenseKey.copyAborted, .writeError, information: UInt64(xcopy.segmentIndex))
        }
        let n = UInt64(xcopy.chunkBytes)
        xcopy.sourceOffset &+= n
        xcopy.destinationOffset &+= n
        xcopy.remainingBytes -= n
        xcopy.transferred &+= n
        if xcopy.remainingBytes > 0 { return nextCopyChunk(buffer: buffer) }
        xcopy.segmentIndex += 1
        return startCopySegment(buffer: buffer)
    }

    /// Hold the result for RECEIVE COPY RESULTS when LIST ID USAGE asks for it (00b).
    func recordCopyResult(status: UInt8) {
        guard let lun, let nexus else { return }
        let usage = xcopy.listIDUsage
        guard usage == 0 else { return }
        let result = CopyResult(nexusID: nexus.id, listID: xcopy.listID, status: status,
                                segmentsProcessed: UInt16(truncatingIfNeeded: xcopy.segmentIndex),
                                transferredBytes: xcopy.transferred)
        lun.state.shared.withLock { s in
            s.copyResults.removeAll { $0.nexusID == result.nexusID && $0.listID == result.listID }
            if s.copyResults.count >= ExtendedCopyLimits.maxHeldResults { s.copyResults.removeFirst() }
            s.copyResults.append(result)
        }
    }

    // MARK: RECEIVE COPY RESULTS

    mutating func receiveCopyResults(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        guard let lun, let nexus else { return internalError() }
        let action = cdb[1] & 0x1F
        let listID = cdb[2]
        let allocation = Int(cdb.u32(10))
        let b = buffer
        switch action {
        case ServiceAction.receiveCopyOperatingParameters:
            let implemented: [UInt8] = [ExtendedCopyLimits.blockToBlockSegmentType, ExtendedCopyLimits.identificationDescriptorType]
            let n = 44 + implemented.count
            b.zero(0, n)
            b.put32(0, UInt32(n - 4))
            b.put16(8, UInt16(ExtendedCopyLimits.maxTargetDescriptors))
            b.put16(10, UInt16(ExtendedCopyLimits.maxSegmentDescriptors))
            b.put32(12, UInt32(ExtendedCopyLimits.maxDescriptorListBytes))
            b.put32(16, ExtendedCopyLimits.maxSegmentBytes)
            b.put16(34, 1)                                   // total concurrent copies
            b.put8(36, 1)                                    // maximum concurrent copies
            b.put8(37, UInt8(lun.presentation.lbppbe + 9))   // segment granularity, log2 bytes
            b.put8(43, UInt8(implemented.count))
            for (i, t) in implemented.enumerated() { b.put8(44 + i, t) }
            return completeDataIn(generated: n, allocationLength: allocation)
        case ServiceAction.receiveCopyStatusLID1:
            let held = lun.state.shared.withLock { s in
                s.copyResults.last { $0.nexusID == nexus.id && $0.listID == listID }
            }
            guard let r = held else { return invalidField(byte: 2) }
            b.zero(0, 12)
            b.put32(0, 8)
            b.put8(4, r.status)
            b.put16(5, r.segmentsProcessed)
            if r.transferredBytes <= UInt64(UInt32.max) {
                b.put8(7, 0x00)                              // bytes
                b.put32(8, UInt32(r.transferredBytes))
            } else {
                b.put8(7, 0x01)                              // kibibytes
                b.put32(8, UInt32(truncatingIfNeeded: r.transferredBytes >> 10))
            }
            return completeDataIn(generated: 12, allocationLength: allocation)
        default:
            return invalidField(byte: 1, bit: 4)
        }
    }
}

extension SCSITask {
    /// Whether an EXTENDED COPY in progress reads or writes one of `units` (LUNs of its target other than
    /// the one it was sent to): the control plane counts it as a command on those LUNs too.
    public func copyTouches(_ units: [ObjectIdentifier]) -> Bool {
        guard opcode == Opcode.extendedCopy, let target else { return false }
        switch phase {
        case .xcopyRead, .xcopyWrite:
            for n in [xcopy.sourceLUN, xcopy.destinationLUN] {
                if let lu = target.lun(n), units.contains(ObjectIdentifier(lu)) { return true }
            }
            return false
        case .parameterData:
            // Its list has not arrived yet and may name any LUN of the target it started under: a forced delete
            // must not give back a store's outside hold (a sheepdog VDI lock) before this copy is done with it.
            return target.luns.contains { units.contains(ObjectIdentifier($0)) }
        default:
            return false
        }
    }
}
