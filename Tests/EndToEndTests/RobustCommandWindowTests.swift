// The CmdSN window (RFC 7143 §3.2.2.1): commands outside [ExpCmdSN, MaxCmdSN] are dropped without an
// answer, immediate commands are answered without consuming CmdSN, and the MaxCmdSN the target
// advertises never lets an initiator have more commands outstanding than the target has task entries.

import Foundation
import ISCSIWire
import Testing

extension EndToEnd {
    @Suite("Robust: CmdSN window")
    struct RobustCommandWindow {
        static let initiator = "\(RunningTarget.iqnPrefix):window"

        /// A TEST UNIT READY beyond MaxCmdSN and one below ExpCmdSN get no answer and consume nothing;
        /// an immediate one is answered; the session goes on with the CmdSN it expects.
        @Test func outOfWindowCommandsAreDroppedAndImmediateOnesAnswered() throws {
            try withTarget(luns: [.null(bytes: gibibyte)]) { t in
                let s = try RawSession(t.endpoint, target: t.iqn, options: RawLoginOptions(initiatorName: RobustCommandWindow.initiator))
                // Move ExpCmdSN off its first value so "below" is a real, already-used CmdSN.
                #expect(try s.run(RawCDB.testUnitReady).status == RawCodes.good)
                try s.ping()
                let exp = s.targetExpCmdSN
                let max = s.targetMaxCmdSN
                #expect(exp == s.cmdSN, "ExpCmdSN \(exp) after one command; the next CmdSN is \(s.cmdSN)")
                let window = Int(Int32(bitPattern: max &- exp)) + 1
                #expect(window >= 1, "the target advertises an empty window: ExpCmdSN \(exp) MaxCmdSN \(max)")

                let beyond = try s.sendCommand(RawCDB.testUnitReady, cmdSN: max &+ 1)
                let farBeyond = try s.sendCommand(RawCDB.testUnitReady, cmdSN: exp &+ 0x4000_0000)
                let below = try s.sendCommand(RawCDB.testUnitReady, cmdSN: exp &- 1)
                // The target answers in order: anything it had to say about those comes before the ping's echo.
                let answered = try s.ping()
                #expect(answered.isEmpty, "out-of-window commands were answered: \(answered)")
                #expect(s.targetExpCmdSN == exp, "ExpCmdSN moved from \(exp) to \(s.targetExpCmdSN)")

                // Immediate: answered, and it does not consume the CmdSN it carries.
                let imm = try s.sendCommand(RawCDB.testUnitReady, immediate: true)
                let immResult = try s.collect([imm])[imm]!
                #expect(immResult.status == RawCodes.good, "immediate TEST UNIT READY: \(immResult)")
                #expect(s.targetExpCmdSN == exp, "an immediate command moved ExpCmdSN to \(s.targetExpCmdSN)")

                // The session continues: the expected CmdSN works, and the window moves on by one.
                let next = try s.run(RawCDB.read10(lba: 0, blocks: 8), read: true, edtl: 4096)
                #expect(next.status == RawCodes.good && next.data.count == 4096, "READ(10) after the drops: \(next)")
                #expect(s.targetExpCmdSN == exp &+ 1)
                // A full window's worth afterwards: none of the dropped commands was parked to run later
                // (the one "beyond" would now be inside the window). The ping's echo carries the full window
                // (the READ's response still counted the READ as busy).
                try s.ping()
                let itts = try (0..<window).map { _ in try s.sendCommand(RawCDB.testUnitReady) }
                let results = try s.collect(itts)
                #expect(results.values.allSatisfy { $0.status == RawCodes.good }, "\(results.values.filter { $0.status != 0 })")
                let late = try s.ping()
                #expect(late.isEmpty, "answers to dropped commands arrived later: \(late)")
                #expect(!s.others.contains { [beyond, farBeyond, below].contains($0.itt) }, "\(s.others)")
            }
        }

        /// Exactly the advertised window of WRITEs, each waiting for its Data-Out: every one is accepted
        /// (all R2Ts arrive, no TASK SET FULL), the advertised window closes (MaxCmdSN = ExpCmdSN - 1),
        /// one more command is dropped, an immediate command is still answered, and once the data is
        /// sent every WRITE completes and the window reopens to its full size.
        @Test func aFullWindowIsAcceptedAndNeverExceeded() throws {
            try withTarget(luns: [.file(bytes: 64 * mebibyte)]) { t in
                let s = try RawSession(t.endpoint, target: t.iqn, options: RawLoginOptions(initiatorName: RobustCommandWindow.initiator))
                try s.ping()
                let window = Int(Int32(bitPattern: s.targetMaxCmdSN &- s.targetExpCmdSN)) + 1
                try #require(window >= 1 && window <= 65536, "window \(window)")
                print("CmdSN window advertised after login: \(window) commands")

                let blockCount: UInt16 = 8
                let bytes = Int(blockCount) * RawSessionLimits.blockBytes
                let data = patternBytes(window * bytes, seed: 7)
                var itts: [UInt32] = []
                for i in 0..<window {
                    let piece = Array(data[(i * bytes)..<((i + 1) * bytes)])
                    // No immediate data, no automatic R2T service: each WRITE holds its task entry.
                    itts.append(try s.sendCommand(RawCDB.write10(lba: UInt32(i) * UInt32(blockCount), blocks: blockCount),
                                                  writeData: piece, immediateBytes: 0, serveR2T: false))
                }
                var r2ts: [UInt32: TargetPDU] = [:]
                while r2ts.count < window {
                    let p = try s.expectPDU("R2T \(r2ts.count + 1) of \(window)")
                    try #require(p.opcode == ISCSIOpcode.r2t, "instead of an R2T: \(p)")
                    r2ts[p.itt] = p
                }
                #expect(Set(r2ts.keys) == Set(itts))
                let open = Int(Int32(bitPattern: s.targetMaxCmdSN &- s.targetExpCmdSN)) + 1
                #expect(open == 0, "with \(window) commands outstanding the target still advertises room for \(open) more (ExpCmdSN \(s.targetExpCmdSN), MaxCmdSN \(s.targetMaxCmdSN))")

                // One more, beyond the closed window: dropped.
                let extra = try s.sendCommand(RawCDB.testUnitReady, cmdSN: s.cmdSN)
                // Immediate commands have their own task entries: answered even now.
                let imm = try s.sendCommand(RawCDB.testUnitReady, immediate: true)
                let immResult = try s.collect([imm])[imm]!
                #expect(immResult.status == RawCodes.good, "immediate command with a full window: \(immResult)")
                let before = try s.ping()
                #expect(before.isEmpty, "the command beyond the closed window was answered: \(before)")

                // Send every WRITE's data: all complete GOOD.
                for (i, itt) in itts.enumerated() {
                    let piece = Array(data[(i * bytes)..<((i + 1) * bytes)])
                    try s.serve(r2ts[itt]!, from: piece)
                }
                let results = try s.collect(itts)
                let bad = results.filter { $0.value.status != RawCodes.good }
                #expect(bad.isEmpty, "\(bad.count) WRITE(s) failed: \(bad.values.prefix(3).map(\.description))")
                try s.ping()
                let reopened = Int(Int32(bitPattern: s.targetMaxCmdSN &- s.targetExpCmdSN)) + 1
                #expect(reopened == window, "window after completion: \(reopened), at login: \(window)")

                // The dropped CmdSN is still the one the target expects: it works now.
                let again = try s.run(RawCDB.testUnitReady)
                #expect(again.status == RawCodes.good)
                #expect(!s.others.contains { $0.itt == extra }, "the dropped command was answered: \(s.others)")
                // Every WRITE landed where it should.
                let back = try s.run(RawCDB.read10(lba: 0, blocks: UInt16(window) * blockCount), read: true,
                                     edtl: data.count)
                #expect(back.status == RawCodes.good && back.data == data, "read back: \(back)")
            }
        }
    }
}
