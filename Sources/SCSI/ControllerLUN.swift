// LUN 0 as tgt shows it (`ringtgtd --lun0-controller`): tgt creates every target with a LUN 0 of peripheral
// device type 0Ch (storage array controller, usr/scc.c) that the admin can neither add nor delete, so the
// first disk is LUN 1. An initiator configured against tgt (a Linux host's /dev/sdX order, a VMware
// datastore's LUN map) finds the same LUN numbers and device types here. The controller has no medium:
// it answers TEST UNIT READY, REQUEST SENSE, INQUIRY and REPORT LUNS, and the VERIFY commands tgt maps to
// TEST UNIT READY; anything else is INVALID COMMAND OPERATION CODE, as spc_illegal_op answers.

import Floor
import Store
public enum ControllerLUN {
    /// SPC-4 peripheral device type: storage array controller (SCC-2).
    static let peripheralDeviceType: UInt8 = 0x0C
    /// tgt's identity strings for it: the default vendor, scc_lu_init's product id (sic) and revision.
    static let vendor = "IET"
    static let product = "Controler"
    static let revision = "0001"
    /// Version descriptors scc_lu_init claims: SBC-3, iSCSI, SCC-2.
    static let versionDescriptors: [UInt16] = [0x04C0, 0x0960, 0x01FB]
}

extension SCSITask {
    /// Whether this command addresses the emulated controller: LUN 0 with no LU configured there.
    var addressesControllerLUN: Bool { lunNumber == 0 && target?.controllerLUN0 == true }

    mutating func startOnControllerLUN(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        switch opcode {
        case Opcode.testUnitReady, Opcode.verify10, Opcode.verify12, Opcode.verify16: return completeGood()
        case Opcode.requestSense: return requestSense(buffer: buffer, pending: nil, lunMissing: false)
        case Opcode.reportLUNs: return reportLUNs(buffer: buffer)
        case Opcode.inquiry: return controllerInquiry(buffer: buffer)
        default: return invalidOpcode()
        }
    }

    mutating func controllerInquiry(buffer b: UnsafeMutableRawBufferPointer) -> SCSIAction {
        let allocation = Int(cdb.u16(3))
        if cdb[1] & 0xFE != 0 { return invalidField(byte: 1, bit: 1) }
        if cdb[1] & 0x01 != 0 {
            // Only the list of VPD pages, which names itself.
            guard cdb[2] == 0x00 else { return invalidField(byte: 2) }
            b.zero(0, 5)
            b.put8(0, ControllerLUN.peripheralDeviceType)
            b.put16(2, 1)
            return completeDataIn(generated: 5, allocationLength: allocation)
        }
        if cdb[2] != 0 { return invalidField(byte: 2) }
        let n = InquiryData.standardLengthBytes
        b.zero(0, n)
        b.put8(0, ControllerLUN.peripheralDeviceType)
        b.put8(2, InquiryData.versionSPC4)
        b.put8(3, 0x12)                        // HISUP, response data format 2
        b.put8(4, UInt8(n - 5))
        b.put8(7, 0x02)                        // CMDQUE
        b.putASCII(8, ControllerLUN.vendor, width: 8)
        b.putASCII(16, ControllerLUN.product, width: 16)
        b.putASCII(32, ControllerLUN.revision, width: 4)
        for (i, d) in ControllerLUN.versionDescriptors.enumerated() { b.put16(58 + 2 * i, d) }
        return completeDataIn(generated: n, allocationLength: allocation)
    }
}
