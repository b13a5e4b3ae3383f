// APTPL and gateway liveness across gateways (issue 14; docs/CLUSTER-STATE.md, "APTPL" and "Liveness and power
// loss"; docs/ALUA.md, "A dead gateway's groups"): gateway A (node 0; group 1, port 1) and gateway B (node 1;
// group 2, port 2) serve one VDI. Registrations made with APTPL=1 outlive both gateways; with APTPL=0 the first
// gateway back, finding no live peer, powers the LU on and they are gone, while a gateway that joins a live one
// keeps them. A killed gateway's group is reported unavailable through the other within the liveness bound, and
// is back when it returns. Against the test server and, when `sheep` is on PATH, real sheep.

import Foundation
import SheepProtocol
import Testing
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor

extension EndToEnd {
    @Suite("Sheepdog APTPL and gateway liveness")
    struct SheepAPTPL {
        typealias MP = SheepMultipath
        typealias ALUA = EndToEnd.ALUA

        /// How long after a gateway dies the other reports its group unavailable: the slot's bound plus a beat of
        /// each side (GatewayLivenessLimits: deadAfterSeconds + 2 × (beatIntervalSeconds + a 1 s loop tick)).
        static let deadReportedWithinSeconds = 10.0 + 2 * (2.0 + 1.0)
        /// What polling adds to that measurement (waitUntil's backoff).
        static let pollSlackSeconds = 2.0

        static func gateways(_ sheep: MultipathSheep) throws -> (FailoverGateway, FailoverGateway) {
            let a = try FailoverGateway("gatewayA", backingStore: sheep.backingStore(node: 0, "vol"), params: MP.lunParams,
                                        targetKeys: [("alua_group", "1"), ("relative_target_port_id", "1")])
            do {
                let b = try FailoverGateway("gatewayB", backingStore: sheep.backingStore(node: 1, "vol"), params: MP.lunParams,
                                            targetKeys: [("alua_group", "2"), ("relative_target_port_id", "2")])
                return (a, b)
            } catch {
                a.stop()
                throw error
            }
        }

        static func session(_ g: FailoverGateway, _ name: String) throws -> RawSession {
            var options = RawLoginOptions(initiatorName: "iqn.2026-01.e2e:\(name)", isid: 1)
            options.clearUnitAttentionLUNs = []
            return try RawSession(g.endpoint, target: FailoverGateway.iqn, options: options)
        }

        /// PERSISTENT RESERVE OUT with the basic parameter list and its APTPL bit, after any unit attention (a
        /// version loaded meanwhile may bring ASYMMETRIC ACCESS STATE CHANGED; the command did not run then).
        static func prOut(_ s: RawSession, _ action: UInt8, type: UInt8 = 0, key: UInt64, sark: UInt64 = 0,
                          aptpl: Bool = false) throws -> CommandResult {
            let cdb: [UInt8] = [0x5F, action, type & 0x0F, 0, 0, 0, 0, 0, 24, 0]
            func be64(_ v: UInt64) -> [UInt8] { (0 ..< 8).map { UInt8(truncatingIfNeeded: v >> (56 - 8 * $0)) } }
            return try settled(s, cdb, writeData: be64(key) + be64(sark) + [0, 0, 0, 0, aptpl ? 1 : 0, 0, 0, 0])
        }

        /// A command answered something other than a unit attention (at most a few of those come first).
        static func settled(_ s: RawSession, _ cdb: [UInt8], read: Bool = false, edtl: Int = 0,
                            writeData: [UInt8]? = nil) throws -> CommandResult {
            var last: CommandResult? = nil
            for _ in 0 ..< 8 {
                let r: CommandResult
                if let writeData { r = try s.run(cdb, writeData: writeData) } else { r = try s.run(cdb, read: read, edtl: edtl) }
                if !(r.status == RawCodes.checkCondition && r.sense?.key == 0x06) { return r }
                last = r
            }
            throw E2EError("unit attentions do not end: \(String(describing: last))")
        }

        /// READ KEYS, or nil while the gateway does not answer GOOD (it may be deciding the LU's power-on).
        static func keys(_ s: RawSession) throws -> [UInt64]? {
            let r = try settled(s, [0x5E, 0x00, 0, 0, 0, 0, 0, 1, 0, 0], read: true, edtl: 256)
            guard r.status == RawCodes.good, r.data.count >= 8 else { return nil }
            var out: [UInt64] = []
            var p = 8
            while p + 8 <= r.data.count { out.append(r.data[p ..< p + 8].reduce(0) { $0 << 8 | UInt64($1) }); p += 8 }
            return out
        }

        /// READ RESERVATION: (key, type), or nil for none.
        static func reservation(_ s: RawSession) throws -> (key: UInt64, type: UInt8)? {
            let r = try settled(s, [0x5E, 0x01, 0, 0, 0, 0, 0, 0, 24, 0], read: true, edtl: 24)
            guard r.status == RawCodes.good else { throw E2EError("READ RESERVATION: \(r)") }
            guard r.data.count >= 24 else { return nil }
            return (r.data[8 ..< 16].reduce(0) { $0 << 8 | UInt64($1) }, r.data[21] & 0x0F)
        }

        /// REPORT CAPABILITIES: PTPL_C and PTPL_A.
        static func ptpl(_ s: RawSession) throws -> [Bool] {
            let r = try settled(s, [0x5E, 0x02, 0, 0, 0, 0, 0, 0, 8, 0], read: true, edtl: 8)
            guard r.status == RawCodes.good, r.data.count == 8 else { throw E2EError("REPORT CAPABILITIES: \(r)") }
            return [r.data[2] & 1 != 0, r.data[3] & 1 != 0]
        }

        static let writeExclusive: UInt8 = 0x01
        static let reservationConflict: UInt8 = 0x18

        /// Issue 14: REGISTER (with APTPL as given) and RESERVE through A, then both gateways stop and B starts
        /// again alone. With APTPL=1 the registration and the reservation are still there through B, and a write
        /// from another initiator through B is refused with RESERVATION CONFLICT. With APTPL=0, B, finding no live
        /// gateway, powers the LU on: they are gone; an initiator registers through B, and A, starting while B
        /// serves, joins it and keeps that registration.
        @Test(arguments: SheepKind.allCases, [true, false])
        func registrationsOutliveEveryGatewayOnlyWithAPTPL(kind: SheepKind, aptpl: Bool) throws {
            try withMultipathSheep(kind) { sheep in
                try sheep.dog(["vdi", "create", "vol", "\(MP.vdiBytes)"])
                let (a, b) = try Self.gateways(sheep)
                defer { a.stop(); b.stop() }
                do {
                    let sa = try Self.session(a, "a"), sb = try Self.session(b, "b")
                    defer { sa.close(); sb.close() }
                    for s in [sa, sb] { _ = try Self.settled(s, RawCDB.testUnitReady) }   // the power-on unit attention
                    #expect(try Self.ptpl(sb) == [true, false], "PTPL_C on a multipath sheep LU")
                    let reg = try Self.prOut(sa, 0x00, key: 0, sark: 0xA, aptpl: aptpl)
                    #expect(reg.status == RawCodes.good, "REGISTER with APTPL=\(aptpl) through A: \(reg)")
                    let reserve = try Self.prOut(sa, 0x01, type: Self.writeExclusive, key: 0xA)
                    #expect(reserve.status == RawCodes.good, "RESERVE through A: \(reserve)")
                    #expect(try Self.keys(sb) == [0xA])
                    #expect(try Self.ptpl(sb) == [true, aptpl], "PTPL_A through B follows the record")
                }
                // Both heartbeats are in sheep before the gateways stop: B, starting alone, must find A's slot
                // unchanged for the bound, not merely absent.
                try Self.waitForBeats(sheep)
                a.halt()
                b.halt()
                try b.restart()
                let sb = try Self.session(b, "b")
                defer { sb.close() }
                if aptpl {
                    var keys: [UInt64]? = nil
                    try waitUntil("READ KEYS through the restarted B") { keys = try Self.keys(sb); return keys != nil }
                    #expect(keys == [0xA], "the registration persisted through both gateways' stop")
                    let held = try Self.reservation(sb)
                    #expect(held?.key == 0xA && held?.type == Self.writeExclusive, "the reservation too: \(String(describing: held))")
                    #expect(try Self.ptpl(sb) == [true, true])
                    let w = try Self.settled(sb, RawCDB.write10(lba: MP.lba(object: 1), blocks: 1),
                                             writeData: [UInt8](repeating: 0x33, count: MP.blockBytes))
                    #expect(w.status == Self.reservationConflict, "a write from a non-holder through B: \(w)")
                } else {
                    let started = monotonicSeconds()
                    try waitUntil("B to power the LU on and forget the registration", timeoutSeconds: 40) {
                        try Self.keys(sb) == []
                    }
                    print("aptpl (\(sheep.kind)): B powered the LU on \(String(format: "%.1f", monotonicSeconds() - started)) s after it started alone")
                    #expect(try Self.reservation(sb) == nil)
                    #expect(try Self.ptpl(sb) == [true, false])
                    try MP.write(sb, MP.lba(object: 1), [UInt8](repeating: 0x44, count: MP.blockBytes), "B after the power-on")
                    // An initiator registers through B (APTPL=0); A starts while B serves and joins it, keeping it.
                    let register = try Self.prOut(sb, 0x00, key: 0, sark: 0xB)
                    #expect(register.status == RawCodes.good, "REGISTER through B: \(register)")
                    let reserve = try Self.prOut(sb, 0x01, type: Self.writeExclusive, key: 0xB)
                    #expect(reserve.status == RawCodes.good, "RESERVE through B: \(reserve)")
                    try a.restart()
                    let sa = try Self.session(a, "a")
                    defer { sa.close() }
                    var keys: [UInt64]? = nil
                    try waitUntil("READ KEYS through the restarted A") { keys = try Self.keys(sa); return keys != nil }
                    #expect(keys == [0xB], "A joined a live B: nothing cleared")
                    #expect(try Self.keys(sb) == [0xB])
                    #expect(try Self.reservation(sa)?.key == 0xB)
                    #expect(!a.daemon.log.contains("it powers on"), "A did not power the LU on")
                }
                #expect(b.daemon.isAlive)
            }
        }

        /// The heartbeat slots of the LU's gateways, by relative target port, as sheep has them now (none before
        /// the companion and its object exist).
        static func slots(_ c: SheepClient) throws -> [UInt16: HeartbeatSlot] {
            guard let vid = try? c.findVDI(name: "vol" + GatewayLivenessLimits.companionSuffix),
                  let r = try? c.readObject(SheepOID.data(vid: vid, index: 0), offset: 0,
                                            length: UInt32(GatewayLivenessLimits.regionBytes)),
                  r.data.count == GatewayLivenessLimits.regionBytes else { return [:] }
            var out: [UInt16: HeartbeatSlot] = [:]
            for i in 0 ..< GatewayLivenessLimits.slotsMax {
                let at = i * GatewayLivenessLimits.slotBytes
                if let slot = HeartbeatSlot(decoding: r.data[at ..< at + GatewayLivenessLimits.slotBytes]) {
                    out[UInt16(i + 1)] = slot
                }
            }
            return out
        }

        /// Until the slots of ports 1 (A) and 2 (B), read through node 1, have each changed while serving.
        static func waitForBeats(_ sheep: MultipathSheep) throws {
            let watcher = try SheepClient(endpoint: .tcp(host: "127.0.0.1", port: UInt16(sheep.ports[1])))
            var first: [UInt16: HeartbeatSlot] = [:]
            try waitUntil("both gateways to beat twice in sheep") {
                let now = try Self.slots(watcher)
                for (port, slot) in now where first[port] == nil { first[port] = slot }
                return [1, 2].allSatisfy { p in now[p].map { $0.serving && $0 != first[p] } ?? false }
            }
        }

        /// RTPG's groups through `s` (state per group id); nil while it answers something else. `sawChange` is
        /// set when that was ASYMMETRIC ACCESS STATE CHANGED.
        static func groupStates(_ s: RawSession, sawChange: inout Bool) throws -> [UInt16: UInt8]? {
            let r = try s.run(ALUA.rtpg, read: true, edtl: 1024)
            if ALUA.sense(r, 0x06, 0x2A, 0x06) { sawChange = true }
            guard r.status == RawCodes.good else { return nil }
            var out: [UInt16: UInt8] = [:]
            for g in ALUA.groups(r.data) { out[g.id] = g.state }
            return out
        }

        /// Issue 14: with A and B up, A is killed (SIGKILL). Within the liveness bound, RTPG through B reports A's
        /// group unavailable (and B's sessions hear ASYMMETRIC ACCESS STATE CHANGED); A restarts and its group is
        /// back in the state the record keeps.
        @Test(arguments: SheepKind.allCases)
        func aKilledGatewaysGroupIsUnavailableUntilItReturns(kind: SheepKind) throws {
            try withMultipathSheep(kind) { sheep in
                try sheep.dog(["vdi", "create", "vol", "\(MP.vdiBytes)"])
                let (a, b) = try Self.gateways(sheep)
                defer { a.stop(); b.stop() }
                let sb = try Self.session(b, "b")
                defer { sb.close() }
                var sawChange = false
                try waitUntil("RTPG through B to list both groups active/optimized") {
                    try Self.groupStates(sb, sawChange: &sawChange) == [1: 0x0, 2: 0x0]
                }
                // A gateway that never beat leaves no slot, and an empty slot is no gateway: kill A once its
                // heartbeat is in sheep, as B's is.
                try Self.waitForBeats(sheep)
                try a.kill()
                let killed = monotonicSeconds()
                sawChange = false
                try waitUntil("B to report A's group unavailable",
                              timeoutSeconds: Self.deadReportedWithinSeconds + Self.pollSlackSeconds + 5) {
                    try Self.groupStates(sb, sawChange: &sawChange) == [1: 0x3, 2: 0x0]
                }
                let after = monotonicSeconds() - killed
                print("liveness (\(sheep.kind)): B reported A's group unavailable \(String(format: "%.1f", after)) s after A was killed")
                // B times A's last beat from its own first read of it, up to a beat and a tick before the kill.
                #expect(after >= 10.0 - (2.0 + 1.0), "not before the slot was unchanged for the bound")
                #expect(after <= Self.deadReportedWithinSeconds + Self.pollSlackSeconds)
                #expect(sawChange, "B's session heard ASYMMETRIC ACCESS STATE CHANGED")
                #expect(try sb.run(RawCDB.testUnitReady).status == RawCodes.good, "B's own port stays active")
                try a.restart()
                sawChange = false
                try waitUntil("B to report A's group back") {
                    try Self.groupStates(sb, sawChange: &sawChange) == [1: 0x0, 2: 0x0]
                }
                #expect(sawChange, "and the change back is heard too")
                #expect(b.daemon.isAlive && a.daemon.isAlive)
            }
        }
    }
}
