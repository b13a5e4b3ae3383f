// REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35): the table of every command this device server
// implements with its CDB usage data (the bits it examines; DPO/FUA marked where honoured), and the three
// reporting options.

import Floor
import Store
public struct SupportedCommand {
    let opcode: UInt8
    /// Service action, for opcodes that have them.
    let serviceAction: UInt16?
    /// CDB usage data; its length is the CDB length.
    let usage: [UInt8]
}

public enum SupportedOpcodes {
    /// Nominal and recommended command timeouts reported with RCTD, in seconds.
    static let nominalTimeoutSeconds: UInt32 = 1
    static let recommendedTimeoutSeconds: UInt32 = 30
    static let timeoutDescriptorBytes = 12

    private static func c6(_ op: UInt8, _ b1: UInt8, _ b2: UInt8, _ b3: UInt8, _ b4: UInt8) -> SupportedCommand {
        SupportedCommand(opcode: op, serviceAction: nil, usage: [op, b1, b2, b3, b4, 0x07])
    }
    /// 10-byte CDB with LBA bytes 2-5 and transfer length bytes 7-8.
    private static func rw10(_ op: UInt8, _ b1: UInt8, group: UInt8 = 0x00) -> SupportedCommand {
        SupportedCommand(opcode: op, serviceAction: nil, usage: [op, b1, 0xFF, 0xFF, 0xFF, 0xFF, group, 0xFF, 0xFF, 0x07])
    }
    private static func rw12(_ op: UInt8, _ b1: UInt8) -> SupportedCommand {
        SupportedCommand(opcode: op, serviceAction: nil,
                         usage: [op, b1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x07])
    }
    private static func rw16(_ op: UInt8, _ b1: UInt8) -> SupportedCommand {
        SupportedCommand(opcode: op, serviceAction: nil,
                         usage: [op, b1] + [UInt8](repeating: 0xFF, count: 12) + [0x00, 0x07])
    }

    static let all: [SupportedCommand] = {
        var t: [SupportedCommand] = [
            c6(Opcode.testUnitReady, 0x00, 0x00, 0x00, 0x00),
            c6(Opcode.requestSense, 0x01, 0x00, 0x00, 0xFF),
            c6(Opcode.read6, 0x1F, 0xFF, 0xFF, 0xFF),
            c6(Opcode.write6, 0x1F, 0xFF, 0xFF, 0xFF),
            c6(Opcode.inquiry, 0x01, 0xFF, 0xFF, 0xFF),
            c6(Opcode.modeSelect6, 0x11, 0x00, 0x00, 0xFF),
            c6(Opcode.reserve6, 0x00, 0x00, 0x00, 0x00),
            c6(Opcode.release6, 0x00, 0x00, 0x00, 0x00),
            c6(Opcode.modeSense6, 0x08, 0xFF, 0xFF, 0xFF),
            c6(Opcode.startStopUnit, 0x00, 0x00, 0x00, 0xF5),
            c6(Opcode.preventAllowMediumRemoval, 0x00, 0x00, 0x00, 0x03),
            SupportedCommand(opcode: Opcode.readCapacity10, serviceAction: nil,
                             usage: [Opcode.readCapacity10, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x01, 0x07]),
            rw10(Opcode.read10, 0x18),
            rw10(Opcode.write10, 0x18),
            rw10(Opcode.writeAndVerify10, 0x16),
            rw10(Opcode.verify10, 0x16),
            rw10(Opcode.prefetch10, 0x02),
            rw10(Opcode.synchronizeCache10, 0x02),
            SupportedCommand(opcode: Opcode.readDefectData10, serviceAction: nil,
                             usage: [Opcode.readDefectData10, 0x00, 0x1F, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x07]),
            rw10(Opcode.writeSame10, 0x08),
            SupportedCommand(opcode: Opcode.unmap, serviceAction: nil,
                             usage: [Opcode.unmap, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x07]),
            SupportedCommand(opcode: Opcode.modeSelect10, serviceAction: nil,
                             usage: [Opcode.modeSelect10, 0x11, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x07]),
            SupportedCommand(opcode: Opcode.reserve10, serviceAction: nil,
                             usage: [Opcode.reserve10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07]),
            SupportedCommand(opcode: Opcode.release10, serviceAction: nil,
                             usage: [Opcode.release10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07]),
            SupportedCommand(opcode: Opcode.modeSense10, serviceAction: nil,
                             usage: [Opcode.modeSense10, 0x18, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x07]),
        ]
        for sa: UInt8 in 0 ... 3 {
            t.append(SupportedCommand(opcode: Opcode.persistentReserveIn, serviceAction: UInt16(sa),
                                      usage: [Opcode.persistentReserveIn, sa, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x07]))
        }
        for sa: UInt8 in 0 ... 6 {
            t.append(SupportedCommand(opcode: Opcode.persistentReserveOut, serviceAction: UInt16(sa),
                                      usage: [Opcode.persistentReserveOut, sa, 0xFF, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x07]))
        }
        t.append(SupportedCommand(opcode: Opcode.extendedCopy, serviceAction: UInt16(ServiceAction.extendedCopyLID1),
                                  usage: [Opcode.extendedCopy, ServiceAction.extendedCopyLID1]
                                      + [UInt8](repeating: 0, count: 8) + [0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x07]))
        for sa in [SanitizeServiceAction.overwrite, SanitizeServiceAction.blockErase,
                   SanitizeServiceAction.cryptographicErase, SanitizeServiceAction.exitFailureMode] {
            t.append(SupportedCommand(opcode: Opcode.sanitize, serviceAction: UInt16(sa),
                                      usage: [Opcode.sanitize, 0x80 | 0x20 | sa, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x07]))
        }
        for sa in [ServiceAction.receiveCopyStatusLID1, ServiceAction.receiveCopyOperatingParameters] {
            t.append(SupportedCommand(opcode: Opcode.receiveCopyResults, serviceAction: UInt16(sa),
                                      usage: [Opcode.receiveCopyResults, sa, 0xFF]
                                          + [UInt8](repeating: 0, count: 7) + [0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x07]))
        }
        t += [
            rw16(Opcode.read16, 0x18),
            SupportedCommand(opcode: Opcode.compareAndWrite, serviceAction: nil,
                             usage: [Opcode.compareAndWrite, 0x18] + [UInt8](repeating: 0xFF, count: 8)
                                 + [0x00, 0x00, 0x00, 0xFF, 0x00, 0x07]),
            rw16(Opcode.write16, 0x18),
            rw16(Opcode.orWrite16, 0x18),
            rw16(Opcode.writeAndVerify16, 0x16),
            rw16(Opcode.verify16, 0x16),
            rw16(Opcode.prefetch16, 0x02),
            rw16(Opcode.synchronizeCache16, 0x02),
            rw16(Opcode.writeSame16, 0x09),
            SupportedCommand(opcode: Opcode.serviceActionIn16, serviceAction: UInt16(ServiceAction.readCapacity16),
                             usage: [Opcode.serviceActionIn16, ServiceAction.readCapacity16]
                                 + [UInt8](repeating: 0, count: 8) + [0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x07]),
            SupportedCommand(opcode: Opcode.serviceActionIn16, serviceAction: UInt16(ServiceAction.getLBAStatus),
                             usage: [Opcode.serviceActionIn16, ServiceAction.getLBAStatus]
                                 + [UInt8](repeating: 0xFF, count: 12) + [0x00, 0x07]),
            SupportedCommand(opcode: Opcode.reportLUNs, serviceAction: nil,
                             usage: [Opcode.reportLUNs, 0x00, 0xFF, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x07]),
            SupportedCommand(opcode: Opcode.maintenanceIn, serviceAction: UInt16(ServiceAction.reportSupportedOperationCodes),
                             usage: [Opcode.maintenanceIn, ServiceAction.reportSupportedOperationCodes, 0x87, 0xFF, 0xFF,
                                     0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x07]),
            SupportedCommand(opcode: Opcode.maintenanceIn, serviceAction: UInt16(ServiceAction.reportTargetPortGroups),
                             usage: [Opcode.maintenanceIn, 0xE0 | ServiceAction.reportTargetPortGroups, 0x00, 0x00, 0x00,
                                     0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x07]),
            SupportedCommand(opcode: Opcode.maintenanceOut, serviceAction: UInt16(ServiceAction.setTargetPortGroups),
                             usage: [Opcode.maintenanceOut, ServiceAction.setTargetPortGroups, 0x00, 0x00, 0x00,
                                     0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x07]),
            rw12(Opcode.read12, 0x18),
            rw12(Opcode.write12, 0x18),
            rw12(Opcode.writeAndVerify12, 0x16),
            rw12(Opcode.verify12, 0x16),
            SupportedCommand(opcode: Opcode.readDefectData12, serviceAction: nil,
                             usage: [Opcode.readDefectData12, 0x1F, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x07]),
        ]
        return t
    }()

    static func hasServiceActions(_ op: UInt8) -> Bool { all.contains { $0.opcode == op && $0.serviceAction != nil } }
}

extension SCSITask {
    /// Commands that depend on what the LU's store can do.
    func isOffered(_ c: SupportedCommand) -> Bool { c.opcode != Opcode.sanitize || SCSITask.offersSanitize(lun) }

    mutating func reportSupportedOperationCodes(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        let rctd = cdb[2] & 0x80 != 0
        let options = cdb[2] & 0x07
        let requestedOpcode = cdb[3]
        let requestedSA = cdb.u16(4)
        let allocation = Int(cdb.u32(6))
        let b = buffer
        let timeoutBytes = rctd ? SupportedOpcodes.timeoutDescriptorBytes : 0
        func putTimeout(_ p: Int) {
            b.zero(p, SupportedOpcodes.timeoutDescriptorBytes)
            b.put16(p, 0x0A)
            b.put32(p + 4, SupportedOpcodes.nominalTimeoutSeconds)
            b.put32(p + 8, SupportedOpcodes.recommendedTimeoutSeconds)
        }
        switch options {
        case 0:
            var p = 4
            for c in SupportedOpcodes.all where isOffered(c) {
                if p + 8 + timeoutBytes > b.count { break }
                b.zero(p, 8)
                b.put8(p, c.opcode)
                b.put16(p + 2, c.serviceAction ?? 0)
                b.put8(p + 5, (rctd ? 0x02 : 0) | (c.serviceAction != nil ? 0x01 : 0))
                b.put16(p + 6, UInt16(c.usage.count))
                p += 8
                if rctd { putTimeout(p); p += timeoutBytes }
            }
            b.put32(0, UInt32(p - 4))
            return completeDataIn(generated: p, allocationLength: allocation)
        case 1, 2:
            let hasSA = SupportedOpcodes.hasServiceActions(requestedOpcode)
            if options == 1 && hasSA { return invalidField(byte: 2, bit: 2) }
            if options == 2 && !hasSA && SupportedOpcodes.all.contains(where: { $0.opcode == requestedOpcode }) {
                return invalidField(byte: 2, bit: 2)
            }
            let match = SupportedOpcodes.all.first {
                $0.opcode == requestedOpcode && (options == 1 || $0.serviceAction == requestedSA) && isOffered($0)
            }
            b.zero(0, 4)
            guard let c = match else {
                b.put8(1, 0x01)                                   // SUPPORT 001b: not supported
                return completeDataIn(generated: 4, allocationLength: allocation)
            }
            b.put8(1, (rctd ? 0x80 : 0) | 0x03)                   // SUPPORT 011b: as the standard says
            b.put16(2, UInt16(c.usage.count))
            for (i, v) in c.usage.enumerated() { b.put8(4 + i, v) }
            var p = 4 + c.usage.count
            if rctd { putTimeout(p); p += timeoutBytes }
            return completeDataIn(generated: p, allocationLength: allocation)
        default:
            return invalidField(byte: 2, bit: 2)
        }
    }
}
