// INQUIRY: standard data and the VPD pages of a thin-provisioning-capable SBC-3 disk.

import Floor
import Store
public enum InquiryData {
    /// Standard INQUIRY data length this device returns (SPC-4 §6.6.2, through the version descriptors).
    static let standardLengthBytes = 96
    static let versionSPC4: UInt8 = 0x06
    /// Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3 (libiscsi keys SBC-3 support on 0x04C0 exactly).
    static let versionDescriptors: [UInt16] = [0x00A0, 0x0960, 0x0460, 0x04C0]
    /// VPD pages, ascending (SPC-4 §7.8.13).
    static let supportedVPDPages: [UInt8] = [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]
    /// Peripheral qualifier 011b, device type 1Fh: no logical unit at this LUN number.
    static let noLogicalUnit: UInt8 = 0x7F
}

extension SCSITask {
    mutating func inquiry(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        let evpd = cdb[1] & 0x01 != 0
        let pageCode = cdb[2]
        let allocation = Int(cdb.u16(3))
        if cdb[1] & 0xFE != 0 { return invalidField(byte: 1, bit: 1) }    // CMDDT and reserved bits
        if !evpd && pageCode != 0 { return invalidField(byte: 2) }
        let n: Int
        if !evpd {
            n = standardInquiry(buffer)
        } else {
            guard lun != nil else {
                // No LU: SPC-4 says VPD pages may still be answered; report only the qualifier.
                buffer.zero(0, 4)
                buffer.put8(0, InquiryData.noLogicalUnit)
                buffer.put8(1, pageCode)
                return completeDataIn(generated: 4, allocationLength: allocation)
            }
            switch pageCode {
            case 0x00: n = vpdSupportedPages(buffer)
            case 0x80: n = vpdUnitSerialNumber(buffer)
            case 0x83: n = vpdDeviceIdentification(buffer)
            case 0xB0: n = vpdBlockLimits(buffer)
            case 0xB1: n = vpdBlockDeviceCharacteristics(buffer)
            case 0xB2: n = vpdLogicalBlockProvisioning(buffer)
            default: return invalidField(byte: 2)
            }
        }
        return completeDataIn(generated: n, allocationLength: allocation)
    }

    func standardInquiry(_ b: UnsafeMutableRawBufferPointer) -> Int {
        let n = InquiryData.standardLengthBytes
        b.zero(0, n)
        guard let lun else {
            b.put8(0, InquiryData.noLogicalUnit)
            b.put8(2, InquiryData.versionSPC4)
            b.put8(3, 0x12)
            b.put8(4, UInt8(n - 5))
            return n
        }
        b.put8(0, 0x00)                        // connected, direct access block device
        b.put8(1, lun.presentation.removable ? 0x80 : 0x00)                 // RMB
        b.put8(2, InquiryData.versionSPC4)
        b.put8(3, 0x12)                        // HISUP, response data format 2
        b.put8(4, UInt8(n - 5))
        b.put8(5, 0x08 | 0x30)                 // 3PC: EXTENDED COPY; TPGS 11b: implicit and explicit ALUA
        b.put8(6, 0x00)
        b.put8(7, 0x02)                        // CMDQUE
        b.putASCII(8, lun.vendor, width: 8)
        b.putASCII(16, lun.product, width: 16)
        b.putASCII(32, lun.revision, width: 4)
        for (i, d) in InquiryData.versionDescriptors.enumerated() { b.put16(58 + 2 * i, d) }
        return n
    }

    func vpdHeader(_ b: UnsafeMutableRawBufferPointer, page: UInt8, length: Int) {
        b.put8(0, 0x00)
        b.put8(1, page)
        b.put16(2, UInt16(truncatingIfNeeded: length))
    }

    func vpdSupportedPages(_ b: UnsafeMutableRawBufferPointer) -> Int {
        let pages = InquiryData.supportedVPDPages
        vpdHeader(b, page: 0x00, length: pages.count)
        for (i, p) in pages.enumerated() { b.put8(4 + i, p) }
        return 4 + pages.count
    }

    func vpdUnitSerialNumber(_ b: UnsafeMutableRawBufferPointer) -> Int {
        guard let lun else { return 0 }
        /// Longest serial reported; VPD page length is one byte here by convention (SPC-4 allows 2).
        let maxSerialBytes = 252
        var len = 0
        for u in lun.serial.utf8 where len < maxSerialBytes {
            b.put8(4 + len, (u >= 0x20 && u <= 0x7E) ? u : 0x20)
            len += 1
        }
        vpdHeader(b, page: 0x80, length: len)
        return 4 + len
    }

    /// Device Identification (SPC-4 §7.8.6): the LU's NAA designator, then the relative target port,
    /// the target port group and the SCSI name strings of the target port and target device.
    func vpdDeviceIdentification(_ b: UnsafeMutableRawBufferPointer) -> Int {
        guard let lun, let target else { return 0 }
        var p = 4
        // NAA, binary, associated with the LU.
        b.put8(p, 0x01); b.put8(p + 1, 0x03); b.put8(p + 2, 0); b.put8(p + 3, 16)
        for (i, v) in lun.naa.prefix(16).enumerated() { b.put8(p + 4 + i, v) }
        p += 20
        // Relative target port identifier: protocol iSCSI (5), PIV, target port association, type 4.
        b.put8(p, 0x51); b.put8(p + 1, 0x94); b.put8(p + 2, 0); b.put8(p + 3, 4)
        b.put16(p + 4, 0); b.put16(p + 6, target.relativeTargetPortID)
        p += 8
        // Target port group, type 5.
        b.put8(p, 0x51); b.put8(p + 1, 0x95); b.put8(p + 2, 0); b.put8(p + 3, 4)
        b.put16(p + 4, 0); b.put16(p + 6, target.portGroup.id)
        p += 8
        // SCSI name string of the target port ("<iqn>,t,0x<tpgt>") and of the target device ("<iqn>").
        let tpgt = String(target.portalGroupTag, radix: 16)
        let portName = "\(target.name),t,0x\(String(repeating: "0", count: max(0, 4 - tpgt.count)))\(tpgt)"
        p = putNameDesignator(b, at: p, association: 0x10, name: portName)
        p = putNameDesignator(b, at: p, association: 0x20, name: target.name)
        vpdHeader(b, page: 0x83, length: p - 4)
        return p
    }

    /// A SCSI name string designator (UTF-8, NUL terminated, padded to a multiple of 4).
    private func putNameDesignator(_ b: UnsafeMutableRawBufferPointer, at p: Int, association: UInt8, name: String) -> Int {
        /// The designator length is one byte and a multiple of 4, so at most 252 bytes: 251 of name and
        /// the terminator.
        let maxNameBytes = 251
        var bytes = 0
        for u in name.utf8 where bytes < maxNameBytes {
            b.put8(p + 4 + bytes, u)
            bytes += 1
        }
        var len = bytes + 1
        len = (len + 3) & ~3
        b.zero(p + 4 + bytes, len - bytes)
        b.put8(p, 0x53)
        b.put8(p + 1, 0x80 | association | 0x08)
        b.put8(p + 2, 0)
        b.put8(p + 3, UInt8(len))
        return p + 4 + len
    }

    /// The largest COMPARE AND WRITE this task can run in one buffer: it holds the verify data, the
    /// write data and the read-back of the same blocks.
    func maxCompareAndWriteBlocks(bufferBytes: Int) -> Int {
        min(255, max(1, bufferBytes / (3 * blockSize)))
    }

    func vpdBlockLimits(_ b: UnsafeMutableRawBufferPointer) -> Int {
        guard let lun else { return 0 }
        let pageLength = 0x3C
        b.zero(0, 4 + pageLength)
        vpdHeader(b, page: 0xB0, length: pageLength)
        let bs = UInt64(lun.blockSize)
        let physical = UInt16(1) << UInt16(lun.presentation.lbppbe)
        b.put8(4, 0x00)                                                      // WSNZ = 0
        b.put8(5, UInt8(maxCompareAndWriteBlocks(bufferBytes: b.count)))
        b.put16(6, lun.presentation.optimalTransferGranularityBlocks ?? physical)
        b.put32(8, UInt32(BlockLimits.maxTransferBytes / bs))
        let optimal = UInt32(truncatingIfNeeded: max(0, lun.capabilities.optimalTransferBytes) / lun.blockSize)
        b.put32(12, optimal)
        b.put32(16, UInt32(BlockLimits.maxTransferBytes / bs))               // max prefetch length
        if lun.capabilities.canDiscard {
            b.put32(20, UInt32(BlockLimits.maxUnmapBytes / bs))
            b.put32(24, UInt32(BlockLimits.maxUnmapDescriptors))
            let granularity = lun.capabilities.unmapGranularityBytes > 0
                ? UInt32(truncatingIfNeeded: max(1, lun.capabilities.unmapGranularityBytes / lun.blockSize)) : UInt32(physical)
            b.put32(28, granularity)
            b.put32(32, 0x8000_0000)                                         // UGAVALID, alignment 0
        }
        b.put64(36, BlockLimits.maxWriteSameBytes / bs)
        // Bytes 44..63 (atomic writes) stay zero: WRITE ATOMIC is not offered, because no store here can
        // promise all-or-nothing across a power loss.
        return 4 + pageLength
    }

    func vpdBlockDeviceCharacteristics(_ b: UnsafeMutableRawBufferPointer) -> Int {
        let pageLength = 0x3C
        b.zero(0, 4 + pageLength)
        vpdHeader(b, page: 0xB1, length: pageLength)
        b.put16(4, 0x0001)                                                   // non-rotating medium
        // WABEREQ and WACEREQ 01b: after a block or cryptographic erase, reads succeed (and return zeros).
        if SCSITask.offersSanitize(lun) { b.put8(7, 0x50) }
        return 4 + pageLength
    }

    func vpdLogicalBlockProvisioning(_ b: UnsafeMutableRawBufferPointer) -> Int {
        guard let lun else { return 0 }
        let pageLength = 4
        b.zero(0, 4 + pageLength)
        vpdHeader(b, page: 0xB2, length: pageLength)
        if lun.capabilities.canDiscard {
            var bits: UInt8 = 0x80 | 0x40 | 0x20                             // LBPU, LBPWS, LBPWS10
            if lun.capabilities.discardZeroes { bits |= 0x04 }              // LBPRZ
            b.put8(5, bits)
            b.put8(6, 0x02)                                                  // thin provisioned
        }
        return 4 + pageLength
    }
}
