// Bytes no initiator should send, on raw TCP connections. The target must close that connection or
// answer with a Login reject / Reject, and go on serving everyone else.

import Foundation
import ISCSIWire
import Testing

extension EndToEnd {
    @Suite("Bad input on raw connections")
    struct BadInput {
        static let initiator = "iqn.2026-01.org.ringtgt:raw-client"

        /// An answer that ends a bad connection properly: a close, a Reject, or a failed Login Response.
        static func isRefusal(_ o: RawOutcome) -> Bool {
            switch o {
            case .closed: return true
            case .silent: return false
            case .pdu:
                if o.opcode == ISCSIOpcode.reject { return true }
                if let s = o.loginStatus { return s.cls != 0 }
                return false
            }
        }

        /// Discovery still works on a fresh connection, and the daemon is alive.
        static func expectStillServing(_ t: RunningTarget, after what: String) throws {
            try t.requireAlive("after \(what)")
            let ls = try t.tool("iscsi-ls", ["-s", t.endpoint.portalURL], timeoutSeconds: 30)
            #expect(ls.succeeded && ISCSILsListing(ls.stdout).target(t.iqn) != nil, "after \(what): \(ls)")
        }

        /// The raw Login builder is right: a well-formed login gets status 0x0000, so the refusals
        /// below are refusals of the bad field, not of a malformed test PDU.
        @Test func wellFormedRawLoginSucceeds() throws {
            try withTarget(luns: [.file(bytes: 16 * mebibyte)]) { t in
                let c = try RawConnection(t.endpoint)
                c.send(LoginPDU.request(initiator: BadInput.initiator, target: t.iqn))
                let o = c.awaitOutcome()
                #expect(o.loginStatus?.cls == 0 && o.loginStatus?.detail == 0, "good login: \(o)")
            }
        }

        @Test(arguments: ["http", "ones", "zeros"])
        func garbageIsRefused(kind: String) throws {
            let bytes: [UInt8]
            switch kind {
            case "http": bytes = Array("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: probe\r\n\r\n".utf8)
            case "ones": bytes = [UInt8](repeating: 0xFF, count: 256)
            default: bytes = [UInt8](repeating: 0, count: 96)
            }
            try withTarget(luns: [.file(bytes: 16 * mebibyte)]) { t in
                let c = try RawConnection(t.endpoint)
                c.send(bytes)
                let o = c.awaitOutcome()
                #expect(BadInput.isRefusal(o), "\(kind) garbage: \(o) within \(RawConnection.answerTimeoutSeconds) s")
                try BadInput.expectStillServing(t, after: "\(kind) garbage")
            }
        }

        /// Half a BHS: the target waits for the rest without stalling anyone else, and closes when the
        /// client goes away.
        @Test func truncatedBHSStallsNobody() throws {
            try withTarget(luns: [.file(bytes: 16 * mebibyte)]) { t in
                let c = try RawConnection(t.endpoint)
                c.send(Array(LoginPDU.request(initiator: BadInput.initiator, target: t.iqn).prefix(20)))
                try BadInput.expectStillServing(t, after: "a truncated BHS (connection still open)")
                c.shutdownWrite()
                let o = c.awaitOutcome()
                #expect(o == .closed || o.opcode == ISCSIOpcode.reject,
                        "truncated BHS then EOF: \(o) within \(RawConnection.answerTimeoutSeconds) s")
                try BadInput.expectStillServing(t, after: "a truncated BHS")
            }
        }

        /// A Login Request that declares 16 MiB of text (login allows 8 KiB) must be refused at once,
        /// not buffered.
        @Test func hugeDataSegmentLengthIsRefused() throws {
            try withTarget(luns: [.file(bytes: 16 * mebibyte)]) { t in
                let c = try RawConnection(t.endpoint)
                let pdu = LoginPDU.request(initiator: BadInput.initiator, target: t.iqn,
                                           declaredDataSegmentLength: 0xFF_FFFF)
                c.send(pdu)
                let o = c.awaitOutcome()
                #expect(BadInput.isRefusal(o), "DataSegmentLength 0xFFFFFF: \(o)")
                try BadInput.expectStillServing(t, after: "a huge DataSegmentLength")
            }
        }

        /// A login offering only version 0x7F gets Login Response 0x0205 "unsupported version"
        /// (RFC 7143 §11.13.5), or the connection is closed.
        @Test func unsupportedVersionIsRejected() throws {
            try withTarget(luns: [.file(bytes: 16 * mebibyte)]) { t in
                let c = try RawConnection(t.endpoint)
                c.send(LoginPDU.request(initiator: BadInput.initiator, target: t.iqn, versionMax: 0x7F, versionMin: 0x7F))
                let o = c.awaitOutcome()
                if let s = o.loginStatus {
                    #expect(s.cls == 0x02 && s.detail == 0x05, "unsupported version: \(o)")
                    #expect(c.drainUntilClosed(), "the target kept the connection open after rejecting the login")
                } else {
                    #expect(o == .closed, "unsupported version: \(o)")
                }
                try BadInput.expectStillServing(t, after: "a login with an unsupported version")
            }
        }
    }
}
