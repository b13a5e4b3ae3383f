import Foundation
import Testing
@testable import Target
@testable import Store
@testable import SCSI
@testable import SCSITestSupport
@testable import ISCSI
@testable import NBD
@testable import Reactor

/// tgt's LUN parameters that change what an initiator sees (lbppbe, la_lba, optimal_xfer_gran, online,
/// removable, sense_format, vendor_id, product_id, thin_provisioning) and `--tgt-defaults`, checked on the
/// bytes a SCSI command returns.
@Suite struct SCSIMigrationKnobTests {
    /// A harness whose LUN 0 is built the way the registry builds one: defaults, then `params`.
    func knobbed(_ params: String, defaults: LUNDefaults = .ringtgt) throws -> (Harness, Nexus) {
        let h = Harness()
        var identity = LUNIdentity.tgtDefaults(tid: 1, lun: 0, defaults: defaults)
        try identity.apply(params: params)
        let old = h.lun()
        let unit = try Registry.makeUnit(number: 0, blockSize: old.blockSize, byteCount: old.byteCount,
                                         storeCapabilities: old.capabilities, identity: identity, backing: .null,
                                         bstype: "rdwr", path: "/dev/null")
        h.replaceTarget(luns: [unit], generation: 2)
        let n = h.nexus()
        h.clearUAs(n)
        return (h, n)
    }

    static let testUnitReady: [UInt8] = [0x00, 0, 0, 0, 0, 0]
    static func preventAllow(_ prevent: Bool) -> [UInt8] { [0x1E, 0, 0, 0, prevent ? 1 : 0, 0] }
    static func startStop(start: Bool, loadEject: Bool) -> [UInt8] {
        [0x1B, 0, 0, 0, (loadEject ? 0x02 : 0) | (start ? 0x01 : 0), 0]
    }

    @Test func inquiryShowsRemovableBitVendorAndProduct() throws {
        let (plain, pn) = try knobbed("")
        let before = plain.run(CDB.inquiry(), nexus: pn, edtl: 255, read: true)
        #expect(before.isGood && before.dataIn[1] == 0x00)
        #expect(Array(before.dataIn[8 ..< 16]) == Array("RINGTGT ".utf8))

        let (h, n) = try knobbed("removable=1,vendor_id=IET,product_id=VTL-DISK")
        let o = h.run(CDB.inquiry(), nexus: n, edtl: 255, read: true)
        #expect(o.isGood)
        #expect(o.dataIn[1] == 0x80, "RMB")
        #expect(Array(o.dataIn[8 ..< 16]) == Array("IET     ".utf8))
        #expect(Array(o.dataIn[16 ..< 32]) == Array("VTL-DISK        ".utf8))
    }

    @Test func readCapacity16ReportsLBPPBEAndLowestAlignedLBA() throws {
        let (h, n) = try knobbed("lbppbe=3,la_lba=300")
        let o = h.run(CDB.readCapacity16(), nexus: n, edtl: 32, read: true)
        #expect(o.isGood)
        #expect(o.dataIn[13] & 0x0F == 3)
        #expect((UInt16(o.dataIn[14] & 0x3F) << 8 | UInt16(o.dataIn[15])) == 300)
        #expect(o.dataIn[14] & 0x80 != 0, "LBPME stays: the store still provisions thinly")
        // The physical block is 8 logical blocks now, and VPD B0 reports it as the optimal granularity.
        let b0 = h.run(CDB.inquiry(evpd: true, page: 0xB0), nexus: n, edtl: 255, read: true)
        #expect(b0.isGood && UInt16(b0.dataIn[6]) << 8 | UInt16(b0.dataIn[7]) == 8)
    }

    @Test func vpdBlockLimitsReportsOptimalTransferGranularity() throws {
        let (h, n) = try knobbed("optimal_xfer_gran=64")
        let o = h.run(CDB.inquiry(evpd: true, page: 0xB0), nexus: n, edtl: 255, read: true)
        #expect(o.isGood)
        #expect(UInt16(o.dataIn[6]) << 8 | UInt16(o.dataIn[7]) == 64)
    }

    /// `--tgt-defaults`: vendor IET, and no logical block provisioning anywhere an initiator looks.
    @Test func tgtDefaultsTurnThinProvisioningOffAndSayIET() throws {
        let (h, n) = try knobbed("", defaults: .tgt)
        let inq = h.run(CDB.inquiry(), nexus: n, edtl: 255, read: true)
        #expect(Array(inq.dataIn[8 ..< 16]) == Array("IET     ".utf8))
        let rc = h.run(CDB.readCapacity16(), nexus: n, edtl: 32, read: true)
        #expect(rc.isGood && rc.dataIn[14] & 0xC0 == 0, "LBPME and LBPRZ off")
        let b2 = h.run(CDB.inquiry(evpd: true, page: 0xB2), nexus: n, edtl: 255, read: true)
        #expect(b2.isGood && b2.dataIn[5] == 0 && b2.dataIn[6] == 0)
        let b0 = h.run(CDB.inquiry(evpd: true, page: 0xB0), nexus: n, edtl: 255, read: true)
        #expect(b0.isGood)
        #expect(b0.dataIn[6] == 0 && b0.dataIn[7] == 0, "tgt reports no optimal transfer granularity")
        #expect(b0.dataIn[20 ..< 32].allSatisfy { $0 == 0 }, "no UNMAP limits without thin provisioning")
    }

    /// sense_format=1: descriptor sense (72h) with a sense key specific descriptor for the field pointer.
    @Test func senseFormatOneGivesDescriptorSense() throws {
        let badInquiry: [UInt8] = [0x12, 0, 0x01, 0, 255, 0]        // page code without EVPD
        let (plain, pn) = try knobbed("")
        #expect(plain.run(badInquiry, nexus: pn, edtl: 255, read: true).sense.first == 0x70)

        let (h, n) = try knobbed("sense_format=1")
        let o = h.run(badInquiry, nexus: n, edtl: 255, read: true)
        #expect(o.status == SCSIStatus.checkCondition)
        #expect(o.sense.count == 16)
        #expect(Array(o.sense.prefix(4)) == [0x72, SenseKey.illegalRequest, 0x24, 0x00])
        #expect(o.sense[7] == 8, "additional sense length: one sense key specific descriptor")
        #expect(Array(o.sense[8 ..< 10]) == [0x02, 0x06])
        #expect(o.sense[12] == 0xC0 && o.sense[13] == 0 && o.sense[14] == 2, "SKSV, C/D, field byte 2")

        // A unit attention goes out in the same format.
        let fresh = h.nexus("iqn.2026-01.test:other")
        let ua = h.run(Self.testUnitReady, nexus: fresh)
        #expect(Array(ua.sense.prefix(4)) == [0x72, SenseKey.unitAttention, 0x29, 0x00] && ua.sense.count == 8)

        // REQUEST SENSE follows its DESC bit.
        let desc = h.run([0x03, 0x01, 0, 0, 252, 0], nexus: n, edtl: 252, read: true)
        #expect(desc.isGood && desc.dataIn.count == 8 && desc.dataIn[0] == 0x72)
        let fixed = h.run([0x03, 0x00, 0, 0, 252, 0], nexus: n, edtl: 252, read: true)
        #expect(fixed.isGood && fixed.dataIn.count == 18 && fixed.dataIn[0] == 0x70)
    }

    @Test func descriptorSenseCarriesTheFull64BitInformation() {
        var s = SenseData(key: SenseKey.miscompare, asc: .miscompareDuringVerify, information: 0x1_0000_0002,
                          senseKeySpecific: nil, descriptorFormat: true)
        var b = [UInt8](repeating: 0xEE, count: SenseData.maxLengthBytes)
        b.withUnsafeMutableBytes { s.render(to: $0.baseAddress!) }
        #expect(s.length == 20)
        #expect(Array(b.prefix(12)) == [0x72, 0x0E, 0x1D, 0, 0, 0, 0, 12, 0x00, 0x0A, 0x80, 0])
        #expect(Array(b[12 ..< 20]) == [0, 0, 0, 1, 0, 0, 0, 2])
        s.descriptorFormat = false
        #expect(s.length == SenseData.fixedLengthBytes)
    }

    /// online=0: TEST UNIT READY says NOT READY; a removable LU also refuses medium access (tgt).
    @Test func offlineLUNIsNotReady() throws {
        let (fixedDisk, fn) = try knobbed("online=0")
        #expect(fixedDisk.run(Self.testUnitReady, nexus: fn).hasSense(SenseKey.notReady, 0x04, 0x01))

        let (h, n) = try knobbed("removable=1,online=0")
        #expect(h.run(Self.testUnitReady, nexus: n).hasSense(SenseKey.notReady, 0x3A, 0x00))
        #expect(h.run(CDB.rw10(0x28, lba: 0, blocks: 1), nexus: n, edtl: 512, read: true)
                .hasSense(SenseKey.notReady, 0x3A, 0x00))
        #expect(h.run(CDB.rw10(0x2A, lba: 0, blocks: 1), nexus: n, write: true, dataOut: [UInt8](repeating: 1, count: 512))
                .hasSense(SenseKey.notReady, 0x3A, 0x00))
        #expect(h.run(CDB.readCapacity16(), nexus: n, edtl: 32, read: true).hasSense(SenseKey.notReady, 0x3A, 0x00))
        #expect(h.disk().ops.isEmpty, "nothing reached the store")
        #expect(h.run(CDB.inquiry(), nexus: n, edtl: 255, read: true).isGood)
    }

    /// removable=1: PREVENT ALLOW MEDIUM REMOVAL holds an eject off; ALLOW lets it through, and a load
    /// brings the medium back.
    @Test func preventAllowMediumRemovalGuardsTheEject() throws {
        let (h, n) = try knobbed("removable=1")
        let state = h.lun().state
        #expect(h.run(Self.preventAllow(true), nexus: n).isGood)
        #expect(state.isRemovalPrevented)
        #expect(h.run(Self.startStop(start: false, loadEject: true), nexus: n)
                .hasSense(SenseKey.illegalRequest, 0x53, 0x02))
        #expect(state.isOnline)
        #expect(!state.setOnline(false), "the admin's online=0 is refused too")

        #expect(h.run(Self.preventAllow(false), nexus: n).isGood)
        #expect(h.run(Self.startStop(start: false, loadEject: true), nexus: n).isGood)
        #expect(!state.isOnline)
        #expect(h.run(Self.testUnitReady, nexus: n).hasSense(SenseKey.notReady, 0x3A, 0x00))
        // Loading is held off as well while removal is prevented (libiscsi's PreventAllow.Eject).
        #expect(h.run(Self.preventAllow(true), nexus: n).isGood)
        #expect(h.run(Self.startStop(start: true, loadEject: true), nexus: n)
                .hasSense(SenseKey.illegalRequest, 0x53, 0x02))
        #expect(h.run(Self.preventAllow(false), nexus: n).isGood)
        #expect(h.run(Self.startStop(start: true, loadEject: true), nexus: n).isGood)
        #expect(h.run(Self.testUnitReady, nexus: n).isGood)
    }

    @Test func knobValuesOutsideTheirFieldsAreRefused() {
        for params in ["lbppbe=16", "la_lba=16384", "optimal_xfer_gran=65536", "removable=yes", "online=",
                       "sense_format=-1"] {
            var identity = LUNIdentity.tgtDefaults(tid: 1, lun: 1)
            #expect(throws: AdminError.self, "\(params)") { try identity.apply(params: params) }
        }
        var identity = LUNIdentity.tgtDefaults(tid: 1, lun: 1, defaults: .tgt)
        #expect(identity.lbppbeFromBacking)
        try? identity.apply(params: "lbppbe=2")
        #expect(!identity.lbppbeFromBacking && identity.presentation.lbppbe == 2, "an explicit lbppbe wins")
    }

    /// tgt's update_lbppbe: a 4 KiB st_blksize under 512-byte blocks is exponent 3.
    @Test func lbppbeFollowsThePreferredIOSizeAsTgtComputesIt() {
        #expect(LUNIdentity.lbppbe(preferredIOBytes: 4096, blockSize: 512) == 3)
        #expect(LUNIdentity.lbppbe(preferredIOBytes: 4096, blockSize: 4096) == 0)
        #expect(LUNIdentity.lbppbe(preferredIOBytes: 0, blockSize: 512) == 0)
    }

    /// `--tgt-defaults` through the registry: a file LUN takes LBPPBE from the file's st_blksize.
    @Test func registryWithTgtDefaultsTakesLBPPBEFromTheBackingFile() throws {
        let path = NSTemporaryDirectory() + "ringtgt-knob-\(getpid()).img"
        #expect(FileManager.default.createFile(atPath: path, contents: Data(count: 4096)))
        defer { try? FileManager.default.removeItem(atPath: path) }
        var st = stat()
        try #require(stat(path, &st) == 0)
        let fabric = FakeFabric()
        let opener = FakeOpener()
        opener.capabilities = StoreCapabilities(canDiscard: true, discardZeroes: true, canReportMapping: true)
        var options = Registry.Options()
        options.lunDefaults = .tgt
        let registry = Registry(fabric: fabric, opener: opener, options: options)
        func run(_ line: String) -> AdminResponse {
            guard case .send(let request, _) = TgtadmCommandLine.parse(line.split(separator: " ").map(String.init)) else {
                return AdminResponse(exitCode: 99)
            }
            return registry.execute(request)
        }
        #expect(run("--lld iscsi --op new --mode target --tid 1 -T iqn.2026-01.test:k").exitCode == 0)
        #expect(run("--lld iscsi --op new --mode logicalunit --tid 1 --lun 1 --backing-store \(path)").exitCode == 0)
        let unit = try #require(fabric.latest?.target(tid: 1)?.lun(1))
        #expect(unit.vendor == "IET" && !unit.capabilities.canDiscard)
        #expect(unit.presentation.lbppbe == LUNIdentity.lbppbe(preferredIOBytes: Int(st.st_blksize), blockSize: 512))

        // online=0 while an initiator prevents removal: tgt's words.
        let nexus = Nexus(initiatorName: "iqn.2026-01.test:i", isid: 1, targetName: "iqn.2026-01.test:k",
                          portalGroupTag: 1, relativeTargetPortID: 1)
        _ = unit.state.admit(nexus: nexus, lunGeneration: 1, consume: true)
        unit.state.setPreventsRemoval(true, nexusID: nexus.id)
        let refused = run("--lld iscsi --op update --mode logicalunit --tid 1 --lun 1 --params online=0")
        #expect(refused.stderr == "ringtgtadm: this device has Prevent Removal set\n")
        unit.state.setPreventsRemoval(false, nexusID: nexus.id)
        #expect(run("--lld iscsi --op update --mode logicalunit --tid 1 --lun 1 --params online=0").exitCode == 0)
        #expect(fabric.latest?.target(tid: 1)?.lun(1) === unit, "online alone keeps the LU and its state")
        #expect(!unit.state.isOnline)
    }

    /// tgt-admin's targets.conf carries the same keys, at target level or in a <backing-store> block.
    @Test func configFileTakesTheKnobs() throws {
        let h = ControlHarness()
        let text = """
            <target iqn.2026-01.test:conf>
                sense_format 1
                <backing-store /tmp/conf.img>
                    removable 1
                    lbppbe 3
                    la_lba 7
                    optimal_xfer_gran 32
                    online 0
                </backing-store>
            </target>
            """
        try ConfigFile.apply(text, to: h.registry)
        let unit = try #require(h.fabric.latest?.target(tid: 1)?.lun(1))
        var expected = LUNPresentation()
        expected.lbppbe = 3
        expected.lowestAlignedLBA = 7
        expected.optimalTransferGranularityBlocks = 32
        expected.removable = true
        expected.online = false
        expected.descriptorSense = true
        #expect(unit.presentation == expected)
        #expect(!unit.state.isOnline)
    }
}
