// Header and data digests (RFC 7143 §12.1, §7.8): negotiated from an initiator that offers CRC32C
// only; correct digests both ways on a READ/WRITE round trip; a bad header digest closes the connection
// (its framing cannot be trusted); a bad data digest on a Data-Out is rejected (Data-Digest-Error) and
// the session carries on.

import Foundation
import ISCSIWire
import Testing

extension EndToEnd {
    @Suite("Robust: digests")
    struct RobustDigests {
        static let initiator = "\(RunningTarget.iqnPrefix):digests"

        static func crcOptions(_ name: String, isid: UInt64) -> RawLoginOptions {
            RawLoginOptions(initiatorName: name, isid: isid, headerDigest: "CRC32C", dataDigest: "CRC32C")
        }

        @Test func crc32cOnlyOfferIsAcceptedAndDigestsWork() throws {
            try withTarget(luns: [.file(bytes: 32 * mebibyte)]) { t in
                let s = try RawSession(t.endpoint, target: t.iqn,
                                       options: RobustDigests.crcOptions(RobustDigests.initiator, isid: 0x4000_0000_0001))
                #expect(s.negotiated["HeaderDigest"] == "CRC32C" && s.negotiated["DataDigest"] == "CRC32C",
                        "digests answered: \(String(describing: s.negotiated["HeaderDigest"])), \(String(describing: s.negotiated["DataDigest"]))")
                try #require(s.headerDigest && s.dataDigest)
                // A session without digests beside it, on the same core.
                let plain = try RawSession(t.endpoint, target: t.iqn,
                                           options: RawLoginOptions(initiatorName: "\(RobustDigests.initiator)-plain",
                                                                    isid: 0x4000_0000_0002))

                // Immediate data, R2T-solicited Data-Out and multi-PDU Data-In, all digested (the helper checks
                // every digest the target sends and throws on a wrong one).
                for (i, size) in [512, 4608, 64 * 1024, 200 * 1024, 256 * 1024].enumerated() {
                    try s.writeReadVerify(lba: UInt32(i) * 1024, data: patternBytes(size, seed: UInt64(i + 1)))
                }
                // WRITE(16)/READ(16) too.
                let d16 = patternBytes(96 * 1024, seed: 16)
                let w16 = try s.run(RawCDB.write16(lba: 20000, blocks: UInt32(d16.count / 512)), writeData: d16)
                #expect(w16.status == RawCodes.good, "WRITE(16): \(w16)")
                let r16 = try s.run(RawCDB.read16(lba: 20000, blocks: UInt32(d16.count / 512)), read: true, edtl: d16.count)
                #expect(r16.status == RawCodes.good && r16.data == d16, "READ(16): \(r16)")
                // Ping data is digested as well.
                try s.ping()

                // A bad data digest on a Data-Out: Reject with reason Data-Digest-Error, PDU discarded.
                let data = patternBytes(8192, seed: 42)
                let itt = try s.sendCommand(RawCDB.write10(lba: 30000, blocks: 16), writeData: data, immediateBytes: 0,
                                            serveR2T: false)
                let r2t = try s.expectPDU("R2T")
                try #require(r2t.opcode == ISCSIOpcode.r2t && r2t.itt == itt, "\(r2t)")
                var garbled = data
                garbled[100] ^= 0xFF
                try s.sendDataOut(itt: itt, ttt: r2t.ttt, offset: 0, dataSN: 0, final: true, data: garbled,
                                  corruptDataDigest: true)
                let reject = try s.expectPDU("the Reject for a bad data digest")
                #expect(reject.opcode == ISCSIOpcode.reject && reject.byte2 == 0x02, "expected Reject reason 0x02: \(reject)")
                // ERL 0 gives the initiator no way to resend, but the command must not hang: either the
                // target ended it, or it still accepts the burst's data (as ringtgt does).
                let pending = try s.ping()
                if let end = pending.first(where: { $0.itt == itt }) {
                    #expect(end.opcode == ISCSIOpcode.scsiResponse && end.status == RawCodes.checkCondition,
                            "the command ended otherwise than with CHECK CONDITION: \(end)")
                } else {
                    #expect(pending.isEmpty, "after the Reject: \(pending)")
                    try s.serve(r2t, from: data)
                    let r = try s.collect([itt])[itt]!
                    #expect(r.status == RawCodes.good, "the WRITE resent with a good digest: \(r)")
                    let back = try s.run(RawCDB.read10(lba: 30000, blocks: 16), read: true, edtl: data.count)
                    #expect(back.data == data, "the garbled Data-Out reached the disk")
                }
                try s.writeReadVerify(lba: 40000, data: patternBytes(16 * 1024, seed: 43))
                try plain.writeReadVerify(lba: 50000, data: patternBytes(64 * 1024, seed: 44))

                // A bad header digest: the connection is closed; the other session goes on.
                let h = s.commandHeader(cdb: RawCDB.testUnitReady, lun: 1, itt: s.takeITT(), cmdSN: s.cmdSN, edtl: 0,
                                        read: false, write: false, immediate: false, final: true, dataLength: 0)
                s.socket.sendIgnoringErrors(s.frame(h, corruptHeaderDigest: true))
                #expect(s.awaitClose(timeoutSeconds: RawSessionLimits.answerTimeoutSeconds),
                        "a PDU with a bad header digest did not close the connection")
                try plain.writeReadVerify(lba: 50000, data: patternBytes(64 * 1024, seed: 45))
            }
        }
    }
}
