import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import SCSITestSupport

@Suite struct SCSIBasicTests {
    @Test func firstCommandFromANewNexusReportsPowerOnThenClears() {
        let h = Harness()
        let n = h.nexus()
        let first = h.run([0, 0, 0, 0, 0, 0], nexus: n)
        #expect(first.hasSense(SenseKey.unitAttention, 0x29, 0x00))
        #expect(first.sense.count == 18 && first.sense[0] == 0x70 && first.sense[7] == 10)
        let second = h.run([0, 0, 0, 0, 0, 0], nexus: n)
        #expect(second.isGood)
        #expect(second.sense.isEmpty)
    }

    @Test func inquiryDoesNotConsumeTheUnitAttention() {
        let h = Harness()
        let n = h.nexus()
        let inq = h.run(CDB.inquiry(), nexus: n, edtl: 255, read: true)
        #expect(inq.isGood)
        #expect(h.run([0, 0, 0, 0, 0, 0], nexus: n).hasSense(SenseKey.unitAttention, 0x29, 0))
    }

    @Test func requestSenseReturnsThePendingUnitAttentionAsData() {
        let h = Harness()
        let n = h.nexus()
        let o = h.run([0x03, 0, 0, 0, 252, 0], nexus: n, edtl: 252, read: true)
        #expect(o.isGood)
        #expect(o.dataIn.count == 18)
        #expect(o.dataIn[2] == SenseKey.unitAttention && o.dataIn[12] == 0x29)
        #expect(o.residual == .underflow(252 - 18))
        let again = h.run([0x03, 0, 0, 0, 252, 0], nexus: n, edtl: 252, read: true)
        #expect(again.dataIn[2] == 0 && again.dataIn[12] == 0)
    }

    @Test func standardInquiryClaimsSPC4AndSBC3() {
        let h = Harness()
        let o = h.run(CDB.inquiry(alloc: 260), nexus: h.nexus(), edtl: 260, read: true)
        #expect(o.isGood)
        #expect(o.dataIn.count == 96)
        #expect(o.dataIn[0] == 0 && o.dataIn[2] == 6 && o.dataIn[3] == 0x12 && Int(o.dataIn[4]) == 96 - 5)
        #expect(o.residual == .underflow(260 - 96))
        #expect(Array(o.dataIn[8 ..< 16]) == Array("RINGTGT ".utf8))
        let descriptors = stride(from: 58, to: 74, by: 2).map { UInt16(o.dataIn[$0]) << 8 | UInt16(o.dataIn[$0 + 1]) }
        #expect(descriptors.contains(0x04C0) && descriptors.contains(0x0460))
    }

    @Test func inquiryTruncatesToAllocationLengthWithoutResidualOverflow() {
        let h = Harness()
        let o = h.run(CDB.inquiry(alloc: 5), nexus: h.nexus(), edtl: 5, read: true)
        #expect(o.isGood && o.dataIn.count == 5 && o.residual == .none)
        let small = h.run(CDB.inquiry(alloc: 96), nexus: h.nexus(), edtl: 40, read: true)
        #expect(small.dataIn.count == 40 && small.residual == .overflow(56))
    }

    @Test func inquiryRejectsPageCodeWithoutEVPDAndUnknownPages() {
        let h = Harness()
        let n = h.nexus()
        let o = h.run(CDB.inquiry(evpd: false, page: 1, alloc: 256), nexus: n, edtl: 256, read: true)
        #expect(o.hasSense(SenseKey.illegalRequest, 0x24, 0))
        #expect(o.sense[15] == 0xC0 && o.sense[17] == 2)   // SKSV, C/D, field byte 2
        let p = h.run(CDB.inquiry(evpd: true, page: 0x99), nexus: n, edtl: 255, read: true)
        #expect(p.hasSense(SenseKey.illegalRequest, 0x24, 0))
    }

    @Test func vpdPagesAreListedAscendingAndEachAnswers() {
        let h = Harness()
        let n = h.nexus()
        let o = h.run(CDB.inquiry(evpd: true, page: 0), nexus: n, edtl: 255, read: true)
        #expect(o.isGood)
        let pages = Array(o.dataIn[4...])
        #expect(pages == [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2])
        for p in pages {
            let r = h.run(CDB.inquiry(evpd: true, page: p), nexus: n, edtl: 255, read: true)
            #expect(r.isGood)
            #expect(r.dataIn[1] == p)
            #expect(r.dataIn.count == 4 + (Int(r.dataIn[2]) << 8 | Int(r.dataIn[3])))
        }
    }

    @Test func deviceIdentificationCarriesNAAPortAndNames() {
        let h = Harness()
        let o = h.run(CDB.inquiry(evpd: true, page: 0x83, alloc: 1024), nexus: h.nexus(), edtl: 1024, read: true)
        #expect(o.isGood)
        let d = o.dataIn
        #expect(d[4] == 0x01 && d[5] == 0x03 && d[7] == 16 && d[8] == 0x60)
        #expect(d[24] == 0x51 && d[25] == 0x94 && d[31] == 1)   // relative target port 1
        #expect(d[32] == 0x51 && d[33] == 0x95)                 // target port group
        #expect(d[40] == 0x53 && d[41] == 0x98)                 // SCSI name string, target port
        let len = Int(d[43])
        let name = String(decoding: d[44 ..< 44 + len].prefix { $0 != 0 }, as: UTF8.self)
        #expect(name == "iqn.2026-01.test:disk,t,0x0001")
        #expect(len % 4 == 0)
    }

    @Test func aVeryLongTargetNameIsTruncatedInTheDesignator() {
        let h = Harness(targetName: "iqn.2026-01.test:" + String(repeating: "x", count: 300))
        let o = h.run(CDB.inquiry(evpd: true, page: 0x83, alloc: 2048), nexus: h.nexus(), edtl: 2048, read: true)
        #expect(o.isGood)
        #expect(o.dataIn[43] == 252 && o.dataIn[44 + 251] == 0)
    }

    @Test func blockLimitsAndProvisioningPagesReflectDiscard() {
        let h = Harness()
        let n = h.nexus()
        let bl = h.run(CDB.inquiry(evpd: true, page: 0xB0), nexus: n, edtl: 255, read: true)
        #expect(bl.dataIn.count == 64 && bl.dataIn[3] == 0x3C)
        let maxUnmap = UInt32(bl.dataIn[20]) << 24 | UInt32(bl.dataIn[21]) << 16 | UInt32(bl.dataIn[22]) << 8 | UInt32(bl.dataIn[23])
        #expect(maxUnmap >= 8)
        let lbp = h.run(CDB.inquiry(evpd: true, page: 0xB2), nexus: n, edtl: 255, read: true)
        #expect(lbp.dataIn[5] & 0xE0 == 0xE0)
        let h2 = Harness(luns: [(0, 4096, 100, StoreCapabilities())])
        let bl2 = h2.run(CDB.inquiry(evpd: true, page: 0xB0), nexus: h2.nexus(), edtl: 255, read: true)
        #expect(bl2.dataIn[20 ..< 28].allSatisfy { $0 == 0 })
        let lbp2 = h2.run(CDB.inquiry(evpd: true, page: 0xB2), nexus: h2.nexus(), edtl: 255, read: true)
        #expect(lbp2.dataIn[5] == 0)
    }

    @Test func readCapacityReportsGeometryAndThinProvisioning() {
        let h = Harness()
        let n = h.nexus()
        h.clearUAs(n)
        let rc10 = h.run([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], nexus: n, edtl: 8, read: true)
        #expect(rc10.dataIn == [0, 0, 0x07, 0xFF, 0, 0, 2, 0])
        let rc16 = h.run(CDB.readCapacity16(), nexus: n, edtl: 32, read: true)
        #expect(rc16.dataIn.count == 32)
        #expect(Array(rc16.dataIn[0 ..< 12]) == [0, 0, 0, 0, 0, 0, 0x07, 0xFF, 0, 0, 2, 0])
        #expect(rc16.dataIn[13] == 0)            // one logical block per physical block
        #expect(rc16.dataIn[14] == 0xC0)         // LBPME, LBPRZ
        let short = h.run(CDB.readCapacity16(alloc: 0), nexus: n, edtl: 0, read: true)
        #expect(short.isGood && short.dataIn.isEmpty)
        let badPMI = h.run([0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0], nexus: n, edtl: 8, read: true)
        #expect(badPMI.hasSense(SenseKey.illegalRequest, 0x24, 0))
    }

    @Test func reportLUNsListsTheTargetAndWorksWithoutALUN() {
        let h = Harness(luns: [(0, 512, 64, StoreCapabilities()), (1, 512, 64, StoreCapabilities()),
                               (300, 512, 64, StoreCapabilities())])
        let n = h.nexus()
        let o = h.run(CDB.reportLUNs(), lun: 7, nexus: n, edtl: 4096, read: true)
        #expect(o.isGood)
        #expect(o.dataIn.count == 8 + 24)
        #expect(Array(o.dataIn[0 ..< 4]) == [0, 0, 0, 24])
        #expect(Array(o.dataIn[8 ..< 10]) == [0, 0] && Array(o.dataIn[16 ..< 18]) == [0, 1])
        #expect(Array(o.dataIn[24 ..< 26]) == [0x41, 0x2C])
        #expect(h.run(CDB.reportLUNs(select: 1), nexus: n, edtl: 4096, read: true).dataIn.count == 8)
        #expect(h.run(CDB.reportLUNs(select: 3), nexus: n, edtl: 4096, read: true).hasSense(SenseKey.illegalRequest, 0x24, 0))
        #expect(h.run(CDB.reportLUNs(alloc: 8), nexus: n, edtl: 8, read: true).hasSense(SenseKey.illegalRequest, 0x24, 0))
    }

    @Test func missingLUNAnswersInquiryWithQualifierAndRejectsOthers() {
        let h = Harness()
        let n = h.nexus()
        let inq = h.run(CDB.inquiry(), lun: 5, nexus: n, edtl: 255, read: true)
        #expect(inq.isGood && inq.dataIn[0] == 0x7F)
        #expect(h.run([0, 0, 0, 0, 0, 0], lun: 5, nexus: n).hasSense(SenseKey.illegalRequest, 0x25, 0))
        let rs = h.run([0x03, 0, 0, 0, 18, 0], lun: 5, nexus: n, edtl: 18, read: true)
        #expect(rs.isGood && rs.dataIn[2] == SenseKey.illegalRequest && rs.dataIn[12] == 0x25)
    }

    @Test func unknownOpcodeIsInvalidCommandOperationCode() {
        let h = Harness()
        let n = h.nexus()
        h.clearUAs(n)
        let o = h.run([0xC5, 0, 0, 0, 0, 0, 0, 0, 0, 0], nexus: n)
        #expect(o.hasSense(SenseKey.illegalRequest, 0x20, 0))
    }

    @Test func cdbLengthsOutsideSixTo260AreRefusedAndLongCDBsParse() {
        let h = Harness()
        let n = h.nexus()
        h.clearUAs(n)
        #expect(h.run([0, 0, 0, 0, 0], nexus: n).hasSense(SenseKey.illegalRequest, 0x24, 0))
        #expect(h.run([UInt8](repeating: 0, count: 261), nexus: n).hasSense(SenseKey.illegalRequest, 0x24, 0))
        let variable = [0x7F, 0, 0, 0, 0, 0, 0, 0x18] + [UInt8](repeating: 0, count: 24)
        #expect(h.run(variable, nexus: n).hasSense(SenseKey.illegalRequest, 0x20, 0))
        #expect(h.run([UInt8](repeating: 0, count: 260), nexus: n).isGood)   // TEST UNIT READY, padded
    }

    @Test func reportedLUNsChangedIsRaisedWhenTheListChanges() {
        let h = Harness()
        let n = h.nexus()
        h.clearUAs(n)
        h.replaceTarget(luns: h.target.luns, generation: 2)
        #expect(h.run([0, 0, 0, 0, 0, 0], nexus: n).hasSense(SenseKey.unitAttention, 0x3F, 0x0E))
        #expect(h.run([0, 0, 0, 0, 0, 0], nexus: n).isGood)
    }
}
