import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import SCSITestSupport

/// PERSISTENT RESERVE OUT/IN and RESERVE/RELEASE across two nexuses, following libiscsi's sequences.
@Suite struct SCSIReservationTests {
    let tur: [UInt8] = [0, 0, 0, 0, 0, 0]

    func prOut(_ sa: UInt8, type: UInt8 = 0, key: UInt64, sark: UInt64 = 0, aptpl: Bool = false) -> (cdb: [UInt8], data: [UInt8]) {
        let cdb: [UInt8] = [0x5F, sa, type & 0x0F, 0, 0, 0, 0, 0, 24, 0]
        let data = CDB.be64(key) + CDB.be64(sark) + [0, 0, 0, 0, aptpl ? 1 : 0, 0, 0, 0]
        return (cdb, data)
    }

    func out(_ h: Harness, _ n: Nexus, _ sa: UInt8, type: UInt8 = 0, key: UInt64, sark: UInt64 = 0, aptpl: Bool = false) -> Outcome {
        let p = prOut(sa, type: type, key: key, sark: sark, aptpl: aptpl)
        return h.run(p.cdb, nexus: n, write: true, dataOut: p.data)
    }

    func prIn(_ h: Harness, _ n: Nexus, _ sa: UInt8, alloc: Int = 4096) -> Outcome {
        h.run([0x5E, sa, 0, 0, 0, 0, 0] + CDB.be16(alloc) + [0], nexus: n, edtl: alloc, read: true)
    }

    func keys(_ o: Outcome) -> (generation: UInt32, keys: [UInt64]) {
        let g = o.dataIn[0 ..< 4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        var k: [UInt64] = []
        var p = 8
        while p + 8 <= o.dataIn.count { k.append(o.dataIn[p ..< p + 8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }); p += 8 }
        return (g, k)
    }

    func reservation(_ o: Outcome) -> (key: UInt64, type: UInt8)? {
        guard o.dataIn.count >= 24 else { return nil }
        return (o.dataIn[8 ..< 16].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }, o.dataIn[21] & 0x0F)
    }

    func twoNexuses() -> (Harness, Nexus, Nexus) {
        let h = Harness()
        let a = h.nexus("iqn.2026-01.test:a", isid: 1)
        let b = h.nexus("iqn.2026-01.test:b", isid: 2)
        h.clearUAs(a)
        h.clearUAs(b)
        return (h, a, b)
    }

    func read1(_ h: Harness, _ n: Nexus) -> Outcome { h.run(CDB.rw10(0x28, lba: 0, blocks: 1), nexus: n, edtl: 512, read: true) }
    func write1(_ h: Harness, _ n: Nexus) -> Outcome {
        h.run(CDB.rw10(0x2A, lba: 0, blocks: 1), nexus: n, write: true, dataOut: [UInt8](repeating: 1, count: 512))
    }

    @Test func registerReadKeysAndReregisterConflict() {
        let (h, a, _) = twoNexuses()
        #expect(out(h, a, 6, key: 0, sark: 0xABC).isGood)
        let k = keys(prIn(h, a, 0))
        #expect(k.keys == [0xABC])
        // REGISTER with the wrong reservation key conflicts.
        #expect(out(h, a, 0, key: 0, sark: 0xABD).status == SCSIStatus.reservationConflict)
        #expect(out(h, a, 0, key: 0xABC, sark: 0).isGood)
        #expect(keys(prIn(h, a, 0)).keys.isEmpty)
        #expect(keys(prIn(h, a, 0)).generation == k.generation + 1)
        // Truncated READ KEYS keeps the additional length.
        #expect(out(h, a, 6, key: 0, sark: 7).isGood)
        let t = prIn(h, a, 0, alloc: 8)
        #expect(t.dataIn.count == 8 && t.dataIn[7] == 8)
    }

    @Test func serviceActionRangeAndAPTPLRefusal() {
        let (h, a, _) = twoNexuses()
        for sa: UInt8 in 0 ..< 4 { #expect(prIn(h, a, sa, alloc: 16384).isGood) }
        for sa: UInt8 in 4 ..< 0x20 { #expect(prIn(h, a, sa, alloc: 16384).hasSense(SenseKey.illegalRequest, 0x24, 0)) }
        #expect(out(h, a, 6, key: 0, sark: 5, aptpl: true).hasSense(SenseKey.illegalRequest, 0x26, 0))
        let caps = prIn(h, a, 2)
        #expect(caps.dataIn.count == 8 && caps.dataIn[1] == 8 && caps.dataIn[2] & 0x01 == 0)
        #expect(caps.dataIn[4] == 0xEA && caps.dataIn[5] == 0x01)
    }

    @Test(arguments: [UInt8(1), 3, 5, 6, 7, 8])
    func reserveReadReservationRelease(type: UInt8) {
        let (h, a, _) = twoNexuses()
        #expect(out(h, a, 6, key: 0, sark: 0x11).isGood)
        #expect(out(h, a, 1, type: type, key: 0x11).isGood)
        let r = reservation(prIn(h, a, 1))
        #expect(r?.type == type)
        #expect(r?.key == (type == 7 || type == 8 ? 0 : 0x11))
        #expect(out(h, a, 2, type: type, key: 0x11).isGood)
        #expect(prIn(h, a, 1).dataIn.count == 8)
        #expect(out(h, a, 0, key: 0x11, sark: 0).isGood)
    }

    /// libiscsi's ProutReserve.Access*: (type, registered reads, registered writes, unregistered reads, unregistered writes).
    @Test(arguments: [(UInt8(3), false, false, false, false), (1, true, false, true, false), (6, true, true, false, false),
                      (5, true, true, true, false), (8, true, true, false, false), (7, true, true, true, false)])
    func accessRulesForTheOtherNexus(_ c: (UInt8, Bool, Bool, Bool, Bool)) {
        let (h, a, b) = twoNexuses()
        #expect(out(h, a, 6, key: 0, sark: 1).isGood)
        #expect(out(h, b, 6, key: 0, sark: 2).isGood)
        #expect(out(h, a, 1, type: c.0, key: 1).isGood)
        #expect(read1(h, a).isGood && write1(h, a).isGood)
        #expect(read1(h, b).isGood == c.1)
        #expect(write1(h, b).isGood == c.2)
        if !c.2 { #expect(write1(h, b).status == SCSIStatus.reservationConflict) }
        #expect(out(h, b, 0, key: 2, sark: 0).isGood)
        #expect(read1(h, b).isGood == c.3)
        #expect(write1(h, b).isGood == c.4)
        // TEST UNIT READY, INQUIRY and PR IN stay allowed.
        #expect(h.run(tur, nexus: b).isGood)
        #expect(prIn(h, b, 1).isGood)
        #expect(out(h, a, 2, type: c.0, key: 1).isGood)
        #expect(out(h, a, 0, key: 1, sark: 0).isGood)
        #expect(write1(h, b).isGood)
    }

    /// libiscsi's ProutReserve.Ownership*: the holder unregisters.
    @Test(arguments: [(UInt8(3), false), (1, false), (6, false), (5, false), (8, true), (7, true)])
    func ownershipWhenTheHolderUnregisters(_ c: (UInt8, Bool)) {
        let (h, a, b) = twoNexuses()
        #expect(out(h, a, 6, key: 0, sark: 1).isGood)
        #expect(out(h, b, 6, key: 0, sark: 2).isGood)
        #expect(out(h, a, 1, type: c.0, key: 1).isGood)
        #expect(out(h, a, 0, key: 1, sark: 0).isGood)
        let r = reservation(prIn(h, a, 1))
        if c.1 {
            #expect(r?.type == c.0 && r?.key == 0)
            #expect(out(h, b, 2, type: c.0, key: 2).isGood)
        } else {
            #expect(r == nil)
            // Registrants-only types tell the remaining registrants the reservation is gone.
            let t = h.run(tur, nexus: b)
            if c.0 == 5 || c.0 == 6 { #expect(t.hasSense(SenseKey.unitAttention, 0x2A, 0x04)) } else { #expect(t.isGood) }
        }
        #expect(h.run(tur, nexus: b).isGood)
        #expect(out(h, b, 0, key: 2, sark: 0).isGood)
    }

    @Test func preemptRemovesTheRegistrationAndBumpsTheGeneration() {
        let (h, a, b) = twoNexuses()
        #expect(out(h, a, 6, key: 0, sark: 1).isGood)
        #expect(out(h, a, 3, key: 1).isGood)                       // CLEAR
        #expect(out(h, a, 6, key: 0, sark: 1).isGood)
        #expect(out(h, b, 6, key: 0, sark: 2).isGood)
        let before = keys(prIn(h, a, 0))
        #expect(before.keys.count == 2)
        #expect(out(h, b, 4, type: 3, key: 2, sark: 1).isGood)     // PREEMPT k1
        #expect(h.run(tur, nexus: a).hasSense(SenseKey.unitAttention, 0x2A, 0x05))
        let after = keys(prIn(h, a, 0))
        #expect(after.keys == [2] && after.generation == before.generation + 1)
        // Preempting a key nobody holds conflicts.
        #expect(out(h, b, 4, type: 3, key: 2, sark: 99).status == SCSIStatus.reservationConflict)
    }

    @Test func preemptTheHolderTakesTheReservation() {
        let (h, a, b) = twoNexuses()
        #expect(out(h, a, 6, key: 0, sark: 1).isGood)
        #expect(out(h, b, 6, key: 0, sark: 2).isGood)
        #expect(out(h, a, 1, type: 3, key: 1).isGood)
        #expect(write1(h, b).status == SCSIStatus.reservationConflict)
        #expect(out(h, b, 4, type: 1, key: 2, sark: 1).isGood)
        let r = reservation(prIn(h, b, 1))
        #expect(r?.key == 2 && r?.type == 1)
        #expect(h.run(tur, nexus: a).hasSense(SenseKey.unitAttention, 0x2A, 0x05))
        #expect(write1(h, a).status == SCSIStatus.reservationConflict)
        #expect(read1(h, a).isGood)
    }

    @Test func clearRemovesEverythingAndNotifiesOthers() {
        let (h, a, b) = twoNexuses()
        #expect(out(h, a, 6, key: 0, sark: 1).isGood)
        #expect(out(h, b, 6, key: 0, sark: 2).isGood)
        let g = keys(prIn(h, a, 0)).generation
        #expect(out(h, a, 1, type: 3, key: 1).isGood)
        #expect(out(h, a, 3, key: 1).isGood)
        #expect(prIn(h, a, 1).dataIn.count == 8)
        let k = keys(prIn(h, a, 0))
        #expect(k.keys.isEmpty && k.generation == g + 1)
        #expect(h.run(tur, nexus: b).hasSense(SenseKey.unitAttention, 0x2A, 0x03))
    }

    @Test func readFullStatusCarriesTransportIDs() {
        let (h, a, _) = twoNexuses()
        #expect(out(h, a, 6, key: 0, sark: 0x55).isGood)
        #expect(out(h, a, 1, type: 1, key: 0x55).isGood)
        let o = prIn(h, a, 3)
        #expect(o.isGood)
        let d = Array(o.dataIn[8...])
        #expect(d[7] == 0x55 && d[12] & 0x01 == 1 && d[13] == 1)
        let len = Int(d[20]) << 24 | Int(d[21]) << 16 | Int(d[22]) << 8 | Int(d[23])
        #expect(d[24] == 0x45)
        let name = String(decoding: d[28 ..< 24 + len].prefix { $0 != 0 }, as: UTF8.self)
        #expect(name == "iqn.2026-01.test:a,i,0x000000000001")
    }

    @Test func registrationsSurviveTheSessionButSPC2ReservationsDoNot() {
        let (h, a, b) = twoNexuses()
        #expect(out(h, a, 6, key: 0, sark: 9).isGood)
        SCSITask.nexusLost(a, target: h.target)
        let a2 = h.nexus("iqn.2026-01.test:a", isid: 1)       // same initiator port, new session
        h.clearUAs(a2)
        #expect(keys(prIn(h, b, 0)).keys == [9])
        #expect(out(h, a2, 0, key: 9, sark: 0).isGood)
        // SPC-2
        #expect(h.run([0x16, 0, 0, 0, 0, 0], nexus: a2).isGood)
        #expect(h.run([0x16, 0, 0, 0, 0, 0], nexus: b).status == SCSIStatus.reservationConflict)
        SCSITask.nexusLost(a2, target: h.target)
        #expect(h.run([0x16, 0, 0, 0, 0, 0], nexus: b).isGood)
        #expect(h.run([0x17, 0, 0, 0, 0, 0], nexus: b).isGood)
    }

    /// libiscsi's Reserve6.2Initiators.
    @Test func reserve6AcrossTwoInitiators() {
        let (h, a, b) = twoNexuses()
        let reserve: [UInt8] = [0x16, 0, 0, 0, 0, 0], release: [UInt8] = [0x17, 0, 0, 0, 0, 0]
        #expect(h.run(reserve, nexus: a).isGood)
        #expect(h.run(reserve, nexus: a).isGood)
        #expect(h.run(reserve, nexus: b).status == SCSIStatus.reservationConflict)
        #expect(h.run(release, nexus: b).isGood)                // a no-op
        #expect(h.run(CDB.modeSense6(page: 0x3F), nexus: a, edtl: 255, read: true).isGood)
        #expect(h.run(CDB.modeSense6(page: 0x3F), nexus: b, edtl: 255, read: true).status == SCSIStatus.reservationConflict)
        #expect(h.run(CDB.inquiry(), nexus: b, edtl: 255, read: true).isGood)
        #expect(h.run(reserve, nexus: b).status == SCSIStatus.reservationConflict)
        #expect(h.run(release, nexus: a).isGood)
        #expect(h.run(reserve, nexus: b).isGood)
        #expect(h.run(release, nexus: b).isGood)
        // RESERVE with persistent registrations present conflicts.
        #expect(out(h, a, 6, key: 0, sark: 3).isGood)
        #expect(h.run(reserve, nexus: a).status == SCSIStatus.reservationConflict)
    }

    @Test func logicalUnitResetReleasesTheReservationAndRaisesUnitAttentionEverywhere() {
        let (h, a, b) = twoNexuses()
        #expect(h.run([0x16, 0, 0, 0, 0, 0], nexus: a).isGood)
        SCSITask.logicalUnitReset(h.lun(), by: a)
        #expect(h.run(tur, nexus: a).hasSense(SenseKey.unitAttention, 0x29, 0x03))
        #expect(h.run(tur, nexus: b).hasSense(SenseKey.unitAttention, 0x29, 0x03))
        #expect(h.run([0x16, 0, 0, 0, 0, 0], nexus: b).isGood)
        SCSITask.targetReset(h.target, by: a)
        #expect(h.run([0x16, 0, 0, 0, 0, 0], nexus: a).hasSense(SenseKey.unitAttention, 0x29, 0x00))
        #expect(h.run([0x16, 0, 0, 0, 0, 0], nexus: a).isGood)
    }
}
