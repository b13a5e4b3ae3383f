// Full-feature Text negotiation and SendTargets (TextKeys.swift, Discovery.swift) over a sequence of Text
// Request PDUs. Input: one byte choosing the session, then raw PDUs (those that are not Text Requests are
// skipped, so a captured session's stream works as a seed).

import ISCSIWire
// The machines' internals are reachable only where Target is built for testing: debug, and fuzz/run's build.
#if DEBUG || FUZZING
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor

enum TextFuzz {
    static let maxPDUs = 256
    static let targets: [(name: String, addresses: [String])] = [
        ("iqn.2026-01.org.ringtgt:a", ["127.0.0.1:3260,1", "[::1]:3260,1"]),
        ("iqn.2026-01.org.ringtgt:b", []),
        ("iqn.2026-01.org.ringtgt:" + String(repeating: "x", count: 200), ["10.0.0.1:3260,1"]),
    ]

    static func run(_ raw: UnsafeRawBufferPointer) {
        var input = FuzzInput(raw)
        let choice = input.byte()
        let sessionType: SessionType = choice & 1 == 0 ? .discovery : .normal
        let own: String? = sessionType == .normal ? targets[0].name : nil
        let maxSend = [512, 1024, 8192, 262_144][Int(choice >> 1) & 3]
        // Small enough that the fuzzer sees answers cut at a target boundary.
        let maxAnswer = choice & 8 != 0 ? 300 : Discovery.maxSendTargetsBytes
        let env = TextEnvironment(maxSendDataSegmentLength: maxSend, sessionType: sessionType) { request in
            let out = Discovery.sendTargetsResponse(request: request, targets: targets, sessionTarget: own, maxBytes: maxAnswer)
            FuzzCheck.expect(out.count <= maxAnswer, "SendTargets answer \(out.count) > \(maxAnswer)")
            TextKeyCheck.wellFormed(out, "SendTargets=\(request)", unique: false)
            if request == "All" && own != nil {
                FuzzCheck.expect(out == TextKeys.encode([TextKeyValue("SendTargets", "Reject")]), "SendTargets=All on a normal session")
            }
            return out
        }
        var exchange = TextExchange()
        var stream = PDUStream(input)
        var assembled: [UInt8] = []
        var issuedTags: [UInt32] = []
        for _ in 0 ..< maxPDUs {
            guard let pdu = stream.next() else { break }
            guard pdu.opcode == ISCSIOpcode.textRequest else { continue }
            let req = TextRequest(isFinal: pdu.flags & 0x80 != 0, continueFlag: pdu.flags & 0x40 != 0, itt: pdu.itt,
                                  ttt: pdu.u32(20))
            // A request with TTT 0xffffffff starts a new exchange and abandons one whose answer was still
            // coming in continuation PDUs (RFC 7143 §11.10.4): what was assembled of that answer is dropped too.
            if req.ttt == reservedTag { assembled = [] }
            let outcome = pdu.data.withUnsafeBytes { exchange.receive(req, data: $0, env: env) }
            if let m = exchange.declaredMaxRecvDataSegmentLength {
                FuzzCheck.expect((ISCSILimits.minDataSegmentBytes ... ISCSILimits.maxDataSegmentBytes).contains(m),
                                 "declared MaxRecvDataSegmentLength \(m)")
                exchange.declaredMaxRecvDataSegmentLength = nil
            }
            guard case .respond(let r) = outcome else { assembled = []; continue }
            FuzzCheck.expect(r.itt == req.itt, "response to another task")
            FuzzCheck.expect(r.text.count <= max(ISCSILimits.minDataSegmentBytes, maxSend),
                             "\(r.text.count) bytes in one PDU, initiator takes \(maxSend)")
            FuzzCheck.expect(!(r.isFinal && r.continueFlag), "response with both F and C")
            FuzzCheck.expect(r.isFinal == (r.ttt == reservedTag), "F=\(r.isFinal) with TTT 0x\(String(r.ttt, radix: 16))")
            if r.ttt != reservedTag && !issuedTags.contains(r.ttt) { issuedTags.append(r.ttt) }
            assembled += r.text
            if !r.continueFlag {
                // The answer across its continuation PDUs is one well-formed text.
                TextKeyCheck.wellFormed(assembled, "text response", unique: false)
                assembled = []
            }
        }
    }
}
#endif
