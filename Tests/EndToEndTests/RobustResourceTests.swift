// Buffer slots and task entries are a core's scarcest resource: a session must not be able to keep them.
// Refused commands give back what their header took, and commands parked behind a CmdSN gap (RFC 7143
// §3.2.2.1) hold no buffer unless they carry immediate data, and not for ever.

import Foundation
import ISCSIWire
import Testing

extension EndToEnd {
    @Suite("Robust: buffers and task entries")
    struct RobustResources {
        static let initiator = "\(RunningTarget.iqnPrefix):resources"
        /// The smallest FirstBurstLength there is (RFC 7143 §13.14): immediate data beyond it costs 1 KiB.
        static let smallFirstBurstBytes = 512
        static let refusedCommandCount = 10_000
        /// Refused commands in flight at once (each is answered by its own Reject).
        static let refusedBatchCount = 100
        /// The daemon's bounds (ReactorConfig): WRITEs with immediate data one session may park behind a
        /// CmdSN gap, and how long a gap may last before the session is closed.
        static let parkedDataCommandsPerSession = 4
        static let cmdSNGapTimeoutSeconds = 20.0

        /// Sends a SCSI Command whose fields the test chooses, ahead of or at the session's next CmdSN; an
        /// `extendedCDBBytes` > 0 adds an extended CDB AHS (type 1) of that many bytes beyond the first 16.
        static func sendRaw(_ s: RawSession, cdb: [UInt8], read: Bool, write: Bool, edtl: Int, data: [UInt8],
                            cmdSN: UInt32, extendedCDBBytes: Int = 0) throws -> UInt32 {
            let itt = s.takeITT()
            var h = s.commandHeader(cdb: cdb, lun: 1, itt: itt, cmdSN: cmdSN, edtl: edtl, read: read, write: write,
                                    immediate: false, final: true, dataLength: data.count)
            if extendedCDBBytes > 0 {
                var ahs = [UInt8](repeating: 0, count: 4 + extendedCDBBytes)
                ahs[0] = UInt8((extendedCDBBytes + 1) >> 8)
                ahs[1] = UInt8((extendedCDBBytes + 1) & 0xFF)
                ahs[2] = 1   // extended CDB
                while ahs.count % 4 != 0 { ahs.append(0) }
                h[4] = UInt8(ahs.count / 4)
                h += ahs
            }
            try s.socket.send(s.frame(h, data: data))
            return itt
        }

        /// Reads the Reject of the command `itt` with `reason`; throws on anything else.
        static func expectReject(_ s: RawSession, itt: UInt32, reason: UInt8, _ what: String) throws {
            let p = try s.expectPDU("the Reject of \(what)")
            guard p.opcode == ISCSIOpcode.reject, p.byte2 == reason, p.data.count >= 48, rawBE32(p.data, 16) == itt else {
                throw E2EError("\(what) (ITT 0x\(String(itt, radix: 16))): expected Reject reason \(reason), got \(p)")
            }
        }

        /// 10,000 commands whose immediate data is refused (no W bit; more than FirstBurstLength; more than
        /// the expected transfer length; any on a session that negotiated ImmediateData=No), and extended
        /// CDBs ahead of their CmdSN: each gets a Reject and gives its buffer slot and task entry back. With
        /// 16 buffers a single leak per command would stop the core after 16; instead a new session logs
        /// in and reads and writes, and so do the two that sent them.
        @Test func refusedCommandsGiveTheirBuffersBack() throws {
            try withTarget(daemonOptions: ["--buffers", "16"], luns: [.file(bytes: 64 * mebibyte)]) { t in
                let first = RobustResources.smallFirstBurstBytes
                let a = try RawSession(t.endpoint, target: t.iqn, options: RawLoginOptions(
                    initiatorName: RobustResources.initiator, firstBurstLength: first))
                let b = try RawSession(t.endpoint, target: t.iqn, options: RawLoginOptions(
                    initiatorName: "\(RobustResources.initiator)-noimm", isid: 0x4000_0000_0002, immediateData: false))
                try #require(a.immediateData && a.firstBurst == first, "session A negotiated \(a.negotiated)")
                try #require(!b.immediateData, "session B negotiated \(b.negotiated)")

                let block = [UInt8](repeating: 0xA5, count: RawSessionLimits.blockBytes)
                var sent = 0
                while sent < RobustResources.refusedCommandCount {
                    // (session, ITT, reason, kind) of every command of this batch, in the order sent.
                    var expected: [(RawSession, UInt32, UInt8, String)] = []
                    for i in sent..<min(sent + RobustResources.refusedBatchCount, RobustResources.refusedCommandCount) {
                        switch i % 5 {
                        case 0:
                            let itt = try RobustResources.sendRaw(a, cdb: RawCDB.read10(lba: 0, blocks: 1), read: true, write: false,
                                                  edtl: block.count, data: block, cmdSN: a.cmdSN)
                            a.cmdSN &+= 1
                            expected.append((a, itt, 0x04, "immediate data on a READ (no W bit)"))
                        case 1:
                            let itt = try RobustResources.sendRaw(a, cdb: RawCDB.write10(lba: 0, blocks: 4), read: false, write: true,
                                                  edtl: 4 * block.count, data: block + block, cmdSN: a.cmdSN)
                            a.cmdSN &+= 1
                            expected.append((a, itt, 0x04, "immediate data beyond FirstBurstLength"))
                        case 2:
                            let itt = try RobustResources.sendRaw(a, cdb: RawCDB.write10(lba: 0, blocks: 1), read: false, write: true,
                                                  edtl: block.count / 2, data: block, cmdSN: a.cmdSN)
                            a.cmdSN &+= 1
                            expected.append((a, itt, 0x04, "immediate data beyond the expected transfer length"))
                        case 3:
                            let itt = try RobustResources.sendRaw(b, cdb: RawCDB.write10(lba: 0, blocks: 1), read: false, write: true,
                                                  edtl: block.count, data: block, cmdSN: b.cmdSN)
                            b.cmdSN &+= 1
                            expected.append((b, itt, 0x04, "immediate data with ImmediateData=No"))
                        default:
                            // One CmdSN ahead: an extended CDB is not kept while it waits. Its CmdSN is not
                            // consumed, so the next command of the session uses it.
                            let itt = try RobustResources.sendRaw(a, cdb: RawCDB.testUnitReady, read: false, write: false, edtl: 0,
                                                  data: [], cmdSN: a.cmdSN &+ 1, extendedCDBBytes: 20)
                            expected.append((a, itt, 0x0A, "an extended CDB ahead of its CmdSN"))
                        }
                    }
                    for (s, itt, reason, what) in expected {
                        try RobustResources.expectReject(s, itt: itt, reason: reason, "\(what), command \(sent)")
                        sent += 1
                    }
                }
                print("\(sent) refused commands, each answered by its Reject")

                // A new session: every one of the 16 buffers is there for it.
                let c = try RawSession(t.endpoint, target: t.iqn, options: RawLoginOptions(
                    initiatorName: "\(RobustResources.initiator)-after", isid: 0x4000_0000_0003))
                try RobustResources.readBurst(c, count: 64)
                try c.writeReadVerify(lba: 4096, data: patternBytes(128 * 1024, seed: 11))
                // And the sessions that sent them carry on.
                try a.writeReadVerify(lba: 8192, data: patternBytes(first, seed: 12))
                try b.writeReadVerify(lba: 8200, data: patternBytes(64 * 1024, seed: 13))
                #expect(a.others.isEmpty && b.others.isEmpty && c.others.isEmpty,
                        "\(a.others.prefix(3)) \(b.others.prefix(3)) \(c.others.prefix(3))")
            }
        }

        static let readBytes = 65536

        /// Sends `count` READs of 64 KiB at the session's next CmdSNs; returns their ITTs.
        static func sendReads(_ s: RawSession, count: Int) throws -> [UInt32] {
            try (0..<count).map { i in
                try s.sendCommand(RawCDB.read10(lba: UInt32(i) * 128, blocks: 128), read: true, edtl: readBytes)
            }
        }

        /// `count` READs of 64 KiB at once: every one must complete GOOD with its data.
        static func readBurst(_ s: RawSession, count: Int) throws {
            let results = try s.collect(try sendReads(s, count: count))
            let bad = results.values.filter { $0.status != RawCodes.good || $0.data.count != readBytes }
            #expect(bad.isEmpty, "\(s.options.initiatorName): \(bad.count) of \(count) READs failed: \(bad.prefix(3))")
        }

        /// READs per second over `rounds` bursts of 120 (paced by the raw client itself: for comparing a session's
        /// rate with and without hostile sessions beside it, not a figure of the target's speed).
        static func burstRate(_ s: RawSession, rounds: Int) throws -> Double {
            let start = monotonicSeconds()
            for _ in 0..<rounds {
                try s.ping()   // learns the window the last burst's answers reopened
                try readBurst(s, count: 120)
            }
            return Double(rounds * 120) / (monotonicSeconds() - start)
        }

        /// A CmdSN skipped on purpose ("lost"), then `count` READs of 64 KiB after it: they park behind the gap.
        /// Returns the lost CmdSN and the READs' ITTs.
        static func parkReadsBehindAGap(_ s: RawSession, count: Int) throws -> (lost: UInt32, itts: [UInt32]) {
            let lost = s.cmdSN
            s.cmdSN &+= 1
            return (lost, try sendReads(s, count: count))
        }

        /// Three sessions on one core each park 127 READs behind a missing CmdSN and keep answering pings:
        /// 381 commands, more than the core's 256 buffers. Parked commands hold no buffer, so a new session
        /// on that core logs in and a burst of its READs completes while the three are still there. Then
        /// the three fill their gaps at once: every parked READ gets a buffer in turn and completes.
        @Test func commandsParkedBehindAGapHoldNoBuffers() throws {
            try withTarget(daemonOptions: [], luns: [.file(bytes: 64 * mebibyte)]) { t in
                let before = try RawSession(t.endpoint, target: t.iqn, options: RawLoginOptions(
                    initiatorName: "\(RobustResources.initiator)-before", isid: 0x4000_0000_0021))
                let quietRate = try RobustResources.burstRate(before, rounds: 10)
                before.close()
                var pinning: [(RawSession, UInt32, [UInt32])] = []
                for i in 0..<3 {
                    let s = try RawSession(t.endpoint, target: t.iqn, options: RawLoginOptions(
                        initiatorName: "\(RobustResources.initiator)-pin\(i)", isid: 0x4000_0000_0010 + UInt64(i)))
                    try s.ping()
                    let window = Int(Int32(bitPattern: s.windowMaxCmdSN &- s.cmdSN))
                    try #require(window >= 127, "window \(window)")
                    let (lost, itts) = try RobustResources.parkReadsBehindAGap(s, count: 127)
                    let early = try s.ping()
                    #expect(early.isEmpty, "READs behind a CmdSN gap were answered: \(early.prefix(3))")
                    pinning.append((s, lost, itts))
                }

                let fresh = try RawSession(t.endpoint, target: t.iqn, options: RawLoginOptions(
                    initiatorName: "\(RobustResources.initiator)-fresh", isid: 0x4000_0000_0020))
                let pinnedRate = try RobustResources.burstRate(fresh, rounds: 10)
                print(String(format: "a fresh session's 64 KiB READs: %.0f/s with 3 sessions pinning 381 commands, %.0f/s before (%.0f%%)",
                             pinnedRate, quietRate, 100 * pinnedRate / quietRate))
                try fresh.writeReadVerify(lba: 0, data: patternBytes(64 * 1024, seed: 21))

                // The three are still logged in, their READs still parked.
                for (s, _, _) in pinning {
                    let quiet = try s.ping()
                    #expect(quiet.isEmpty, "\(s.options.initiatorName): \(quiet.prefix(3))")
                }
                // Each sends its missing command now; all 381 parked READs want a buffer at the same time.
                var missing: [UInt32] = []
                for (s, lost, _) in pinning {
                    missing.append(try s.sendCommand(RawCDB.testUnitReady, cmdSN: lost))
                }
                for (i, (s, _, itts)) in pinning.enumerated() {
                    let done = try s.collect(itts + [missing[i]])
                    let bad = done.values.filter { $0.status != RawCodes.good }
                    #expect(bad.isEmpty, "\(s.options.initiatorName): \(bad.count) failed, \(bad.prefix(3))")
                    #expect(itts.allSatisfy { done[$0]?.data.count == RobustResources.readBytes })
                    try s.ping()
                    #expect(s.targetExpCmdSN == s.cmdSN, "ExpCmdSN \(s.targetExpCmdSN), next CmdSN \(s.cmdSN)")
                    #expect(s.others.isEmpty, "\(s.others.prefix(3))")
                }
            }
        }

        /// WRITEs carrying immediate data park with their data behind a gap, up to the bound; the ones past
        /// it are answered TASK SET FULL at once and hold nothing. A READ parked behind the gap is aborted
        /// (ABORT TASK). The refused and the aborted commands' CmdSNs still count as received: once the gap
        /// fills, the parked WRITEs run and the session goes on at the CmdSN it expects.
        @Test func parkedImmediateDataIsBoundedAndRefusedCmdSNsAreNotGaps() throws {
            try withTarget(daemonOptions: [], luns: [.file(bytes: 16 * mebibyte)]) { t in
                let s = try RawSession(t.endpoint, target: t.iqn, options: RawLoginOptions(
                    initiatorName: "\(RobustResources.initiator)-parkdata"))
                try s.ping()
                let lost = s.cmdSN
                s.cmdSN &+= 1
                let bytes = 4096
                let writeCount = RobustResources.parkedDataCommandsPerSession * 2
                let data = patternBytes(writeCount * bytes, seed: 31)
                let writes = try (0..<writeCount).map { i in
                    try s.sendCommand(RawCDB.write10(lba: UInt32(i * bytes / RawSessionLimits.blockBytes), blocks: 8),
                                      writeData: Array(data[(i * bytes)..<((i + 1) * bytes)]), serveR2T: false)
                }
                let abortedCmdSN = s.cmdSN
                let aborted = try s.sendCommand(RawCDB.read10(lba: 0, blocks: 8), read: true, edtl: bytes)
                let tmf = try s.sendTMF(function: TMFunction.abortTask, referencedITT: aborted, refCmdSN: abortedCmdSN)
                let early = try s.ping()
                let kept = RobustResources.parkedDataCommandsPerSession
                let refused = early.filter { $0.opcode == ISCSIOpcode.scsiResponse }
                #expect(refused.map(\.itt) == Array(writes[kept...]) && refused.allSatisfy { $0.status == RawCodes.taskSetFull },
                        "answers before the gap filled: \(early)")
                #expect(early.contains { $0.opcode == ISCSIOpcode.taskManagementResponse && $0.itt == tmf && $0.byte2 == TMResponse.functionComplete },
                        "ABORT TASK of a parked READ: \(early)")
                _ = try s.collect(Array(writes[kept...]))

                let filler = try s.sendCommand(RawCDB.testUnitReady, cmdSN: lost)
                let after = try s.sendCommand(RawCDB.testUnitReady)
                let done = try s.collect(Array(writes[..<kept]) + [filler, after])
                #expect(done.values.allSatisfy { $0.status == RawCodes.good }, "\(done.values.filter { $0.status != 0 })")
                let quiet = try s.ping()
                #expect(!quiet.contains { $0.itt == aborted }, "the aborted READ was answered: \(quiet)")
                #expect(s.targetExpCmdSN == s.cmdSN, "ExpCmdSN \(s.targetExpCmdSN), next CmdSN \(s.cmdSN)")

                // The kept WRITEs wrote their data; the refused ones wrote nothing.
                let back = try s.run(RawCDB.read10(lba: 0, blocks: UInt16(data.count / RawSessionLimits.blockBytes)),
                                     read: true, edtl: data.count)
                let keptBytes = kept * bytes
                #expect(back.status == RawCodes.good && Array(back.data.prefix(keptBytes)) == Array(data.prefix(keptBytes))
                        && back.data.dropFirst(keptBytes).allSatisfy { $0 == 0 }, "read back: \(back)")
            }
        }

        /// A gap that lasts: the session is closed once it is older than the bound, although it answers
        /// every ping, and the daemon says why. A session beside it goes on.
        @Test func aCmdSNGapThatLastsEndsTheSession() throws {
            try withTarget(daemonOptions: [], luns: [.file(bytes: 16 * mebibyte)]) { t in
                let s = try RawSession(t.endpoint, target: t.iqn, options: RawLoginOptions(
                    initiatorName: "\(RobustResources.initiator)-gap"))
                let bystander = try RawSession(t.endpoint, target: t.iqn, options: RawLoginOptions(
                    initiatorName: "\(RobustResources.initiator)-bystander", isid: 0x4000_0000_0002))
                let limit = RobustResources.cmdSNGapTimeoutSeconds
                let start = monotonicSeconds()
                _ = try RobustResources.parkReadsBehindAGap(s, count: 4)
                var closedAfter: Double? = nil
                var answers: [TargetPDU] = []
                while closedAfter == nil && monotonicSeconds() - start < limit + 10 {
                    switch try s.receive(timeoutSeconds: 1) {   // answers the target's pings meanwhile
                    case .closed: closedAfter = monotonicSeconds() - start
                    case .pdu(let p): answers.append(p)
                    case .timeout: #expect(try bystander.run(RawCDB.testUnitReady).status == RawCodes.good)
                    }
                }
                #expect(answers.allSatisfy { $0.opcode == ISCSIOpcode.nopIn }, "answers while the gap lasted: \(answers)")
                let after = try #require(closedAfter, "the session was still open \(limit + 10) s after its gap formed")
                #expect(after >= limit - 1, "closed \(after) s after the gap formed, before the \(limit) s bound")
                #expect(t.process.stderrText.contains("CmdSN gap"), "the daemon did not log why: \(tail(t.process.stderrText))")
                try bystander.writeReadVerify(lba: 0, data: patternBytes(64 * 1024, seed: 41))
            }
        }
    }
}
