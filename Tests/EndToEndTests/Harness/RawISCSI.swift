// A raw TCP client for feeding the target bytes no real initiator would send. Every read is bounded
// by a receive timeout, so a daemon that neither answers nor closes shows up as `.silent`.

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

final class RawConnection {
    private var fd: Int32
    /// How long the target gets to answer or close.
    static let answerTimeoutSeconds = 10

    init(_ endpoint: Endpoint) throws {
        fd = socket(endpoint.isIPv6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw E2EError("socket: errno \(errno)") }
        var tv = timeval(tv_sec: RawConnection.answerTimeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let rc = endpoint.connect(fd)
        guard rc == 0 else {
            let e = errno
            close(fd)
            throw E2EError("connect to \(endpoint): errno \(e)")
        }
    }

    deinit { if fd >= 0 { close(fd) } }

    /// Sends all bytes. A target that already closed may reset the connection; that is not an error here.
    func send(_ bytes: [UInt8]) {
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return }
            sent += n
        }
    }

    /// Closes our sending side, as a client that gave up mid-PDU would.
    func shutdownWrite() { shutdown(fd, Int32(SHUT_WR)) }

    /// Waits (bounded) for a 48-byte BHS, EOF or reset.
    func awaitOutcome() -> RawOutcome {
        var bhs = [UInt8](repeating: 0, count: 48)
        var got = 0
        while got < 48 {
            let n = bhs.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, 48 - got, 0) }
            if n == 0 { return .closed }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { return got > 0 ? .pdu(bhs) : .silent }
                return .closed   // ECONNRESET and friends: the target dropped us
            }
            got += n
        }
        return .pdu(bhs)
    }

    /// Exactly `count` bytes, or nil on EOF, reset or the time limit.
    func receive(exactly count: Int) -> [UInt8]? {
        var buf = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, count - got, 0) }
            if n == 0 { return nil }
            if n < 0 {
                if errno == EINTR { continue }
                return nil
            }
            got += n
        }
        return buf
    }

    /// After an answer, the connection must end too when the target rejected the login; reads data
    /// until EOF (bounded). Returns false if the target kept the connection open past the time limit.
    func drainUntilClosed(maxBytes: Int = 1 << 20) -> Bool {
        var buf = [UInt8](repeating: 0, count: 4096)
        var total = 0
        while total < maxBytes {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, 4096, 0) }
            if n == 0 { return true }
            if n < 0 {
                if errno == EINTR { continue }
                return !(errno == EAGAIN || errno == EWOULDBLOCK)
            }
            total += n
        }
        return false
    }
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
