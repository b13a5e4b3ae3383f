// Session setup on a plain blocking socket: TCP connect, login with key negotiation (RFC 7143 §6, §13),
// and READ CAPACITY(16). None of this is on the I/O path, so it favours clarity over speed; once a session
// is in full feature phase its socket is handed to a worker's ring.
import Glibc
import Target

/// `iscsi://HOST[:PORT]/IQN/LUN`.
struct TargetURL: CustomStringConvertible {
    var host: String
    var port: UInt16
    var iqn: String
    var lun: UInt64
    static let defaultPort: UInt16 = 3260

    static func parse(_ s: String) -> TargetURL? {
        guard s.hasPrefix("iscsi://") else { return nil }
        let rest = s.dropFirst("iscsi://".count)
        let parts = rest.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 3, let lun = UInt64(parts[2]), !parts[1].isEmpty else { return nil }
        var hostPort = String(parts[0])
        var port = defaultPort
        if hostPort.hasPrefix("[") {
            guard let close = hostPort.firstIndex(of: "]") else { return nil }
            let after = hostPort[hostPort.index(after: close)...]
            if after.hasPrefix(":") { guard let p = UInt16(after.dropFirst()) else { return nil }; port = p }
            hostPort = String(hostPort[hostPort.index(after: hostPort.startIndex)..<close])
        } else if let colon = hostPort.lastIndex(of: ":") {
            guard let p = UInt16(hostPort[hostPort.index(after: colon)...]) else { return nil }
            port = p
            hostPort = String(hostPort[..<colon])
        }
        return TargetURL(host: hostPort, port: port, iqn: String(parts[1]), lun: lun)
    }

    var description: String {
        let h = host.contains(":") ? "[\(host)]" : host
        return "iscsi://\(h):\(port)/\(iqn)/\(lun)"
    }
}

struct SetupError: Error, CustomStringConvertible {
    let description: String
    init(_ s: String) { description = s }
}

/// What login settled, as the I/O path needs it.
struct Negotiated {
    var headerDigest = false
    var dataDigest = false
    /// The most we may put in one PDU's data segment (the target's declared MaxRecvDataSegmentLength).
    var targetMaxRecvDataSegmentBytes = ISCSIDefaults.maxRecvDataSegmentBytes
    var maxBurstBytes = ISCSIDefaults.maxBurstBytes
    var firstBurstBytes = ISCSIDefaults.firstBurstBytes
    var initialR2T = true
    var immediateData = true
    var cmdSN: UInt32 = 0
    var expStatSN: UInt32 = 0
    var maxCmdSN: UInt32 = 0
    var tsih: UInt16 = 0
}

/// RFC 7143 §13 defaults that apply when a key is not answered.
enum ISCSIDefaults {
    static let maxRecvDataSegmentBytes = 8192
    static let maxBurstBytes = 262_144
    static let firstBurstBytes = 65_536
}

/// The initiator's offers.
struct LoginOffer {
    var initiatorName: String
    var headerDigest: Bool
    var dataDigest: Bool
    /// What we accept per PDU from the target. 256 KiB: a 128 KiB Data-In arrives in one PDU.
    static let ourMaxRecvDataSegmentBytes = 262_144
    static let ourMaxBurstBytes = 262_144
    static let ourFirstBurstBytes = 262_144
}

enum SetupLimits {
    /// Login, READ CAPACITY and logout each get this long on the blocking socket.
    static let socketTimeoutSeconds = 10
    /// Login steps that neither transit nor fail before we give up (continued text, repeated offers).
    static let maxLoginExchanges = 8
    /// READ CAPACITY is retried this many times past CHECK CONDITION (a unit attention after power-on).
    static let readCapacityAttempts = 4
    /// The largest data segment accepted during setup.
    static let maxSetupDataBytes = 65_536
}

/// A blocking TCP socket used during setup only.
final class SetupSocket {
    let fd: Int32
    var headerDigest = false
    var dataDigest = false

    init(url: TargetURL) throws {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        var res: UnsafeMutablePointer<addrinfo>? = nil
        let rc = getaddrinfo(url.host, String(url.port), &hints, &res)
        guard rc == 0, let first = res else { throw SetupError("cannot resolve \(url.host): \(String(cString: gai_strerror(rc)))") }
        defer { freeaddrinfo(res) }
        var lastErr: Int32 = 0
        var cur: UnsafeMutablePointer<addrinfo>? = first
        var made: Int32 = -1
        while let ai = cur {
            let s = socket(ai.pointee.ai_family, ai.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), ai.pointee.ai_protocol)
            if s >= 0 {
                if connect(s, ai.pointee.ai_addr, ai.pointee.ai_addrlen) == 0 { made = s; break }
                lastErr = errno
                close(s)
            } else {
                lastErr = errno
            }
            cur = ai.pointee.ai_next
        }
        guard made >= 0 else { throw SetupError("connect to \(url.host):\(url.port): \(String(cString: strerror(lastErr)))") }
        fd = made
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        setTimeout(SetupLimits.socketTimeoutSeconds)
    }

    func setTimeout(_ seconds: Int) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    func closeSocket() { close(fd) }

    func sendAll(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw SetupError("send: \(String(cString: strerror(errno)))") }
            sent += n
        }
    }

    func recvExact(_ count: Int) throws -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, count - got, 0) }
            if n < 0 && errno == EINTR { continue }
            if n == 0 { throw SetupError("target closed the connection during setup") }
            guard n > 0 else { throw SetupError("recv: \(String(cString: strerror(errno)))") }
            got += n
        }
        return buf
    }

    /// Sends a BHS (digest appended when negotiated) and a data segment (padded, digest appended).
    func sendPDU(_ bhs: [UInt8], data: [UInt8]) throws {
        var out = bhs
        if headerDigest {
            let d = CRC32C.checksum(bhs)
            withUnsafeBytes(of: d.littleEndian) { out.append(contentsOf: $0) }
        }
        if !data.isEmpty {
            var padded = data
            while padded.count % 4 != 0 { padded.append(0) }
            out += padded
            if dataDigest {
                let d = CRC32C.checksum(padded)
                withUnsafeBytes(of: d.littleEndian) { out.append(contentsOf: $0) }
            }
        }
        try sendAll(out)
    }

    /// Looks (without consuming) at the next 4 bytes, waiting at most `waitMillis` for them.
    func peekWord(waitMillis: Int32) -> UInt32? {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        var word: UInt32 = 0
        let deadline = monotonicNanos() &+ UInt64(waitMillis) * 1_000_000
        while true {
            let n = withUnsafeMutableBytes(of: &word) { recv(fd, $0.baseAddress, 4, Int32(MSG_PEEK | MSG_DONTWAIT)) }
            if n == 4 { return UInt32(littleEndian: word) }
            let now = monotonicNanos()
            if now >= deadline { return nil }
            _ = poll(&pfd, 1, Int32((deadline - now) / 1_000_000) + 1)
        }
    }

    /// Set when the final Login Response carried digests. RFC 7143 §13.1 applies digests to full feature
    /// phase PDUs, and libiscsi and the Linux initiator read that response without them.
    var loginResponseHadDigests = false

    /// Receives one PDU: its BHS and its data segment (unpadded). Digests are checked when negotiated.
    /// `probeDigests` is for the last Login Response: digests there are a target bug, detected and tolerated.
    func recvPDU(probeDigests: (header: Bool, data: Bool) = (false, false)) throws -> (bhs: [UInt8], data: [UInt8]) {
        let bhs = try recvExact(bhsBytes)
        let ahs = Int(bhs[4]) * 4
        if ahs > 0 { _ = try recvExact(ahs) }
        var probedHeader = false
        if probeDigests.header && !headerDigest && ahs == 0, let w = peekWord(waitMillis: 200), w == CRC32C.checksum(bhs) {
            _ = try recvExact(4)
            probedHeader = true
            loginResponseHadDigests = true
        }
        if headerDigest {
            let d = try recvExact(4)
            let want = CRC32C.checksum(bhs)
            let got = UInt32(d[0]) | UInt32(d[1]) << 8 | UInt32(d[2]) << 16 | UInt32(d[3]) << 24
            if ahs == 0 && got != want { throw SetupError("header digest mismatch during setup") }
        }
        let dsl = Int(bhs[5]) << 16 | Int(bhs[6]) << 8 | Int(bhs[7])
        guard dsl <= SetupLimits.maxSetupDataBytes else { throw SetupError("setup PDU data segment of \(dsl) bytes") }
        var data: [UInt8] = []
        if dsl > 0 {
            let padded = try recvExact(Framing.padded(dsl))
            if dataDigest {
                let d = try recvExact(4)
                let want = CRC32C.checksum(padded)
                let got = UInt32(d[0]) | UInt32(d[1]) << 8 | UInt32(d[2]) << 16 | UInt32(d[3]) << 24
                if got != want { throw SetupError("data digest mismatch during setup") }
            }
            data = Array(padded[0..<dsl])
            if probeDigests.data && !dataDigest && (probedHeader || !probeDigests.header),
               let w = peekWord(waitMillis: 200), w == CRC32C.checksum(padded) {
                _ = try recvExact(4)
                loginResponseHadDigests = true
            }
        }
        return (bhs, data)
    }
}

/// Logs in one session and returns the negotiated parameters. The socket is left in full feature phase.
func login(_ sock: SetupSocket, url: TargetURL, offer: LoginOffer, isid: UInt64) throws -> Negotiated {
    var neg = Negotiated()
    var cmdSN: UInt32 = 1
    var expStatSN: UInt32 = 0
    let itt: UInt32 = 0
    // Security stage first (AuthMethod=None), as libiscsi and open-iscsi do, then operational negotiation.
    var stage: UInt8 = 0
    var answered: [String: String] = [:]
    var exchanges = 0
    var sentOperationalKeys = false
    while true {
        exchanges += 1
        if exchanges > SetupLimits.maxLoginExchanges { throw SetupError("login did not complete in \(SetupLimits.maxLoginExchanges) exchanges") }
        var text: [UInt8] = []
        let nsg: UInt8
        if stage == 0 {
            nsg = 1
            if exchanges == 1 {
                TextKeys.append("InitiatorName", offer.initiatorName, to: &text)
                TextKeys.append("SessionType", "Normal", to: &text)
                TextKeys.append("TargetName", url.iqn, to: &text)
                TextKeys.append("AuthMethod", "None", to: &text)
            }
        } else {
            nsg = 3
            if !sentOperationalKeys {
                sentOperationalKeys = true
                TextKeys.append("HeaderDigest", offer.headerDigest ? "CRC32C" : "None", to: &text)
                TextKeys.append("DataDigest", offer.dataDigest ? "CRC32C" : "None", to: &text)
                TextKeys.append("MaxRecvDataSegmentLength", String(LoginOffer.ourMaxRecvDataSegmentBytes), to: &text)
                TextKeys.append("ImmediateData", "Yes", to: &text)
                TextKeys.append("InitialR2T", "No", to: &text)
                TextKeys.append("MaxBurstLength", String(LoginOffer.ourMaxBurstBytes), to: &text)
                TextKeys.append("FirstBurstLength", String(LoginOffer.ourFirstBurstBytes), to: &text)
                TextKeys.append("MaxOutstandingR2T", "1", to: &text)
                TextKeys.append("MaxConnections", "1", to: &text)
                TextKeys.append("DataPDUInOrder", "Yes", to: &text)
                TextKeys.append("DataSequenceInOrder", "Yes", to: &text)
                TextKeys.append("ErrorRecoveryLevel", "0", to: &text)
                TextKeys.append("DefaultTime2Wait", "2", to: &text)
                TextKeys.append("DefaultTime2Retain", "0", to: &text)
                TextKeys.append("IFMarker", "No", to: &text)
                TextKeys.append("OFMarker", "No", to: &text)
            }
        }
        var bhs = [UInt8](repeating: 0, count: bhsBytes)
        bhs.withUnsafeMutableBytes {
            InitiatorPDUBuild.loginRequest($0.baseAddress!, transit: true, csg: stage, nsg: nsg, isid: isid, itt: itt,
                                           cmdSN: cmdSN, expStatSN: expStatSN, dataLength: text.count)
        }
        try sock.sendPDU(bhs, data: text)
        let probe = stage == 1 ? (offer.headerDigest, offer.dataDigest) : (false, false)
        let (rb, rdata) = try sock.recvPDU(probeDigests: probe)
        guard rb[0] & 0x3f == ISCSIOpcode.loginResponse else {
            throw SetupError("expected a Login Response, got opcode \(hex(rb[0] & 0x3f))")
        }
        let statusClass = rb[36], statusDetail = rb[37]
        guard statusClass == 0 else {
            throw SetupError("login to \(url) refused: status class \(hex(statusClass)) detail \(hex(statusDetail))")
        }
        let pairs: [TextKeyValue]
        do { pairs = try TextKeys.parse(rdata) } catch { throw SetupError("login response text: \(error)") }
        for p in pairs { answered[p.key] = p.value }
        rb.withUnsafeBytes { p in
            let b = p.baseAddress!
            expStatSN = be32(b, 24) &+ 1
            neg.cmdSN = be32(b, 28)
            neg.maxCmdSN = be32(b, 32)
            neg.tsih = be16(b, 14)
        }
        cmdSN = neg.cmdSN
        let transit = rb[1] & 0x80 != 0
        let cont = rb[1] & 0x40 != 0
        let respNSG = rb[1] & 3
        if cont { continue }       // more text follows: ask for it with an empty request
        if transit {
            if respNSG == 3 { break }
            stage = respNSG
        }
    }
    neg.expStatSN = expStatSN
    func num(_ k: String) -> Int? { answered[k].flatMap { Int($0) } }
    neg.headerDigest = answered["HeaderDigest"] == "CRC32C"
    neg.dataDigest = answered["DataDigest"] == "CRC32C"
    if offer.headerDigest && !neg.headerDigest { throw SetupError("target refused HeaderDigest=CRC32C") }
    if offer.dataDigest && !neg.dataDigest { throw SetupError("target refused DataDigest=CRC32C") }
    // The target declares its own MaxRecvDataSegmentLength (§13.12); unanswered means the 8 KiB default.
    neg.targetMaxRecvDataSegmentBytes = num("MaxRecvDataSegmentLength") ?? ISCSIDefaults.maxRecvDataSegmentBytes
    neg.maxBurstBytes = min(num("MaxBurstLength") ?? ISCSIDefaults.maxBurstBytes, LoginOffer.ourMaxBurstBytes)
    neg.firstBurstBytes = min(num("FirstBurstLength") ?? ISCSIDefaults.firstBurstBytes, LoginOffer.ourFirstBurstBytes)
    // InitialR2T is OR (default Yes when unanswered), ImmediateData is AND (default Yes).
    neg.initialR2T = (answered["InitialR2T"] ?? "Yes") == "Yes"
    neg.immediateData = (answered["ImmediateData"] ?? "Yes") == "Yes"
    guard neg.targetMaxRecvDataSegmentBytes >= 512 else { throw SetupError("target MaxRecvDataSegmentLength below 512") }
    sock.headerDigest = neg.headerDigest
    sock.dataDigest = neg.dataDigest
    return neg
}

/// READ CAPACITY(16) on the blocking socket: (logical block bytes, number of blocks).
func readCapacity(_ sock: SetupSocket, lun: UInt64, neg: inout Negotiated) throws -> (blockBytes: Int, blocks: UInt64) {
    let allocation: UInt32 = 32
    for attempt in 0..<SetupLimits.readCapacityAttempts {
        var bhs = [UInt8](repeating: 0, count: bhsBytes)
        let itt = UInt32(0x1000 + attempt)
        bhs.withUnsafeMutableBytes { p in
            let h = p.baseAddress!
            InitiatorPDUBuild.scsiCommand(h, read: true, write: false, final: true, lunField: encodeLUN(lun), itt: itt,
                                          expectedLength: allocation, cmdSN: neg.cmdSN, expStatSN: neg.expStatSN,
                                          immediateLength: 0)
            h.storeBytes(of: Wire.scsiServiceActionIn16, toByteOffset: 32, as: UInt8.self)
            h.storeBytes(of: Wire.readCapacity16ServiceAction, toByteOffset: 33, as: UInt8.self)
            put32(h, 42, allocation)
        }
        neg.cmdSN &+= 1
        try sock.sendPDU(bhs, data: [])
        var payload: [UInt8] = []
        var status: UInt8? = nil
        var sense: [UInt8] = []
        while status == nil {
            let (rb, data) = try sock.recvPDU()
            let op = rb[0] & 0x3f
            rb.withUnsafeBytes { p in
                let b = p.baseAddress!
                if be32(b, 32) != 0 { neg.maxCmdSN = be32(b, 32) }
            }
            switch op {
            case ISCSIOpcode.dataIn:
                payload += data
                if rb[1] & 0x01 != 0 {
                    status = rb[3]
                    rb.withUnsafeBytes { neg.expStatSN = be32($0.baseAddress!, 24) &+ 1 }
                }
            case ISCSIOpcode.scsiResponse:
                status = rb[3]
                if rb[2] != 0 { throw SetupError("READ CAPACITY(16): iSCSI response 0x\(String(rb[2], radix: 16))") }
                rb.withUnsafeBytes { neg.expStatSN = be32($0.baseAddress!, 24) &+ 1 }
                if data.count >= 2 { sense = Array(data[2...]) }
            case ISCSIOpcode.nopIn:
                continue
            default:
                throw SetupError("READ CAPACITY(16): unexpected opcode \(hex(op))")
            }
        }
        if status == 0 {
            guard payload.count >= 12 else { throw SetupError("READ CAPACITY(16) returned \(payload.count) bytes") }
            let last = payload.withUnsafeBytes { be64($0.baseAddress!, 0) }
            let bs = payload.withUnsafeBytes { Int(be32($0.baseAddress!, 8)) }
            guard bs >= 512, bs <= 65536 else { throw SetupError("READ CAPACITY(16): block size \(bs)") }
            return (bs, last &+ 1)
        }
        if status != 2 {   // not CHECK CONDITION: no point retrying
            throw SetupError("READ CAPACITY(16) failed: status 0x\(String(status ?? 0, radix: 16)) \(describeSense(sense))")
        }
    }
    throw SetupError("READ CAPACITY(16) kept failing with CHECK CONDITION")
}

/// Sends a Logout Request and waits (bounded) for its response. Used for idle sessions at the end.
func logout(_ sock: SetupSocket, neg: Negotiated) {
    var bhs = [UInt8](repeating: 0, count: bhsBytes)
    bhs.withUnsafeMutableBytes { InitiatorPDUBuild.logoutRequest($0.baseAddress!, itt: 0x7fff_0000, cmdSN: neg.cmdSN, expStatSN: neg.expStatSN) }
    try? sock.sendPDU(bhs, data: [])
}

/// "sense key 0x5 asc/ascq 0x24/0x00" from fixed or descriptor format sense data.
func describeSense(_ s: [UInt8]) -> String {
    guard s.count >= 2 else { return "(no sense data)" }
    let code = s[0] & 0x7f
    var key: UInt8 = 0, asc: UInt8 = 0, ascq: UInt8 = 0
    if code == 0x72 || code == 0x73 {
        if s.count >= 4 { key = s[1] & 0x0f; asc = s[2]; ascq = s[3] }
    } else if s.count >= 14 {
        key = s[2] & 0x0f; asc = s[12]; ascq = s[13]
    }
    return "sense key \(hex(key)) asc/ascq \(hex(asc))/\(hex(ascq))"
}

/// "0x1f": error messages without Foundation.
func hex<T: BinaryInteger>(_ v: T) -> String {
    let s = String(v, radix: 16)
    return "0x" + (s.count < 2 ? "0" + s : s)
}
