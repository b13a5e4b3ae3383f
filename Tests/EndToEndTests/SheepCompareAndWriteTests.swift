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
    }
}
