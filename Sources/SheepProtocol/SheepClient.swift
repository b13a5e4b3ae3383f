// The one blocking sheep client: the store's control plane (open, lock, release), the dog-like CLI, the
// benchmark and the tests all use it, against the test server or a real sheep. It speaks only the public
// protocol (proto_ver 1, 512-byte name+tag lookups, WRITE flag on every payload). It blocks, so it never runs
// on a reactor core; every call is bounded by the socket timeouts its caller asks for.

#if canImport(Glibc)
import Glibc
#endif

public struct SheepReply {
    public var header: SheepResponseHeader
    public var data: [UInt8]
    public var result: SheepResult { header.result }
}

public enum SheepClientError: Error, CustomStringConvertible, Equatable {
    case connect(String)
    case io(String)
    case protocolViolation(String)
    case failed(SheepResult, String)

    public var description: String {
        switch self {
        case .connect(let s): return "cannot connect to sheep: \(s)"
        case .io(let s): return "sheep connection: \(s)"
        case .protocolViolation(let s): return "sheep protocol: \(s)"
        case .failed(let r, let what): return "\(what): \(r.name)"
        }
    }
}

/// A sheep endpoint resolved to a socket address, held by value so that the store's io_uring channels can
/// copy it into the buffer an IORING_OP_CONNECT reads, and the blocking client can connect(2) to it.
public struct SheepSocketAddress {
    public var storage = sockaddr_storage()
    public var length: socklen_t = 0
    public var family: Int32 { Int32(storage.ss_family) }

    /// unix:PATH gives one address; tcp:HOST:PORT gives every address getaddrinfo returns for HOST (IPv4 and
    /// IPv6), in its order. A numeric host never blocks; a name resolved at LUN open stays in the resolver's
    /// cache for the channels' reconnects.
    public static func resolve(_ endpoint: SheepBackingSpec.Endpoint) throws(SheepClientError) -> [SheepSocketAddress] {
        switch endpoint {
        case .unix(let path):
            var un = sockaddr_un()
            un.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: un.sun_path) else {
                throw .connect("unix socket path too long: \(path)")
            }
            withUnsafeMutableBytes(of: &un.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
            var a = SheepSocketAddress()
            withUnsafeMutableBytes(of: &a.storage) { dst in withUnsafeBytes(of: un) { dst.copyMemory(from: $0) } }
            a.length = socklen_t(MemoryLayout<sockaddr_un>.size)
            return [a]
        case .tcp(let host, let port):
            var hints = addrinfo()
            hints.ai_family = AF_UNSPEC
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            hints.ai_flags = AI_NUMERICSERV
            var res: UnsafeMutablePointer<addrinfo>?
            let rc = getaddrinfo(host, String(port), &hints, &res)
            guard rc == 0 else { throw .connect("\(host): \(String(cString: gai_strerror(rc)))") }
            defer { freeaddrinfo(res) }
            var out: [SheepSocketAddress] = []
            var ai = res
            while let p = ai {
                var a = SheepSocketAddress()
                let n = min(Int(p.pointee.ai_addrlen), MemoryLayout<sockaddr_storage>.size)
                withUnsafeMutableBytes(of: &a.storage) { $0.baseAddress!.copyMemory(from: p.pointee.ai_addr, byteCount: n) }
                a.length = socklen_t(n)
                out.append(a)
                ai = p.pointee.ai_next
            }
            guard !out.isEmpty else { throw .connect("\(host): no address") }
            return out
        }
    }

    public func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        withUnsafeBytes(of: storage) { body($0.baseAddress!.assumingMemoryBound(to: sockaddr.self), length) }
    }
}

public final class SheepClient {
    public let fd: Int32
    private var nextID: UInt32 = 1

    /// A timeout of 0 seconds waits forever (the socket default).
    public init(endpoint: SheepBackingSpec.Endpoint, connectTimeoutSeconds: Int = 0,
                ioTimeoutSeconds: Int = 0) throws(SheepClientError) {
        fd = try Self.connect(endpoint, timeoutSeconds: connectTimeoutSeconds)
        Self.setTimeout(fd, seconds: ioTimeoutSeconds)
    }

    deinit { close(fd) }

    /// A connected blocking socket (TCP_NODELAY on TCP), trying each resolved address in turn.
    public static func connect(_ endpoint: SheepBackingSpec.Endpoint,
                               timeoutSeconds: Int = 0) throws(SheepClientError) -> Int32 {
        var lastError = "no address"
        for a in try SheepSocketAddress.resolve(endpoint) {
            let fd = socket(a.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            if fd < 0 { lastError = "socket: \(String(cString: strerror(errno)))"; continue }
            setTimeout(fd, seconds: timeoutSeconds)
            if a.withSockaddr({ Glibc.connect(fd, $0, $1) }) == 0 {
                if a.family != AF_UNIX {
                    var one: Int32 = 1
                    _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
                }
                return fd
            }
            lastError = String(cString: strerror(errno))
            close(fd)
        }
        throw .connect("\(endpoint): \(lastError)")
    }

    private static func setTimeout(_ fd: Int32, seconds: Int) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    public func makeID() -> UInt32 {
        defer { nextID &+= 1 }
        return nextID
    }

    /// Sends a header and its payload in one write.
    public func send(_ h: SheepRequestHeader, payload: [UInt8] = []) throws(SheepClientError) {
        var message = h.bytes
        message.append(contentsOf: payload)
        var off = 0
        while off < message.count {
            let n = message.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 { if errno == EINTR { continue }; throw .io("send \(h.opcode.name): \(String(cString: strerror(errno)))") }
            off += n
        }
    }

    /// Receives one reply (header + exactly `data_length` bytes).
    public func receive() throws(SheepClientError) -> SheepReply {
        let h = try receiveHeader()
        var data = [UInt8](repeating: 0, count: Int(h.dataLength))
        let failure = data.withUnsafeMutableBytes { raw -> SheepClientError? in
            do throws(SheepClientError) { try readExactly(raw, what: "reply data"); return nil } catch { return error }
        }
        if let failure { throw failure }
        return SheepReply(header: h, data: data)
    }

    /// One request, one reply (no other request in flight).
    public func call(_ h: SheepRequestHeader, payload: [UInt8] = []) throws(SheepClientError) -> SheepReply {
        let id = try sendNumbered(h, payload: payload)
        let r = try receive()
        try checkID(r.header, id)
        return r
    }

    /// One request whose reply payload lands in `dst` (up to its size; the rest is read and dropped so the
    /// stream stays in step). Returns the reply header and the bytes placed in `dst`.
    public func call(_ h: SheepRequestHeader, payload: [UInt8] = [], replyInto dst: UnsafeMutableRawBufferPointer)
        throws(SheepClientError) -> (header: SheepResponseHeader, received: Int)
    {
        let id = try sendNumbered(h, payload: payload)
        let rsp = try receiveHeader()
        try checkID(rsp, id)
        let got = min(Int(rsp.dataLength), dst.count)
        try readExactly(UnsafeMutableRawBufferPointer(rebasing: dst[0..<got]), what: "reply data")
        var left = Int(rsp.dataLength) - got
        if left > 0 {
            let sink = UnsafeMutableRawBufferPointer.allocate(byteCount: min(left, Self.discardChunkBytes), alignment: 8)
            defer { sink.deallocate() }
            while left > 0 {
                let n = min(left, sink.count)
                try readExactly(UnsafeMutableRawBufferPointer(rebasing: sink[0..<n]), what: "reply data")
                left -= n
            }
        }
        return (rsp, got)
    }

    /// Reply bytes beyond what a caller wants are drained through a buffer of this size.
    static let discardChunkBytes = 65536

    private func sendNumbered(_ h: SheepRequestHeader, payload: [UInt8]) throws(SheepClientError) -> UInt32 {
        var h = h
        h.id = makeID()
        try send(h, payload: payload)
        return h.id
    }

    private func checkID(_ rsp: SheepResponseHeader, _ id: UInt32) throws(SheepClientError) {
        guard rsp.id == id else { throw .protocolViolation("reply id \(rsp.id) for request id \(id)") }
    }

    private func receiveHeader() throws(SheepClientError) -> SheepResponseHeader {
        let raw = UnsafeMutableRawBufferPointer.allocate(byteCount: SheepWire.headerSizeBytes, alignment: 8)
        defer { raw.deallocate() }
        try readExactly(raw, what: "reply header")
        return SheepResponseHeader(from: UnsafeRawPointer(raw.baseAddress!))
    }

    private func readExactly(_ raw: UnsafeMutableRawBufferPointer, what: String) throws(SheepClientError) {
        var off = 0
        while off < raw.count {
            let n = recv(fd, raw.baseAddress! + off, raw.count - off, 0)
            if n == 0 { throw .io("connection closed by sheep during \(what)") }
            if n < 0 { if errno == EINTR { continue }; throw .io("recv \(what): \(String(cString: strerror(errno)))") }
            off += n
        }
    }

    // MARK: - Operations

    public func newVDI(name: String, size: UInt64, baseVID: UInt32 = 0, snapshot: Bool = false, copies: UInt8 = 0,
                       copyPolicy: UInt8 = 0, storePolicy: UInt8 = 0, blockSizeShift: UInt8 = 0) throws -> SheepReply {
        let h = SheepRequestHeader.newVDI(id: 0, size: size, baseVID: baseVID, snapshot: snapshot, copies: copies,
                                          copyPolicy: copyPolicy, storePolicy: storePolicy,
                                          blockSizeShift: blockSizeShift)
        return try call(h, payload: try SheepVDIName.payload(name: name, includeTag: false))
    }

    /// GET_VDI_INFO / LOCK_VDI / DEL_VDI with the 512-byte name + tag payload.
    public func lookup(_ opcode: SheepOpcode, name: String, tag: String = "", snapID: UInt32 = 0,
                       lockType: SheepLockType = .normal) throws -> SheepReply {
        let h = SheepRequestHeader.vdiLookup(opcode, id: 0, snapID: snapID, lockType: lockType)
        return try call(h, payload: try SheepVDIName.payload(name: name, tag: tag))
    }

    /// The VID of a VDI, or a `.failed` error carrying NO_VDI / NO_TAG.
    public func findVDI(name: String, tag: String = "", snapID: UInt32 = 0) throws -> UInt32 {
        let r = try lookup(.getVDIInfo, name: name, tag: tag, snapID: snapID)
        guard r.result == .success else { throw SheepClientError.failed(r.result, "looking up VDI \(name)") }
        return r.header.vdiID
    }

    public func release(vid: UInt32, lockType: SheepLockType = .normal) throws(SheepClientError) -> SheepReply {
        try call(.releaseVDI(id: 0, vid: vid, lockType: lockType))
    }

    public func readObject(_ oid: UInt64, offset: UInt32, length: UInt32) throws(SheepClientError) -> SheepReply {
        try call(.readObject(id: 0, oid: oid, offset: offset, length: length))
    }

    public func writeObject(_ oid: UInt64, offset: UInt32, data: [UInt8], create: Bool = false,
                            cowOid: UInt64 = 0) throws(SheepClientError) -> SheepReply {
        let h = create
            ? SheepRequestHeader.createAndWrite(id: 0, oid: oid, cowOid: cowOid, offset: offset, length: UInt32(data.count))
            : SheepRequestHeader.writeObject(id: 0, oid: oid, offset: offset, length: UInt32(data.count))
        return try call(h, payload: data)
    }

    public func readVDIBitmap() throws(SheepClientError) -> [UInt8] {
        let r = try call(.readVDIs(id: 0))
        guard r.result == .success else { throw .failed(r.result, "READ_VDIS") }
        return r.data
    }

    /// The inode header (and, with `withIndex`, the flat index: header + 4 MiB).
    public func readInode(vid: UInt32, withIndex: Bool) throws(SheepClientError) -> SheepReply {
        let length = withIndex ? SheepInodeLayout.clientInodeSizeBytes : SheepInodeLayout.headerSizeBytes
        return try readObject(SheepOID.inode(vid: vid), offset: 0, length: UInt32(length))
    }
}
