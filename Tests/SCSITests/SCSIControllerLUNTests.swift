import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import SCSITestSupport

/// `ringtgtd --lun0-controller`: LUN 0 answers as tgt's storage array controller (usr/scc.c).
@Suite struct SCSIControllerLUNTests {
    /// A target with one disk at LUN 1 and, when `controller`, the emulated controller at LUN 0.
    func harness(controller: Bool) -> Harness {
        let h = Harness(luns: [(1, 512, 2048, StoreCapabilities(canDiscard: true, discardZeroes: true))])
        h.target = TargetRuntime(tid: 1, name: h.target.name, luns: h.target.luns, acl: [.all], params: [:],
                                 lunGeneration: 1, controllerLUN0: controller)
        return h
    }

    static let reportLUNs: [UInt8] = [Opcode.reportLUNs, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]
    static let inquiry: [UInt8] = [Opcode.inquiry, 0, 0, 0, 96, 0]

    func lunList(_ o: Outcome) -> [UInt64] {
        stride(from: 8, to: o.dataIn.count, by: 8).map { p in
            o.dataIn[p ..< p + 8].prefix(2).reduce(UInt64(0)) { $0 << 8 | UInt64($1) } & 0x3FFF
        }
    }

    @Test func lun0IsAControllerListedFirstAndTheDiskStaysLUN1() {
        let h = harness(controller: true)
        let n = h.nexus()
        #expect(lunList(h.run(Self.reportLUNs, lun: 0, nexus: n, edtl: 256, read: true)) == [0, 1])
        #expect(lunList(h.run(Self.reportLUNs, lun: 1, nexus: n, edtl: 256, read: true)) == [0, 1])
        let inq = h.run(Self.inquiry, lun: 0, nexus: n, edtl: 96, read: true)
        #expect(inq.isGood && inq.dataIn[0] == 0x0C)
        #expect(String(decoding: inq.dataIn[8 ..< 11], as: UTF8.self) == "IET")
        #expect(String(decoding: inq.dataIn[16 ..< 25], as: UTF8.self) == "Controler")
        #expect(h.run([0, 0, 0, 0, 0, 0], lun: 0, nexus: n).isGood)
        let rs = h.run([Opcode.requestSense, 0, 0, 0, 18, 0], lun: 0, nexus: n, edtl: 18, read: true)
        #expect(rs.isGood && rs.dataIn[2] & 0x0F == SenseKey.noSense)
        let read = h.run([Opcode.read10, 0, 0, 0, 0, 0, 0, 0, 1, 0], lun: 0, nexus: n, edtl: 512, read: true)
        #expect(read.hasSense(SenseKey.illegalRequest, 0x20, 0x00))
        let vpd = h.run([Opcode.inquiry, 1, 0x00, 0, 16, 0], lun: 0, nexus: n, edtl: 16, read: true)
        #expect(vpd.isGood && vpd.dataIn == [0x0C, 0x00, 0x00, 0x01, 0x00])
        #expect(h.run([Opcode.inquiry, 1, 0x83, 0, 255, 0], lun: 0, nexus: n, edtl: 255, read: true)
            .hasSense(SenseKey.illegalRequest, 0x24, 0x00))
        #expect(h.run(Self.inquiry, lun: 1, nexus: n, edtl: 96, read: true).dataIn[0] == 0x00)
    }

    @Test func withoutTheOptionLUN0IsAbsent() {
        let h = harness(controller: false)
        let n = h.nexus()
        #expect(lunList(h.run(Self.reportLUNs, lun: 1, nexus: n, edtl: 256, read: true)) == [1])
        #expect(h.run(Self.inquiry, lun: 0, nexus: n, edtl: 96, read: true).dataIn[0] == InquiryData.noLogicalUnit)
        #expect(h.run([0, 0, 0, 0, 0, 0], lun: 0, nexus: n).hasSense(SenseKey.illegalRequest, 0x25, 0x00))
    }

    @Test func aConfiguredLUN0IsNotShadowed() {
        let h = Harness()
        h.target = TargetRuntime(tid: 1, name: h.target.name, luns: h.target.luns, acl: [.all], params: [:],
                                 lunGeneration: 1, controllerLUN0: true)
        let n = h.nexus()
        #expect(lunList(h.run(Self.reportLUNs, nexus: n, edtl: 256, read: true)) == [0])
        #expect(h.run(Self.inquiry, nexus: n, edtl: 96, read: true).dataIn[0] == 0x00)
    }
}
