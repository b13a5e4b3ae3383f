import Testing
@testable import Target

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
}
