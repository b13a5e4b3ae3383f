// A small blocking sheep client: the dog-like CLI and the tests use it, against this server or a real sheep.
// It speaks only the public protocol (proto_ver 1, 512-byte name+tag lookups, WRITE flag on every payload).

#if canImport(Glibc)
import Glibc
#endif
import SheepProtocol

struct SheepReply {
    var header: SheepResponseHeader
    var data: [UInt8]
    var result: SheepResult { header.result }
}

enum SheepClientError: Error, CustomStringConvertible, Equatable {
    case connect(String)
    case io(String)
    case protocolViolation(String)
    case failed(SheepResult, String)

    var description: String {
        switch self {
        case .connect(let s): return "cannot connect to sheep: \(s)"
        case .io(let s): return "sheep connection: \(s)"
        case .protocolViolation(let s): return "sheep protocol: \(s)"
        case .failed(let r, let what): return "\(what): \(r.name)"
        }
    }
}

final class SheepClient {
    let fd: Int32
    private var nextID: UInt32 = 1

    init(endpoint: SheepBackingSpec.Endpoint) throws {
        fd = try Self.connect(endpoint)
    }

    deinit { close(fd) }

    static func connect(_ endpoint: SheepBackingSpec.Endpoint) throws -> Int32 {
        switch endpoint {
        case .unix(let path):
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
                throw SheepClientError.connect("unix socket path too long: \(path)")
            }
            withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            if fd < 0 { throw SheepClientError.connect("socket: \(errnoString())") }
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            if rc != 0 {
                let e = errnoString()
                close(fd)
                throw SheepClientError.connect("\(path): \(e)")
            }
            return fd
        case .tcp(let host, let port):
            var hints = addrinfo()
            hints.ai_family = AF_UNSPEC
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            hints.ai_flags = AI_NUMERICSERV
            var res: UnsafeMutablePointer<addrinfo>?
            let rc = getaddrinfo(host, String(port), &hints, &res)
            guard rc == 0 else {
                throw SheepClientError.connect("\(host): \(String(cString: gai_strerror(rc)))")
            }
            defer { freeaddrinfo(res) }
            var lastError = "no address"
            var ai = res
            while let a = ai {
                let fd = socket(a.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
                if fd >= 0 {
                    if Glibc.connect(fd, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0 {
                        setNoDelay(fd)
                        return fd
                    }
                    lastError = errnoString()
                    close(fd)
                }
                ai = a.pointee.ai_next
            }
            throw SheepClientError.connect("\(host):\(port): \(lastError)")
        }
    }

    func makeID() -> UInt32 {
        defer { nextID &+= 1 }
        return nextID
    }

    /// Sends a header and its payload in one write.
    func send(_ h: SheepRequestHeader, payload: [UInt8] = []) throws {
        var message = [UInt8](repeating: 0, count: SheepWire.headerSizeBytes + payload.count)
        message.withUnsafeMutableBytes { raw in
            h.encode(to: raw.baseAddress!)
            if !payload.isEmpty {
                payload.withUnsafeBytes { (raw.baseAddress! + SheepWire.headerSizeBytes).copyMemory(from: $0.baseAddress!, byteCount: payload.count) }
            }
        }
        do {
            try message.withUnsafeBytes { try writeAll(fd, $0.baseAddress!, $0.count) }
        } catch {
            throw SheepClientError.io("\(error)")
        }
    }

    /// Receives one reply (header + exactly `data_length` bytes).
    func receive() throws -> SheepReply {
        var head = [UInt8](repeating: 0, count: SheepWire.headerSizeBytes)
        let got = try head.withUnsafeMutableBytes { raw -> Bool in
            do { return try readExactly(fd, raw.baseAddress!, raw.count) } catch { throw SheepClientError.io("\(error)") }
        }
        guard got else { throw SheepClientError.io("connection closed by sheep") }
        let h = head.withUnsafeBytes { SheepResponseHeader(from: $0.baseAddress!) }
        var data = [UInt8](repeating: 0, count: Int(h.dataLength))
        if !data.isEmpty {
            let ok = try data.withUnsafeMutableBytes { raw -> Bool in
                do { return try readExactly(fd, raw.baseAddress!, raw.count) } catch { throw SheepClientError.io("\(error)") }
            }
            guard ok else { throw SheepClientError.io("connection closed mid-reply") }
        }
        return SheepReply(header: h, data: data)
    }

    /// One request, one reply (no other request in flight).
    func call(_ h: SheepRequestHeader, payload: [UInt8] = []) throws -> SheepReply {
        var h = h
        h.id = makeID()
        try send(h, payload: payload)
        let r = try receive()
        guard r.header.id == h.id else {
            throw SheepClientError.protocolViolation("reply id \(r.header.id) for request id \(h.id)")
        }
        return r
    }

    // MARK: - Operations

    func newVDI(name: String, size: UInt64, baseVID: UInt32 = 0, snapshot: Bool = false, copies: UInt8 = 0,
                copyPolicy: UInt8 = 0, storePolicy: UInt8 = 0, blockSizeShift: UInt8 = 0) throws -> SheepReply {
        let h = SheepRequestHeader.newVDI(id: 0, size: size, baseVID: baseVID, snapshot: snapshot, copies: copies,
                                          copyPolicy: copyPolicy, storePolicy: storePolicy,
                                          blockSizeShift: blockSizeShift)
        return try call(h, payload: try SheepVDIName.payload(name: name, includeTag: false))
    }

    /// GET_VDI_INFO / LOCK_VDI / DEL_VDI with the 512-byte name + tag payload.
    func lookup(_ opcode: SheepOpcode, name: String, tag: String = "", snapID: UInt32 = 0,
                lockType: SheepLockType = .normal) throws -> SheepReply {
        let h = SheepRequestHeader.vdiLookup(opcode, id: 0, snapID: snapID, lockType: lockType)
        return try call(h, payload: try SheepVDIName.payload(name: name, tag: tag))
    }

    /// The VID of a VDI, or a `.failed` error carrying NO_VDI / NO_TAG.
    func findVDI(name: String, tag: String = "", snapID: UInt32 = 0) throws -> UInt32 {
        let r = try lookup(.getVDIInfo, name: name, tag: tag, snapID: snapID)
        guard r.result == .success else { throw SheepClientError.failed(r.result, "looking up VDI \(name)") }
        return r.header.vdiID
    }

    func release(vid: UInt32, lockType: SheepLockType = .normal) throws -> SheepReply {
        try call(.releaseVDI(id: 0, vid: vid, lockType: lockType))
    }

    func readObject(_ oid: UInt64, offset: UInt32, length: UInt32) throws -> SheepReply {
        try call(.readObject(id: 0, oid: oid, offset: offset, length: length))
    }

    func writeObject(_ oid: UInt64, offset: UInt32, data: [UInt8], create: Bool = false,
                     cowOid: UInt64 = 0) throws -> SheepReply {
        let h = create
            ? SheepRequestHeader.createAndWrite(id: 0, oid: oid, cowOid: cowOid, offset: offset, length: UInt32(data.count))
            : SheepRequestHeader.writeObject(id: 0, oid: oid, offset: offset, length: UInt32(data.count))
        return try call(h, payload: data)
    }

    func readVDIBitmap() throws -> [UInt8] {
        let r = try call(.readVDIs(id: 0))
        guard r.result == .success else { throw SheepClientError.failed(r.result, "READ_VDIS") }
        return r.data
    }

    /// The inode header (and, with `withIndex`, the flat index: header + 4 MiB).
    func readInode(vid: UInt32, withIndex: Bool) throws -> SheepReply {
        let length = withIndex ? SheepInodeLayout.clientInodeSizeBytes : SheepInodeLayout.headerSizeBytes
        return try readObject(SheepOID.inode(vid: vid), offset: 0, length: UInt32(length))
    }
}
