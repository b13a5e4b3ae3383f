// The shared SCSI record (docs/CLUSTER-STATE.md) against a sheep cluster: two gateways' record machines, each
// talking to its own sheep node, append to one chain of VDI attributes. Exactly one wins each version, the
// loser learns the winner's record and appends after it, and a gateway that starts later finds the newest
// version from the head hint. Against the test server with two nodes, and against a real 3-node cluster
// formatted with -l when sheep is on PATH.

import ISCSIWire
import SheepProtocol
import Testing
import TestSupport
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor

/// Runs a record machine's steps over a plain blocking client until it is done.
private func drive(_ sync: inout SheepSCSIRecordSync, _ client: SheepClient, _ first: SheepSCSIRecordSync.Step) throws
    -> SheepSCSIRecordSync.Outcome {
    var step = first
    while true {
        switch step {
        case .done(let outcome): return outcome
        case .send(let h, let payload):
            let r = try client.call(h, payload: payload)
            step = sync.reply(r.result, vdiID: r.header.vdiID, attrID: r.header.attrID, data: r.data)
        }
    }
}

extension EndToEnd {
    @Suite("Sheepdog shared SCSI record")
    struct SheepClusterState {
        static let a = PortIdentity(initiatorName: "iqn.2026-01.e2e:a", isid: 1, relativeTargetPortID: 1)
        static let b = PortIdentity(initiatorName: "iqn.2026-01.e2e:b", isid: 1, relativeTargetPortID: 2)

        @Test(arguments: SheepKind.allCases)
        func gatewaysAppendToOneChainAndEachVersionHasOneWriter(kind: SheepKind) throws {
            try withMultipathSheep(kind) { sheep in
                try sheep.dog(["vdi", "create", "vol", "\(64 * mebibyte)"])
                let ca = try SheepClient(endpoint: .tcp(host: "127.0.0.1", port: UInt16(sheep.ports[0])))
                let cb = try SheepClient(endpoint: .tcp(host: "127.0.0.1", port: UInt16(sheep.ports[1])))
                var ga = SheepSCSIRecordSync(vdiName: "vol"), gb = SheepSCSIRecordSync(vdiName: "vol")
                #expect(try drive(&ga, ca, ga.refresh()) == .current)
                #expect(try drive(&gb, cb, gb.refresh()) == .current)
                #expect(ga.known.version == 0)

                // Gateway A registers and reserves (write exclusive) for its initiator.
                var v1 = ga.known.successor(writer: 0xA)
                v1.registrations = [PRRegistration(port: Self.a, key: 0xAAAA)]
                v1.reserved = true
                v1.prType = PRType.writeExclusive
                v1.prHolder = Self.a
                v1.prGeneration = 1
                #expect(try drive(&ga, ca, ga.publish(v1)) == .published)

                // B, which still knows version 0, tries to write version 1 too: sheep's exclusive create refuses.
                var bv1 = gb.known.successor(writer: 0xB)
                bv1.registrations = [PRRegistration(port: Self.b, key: 0xBBBB)]
                #expect(try drive(&gb, cb, gb.publish(bv1)) == .lostRace)
                #expect(try drive(&gb, cb, gb.refresh()) == .current)
                #expect(gb.known == v1, "B sees A's reservation")
                #expect(gb.known.persistentReservation.isHolder(Self.a))

                // B registers its own initiator after A's record.
                var v2 = gb.known.successor(writer: 0xB)
                v2.registrations.append(PRRegistration(port: Self.b, key: 0xBBBB))
                v2.prGeneration += 1
                #expect(try drive(&gb, cb, gb.publish(v2)) == .published)
                #expect(try drive(&ga, ca, ga.refresh()) == .current)
                #expect(ga.known == v2)

                // The announce the home core sends after a publish: 0 into the last index slot through A's node
                // makes B's node INVALIDATED, so B's next flagged I/O meets INODE_INVALIDATED and reloads.
                let vid = try ca.findVDI(name: "vol")
                for c in [ca, cb] { #expect(try c.lookup(.lockVDI, name: "vol", lockType: .shared).result == .success) }
                let refresh = SheepRequestHeader.readObject(id: 0, oid: SheepOID.inode(vid: vid), offset: 0,
                                                            length: UInt32(SheepInodeLayout.clientInodeSizeBytes), flags: .tgt)
                #expect(try cb.call(refresh).result == .success)   // B starts valid
                let slot = SheepInodeLayout.slotOffset(UInt32(SheepInodeLayout.dataIndexSlots - 1))
                #expect(try ca.call(.writeObject(id: 0, oid: SheepOID.inode(vid: vid), offset: slot, length: 4),
                                    payload: [0, 0, 0, 0]).result == .success)
                let probe = SheepRequestHeader.readObject(id: 0, oid: SheepOID.inode(vid: vid), offset: 0, length: 1, flags: .tgt)
                #expect(try cb.call(probe).result == .inodeInvalidated)
                #expect(try cb.call(refresh).result == .success)
                #expect(try cb.call(probe).result == .success)
                for c in [ca, cb] { _ = try c.release(vid: vid, lockType: .shared) }

                // A gateway that starts now finds version 2 through the head hint.
                var gc = SheepSCSIRecordSync(vdiName: "vol")
                #expect(try drive(&gc, ca, gc.refresh()) == .current)
                #expect(gc.known == v2)
                // The record survives a snapshot of the VDI: it is keyed by the name, not the VID.
                try sheep.dog(["vdi", "snapshot", "-s", "snap1", "vol"])
                var gd = SheepSCSIRecordSync(vdiName: "vol")
                #expect(try drive(&gd, cb, gd.refresh()) == .current)
                #expect(gd.known == v2)
            }
        }
    }
}

extension EndToEnd.SheepClusterState {
    static let reservationConflict: UInt8 = 0x18

    /// PERSISTENT RESERVE OUT with the basic 24-byte parameter list.
    static func prOut(_ s: RawSession, _ action: UInt8, type: UInt8 = 0, key: UInt64, sark: UInt64 = 0) throws -> CommandResult {
        let cdb: [UInt8] = [0x5F, action, type & 0x0F, 0, 0, 0, 0, 0, 24, 0]
        func be64(_ v: UInt64) -> [UInt8] { (0 ..< 8).map { UInt8(truncatingIfNeeded: v >> (56 - 8 * $0)) } }
        let list = be64(key) + be64(sark) + [UInt8](repeating: 0, count: 8)
        return try s.run(cdb, writeData: list)
    }

    /// Issue 14: a write exclusive reservation taken through gateway A refuses a write through gateway B from
    /// another initiator, reads through B still work, and once A releases it B's write goes through; an
    /// exclusive access one refuses B's reads as well. B learns of
    /// each change only through sheep: A's announce makes B's next write meet INODE_INVALIDATED (the reservation),
    /// and B reads the record before it answers RESERVATION CONFLICT (the release).
    @Test(arguments: SheepKind.allCases)
    func reservationThroughAIsEnforcedOnB(kind: SheepKind) throws {
        typealias M = EndToEnd.SheepMultipath
        try withMultipathSheep(kind) { sheep in
            try sheep.dog(["vdi", "create", "vol", "\(M.vdiBytes)"])
            try M.withGateways(sheep, vdi: "vol") { a, b in
                let sa = try M.session(a, "a"), sb = try M.session(b, "b")
                for s in [sa, sb] { _ = try s.run(RawCDB.testUnitReady) }   // takes the power-on unit attention
                let lba = M.lba(object: 1)
                let old = [UInt8](repeating: 0x11, count: M.blockBytes), new = [UInt8](repeating: 0x22, count: M.blockBytes)
                try M.write(sb, lba, old, "B before any reservation")   // allocated: B's next write goes to sheep flagged

                let reg = try Self.prOut(sa, 0x00, key: 0, sark: 0xA)
                #expect(reg.status == RawCodes.good, "\(reg)")   // REGISTER
                // B reports A's registration: PERSISTENT RESERVE IN reads the record first.
                let keys = try sb.run([0x5E, 0x00, 0, 0, 0, 0, 0, 0, 64, 0], read: true, edtl: 64)
                #expect(keys.status == RawCodes.good && keys.data.count == 16 && keys.data[15] == 0xA, "\(keys) \(keys.data)")
                #expect(try Self.prOut(sa, 0x01, type: PRType.writeExclusive, key: 0xA).status == RawCodes.good)  // RESERVE
                let denied = try sb.run(RawCDB.write10(lba: lba, blocks: 1), writeData: new)
                #expect(denied.status == Self.reservationConflict, "\(denied)")
                #expect(try M.read(sb, lba, M.blockBytes) == old, "the refused write changed nothing; reads are allowed")
                // The holder's own writes go on.
                try M.write(sa, lba + 1, new, "A holds the reservation")

                #expect(try Self.prOut(sa, 0x02, type: PRType.writeExclusive, key: 0xA).status == RawCodes.good)  // RELEASE
                try M.write(sb, lba, new, "B after A released")
                #expect(try M.read(sa, lba, M.blockBytes) == new)

                // Exclusive access: B's reads are refused too, then allowed once A releases.
                #expect(try Self.prOut(sa, 0x01, type: PRType.exclusiveAccess, key: 0xA).status == RawCodes.good)
                let unread = try sb.run(RawCDB.read10(lba: lba, blocks: 1), read: true, edtl: M.blockBytes)
                #expect(unread.status == Self.reservationConflict, "\(unread)")
                #expect(try Self.prOut(sa, 0x02, type: PRType.exclusiveAccess, key: 0xA).status == RawCodes.good)
                #expect(try M.read(sb, lba, M.blockBytes) == new)
                for t in [a, b] { try t.requireAlive("after the reservation test") }
            }
        }
    }

    /// iscsi-test-cu's report, once the run is known to have ended by itself with counts that agree.
    static func finishedReport(_ r: ToolResult) throws -> CUnitReport {
        try #require(!r.timedOut && !r.killedBySignal, "\(r)")
        let report = try CUnitReport(r.stdout)
        if let problem = report.consistencyProblem() { throw E2EError("\(problem)\n\(tail(r.stdout))") }
        return report
    }

    /// Issue 14: changes made outside a command reach the other gateway before the initiator hears of them.
    /// An SPC-2 reservation through A ends with A's session: the Logout Response comes once the release is in
    /// the record, so B grants a RESERVE at once. A LOGICAL UNIT RESET through A: the TMF Response comes once the
    /// reset is counted in the record, so B's next TEST UNIT READY reports BUS DEVICE RESET FUNCTION OCCURRED,
    /// and the reservation B held is gone.
    @Test(arguments: SheepKind.allCases)
    func spc2ReleaseAndLUResetOutsideACommandReachB(kind: SheepKind) throws {
        typealias M = EndToEnd.SheepMultipath
        let reserve6: [UInt8] = [0x16, 0, 0, 0, 0, 0], release6: [UInt8] = [0x17, 0, 0, 0, 0, 0]
        func isUA(_ r: CommandResult, _ asc: UInt8, _ ascq: UInt8) -> Bool {
            r.status == RawCodes.checkCondition && r.sense?.key == 0x06 && r.sense?.asc == asc && r.sense?.ascq == ascq
        }
        try withMultipathSheep(kind) { sheep in
            try sheep.dog(["vdi", "create", "vol", "\(M.vdiBytes)"])
            try M.withGateways(sheep, vdi: "vol") { a, b in
                let sa = try M.session(a, "a"), sa2 = try M.session(a, "a2"), sb = try M.session(b, "b")
                for s in [sa, sa2, sb] { _ = try s.run(RawCDB.testUnitReady) }   // takes the power-on unit attention
                #expect(try sa.run(reserve6).status == RawCodes.good)
                #expect(try sb.run(reserve6).status == Self.reservationConflict, "A's reservation keeps B out")

                let itt = try sa.sendLogout(reason: 0)
                let answer = try sa.expectPDU("the Logout Response")
                #expect(answer.opcode == ISCSIOpcode.logoutResponse && answer.itt == itt && answer.byte2 == 0, "\(answer)")
                let after = try sb.run(reserve6)
                #expect(after.status == RawCodes.good, "B's RESERVE right after A's logout: \(after)")

                // B holds it now; a LOGICAL UNIT RESET through A (A's other session) ends it, and B hears of the reset.
                #expect(try sa2.run(reserve6).status == Self.reservationConflict, "B's reservation keeps A out")
                let tmf = try sa2.sendTMF(function: TMFunction.logicalUnitReset)
                #expect(try EndToEnd.RobustTaskManagement.tmfResponse(sa2, tmf, "LOGICAL UNIT RESET") == TMResponse.functionComplete)
                let ua = try sb.run(RawCDB.testUnitReady)
                #expect(isUA(ua, 0x29, 0x03), "BUS DEVICE RESET FUNCTION OCCURRED through B: \(ua)")
                #expect(try sb.run(RawCDB.testUnitReady).status == RawCodes.good, "reported once")
                #expect(isUA(try sa2.run(RawCDB.testUnitReady), 0x29, 0x03), "and through A")
                #expect(try sa2.run(reserve6).status == RawCodes.good, "the reset ended B's reservation")
                #expect(try sa2.run(release6).status == RawCodes.good)
                for t in [a, b] { try t.requireAlive("after the logout and reset test") }
            }
        }
    }

    /// `iscsi-test-cu -d -t ALL URL_A URL_B` with URL_A on gateway A (node 0) and URL_B on gateway B (node 1),
    /// one VDI: the MultipathIO, reservation and COMPARE AND WRITE tests then cross gateways. Gateway B's port
    /// is relative target port 2, so that the two paths are two I_T nexuses of one LU. Every test passes or
    /// skips, against the test server and against real sheep.
    @Test(arguments: SheepKind.allCases)
    func iscsiTestCuAllAcrossTwoGateways(kind: SheepKind) throws {
        try withMultipathSheep(kind) { sheep in
            try sheep.dog(["vdi", "create", "conformance", "\(gibibyte)"])
            try EndToEnd.SheepMultipath.withGateways(sheep, vdi: "conformance") { a, b in
                try b.admin.must(["--lld", "iscsi", "--op", "update", "--mode", "target", "--tid", "1",
                                  "--name", "relative_target_port_id", "--value", "2"])
                let r = try a.tool("iscsi-test-cu", ["-d", "-t", "ALL", a.url(lun: 1), b.url(lun: 1)],
                                   timeoutSeconds: EndToEnd.Conformance.timeoutSeconds)
                for t in [a, b] { try t.requireAlive("while iscsi-test-cu ran") }
                let report = try Self.finishedReport(r)
                try report.writeResults(name: kind == .testServer ? "sheepdog-two-gateways" : "sheepdog-two-gateways-real",
                                        peer: "ringtgt",
                                        command: "iscsi-test-cu -d -t ALL URL_A URL_B (two gateways, one VDI, \(kind))",
                                        seconds: r.seconds, log: r.stdout + r.stderr, extra: [:])
                let failed = report.failed.map(\.name)
                #expect(failed.isEmpty, "\(failed.count) failed: \(failed) (log: \(Paths.resultsDir.path))")
            }
        }
    }
}
