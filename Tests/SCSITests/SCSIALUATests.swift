import Foundation
import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import SCSITestSupport

/// ALUA (SCSI/ALUA.swift): TPGS, the VPD designators, REPORT / SET TARGET PORT GROUPS, the commands each
/// state allows with SPC-4's sense, and ASYMMETRIC ACCESS STATE CHANGED on every path of the LU.
@Suite struct SCSIALUATests {
    let tur: [UInt8] = [0, 0, 0, 0, 0, 0]

    static func rtpg(extended: Bool = false, alloc: Int = 1024) -> [UInt8] {
        [0xA3, (extended ? 0x20 : 0x00) | 0x0A, 0, 0, 0, 0] + CDB.be32(UInt64(alloc)) + [0, 0]
    }

    static func stpg(_ descriptors: [(state: UInt8, group: UInt16)]) -> (cdb: [UInt8], data: [UInt8]) {
        var data: [UInt8] = [0, 0, 0, 0]
        for d in descriptors { data += [d.state, 0] + CDB.be16(Int(d.group)) }
        return ([0xA4, 0x0A, 0, 0, 0, 0] + CDB.be32(UInt64(data.count)) + [0, 0], data)
    }

    /// One LU with two ports, as two gateways (or two targets with one scsi_id) make it: target A in
    /// group 1 with port 1, target B in group 2 with port 2. The harness runs through A; `throughB` swaps.
    struct TwoPorts {
        let h = Harness()
        let a: TargetRuntime
        let b: TargetRuntime
        let groupA = TargetPortGroup(id: 1)
        let groupB: TargetPortGroup

        init(stateB: ALUAState = .standby) {
            groupB = TargetPortGroup(id: 2, state: stateB)
            let lunA = h.lun()
            let lunB = LogicalUnit(number: 0, blockSize: lunA.blockSize, blockCount: lunA.blockCount,
                                   capabilities: lunA.capabilities, serial: lunA.serial, naa: lunA.naa,
                                   backing: .null, bstype: "rdwr", path: "/dev/null")
            let table = ALUATable(ports: [ALUAPort(relativeTargetPortID: 1, group: groupA, luns: [lunA]),
                                          ALUAPort(relativeTargetPortID: 2, group: groupB, luns: [lunB])])
            a = TargetRuntime(tid: 1, name: "iqn.2026-01.test:disk", relativeTargetPortID: 1, luns: [lunA], acl: [.all],
                              params: [:], lunGeneration: 1, portGroup: groupA, alua: table)
            b = TargetRuntime(tid: 2, name: "iqn.2026-01.test:disk-b", relativeTargetPortID: 2, luns: [lunB], acl: [.all],
                              params: [:], lunGeneration: 1, portGroup: groupB, alua: table)
            table.refreshAll()
            h.target = a
        }

        func nexus(on t: TargetRuntime, _ name: String, isid: UInt64) -> Nexus {
            let n = Nexus(initiatorName: name, isid: isid, targetName: t.name, portalGroupTag: 1,
                          relativeTargetPortID: t.relativeTargetPortID)
            run(t, tur, n)
            h.target = t
            h.clearUAs(n)
            h.target = a
            return n
        }

        var tur: [UInt8] { [0, 0, 0, 0, 0, 0] }

        @discardableResult
        func run(_ t: TargetRuntime, _ cdb: [UInt8], _ n: Nexus, edtl: Int? = nil, read: Bool = false,
                 write: Bool = false, dataOut: [UInt8] = []) -> Outcome {
            h.target = t
            defer { h.target = a }
            return h.run(cdb, nexus: n, edtl: edtl, read: read, write: write, dataOut: dataOut)
        }
    }

    /// The group descriptors of RTPG data: (state, status, group, ports).
    func groups(_ data: [UInt8], extended: Bool = false) -> [(state: UInt8, status: UInt8, id: UInt16, ports: [UInt16])] {
        var out: [(UInt8, UInt8, UInt16, [UInt16])] = []
        var p = extended ? 8 : 4
        while p + 8 <= data.count {
            let count = Int(data[p + 7])
            let ports = (0 ..< count).map { UInt16(data[p + 8 + 4 * $0 + 2]) << 8 | UInt16(data[p + 8 + 4 * $0 + 3]) }
            out.append((data[p] & 0x0F, data[p + 5], UInt16(data[p + 2]) << 8 | UInt16(data[p + 3]), ports))
            p += 8 + 4 * count
        }
        return out
    }

    @Test func standardInquiryAdvertisesImplicitAndExplicitALUA() {
        let h = Harness()
        let n = h.nexus()
        let o = h.run(CDB.inquiry(), nexus: n, edtl: 255, read: true)
        #expect(o.isGood)
        #expect(o.dataIn[5] & 0x30 == 0x30)
        #expect(o.dataIn[5] & 0x08 == 0x08)        // 3PC stays
    }

    @Test func deviceIdentificationNamesThePortAndItsGroup() {
        let two = TwoPorts()
        let n = two.nexus(on: two.b, "iqn.2026-01.test:a", isid: 1)
        let o = two.run(two.b, CDB.inquiry(evpd: true, page: 0x83, alloc: 1024), n, edtl: 1024, read: true)
        #expect(o.isGood)
        var designators: [UInt8: [UInt8]] = [:]
        var p = 4
        while p + 4 <= o.dataIn.count {
            let length = Int(o.dataIn[p + 3])
            designators[o.dataIn[p + 1] & 0x0F] = Array(o.dataIn[p + 4 ..< min(o.dataIn.count, p + 4 + length)])
            p += 4 + length
        }
        #expect(designators[0x4] == [0, 0, 0, 2])     // relative target port 2
        #expect(designators[0x5] == [0, 0, 0, 2])     // target port group 2
    }

    @Test func reportTargetPortGroupsListsEveryPortOfTheLUInBothFormats() {
        let two = TwoPorts()
        let n = two.nexus(on: two.a, "iqn.2026-01.test:a", isid: 1)
        let o = two.run(two.a, Self.rtpg(), n, edtl: 1024, read: true)
        #expect(o.isGood)
        #expect(o.dataIn.count == 4 + 12 + 12)
        #expect(Array(o.dataIn[0 ..< 4]) == [0, 0, 0, 24])
        let g = groups(o.dataIn)
        #expect(g.map(\.id) == [1, 2])
        #expect(g.map(\.state) == [ALUAState.activeOptimized.rawValue, ALUAState.standby.rawValue])
        #expect(g.map(\.ports) == [[1], [2]])
        #expect(o.dataIn[5] == ALUAState.supportedStatesBits)

        let x = two.run(two.a, Self.rtpg(extended: true), n, edtl: 1024, read: true)
        #expect(x.isGood)
        #expect(x.dataIn.count == 8 + 24)
        #expect(Array(x.dataIn[0 ..< 4]) == [0, 0, 0, 28])
        #expect(x.dataIn[4] == 0x10)
        #expect(groups(x.dataIn, extended: true).map(\.ports) == [[1], [2]])

        // A short allocation length truncates the data, not the RETURN DATA LENGTH.
        let short = two.run(two.a, Self.rtpg(alloc: 8), n, edtl: 8, read: true)
        #expect(short.isGood && short.dataIn.count == 8 && short.dataIn[3] == 24)
        // Format 010b is reserved.
        let bad = two.run(two.a, [0xA3, 0x4A, 0, 0, 0, 0] + CDB.be32(1024) + [0, 0], n, edtl: 1024, read: true)
        #expect(bad.hasSense(SenseKey.illegalRequest, 0x24, 0x00))
    }

    @Test func aLUOfItsOwnReportsOnlyItsOwnPort() {
        let h = Harness()
        let n = h.nexus()
        h.clearUAs(n)
        let o = h.run(Self.rtpg(), nexus: n, edtl: 1024, read: true)
        #expect(o.isGood)
        #expect(groups(o.dataIn).map(\.id) == [1])
        #expect(groups(o.dataIn).map(\.ports) == [[1]])
    }

    @Test func standbyPortAllowsWhatSPC4ListsAndRefusesTheRest() {
        let two = TwoPorts(stateB: .standby)
        let n = two.nexus(on: two.b, "iqn.2026-01.test:a", isid: 1)
        let standby: (UInt8, UInt8, UInt8) = (SenseKey.notReady, 0x04, 0x0B)
        #expect(two.run(two.b, tur, n).hasSense(standby.0, standby.1, standby.2))
        #expect(two.run(two.b, CDB.rw10(0x28, lba: 0, blocks: 1), n, edtl: 512, read: true)
            .hasSense(standby.0, standby.1, standby.2))
        #expect(two.run(two.b, CDB.rw10(0x2A, lba: 0, blocks: 1), n, write: true, dataOut: [UInt8](repeating: 1, count: 512))
            .hasSense(standby.0, standby.1, standby.2))
        #expect(two.h.disk().bytes[0] == 0)
        for cdb in [CDB.inquiry(), CDB.modeSense6(page: 0x3F), CDB.readCapacity16(), Self.rtpg(),
                    [0xA0, 0, 0, 0, 0, 0] + CDB.be32(256) + [0, 0], [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]] {
            #expect(two.run(two.b, cdb, n, edtl: 1024, read: true).isGood, "\(cdb)")
        }
        // The active port of the same LU serves as usual.
        let m = two.nexus(on: two.a, "iqn.2026-01.test:a", isid: 1)
        #expect(two.run(two.a, CDB.rw10(0x28, lba: 0, blocks: 1), m, edtl: 512, read: true).isGood)
    }

    @Test(arguments: [(ALUAState.unavailable, UInt8(0x0C)), (.transitioning, 0x0A), (.offline, 0x12)])
    func otherInactiveStatesAnswerWithTheirOwnSense(state: ALUAState, ascq: UInt8) {
        let two = TwoPorts(stateB: state)
        let n = two.nexus(on: two.b, "iqn.2026-01.test:a", isid: 1)
        #expect(two.run(two.b, tur, n).hasSense(SenseKey.notReady, 0x04, ascq))
        #expect(two.run(two.b, CDB.modeSense6(page: 0x3F), n, edtl: 255, read: true).hasSense(SenseKey.notReady, 0x04, ascq))
        #expect(two.run(two.b, CDB.inquiry(), n, edtl: 255, read: true).isGood)
        #expect(two.run(two.b, Self.rtpg(), n, edtl: 1024, read: true).isGood)
        // SET TARGET PORT GROUPS is allowed through an unavailable port only.
        let s = Self.stpg([(0, 2)])
        let o = two.run(two.b, s.cdb, n, write: true, dataOut: s.data)
        #expect(o.isGood == (state == .unavailable), "\(state)")
    }

    @Test func activeNonOptimizedServesEverything() {
        let two = TwoPorts(stateB: .activeNonOptimized)
        let n = two.nexus(on: two.b, "iqn.2026-01.test:a", isid: 1)
        #expect(two.run(two.b, tur, n).isGood)
        #expect(two.run(two.b, CDB.rw10(0x28, lba: 0, blocks: 1), n, edtl: 512, read: true).isGood)
        #expect(two.b.lun(0)!.state.flags & LUNState.flagPortInactive == 0)
    }

    @Test func setTargetPortGroupsChangesStatesAndRaisesTheUnitAttentionOnEveryOtherPath() {
        let two = TwoPorts(stateB: .standby)
        let a1 = two.nexus(on: two.a, "iqn.2026-01.test:a", isid: 1)
        let a2 = two.nexus(on: two.a, "iqn.2026-01.test:b", isid: 2)
        let b1 = two.nexus(on: two.b, "iqn.2026-01.test:a", isid: 1)
        // Fail over: B becomes active/optimized and A standby, asked through A.
        let s = Self.stpg([(0, 2), (2, 1)])
        #expect(two.run(two.a, s.cdb, a1, write: true, dataOut: s.data).isGood)
        #expect(two.groupA.state == .standby && two.groupB.state == .activeOptimized)
        // The nexus that asked gets no unit attention (SPC-4 §5.15.2.5), only its new state's sense.
        #expect(two.run(two.a, tur, a1).hasSense(SenseKey.notReady, 0x04, 0x0B))
        // Every other nexus of the LU, through either port, gets ASYMMETRIC ACCESS STATE CHANGED once.
        #expect(two.run(two.a, tur, a2).hasSense(SenseKey.unitAttention, 0x2A, 0x06))
        #expect(two.run(two.b, tur, b1).hasSense(SenseKey.unitAttention, 0x2A, 0x06))
        #expect(two.run(two.b, tur, b1).isGood)
        let g = groups(two.run(two.b, Self.rtpg(), b1, edtl: 1024, read: true).dataIn)
        #expect(g.map(\.state) == [ALUAState.standby.rawValue, ALUAState.activeOptimized.rawValue])
        #expect(g.map(\.status) == [ALUAStatus.alteredBySetTargetPortGroups, ALUAStatus.alteredBySetTargetPortGroups])
    }

    @Test func aBadSetTargetPortGroupsListChangesNothing() {
        let two = TwoPorts(stateB: .standby)
        let a1 = two.nexus(on: two.a, "iqn.2026-01.test:a", isid: 1)
        // A valid first descriptor, then transitioning (the device's to enter), then an unknown group.
        for bad in [Self.stpg([(2, 1), (0xF, 2)]), Self.stpg([(2, 1), (0, 9)]), Self.stpg([(2, 1), (0xE, 2)])] {
            #expect(two.run(two.a, bad.cdb, a1, write: true, dataOut: bad.data).hasSense(SenseKey.illegalRequest, 0x26, 0x00))
            #expect(two.groupA.state == .activeOptimized && two.groupB.state == .standby)
        }
        // An empty list is no change; a length that is not a whole list is refused.
        #expect(two.run(two.a, [0xA4, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], a1).isGood)
        #expect(two.run(two.a, [0xA4, 0x0A, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0], a1, write: true, dataOut: [0, 0])
            .hasSense(SenseKey.illegalRequest, 0x1A, 0x00))
        #expect(two.run(two.a, tur, a1).isGood)
    }

    @Test func aChangeMadeByTheDeviceReachesEveryNexusOfTheLU() {
        let two = TwoPorts(stateB: .standby)
        let a1 = two.nexus(on: two.a, "iqn.2026-01.test:a", isid: 1)
        let b1 = two.nexus(on: two.b, "iqn.2026-01.test:a", isid: 1)
        #expect(two.groupB.setState(.activeNonOptimized, explicit: false))
        two.a.alua.announce(changed: two.groupB)
        #expect(two.run(two.a, tur, a1).hasSense(SenseKey.unitAttention, 0x2A, 0x06))
        #expect(two.run(two.b, tur, b1).hasSense(SenseKey.unitAttention, 0x2A, 0x06))
        #expect(two.run(two.b, tur, b1).isGood)
        #expect(groups(two.run(two.a, Self.rtpg(), a1, edtl: 1024, read: true).dataIn)[1].status == ALUAStatus.alteredImplicitly)
    }

    @Test func reportSupportedOperationCodesListsBothCommands() {
        let h = Harness()
        let n = h.nexus()
        h.clearUAs(n)
        for (op, sa) in [(UInt8(0xA3), UInt8(0x0A)), (0xA4, 0x0A)] {
            let o = h.run([0xA3, 0x0C, 0x02, op, 0, sa, 0, 0, 1, 0, 0, 0], nexus: n, edtl: 256, read: true)
            #expect(o.isGood && o.dataIn[1] & 0x07 == 0x03, "\(op)")
            #expect(o.dataIn.count == 4 + 12 && o.dataIn[4] == op)
        }
    }

    @Test func stateNamesParseAsLIOAndMultipathWriteThem() {
        #expect(ALUAState.parse("active/optimized") == .activeOptimized)
        #expect(ALUAState.parse("ANO") == .activeNonOptimized)
        #expect(ALUAState.parse("active/non-optimized") == .activeNonOptimized)
        #expect(ALUAState.parse("14") == .offline)
        #expect(ALUAState.parse("15") == .transitioning)
        #expect(ALUAState.parse("4") == nil)               // LBA dependent: not offered
        #expect(ALUAState.parse("standbye") == nil)
        for s in ALUAState.allCases { #expect(ALUAState.parse(s.name) == s) }
    }
}

/// ALUA across gateways (docs/ALUA.md): two daemons serve one sheepdog VDI as one LU, each with its own group,
/// and agree through the shared record's ALUA section (SheepSCSIRecord format 3). Here each gateway is a
/// harness with its own LU object, group objects and table, as two processes have; the versions they would
/// exchange through sheep are built with `applying` and loaded with `adoptPortGroups`, as the home core does.
@Suite struct SCSIALUAAcrossGatewaysTests {
    let tur: [UInt8] = [0, 0, 0, 0, 0, 0]

    /// One gateway: a target with the LU through one port in one group.
    struct Gateway {
        let h = Harness()
        let group: TargetPortGroup
        let table: ALUATable

        init(group id: UInt16, port: UInt16, state: ALUAState = .activeOptimized) {
            group = TargetPortGroup(id: id, state: state)
            let lun = h.lun()
            table = ALUATable(ports: [ALUAPort(relativeTargetPortID: port, group: group, luns: [lun])])
            h.target = TargetRuntime(tid: 1, name: "iqn.2026-01.test:gw\(id)", relativeTargetPortID: port, luns: [lun],
                                     acl: [.all], params: [:], lunGeneration: 1, portGroup: group, alua: table)
            table.refreshAll()
        }

        var published: PortGroupChange { .publish(previous: [], groups: table.sharedGroups(of: h.lun())) }

        func nexus(_ name: String, isid: UInt64) -> Nexus {
            let n = Nexus(initiatorName: name, isid: isid, targetName: h.target.name, portalGroupTag: 1,
                          relativeTargetPortID: h.target.relativeTargetPortID)
            h.clearUAs(n)
            return n
        }

        func adopt(_ r: SheepSCSIRecord, pending: [UInt16] = []) { h.lun().state.adoptPortGroups(r.portGroups, pending: pending) }

        func rtpg(_ n: Nexus) -> [(state: UInt8, id: UInt16, ports: [UInt16])] {
            let o = h.run(SCSIALUATests.rtpg(), nexus: n, edtl: 1024, read: true)
            return SCSIALUATests().groups(o.dataIn).map { ($0.state, $0.id, $0.ports) }
        }
    }

    /// Gateway A (group 1, port 1) and B (group 2, port 2, standby) have both published their groups.
    static func twoGateways() -> (a: Gateway, b: Gateway, record: SheepSCSIRecord) {
        let a = Gateway(group: 1, port: 1), b = Gateway(group: 2, port: 2, state: .standby)
        let v1 = SheepSCSIRecord().applying([.portGroups(a.published)], writer: 1)!
        let v2 = v1.applying([.portGroups(b.published)], writer: 2)!
        a.adopt(v2)
        b.adopt(v2)
        return (a, b, v2)
    }

    @Test func everyGatewayReportsEveryGroupOfTheLU() {
        let (a, b, _) = Self.twoGateways()
        for g in [a, b] {
            let groups = g.rtpg(g.nexus("iqn.2026-01.test:i", isid: 1))
            #expect(groups.map(\.id) == [1, 2] && groups.map(\.ports) == [[1], [2]], "\(groups)")
            #expect(groups.map(\.state) == [ALUAState.activeOptimized.rawValue, ALUAState.standby.rawValue])
        }
    }

    /// ringtgtadm set A's group standby: A applied it and told its nexuses; its version reaches B, whose
    /// nexuses get ASYMMETRIC ACCESS STATE CHANGED once and whose RTPG reports it. A loading its own version
    /// raises nothing more.
    @Test func aStateChangeOnOneGatewayIsReportedOnTheOther() {
        let (a, b, v2) = Self.twoGateways()
        let na = a.nexus("iqn.2026-01.test:i", isid: 1), nb = b.nexus("iqn.2026-01.test:i", isid: 2)
        #expect(a.group.setState(.standby, explicit: false))
        a.table.announce(changed: a.group)
        let v3 = v2.applying([.portGroups(.state(group: 1, .standby))], writer: 1)!
        a.adopt(v3)
        #expect(a.h.run(tur, nexus: na).hasSense(SenseKey.unitAttention, 0x2A, 0x06))
        #expect(a.h.run(tur, nexus: na).hasSense(SenseKey.notReady, 0x04, 0x0B), "reported once: then the standby sense")
        #expect(b.h.run(tur, nexus: nb).hasSense(SenseKey.notReady, 0x04, 0x0B), "nothing before B loads the version")
        b.adopt(v3)
        #expect(b.h.run(tur, nexus: nb).hasSense(SenseKey.unitAttention, 0x2A, 0x06))
        #expect(b.h.run(tur, nexus: nb).hasSense(SenseKey.notReady, 0x04, 0x0B), "B's own group is still standby")
        #expect(b.rtpg(nb).map(\.state) == [ALUAState.standby.rawValue, ALUAState.standby.rawValue])
        b.adopt(v3)
        a.adopt(v3)
        #expect(b.h.run(tur, nexus: nb).hasSense(SenseKey.notReady, 0x04, 0x0B), "the same version again raises nothing")
        #expect(a.h.run(tur, nexus: na).hasSense(SenseKey.notReady, 0x04, 0x0B))
    }

    /// SET TARGET PORT GROUPS through B names A's group: valid on the shared LU, B's other nexuses hear of it
    /// (not the one that asked), and the version it makes sets A's group, with the unit attention on A.
    @Test func setTargetPortGroupsThroughOneGatewaySetsAnothersGroup() {
        let (a, b, v2) = Self.twoGateways()
        let na = a.nexus("iqn.2026-01.test:i", isid: 1)
        let nb = b.nexus("iqn.2026-01.test:i", isid: 2), nb2 = b.nexus("iqn.2026-01.test:j", isid: 3)
        let s = SCSIALUATests.stpg([(ALUAState.standby.rawValue, 1), (ALUAState.activeOptimized.rawValue, 2)])
        #expect(b.h.run(s.cdb, nexus: nb, write: true, dataOut: s.data).isGood)
        #expect(b.group.state == .activeOptimized && a.group.state == .activeOptimized, "A's group is A's to set")
        #expect(b.h.run(tur, nexus: nb).isGood, "no unit attention for the nexus that asked")
        #expect(b.h.run(tur, nexus: nb2).hasSense(SenseKey.unitAttention, 0x2A, 0x06))
        #expect(b.rtpg(nb).map(\.state) == [ALUAState.standby.rawValue, ALUAState.activeOptimized.rawValue])
        // What B's home core appends: one state per descriptor.
        let v3 = v2.applying([.portGroups(.state(group: 1, .standby)), .portGroups(.state(group: 2, .activeOptimized))], writer: 2)!
        b.adopt(v3)
        #expect(b.h.run(tur, nexus: nb).isGood && b.h.run(tur, nexus: nb2).isGood, "B's own version raises nothing")
        a.adopt(v3)
        #expect(a.group.state == .standby)
        #expect(a.h.run(tur, nexus: na).hasSense(SenseKey.unitAttention, 0x2A, 0x06))
        #expect(a.h.run(CDB.rw10(0x28, lba: 0, blocks: 1), nexus: na, edtl: 512, read: true).hasSense(SenseKey.notReady, 0x04, 0x0B))
        #expect(a.rtpg(na).map(\.state) == [ALUAState.standby.rawValue, ALUAState.activeOptimized.rawValue])
        // A group no gateway has is still refused.
        let bad = SCSIALUATests.stpg([(ALUAState.standby.rawValue, 9)])
        #expect(b.h.run(bad.cdb, nexus: nb, write: true, dataOut: bad.data).hasSense(SenseKey.illegalRequest, 0x26, 0x00))
    }

    /// A change this gateway made and has not appended yet is not undone by a version loaded meanwhile (a
    /// refresh that read another gateway's version): the group keeps the state this gateway gave it.
    @Test func aPendingChangeIsNotUndoneByAnOlderView() {
        let (a, _, v2) = Self.twoGateways()
        let na = a.nexus("iqn.2026-01.test:i", isid: 1)
        #expect(a.group.setState(.standby, explicit: false))
        let other = v2.applying([.portGroups(.state(group: 2, .activeNonOptimized))], writer: 2)!
        a.adopt(other, pending: [1])
        #expect(a.group.state == .standby)
        #expect(a.h.run(tur, nexus: na).hasSense(SenseKey.unitAttention, 0x2A, 0x06), "group 2 changed")
        #expect(a.rtpg(na).map(\.state) == [ALUAState.standby.rawValue, ALUAState.activeNonOptimized.rawValue])
        // Without the pending change, the record decides.
        a.adopt(other)
        #expect(a.group.state == .activeOptimized)
        // A change still on its way to the home core (ringtgtadm's, posted from the control thread) counts too.
        #expect(a.group.setState(.standby, explicit: false))
        a.h.lun().state.portGroupStatePosted(1)
        a.adopt(other)
        #expect(a.group.state == .standby)
        a.h.lun().state.portGroupStateArrived(1)
        a.adopt(other)
        #expect(a.group.state == .activeOptimized)
    }

    /// A state set by SET TARGET PORT GROUPS goes into the record of every LU the group belongs to on this
    /// daemon (a group's state is one for all its LUs): those with a port in it here, and those whose record
    /// lists it (another gateway's group). Here LU 0 and LU 1 are in this gateway's group 1; only LU 0's
    /// record has gateway B's group 2.
    @Test func aGroupsStateGoesToEveryLUItIsAGroupOf() {
        let h = Harness(luns: [(0, 512, 2048, StoreCapabilities()), (1, 512, 2048, StoreCapabilities())])
        let group = TargetPortGroup(id: 1)
        let table = ALUATable(ports: [ALUAPort(relativeTargetPortID: 1, group: group, luns: [h.lun(0), h.lun(1)])])
        table.refreshAll()
        h.lun(0).state.adoptPortGroups([SharedPortGroup(id: 1, state: .activeOptimized, ports: [1]),
                                        SharedPortGroup(id: 2, state: .standby, ports: [2])], pending: [])
        #expect(table.units(withGroup: 1).map(\.number) == [0, 1])
        #expect(table.units(withGroup: 2).map(\.number) == [0])
        #expect(table.units(withGroup: 3).isEmpty)
    }
}
