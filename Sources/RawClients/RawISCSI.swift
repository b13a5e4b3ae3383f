// Feeding the target bytes no real initiator would send, over the raw session's socket (RawISCSISession.swift).
// Every read is bounded by a deadline, so a daemon that neither answers nor closes shows up as `.silent`.

import Foundation
import Target
#if canImport(Glibc)
import Glibc
#endif

/// What the target did with a connection after the test's bytes.
enum RawOutcome: CustomStringConvertible, Equatable {
    /// The target closed the connection (EOF), or reset it.
    case closed
    /// The target answered with a PDU; the 48-byte BHS.
    case pdu([UInt8])
    /// Neither an answer nor a close within the time limit.
    case silent

    var description: String {
        switch self {
        case .closed: return "connection closed"
        case .silent: return "no answer and no close"
        case .pdu(let b):
            let op = b[0] & 0x3F
            let status = b.count >= 38 ? String(format: " status 0x%02x%02x", b[36], b[37]) : ""
            return String(format: "PDU opcode 0x%02x", op) + status
        }
    }

    var opcode: UInt8? { if case .pdu(let b) = self { return b.withUnsafeBytes { BHS($0.baseAddress!).opcode } } else { return nil } }
    /// Login Response status class and detail (bytes 36 and 37).
    var loginStatus: (cls: UInt8, detail: UInt8)? {
        if case .pdu(let b) = self, opcode == ISCSIOpcode.loginResponse { return (b[36], b[37]) }
        return nil
    }
    static func == (a: RawOutcome, b: RawOutcome) -> Bool { a.description == b.description }
}

/// `RawSocket` seen as a test that feeds the target bad bytes sees it: sends that never fail, and one outcome
/// per wait, each bounded by `answerTimeoutSeconds`.
final class RawConnection {
    let socket: RawSocket
    /// How long the target gets to answer or close.
    static let answerTimeoutSeconds = 10

    init(_ endpoint: Endpoint) throws { socket = try RawSocket(endpoint) }

    private var deadline: Double { monotonicSeconds() + Double(RawConnection.answerTimeoutSeconds) }

    /// Sends all bytes. A target that already closed may reset the connection; that is not an error here.
    func send(_ bytes: [UInt8]) { socket.sendIgnoringErrors(bytes) }

    /// Closes our sending side, as a client that gave up mid-PDU would.
    func shutdownWrite() { shutdown(socket.fd, Int32(SHUT_WR)) }

    /// Waits (bounded) for a 48-byte BHS, EOF or reset.
    func awaitOutcome() -> RawOutcome {
        switch socket.read(bhsBytes, deadline: deadline) {
        case .bytes(let b): return .pdu(b)
        case .closed: return .closed
        case .timeout: return .silent
        }
    }

    /// Exactly `count` bytes, or nil on EOF, reset or the time limit.
    func receive(exactly count: Int) -> [UInt8]? {
        if case .bytes(let b) = socket.read(count, deadline: deadline) { return b }
        return nil
    }

    /// After an answer, the connection must end too when the target rejected the login; reads data
    /// until EOF (bounded). Returns false if the target kept the connection open past the time limit.
    func drainUntilClosed() -> Bool { socket.awaitClose(deadline: deadline) }
}

/// Login Request PDUs (RFC 7143 §11.12), for building good and bad ones.
enum LoginPDU {
    /// A Login Request with Transit to Full Feature phase from operational negotiation. `target` nil: a
    /// discovery session.
    static func request(initiator: String, target: String?, versionMax: UInt8 = 0, versionMin: UInt8 = 0,
                        declaredDataSegmentLength: Int? = nil) -> [UInt8] {
        let text = target.map { "InitiatorName=\(initiator)\0SessionType=Normal\0TargetName=\($0)\0" }
            ?? "InitiatorName=\(initiator)\0SessionType=Discovery\0"
        var data = Array(text.utf8)
        let dsl = declaredDataSegmentLength ?? data.count
        // Transit from the operational stage to full feature phase; ISID: random-qualifier format, qualifier 1.
        var bhs = rawHeader {
            InitiatorPDUBuild.loginRequest($0, transit: true, csg: 1, nsg: 3, isid: 0x4000_0000_0001, itt: 1, cmdSN: 1,
                                           expStatSN: 0, dataLength: dsl)
        }
        bhs[2] = versionMax
        bhs[3] = versionMin
        while data.count % 4 != 0 { data.append(0) }
        return bhs + data
    }
}
