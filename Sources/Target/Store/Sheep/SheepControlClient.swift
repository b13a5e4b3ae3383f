import CURing
import Glibc
import SheepProtocol

/// A blocking sheep client for the control plane only: opening a LUN (lookup, lock, inode read) and closing
/// it (release). Never used on a reactor core. Every call is bounded by socket timeouts.
final class SheepControlClient {
    static let ioTimeoutSeconds = 10
    static let connectTimeoutSeconds = 5

    let fd: Int32
    private var nextID: UInt32 = 1

    enum Failure: Error, CustomStringConvertible {
        case connect(String, Int32)
        case io(String, Int32)
        case closed(String)
        case protocolError(String)

        var description: String {
            switch self {
            case .connect(let what, let e): return "can't connect to sheep at \(what): \(String(cString: strerror(e)))"
            case .io(let what, let e): return "sheep \(what): \(String(cString: strerror(e)))"
            case .closed(let what): return "sheep closed the connection during \(what)"
            case .protocolError(let s): return "sheep protocol error: \(s)"
            }
        }
    }

    init(endpoint: SheepBackingSpec.Endpoint) throws(Failure) {
        let fd = try SheepSocket.connectBlocking(endpoint, timeoutSeconds: SheepControlClient.connectTimeoutSeconds)
        var tv = timeval(tv_sec: SheepControlClient.ioTimeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        self.fd = fd
    }

    deinit { close(fd) }

    /// Sends one request and reads its reply; `replyInto` receives up to its size of reply payload.
    func call(_ header: SheepRequestHeader, payload: [UInt8] = [], replyInto: UnsafeMutableRawBufferPointer? = nil)
        throws(Failure) -> (SheepResponseHeader, Int)
    {
        var h = header
        h.id = nextID
        nextID &+= 1
        var buf = [UInt8](repeating: 0, count: 48)
        buf.withUnsafeMutableBytes { h.encode(to: $0.baseAddress!) }
        try writeAll(buf + payload, what: h.opcode.name)
        let rbuf = UnsafeMutableRawPointer.allocate(byteCount: 48, alignment: 8)
        defer { rbuf.deallocate() }
        try readAll(rbuf, 48, what: h.opcode.name)
        let rsp = SheepResponseHeader(from: UnsafeRawPointer(rbuf))
        guard rsp.id == h.id else { throw .protocolError("reply id \(rsp.id) for request \(h.id)") }
        var got = 0
        var left = Int(rsp.dataLength)
        if let dst = replyInto, left > 0 {
            got = min(left, dst.count)
            try readAll(dst.baseAddress!, got, what: h.opcode.name)
            left -= got
        }
        if left > 0 {
            // Consume what does not fit so the stream stays in step.
            let sinkBytes = min(left, 65536)
            let sink = UnsafeMutableRawPointer.allocate(byteCount: sinkBytes, alignment: 8)
            defer { sink.deallocate() }
            while left > 0 {
                let n = min(left, sinkBytes)
                try readAll(sink, n, what: h.opcode.name)
                left -= n
            }
        }
        return (rsp, got)
    }

    private func writeAll(_ bytes: [UInt8], what: String) throws(Failure) {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 { if errno == EINTR { continue }; throw .io("send \(what)", errno) }
            off += n
        }
    }

    private func readAll(_ p: UnsafeMutableRawPointer, _ count: Int, what: String) throws(Failure) {
        var off = 0
        while off < count {
            let n = recv(fd, p + off, count - off, 0)
            if n == 0 { throw .closed(what) }
            if n < 0 { if errno == EINTR { continue }; throw .io("recv \(what)", errno) }
            off += n
        }
    }
}

enum SheepSocket {
    /// Connects to a sheep endpoint (unix socket path, or TCP host:port with TCP_NODELAY) within a time limit.
    static func connectBlocking(_ endpoint: SheepBackingSpec.Endpoint, timeoutSeconds: Int)
        throws(SheepControlClient.Failure) -> Int32
    {
        switch endpoint {
        case .unix(let path):
            let fd = socket(AF_UNIX, RT_SOCK_STREAM | RT_SOCK_CLOEXEC, 0)
            if fd < 0 { throw .connect(path, errno) }
            var a = sockaddr_un()
            a.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: a.sun_path) else { close(fd); throw .connect(path, ENAMETOOLONG) }
            withUnsafeMutableBytes(of: &a.sun_path) { p in
                for (i, b) in bytes.enumerated() { p[i] = b }
            }
            let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
            if rc != 0 { let e = errno; close(fd); throw .connect(path, e) }
            return fd
        case .tcp(let host, let port):
            var hints = addrinfo()
            hints.ai_socktype = RT_SOCK_STREAM
            var res: UnsafeMutablePointer<addrinfo>? = nil
            let rc = getaddrinfo(host, String(port), &hints, &res)
            if rc != 0 || res == nil { throw .connect("\(host):\(port)", EHOSTUNREACH) }
            defer { freeaddrinfo(res) }
            var lastErr: Int32 = ECONNREFUSED
            var ai = res
            while let a = ai {
                let fd = socket(a.pointee.ai_family, RT_SOCK_STREAM | RT_SOCK_CLOEXEC, 0)
                if fd >= 0 {
                    var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
                    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                    if Glibc.connect(fd, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0 {
                        var one: Int32 = 1
                        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(4))
                        return fd
                    }
                    lastErr = errno
                    close(fd)
                }
                ai = a.pointee.ai_next
            }
            throw .connect("\(host):\(port)", lastErr)
        }
    }
}
