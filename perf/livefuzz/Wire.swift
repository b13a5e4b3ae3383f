// Blocking loopback sockets with deadlines, and the valid halves of the conversations the fuzzer mutates: an
// iSCSI login straight to full feature phase, SCSI commands, and the NBD fixed-newstyle handshake.
import Foundation
import ISCSIWire
import Target
#if canImport(Glibc)
import Glibc
#endif

final class TCPSocket {
    let fd: Int32
    private init(fd: Int32) { self.fd = fd }

    /// Connects to 127.0.0.1:port, from `source` (another loopback address keeps the probes apart from the
    /// fuzzed connections' per-address accounting). Every later send and recv is bounded by `timeoutSeconds`.
    static func connect(port: Int, source: String? = nil, timeoutSeconds: Double) throws -> TCPSocket {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw FuzzError("socket: \(String(cString: strerror(errno)))") }
        let s = TCPSocket(fd: fd)
        var tv = timeval(tv_sec: Int(timeoutSeconds), tv_usec: Int((timeoutSeconds - Double(Int(timeoutSeconds))) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        if let source {
            var a = loopback(source, port: 0)
            let rc = withUnsafePointer(to: &a) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            if rc != 0 { s.close(); throw FuzzError("bind \(source): \(String(cString: strerror(errno)))") }
        }
        var a = loopback("127.0.0.1", port: port)
        let rc = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if rc != 0 { s.close(); throw FuzzError("connect :\(port): \(String(cString: strerror(errno)))") }
        return s
    }

    func close() { _ = Glibc.close(fd) }

    func send(_ bytes: [UInt8]) throws {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { throw FuzzError("send: \(n == 0 ? "closed" : String(cString: strerror(errno)))") }
            off += n
        }
    }

    /// Up to `max` bytes; empty at end of stream; throws on timeout or error.
    func recvSome(_ max: Int) throws -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: max)
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, max, 0) }
        if n < 0 { throw FuzzError("recv: \(String(cString: strerror(errno)))") }
        return Array(buf.prefix(n))
    }

    func recvExactly(_ count: Int) throws -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        while out.count < count {
            let c = try recvSome(count - out.count)
            if c.isEmpty { throw FuzzError("connection closed after \(out.count) of \(count) bytes") }
            out += c
        }
        return out
    }

    /// Reads and discards whatever the peer sends for up to `milliseconds`; false once the peer closed.
    func drain(milliseconds: Int) -> Bool {
        let end = DispatchTime.now().uptimeNanoseconds + UInt64(milliseconds) * 1_000_000
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let now = DispatchTime.now().uptimeNanoseconds
            if now >= end { return true }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, Int32((end - now) / 1_000_000) + 1)
            if r <= 0 { return true }
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, 65536, Int32(MSG_DONTWAIT)) }
            if n == 0 { return false }
            if n < 0 && errno != EAGAIN && errno != EINTR { return false }
        }
    }
}

func loopback(_ address: String, port: Int) -> sockaddr_in {
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_port = UInt16(port).bigEndian
    a.sin_addr.s_addr = inet_addr(address)
    return a
}

// MARK: - iSCSI

/// One PDU as bytes: a header written by `build`, then the data segment padded to 4 bytes.
func pdu(data: [UInt8] = [], _ build: (UnsafeMutableRawPointer) -> Void) -> [UInt8] {
    var b = [UInt8](repeating: 0, count: bhsBytes + Framing.padded(data.count))
    b.withUnsafeMutableBytes { build($0.baseAddress!) }
    for (i, x) in data.enumerated() { b[bhsBytes + i] = x }
    return b
}

func textKeys(_ pairs: [(String, String)]) -> [UInt8] {
    var out: [UInt8] = []
    for (k, v) in pairs { out += Array("\(k)=\(v)".utf8) + [0] }
    return out
}

struct ISCSIResponse {
    var header: [UInt8]
    var data: [UInt8]
    var opcode: UInt8 { header.withUnsafeBytes { BHS($0.baseAddress!).opcode } }
    var byte1: UInt8 { header.withUnsafeBytes { BHS($0.baseAddress!).byte1 } }
    func u32(_ o: Int) -> UInt32 { header.withUnsafeBytes { BHS($0.baseAddress!).u32(o) } }
    func u16(_ o: Int) -> UInt16 { header.withUnsafeBytes { BHS($0.baseAddress!).u16(o) } }
}

func readPDU(_ s: TCPSocket) throws -> ISCSIResponse {
    let h = try s.recvExactly(bhsBytes)
    let (ahs, dlen) = h.withUnsafeBytes { (BHS($0.baseAddress!).ahsBytes, BHS($0.baseAddress!).dataSegmentLength) }
    let rest = try s.recvExactly(ahs + Framing.padded(dlen))
    return ISCSIResponse(header: h, data: Array(rest[ahs..<(ahs + dlen)]))
}

/// A logged-in iSCSI session: the numbers the next command needs.
struct ISCSISession {
    let socket: TCPSocket
    var cmdSN: UInt32
    var expStatSN: UInt32
    var itt: UInt32 = 1
    static let isid: UInt64 = 0x8000_0000_0001
    /// Login stages (CSG, NSG; RFC 7143 §11.12.3), the Login Response's status field, and the Data-In S bit.
    static let operationalStage: UInt8 = 1
    static let fullFeatureStage: UInt8 = 3
    static let loginStatusOffset = 36
    static let dataInStatusFlag: UInt8 = 0x01
    static let statusOffset = 3

    /// The login PDUs a normal session sends: operational negotiation only, asking for full feature phase.
    static func loginRequest(itt: UInt32 = 0, cmdSN: UInt32 = 1, initiator: String = FuzzLimits.initiator) -> [UInt8] {
        let keys = textKeys([("InitiatorName", initiator), ("TargetName", FuzzLimits.iqn),
                             ("SessionType", "Normal"), ("HeaderDigest", "None"), ("DataDigest", "None"),
                             ("MaxRecvDataSegmentLength", "65536"), ("ImmediateData", "Yes"), ("InitialR2T", "Yes"),
                             ("MaxBurstLength", "262144"), ("FirstBurstLength", "65536")])
        return pdu(data: keys) {
            InitiatorPDUBuild.loginRequest($0, transit: true, csg: operationalStage, nsg: fullFeatureStage, isid: isid,
                                           itt: itt, cmdSN: cmdSN, expStatSN: 0, dataLength: keys.count)
        }
    }

    /// Logs in, bounded by the socket's timeout; throws unless the target reaches full feature phase. Sessions
    /// that must coexist need different initiator names: the same name and ISID reinstate (close) the other.
    static func login(port: Int, source: String? = nil, initiator: String = FuzzLimits.initiator,
                      timeoutSeconds: Double) throws -> ISCSISession {
        let s = try TCPSocket.connect(port: port, source: source, timeoutSeconds: timeoutSeconds)
        do {
            try s.send(loginRequest(initiator: initiator))
            var round = 0
            while true {
                let r = try readPDU(s)
                guard r.opcode == ISCSIOpcode.loginResponse else { throw FuzzError("login answered with opcode \(r.opcode)") }
                let status = r.u16(loginStatusOffset)
                if status != LoginStatus.success.rawValue { throw FuzzError("login refused: status 0x\(String(status, radix: 16))") }
                if r.byte1 & LoginFlags.transit != 0 && r.byte1 & LoginFlags.stageMask == fullFeatureStage {
                    return ISCSISession(socket: s, cmdSN: r.u32(28), expStatSN: r.u32(24) &+ 1)
                }
                round += 1
                if round > 4 { throw FuzzError("login did not reach full feature phase") }
                let again = pdu {
                    InitiatorPDUBuild.loginRequest($0, transit: true, csg: operationalStage, nsg: fullFeatureStage,
                                                   isid: isid, itt: 0, cmdSN: 1, expStatSN: r.u32(24) &+ 1, dataLength: 0)
                }
                try s.send(again)
            }
        } catch {
            s.close()
            throw error
        }
    }

    /// A SCSI command PDU (READ direction unless `writeData` is given, which goes as immediate data).
    mutating func command(cdb: [UInt8], lun: UInt64 = 1, expectedLength: Int, writeData: [UInt8]? = nil) -> [UInt8] {
        let data = writeData ?? []
        let sn = cmdSN, tag = itt
        let p = pdu(data: data) { h in
            InitiatorPDUBuild.scsiCommand(h, read: writeData == nil && expectedLength > 0, write: writeData != nil, final: true,
                                          lunField: encodeLUN(lun), itt: tag, expectedLength: UInt32(expectedLength),
                                          cmdSN: sn, expStatSN: expStatSN, immediateLength: data.count)
            for (i, b) in cdb.prefix(16).enumerated() { h.storeBytes(of: b, toByteOffset: 32 + i, as: UInt8.self) }
        }
        cmdSN &+= 1
        itt &+= 1
        return p
    }

    /// Sends one command and reads until its SCSI Response; returns the status byte and the Data-In bytes.
    mutating func run(cdb: [UInt8], lun: UInt64 = 1, expectedLength: Int) throws -> (status: UInt8, data: [UInt8]) {
        let tag = itt
        try socket.send(command(cdb: cdb, lun: lun, expectedLength: expectedLength))
        var data: [UInt8] = []
        while true {
            let r = try readPDU(socket)
            if r.opcode == ISCSIOpcode.nopIn && r.u32(20) != reservedTag {
                // The target's ping: answer it, as a live initiator does.
                try socket.send(pdu { InitiatorPDUBuild.nopOutReply($0, lunField: 0, ttt: r.u32(20), cmdSN: cmdSN, expStatSN: expStatSN) })
                continue
            }
            guard r.u32(16) == tag else { continue }
            if r.opcode == ISCSIOpcode.dataIn {
                data += r.data
                if r.byte1 & Self.dataInStatusFlag != 0 {
                    expStatSN = r.u32(24) &+ 1
                    return (r.header[Self.statusOffset], data)
                }
            } else if r.opcode == ISCSIOpcode.scsiResponse {
                expStatSN = r.u32(24) &+ 1
                return (r.header[Self.statusOffset], data)
            } else if r.opcode == ISCSIOpcode.reject {
                throw FuzzError("command rejected")
            }
        }
    }
}

enum CDB {
    static func inquiry(_ length: Int = 96) -> [UInt8] { [0x12, 0, 0, UInt8(length >> 8), UInt8(length & 0xff), 0] }
    static func read10(lba: UInt32, blocks: UInt16) -> [UInt8] {
        [0x28, 0, UInt8(lba >> 24), UInt8(lba >> 16 & 0xff), UInt8(lba >> 8 & 0xff), UInt8(lba & 0xff), 0,
         UInt8(blocks >> 8), UInt8(blocks & 0xff), 0]
    }
    static func write10(lba: UInt32, blocks: UInt16) -> [UInt8] {
        var c = read10(lba: lba, blocks: blocks)
        c[0] = 0x2a
        return c
    }
}

// MARK: - NBD (the target's own wire vocabulary, Target's NBDWire)

enum NBD {
    /// NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES.
    static let clientFlags = be(UInt64(NBDWire.clientFixedNewstyle | NBDWire.clientNoZeroes), NBDWire.clientFlagsBytes)

    static func be(_ v: UInt64, _ bytes: Int) -> [UInt8] { (0..<bytes).map { UInt8(v >> UInt64(8 * (bytes - 1 - $0)) & 0xff) } }

    /// NBD_OPT_EXPORT_NAME with the empty name (the first LUN).
    static func exportNameOption(_ name: String = "") -> [UInt8] {
        be(NBDWire.optionMagic, 8) + be(UInt64(NBDWire.optExportName), 4) + be(UInt64(name.utf8.count), 4) + Array(name.utf8)
    }

    static func request(type: UInt16, flags: UInt16 = 0, handle: UInt64, offset: UInt64, length: UInt32) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: NBDWire.requestBytes)
        b.withUnsafeMutableBytes {
            NBDRequestHeader(flags: flags, type: type, cookie: handle, offset: offset, length: length).encode(to: $0.baseAddress!)
        }
        return b
    }

    /// Greeting, client flags and NBD_OPT_EXPORT_NAME; returns the export size.
    static func handshake(_ s: TCPSocket) throws -> UInt64 {
        let greeting = try s.recvExactly(NBDWire.greetingBytes)
        guard greeting.withUnsafeBytes({ be64($0.baseAddress!, 0) }) == NBDWire.initMagic else {
            throw FuzzError("bad NBD greeting")
        }
        try s.send(clientFlags + exportNameOption())
        let r = try s.recvExactly(NBDWire.exportNameReplyBytes)
        return r.withUnsafeBytes { be64($0.baseAddress!, 0) }
    }

    /// A read of `length` bytes at `offset`: must come back with error 0 and the data.
    static func read(_ s: TCPSocket, offset: UInt64, length: UInt32, handle: UInt64) throws {
        try s.send(request(type: NBDWire.cmdRead, handle: handle, offset: offset, length: length))
        let r = try s.recvExactly(NBDWire.simpleReplyBytes)
        let (magic, err) = r.withUnsafeBytes { (be32($0.baseAddress!, 0), be32($0.baseAddress!, 4)) }
        guard magic == NBDWire.simpleReplyMagic, err == 0 else {
            throw FuzzError("NBD read answered magic \(magic) error \(err)")
        }
        _ = try s.recvExactly(Int(length))
    }
}
