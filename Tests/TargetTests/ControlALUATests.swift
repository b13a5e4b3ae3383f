import Foundation
import Testing
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor
import SCSITestSupport

/// ALUA on the control plane: ringtgtadm's keys, the dump and the config file.
@Suite struct ControlALUATests {
    func dump(_ h: ControlHarness) -> String {
        h.registry.execute(AdminRequest(mode: .system, op: .show, name: Registry.configDumpName)).stdout
    }

    @Test func ringtgtadmSetsGroupPortAndStateAndTheLUNFollows() throws {
        let h = ControlHarness()
        h.run("--lld iscsi --op new --mode target --tid 1 -T iqn.2026-01.test:one")
        h.run("--lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -E null -b /dev/null")
        #expect(h.run("--lld iscsi --op update --mode target --tid 1 --name alua_group --value 3").exitCode == 0)
        #expect(h.run("--lld iscsi --op update --mode target --tid 1 --name relative_target_port_id --value 7").exitCode == 0)
        #expect(h.run("--lld iscsi --op update --mode target --tid 1 --name alua_state --value standby").exitCode == 0)
        let t = try #require(h.registry.currentSnapshot.target(tid: 1))
        #expect(t.portGroup.id == 3 && t.portGroup.state == .standby && t.relativeTargetPortID == 7)
        #expect(t.lun(1)!.state.flags & LUNState.flagPortInactive != 0)
        let show = h.run("--lld iscsi --op show --mode target --tid 1").stdout
        #expect(show.contains("alua_group=3\nalua_state=standby\nrelative_target_port_id=7\n"), "\(show)")
        #expect(h.run("--lld iscsi --op update --mode target --tid 1 --name alua_state --value ao").exitCode == 0)
        #expect(t.lun(1)!.state.flags & LUNState.flagPortInactive == 0)
        for (name, value) in [("alua_state", "bogus"), ("alua_group", "0"), ("alua_group", "65536"),
                              ("relative_target_port_id", "x")] {
            #expect(h.run("--lld iscsi --op update --mode target --tid 1 --name \(name) --value \(value)").exitCode != 0)
        }
    }

    @Test func aStateChangeRaisesTheUnitAttentionOnEverySessionOfTheLUN() throws {
        let h = ControlHarness()
        h.run("--lld iscsi --op new --mode target --tid 1 -T iqn.2026-01.test:one")
        h.run("--lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -E null -b /dev/null")
        let t = try #require(h.registry.currentSnapshot.target(tid: 1))
        let lun = try #require(t.lun(1))
        let nexuses = [1, 2].map { Nexus(initiatorName: "iqn.2026-01.test:i\($0)", isid: UInt64($0), targetName: t.name,
                                         portalGroupTag: 1, relativeTargetPortID: 1) }
        for n in nexuses { while lun.state.admit(nexus: n, lunGeneration: t.lunGeneration, consume: true) != nil {} }
        h.run("--lld iscsi --op update --mode target --tid 1 --name alua_state --value active/non-optimized")
        for n in nexuses {
            #expect(lun.state.admit(nexus: n, lunGeneration: t.lunGeneration, consume: true) == .asymmetricAccessStateChanged)
        }
        // Setting the state it already has raises nothing.
        h.run("--lld iscsi --op update --mode target --tid 1 --name alua_state --value active/non-optimized")
        for n in nexuses { #expect(lun.state.admit(nexus: n, lunGeneration: t.lunGeneration, consume: true) == nil) }
    }

    @Test func dumpRoundTripsAndAReloadAppliesOnlyTheDifference() throws {
        let h = ControlHarness()
        let text = """
            <target iqn.2026-01.test:one>
                backing-store /dev/null
                bs-type null
                alua_state unavailable
                alua_group 2
                relative_target_port_id 5
            </target>
            <target iqn.2026-01.test:two>
                backing-store /dev/zero
                bs-type null
            </target>
            """
        try ConfigFile.apply(text, to: h.registry)
        // alua_state applies to the group the file names, wherever the line stands.
        let one = try #require(h.registry.currentSnapshot.target(tid: 1))
        #expect(one.portGroup.id == 2 && one.portGroup.state == .unavailable && one.relativeTargetPortID == 5)
        #expect(h.registry.currentSnapshot.target(tid: 2)?.portGroup.state == .activeOptimized)
        let first = dump(h)
        #expect(first.contains("    alua_group 2\n    relative_target_port_id 5\n    alua_state unavailable\n"), "\(first)")
        let h2 = ControlHarness()
        try ConfigFile.apply(first, to: h2.registry)
        #expect(dump(h2) == first)
        let same = ConfigUpdate.run(ConfigFile.parse(first), mode: .update(.all), force: false, checkStores: false,
                                    executor: h.registry.execute)
        #expect(same.errors.isEmpty && same.changes.isEmpty, "\(same.changes)")
        // Dropping the lines puts group and port back to their defaults.
        let plain = first.replacingOccurrences(of: "    alua_group 2\n    relative_target_port_id 5\n    alua_state unavailable\n", with: "")
        let back = ConfigUpdate.run(ConfigFile.parse(plain), mode: .update(.all), force: false, checkStores: false,
                                    executor: h.registry.execute)
        #expect(back.errors.isEmpty, "\(back.errors)")
        let after = try #require(h.registry.currentSnapshot.target(tid: 1))
        #expect(after.portGroup.id == 1 && after.relativeTargetPortID == 1 && after.portGroup.state == .activeOptimized)
    }

    @Test func aFileErrsWithLinesOnABadValueAndOnTwoStatesForOneGroup() {
        let text = """
            <target iqn.2026-01.test:one>
                backing-store /dev/null
                bs-type null
                alua_group 2
                alua_state standby
            </target>
            <target iqn.2026-01.test:two>
                backing-store /dev/zero
                bs-type null
                alua_group 2
                alua_state active/optimized
            </target>
            """
        let parsed = ConfigFile.parse(text)
        #expect(parsed.errors.map(\.line) == [11], "\(parsed.errors)")
        #expect(parsed.errors.first?.message == "target port group 2 is standby at line 5")

        let h = ControlHarness()
        let bad = text.replacingOccurrences(of: "alua_state active/optimized", with: "alua_state sideways")
            .replacingOccurrences(of: "alua_group 2\n    alua_state standby", with: "alua_group 0\n    alua_state standby")
        let report = ConfigUpdate.run(ConfigFile.parse(bad), mode: .update(.all), force: false, checkStores: false,
                                      executor: h.registry.execute)
        #expect(!report.applied)
        #expect(Set(report.errors.map(\.line)) == [4, 11], "\(report.errors)")
        #expect(h.registry.currentSnapshot.targets.isEmpty)
    }

    /// Issue 14, ALUA across gateways: on a multipath sheep LU the control plane publishes this gateway's ports
    /// and groups in the shared record when the LU is added and when they change (with the ports it published
    /// before), and a group's state set with ringtgtadm; other changes publish nothing.
    @Test func aMultipathSheepLUsGroupsAndStatesGoToTheSharedRecord() throws {
        let h = ControlHarness()
        h.opener.sheepVolume = coherentSheepVolume()
        h.run("--lld iscsi --op new --mode target --tid 1 -T iqn.2026-01.test:one")
        h.run("--lld iscsi --op new --mode target --tid 2 -T iqn.2026-01.test:two")
        h.run("--lld iscsi --op new --mode logicalunit --tid 2 --lun 1 -E null -b /dev/null")
        #expect(h.run("--lld iscsi --op update --mode target --tid 1 --name alua_group --value 2").exitCode == 0)
        #expect(h.fabric.shared.isEmpty, "no multipath sheep LU yet")
        let added = h.run("--lld iscsi --op new --mode logicalunit --tid 1 --lun 1 --bstype sheepdog -b unix:/nonexistent:vol")
        #expect(added.exitCode == 0, "\(added)")
        #expect(h.fabric.shared == [.publish(previous: [], groups: [SharedPortGroup(id: 2, state: .activeOptimized, ports: [1])])])
        h.run("--lld iscsi --op update --mode target --tid 1 --name relative_target_port_id --value 5")
        #expect(h.fabric.shared.last == .publish(previous: [1], groups: [SharedPortGroup(id: 2, state: .activeOptimized, ports: [5])]))
        h.run("--lld iscsi --op update --mode target --tid 1 --name alua_state --value standby")
        #expect(h.fabric.shared.last == .state(group: 2, .standby))
        let count = h.fabric.shared.count
        // The null LU's target: its group (1) has no multipath sheep LU.
        h.run("--lld iscsi --op update --mode target --tid 2 --name alua_state --value standby")
        h.run("--lld iscsi --op update --mode target --tid 1 --name alua_state --value standby")   // no change
        h.run("--lld iscsi --op update --mode target --tid 1 --name MaxRecvDataSegmentLength --value 65536")
        #expect(h.fabric.shared.count == count, "\(h.fabric.shared)")
    }
}

/// A multipath sheep volume (locked shared, coherent) that connects to nothing: what the control plane
/// publishes a multipath LU's groups through. Its index lives as long as the test process.
private func coherentSheepVolume() -> SheepVolume {
    let slots = 16
    let index = UnsafeMutablePointer<UInt32>.allocate(capacity: slots)
    index.initialize(repeating: 0, count: slots)
    return makeTestSheepVolume(index: index, slots: slots, vid: 0x100, locked: true, coherent: true)
}
