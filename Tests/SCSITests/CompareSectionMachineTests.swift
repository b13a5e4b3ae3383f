// COMPARE AND WRITE's section across gateways (Store/Sheep/SheepCompareSection.swift), reply by reply: the
// machines of several gateways talk to a model of the sheep state they use (normal VDI locks owned by a node
// and released by anyone, the lease object, exclusive attributes), with the time passed in. A holder that
// dies is broken after its lease by exactly one waiter; a slow holder is never broken while it may act; and in
// seeded random runs with deaths and late replies no two gateways may act in the section at once.

import DeterministicRandom
import SheepProtocol
import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import SCSITestSupport

/// The part of a sheep cluster the section uses, as sheep/vdi.c and ops.c behave.
private final class SectionSheep {
    var vdis: [String: UInt32] = [:]
    /// Normal lock of a VID: the node that took it.
    var locks: [UInt32: Int] = [:]
    var objects: [UInt64: [UInt8]] = [:]
    var attributes: Set<String> = []
    var log: [(node: Int, op: SheepOpcode)] = []

    func name(_ payload: [UInt8]) -> String {
        payload.withUnsafeBytes { SheepVDIName.decode($0.baseAddress!, capacity: min(256, $0.count)) }
    }

    func handle(_ h: SheepRequestHeader, _ payload: [UInt8], node: Int) -> (SheepResult, UInt32, [UInt8]) {
        log.append((node, h.opcode))
        switch h.opcode {
        case .getVDIInfo:
            guard let vid = vdis[name(payload)] else { return (.noVDI, 0, []) }
            return (.success, vid, [])
        case .newVDI:
            let n = name(payload)
            if vdis[n] != nil { return (.vdiExist, 0, []) }
            let vid = UInt32(0x100 + vdis.count)
            vdis[n] = vid
            return (.success, vid, [])
        case .lockVDI:
            guard let vid = vdis[name(payload)] else { return (.noVDI, 0, []) }
            if locks[vid] != nil { return (.vdiLocked, vid, []) }   // already locked, by this node too
            locks[vid] = node
            return (.success, vid, [])
        case .releaseVDI:
            locks[h.baseVDIID] = nil   // whoever asks
            return (.success, 0, [])
        case .readObj:
            guard let o = objects[h.oid] else { return (.noObj, 0, []) }
            return (.success, 0, Array(o.prefix(Int(h.dataLength))))
        case .writeObj:
            guard objects[h.oid] != nil else { return (.noObj, 0, []) }
            objects[h.oid] = payload
            return (.success, 0, [])
        case .createAndWriteObj:
            objects[h.oid] = payload
            return (.success, 0, [])
        case .getVDIAttr:
            let key = payload.withUnsafeBytes {
                SheepVDIName.decode($0.baseAddress! + SheepVDIAttrLayout.keyOffset, capacity: SheepVDIAttrLayout.keyBufferBytes)
            }
            let full = name(payload) + "/" + key
            guard h.flags.contains(.attrCreate) else { return (attributes.contains(full) ? .success : .noObj, 0, []) }
            if h.flags.contains(.attrExclusive) && attributes.contains(full) { return (.vdiExist, 0, []) }
            attributes.insert(full)
            return (.success, 0, [])
        default:
            return (.invalidParms, 0, [])
        }
    }

    var breakClaims: Int { attributes.filter { $0.contains(CompareSectionLimits.breakKeyPrefix) }.count }
}

@Suite struct CompareSectionMachineTests {
    typealias Section = SheepCompareSection
    static let second: UInt64 = 1_000_000_000

    /// Runs a gateway's steps against `sheep` at time `now` (replies at once) until it waits or is done.
    private static func run(_ s: inout Section, _ sheep: SectionSheep, node: Int, _ first: Section.Step,
                            now: UInt64) -> Section.Step {
        var step = first
        while case .send(let h, let payload) = step {
            let (r, vid, data) = sheep.handle(h, payload, node: node)
            step = s.reply(r, vdiID: vid, data: data, nowNanos: now)
        }
        return step
    }

    /// Keeps a waiting gateway asking, its timer firing as due, until it enters or `until`; returns when it entered.
    private static func waitToEnter(_ s: inout Section, _ sheep: SectionSheep, node: Int, _ first: Section.Step,
                                    from: UInt64, until: UInt64) -> UInt64? {
        var step = first
        var now = from
        while now <= until {
            switch step {
            case .done(.entered): return now
            case .done: return nil
            case .wait(let at):
                now = max(now, at)
                step = run(&s, sheep, node: node, s.timerFired(nowNanos: now)!, now: now)
            case .send:
                step = run(&s, sheep, node: node, step, now: now)
            }
        }
        return nil
    }

    @Test func theFirstEnterCreatesTheCompanionAndItsLeaseThenLeavesWithFreedAndRelease() {
        let sheep = SectionSheep()
        var a = Section(vdiName: "vol", gateway: 0xA, copies: 3)
        #expect(Self.run(&a, sheep, node: 0, a.enter(nowNanos: 0), now: 0) == .done(.entered))
        #expect(sheep.log.map(\.op) == [.getVDIInfo, .newVDI, .lockVDI, .readObj, .createAndWriteObj])
        let vid = sheep.vdis["vol.ringtgt-caw"]!
        #expect(sheep.locks[vid] == 0)
        #expect(CompareLeaseState(decoding: sheep.objects[SheepOID.data(vid: vid, index: 0)]!)
                == CompareLeaseState(kind: .held, writer: 0xA, stamp: 1))
        #expect(a.mayAct(nowNanos: 7 * Self.second) && !a.mayAct(nowNanos: 8 * Self.second))

        sheep.log = []
        #expect(Self.run(&a, sheep, node: 0, a.leave(nowNanos: Self.second), now: Self.second) == .done(.left))
        #expect(sheep.log.map(\.op) == [.writeObj, .releaseVDI])
        #expect(sheep.locks[vid] == nil)
        #expect(CompareLeaseState(decoding: sheep.objects[SheepOID.data(vid: vid, index: 0)]!)?.kind == .freed)

        // Later entries only lock and write.
        sheep.log = []
        #expect(Self.run(&a, sheep, node: 0, a.enter(nowNanos: 2 * Self.second), now: 2 * Self.second) == .done(.entered))
        #expect(sheep.log.map(\.op) == [.lockVDI, .writeObj])
    }

    @Test func aSecondGatewayFindsTheCompanionAnotherCreated() {
        let sheep = SectionSheep()
        var a = Section(vdiName: "vol", gateway: 0xA, copies: 3), b = Section(vdiName: "vol", gateway: 0xB, copies: 3)
        // Both look up before either creates: B's create meets VDI_EXIST and looks up again.
        guard case .send(let la, let pa) = a.enter(nowNanos: 0), case .send(let lb, let pb) = b.enter(nowNanos: 0) else {
            Issue.record("no lookup"); return
        }
        let ra = sheep.handle(la, pa, node: 0), rb = sheep.handle(lb, pb, node: 1)
        let stepA = Self.run(&a, sheep, node: 0, a.reply(ra.0, vdiID: ra.1, nowNanos: 0), now: 0)
        #expect(stepA == .done(.entered))
        let stepB = Self.run(&b, sheep, node: 1, b.reply(rb.0, vdiID: rb.1, nowNanos: 0), now: 0)
        guard case .wait = stepB else { Issue.record("B entered while A holds: \(stepB)"); return }
        #expect(a.companionVID == b.companionVID && sheep.vdis.count == 1)
    }

    /// Exactly one of two gateways enters; the other waits and enters once the first leaves.
    @Test func aWaiterEntersOnlyAfterTheHolderLeaves() {
        let sheep = SectionSheep()
        var a = Section(vdiName: "vol", gateway: 0xA, copies: 1), b = Section(vdiName: "vol", gateway: 0xB, copies: 1)
        #expect(Self.run(&a, sheep, node: 0, a.enter(nowNanos: 0), now: 0) == .done(.entered))
        var stepB = Self.run(&b, sheep, node: 1, b.enter(nowNanos: 0), now: 0)
        var now: UInt64 = 0
        for _ in 0..<20 {
            guard case .wait(let at) = stepB else { Issue.record("B: \(stepB)"); return }
            now = at
            stepB = Self.run(&b, sheep, node: 1, b.timerFired(nowNanos: now)!, now: now)
        }
        #expect(!b.isHeld)
        #expect(Self.run(&a, sheep, node: 0, a.leave(nowNanos: now), now: now) == .done(.left))
        #expect(Self.waitToEnter(&b, sheep, node: 1, stepB, from: now, until: now + Self.second) != nil)
        #expect(sheep.breakClaims == 0, "nobody was broken")
    }

    /// A holder that dies keeps sheep's lock; a waiter breaks it once it has seen the lease state unchanged for
    /// `leaseSeconds`, not before, and enters.
    @Test func aDeadHoldersLeaseExpiresAndOneWaiterBreaksIt() {
        let sheep = SectionSheep()
        var a = Section(vdiName: "vol", gateway: 0xA, copies: 1), b = Section(vdiName: "vol", gateway: 0xB, copies: 1)
        #expect(Self.run(&a, sheep, node: 0, a.enter(nowNanos: 0), now: 0) == .done(.entered))
        // A dies now: it sends nothing more.
        let start = Self.second
        let entered = Self.waitToEnter(&b, sheep, node: 1, b.enter(nowNanos: start), from: start, until: start + 20 * Self.second)
        guard let entered else { Issue.record("B never entered"); return }
        #expect(entered >= start + CompareSectionLimits.breakAfterNanos, "broken after \(entered - start) ns")
        #expect(entered < start + CompareSectionLimits.breakAfterNanos + Self.second)
        #expect(sheep.breakClaims == 1)
        #expect(b.isHeld && b.mayAct(nowNanos: entered))
        let vid = sheep.vdis["vol.ringtgt-caw"]!
        #expect(CompareLeaseState(decoding: sheep.objects[SheepOID.data(vid: vid, index: 0)]!)
                == CompareLeaseState(kind: .held, writer: 0xB, stamp: b.stamp))
    }

    /// A holder that dies between LOCK_VDI and its first lease write leaves no object at all: that is broken too,
    /// after the longer wait of a state that does not say who holds the lock.
    @Test func aHolderThatDiedBeforeItsFirstLeaseWriteIsBroken() {
        let sheep = SectionSheep()
        sheep.vdis["vol.ringtgt-caw"] = 0x100
        sheep.locks[0x100] = 0   // locked by a gateway through node 0 that died at once
        var b = Section(vdiName: "vol", gateway: 0xB, copies: 1)
        let entered = Self.waitToEnter(&b, sheep, node: 1, b.enter(nowNanos: 0), from: 0, until: 20 * Self.second)
        #expect(entered.map { $0 >= CompareSectionLimits.transitionBreakNanos } == true, "\(String(describing: entered))")
        #expect(sheep.breakClaims == 1)
    }

    /// Two waiters time the same dead holder: one claims the break and releases; the other's claim loses, it
    /// does not release, and it waits for the winner, who holds the section.
    @Test func twoWaitersBreakADeadHolderOnceAndOnlyOneEnters() {
        let sheep = SectionSheep()
        var a = Section(vdiName: "vol", gateway: 0xA, copies: 1)
        var b = Section(vdiName: "vol", gateway: 0xB, copies: 1), c = Section(vdiName: "vol", gateway: 0xC, copies: 1)
        #expect(Self.run(&a, sheep, node: 0, a.enter(nowNanos: 0), now: 0) == .done(.entered))
        var stepB = Self.run(&b, sheep, node: 1, b.enter(nowNanos: 0), now: 0)
        var stepC = Self.run(&c, sheep, node: 2, c.enter(nowNanos: 0), now: 0)
        var now: UInt64 = 0
        var releases = 0
        while now < 40 * Self.second && !(b.isHeld && c.isHeld) {
            guard case .wait(let tb) = stepB, case .wait(let tc) = stepC else { break }
            now = min(tb, tc)
            let before = sheep.log.count
            if tb <= tc { stepB = Self.run(&b, sheep, node: 1, b.timerFired(nowNanos: now)!, now: now) }
            else { stepC = Self.run(&c, sheep, node: 2, c.timerFired(nowNanos: now)!, now: now) }
            releases += sheep.log[before...].filter { $0.op == .releaseVDI }.count
        }
        #expect(b.isHeld != c.isHeld, "exactly one enters: B \(b.isHeld), C \(c.isHeld)")
        #expect(releases == 1, "only the break's winner releases")
        #expect(sheep.attributes.filter { $0.hasSuffix(".1") }.count == 1)
    }

    /// A holder past `leaseSeconds - leaseSkewSeconds` may not write and does not release when it leaves: by
    /// then a waiter may be breaking it.
    @Test func aHolderPastItsLeaseNeitherActsNorReleases() {
        let sheep = SectionSheep()
        var a = Section(vdiName: "vol", gateway: 0xA, copies: 1)
        #expect(Self.run(&a, sheep, node: 0, a.enter(nowNanos: 0), now: 0) == .done(.entered))
        let late = CompareSectionLimits.usableNanos
        #expect(!a.mayAct(nowNanos: late))
        sheep.log = []
        let left = Self.run(&a, sheep, node: 0, a.leave(nowNanos: late), now: late)
        guard case .done(.abandoned) = left else { Issue.record("\(left)"); return }
        #expect(sheep.log.isEmpty, "nothing sent: \(sheep.log)")
        #expect(a.isIdle && sheep.locks[sheep.vdis["vol.ringtgt-caw"]!] == 0)
        // A holder whose command went away is let go of the same way.
        var b = Section(vdiName: "other", gateway: 0xB, copies: 1)
        #expect(Self.run(&b, sheep, node: 1, b.enter(nowNanos: 0), now: 0) == .done(.entered))
        #expect(b.expire(nowNanos: late - 1) == nil)
        guard case .done(.abandoned)? = b.expire(nowNanos: late) else { Issue.record("not expired"); return }
    }

    /// A waiter whose own LOCK_VDIs go out more than `lockGapMaxNanos` apart cannot tell how long the lock
    /// was held: it never breaks, and gives up after its bound.
    @Test func aWaiterThatAsksTooRarelyNeverBreaks() {
        let sheep = SectionSheep()
        var a = Section(vdiName: "vol", gateway: 0xA, copies: 1), b = Section(vdiName: "vol", gateway: 0xB, copies: 1)
        #expect(Self.run(&a, sheep, node: 0, a.enter(nowNanos: 0), now: 0) == .done(.entered))   // and dies
        var stepB = Self.run(&b, sheep, node: 1, b.enter(nowNanos: 0), now: 0)
        var now: UInt64 = 0
        while case .wait = stepB {
            now += CompareSectionLimits.lockGapMaxNanos + 1
            stepB = Self.run(&b, sheep, node: 1, b.timerFired(nowNanos: now)!, now: now)
        }
        #expect(stepB == .done(.busy) && sheep.breakClaims == 0)
    }

    /// A waiter gives up (BUSY) after `waitSecondsMax` when the state keeps changing (a live, busy holder).
    @Test func aWaiterGivesUpAfterItsBound() {
        let sheep = SectionSheep()
        var a = Section(vdiName: "vol", gateway: 0xA, copies: 1), b = Section(vdiName: "vol", gateway: 0xB, copies: 1)
        #expect(Self.run(&a, sheep, node: 0, a.enter(nowNanos: 0), now: 0) == .done(.entered))
        var stepB = Self.run(&b, sheep, node: 1, b.enter(nowNanos: 0), now: 0)
        var now: UInt64 = 0
        while case .wait(let at) = stepB {
            now = at
            // A leaves and enters again between B's tries: never the same state twice, so never broken.
            _ = Self.run(&a, sheep, node: 0, a.leave(nowNanos: now), now: now)
            _ = Self.run(&a, sheep, node: 0, a.enter(nowNanos: now), now: now)
            stepB = Self.run(&b, sheep, node: 1, b.timerFired(nowNanos: now)!, now: now)
        }
        #expect(stepB == .done(.busy))
        #expect(now >= CompareSectionLimits.waitSecondsMax * Self.second)
        #expect(sheep.breakClaims == 0 && b.isIdle)
    }

    /// The lock passes from A to C while the state still reads A's `freed`, which B has timed since a moment A
    /// held the lock. With C's LOCK_VDI answered at once, C writes `held` and B, seeing the state change, waits
    /// for C to leave. With C's answer 7.5 s late, C does not enter; B breaks the lock once `freed` has been
    /// unchanged for `transitionBreakNanos`. Never both in the section, and never B breaking a C that may act.
    @Test(arguments: [false, true])
    func theLockPassingWhileTheStateSaysFreedIsNeverBrokenUnderANewHolder(slowAnswer: Bool) {
        let sheep = SectionSheep()
        var a = Section(vdiName: "vol", gateway: 0xA, copies: 1), b = Section(vdiName: "vol", gateway: 0xB, copies: 1)
        var c = Section(vdiName: "vol", gateway: 0xC, copies: 1)
        let s = Self.second
        #expect(Self.run(&a, sheep, node: 0, a.enter(nowNanos: 0), now: 0) == .done(.entered))
        _ = Self.run(&c, sheep, node: 2, c.enter(nowNanos: 0), now: 0)   // C knows the companion; it waits
        var stepB = Self.run(&b, sheep, node: 1, b.enter(nowNanos: 0), now: 0)
        // A leaves: `freed` lands at 5 s, its RELEASE_VDI reaches sheep only at 7.9 s.
        guard case .send(let freedWrite, let freedPayload) = a.leave(nowNanos: 5 * s) else { Issue.record("no freed"); return }
        _ = sheep.handle(freedWrite, freedPayload, node: 0)
        guard case .send(let release, let releasePayload) = a.reply(.success, nowNanos: 5 * s) else { Issue.record("no release"); return }
        // B reads `freed` at 5 s, then meets the lock again at 5.1 s (A's still): it times `freed` from there.
        for t in [UInt64(5 * s), 5 * s + s / 10] {
            guard case .wait = stepB else { Issue.record("B: \(stepB)"); return }
            stepB = Self.run(&b, sheep, node: 1, b.timerFired(nowNanos: t)!, now: t)
        }
        _ = sheep.handle(release, releasePayload, node: 0)
        #expect(a.reply(.success, nowNanos: 7 * s + 9 * s / 10) == .done(.left))
        // C's LOCK_VDI is taken at 7.9 s.
        let cLockAt = 7 * s + 9 * s / 10
        guard case .send(let lock, let lockPayload) = c.timerFired(nowNanos: cLockAt) else { Issue.record("C does not lock"); return }
        let locked = sheep.handle(lock, lockPayload, node: 2)
        #expect(locked.0 == .success)
        let cAnswerAt = slowAnswer ? cLockAt + 7 * s + s / 2 : cLockAt + s / 100
        var cAnswered = false
        var now = 5 * s + s / 10
        var bEnteredAt: UInt64? = nil
        while now < 40 * s {
            if !cAnswered && now >= cAnswerAt {
                cAnswered = true
                let stepC = Self.run(&c, sheep, node: 2, c.reply(locked.0, vdiID: locked.1, nowNanos: now), now: now)
                if slowAnswer {
                    guard case .done(.abandoned) = stepC else { Issue.record("C: \(stepC)"); return }
                } else {
                    #expect(stepC == .done(.entered))
                }
            }
            if c.isHeld && now >= cLockAt + 4 * s {
                #expect(Self.run(&c, sheep, node: 2, c.leave(nowNanos: now), now: now) == .done(.left))
            }
            if b.mayAct(nowNanos: now) && c.mayAct(nowNanos: now) { Issue.record("B and C both in at \(now)"); return }
            if b.isHeld { bEnteredAt = now; break }
            guard case .wait(let at) = stepB else { Issue.record("B: \(stepB)"); return }
            now = cAnswered ? at : min(at, cAnswerAt)
            if now == at { stepB = Self.run(&b, sheep, node: 1, b.timerFired(nowNanos: now)!, now: now) }
        }
        guard let bEnteredAt else { Issue.record("B never entered"); return }
        if slowAnswer {
            #expect(bEnteredAt >= 5 * s + s / 10 + CompareSectionLimits.transitionBreakNanos, "B entered at \(bEnteredAt)")
            #expect(sheep.breakClaims == 1)
        } else {
            #expect(bEnteredAt >= cLockAt + 4 * s && sheep.breakClaims == 0, "B entered at \(bEnteredAt) after C left")
        }
    }

    /// Seeded random runs: three gateways enter and leave over and over, requests reach sheep late (less than
    /// the skew), gateways die holding the section or halfway through anything. Whenever one gateway may act in
    /// the section, no other may; and the survivors keep entering.
    @Test(arguments: [UInt64(1), 2, 3, 4, 5, 6, 7, 8])
    func randomRunsNeverLetTwoGatewaysActAtOnce(seed: UInt64) {
        var rng = SeededRandom(seed: seed)
        let sheep = SectionSheep()
        struct Gateway {
            var section: Section
            var dead = false
            /// A request on its way: it reaches sheep at `arrives` and its answer comes back at `answers`.
            var inFlight: (h: SheepRequestHeader, payload: [UInt8], arrives: UInt64)? = nil
            var reply: (r: SheepResult, vid: UInt32, data: [UInt8], at: UInt64)? = nil
            var wakeAt: UInt64? = nil
            var idleUntil: UInt64 = 0
            var heldUntil: UInt64 = 0
        }
        var g = (0..<3).map { Gateway(section: Section(vdiName: "vol", gateway: UInt64($0 + 1), copies: 1)) }
        var now: UInt64 = 0
        let maxLatency = ClusterStateLimits.leaseSkewSeconds * Self.second / 4
        var deaths = 0
        var entries = 0
        /// Requests a dead gateway sent still reach sheep.
        var orphans: [(h: SheepRequestHeader, payload: [UInt8], arrives: UInt64, node: Int)] = []
        func apply(_ i: Int, _ step: Section.Step) {
            switch step {
            case .send(let h, let p):
                g[i].inFlight = (h, p, now + rng.next() % maxLatency)
            case .wait(let at):
                g[i].wakeAt = at
            case .done(.entered):
                entries += 1
                g[i].heldUntil = now + rng.next() % (CompareSectionLimits.usableNanos + 2 * Self.second)
            case .done:
                g[i].idleUntil = now + rng.next() % (Self.second / 10)
            }
        }
        for _ in 0..<20_000 {
            now += 1 + rng.next() % (Self.second / 20)
            orphans.removeAll { o in
                guard o.arrives <= now else { return false }
                _ = sheep.handle(o.h, o.payload, node: o.node)
                return true
            }
            for i in g.indices where !g[i].dead {
                if let f = g[i].inFlight, f.arrives <= now {
                    let (r, vid, data) = sheep.handle(f.h, f.payload, node: i)
                    g[i].inFlight = nil
                    g[i].reply = (r, vid, data, now + rng.next() % maxLatency)
                }
                if let r = g[i].reply, r.at <= now {
                    g[i].reply = nil
                    apply(i, g[i].section.reply(r.r, vdiID: r.vid, data: r.data, nowNanos: now))
                }
                if let w = g[i].wakeAt, w <= now {
                    g[i].wakeAt = nil
                    if let s = g[i].section.timerFired(nowNanos: now) { apply(i, s) }
                }
                if g[i].section.isHeld && now >= g[i].heldUntil {
                    apply(i, g[i].section.leave(nowNanos: now))
                }
                if g[i].section.isIdle && g[i].inFlight == nil && g[i].reply == nil && now >= g[i].idleUntil {
                    apply(i, g[i].section.enter(nowNanos: now))
                }
                // Now and then a gateway dies, whatever it was doing; a new one (new id) takes its place.
                if rng.next() % 4000 == 0 && deaths < 6 {
                    deaths += 1
                    if let f = g[i].inFlight { orphans.append((f.h, f.payload, f.arrives, i)) }
                    g[i] = Gateway(section: Section(vdiName: "vol", gateway: UInt64(100 + deaths), copies: 1))
                }
            }
            let acting = g.indices.filter { g[$0].section.mayAct(nowNanos: now) }
            if acting.count > 1 {
                Issue.record("seed \(seed): gateways \(acting) may act at once at \(now) ns")
                return
            }
        }
        #expect(entries > 20, "entries: \(entries), deaths \(deaths)")
    }
}

/// The home core runs one section per VDI for one command at a time (Store/Sheep/SheepHomeCompare.swift).
@Suite struct SheepHomeCompareTests {
    typealias T = SheepHomeMachineTests

    static func request(_ b: T.Bench, _ step: CompareSectionStep, tag: UInt64, core: Int = 0) -> T.Out {
        b.machine.request(SheepHomeRequest(volume: b.volume, kind: .compareSection(step), originCore: core,
                                           waiter: .request(tag: tag)))
        return b.drain()
    }

    @Test func oneCommandHoldsTheSectionTheNextEntersWhenItLeaves() {
        let b = T.Bench(locked: true, coherent: true)
        b.machine.nowNanos = 1_000
        let lookup = Self.request(b, .enter, tag: 1)
        #expect(lookup.sends.map(\.header.opcode) == [.getVDIInfo] && lookup.answers.isEmpty)
        #expect(Self.request(b, .enter, tag: 2).sends.isEmpty, "the second command waits its turn")
        let lock = b.reply(lookup.sends[0].op, .success, vdiID: 0x300)
        #expect(lock.sends.map(\.header.opcode) == [.lockVDI] && lock.sends[0].header.lockType == .normal)
        let read = b.reply(lock.sends[0].op, .success, vdiID: 0x300)
        #expect(read.sends.map(\.header.opcode) == [.readObj] && read.sends[0].dest != nil)
        #expect(read.sends[0].header.oid == SheepOID.data(vid: 0x300, index: 0))
        #expect(!read.sends[0].header.flags.contains(.tgt), "the companion has no coherence")
        let held = b.reply(read.sends[0].op, .noObj)
        #expect(held.sends.map(\.header.opcode) == [.createAndWriteObj])
        #expect(CompareLeaseState(decoding: held.sends[0].payload)?.kind == .held)
        let entered = b.reply(held.sends[0].op, .success)
        #expect(entered.answers.count == 1 && entered.answers[0].tag == 1 && entered.answers[0].failure == nil)

        // Only the holder's command may write, and only within its lease.
        #expect(Self.request(b, .confirm, tag: 2).answers.map(\.failure) == [.unavailable])
        #expect(Self.request(b, .confirm, tag: 1, core: 1).answers.map(\.failure) == [.unavailable])
        #expect(Self.request(b, .confirm, tag: 1).answers.map(\.failure) == [nil])
        // A leave from a command that does not hold it gives nothing back.
        let stray = Self.request(b, .leave, tag: 2)
        #expect(stray.sends.isEmpty && stray.answers.map(\.failure) == [nil])

        let freed = Self.request(b, .leave, tag: 1)
        #expect(freed.sends.map(\.header.opcode) == [.writeObj])
        #expect(CompareLeaseState(decoding: freed.sends[0].payload)?.kind == .freed)
        let release = b.reply(freed.sends[0].op, .success)
        #expect(release.sends.map(\.header.opcode) == [.releaseVDI] && release.sends[0].header.baseVDIID == 0x300)
        let next = b.reply(release.sends[0].op, .success)
        #expect(next.answers.map(\.tag) == [1])
        #expect(next.sends.map(\.header.opcode) == [.lockVDI], "the waiting command starts to enter")
    }

    @Test func aHolderWhoseCommandWentAwayIsLetGoOfAtItsLease() {
        let b = T.Bench(locked: true, coherent: true)
        b.machine.nowNanos = 1_000
        let lookup = Self.request(b, .enter, tag: 1)
        let lock = b.reply(lookup.sends[0].op, .success, vdiID: 0x300)
        let read = b.reply(lock.sends[0].op, .success, vdiID: 0x300)
        let held = b.reply(read.sends[0].op, .noObj)
        #expect(b.reply(held.sends[0].op, .success).answers.map(\.tag) == [1])
        #expect(Self.request(b, .enter, tag: 2).sends.isEmpty)
        b.machine.nowNanos = 1_000 + CompareSectionLimits.usableNanos - 1
        b.machine.expireCompareSections()
        #expect(b.drain().sends.isEmpty)
        b.machine.nowNanos = 1_000 + CompareSectionLimits.usableNanos
        b.machine.expireCompareSections()
        let after = b.drain()
        #expect(after.logs.contains { $0.contains("past its lease") })
        #expect(after.sends.map(\.header.opcode) == [.lockVDI], "no RELEASE_VDI: the next command asks for the lock")
    }

    @Test func aSingleGatewayLUNeverGoesToSheepForTheSection() {
        let b = T.Bench(locked: true, coherent: false)
        for step in [CompareSectionStep.enter, .confirm, .leave] {
            let out = Self.request(b, step, tag: 1)
            #expect(out.sends.isEmpty && out.answers.map(\.failure) == [nil])
        }
    }
}
