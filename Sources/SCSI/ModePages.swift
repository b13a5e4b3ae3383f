// MODE SENSE and MODE SELECT (6 and 10) over four pages: read-write error recovery (01h), caching (08h,
// WCE changeable), control (0Ah, SWP changeable) and informational exceptions control (1Ch). Saved
// values are not implemented, so page control 11b and SP=1 are refused as SPC-4 requires.

import Floor
import Store
public enum ModePage {
    static let readWriteErrorRecovery: UInt8 = 0x01
    static let caching: UInt8 = 0x08
    static let control: UInt8 = 0x0A
    static let informationalExceptions: UInt8 = 0x1C
    static let allPages: UInt8 = 0x3F
    /// Pages returned for "all pages", in ascending order.
    static let all: [UInt8] = [readWriteErrorRecovery, caching, control, informationalExceptions]

    /// Largest MODE SELECT parameter list accepted, in bytes: a header, a long block descriptor and every
    /// page fit with room to spare.
    static let maxParameterListBytes = 512

    /// Page length (bytes after the two-byte page header).
    static func length(_ code: UInt8) -> Int? {
        switch code {
        case readWriteErrorRecovery: return 0x0A
        case caching: return 0x12
        case control: return 0x0A
        case informationalExceptions: return 0x0A
        default: return nil
        }
    }

    public enum Control { case current, changeable, defaults }

    /// Render one page at `off`; returns its total length (header included), or 0 for an unknown page.
    static func render(_ code: UInt8, _ pc: Control, mode: ModeParameters, defaults: ModeParameters,
                       into b: UnsafeMutableRawBufferPointer, at off: Int) -> Int {
        guard let len = length(code) else { return 0 }
        b.zero(off, len + 2)
        b.put8(off, code)
        b.put8(off + 1, UInt8(len))
        let m = pc == .defaults ? defaults : mode
        switch code {
        case readWriteErrorRecovery:
            if pc != .changeable { b.put8(off + 2, 0xC0) }                 // AWRE, ARRE
        case caching:
            if pc == .changeable { b.put8(off + 2, 0x04) }                 // WCE is changeable
            else if m.writeCacheEnabled { b.put8(off + 2, 0x04) }
        case control:
            if pc == .changeable {
                b.put8(off + 4, 0x08)                                       // SWP is changeable
            } else {
                b.put8(off + 2, 0x02)                                       // GLTSD
                b.put8(off + 3, 0x10)                                       // QAM 1: unrestricted reordering
                if m.softwareWriteProtect { b.put8(off + 4, 0x08) }
                b.put16(off + 8, 0xFFFF)                                    // busy timeout: unlimited
            }
        case informationalExceptions:
            if pc != .changeable { b.put8(off + 2, 0x08) }                 // DEXCPT: no exception reporting
        default:
            break
        }
        return len + 2
    }
}

extension SCSITask {
    mutating func modeSense(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        guard let lun else { return internalError() }
        let ten = opcode == Opcode.modeSense10
        let dbd = cdb[1] & 0x08 != 0
        let llbaa = ten && cdb[1] & 0x10 != 0
        let pcBits = cdb[2] >> 6
        let page = cdb[2] & 0x3F
        let subpage = cdb[3]
        let allocation = ten ? Int(cdb.u16(7)) : Int(cdb[4])
        let pc: ModePage.Control
        switch pcBits {
        case 0: pc = .current
        case 1: pc = .changeable
        case 2: pc = .defaults
        default: return fail(SenseKey.illegalRequest, .savingParametersNotSupported,
                             field: SenseData.fieldPointer(byte: 2, bit: 7))
        }
        if page == ModePage.allPages {
            if subpage != 0 && subpage != 0xFF { return invalidField(byte: 3) }
        } else {
            if ModePage.length(page) == nil { return invalidField(byte: 2, bit: 5) }
            if subpage != 0 { return invalidField(byte: 3) }
        }
        let mode = lun.state.modeParameters
        let defaults = ModeParameters(capabilities: lun.capabilities)
        let header = ten ? 8 : 4
        let descriptorBytes = dbd ? 0 : (llbaa ? 16 : 8)
        buffer.zero(0, header + descriptorBytes)
        var p = header
        if descriptorBytes == 8 {
            buffer.put32(p, UInt32(min(lun.blockCount, 0xFF_FFFF)))
            buffer.put8(p, 0)                                             // density code
            buffer.put32(p + 4, UInt32(lun.blockSize) & 0xFF_FFFF)
        } else if descriptorBytes == 16 {
            buffer.put64(p, lun.blockCount)
            buffer.put32(p + 12, UInt32(lun.blockSize))
        }
        p += descriptorBytes
        if page == ModePage.allPages {
            for code in ModePage.all {
                p += ModePage.render(code, pc, mode: mode, defaults: defaults, into: buffer, at: p)
            }
        } else {
            p += ModePage.render(page, pc, mode: mode, defaults: defaults, into: buffer, at: p)
        }
        var deviceSpecific: UInt8 = 0x10                                  // DPOFUA
        if isWriteProtected { deviceSpecific |= 0x80 }
        if ten {
            buffer.put16(0, UInt16(p - 2))
            buffer.put8(3, deviceSpecific)
            buffer.put8(4, llbaa && descriptorBytes == 16 ? 0x01 : 0)
            buffer.put16(6, UInt16(descriptorBytes))
        } else {
            buffer.put8(0, UInt8(p - 1))
            buffer.put8(2, deviceSpecific)
            buffer.put8(3, UInt8(descriptorBytes))
        }
        return completeDataIn(generated: p, allocationLength: allocation)
    }

    mutating func startModeSelect(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        let ten = opcode == Opcode.modeSelect10
        if cdb[1] & 0x01 != 0 { return invalidField(byte: 1, bit: 0) }     // SP: saving is not supported
        if cdb[1] & 0x10 == 0 { return invalidField(byte: 1, bit: 4) }     // PF: only the SPC page format
        let length = ten ? Int(cdb.u16(7)) : Int(cdb[4])
        if length == 0 { return completeGood() }
        if length > ModePage.maxParameterListBytes {
            return fail(SenseKey.illegalRequest, .parameterListLengthError)
        }
        return requestParameterList(length: length)
    }

    /// Ask for a whole parameter list in one piece (every list this device server takes fits a buffer).
    mutating func requestParameterList(length: Int) -> SCSIAction {
        wantedBytes = UInt64(length)
        let available = writeBit ? Int(expectedLength) : 0
        chunkBytes = min(length, available)
        if chunkBytes < length && chunkBytes == 0 {
            return fail(SenseKey.illegalRequest, .parameterListLengthError)
        }
        phase = .parameterData
        return .dataOut(offset: 0, length: chunkBytes)
    }

    mutating func parameterListReceived(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        let list = UnsafeMutableRawBufferPointer(rebasing: buffer[0 ..< min(chunkBytes, buffer.count)])
        switch opcode {
        case Opcode.modeSelect6, Opcode.modeSelect10: return modeSelect(list, buffer: buffer)
        case Opcode.persistentReserveOut: return persistentReserveOut(list)
        case Opcode.unmap: return unmapListReceived(list, buffer: buffer)
        case Opcode.extendedCopy: return extendedCopyListReceived(list, buffer: buffer)
        case Opcode.maintenanceOut: return setTargetPortGroups(list)
        case Opcode.sanitize: return sanitizeParametersReceived(list, buffer: buffer)
        default: return internalError()
        }
    }

    mutating func modeSelect(_ b: UnsafeMutableRawBufferPointer, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        guard let lun, let nexus else { return internalError() }
        let ten = opcode == Opcode.modeSelect10
        let header = ten ? 8 : 4
        if b.count < header { return fail(SenseKey.illegalRequest, .parameterListLengthError) }
        let descriptorBytes = ten ? Int(b.get16(6)) : Int(b.get8(3))
        let longLBA = ten && b.get8(4) & 0x01 != 0
        if descriptorBytes != 0 && descriptorBytes != (longLBA ? 16 : 8) {
            return invalidParameter(byte: ten ? 6 : 3)
        }
        if header + descriptorBytes > b.count { return fail(SenseKey.illegalRequest, .parameterListLengthError) }
        if descriptorBytes == 8 {
            let bl = b.get32(header + 4) & 0xFF_FFFF
            if bl != UInt32(lun.blockSize) { return invalidParameter(byte: header + 5) }
        } else if descriptorBytes == 16 {
            if b.get32(header + 12) != UInt32(lun.blockSize) { return invalidParameter(byte: header + 12) }
        }
        var p = header + descriptorBytes
        let current = lun.state.modeParameters
        var next = current
        // Scratch for rendering the current and changeable images: past the largest list, in the buffer.
        let cur = ModePage.maxParameterListBytes, chg = cur + 64
        while p < b.count {
            if p + 2 > b.count { return fail(SenseKey.illegalRequest, .parameterListLengthError) }
            let code = b.get8(p) & 0x3F
            if b.get8(p) & 0x40 != 0 { return invalidParameter(byte: p, bit: 6) }   // no subpages
            guard let len = ModePage.length(code) else { return invalidParameter(byte: p, bit: 5) }
            if Int(b.get8(p + 1)) != len { return invalidParameter(byte: p + 1) }
            if p + 2 + len > b.count { return fail(SenseKey.illegalRequest, .parameterListLengthError) }
            // Compare against the current image; only changeable bits may differ.
            _ = ModePage.render(code, .current, mode: current, defaults: current, into: buffer, at: cur)
            _ = ModePage.render(code, .changeable, mode: current, defaults: current, into: buffer, at: chg)
            for i in 2 ..< (2 + len) where (b.get8(p + i) ^ buffer.get8(cur + i)) & ~buffer.get8(chg + i) != 0 {
                return invalidParameter(byte: p + i)
            }
            switch code {
            case ModePage.caching: next.writeCacheEnabled = b.get8(p + 2) & 0x04 != 0
            case ModePage.control: next.softwareWriteProtect = b.get8(p + 4) & 0x08 != 0
            default: break
            }
            p += 2 + len
        }
        if next != current {
            lun.state.shared.withLock { s in
                s.mode = next
                // SPC-4 §5.14: other nexuses learn that shared mode parameters changed.
                lun.state.queueUAForAll(&s, except: nexus.id, .modeParametersChanged)
                lun.state.publishFlags(s)
            }
        }
        return completeGood()
    }
}
