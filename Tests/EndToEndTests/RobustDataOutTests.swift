// Data-Out that breaks the rules of the R2T it answers (RFC 7143 §11.7, §10.7): the target answers with
// Reject and either lets the initiator send the right data or ends the command with CHECK CONDITION;
// it never hangs, and no other session notices.

import Foundation
import ISCSIWire
import Testing

extension EndToEnd {
    @Suite("Robust: Data-Out violations")
    struct RobustDataOut {
        static let initiator = "\(RunningTarget.iqnPrefix):dataout"
        static let writeBlocks: UInt16 = 16
        static var writeBytes: Int { Int(writeBlocks) * RawSessionLimits.blockBytes }

        enum Violation: String, CaseIterable {
            /// A TTT the target never issued.
            case wrongTTT
            /// The right TTT, but an offset the R2T did not ask for.
            case wrongOffset
            /// More data than the R2T's desired length.
            case moreThanTheBurst
            /// Data-Out without any R2T (TTT 0xffffffff) although InitialR2T=Yes.
            case unsolicited
            /// The second Data-Out of a burst skips a DataSN.
            case dataSNGap
            /// The F bit on a Data-Out that does not end the burst.
            case finalTooEarly
        }

        /// What the target must do: reject the PDU and keep waiting for the right data (the PDU could not
        /// be tied to the burst), or reject it and end the command with CHECK CONDITION, ABORTED COMMAND,
        /// DATA PHASE ERROR (the burst itself is broken, ERL 0 cannot repair it).
        static func expectedReject(_ v: Violation) -> (reason: UInt8, endsCommand: Bool) {
            switch v {
            case .wrongTTT, .wrongOffset, .moreThanTheBurst, .unsolicited: return (0x09, false)   // invalid PDU field
            case .dataSNGap, .finalTooEarly: return (0x04, true)                                   // protocol error
            }
        }

        @Test func badDataOutIsRejectedAndNeverHangs() throws {
            try withTarget(luns: [.file(bytes: 16 * mebibyte)]) { t in
                let (s, bystander) = try t.sessionWithBystander(RobustDataOut.initiator)
                let n = RobustDataOut.writeBytes
                for (i, v) in Violation.allCases.enumerated() {
                    let lba = UInt32(i) * UInt32(RobustDataOut.writeBlocks)
                    let data = patternBytes(n, seed: UInt64(100 + i))
                    let itt = try s.sendCommand(RawCDB.write10(lba: lba, blocks: RobustDataOut.writeBlocks),
                                                writeData: data, immediateBytes: 0, serveR2T: false)
                    let r2t = try s.expectPDU("the R2T for \(v)")
                    try #require(r2t.opcode == ISCSIOpcode.r2t && r2t.itt == itt && r2t.bufferOffset == 0 && Int(r2t.u44) == n,
                                 "\(v): expected an R2T for the whole \(n) bytes, got \(r2t)")
                    let half = n / 2
                    switch v {
                    case .wrongTTT:
                        try s.sendDataOut(itt: itt, ttt: r2t.ttt ^ 0x0101_0000, offset: 0, dataSN: 0, final: true, data: data)
                    case .wrongOffset:
                        try s.sendDataOut(itt: itt, ttt: r2t.ttt, offset: 512, dataSN: 0, final: true, data: Array(data[512...]))
                    case .moreThanTheBurst:
                        try s.sendDataOut(itt: itt, ttt: r2t.ttt, offset: 0, dataSN: 0, final: true,
                                          data: data + patternBytes(4096, seed: 1))
                    case .unsolicited:
                        try s.sendDataOut(itt: itt, ttt: reservedTag, offset: 0, dataSN: 0, final: true, data: data)
                    case .dataSNGap:
                        try s.sendDataOut(itt: itt, ttt: r2t.ttt, offset: 0, dataSN: 0, final: false, data: Array(data[..<half]))
                        try s.sendDataOut(itt: itt, ttt: r2t.ttt, offset: half, dataSN: 2, final: true, data: Array(data[half...]))
                    case .finalTooEarly:
                        try s.sendDataOut(itt: itt, ttt: r2t.ttt, offset: 0, dataSN: 0, final: true, data: Array(data[..<half]))
                    }
                    let (reason, endsCommand) = RobustDataOut.expectedReject(v)
                    let reject = try s.expectPDU("the Reject for \(v)")
                    #expect(reject.opcode == ISCSIOpcode.reject && reject.byte2 == reason,
                            "\(v): expected Reject reason 0x\(String(reason, radix: 16)), got \(reject)")
                    // A Reject carries the rejected header: a Data-Out of this command.
                    #expect(reject.data.count >= 48 && reject.data[0] & 0x3F == 0x05 && rawBE32(reject.data, 16) == itt,
                            "\(v): the Reject does not carry the offending Data-Out header")
                    if endsCommand {
                        let r = try s.collect([itt])[itt]!
                        #expect(r.status == RawCodes.checkCondition && r.sense?.key == 0x0B && r.sense?.asc == 0x4B,
                                "\(v): expected CHECK CONDITION ABORTED COMMAND / DATA PHASE ERROR, got \(r)")
                    } else {
                        // Nothing else happened to the command: the right data now completes it.
                        let pending = try s.ping()
                        #expect(pending.isEmpty, "\(v): after the Reject the target also sent \(pending)")
                        try s.serve(r2t, from: data)
                        let r = try s.collect([itt])[itt]!
                        #expect(r.status == RawCodes.good, "\(v): the WRITE with the right data afterwards: \(r)")
                        let back = try s.run(RawCDB.read10(lba: lba, blocks: RobustDataOut.writeBlocks), read: true, edtl: n)
                        #expect(back.data == data, "\(v): the blocks do not hold the right data afterwards")
                    }
                    // The session is in step and the bystander is unaffected.
                    #expect(try s.run(RawCDB.testUnitReady).status == RawCodes.good, "\(v): TEST UNIT READY afterwards")
                    try bystander.writeReadVerify(lba: 8192 + UInt32(i) * 64, data: patternBytes(32 * 1024, seed: UInt64(i)))
                }
                #expect(s.others.isEmpty, "unexpected PDUs: \(s.others)")
            }
        }

        /// A Data-Out longer than the target's MaxRecvDataSegmentLength cannot be framed safely: that
        /// connection is closed, and only that one.
        @Test func dataOutBeyondMaxRecvDataSegmentLengthClosesOnlyThatConnection() throws {
            try withTarget(luns: [.file(bytes: 16 * mebibyte)]) { t in
                let (s, bystander) = try t.sessionWithBystander(RobustDataOut.initiator)
                let limit = s.targetMaxRecvDataSegment
                let blocks = UInt16((limit * 2) / RawSessionLimits.blockBytes)
                let data = patternBytes(limit * 2, seed: 5)
                let itt = try s.sendCommand(RawCDB.write10(lba: 0, blocks: blocks), writeData: data, immediateBytes: 0,
                                            serveR2T: false)
                let r2t = try s.expectPDU("R2T")
                try #require(r2t.opcode == ISCSIOpcode.r2t && r2t.itt == itt, "\(r2t)")
                let desired = Int(r2t.u44)
                // One PDU for the whole burst, which is more than one PDU may carry.
                s.socket.sendIgnoringErrors(s.dataOutPDU(itt: itt, ttt: r2t.ttt, offset: 0, dataSN: 0, final: true,
                                                         data: Array(data[..<max(desired, limit + 512)])))
                #expect(s.awaitClose(timeoutSeconds: RawSessionLimits.answerTimeoutSeconds),
                        "a \(max(desired, limit + 512))-byte Data-Out (MaxRecvDataSegmentLength \(limit)) did not close the connection")
                try bystander.writeReadVerify(lba: 4096, data: patternBytes(128 * 1024, seed: 6))
            }
        }
    }
}
