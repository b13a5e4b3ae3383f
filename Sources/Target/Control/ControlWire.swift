// Framing of the control socket: each message is a 4-byte big-endian length followed by that many bytes
// of JSON (AdminRequest from ringtgtadm, AdminResponse from the daemon). One request per connection.
// The control plane is not the I/O path, so Foundation's JSON coding is fine here.

#if canImport(Glibc)
import Glibc
#endif
import Foundation

public enum ControlWire {
    /// Largest request the daemon reads (tgt's MAX_MGT_BUFSIZE is 8 KiB; JSON field names cost more).
    public static let maxRequestBytes = 64 * 1024
    /// Largest response ringtgtadm reads: `show` of many targets and LUNs.
    public static let maxResponseBytes = 64 * 1024 * 1024
    public static let lengthPrefixBytes = 4
    /// A peer that stalls longer than this on the control socket is dropped.
    public static let ioTimeoutSeconds = 10

    enum Failure: Error, Equatable {
        case closed            // the peer closed before a whole message
        case tooLarge(Int)
        case system(Int32)     // errno
    }

    static func setTimeouts(_ fd: Int32, seconds: Int) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws(Failure) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { raw in
                send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw .system(errno)
            }
            offset += n
        }
    }

    static func readExactly(_ fd: Int32, _ count: Int) throws(Failure) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: count)
        var offset = 0
        while offset < count {
            let n = buffer.withUnsafeMutableBytes { raw in
                recv(fd, raw.baseAddress! + offset, count - offset, 0)
            }
            if n == 0 { throw .closed }
            if n < 0 {
                if errno == EINTR { continue }
                throw .system(errno)
            }
            offset += n
        }
        return buffer
    }

    static func writeMessage(_ fd: Int32, _ payload: [UInt8]) throws(Failure) {
        let length = UInt32(truncatingIfNeeded: payload.count)
        var framed: [UInt8] = [UInt8(length >> 24), UInt8((length >> 16) & 0xFF), UInt8((length >> 8) & 0xFF), UInt8(length & 0xFF)]
        framed.append(contentsOf: payload)
        try writeAll(fd, framed)
    }

    /// Reads one framed message; a length above `limit` is refused before anything is allocated for it.
    static func readMessage(_ fd: Int32, limit: Int) throws(Failure) -> [UInt8] {
        let header = try readExactly(fd, lengthPrefixBytes)
        let length = Int(header[0]) << 24 | Int(header[1]) << 16 | Int(header[2]) << 8 | Int(header[3])
        guard length <= limit else { throw .tooLarge(length) }
        return try readExactly(fd, length)
    }

    /// Fills a sockaddr_un; nil when the path does not fit sun_path.
    static func address(_ path: String) -> sockaddr_un? {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity else { return nil }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        return addr
    }

    static func connect(_ fd: Int32, _ addr: sockaddr_un) -> Int32 {
        var a = addr
        return withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
    }
}

/// ringtgtadm's side of the control socket.
public enum ControlClient {
    public struct Failure: Error, Equatable {
        /// The errno ringtgtadm exits with (tgtadm exits with the errno of a failed connection).
        public var errorNumber: Int32
        public var message: String
    }

    public static func send(_ request: AdminRequest, to path: String) -> Result<AdminResponse, Failure> {
        guard let addr = ControlWire.address(path) else {
            return .failure(Failure(errorNumber: EINVAL, message: "management path too long: \(path)"))
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { return .failure(Failure(errorNumber: errno, message: "can't create a socket, \(errorText(errno))")) }
        defer { close(fd) }
        if ControlWire.connect(fd, addr) != 0 {
            // tgtadm ignores the failed connect and reports the write that follows on the unconnected socket:
            // whatever the cause (no socket file, a dead daemon's socket), the words and exit status are these.
            return .failure(daemonDown)
        }
        ControlWire.setTimeouts(fd, seconds: ControlWire.ioTimeoutSeconds * 6)
        do {
            let payload = try JSONEncoder().encode(request)
            try ControlWire.writeMessage(fd, Array(payload))
            let reply = try ControlWire.readMessage(fd, limit: ControlWire.maxResponseBytes)
            return .success(try JSONDecoder().decode(AdminResponse.self, from: Data(reply)))
        } catch let f as ControlWire.Failure {
            switch f {
            case .closed: return .failure(Failure(errorNumber: EPIPE, message: "ringtgtd closed the socket"))
            case .tooLarge(let n): return .failure(Failure(errorNumber: EMSGSIZE, message: "response of \(n) bytes is too large"))
            case .system(let e): return .failure(Failure(errorNumber: e, message: "can't get the response, \(errorText(e))"))
            }
        } catch {
            return .failure(Failure(errorNumber: EPROTO, message: "malformed response from ringtgtd"))
        }
    }

    static func errorText(_ e: Int32) -> String { String(cString: strerror(e)) }

    /// tgtadm's answer when no daemon listens: exit status 107 (ENOTCONN) and this line.
    public static let daemonDown = Failure(
        errorNumber: ENOTCONN, message: "failed to send request hdr to tgt daemon, \(errorText(ENOTCONN))")

    /// Polling interval and bound for `--op delete --mode system`, which returns once the daemon is gone.
    public static let shutdownPollMilliseconds: UInt32 = 100
    public static let shutdownWaitSeconds = 60

    /// After a successful `--op delete --mode system`: waits (bounded) until the daemon has removed its
    /// socket, the last step of its shutdown (tgtadm waits until connecting is refused). Returns whether it did.
    public static func waitUntilGone(_ path: String, timeoutSeconds: Int = shutdownWaitSeconds) -> Bool {
        let attempts = timeoutSeconds * 1000 / Int(shutdownPollMilliseconds)
        for _ in 0..<max(1, attempts) {
            if access(path, F_OK) != 0 && errno == ENOENT { return true }
            usleep(shutdownPollMilliseconds * 1000)
        }
        return false
    }
}
