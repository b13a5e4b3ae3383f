// Feeding the target bytes no real initiator would send, over the raw socket (RawSocket.swift): connections
// judged by what the target did with them, Login Request PDUs good and bad, and one framed PDU read back.
// Every read is bounded by a deadline, so a daemon that neither answers nor closes shows up as `.silent`.

import Foundation
import ISCSIWire
import Target
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// What the target did with a connection after the test's bytes.
public enum RawOutcome: CustomStringConvertible, Equatable {
    /// The target closed the connection (EOF), or reset it.
    case closed
    /// The target answered with a PDU; the 48-byte BHS.
    case pdu([UInt8])
    /// Neither an answer nor a close within the time limit.
    case silent

    public var description: String {
        switch self {
        case .closed: return "connection closed"
        case .silent: return "no answer and no close"
        case .pdu(let b):
            let op = b[0] & 0x3F
            let status = b.count >= 38 ? String(format: " status 0x%02x%02x", b[36], b[37]) : ""
            return String(format: "PDU opcode 0x%02x", op) + status
        }
    }

    public var opcode: UInt8? { if case .pdu(let b) = self { return b.withUnsafeBytes { BHS($0.baseAddress!).opcode } } else { return nil } }
    /// Login Response status class and detail (bytes 36 and 37).
    public var loginStatus: (cls: UInt8, detail: UInt8)? {
        if case .pdu(let b) = self, opcode == ISCSIOpcode.loginResponse { return (b[36], b[37]) }
        return nil
    }
    public static func == (a: RawOutcome, b: RawOutcome) -> Bool { a.description == b.description }
}

/// `RawSocket` seen as a test that feeds the target bad bytes sees it: sends that never fail, and one outcome
/// per wait, each bounded by `answerTimeoutSeconds`.
public final class RawConnection {
    public let socket: RawSocket
    /// How long the target gets to answer or close, by default.
    public static let answerTimeoutSeconds = 10
    /// This connection's bound on each wait.
    public let timeoutSeconds: Double

    public init(_ endpoint: Endpoint, timeoutSeconds: Double = Double(RawConnection.answerTimeoutSeconds),
         sourceAddress: String? = nil) throws {
        self.timeoutSeconds = timeoutSeconds
        socket = try RawSocket(endpoint, sourceAddress: sourceAddress, sendTimeoutSeconds: timeoutSeconds)
    }

    private var deadline: Double { monotonicSeconds() + timeoutSeconds }

    /// Sends all bytes. A target that already closed may reset the connection; that is not an error here.
    public func send(_ bytes: [UInt8]) { socket.sendIgnoringErrors(bytes) }

    /// Closes our sending side, as a client that gave up mid-PDU would.
    public func shutdownWrite() { shutdown(socket.fd, Int32(SHUT_WR)) }

    /// Waits (bounded) for a 48-byte BHS, EOF or reset.
    public func awaitOutcome() -> RawOutcome {
        switch socket.read(bhsBytes, deadline: deadline) {
        case .bytes(let b): return .pdu(b)
        case .closed: return .closed
        case .timeout: return .silent
        }
    }

    /// Exactly `count` bytes, or nil on EOF, reset or the time limit.
    public func receive(exactly count: Int) -> [UInt8]? {
        if case .bytes(let b) = socket.read(count, deadline: deadline) { return b }
        return nil
    }

    /// After an answer, the connection must end too when the target rejected the login; reads data
    /// until EOF (bounded). Returns false if the target kept the connection open past the time limit.
    public func drainUntilClosed() -> Bool { socket.awaitClose(deadline: deadline) }
}

/// Login Request PDUs (RFC 7143 §11.12), for building good and bad ones.
public enum LoginPDU {
    /// ISID: random-qualifier format (top bits 01, RFC 7143 §11.12.5), qualifier 1.
    public static let isid: UInt64 = 0x4000_0000_0001
    /// Login stages (CSG, NSG; §11.12.3).
    public static let securityStage: UInt8 = 0
    public static let operationalStage: UInt8 = 1
    public static let fullFeatureStage: UInt8 = 3

    /// A Login Request carrying `keys`, its data padded to 4 bytes. By default it transits from the
    /// operational stage to full feature phase; `transit` false stays in `csg`. `declaredDataSegmentLength`
    /// puts another length in the header than the data has.
    public static func request(keys: [TextKeyValue], transit: Bool = true, csg: UInt8 = LoginPDU.operationalStage,
                        nsg: UInt8 = LoginPDU.fullFeatureStage, isid: UInt64 = LoginPDU.isid, itt: UInt32 = 0, cmdSN: UInt32 = 1,
                        expStatSN: UInt32 = 0, declaredDataSegmentLength: Int? = nil) -> [UInt8] {
        let data = TextKeys.encode(keys)
        let bhs = rawHeader {
            InitiatorPDUBuild.loginRequest($0, transit: transit, csg: csg, nsg: nsg, isid: isid, itt: itt, cmdSN: cmdSN,
                                           expStatSN: expStatSN, dataLength: declaredDataSegmentLength ?? data.count)
        }
        return bhs + data + [UInt8](repeating: 0, count: Framing.padLength(data.count))
    }

    /// A Login Request naming only the initiator and the session, with Transit to Full Feature phase from
    /// operational negotiation. `target` nil: a discovery session.
    public static func request(initiator: String, target: String?, versionMax: UInt8 = 0, versionMin: UInt8 = 0,
                        declaredDataSegmentLength: Int? = nil) -> [UInt8] {
        let keys = target.map {
            [TextKeyValue("InitiatorName", initiator), TextKeyValue("SessionType", "Normal"), TextKeyValue("TargetName", $0)]
        } ?? [TextKeyValue("InitiatorName", initiator), TextKeyValue("SessionType", "Discovery")]
        var pdu = request(keys: keys, itt: 1, declaredDataSegmentLength: declaredDataSegmentLength)
        pdu[2] = versionMax
        pdu[3] = versionMin
        return pdu
    }
}

extension RawSocket {
    /// One PDU from the target, read by `deadline`: BHS and AHS, the header digest when `headerDigest`, the
    /// data segment (unpadded) and its digest when `dataDigest`. Throws when the target stops inside the PDU,
    /// sends more data than `maxDataSegmentBytes` or a digest that does not match.
    ///
    /// `strayDigests` is for a PDU that must carry no digests but that a target may send with them anyway:
    /// the final Login Response, which RFC 7143 §13.1 leaves without them (digests start in full feature
    /// phase; libiscsi and Linux read it without), but which ringtgtd once sent with the digests just
    /// negotiated (perf/README.md, "Findings"). After the header (and, when the header had one, after the
    /// data) the next 4 bytes are peeked at, waiting at most `RawSessionLimits.strayDigestWaitSeconds`; if
    /// they are the CRC32C of what precedes, they are consumed and the PDU's `hadStrayDigests` is set. After
    /// a header with a data segment the data is already there, so the check waits only when a response
    /// without data (or with a header digest) is the last thing the target sends before the initiator speaks.
    public func readPDU(deadline: Double, headerDigest: Bool = false, dataDigest: Bool = false,
                 maxDataSegmentBytes: Int = RawSessionLimits.defaultMaxRecvDataSegmentBytes,
                 strayDigests: (header: Bool, data: Bool) = (false, false)) throws -> RawEvent {
        let first: [UInt8]
        switch read(bhsBytes, deadline: deadline) {
        case .closed: return .closed
        case .timeout: return .timeout
        case .bytes(let b): first = b
        }
        var header = first
        let (opcode, ahs, dsl) = first.withUnsafeBytes { p -> (UInt8, Int, Int) in
            let b = BHS(p.baseAddress!)
            return (b.opcode, b.ahsBytes, b.dataSegmentLength)
        }
        if ahs > 0 {
            guard case .bytes(let b) = read(ahs, deadline: deadline) else {
                throw RawClientError("the target stopped inside a PDU's AHS")
            }
            header += b
        }
        /// Reads the digest after `covered` and checks it.
        func checkDigest(of covered: [UInt8], _ what: String) throws {
            guard case .bytes(let d) = read(Framing.digestBytes, deadline: deadline) else {
                throw RawClientError("the target stopped before a \(what) digest")
            }
            let got = rawDigest(d), want = CRC32C.checksum(covered)
            if got != want {
                throw RawClientError("the target sent a wrong \(what) digest " +
                                     String(format: "0x%08x (want 0x%08x) on opcode 0x%02x", got, want, opcode))
            }
        }
        /// Consumes a digest nobody negotiated when the next 4 bytes are the one of `covered`.
        func skipStrayDigest(of covered: [UInt8]) -> Bool {
            let wait = min(deadline, monotonicSeconds() + RawSessionLimits.strayDigestWaitSeconds)
            guard case .bytes(let d) = peek(Framing.digestBytes, deadline: wait),
                  rawDigest(d) == CRC32C.checksum(covered) else { return false }
            _ = read(Framing.digestBytes, deadline: deadline)
            return true
        }
        var stray = false
        if headerDigest {
            try checkDigest(of: header, "header")
        } else if strayDigests.header {
            stray = skipStrayDigest(of: header)
        }
        if dsl > maxDataSegmentBytes {
            throw RawClientError("the target sent \(dsl) data bytes in one PDU; we declared \(maxDataSegmentBytes)")
        }
        var data: [UInt8] = []
        if dsl > 0 {
            guard case .bytes(let d) = read(Framing.padded(dsl), deadline: deadline) else {
                throw RawClientError("the target stopped inside a \(dsl)-byte data segment")
            }
            if dataDigest {
                try checkDigest(of: d, "data")
            } else if strayDigests.data && (stray || !strayDigests.header) {
                stray = skipStrayDigest(of: d) || stray
            }
            data = Array(d[0..<dsl])
        }
        return .pdu(TargetPDU(header: header, data: data, hadStrayDigests: stray))
    }
}
