// COMPARE AND WRITE across two gateways of one VDI (issue 14; docs/CLUSTER-STATE.md): two initiators, one
// logged in through gateway A and one through gateway B, race COMPARE AND WRITE on one block round after
// round. Each round both send CAW(expected = the block's current value, new = their own value) at once, over
// their own connections, before either answer is read. Exactly one must get GOOD and the other MISCOMPARE
// (0e/1d/00), and the winner's value is the next round's expected value, so a round in which both wrote, or
// neither, shows up at once. Against the test server with two nodes, and against a real 3-node cluster
// formatted with -l when sheep is on PATH.

import Foundation
import SheepProtocol
import Testing
import TestSupport
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor
#if canImport(Glibc)
import Glibc
#endif

extension EndToEnd {
    @Suite("Sheepdog COMPARE AND WRITE across gateways")
    struct SheepCompareAndWrite {
        typealias M = EndToEnd.SheepMultipath
        /// Rounds per run, about 20 s each on a debug build (2 shared cores): a real cluster's lock and release
        /// are cluster ops through its driver, some ten times slower than the test server's.
        static func rounds(_ kind: SheepKind) -> Int { kind == .testServer ? 10_000 : 2_000 }
        /// The block is read back through both gateways this often as well.
        static let readBackEvery = 250

        /// The value initiator `who` (0 = through A, 1 = through B) writes in `round`.
        static func value(_ who: Int, _ round: Int) -> [UInt8] {
            var v = [UInt8](repeating: UInt8(who == 0 ? 0xA0 : 0xB0), count: M.blockBytes)
            withUnsafeBytes(of: UInt32(round).bigEndian) { v.replaceSubrange(0..<4, with: $0) }
            v[4] = UInt8(who)
            return v
        }

        @Test(arguments: SheepKind.allCases)
        func racingCompareAndWriteThroughTwoGatewaysHasExactlyOneWinnerEachRound(kind: SheepKind) throws {
            try withMultipathSheep(kind) { sheep in
                try sheep.dog(["vdi", "create", "vol", "\(M.vdiBytes)"])
                try M.withGateways(sheep, vdi: "vol") { a, b in
                    let sessions = [try M.session(a, "a"), try M.session(b, "b")]
                    defer { for s in sessions { s.close() } }
                    for s in sessions { _ = try s.run(RawCDB.testUnitReady) }   // the power-on unit attention
                    let lba = M.lba(object: 3)
                    var current = [UInt8](repeating: 0x5A, count: M.blockBytes)
                    try M.write(sessions[0], lba, current, "the starting value")
                    let caw = RawCDB.compareAndWrite(lba: UInt64(lba), blocks: 1)
                    var wins = [0, 0]
                    let started = monotonicSeconds()
                    for round in 0..<Self.rounds(kind) {
                        let itts = try (0..<2).map { who in
                            try sessions[who].sendCommand(caw, writeData: current + Self.value(who, round))
                        }
                        let results = try (0..<2).map { who in try sessions[who].collect([itts[who]])[itts[who]]! }
                        let good = (0..<2).filter { results[$0].status == RawCodes.good }
                        guard good.count == 1 else {
                            throw E2EError("round \(round): \(good.count) winners: A \(results[0]), B \(results[1])")
                        }
                        let winner = good[0], loser = 1 - winner
                        let lost = results[loser]
                        guard lost.status == RawCodes.checkCondition, let sense = lost.sense,
                              sense.key == 0x0E, sense.asc == 0x1D, sense.ascq == 0x00 else {
                            throw E2EError("round \(round): the loser (\(loser == 0 ? "A" : "B")) got \(lost), not MISCOMPARE")
                        }
                        wins[winner] += 1
                        current = Self.value(winner, round)
                        if round % Self.readBackEvery == Self.readBackEvery - 1 {
                            for s in sessions {
                                #expect(try M.read(s, lba, M.blockBytes) == current, "round \(round): read back")
                            }
                        }
                    }
                    let seconds = monotonicSeconds() - started
                    for s in sessions { #expect(try M.read(s, lba, M.blockBytes) == current) }
                    print("COMPARE AND WRITE race (\(kind)): \(Self.rounds(kind)) rounds in \(String(format: "%.1f", seconds)) s, " +
                          "exactly one winner each; A won \(wins[0]), B won \(wins[1])")
                    for t in [a, b] { try t.requireAlive("after the COMPARE AND WRITE race") }
                }
            }
        }

        /// A gateway that dies holding the section leaves sheep's normal lock on the companion VDI (sheep keeps
        /// it when a node goes) and its `held` lease state. The next COMPARE AND WRITE through the other gateway
        /// waits, sees the state unchanged for `leaseSeconds`, breaks the lock (one exclusive claim), and goes
        /// through: the LU is not wedged, and the wait is bounded.
        @Test(arguments: SheepKind.allCases)
        func aGatewayThatDiedHoldingTheSectionDoesNotWedgeTheLU(kind: SheepKind) throws {
            try withMultipathSheep(kind) { sheep in
                try sheep.dog(["vdi", "create", "vol", "\(M.vdiBytes)"])
                try M.withGateways(sheep, vdi: "vol") { a, b in
                    let sb = try M.session(b, "b")
                    defer { sb.close() }
                    _ = try sb.run(RawCDB.testUnitReady)
                    let lba = M.lba(object: 1)
                    let caw = RawCDB.compareAndWrite(lba: UInt64(lba), blocks: 1)
                    let zero = [UInt8](repeating: 0, count: M.blockBytes)
                    let first = try sb.run(caw, writeData: zero + Self.value(1, 0))
                    #expect(first.status == RawCodes.good, "\(first)")   // the companion and its lease exist now

                    // The dead gateway: it locked through node 0 and wrote its lease state, then vanished.
                    let node0 = try SheepClient(endpoint: .tcp(host: "127.0.0.1", port: UInt16(sheep.ports[0])))
                    let companion = "vol" + CompareSectionLimits.companionSuffix
                    #expect(try node0.lookup(.lockVDI, name: companion, lockType: .normal).result == .success)
                    let vid = try node0.findVDI(name: companion)
                    let dead = CompareLeaseState(kind: .held, writer: 0xDEAD, stamp: 1).encoded()
                    #expect(try node0.writeObject(SheepOID.data(vid: vid, index: 0), offset: 0, data: dead).result == .success)
                    #expect(try node0.lookup(.lockVDI, name: companion, lockType: .normal).result == .vdiLocked)

                    let started = monotonicSeconds()
                    let itt = try sb.sendCommand(caw, writeData: Self.value(1, 0) + Self.value(1, 1))
                    let r = try sb.collect([itt], timeoutSeconds: Double(CompareSectionLimits.waitSecondsMax + 10))[itt]!
                    let waited = monotonicSeconds() - started
                    #expect(r.status == RawCodes.good, "\(r)")
                    #expect(waited >= Double(ClusterStateLimits.leaseSeconds) && waited < Double(CompareSectionLimits.waitSecondsMax),
                            "waited \(waited) s")
                    #expect(try M.read(sb, lba, M.blockBytes) == Self.value(1, 1))
                    // The break was claimed once, for the dead gateway's state.
                    let claim = SheepVDIAttr.encode(name: companion, key: CompareLeaseID(writer: 0xDEAD, stamp: 1).breakKey + ".1")
                    #expect(try node0.call(.getVDIAttr(id: 0, flags: []), payload: claim).result == .success)
                    // The next one goes through at once.
                    let again = monotonicSeconds()
                    #expect(try sb.run(caw, writeData: Self.value(1, 1) + Self.value(1, 2)).status == RawCodes.good)
                    #expect(monotonicSeconds() - again < Double(ClusterStateLimits.leaseSeconds))
                    print("COMPARE AND WRITE after a dead holder (\(kind)): went through after \(String(format: "%.1f", waited)) s")
                    for t in [a, b] { try t.requireAlive("after breaking a dead holder") }
                }
            }
        }

        /// A real gateway killed while it holds the section (not a stand-in, as above): gateway A runs
        /// COMPARE AND WRITE after COMPARE AND WRITE on one block while the test watches the companion's lease
        /// object through another sheep node. When it reads A's `held` state, A is frozen (SIGSTOP) and the
        /// object read again: still the same `held` means A is inside the section (a holder writes `freed`
        /// before it lets go), and A is killed there (SIGKILL). The block then holds A's last acknowledged
        /// value or the one its unanswered command was writing; a COMPARE AND WRITE through B from that value
        /// goes through once the lease runs out (`leaseSeconds`, within `waitSecondsMax`), A restarts and its
        /// next COMPARE AND WRITE goes through at once, and both gateways read the same block.
        @Test(arguments: SheepKind.allCases)
        func aGatewayKilledInsideTheSectionDoesNotWedgeTheLU(kind: SheepKind) throws {
            try withMultipathSheep(kind) { sheep in
                try sheep.dog(["vdi", "create", "vol", "\(M.vdiBytes)"])
                let a = try FailoverGateway("gatewayA", backingStore: sheep.backingStore(node: 0, "vol"), params: M.lunParams)
                defer { a.stop() }
                let b = try FailoverGateway("gatewayB", backingStore: sheep.backingStore(node: 1, "vol"), params: M.lunParams)
                defer { b.stop() }
                func session(_ g: FailoverGateway, _ name: String) throws -> RawSession {
                    try RawSession(g.endpoint, target: FailoverGateway.iqn,
                                   options: RawLoginOptions(initiatorName: "iqn.2026-01.e2e:\(name)", isid: 1))
                }
                let lba = M.lba(object: 2)
                let caw = RawCDB.compareAndWrite(lba: UInt64(lba), blocks: 1)
                let sb = try session(b, "b")
                defer { sb.close() }
                _ = try sb.run(RawCDB.testUnitReady)
                let start = [UInt8](repeating: 0x5A, count: M.blockBytes)
                try M.write(sb, lba, start, "the starting value")
                #expect(try sb.run(caw, writeData: start + Self.value(1, 0)).status == RawCodes.good)   // makes the companion

                // A's loop: each round CAW(last acknowledged -> value(0, round)), on its own thread until A dies.
                let loop = CompareLoop(acknowledged: Self.value(1, 0))
                let sa = try session(a, "a")
                _ = try sa.run(RawCDB.testUnitReady)
                let loopDone = DispatchSemaphore(value: 0)
                Thread.detachNewThread {
                    defer { loopDone.signal() }
                    var round = 1
                    while true {
                        let next = Self.value(0, round)
                        let expected = loop.begin(next)
                        guard let r = try? sa.run(caw, writeData: expected + next), r.status == RawCodes.good else { return }
                        loop.acknowledge()
                        round += 1
                    }
                }
                defer { sa.close() }

                // Watch the lease through node 2 (real cluster) or node 1 (test server) until A is caught inside.
                let watcher = try SheepClient(endpoint: .tcp(host: "127.0.0.1", port: UInt16(sheep.ports[sheep.ports.count - 1])))
                let companionVID = try watcher.findVDI(name: "vol" + CompareSectionLimits.companionSuffix)
                let leaseOID = SheepOID.data(vid: companionVID, index: 0)
                func lease() throws -> CompareLeaseState? {
                    CompareLeaseState(decoding: try watcher.readObject(leaseOID, offset: 0, length: UInt32(CompareLeaseState.encodedBytes)).data)
                }
                let pid = a.daemon.process.pid
                var caught: CompareLeaseState? = nil
                try waitUntil("gateway A to be frozen inside the COMPARE AND WRITE section") {
                    guard let seen = try lease(), seen.kind == .held, loop.snapshot().rounds > 0 else { return false }
                    Glibc.kill(pid, SIGSTOP)
                    if let again = try lease(), again == seen {
                        // A's own state, not B's first one: B has been idle since the loop started.
                        caught = again
                        return true
                    }
                    Glibc.kill(pid, SIGCONT)
                    return false
                }
                try a.kill()
                loopDone.wait()
                let (acked, unanswered, aRounds) = loop.snapshot()

                // The block: A's last acknowledged value, or the value of the command A died in.
                let found = try M.read(sb, lba, M.blockBytes)
                #expect(found == acked || found == unanswered, "the block after A died holds neither A's last acknowledged value nor its unanswered one")
                let started = monotonicSeconds()
                let itt = try sb.sendCommand(caw, writeData: found + Self.value(1, 1))
                let r = try sb.collect([itt], timeoutSeconds: Double(CompareSectionLimits.waitSecondsMax + 10))[itt]!
                let waited = monotonicSeconds() - started
                #expect(r.status == RawCodes.good, "\(r)")
                #expect(waited < Double(CompareSectionLimits.waitSecondsMax), "waited \(waited) s")
                // The break was claimed for A's state: the one the test caught it in, or the `freed` that A had
                // already sent when SIGSTOP took it (same writer, next stamp), which lands after the test's second
                // read; B then waits out the longer bound for a `freed` state (18 s), and no RELEASE_VDI follows.
                if let caught {
                    func claimed(_ id: CompareLeaseID) throws -> Bool {
                        let claim = SheepVDIAttr.encode(name: "vol" + CompareSectionLimits.companionSuffix, key: id.breakKey + ".1")
                        return try watcher.call(.getVDIAttr(id: 0, flags: []), payload: claim).result == .success
                    }
                    let freedAfter = CompareLeaseID(writer: caught.writer, stamp: caught.stamp + 1)
                    #expect(try claimed(caught.id) || claimed(freedAfter), "no break claimed for A's state \(caught)")
                }

                try a.restart()
                let sa2 = try session(a, "a2")
                defer { sa2.close() }
                _ = try sa2.run(RawCDB.testUnitReady)
                let again = monotonicSeconds()
                #expect(try sa2.run(caw, writeData: Self.value(1, 1) + Self.value(0, 0)).status == RawCodes.good)
                #expect(monotonicSeconds() - again < Double(ClusterStateLimits.leaseSeconds))
                #expect(try M.read(sb, lba, M.blockBytes) == Self.value(0, 0))
                #expect(try M.read(sa2, lba, M.blockBytes) == Self.value(0, 0))
                print("COMPARE AND WRITE, gateway killed inside the section (\(kind)): A did \(aRounds) rounds, " +
                      "B went through \(String(format: "%.1f", waited)) s after A died")
            }
        }
    }
}

/// Gateway A's COMPARE AND WRITE loop, as the test thread sees it: the last acknowledged value, the value of
/// the command in flight, and the rounds done.
private final class CompareLoop: @unchecked Sendable {
    private let lock = NSLock()
    // Guarded by `lock`.
    private var acknowledged: [UInt8]
    private var pending: [UInt8]? = nil
    private var rounds = 0

    init(acknowledged: [UInt8]) { self.acknowledged = acknowledged }

    /// A command writing `next` goes out; returns the value it expects.
    func begin(_ next: [UInt8]) -> [UInt8] { lock.withLock { pending = next; return acknowledged } }
    func acknowledge() { lock.withLock { if let p = pending { acknowledged = p }; pending = nil; rounds += 1 } }
    func snapshot() -> (acknowledged: [UInt8], pending: [UInt8]?, rounds: Int) { lock.withLock { (acknowledged, pending, rounds) } }
}
