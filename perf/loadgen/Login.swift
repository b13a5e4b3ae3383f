// Session setup: TCP connect, login through the security stage with key negotiation (RFC 7143 §6, §13) and
// READ CAPACITY(16), all through RawClients' raw session (the one raw iSCSI client), which also recognises
// digests a target puts on the final Login Response. None of this is on the I/O path; once a session is in
// full feature phase its socket is handed to a worker's ring.
import Glibc
import ISCSIWire
import RawClients
import Target
import TestSupport

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

extension TargetURL {
    /// Where to connect: the host resolved to its first numeric address (RawSocket connects to those).
    func endpoint() throws -> Endpoint {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        var res: UnsafeMutablePointer<addrinfo>? = nil
        let rc = getaddrinfo(host, nil, &hints, &res)
        guard rc == 0, let ai = res else { throw SetupError("cannot resolve \(host): \(String(cString: gai_strerror(rc)))") }
        defer { freeaddrinfo(res) }
        var name = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        guard getnameinfo(ai.pointee.ai_addr, ai.pointee.ai_addrlen, &name, socklen_t(name.count), nil, 0, NI_NUMERICHOST) == 0 else {
            throw SetupError("cannot resolve \(host) to an address")
        }
        let numeric = String(cString: name)
        return Endpoint(host: ai.pointee.ai_family == AF_INET6 ? "[\(numeric)]" : numeric, port: Int(port), portalGroupTag: 1)
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
    var targetMaxRecvDataSegmentBytes = ISCSILimits.defaultMaxRecvDataSegmentBytes
    var maxBurstBytes = ISCSILimits.defaultMaxBurstBytes
    var firstBurstBytes = ISCSILimits.defaultFirstBurstBytes
    var initialR2T = true
    var immediateData = true
    var cmdSN: UInt32 = 0
    var expStatSN: UInt32 = 0
    var maxCmdSN: UInt32 = 0
    /// The target put digests on the final Login Response (ringtgtd once did; see RawLoginOptions.toleratesLoginResponseDigests).
    var loginResponseHadDigests = false
}

/// The initiator's offers beyond the digests.
enum LoginOffer {
    /// What we accept per PDU from the target. 256 KiB: a 128 KiB Data-In arrives in one PDU.
    static let ourMaxRecvDataSegmentBytes = 262_144
    static let ourMaxBurstBytes = 262_144
    static let ourFirstBurstBytes = 262_144
}

enum SetupLimits {
    /// Each login step and READ CAPACITY get this long to be answered, and each send this long to go out.
    static let answerTimeoutSeconds = 10.0
    /// READ CAPACITY is retried this many times past CHECK CONDITION (a unit attention after power-on).
    static let readCapacityAttempts = 4
    /// READ CAPACITY(16)'s allocation length: its parameter data is 32 bytes.
    static let readCapacityBytes = 32
}

/// A logged-in session; its socket stays `session`'s until handed over with `session.socket.detach()`.
struct SetupSession {
    let session: RawSession
    var neg: Negotiated

    /// Connects and logs in: the security stage (AuthMethod=None), then the operational keys, as libiscsi
    /// and open-iscsi do. Throws unless the target grants the digests asked for.
    init(url: TargetURL, endpoint: Endpoint, initiatorName: String, headerDigest: Bool, dataDigest: Bool,
         isid: UInt64) throws {
        let options = RawLoginOptions(
            initiatorName: initiatorName, isid: isid, headerDigest: headerDigest ? "CRC32C" : "None",
            dataDigest: dataDigest ? "CRC32C" : "None", maxRecvDataSegmentLength: LoginOffer.ourMaxRecvDataSegmentBytes,
            immediateData: true, firstBurstLength: LoginOffer.ourFirstBurstBytes, maxBurstLength: LoginOffer.ourMaxBurstBytes,
            initialR2T: false, securityStage: true, toleratesLoginResponseDigests: true, clearUnitAttentionLUNs: [],
            answerTimeoutSeconds: SetupLimits.answerTimeoutSeconds, sendTimeoutSeconds: SetupLimits.answerTimeoutSeconds)
        let s: RawSession
        do { s = try RawSession(endpoint, target: url.iqn, options: options) } catch { throw SetupError("login to \(url): \(error)") }
        if headerDigest && !s.headerDigest { throw SetupError("target refused HeaderDigest=CRC32C") }
        if dataDigest && !s.dataDigest { throw SetupError("target refused DataDigest=CRC32C") }
        guard s.targetMaxRecvDataSegment >= ISCSILimits.minDataSegmentBytes else {
            throw SetupError("target MaxRecvDataSegmentLength below \(ISCSILimits.minDataSegmentBytes)")
        }
        session = s
        neg = Negotiated()
        neg.headerDigest = s.headerDigest
        neg.dataDigest = s.dataDigest
        neg.targetMaxRecvDataSegmentBytes = s.targetMaxRecvDataSegment
        neg.maxBurstBytes = min(s.maxBurst, LoginOffer.ourMaxBurstBytes)
        neg.firstBurstBytes = min(s.firstBurst, LoginOffer.ourFirstBurstBytes)
        neg.initialR2T = s.initialR2T
        neg.immediateData = s.immediateData
        neg.loginResponseHadDigests = s.loginResponseHadDigests
        takeSequenceNumbers()
    }

    /// The command numbers where the I/O path takes over.
    private mutating func takeSequenceNumbers() {
        neg.cmdSN = session.cmdSN
        neg.expStatSN = session.expStatSN
        neg.maxCmdSN = session.windowMaxCmdSN
    }

    /// READ CAPACITY(16): (logical block bytes, number of blocks). Retried past CHECK CONDITION (the unit
    /// attention a new I_T nexus starts with), so that the measured I/Os never see it.
    mutating func readCapacity(lun: UInt64) throws -> (blockBytes: Int, blocks: UInt64) {
        defer { takeSequenceNumbers() }
        var last = ""
        for _ in 0..<SetupLimits.readCapacityAttempts {
            let r: CommandResult
            do {
                r = try session.run(RawCDB.readCapacity16(allocationLength: UInt32(SetupLimits.readCapacityBytes)), lun: lun,
                                    read: true, edtl: SetupLimits.readCapacityBytes, timeoutSeconds: SetupLimits.answerTimeoutSeconds)
            } catch { throw SetupError("READ CAPACITY(16): \(error)") }
            if r.response != 0 { throw SetupError("READ CAPACITY(16): iSCSI response \(hex(r.response))") }
            if r.status == RawCodes.good {
                guard r.data.count >= 12 else { throw SetupError("READ CAPACITY(16) returned \(r.data.count) bytes") }
                let (lastLBA, bs) = r.data.withUnsafeBytes { (be64($0.baseAddress!, 0), Int(be32($0.baseAddress!, 8))) }
                guard bs >= 512, bs <= 65536 else { throw SetupError("READ CAPACITY(16): block size \(bs)") }
                return (bs, lastLBA &+ 1)
            }
            guard r.status == RawCodes.checkCondition else { throw SetupError("READ CAPACITY(16) failed: \(r)") }
            last = "\(r)"
        }
        throw SetupError("READ CAPACITY(16) kept failing with CHECK CONDITION (\(last))")
    }
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
