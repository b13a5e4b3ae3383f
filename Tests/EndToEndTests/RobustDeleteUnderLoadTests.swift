// Deleting LUNs and targets under load (issue "The engine, part 1"): sessions on two cores keep 128 writes of
// 4 KiB to 1 MiB in flight, with two EXTENDED COPYs and a COMPARE AND WRITE among them, while the admin deletes
// the LUN and another target without --force (refused with tgt's words while commands are in flight) and then
// with it, and re-creates them, round after round. The LUN that is never deleted keeps serving and keeps
// exactly what was written to it; the daemon never crashes. `scripts/sanitize address` runs this on an ASan build with
// RINGTGT_E2E_DELETE_ROUNDS=100.

import Foundation
import Testing

extension EndToEnd {
    @Suite("Robust: delete under load")
    struct RobustDeleteUnderLoad {
        static let initiator = "\(RunningTarget.iqnPrefix):delete-under-load"
        static let lunBytes = Int64(64 * 1024 * 1024)
        /// Commands kept in flight on the victim LUN: the whole command window.
        static let queueDepth = 128
        static let writeSizes = [4096, 65536, 262_144, 1_048_576]
        /// One payload per size, made once: nothing reads the victims' data back, and making 40 MiB of pattern per
        /// burst in a debug build took longer than the rest of a round.
        static let burstPayloads = writeSizes.map { patternBytes($0, seed: UInt64($0)) }
        static let survivorBytes = 1024 * 1024

        /// Rounds of delete and re-create; RINGTGT_E2E_DELETE_ROUNDS raises it (100 for sanitizer runs).
        static var rounds: Int { Int(ProcessInfo.processInfo.environment["RINGTGT_E2E_DELETE_ROUNDS"] ?? "") ?? 3 }

        /// A burst of `queueDepth` writes over the victim LUN, sizes cycling through `writeSizes`, none of which can
        /// end before `collect` serves its R2Ts: all are in flight while the admin acts.
        static func writeBurst(_ s: RawSession, lun: UInt64) throws -> [UInt32] {
            var itts: [UInt32] = []
            var lba: UInt64 = 0
            // As many as the target's window lets in (128 on a session with nothing else outstanding).
            let window = Int(Int32(bitPattern: s.windowMaxCmdSN &- s.cmdSN)) + 1
            for i in 0..<min(queueDepth, window) {
                let data = burstPayloads[i % burstPayloads.count]
                let bytes = data.count
                itts.append(try s.sendCommand(RawCDB.write16(lba: lba, blocks: UInt32(bytes / RobustLifetime.blockBytes)),
                                              lun: lun, writeData: data))
                lba = (lba + UInt64(bytes / RobustLifetime.blockBytes)) % UInt64(lunBytes / 2 / Int64(RobustLifetime.blockBytes))
            }
            return itts
        }

        /// COMPARE AND WRITE of one block (compare with what the block holds, write `seed`'s pattern). All its data
        /// waits for an R2T, which only `collect` serves: the command holds the LUN's gate and stays in flight.
        static func compareAndWrite(_ s: RawSession, lun: UInt64, lba: UInt64, current: [UInt8], seed: UInt64) throws -> UInt32 {
            return try s.sendCommand(RawCDB.compareAndWrite(lba: lba, blocks: 1), lun: lun, writeData: current + patternBytes(RobustLifetime.blockBytes, seed: seed),
                                     immediateBytes: 0)
        }

        /// What the commands sent under the deletes answered, over all rounds.
        struct Tally {
            var good = 0, checkCondition = 0, cutOff = 0, refusals = 0
            var commands: Int { good + checkCondition + cutOff }
        }

        /// TEST UNIT READY until GOOD: each configuration change queues a unit attention (REPORTED LUNS DATA HAS
        /// CHANGED) that the session's next command on the LUN receives.
        static func ready(_ s: RawSession, lun: UInt64, _ what: String) throws {
            for _ in 0..<4 {
                let r = try s.run(RawCDB.testUnitReady, lun: lun)
                if r.status == RawCodes.good { return }
                guard r.status == RawCodes.checkCondition, r.sense?.key == 0x06 else { throw E2EError("\(what): \(r)") }
            }
            throw E2EError("\(what): unit attentions without end")
        }

        static func adminLUN(_ t: RunningTarget, _ op: String, force: Bool) throws -> ToolResult {
            try t.admin.run(["--lld", "iscsi", "--op", op, "--mode", "logicalunit", "--tid", "1", "--lun", "1"]
                            + (force ? ["--force"] : []))
        }

        static func deleteTarget2(_ t: RunningTarget, force: Bool) throws -> ToolResult {
            try t.admin.run(["--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", "2"] + (force ? ["--force"] : []))
        }

        static func createTarget2(_ t: RunningTarget, file: URL) throws -> String {
            let iqn = "\(RunningTarget.iqnPrefix):victim-target"
            try t.admin.must(["--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", "2", "--targetname", iqn])
            try t.admin.must(["--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "2", "--lun", "1",
                              "--backing-store", file.path])
            try t.admin.must(["--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", "2", "-I", "ALL"])
            return iqn
        }

        /// The answers to a burst on a LUN or target deleted under it: each is GOOD or CHECK CONDITION, or the
        /// connection was closed (a forced target delete ends its sessions). Nothing hangs.
        static func settle(_ s: RawSession, _ itts: [UInt32], what: String, into tally: inout Tally) {
            do {
                let results = try s.collect(itts, timeoutSeconds: 120)
                for (_, r) in results {
                    if r.status == RawCodes.good { tally.good += 1 }
                    else if r.status == RawCodes.checkCondition { tally.checkCondition += 1 }
                    else { Issue.record("\(what): status \(r.status) (\(r))") }
                }
            } catch {
                tally.cutOff += itts.count
                // Only a forced target delete may close the connection under a burst.
                if !what.contains("target") { Issue.record("\(what): \(error)") }
            }
        }

        @Test func deletesUnderLoadRefuseWithoutForceAndLeaveTheOtherLUNsServing() throws {
            try withTarget(cores: 2, luns: [.file(bytes: Self.lunBytes), .file(bytes: Self.lunBytes)]) { t in
                try RobustLifetime.requireRingtgt(t)
                /// Each session its own ISID: one initiator port logging in again would reinstate (close) the other.
                func options(_ isid: UInt64) -> RawLoginOptions {
                    var o = RawLoginOptions(initiatorName: Self.initiator, clearUnitAttentionLUNs: [1, 2])
                    o.isid = 0x4000_0000_0000 | isid
                    return o
                }
                let load = try RawSession(t.endpoint, target: t.iqn, options: options(1))
                let survivor = try RawSession(t.endpoint, target: t.iqn, options: options(2))
                let lun1File = try #require(t.lunFiles[1])
                let target2File = try t.scratch.makeSparseFile("target2.img", bytes: Self.lunBytes)
                var iqn2 = try Self.createTarget2(t, file: target2File)
                let block0 = [UInt8](repeating: 0, count: RobustLifetime.blockBytes)
                var tally = Tally()

                for round in 0..<Self.rounds {
                    let seed = UInt64(round) * 1000
                    // The survivor LUN gets this round's pattern first, then is read back after the deletes.
                    let expected = patternBytes(Self.survivorBytes, seed: seed + 999)
                    try Self.ready(survivor, lun: 2, "round \(round): LUN 2")
                    try Self.ready(load, lun: 1, "round \(round): LUN 1")
                    try RobustLifetime.fill(survivor, lun: 2, expected)

                    // LUN 1: a full window of writes, a COMPARE AND WRITE and two EXTENDED COPYs from LUN 2, all in
                    // flight while the admin acts. The first copy's list comes with it, so it may be copying when LUN 1
                    // goes; the second's waits for an R2T until after the deletes, so it resolves LUN 1 through the
                    // target it started under, which the delete has replaced.
                    var lunCommands = try Self.writeBurst(load, lun: 1)
                    let victimSession = try RawSession(t.endpoint, target: iqn2, options: RawLoginOptions(initiatorName: Self.initiator))
                    let targetCommands = try Self.writeBurst(victimSession, lun: 1)
                    let side = try RawSession(t.endpoint, target: t.iqn, options: options(3))
                    lunCommands.append(try Self.compareAndWrite(side, lun: 1, lba: UInt64(Self.lunBytes) / UInt64(RobustLifetime.blockBytes) - 1,
                                                           current: block0, seed: seed))
                    let list = RobustLifetime.copyList(from: try RobustLifetime.naa(survivor, lun: 2),
                                                       to: try RobustLifetime.naa(survivor, lun: 1),
                                                       blocks: Self.survivorBytes / RobustLifetime.blockBytes)
                    let xcopyCDB: [UInt8] = [0x83, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, UInt8(list.count >> 8), UInt8(list.count & 0xFF), 0, 0]
                    let xcopy = try survivor.sendCommand(xcopyCDB, lun: 2, writeData: list)
                    let lateXcopy = try survivor.sendCommand(xcopyCDB, lun: 2, writeData: list, immediateBytes: 0)
                    // The echo follows everything above on each session (the target answers in order): every
                    // command is in the daemon before the admin acts.
                    for s in [load, victimSession, side, survivor] { try s.ping() }

                    let refusedLUN = try Self.adminLUN(t, "delete", force: false)
                    RobustLifetime.expectActiveRefusal(refusedLUN)
                    let refusedTarget = try Self.deleteTarget2(t, force: false)
                    #expect(!refusedTarget.succeeded && (refusedTarget.stdout + refusedTarget.stderr).contains("this target is still active"),
                            "round \(round): target 2 with a session: \(refusedTarget)")
                    tally.refusals += [refusedLUN, refusedTarget].filter { !$0.succeeded }.count
                    try #require(try Self.adminLUN(t, "delete", force: true).succeeded, "round \(round): forced LUN delete")
                    try #require(try Self.deleteTarget2(t, force: true).succeeded, "round \(round): forced target delete")

                    // The survivor still serves while the deleted LUN's commands drain.
                    try Self.ready(survivor, lun: 2, "round \(round): LUN 2 after the deletes")
                    let read = try survivor.run(RawCDB.read16(lba: 0, blocks: UInt32(Self.survivorBytes / RobustLifetime.blockBytes)),
                                                lun: 2, read: true, edtl: Self.survivorBytes)
                    #expect(read.status == RawCodes.good && read.data == expected, "round \(round): LUN 2 lost its data")

                    Self.settle(load, lunCommands.filter { $0 != lunCommands.last }, what: "round \(round): LUN 1 burst", into: &tally)
                    Self.settle(side, [lunCommands.last!], what: "round \(round): COMPARE AND WRITE", into: &tally)
                    Self.settle(survivor, [xcopy, lateXcopy], what: "round \(round): EXTENDED COPY", into: &tally)
                    Self.settle(victimSession, targetCommands, what: "round \(round): target 2 burst", into: &tally)
                    victimSession.close()
                    side.close()

                    // Re-create both, on their own files; the next round starts from there.
                    try t.admin.must(["--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1",
                                      "--backing-store", lun1File.path])
                    iqn2 = try Self.createTarget2(t, file: target2File)
                    // The CAW block returns to zeros so the next round's compare matches.
                    try Self.ready(load, lun: 1, "round \(round): re-added LUN 1")
                    let reset = try load.run(RawCDB.write16(lba: UInt64(Self.lunBytes) / UInt64(RobustLifetime.blockBytes) - 1, blocks: 1),
                                             lun: 1, writeData: block0)
                    #expect(reset.status == RawCodes.good, "round \(round): \(reset)")
                }
                // The daemon is alive and both LUNs serve at the end.
                try Self.ready(load, lun: 1, "LUN 1 at the end")
                try load.writeReadVerify(lba: 0, data: patternBytes(65536, seed: 77), lun: 1)
                try Self.ready(survivor, lun: 2, "LUN 2 at the end")
                try survivor.writeReadVerify(lba: 0, data: patternBytes(65536, seed: 78), lun: 2)
                let last = try RawSession(t.endpoint, target: iqn2, options: RawLoginOptions(initiatorName: Self.initiator))
                try Self.ready(last, lun: 1, "target 2 at the end")
                try last.writeReadVerify(lba: 0, data: patternBytes(65536, seed: 79), lun: 1)
                print("delete under load: \(Self.rounds) rounds, \(tally.commands) commands under the deletes " +
                      "(GOOD \(tally.good), CHECK CONDITION \(tally.checkCondition), cut off with their session \(tally.cutOff)), " +
                      "\(tally.refusals) deletes refused without --force")
            }
        }
    }
}
