// A client that asks for a lot of data and then stops reading its socket. The target's send queue for
// that connection fills and stays full; nothing else on the core may wait for it. (The target closes
// such a connection after sendStallSeconds, 60 s by default: too long for CI, so this test closes the
// stuck socket itself and checks that the daemon lets go of the session and all it held.)

import Foundation
import ISCSIWire
import Testing

extension EndToEnd {
    @Suite("Robust: slow client")
    struct RobustSlowClient {
        static let initiator = "\(RunningTarget.iqnPrefix):slow"
        static let readBlocks: UInt16 = 512            // 256 KiB, one buffer slot
        static var readBytes: Int { Int(readBlocks) * RawSessionLimits.blockBytes }

        @Test func aClientThatStopsReadingStallsNoOneAndIsFreedWhenItGoes() throws {
            // LUN 1 is null (reads cost no disk I/O), LUN 2 a file that keeps what the other session writes.
            try withTarget(cores: 1, luns: [.null(bytes: gibibyte), .file(bytes: 16 * mebibyte)]) { t in
                let stuckName = "\(RobustSlowClient.initiator)-stuck"
                var stuckOptions = RawLoginOptions(initiatorName: stuckName, isid: 0x4000_0000_0001)
                stuckOptions.receiveBufferBytes = 4096
                let stuck = try RawSession(t.endpoint, target: t.iqn, options: stuckOptions)
                try stuck.ping()
                let window = Int(Int32(bitPattern: stuck.targetMaxCmdSN &- stuck.targetExpCmdSN)) + 1
                try #require(window >= 1)
                // A full window of 256 KiB READs, never read back: far more than the socket buffers hold.
                for i in 0..<window {
                    try stuck.sendCommand(RawCDB.read10(lba: UInt32(i) * UInt32(RobustSlowClient.readBlocks),
                                                        blocks: RobustSlowClient.readBlocks),
                                          read: true, edtl: RobustSlowClient.readBytes)
                }
                print("slow client: \(window) READs of \(RobustSlowClient.readBytes / 1024) KiB queued on a session that does not read")

                // Meanwhile, on the same core: another session's writes, reads and pipelined large reads.
                var otherOptions = RawLoginOptions(initiatorName: "\(RobustSlowClient.initiator)-other", isid: 0x4000_0000_0002)
                otherOptions.clearUnitAttentionLUNs = [1, 2]
                let other = try RawSession(t.endpoint, target: t.iqn, options: otherOptions)
                let started = monotonicSeconds()
                for round in 0..<4 {
                    try other.writeReadVerify(lba: UInt32(round) * 512,
                                              data: patternBytes(RobustSlowClient.readBytes, seed: UInt64(round)), lun: 2)
                }
                let reads = try (0..<32).map { i in
                    try other.sendCommand(RawCDB.read10(lba: UInt32(i) * 512, blocks: RobustSlowClient.readBlocks),
                                          read: true, edtl: RobustSlowClient.readBytes)
                }
                let results = try other.collect(reads)
                #expect(results.values.allSatisfy { $0.status == RawCodes.good && $0.data.count == RobustSlowClient.readBytes },
                        "pipelined reads beside the stuck session failed")
                print("slow client: the other session moved \(4 * 2 + 32) x 256 KiB in " +
                      String(format: "%.2f", monotonicSeconds() - started) + " s while the stuck one held its queue")
                // A real initiator too.
                let ls = try t.tool("iscsi-ls", ["-s", t.endpoint.portalURL], timeoutSeconds: 30)
                #expect(ls.succeeded && ls.stdout.contains(t.iqn), "\(ls)")
                #expect(try listedInitiators(t.admin).contains(stuckName), "the stuck session should still be listed")

                // The stuck client goes away: the daemon drops the session ...
                stuck.close()
                let listing = try waitForListing(t.admin, timeoutSeconds: 10) { !$0.contains(stuckName) }
                #expect(listing.ok, "the closed stuck session is still listed after 10 s: \(listing.names)")

                // ... and every buffer slot it held. Two sessions each send a full window of WRITEs without
                // their data: every WRITE takes a buffer slot when its header arrives and keeps it until its
                // data is in, so together they need every slot of the core (2 x 128 of the default 256). The
                // first gets all the core's R2T permits; the second's WRITEs wait for one, holding their slots.
                // The second session's ping is read only after all its WRITEs got a slot: if a single slot were
                // still held for the stuck connection, its parser would stay stopped and the ping unanswered.
                let holder = try RawSession(t.endpoint, target: t.iqn,
                                            options: RawLoginOptions(initiatorName: "\(RobustSlowClient.initiator)-holder",
                                                                     isid: 0x4000_0000_0003))
                let waiter = try RawSession(t.endpoint, target: t.iqn,
                                            options: RawLoginOptions(initiatorName: "\(RobustSlowClient.initiator)-waiter",
                                                                     isid: 0x4000_0000_0004))
                let writeData = patternBytes(4096, seed: 9)
                // The NOP-In echo carries the full window (a SCSI Response counts its own task as still busy).
                try holder.ping()
                try waiter.ping()
                let held = try (0..<window).map { i in
                    try holder.sendCommand(RawCDB.write10(lba: 200_000 + UInt32(i) * 8, blocks: 8), writeData: writeData,
                                           immediateBytes: 0)
                }
                var r2ts = 0
                while r2ts < window {
                    let p = try holder.expectPDU("R2T \(r2ts + 1) of \(window)")
                    try #require(p.opcode == ISCSIOpcode.r2t, "\(p)")
                    r2ts += 1
                    holder.keep(p)
                }
                let waiting = try (0..<window).map { i in
                    try waiter.sendCommand(RawCDB.write10(lba: 300_000 + UInt32(i) * 8, blocks: 8), writeData: writeData,
                                           immediateBytes: 0)
                }
                do {
                    try waiter.ping()
                } catch {
                    Issue.record("with every other slot in use, a session's \(window) WRITEs did not all get a buffer slot: \(error)")
                    return
                }
                let heldResults = try holder.collect(held, timeoutSeconds: 20)
                #expect(heldResults.count == window && heldResults.values.allSatisfy { $0.status == RawCodes.good })
                let waitingResults = try waiter.collect(waiting, timeoutSeconds: 20)
                #expect(waitingResults.count == window && waitingResults.values.allSatisfy { $0.status == RawCodes.good })
            }
        }
    }
}
