import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import SCSITestSupport

/// Reservations carried between two gateways by the shared record (SCSI/ReservationsShared.swift): gateway A
/// and gateway B are two harnesses (two daemons' views of one LU, B's port is relative target port 2); a
/// version built from A's state after a command is adopted by B, and B's reservation checks use it.
@Suite struct SCSISharedReservationTests {
    let r = SCSIReservationTests()

    static func nexus(_ h: Harness, _ name: String, isid: UInt64, port: UInt16) -> Nexus {
        Nexus(initiatorName: name, isid: isid, targetName: h.target.name, portalGroupTag: 1, relativeTargetPortID: port)
    }

    /// Gateway A (port 1) with initiator a, gateway B (port 2) with initiators a and b, power-on UAs cleared.
    func gateways() -> (ga: Harness, gb: Harness, a: Nexus, aOnB: Nexus, b: Nexus) {
        let ga = Harness(), gb = Harness()
        let a = Self.nexus(ga, "iqn.2026-01.test:a", isid: 1, port: 1)
        let aOnB = Self.nexus(gb, "iqn.2026-01.test:a", isid: 1, port: 2)
        let b = Self.nexus(gb, "iqn.2026-01.test:b", isid: 2, port: 2)
        ga.clearUAs(a)
        for n in [aOnB, b] { gb.clearUAs(n) }
        return (ga, gb, a, aOnB, b)
    }

    static func publish(_ from: Harness, after base: SheepSCSIRecord, writer: UInt64) -> SheepSCSIRecord {
        SheepSCSIRecord(successorOf: base, writer: writer, state: from.lun().state.shared.withLock { $0 })
    }

    @Test func aPersistentReservationTakenThroughATakesEffectOnB() {
        let (ga, gb, a, aOnB, b) = gateways()
        #expect(r.out(ga, a, 0, key: 0, sark: 0xA).status == SCSIStatus.good)
        #expect(r.out(ga, a, 1, type: PRType.writeExclusive, key: 0xA).status == SCSIStatus.good)
        let v1 = Self.publish(ga, after: SheepSCSIRecord(), writer: 1)
        #expect(v1.version == 1 && v1.prHolder == PortIdentity(a))
        #expect(r.write1(gb, b).status == SCSIStatus.good, "B does not know of it before it adopts the version")
        gb.lun().state.adoptShared(v1)
        #expect(r.write1(gb, b).status == SCSIStatus.reservationConflict)
        // The same initiator through B is another I_T nexus: the reservation is held through A's port only.
        #expect(r.write1(gb, aOnB).status == SCSIStatus.reservationConflict)
        #expect(r.keys(r.prIn(gb, b, 0)).keys == [0xA])
        #expect(r.out(ga, a, 2, type: PRType.writeExclusive, key: 0xA).status == SCSIStatus.good)
        gb.lun().state.adoptShared(Self.publish(ga, after: v1, writer: 1))
        #expect(r.write1(gb, b).status == SCSIStatus.good)
    }

    @Test func aPreemptElsewhereRaisesRegistrationsPreemptedHere() {
        let (ga, gb, a, _, b) = gateways()
        #expect(r.out(gb, b, 0, key: 0, sark: 0xB).status == SCSIStatus.good)
        let v1 = Self.publish(gb, after: SheepSCSIRecord(), writer: 2)
        ga.lun().state.adoptShared(v1)
        #expect(r.out(ga, a, 0, key: 0, sark: 0xA).status == SCSIStatus.good)
        #expect(r.out(ga, a, 4, type: PRType.exclusiveAccess, key: 0xA, sark: 0xB).status == SCSIStatus.good)
        gb.lun().state.adoptShared(Self.publish(ga, after: v1, writer: 1))
        #expect(gb.run(r.tur, nexus: b).hasSense(0x06, 0x2A, 0x05), "REGISTRATIONS PREEMPTED for b on B")
        // With no reservation held, PREEMPT only removed b's registration (SPC-4 §5.9.11.4).
        #expect(r.keys(r.prIn(gb, b, 0)).keys == [0xA])
        #expect(r.out(gb, b, 1, type: PRType.writeExclusive, key: 0xB).status == SCSIStatus.reservationConflict)
    }

    @Test func anSPC2ReservationThroughAKeepsBOut() {
        let (ga, gb, a, _, b) = gateways()
        #expect(ga.run([0x16, 0, 0, 0, 0, 0], nexus: a).status == SCSIStatus.good)   // RESERVE(6)
        let v1 = Self.publish(ga, after: SheepSCSIRecord(), writer: 1)
        #expect(v1.spc2Holder == PortIdentity(a))
        gb.lun().state.adoptShared(v1)
        #expect(r.write1(gb, b).status == SCSIStatus.reservationConflict)
        // B's next version keeps A's SPC-2 reservation, which it knows only as remote.
        let v2 = Self.publish(gb, after: v1, writer: 2)
        #expect(v2.spc2Holder == PortIdentity(a))
        #expect(ga.run([0x17, 0, 0, 0, 0, 0], nexus: a).status == SCSIStatus.good)   // RELEASE(6)
        gb.lun().state.adoptShared(Self.publish(ga, after: v2, writer: 1))
        #expect(r.write1(gb, b).status == SCSIStatus.good)
    }

    /// Issue 14: a LOGICAL UNIT RESET or target reset through A counts one more reset in the record; B, which
    /// knew the count before, resets the LU for its own nexuses when it adopts the higher count: BUS DEVICE
    /// RESET FUNCTION OCCURRED (29h/03h) for each, and A's SPC-2 reservation is gone.
    @Test func aResetThroughARaisesBusDeviceResetOnB() {
        let (ga, gb, a, aOnB, b) = gateways()
        #expect(ga.run([0x16, 0, 0, 0, 0, 0], nexus: a).status == SCSIStatus.good)   // RESERVE(6)
        let v1 = Self.publish(ga, after: SheepSCSIRecord(), writer: 1)
        gb.lun().state.adoptShared(v1)
        #expect(r.write1(gb, b).status == SCSIStatus.reservationConflict)
        // The reset through A, as the home core appends it.
        SCSITask.logicalUnitReset(ga.lun(), by: a)
        guard let v2 = v1.applying([.reset], writer: 1) else { Issue.record("a reset changes the record"); return }
        #expect(v2.version == 2 && v2.resets == 1 && v2.spc2Holder == nil)
        gb.lun().state.adoptShared(v2)
        for n in [b, aOnB] {
            #expect(gb.run(r.tur, nexus: n).hasSense(0x06, 0x29, 0x03), "BUS DEVICE RESET for \(n.initiatorName) on B")
            #expect(gb.run(r.tur, nexus: n).status == SCSIStatus.good, "raised once")
        }
        #expect(r.write1(gb, b).status == SCSIStatus.good, "the SPC-2 reservation went with the reset")
        // Adopting the same count again (a version that changed something else) raises nothing.
        var v3 = v2.successor(writer: 1)
        v3.prGeneration = 1
        gb.lun().state.adoptShared(v3)
        #expect(gb.run(r.tur, nexus: b).status == SCSIStatus.good)
    }

    /// The first version a gateway loads sets its count without a unit attention: the resets it counts
    /// happened before this gateway knew the LU.
    @Test func theFirstVersionLoadedRaisesNoResetAttention() {
        let (_, gb, _, _, b) = gateways()
        var v = SheepSCSIRecord()
        v.version = 9
        v.writer = 1
        v.resets = 5
        gb.lun().state.adoptShared(v)
        #expect(gb.run(r.tur, nexus: b).status == SCSIStatus.good)
        gb.lun().state.adoptShared(v.applying([.reset], writer: 1)!)
        #expect(gb.run(r.tur, nexus: b).hasSense(0x06, 0x29, 0x03))
    }

    /// A gateway's own version raises nothing (the reset was raised here when it happened) and clears an SPC-2
    /// reservation the LU took for another gateway's after a lost race, once the version released it.
    @Test func anOwnVersionRaisesNothingAndClearsARemoteSPC2Holder() {
        let (ga, gb, a, _, b) = gateways()
        #expect(ga.run([0x16, 0, 0, 0, 0, 0], nexus: a).status == SCSIStatus.good)
        let v1 = Self.publish(ga, after: SheepSCSIRecord(), writer: 1)
        gb.lun().state.adoptShared(v1)
        #expect(r.write1(gb, b).status == SCSIStatus.reservationConflict)
        let own = v1.applying([.reset], writer: 2)!
        gb.lun().state.adoptOwn(own)
        #expect(r.write1(gb, b).status == SCSIStatus.good)
        #expect(gb.run(r.tur, nexus: b).status == SCSIStatus.good, "no unit attention for its own reset")
        // The next version from A with the same count raises nothing either.
        gb.lun().state.adoptShared(own.successor(writer: 1))
        #expect(gb.run(r.tur, nexus: b).status == SCSIStatus.good)
    }

    /// A session that logs out releases its SPC-2 reservation before the logout response (Connection), and
    /// says whether it held one; a nexus loss does too, for the release the shared record needs.
    @Test func aReleaseOutsideACommandSaysWhetherTheNexusHeldIt() {
        let (ga, _, a, _, _) = gateways()
        let other = Self.nexus(ga, "iqn.2026-01.test:c", isid: 3, port: 1)
        #expect(!ga.lun().state.releaseSPC2(heldBy: a.id))
        #expect(ga.run([0x16, 0, 0, 0, 0, 0], nexus: a).status == SCSIStatus.good)
        #expect(!ga.lun().state.releaseSPC2(heldBy: other.id))
        #expect(ga.lun().state.releaseSPC2(heldBy: a.id))
        #expect(ga.run([0x16, 0, 0, 0, 0, 0], nexus: a).status == SCSIStatus.good)
        #expect(SCSITask.nexusLost(other, target: ga.target).isEmpty)
        #expect(SCSITask.nexusLost(a, target: ga.target).count == 1)
    }
}
