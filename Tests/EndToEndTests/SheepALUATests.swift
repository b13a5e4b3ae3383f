// ALUA across gateways (issue 14, docs/ALUA.md): two ringtgtd serve one sheepdog VDI as one LU, gateway A in
// target port group 1 with relative target port 1, gateway B in group 2 with port 2. Who is optimized is the
// shared record's ALUA section; each gateway reports every group of the LU and tells its own sessions of a
// change made through the other. Against the test server and, when `sheep` is on PATH, real sheep.

import Foundation
import Testing

extension EndToEnd {
    @Suite("Sheepdog ALUA across gateways")
    struct SheepALUA {
        typealias M = EndToEnd.SheepMultipath
        typealias A = EndToEnd.ALUA

        /// Gateway A (node 0; group 1, port 1) and gateway B (node 1; group 2, port 2), each with the VDI as LUN 1
        /// of target 1; the groups are set before the LUN exists, so each gateway publishes its own at once.
        static func withGateways<R>(_ sheep: MultipathSheep, vdi: String,
                                    _ body: (RunningTarget, RunningTarget) throws -> R) throws -> R {
            try withTarget(cores: 2, luns: []) { a in
                try withTarget(cores: 2, luns: []) { b in
                    for (t, node) in [(a, 0), (b, 1)] {
                        try A.update(t, tid: 1, "alua_group", "\(node + 1)")
                        try A.update(t, tid: 1, "relative_target_port_id", "\(node + 1)")
                        try t.admin.must(["--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1",
                                          "--bstype", "sheepdog", "--backing-store", sheep.backingStore(node: node, vdi),
                                          "--params", M.lunParams])
                    }
                    return try body(a, b)
                }
            }
        }

        /// A session that takes its unit attentions itself (`settle`): a version loaded while it logs in may
        /// bring ASYMMETRIC ACCESS STATE CHANGED after the power-on one.
        static func session(_ t: RunningTarget, _ name: String) throws -> RawSession {
            var options = RawLoginOptions(initiatorName: "iqn.2026-01.e2e:\(name)", isid: 1)
            options.clearUnitAttentionLUNs = []
            return try RawSession(t.endpoint, target: t.iqn, options: options)
        }

        /// RTPG's groups through `s`, or [] while it answers something else (a unit attention first).
        static func groups(_ s: RawSession) throws -> [(id: UInt16, state: UInt8, ports: [UInt16])] {
            let r = try s.run(A.rtpg, read: true, edtl: 1024)
            return r.status == RawCodes.good ? A.groups(r.data) : []
        }

        static func states(_ s: RawSession) throws -> [UInt8] { try groups(s).map(\.state) }

        /// TEST UNIT READY until it answers something other than a unit attention (each gateway reads the record
        /// before it answers TEST UNIT READY on a shared LU); what it answered then.
        static func settle(_ s: RawSession) throws -> CommandResult {
            for _ in 0 ..< 8 {
                let r = try s.run(RawCDB.testUnitReady)
                if !(r.status == RawCodes.checkCondition && r.sense?.key == 0x06) { return r }
            }
            throw E2EError("unit attentions do not end")
        }

        /// RTPG through A and through B lists both groups with their states; ringtgtadm on A makes A's group
        /// standby: a session through B hears ASYMMETRIC ACCESS STATE CHANGED and B reports group 1 standby,
        /// and reads through A are refused with TARGET PORT IN STANDBY STATE; SET TARGET PORT GROUPS through B
        /// makes group 1 active/optimized again, which reaches A (its session hears of it and reads again).
        @Test(arguments: SheepKind.allCases)
        func oneDecisionEveryGatewayReports(kind: SheepKind) throws {
            try withMultipathSheep(kind) { sheep in
                try sheep.dog(["vdi", "create", "vol", "\(M.vdiBytes)"])
                try Self.withGateways(sheep, vdi: "vol") { a, b in
                    let sa = try Self.session(a, "a"), sb = try Self.session(b, "b"), sb2 = try Self.session(b, "b2")
                    let expected: [UInt16] = [1, 2]
                    // Each gateway learns the other's group from the record (its refresh, or TEST UNIT READY).
                    for (name, s) in [("A", sa), ("B", sb)] {
                        try waitUntil("RTPG through \(name) to list both groups") {
                            _ = try Self.settle(s)
                            let g = try Self.groups(s)
                            return g.map(\.id) == expected && g.map(\.ports) == [[1], [2]]
                        }
                        #expect(try Self.states(s) == [0x0, 0x0], "both active/optimized through \(name)")
                    }
                    for s in [sa, sb, sb2] { #expect(try Self.settle(s).status == RawCodes.good) }

                    // ringtgtadm on A: group 1 standby.
                    try A.update(a, tid: 1, "alua_state", "standby")
                    #expect(A.sense(try sa.run(RawCDB.testUnitReady), 0x06, 0x2A, 0x06), "A's own session first")
                    #expect(A.sense(try sa.run(RawCDB.read10(lba: 0, blocks: 1), read: true, edtl: M.blockBytes), 0x02, 0x04, 0x0B))
                    var seen: CommandResult? = nil
                    try waitUntil("B's session to hear of A's change") {
                        let r = try sb.run(RawCDB.testUnitReady)
                        if r.status == RawCodes.good { return false }
                        seen = r
                        return true
                    }
                    let ua = try #require(seen)
                    #expect(A.sense(ua, 0x06, 0x2A, 0x06), "ASYMMETRIC ACCESS STATE CHANGED through B: \(ua)")
                    #expect(try sb.run(RawCDB.testUnitReady).status == RawCodes.good, "reported once; B's port is active")
                    #expect(try Self.states(sb) == [0x2, 0x0], "B reports group 1 standby")
                    #expect(try Self.states(sa) == [0x2, 0x0])
                    try M.write(sb, M.lba(object: 1), [UInt8](repeating: 0x5A, count: M.blockBytes), "B stays optimized")

                    // SET TARGET PORT GROUPS through B: group 1 active/optimized again, in the record before GOOD.
                    let stpg: [UInt8] = [0xA4, 0x0A, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0]
                    let r = try sb.run(stpg, writeData: [0, 0, 0, 0, ALUAStateCode.activeOptimized, 0, 0, 1])
                    #expect(r.status == RawCodes.good, "STPG naming A's group through B: \(r)")
                    #expect(A.sense(try sb2.run(RawCDB.testUnitReady), 0x06, 0x2A, 0x06), "B's other session")
                    #expect(try sb.run(RawCDB.testUnitReady).status == RawCodes.good, "not the session that asked")
                    // A's port answers NOT READY (standby) until A loads the version; then the unit attention.
                    var heard: CommandResult? = nil
                    try waitUntil("A to take the state STPG through B gave its group") {
                        let r = try sa.run(RawCDB.testUnitReady)
                        if A.sense(r, 0x02, 0x04, 0x0B) { return false }
                        heard = r
                        return true
                    }
                    let changed = try #require(heard)
                    #expect(A.sense(changed, 0x06, 0x2A, 0x06), "A's session hears of it: \(changed)")
                    #expect(try Self.states(sa) == [0x0, 0x0] && Self.states(sb) == [0x0, 0x0])
                    #expect(try M.read(sa, M.lba(object: 1), M.blockBytes) == [UInt8](repeating: 0x5A, count: M.blockBytes))
                    let show = try a.admin.must(["--lld", "iscsi", "--op", "show", "--mode", "target", "--tid", "1"])
                    #expect(!show.stdout.contains("alua_state=standby"), "ringtgtadm on A shows the record's state: \(show.stdout)")
                    for t in [a, b] { try t.requireAlive("after the ALUA test") }
                }
            }
        }
    }
}

/// SPC-4 table 307's codes the test sends.
enum ALUAStateCode {
    static let activeOptimized: UInt8 = 0x0
}
