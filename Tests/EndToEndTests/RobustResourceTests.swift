// Buffer slots and task entries are a core's scarcest resource: a session must not be able to keep them.
// Refused commands give back what their header took.

import Foundation
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
            guard p.opcode == RawCodes.reject, p.byte2 == reason, p.data.count >= 48, rawBE32(p.data, 16) == itt else {
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
                let reads = try (0..<64).map { i in
                    try c.sendCommand(RawCDB.read10(lba: UInt32(i) * 128, blocks: 128), read: true, edtl: 65536)
                }
                let results = try c.collect(reads)
                #expect(results.values.allSatisfy { $0.status == RawCodes.good && $0.data.count == 65536 },
                        "\(results.values.filter { $0.status != RawCodes.good }.prefix(3))")
                try c.writeReadVerify(lba: 4096, data: patternBytes(128 * 1024, seed: 11))
                // And the sessions that sent them carry on.
                try a.writeReadVerify(lba: 8192, data: patternBytes(first, seed: 12))
                try b.writeReadVerify(lba: 8200, data: patternBytes(64 * 1024, seed: 13))
                #expect(a.others.isEmpty && b.others.isEmpty && c.others.isEmpty,
                        "\(a.others.prefix(3)) \(b.others.prefix(3)) \(c.others.prefix(3))")
            }
        }
    }
}
