import SheepProtocol
import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import SCSITestSupport

/// APTPL on multipath sheep LUs and the LU's power-on across gateways (docs/CLUSTER-STATE.md, "APTPL"): the
/// record's APTPL bit and power-on count (format 4), REPORT CAPABILITIES and PERSISTENT RESERVE OUT on shared and
/// unshared LUs, the power-on change, and what a gateway raises when it loads one.
@Suite struct SharedAPTPLTests {
    let r = SCSIReservationTests()
    static let a = PortIdentity(initiatorName: "iqn.2026-01.test:a", isid: 1, relativeTargetPortID: 1)
    static let b = PortIdentity(initiatorName: "iqn.2026-01.test:b", isid: 2, relativeTargetPortID: 2)

    static func registered(aptpl: Bool) -> SheepSCSIRecord {
        var v = SheepSCSIRecord()
        v.version = 1
        v.writer = 0xA
        v.registrations = [PRRegistration(port: a, key: 0xA), PRRegistration(port: b, key: 0xB)]
        v.reserved = true
        v.prType = PRType.writeExclusive
        v.prHolder = a
        v.prGeneration = 3
        v.spc2Holder = nil
        v.aptpl = aptpl
        v.powerOns = 2
        return v
    }

    @Test func format4CarriesAPTPLAndThePowerOnCount() {
        let v = Self.registered(aptpl: true)
        let bytes = v.encoded()
        #expect(SheepSCSIRecord(decoding: bytes) == v)
        #expect(bytes[4] == 4 && bytes[5] == 0, "format 4")
        // Format 3 is format 4 without the last 9 bytes: read as APTPL 0 (refused before format 4), no power-on.
        var old = Array(bytes.dropLast(9))
        old[4] = 3
        let read = SheepSCSIRecord(decoding: old)
        #expect(read?.aptpl == false && read?.powerOns == 0 && read?.registrations == v.registrations)
        // A format 4 record cut short, or with a flag this format does not define, is refused as damaged.
        #expect(SheepSCSIRecord(decoding: Array(bytes.dropLast(1))) == nil)
        var flags = bytes
        flags[bytes.count - 9] = 2
        #expect(SheepSCSIRecord(decoding: flags) == nil)
        #expect(!v.losesStateAtPowerOn && Self.registered(aptpl: false).losesStateAtPowerOn)
        var spc2 = v
        spc2.spc2Holder = Self.b
        #expect(spc2.losesStateAtPowerOn, "an SPC-2 reservation never persists through power loss")
        #expect(!SheepSCSIRecord().losesStateAtPowerOn)
    }

    /// SPC-4 §5.9.4: at power-on, APTPL 0 loses every registration and the reservation, APTPL 1 keeps them; the
    /// SPC-2 reservation goes either way and PRgeneration starts again. Only on the count it was decided on.
    @Test func aPowerOnClearsWhatAPTPLZeroDoesNotKeep() throws {
        var zero = Self.registered(aptpl: false)
        zero.spc2Holder = Self.b
        let cleared = try #require(zero.applying([.powerOn(seen: 2)], writer: 0xB))
        #expect(cleared.registrations.isEmpty && !cleared.reserved && cleared.prHolder == nil && cleared.spc2Holder == nil)
        #expect(cleared.powerOns == 3 && cleared.prGeneration == 0 && cleared.version == 2 && cleared.writer == 0xB)
        var one = Self.registered(aptpl: true)
        one.spc2Holder = Self.b
        let kept = try #require(one.applying([.powerOn(seen: 2)], writer: 0xB))
        #expect(kept.registrations == one.registrations && kept.reserved && kept.prHolder == Self.a && kept.aptpl)
        #expect(kept.spc2Holder == nil && kept.powerOns == 3)
        // Another gateway powered the LU on since this one read the count: it serves, nothing is cleared.
        #expect(zero.applying([.powerOn(seen: 1)], writer: 0xB) == nil)
        var queue: [SharedStateChange] = []
        SharedStateChange.enqueue(.powerOn(seen: 2), into: &queue)
        SharedStateChange.enqueue(.powerOn(seen: 2), into: &queue)
        #expect(queue == [.powerOn(seen: 2)])
    }

    /// A harness whose LU 0 is a multipath sheep LU (its store ops are answered at once, as one gateway alone).
    static func sharedHarness(_ bench: SheepHomeMachineTests.Bench) -> Harness {
        let h = Harness()
        var naa = [UInt8](repeating: 0, count: 16)
        naa[0] = 0x60
        naa[15] = 1
        let lu = LogicalUnit(number: 0, blockSize: 512, blockCount: 2048, capabilities: StoreCapabilities(), serial: "SER0",
                             naa: naa, backing: .sheep(bench.volume), bstype: "sheepdog", path: "vol")
        h.replaceTarget(luns: [lu], generation: 2)
        return h
    }

    /// REPORT CAPABILITIES byte 2 bit 0 (PTPL_C) and byte 3 bit 0 (PTPL_A).
    func ptpl(_ h: Harness, _ n: Nexus) -> [Bool] {
        let o = r.prIn(h, n, 2, alloc: 8)
        #expect(o.isGood && o.dataIn.count == 8)
        guard o.dataIn.count == 8 else { return [] }
        return [o.dataIn[2] & 1 != 0, o.dataIn[3] & 1 != 0]
    }

    @Test func fileLUsStillRefuseAPTPL() {
        let h = Harness()
        let a = h.nexus("iqn.2026-01.test:a", isid: 1)
        h.clearUAs(a)
        #expect(ptpl(h, a) == [false, false])
        for sa: UInt8 in [0, 6] {
            #expect(r.out(h, a, sa, key: 0, sark: 5, aptpl: true).hasSense(SenseKey.illegalRequest, 0x26, 0))
        }
        #expect(r.keys(r.prIn(h, a, 0)).keys.isEmpty, "nothing registered")
        #expect(r.out(h, a, 0, key: 0, sark: 5).isGood)
        #expect(r.out(h, a, 1, type: PRType.writeExclusive, key: 5, aptpl: true).hasSense(SenseKey.illegalRequest, 0x26, 0))
        #expect(ptpl(h, a) == [false, false])
    }

    @Test func aMultipathSheepLUAcceptsAndReportsAPTPL() {
        let bench = SheepHomeMachineTests.Bench(locked: true, coherent: true)
        let h = Self.sharedHarness(bench)
        let a = h.nexus("iqn.2026-01.test:a", isid: 1)
        h.clearUAs(a)
        #expect(ptpl(h, a) == [true, false])
        #expect(r.out(h, a, 0, key: 0, sark: 0xA, aptpl: true).isGood, "REGISTER with APTPL=1")
        #expect(ptpl(h, a) == [true, true])
        #expect(r.keys(r.prIn(h, a, 0)).keys == [0xA])
        // RESERVE ignores the bit (SPC-4 §6.17.3); the LU's APTPL stays the last REGISTER's.
        #expect(r.out(h, a, 1, type: PRType.writeExclusive, key: 0xA, aptpl: false).isGood)
        #expect(ptpl(h, a) == [true, true])
        let s = h.lun().state.shared.withLock { $0 }
        let v = SheepSCSIRecord(successorOf: SheepSCSIRecord(), writer: 1, state: s)
        #expect(v.aptpl && v.reserved && SheepSCSIRecord(decoding: v.encoded())?.aptpl == true, "what goes into the record")
        // REGISTER AND IGNORE EXISTING KEY with APTPL=0 turns it off.
        #expect(r.out(h, a, 6, key: 0, sark: 0xA).isGood)
        #expect(ptpl(h, a) == [true, false])
        // A REGISTER that conflicts changes nothing.
        #expect(r.out(h, a, 0, key: 0x99, sark: 0xA, aptpl: true).status == SCSIStatus.reservationConflict)
        #expect(ptpl(h, a) == [true, false])
    }

    /// Loading a version whose power-on count grew (this gateway's own power-on, or another's while this one was
    /// deciding) replaces the reservations with what APTPL kept and raises POWER ON, RESET, OR BUS DEVICE RESET
    /// OCCURRED on every nexus; the first version loaded only notes the count.
    @Test(arguments: [true, false])
    func aPowerOnVersionRaisesThePowerOnAttention(own: Bool) throws {
        let gb = Harness()
        let b = SCSISharedReservationTests.nexus(gb, "iqn.2026-01.test:b", isid: 2, port: 2)
        gb.clearUAs(b)
        let before = Self.registered(aptpl: false)
        gb.lun().state.adoptShared(before)
        #expect(gb.run(r.tur, nexus: b).status == SCSIStatus.good, "the first version loaded raises nothing")
        #expect(r.write1(gb, b).status == SCSIStatus.reservationConflict)
        let after = try #require(before.applying([.powerOn(seen: 2)], writer: own ? 0xB : 0xC))
        if own { gb.lun().state.adoptOwn(after) } else { gb.lun().state.adoptShared(after) }
        #expect(gb.run(r.tur, nexus: b).hasSense(0x06, 0x29, 0x00))
        #expect(gb.run(r.tur, nexus: b).status == SCSIStatus.good, "once")
        #expect(r.keys(r.prIn(gb, b, 0)).keys.isEmpty)
        #expect(r.write1(gb, b).status == SCSIStatus.good, "the reservation went with the power-on")
    }
}

/// The liveness rule (Store/Sheep/SheepLiveness.swift): judged by the reader's own clock only.
@Suite struct GatewayLivenessTests {
    static let s = 1_000_000_000 as UInt64
    static let bound = GatewayLivenessLimits.deadAfterNanos

    static func slot(_ gateway: UInt64, _ beat: UInt64, serving: Bool = true) -> HeartbeatSlot {
        HeartbeatSlot(serving: serving, gateway: gateway, beat: beat)
    }

    @Test func aSlotRoundTripsAndAnEmptyOneIsNoGateway() {
        let x = Self.slot(0xFEED, 9, serving: true)
        #expect(HeartbeatSlot(decoding: ArraySlice(x.encoded())) == x)
        #expect(HeartbeatSlot(decoding: ArraySlice([UInt8](repeating: 0, count: 32))) == nil)
        var region = [UInt8](repeating: 0, count: GatewayLivenessLimits.regionBytes)
        region.replaceSubrange(32 ..< 64, with: x.encoded())   // port 2
        var l = GatewayLiveness()
        l.observe(region: region, nowNanos: 1)
        #expect(l.seen.keys.sorted() == [2] && l.seen[2]?.slot == x)
    }

    @Test func unchangedForTheBoundIsDeadAndABeatMakesItAliveAgain() {
        var l = GatewayLiveness()
        let t0: UInt64 = 5 * Self.s
        l.observe(port: 1, Self.slot(0xA, 1), nowNanos: t0)
        #expect(!l.isAlive(1, nowNanos: t0) && !l.isDead(1, nowNanos: t0), "seen once: not judged yet")
        l.observe(port: 1, Self.slot(0xA, 2), nowNanos: t0 + 2 * Self.s)
        #expect(l.isAlive(1, nowNanos: t0 + 2 * Self.s))
        // The same content read again and again: dead once the bound has passed since it last changed.
        l.observe(port: 1, Self.slot(0xA, 2), nowNanos: t0 + 2 * Self.s + Self.bound - 1)
        #expect(!l.isDead(1, nowNanos: t0 + 2 * Self.s + Self.bound - 1))
        l.observe(port: 1, Self.slot(0xA, 2), nowNanos: t0 + 2 * Self.s + Self.bound)
        #expect(l.isDead(1, nowNanos: t0 + 2 * Self.s + Self.bound) && !l.isAlive(1, nowNanos: t0 + 2 * Self.s + Self.bound))
        #expect(l.deadPorts(own: [2], nowNanos: t0 + 2 * Self.s + Self.bound) == [1])
        #expect(l.deadPorts(own: [1], nowNanos: t0 + 2 * Self.s + Self.bound) == [], "a gateway never judges its own ports")
        // The gateway restarted (a new id) and beats: alive again.
        let t1 = t0 + 30 * Self.s
        l.observe(port: 1, Self.slot(0xA2, 1), nowNanos: t1)
        #expect(l.isAlive(1, nowNanos: t1) && l.deadPorts(own: [], nowNanos: t1).isEmpty)
        // A slot emptied (the companion's object created again) is no gateway: neither dead nor alive.
        l.observe(port: 1, nil, nowNanos: t1 + Self.bound)
        #expect(!l.isDead(1, nowNanos: t1 + 2 * Self.bound) && l.seen[1] == nil)
    }

    @Test func noLivePeerMeansPowerOnAndALiveServingPeerMeansJoin() {
        let t0: UInt64 = 100 * Self.s
        // No slot at all (a new LU, or only this gateway's own): decided at once.
        var empty = GatewayLiveness()
        #expect(empty.powerOnDecision(own: [2], nowNanos: t0) == nil, "nothing read yet")
        empty.observe(region: nil, nowNanos: t0)
        #expect(empty.powerOnDecision(own: [2], nowNanos: t0) == .noLivePeer)
        var ownOnly = GatewayLiveness()
        ownOnly.observe(region: nil, nowNanos: t0)
        ownOnly.observe(port: 2, Self.slot(0xB, 50), nowNanos: t0)
        #expect(ownOnly.powerOnDecision(own: [2], nowNanos: t0) == .noLivePeer, "its own old slot is no peer")

        // A peer's slot seen once: undecided until it beats (join) or the bound passes (power-on).
        var stale = GatewayLiveness()
        stale.observe(region: nil, nowNanos: t0)
        stale.observe(port: 1, Self.slot(0xA, 9), nowNanos: t0)
        #expect(stale.powerOnDecision(own: [2], nowNanos: t0 + Self.bound - 1) == nil)
        stale.observe(port: 1, Self.slot(0xA, 9), nowNanos: t0 + Self.bound)
        #expect(stale.powerOnDecision(own: [2], nowNanos: t0 + Self.bound) == .noLivePeer)

        var live = stale
        live.observe(port: 1, Self.slot(0xA, 10), nowNanos: t0 + Self.bound + 1)
        #expect(live.powerOnDecision(own: [2], nowNanos: t0 + Self.bound + 1) == .livePeer)
        var early = GatewayLiveness()
        early.observe(region: nil, nowNanos: t0)
        early.observe(port: 1, Self.slot(0xA, 9), nowNanos: t0)
        early.observe(port: 1, Self.slot(0xA, 10), nowNanos: t0 + 2 * Self.s)
        #expect(early.powerOnDecision(own: [2], nowNanos: t0 + 2 * Self.s) == .livePeer, "a beat decides before the bound")

        // A peer that beats but is deciding itself keeps nothing: the first power-on of the two counts.
        var deciding = GatewayLiveness()
        deciding.observe(region: nil, nowNanos: t0)
        deciding.observe(port: 1, Self.slot(0xA, 1, serving: false), nowNanos: t0)
        deciding.observe(port: 1, Self.slot(0xA, 2, serving: false), nowNanos: t0 + 2 * Self.s)
        #expect(deciding.powerOnDecision(own: [2], nowNanos: t0 + 2 * Self.s) == .noLivePeer)
    }
}

/// The home core's heartbeat and power-on (Store/Sheep/SheepHomeLiveness.swift), reply by reply.
@Suite struct SheepHomeLivenessTests {
    typealias T = SheepHomeMachineTests
    typealias R = SheepHomeRecordTests
    static let companionVID: UInt32 = 0x77

    /// A reservation command's sync on a gateway that finds `rec` in sheep: returns the bench and what came out.
    static func syncFinding(_ rec: SheepSCSIRecord) -> (T.Bench, T.Out) {
        let b = T.Bench(locked: true, coherent: true)
        b.machine.request(SheepHomeRequest(volume: b.volume, kind: .record(publish: false), originCore: 0,
                                           waiter: .request(tag: 1)))
        let head = b.drain()
        let next = R.answerRecord(b, b.reply(head.sends[0].op, .noObj), rec)
        return (b, b.reply(next.sends[0].op, .noObj))
    }

    /// One beat at `now`: the companion is looked up (the first time), the slots read (`region`, nil: no object
    /// yet) and this gateway's slots written. Returns what came out after the last write.
    static func beat(_ b: T.Bench, now: UInt64, region: [UInt8]?, first: Bool) -> T.Out {
        b.machine.nowNanos = now
        b.machine.beatDue()
        var out = b.drain()
        if first {
            #expect(out.sends.count == 1 && out.sends[0].header.opcode == .getVDIInfo)
            out = b.reply(out.sends[0].op, .success, vdiID: companionVID)
        }
        guard let read = out.sends.first, let dest = read.dest else { Issue.record("no read of the slots"); return out }
        #expect(read.header.opcode == .readObj && read.header.oid == SheepOID.data(vid: companionVID, index: 0))
        #expect(!read.header.flags.contains(.tgt) && Int(read.header.dataLength) == GatewayLivenessLimits.regionBytes)
        if let region { region.withUnsafeBytes { dest.copyMemory(from: $0.baseAddress!, byteCount: region.count) } }
        out = b.reply(read.op, region == nil ? .noObj : .success)
        while let w = out.sends.first, w.header.opcode == .writeObj || w.header.opcode == .createAndWriteObj,
              w.header.oid == SheepOID.data(vid: companionVID, index: 0) {
            out = b.reply(w.op, .success)
        }
        return out
    }

    /// Issue 14: a gateway that brings the LU up, finds APTPL 0 state in the record and no live gateway powers
    /// the LU on: the reservation command waits for the decision, the next version clears the registrations and
    /// counts the power-on, and then the command goes on.
    @Test func noLivePeerWithAPTPLZeroPowersTheLUOn() throws {
        let (b, synced) = Self.syncFinding(SharedAPTPLTests.registered(aptpl: false))
        #expect(synced.records.first?.outcome == .current && synced.answers.isEmpty, "held until the power-on is decided")
        b.machine.home(b.volume).ownPorts = [2]
        // The first beat: no object yet, so no slot and no peer. It creates the object with this gateway's slot.
        b.machine.nowNanos = 1
        b.machine.beatDue()
        let lookup = b.drain()
        #expect(lookup.sends.count == 1 && lookup.sends[0].header.opcode == .getVDIInfo)
        let read = b.reply(lookup.sends[0].op, .success, vdiID: Self.companionVID)
        let write = b.reply(read.sends[0].op, .noObj)
        #expect(write.sends.count == 1 && write.sends[0].header.opcode == .createAndWriteObj)
        #expect(write.sends[0].header.objOffset == 32 && HeartbeatSlot(decoding: ArraySlice(write.sends[0].payload))?.serving == false)
        var out = b.reply(write.sends[0].op, .success)
        #expect(out.logs.contains { $0.contains("powers on") })
        out = R.noNewer(b, out)
        let v8 = try #require(R.created(out, version: 2))
        #expect(v8.registrations.isEmpty && !v8.reserved && v8.powerOns == 3 && v8.writer == b.volume.gatewayID)
        let hint = b.reply(out.sends[0].op, .success)
        let announce = b.reply(hint.sends[0].op, .success)
        let done = b.reply(announce.sends[0].op, .success)
        #expect(done.answers.count == 1 && done.answers[0].tag == 1 && done.answers[0].failure == nil)
        #expect(done.records.last?.record == v8)
        // From now on its heartbeat says it serves, and the next beat writes in place.
        b.machine.nowNanos = 1 + GatewayLivenessLimits.beatIntervalNanos
        b.machine.beatDue()
        let again = b.drain()
        guard let slots = again.sends.first, let dest = slots.dest else { Issue.record("no second beat"); return }
        dest.initializeMemory(as: UInt8.self, repeating: 0, count: GatewayLivenessLimits.regionBytes)
        let inPlace = b.reply(slots.op, .success)
        #expect(inPlace.sends.first?.header.opcode == .writeObj)
        #expect(HeartbeatSlot(decoding: ArraySlice(inPlace.sends.first?.payload ?? []))?.serving == true)
    }

    /// A live serving peer: the gateway joins with the record as it is (no version written), and answers.
    @Test func aLivePeerKeepsTheRecord() {
        let (b, synced) = Self.syncFinding(SharedAPTPLTests.registered(aptpl: false))
        #expect(synced.answers.isEmpty)
        b.machine.home(b.volume).ownPorts = [2]
        var region = [UInt8](repeating: 0, count: GatewayLivenessLimits.regionBytes)
        region.replaceSubrange(0 ..< 32, with: HeartbeatSlot(serving: true, gateway: 0xA, beat: 40).encoded())
        let first = Self.beat(b, now: 1, region: region, first: true)
        #expect(first.answers.isEmpty && first.sends.isEmpty, "the peer's slot is not judged yet")
        region.replaceSubrange(0 ..< 32, with: HeartbeatSlot(serving: true, gateway: 0xA, beat: 41).encoded())
        var out = Self.beat(b, now: 1 + GatewayLivenessLimits.beatIntervalNanos, region: region, first: false)
        #expect(out.logs.contains { $0.contains("another gateway serves") })
        out = R.noNewer(b, out)
        #expect(out.answers.count == 1 && out.answers[0].failure == nil, "answered without a power-on version")
        #expect(out.sends.isEmpty)
    }

    /// APTPL 1 (or nothing to lose): no decision to wait for; the command is answered with the record read.
    @Test func aptplOneKeepsTheRecordWithoutWaiting() {
        let (_, synced) = Self.syncFinding(SharedAPTPLTests.registered(aptpl: true))
        #expect(synced.answers.count == 1 && synced.answers[0].failure == nil)
    }

    /// ALUA: a peer's port whose slot stays unchanged for the bound is reported dead to the LU; when it beats
    /// again it is reported alive.
    @Test func aPeerThatStopsBeatingIsReportedDeadThenAliveAgain() {
        let b = T.Bench(locked: true, coherent: true)
        _ = R.refreshEmpty(b)
        b.machine.home(b.volume).ownPorts = [2]
        var region = [UInt8](repeating: 0, count: GatewayLivenessLimits.regionBytes)
        region.replaceSubrange(0 ..< 32, with: HeartbeatSlot(serving: true, gateway: 0xA, beat: 1).encoded())
        #expect(Self.beat(b, now: 1, region: region, first: true).deadPorts.isEmpty)
        let late = Self.beat(b, now: 1 + GatewayLivenessLimits.deadAfterNanos, region: region, first: false)
        #expect(late.deadPorts == [[1]])
        #expect(Self.beat(b, now: 1 + 2 * GatewayLivenessLimits.deadAfterNanos, region: region, first: false).deadPorts.isEmpty,
                "reported once")
        region.replaceSubrange(0 ..< 32, with: HeartbeatSlot(serving: true, gateway: 0xA2, beat: 1).encoded())
        #expect(Self.beat(b, now: 1 + 3 * GatewayLivenessLimits.deadAfterNanos, region: region, first: false).deadPorts == [[]])
    }
}
