// A minimal iSCSI initiator on a raw TCP socket, for tests that must choose every field a real
// initiator would get right: CmdSN, ITT, TTT, DataSN, buffer offsets, digests, task management.
//
// It logs in (normal session, one operational step, key text it builds itself), sends SCSI Command,
// Data-Out, NOP-Out, Task Management and Logout PDUs, and reads the target's PDUs back, each read
// bounded by a deadline so a target that neither answers nor closes shows up as `.timeout`, never a
// hang. Digests are computed and checked with the target's own CRC32C (`import Target`); a PDU with a
// wrong digest from the target is an error of the target and throws.

import Foundation
import Target
#if canImport(Glibc)
import Glibc
#endif

/// Bounds of the raw session, with their units.
enum RawSessionLimits {
    /// How long the target gets to answer one request in the happy path.
    static let answerTimeoutSeconds = 10.0
    /// Login steps before the helper gives up on reaching full feature phase.
    static let maxLoginSteps = 4
    /// The largest data segment this initiator accepts (declared as its MaxRecvDataSegmentLength).
    static let defaultMaxRecvDataSegmentBytes = 262_144
    /// Kernel send timeout: a send blocked longer than this means the target stopped reading.
    static let sendTimeoutSeconds = 10
    /// The logical block size of every LUN the harness creates (ringtgtadm's default, as tgtadm's).
    static let blockBytes = 512
}

/// Seconds on a monotonic clock, for deadlines.
func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

// MARK: - Socket

/// A connected TCP socket whose reads wait at most until a deadline.
final class RawSocket {
    private(set) var fd: Int32
    private var buffer: [UInt8] = []
    private var bufferStart = 0

    enum Read: Equatable {
        case bytes([UInt8])
        /// EOF or a reset: the peer ended the connection.
        case closed
        /// Nothing (or not enough) arrived before the deadline.
        case timeout
    }

    /// Connects to `endpoint`. `receiveBufferBytes` shrinks SO_RCVBUF (set before connect so the
    /// window the target sees is small from the start). `sourceAddress` (IPv4, e.g. "127.0.0.2") binds the
    /// local end first, so tests can appear as many initiators over loopback.
    init(_ endpoint: Endpoint, receiveBufferBytes: Int? = nil, sourceAddress: String? = nil) throws {
        fd = socket(endpoint.isIPv6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw E2EError("socket: errno \(errno)") }
        var tv = timeval(tv_sec: RawSessionLimits.sendTimeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        if var rcv = receiveBufferBytes.map(Int32.init) {
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, socklen_t(MemoryLayout<Int32>.size))
        }
        if let sourceAddress {
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            inet_pton(AF_INET, sourceAddress, &a.sin_addr)
            let bound = withUnsafePointer(to: &a) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            guard bound == 0 else {
                let e = errno
                Glibc.close(fd)
                fd = -1
                throw E2EError("bind to \(sourceAddress): errno \(e)")
            }
        }
        let rc = endpoint.connect(fd)
        guard rc == 0 else {
            let e = errno
            Glibc.close(fd)
            fd = -1
            throw E2EError("connect to \(endpoint): errno \(e)")
        }
    }

    deinit { close() }

    func close() {
        if fd >= 0 { Glibc.close(fd); fd = -1 }
    }

    /// Sends every byte; throws when the target reset the connection or stopped reading past the send timeout.
    func send(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw E2EError("send failed after \(sent) of \(bytes.count) bytes: errno \(errno)")
            }
            sent += n
        }
    }

    /// Sends and ignores failure: for bytes sent to a target that may already have closed on us.
    func sendIgnoringErrors(_ bytes: [UInt8]) { try? send(bytes) }

    /// Reads exactly `count` bytes, or reports EOF / the deadline.
    func read(_ count: Int, deadline: Double) -> Read {
        while buffer.count - bufferStart < count {
            let wait = deadline - monotonicSeconds()
            if wait <= 0 { return .timeout }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, Int32(min(wait * 1000 + 1, 60_000)))
            if r < 0 { if errno == EINTR { continue }; return .closed }
            if r == 0 { continue }   // re-checks the deadline
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, 65536, Int32(MSG_DONTWAIT)) }
            if n == 0 { return .closed }
            if n < 0 {
                if errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK { continue }
                return .closed   // ECONNRESET and friends
            }
            if bufferStart > 0 && bufferStart == buffer.count { buffer.removeAll(keepingCapacity: true); bufferStart = 0 }
            buffer.append(contentsOf: chunk[0..<n])
        }
        let out = Array(buffer[bufferStart..<(bufferStart + count)])
        bufferStart += count
        if bufferStart > 1 << 20 { buffer.removeFirst(bufferStart); bufferStart = 0 }
        return .bytes(out)
    }

    /// Reads and discards until EOF. Returns false if the connection is still open at the deadline.
    func awaitClose(deadline: Double) -> Bool {
        bufferStart = buffer.count
        while true {
            switch read(1, deadline: deadline) {
            case .closed: return true
            case .timeout: return false
            case .bytes: continue
            }
        }
    }
}

// MARK: - PDUs

/// A field of a header or data segment held in an array, read through ISCSIWire.
func rawBE32(_ b: [UInt8], _ o: Int) -> UInt32 { b.withUnsafeBytes { be32($0.baseAddress!, o) } }
func rawBE16(_ b: [UInt8], _ o: Int) -> UInt16 { b.withUnsafeBytes { be16($0.baseAddress!, o) } }

/// A digest as it arrives (little-endian, see CRC32C).
func rawDigest(_ b: [UInt8]) -> UInt32 { b.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) } }

/// A 48-byte BHS written by one of ISCSIWire's builders.
func rawHeader(_ build: (UnsafeMutableRawPointer) -> Void) -> [UInt8] {
    var h = [UInt8](repeating: 0, count: bhsBytes)
    h.withUnsafeMutableBytes { build($0.baseAddress!) }
    return h
}

/// The codes the tests check that are SCSI's, not iSCSI's (those come from ISCSIWire).
enum RawCodes {
    /// SCSI status bytes.
    static let good: UInt8 = 0x00, checkCondition: UInt8 = 0x02, taskSetFull: UInt8 = 0x28
}

/// One PDU from the target: its header (BHS and AHS) and data segment, digests already checked.
struct TargetPDU: CustomStringConvertible {
    let header: [UInt8]
    let data: [UInt8]

    var opcode: UInt8 { header.withUnsafeBytes { BHS($0.baseAddress!).opcode } }
    var flags: UInt8 { header[1] }
    var final: Bool { flags & 0x80 != 0 }
    var itt: UInt32 { rawBE32(header, 16) }
    var ttt: UInt32 { rawBE32(header, 20) }
    var statSN: UInt32 { rawBE32(header, 24) }
    var expCmdSN: UInt32 { rawBE32(header, 28) }
    var maxCmdSN: UInt32 { rawBE32(header, 32) }
    /// SCSI Response: iSCSI response code; TMF Response: the function's response; Reject: the reason.
    var byte2: UInt8 { header[2] }
    /// SCSI Response and Data-In with S: the SCSI status.
    var status: UInt8 { header[3] }
    /// Data-In: the S bit (status collapsed into this PDU).
    var hasStatus: Bool { opcode == ISCSIOpcode.dataIn && flags & 0x01 != 0 }
    /// R2T: R2TSN, buffer offset, desired length. Data-In: DataSN, buffer offset, residual.
    var u36: UInt32 { rawBE32(header, 36) }
    var bufferOffset: UInt32 { rawBE32(header, 40) }
    var u44: UInt32 { rawBE32(header, 44) }

    /// Fixed-format sense of a SCSI Response: (key, ASC, ASCQ), or nil without sense data.
    var sense: (key: UInt8, asc: UInt8, ascq: UInt8)? {
        guard opcode == ISCSIOpcode.scsiResponse, data.count >= 2 + 14 else { return nil }
        return (data[4] & 0x0F, data[14], data[15])
    }

    /// Whether this PDU carries a StatSN the initiator must acknowledge.
    var consumesStatSN: Bool {
        switch opcode {
        case ISCSIOpcode.scsiResponse, ISCSIOpcode.taskManagementResponse, ISCSIOpcode.textResponse, ISCSIOpcode.logoutResponse, ISCSIOpcode.reject,
             ISCSIOpcode.loginResponse:
            return true
        case ISCSIOpcode.nopIn: return itt != reservedTag
        case ISCSIOpcode.dataIn: return hasStatus
        default: return false
        }
    }

    var description: String {
        var s = String(format: "opcode 0x%02x flags 0x%02x ITT 0x%08x", opcode, flags, itt)
        switch opcode {
        case ISCSIOpcode.scsiResponse:
            s += String(format: " SCSI Response status 0x%02x response 0x%02x", status, byte2)
            if let k = sense { s += String(format: " sense %x/%02x/%02x", k.key, k.asc, k.ascq) }
        case ISCSIOpcode.dataIn: s += " Data-In \(data.count) bytes at \(bufferOffset)" + (hasStatus ? String(format: " status 0x%02x", status) : "")
        case ISCSIOpcode.r2t: s += " R2T TTT \(String(ttt, radix: 16)) offset \(bufferOffset) length \(u44)"
        case ISCSIOpcode.reject: s += String(format: " Reject reason 0x%02x", byte2)
        case ISCSIOpcode.taskManagementResponse: s += " TMF Response \(byte2)"
        case ISCSIOpcode.nopIn: s += " NOP-In TTT \(String(ttt, radix: 16))"
        case ISCSIOpcode.logoutResponse: s += " Logout Response \(byte2)"
        default: break
        }
        return s + " StatSN \(statSN) ExpCmdSN \(expCmdSN) MaxCmdSN \(maxCmdSN)"
    }
}

/// SCSI CDBs the tests send.
enum RawCDB {
    static let testUnitReady = [UInt8](repeating: 0, count: 6)

    static func read10(lba: UInt32, blocks: UInt16) -> [UInt8] { rw10(0x28, lba: lba, blocks: blocks) }
    static func write10(lba: UInt32, blocks: UInt16) -> [UInt8] { rw10(0x2A, lba: lba, blocks: blocks) }
    static func read16(lba: UInt64, blocks: UInt32) -> [UInt8] { rw16(0x88, lba: lba, blocks: blocks) }
    static func write16(lba: UInt64, blocks: UInt32) -> [UInt8] { rw16(0x8A, lba: lba, blocks: blocks) }
    /// COMPARE AND WRITE: `blocks` blocks compared, then as many written (its data is twice their length).
    static func compareAndWrite(lba: UInt64, blocks: UInt8) -> [UInt8] {
        var c = rw16(0x89, lba: lba, blocks: 0)
        c[13] = blocks
        return c
    }

    private static func rw10(_ op: UInt8, lba: UInt32, blocks: UInt16) -> [UInt8] {
        var c = [UInt8](repeating: 0, count: 10)
        c[0] = op
        c.withUnsafeMutableBytes { put32($0.baseAddress!, 2, lba); put16($0.baseAddress!, 7, blocks) }
        return c
    }

    private static func rw16(_ op: UInt8, lba: UInt64, blocks: UInt32) -> [UInt8] {
        var c = [UInt8](repeating: 0, count: 16)
        c[0] = op
        c.withUnsafeMutableBytes { put64($0.baseAddress!, 2, lba); put32($0.baseAddress!, 10, blocks) }
        return c
    }
}

/// What came back for one SCSI command.
struct CommandResult: CustomStringConvertible {
    var status: UInt8 = 0
    /// iSCSI response code of a SCSI Response (0 = command completed at target).
    var response: UInt8 = 0
    var data: [UInt8] = []
    var sense: (key: UInt8, asc: UInt8, ascq: UInt8)? = nil
    var description: String {
        var s = String(format: "status 0x%02x response 0x%02x, %d data bytes", status, response, data.count)
        if let k = sense { s += String(format: ", sense %x/%02x/%02x", k.key, k.asc, k.ascq) }
        return s
    }
}

/// Bytes from a seeded generator, so a mismatch can be reproduced.
func patternBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var g = SeededRandom(seed: seed)
    var out = [UInt8](repeating: 0, count: count)
    var i = 0
    while i < count {
        var w = g.next()
        for _ in 0..<8 where i < count { out[i] = UInt8(truncatingIfNeeded: w); w >>= 8; i += 1 }
    }
    return out
}

// MARK: - Session

/// What to offer at login.
struct RawLoginOptions {
    var initiatorName = "iqn.2026-01.org.ringtgt:raw-session"
    /// 48 bits; the top two bits 01 say "random" format (RFC 7143 §11.12.5).
    var isid: UInt64 = 0x4000_0000_0001
    var headerDigest = "None"
    var dataDigest = "None"
    var maxRecvDataSegmentLength = RawSessionLimits.defaultMaxRecvDataSegmentBytes
    var immediateData = true
    var firstBurstLength = 65536
    var maxBurstLength = 262_144
    /// Shrinks the socket's receive buffer (slow-client tests).
    var receiveBufferBytes: Int? = nil
    /// One-way CHAP (MD5) in a security stage before the operational one; nil logs in without one.
    var chap: (user: String, secret: String)? = nil
    /// After login, TEST UNIT READY on these LUNs until the power-on UNIT ATTENTION every new I_T nexus
    /// starts with has been reported, as real initiators do, so tests see only the effects they cause.
    var clearUnitAttentionLUNs: [UInt64] = [1]
    /// Connect from this local IPv4 address (see RawSocket).
    var sourceAddress: String? = nil
}

/// One event on the connection.
enum RawEvent {
    case pdu(TargetPDU)
    case closed
    case timeout
}

final class RawSession {
    let socket: RawSocket
    let options: RawLoginOptions
    /// The keys the target answered at login.
    private(set) var negotiated: [String: String] = [:]
    private(set) var tsih: UInt16 = 0
    var headerDigest = false
    var dataDigest = false
    /// The most data the target accepts in one PDU (its declared MaxRecvDataSegmentLength).
    private(set) var targetMaxRecvDataSegment = 8192
    private(set) var firstBurst = 65536
    private(set) var maxBurst = 262_144
    private(set) var immediateData = false

    /// The next CmdSN to use for a non-immediate command.
    var cmdSN: UInt32 = 1
    var expStatSN: UInt32 = 0
    /// The window in the latest PDU from the target.
    private(set) var targetExpCmdSN: UInt32 = 0
    private(set) var targetMaxCmdSN: UInt32 = 0
    /// The highest MaxCmdSN seen: an initiator ignores a lower one (RFC 7143 §3.2.2.1), so this is how far
    /// it may go. `sendCommand` refuses to pass it unless the test chooses the CmdSN itself.
    private(set) var windowMaxCmdSN: UInt32 = 0
    private var nextITT: UInt32 = 0x1000
    /// NOP-In pings (TTT set) the helper answered while reading.
    private(set) var pingsAnswered = 0
    /// NOP-In pings seen (answered or not).
    private(set) var pingsSeen = 0
    /// Write data to hand out when the target sends R2T for that ITT.
    private var pendingWrites: [UInt32: [UInt8]] = [:]
    /// Results and PDUs that arrived for commands nobody was waiting for yet.
    private var results: [UInt32: CommandResult] = [:]
    private var done: Set<UInt32> = []
    /// PDUs read while waiting for something else that were not about a command (Reject, TMF, ...).
    private(set) var others: [TargetPDU] = []
    /// R2Ts a test read itself and handed back with `keep`, served by the next `collect`.
    private var keptR2Ts: [TargetPDU] = []

    /// Connects and logs in to `target`; throws unless the target lets the session into full feature phase.
    init(_ endpoint: Endpoint, target: String, options: RawLoginOptions = RawLoginOptions()) throws {
        self.options = options
        socket = try RawSocket(endpoint, receiveBufferBytes: options.receiveBufferBytes,
                               sourceAddress: options.sourceAddress)
        try login(target: target)
        for lun in options.clearUnitAttentionLUNs {
            var r = try run(RawCDB.testUnitReady, lun: lun)
            if r.status == RawCodes.checkCondition && r.sense?.key == 0x06 { r = try run(RawCDB.testUnitReady, lun: lun) }
            guard r.status == RawCodes.good else { throw E2EError("TEST UNIT READY on LUN \(lun) after login: \(r)") }
        }
    }

    func takeITT() -> UInt32 {
        nextITT &+= 1
        if nextITT == reservedTag { nextITT = 1 }
        return nextITT
    }

    // MARK: Login

    func loginKeys(target: String) -> [TextKeyValue] {
        let o = options
        return [
            TextKeyValue("InitiatorName", o.initiatorName), TextKeyValue("SessionType", "Normal"),
            TextKeyValue("TargetName", target),
            TextKeyValue("HeaderDigest", o.headerDigest), TextKeyValue("DataDigest", o.dataDigest),
            TextKeyValue("MaxRecvDataSegmentLength", "\(o.maxRecvDataSegmentLength)"),
            TextKeyValue("InitialR2T", "Yes"), TextKeyValue("ImmediateData", o.immediateData ? "Yes" : "No"),
            TextKeyValue("FirstBurstLength", "\(o.firstBurstLength)"),
            TextKeyValue("MaxBurstLength", "\(o.maxBurstLength)"),
            TextKeyValue("MaxOutstandingR2T", "1"), TextKeyValue("DataPDUInOrder", "Yes"),
            TextKeyValue("DataSequenceInOrder", "Yes"), TextKeyValue("ErrorRecoveryLevel", "0"),
            TextKeyValue("MaxConnections", "1"), TextKeyValue("DefaultTime2Wait", "2"),
            TextKeyValue("DefaultTime2Retain", "0"),
        ]
    }

    /// A Login Request, by default from the operational stage straight to full feature phase (no security stage).
    func loginRequest(keys: [TextKeyValue], csg: UInt8 = 1, nsg: UInt8 = 3) -> [UInt8] {
        var data = TextKeys.encode(keys)
        let n = data.count
        while data.count % 4 != 0 { data.append(0) }
        let h = rawHeader {
            InitiatorPDUBuild.loginRequest($0, transit: true, csg: csg, nsg: nsg, isid: options.isid, itt: 0,
                                           cmdSN: cmdSN, expStatSN: expStatSN, dataLength: n)
        }
        return h + data
    }

    /// One security-stage exchange (CSG 0, transit to 1 asked): the target's keys and whether it transited.
    private func securityStep(_ keys: [TextKeyValue]) throws -> (keys: [String: String], transit: Bool) {
        try socket.send(loginRequest(keys: keys, csg: 0, nsg: 1))
        let event = try receive(timeoutSeconds: RawSessionLimits.answerTimeoutSeconds, answerPings: false)
        guard case .pdu(let r) = event, r.opcode == ISCSIOpcode.loginResponse else {
            throw E2EError("CHAP login: no Login Response (\(event))")
        }
        guard r.header[36] == 0 else {
            throw E2EError(String(format: "login refused: status class 0x%02x detail 0x%02x", r.header[36], r.header[37]))
        }
        var answer: [String: String] = [:]
        for kv in (try? TextKeys.parse(r.data)) ?? [] { answer[kv.key] = kv.value }
        return (answer, r.flags & 0x80 != 0)
    }

    /// RFC 7143 §12.1.3 as open-iscsi does it: AuthMethod=CHAP, CHAP_A=5, then CHAP_N and CHAP_R.
    private func authenticate(target: String, user: String, secret: String) throws {
        let identity = loginKeys(target: target).filter { ["InitiatorName", "SessionType", "TargetName"].contains($0.key) }
        let offer = try securityStep(identity + [TextKeyValue("AuthMethod", "CHAP")])
        guard offer.keys["AuthMethod"] == "CHAP" else { throw E2EError("CHAP login: target answered \(offer.keys)") }
        let challenge = try securityStep([TextKeyValue("CHAP_A", CHAP.md5Algorithm)])
        guard let idText = challenge.keys["CHAP_I"], let id = UInt8(idText),
              let c = challenge.keys["CHAP_C"].flatMap(CHAP.decodeBinary) else {
            throw E2EError("CHAP login: no challenge in \(challenge.keys)")
        }
        let response = CHAP.response(identifier: id, secret: Array(secret.utf8), challenge: c)
        let done = try securityStep([TextKeyValue("CHAP_N", user), TextKeyValue("CHAP_R", CHAP.encodeHex(response))])
        guard done.transit else { throw E2EError("CHAP login: the target did not leave the security stage") }
    }

    private func login(target: String) throws {
        if let chap = options.chap { try authenticate(target: target, user: chap.user, secret: chap.secret) }
        var keys = loginKeys(target: target)
        if options.chap != nil {
            // Named in the security stage already.
            keys.removeAll { ["InitiatorName", "SessionType", "TargetName"].contains($0.key) }
        }
        for _ in 0..<RawSessionLimits.maxLoginSteps {
            try socket.send(loginRequest(keys: keys))
            // Login PDUs never carry digests.
            let event = try receive(timeoutSeconds: RawSessionLimits.answerTimeoutSeconds, answerPings: false)
            guard case .pdu(let r) = event else { throw E2EError("login: no Login Response (\(event))") }
            guard r.opcode == ISCSIOpcode.loginResponse else { throw E2EError("login: got \(r)") }
            guard r.header[36] == 0 else {
                throw E2EError(String(format: "login refused: status class 0x%02x detail 0x%02x", r.header[36], r.header[37]))
            }
            for kv in (try? TextKeys.parse(r.data)) ?? [] { negotiated[kv.key] = kv.value }
            keys = []
            let transit = r.flags & 0x80 != 0
            if transit && r.flags & 0x03 == 3 {
                tsih = rawBE16(r.header, 14)
                cmdSN = r.expCmdSN
                headerDigest = negotiated["HeaderDigest"] == "CRC32C"
                dataDigest = negotiated["DataDigest"] == "CRC32C"
                targetMaxRecvDataSegment = negotiated["MaxRecvDataSegmentLength"].flatMap { Int($0) } ?? 8192
                firstBurst = negotiated["FirstBurstLength"].flatMap { Int($0) } ?? 65536
                maxBurst = negotiated["MaxBurstLength"].flatMap { Int($0) } ?? 262_144
                immediateData = negotiated["ImmediateData"] == "Yes"
                return
            }
        }
        throw E2EError("login did not reach full feature phase in \(RawSessionLimits.maxLoginSteps) steps")
    }

    // MARK: Sending

    /// Frames a PDU: header digest after the BHS, data padded to 4 bytes, data digest after it.
    func frame(_ bhs: [UInt8], data: [UInt8] = [], corruptHeaderDigest: Bool = false,
               corruptDataDigest: Bool = false) -> [UInt8] {
        var out = bhs
        if headerDigest {
            var crc = CRC32C.checksum(bhs)
            if corruptHeaderDigest { crc ^= 0x5A5A_0001 }
            out += withUnsafeBytes(of: crc.littleEndian, Array.init)
        }
        if !data.isEmpty {
            var padded = data
            while padded.count % 4 != 0 { padded.append(0) }
            out += padded
            if dataDigest {
                var crc = CRC32C.checksum(padded)
                if corruptDataDigest { crc ^= 0x0000_A5A5 }
                out += withUnsafeBytes(of: crc.littleEndian, Array.init)
            }
        }
        return out
    }

    /// The BHS of a SCSI Command (§11.3). CmdSN and ITT are whatever the test says.
    func commandHeader(cdb: [UInt8], lun: UInt64, itt: UInt32, cmdSN: UInt32, edtl: Int, read: Bool, write: Bool,
                       immediate: Bool, final: Bool, dataLength: Int) -> [UInt8] {
        var h = rawHeader {
            InitiatorPDUBuild.scsiCommand($0, read: read, write: write, final: final, lunField: encodeLUN(lun),
                                          itt: itt, expectedLength: UInt32(edtl), cmdSN: cmdSN,
                                          expStatSN: expStatSN, immediateLength: dataLength, immediate: immediate)
        }
        for (i, b) in cdb.prefix(16).enumerated() { h[32 + i] = b }
        return h
    }

    /// Sends a SCSI Command. By default it takes the next CmdSN (unless immediate) and a fresh ITT.
    /// Write data beyond the immediate part is kept and sent when the target asks with R2T (see `collect`).
    @discardableResult
    func sendCommand(_ cdb: [UInt8], lun: UInt64 = 1, read: Bool = false, edtl: Int = 0, writeData: [UInt8]? = nil,
                     itt: UInt32? = nil, cmdSN: UInt32? = nil, immediate: Bool = false,
                     immediateBytes: Int? = nil, serveR2T: Bool = true) throws -> UInt32 {
        if cmdSN == nil && !immediate && Serial.greaterThan(self.cmdSN, windowMaxCmdSN) {
            throw E2EError("the test would send CmdSN \(self.cmdSN) beyond the target's MaxCmdSN \(windowMaxCmdSN); " +
                           "ping first to learn the current window, or choose the CmdSN explicitly")
        }
        let tag = itt ?? takeITT()
        let sn = cmdSN ?? self.cmdSN
        if cmdSN == nil && !immediate { self.cmdSN &+= 1 }
        var length = edtl
        var unsolicited: [UInt8] = []
        if let writeData {
            length = writeData.count
            let allowed = immediateData ? min(firstBurst, targetMaxRecvDataSegment, writeData.count) : 0
            unsolicited = Array(writeData.prefix(min(immediateBytes ?? allowed, writeData.count)))
            if serveR2T && unsolicited.count < writeData.count { pendingWrites[tag] = writeData }
        }
        let h = commandHeader(cdb: cdb, lun: lun, itt: tag, cmdSN: sn, edtl: length, read: read,
                              write: writeData != nil, immediate: immediate, final: true, dataLength: unsolicited.count)
        try socket.send(frame(h, data: unsolicited))
        return tag
    }

    /// A Data-Out PDU (§11.7) with every field chosen by the caller.
    func dataOutPDU(itt: UInt32, ttt: UInt32, offset: Int, dataSN: UInt32, final: Bool, data: [UInt8],
                    lun: UInt64 = 1, corruptDataDigest: Bool = false) -> [UInt8] {
        let h = rawHeader {
            InitiatorPDUBuild.dataOut($0, final: final, lunField: encodeLUN(lun), itt: itt, ttt: ttt,
                                      expStatSN: expStatSN, dataSN: dataSN, bufferOffset: UInt32(offset),
                                      length: data.count)
        }
        return frame(h, data: data, corruptDataDigest: corruptDataDigest)
    }

    func sendDataOut(itt: UInt32, ttt: UInt32, offset: Int, dataSN: UInt32, final: Bool, data: [UInt8],
                     corruptDataDigest: Bool = false) throws {
        try socket.send(dataOutPDU(itt: itt, ttt: ttt, offset: offset, dataSN: dataSN, final: final, data: data,
                                   corruptDataDigest: corruptDataDigest))
    }

    /// Answers an R2T with the burst it asks for, in PDUs the target accepts.
    func serve(_ r2t: TargetPDU, from data: [UInt8]) throws {
        let start = Int(r2t.bufferOffset)
        let end = start + Int(r2t.u44)
        guard start >= 0, end <= data.count, start < end else { throw E2EError("R2T outside the write: \(r2t)") }
        var offset = start
        var sn: UInt32 = 0
        while offset < end {
            let n = min(targetMaxRecvDataSegment, end - offset)
            try sendDataOut(itt: r2t.itt, ttt: r2t.ttt, offset: offset, dataSN: sn, final: offset + n == end,
                            data: Array(data[offset..<(offset + n)]))
            offset += n
            sn &+= 1
        }
    }

    /// NOP-Out (§11.18). A ping of our own has an ITT and TTT 0xffffffff; an answer to the target's ping
    /// carries its TTT and ITT 0xffffffff.
    func nopOutPDU(itt: UInt32, ttt: UInt32, data: [UInt8] = []) -> [UInt8] {
        let h = rawHeader {
            InitiatorPDUBuild.nopOut($0, itt: itt, ttt: ttt, cmdSN: cmdSN, expStatSN: expStatSN, dataLength: data.count)
        }
        return frame(h, data: data)
    }

    /// A Task Management Function Request (§11.5), sent immediate.
    func sendTMF(function: UInt8, lun: UInt64 = 1, referencedITT: UInt32 = reservedTag,
                 refCmdSN: UInt32 = 0) throws -> UInt32 {
        let itt = takeITT()
        let h = rawHeader {
            InitiatorPDUBuild.taskManagementRequest($0, function: function, lunField: encodeLUN(lun), itt: itt,
                                                    referencedTaskTag: referencedITT, cmdSN: cmdSN,
                                                    expStatSN: expStatSN, refCmdSN: refCmdSN)
        }
        try socket.send(frame(h))
        return itt
    }

    /// A Logout Request (§11.14), immediate. Reason 0 closes the session, 1 the connection, 2 asks for recovery.
    func sendLogout(reason: UInt8 = 0) throws -> UInt32 {
        let itt = takeITT()
        let h = rawHeader {
            InitiatorPDUBuild.logoutRequest($0, reason: reason, itt: itt, cmdSN: cmdSN, expStatSN: expStatSN)
        }
        try socket.send(frame(h))
        return itt
    }

    // MARK: Receiving

    /// Reads the next PDU within `timeoutSeconds`. With `answerPings`, NOP-In pings are answered and
    /// skipped (they are counted). Throws when the target's PDU is malformed or its digests are wrong.
    func receive(timeoutSeconds: Double, answerPings: Bool = true) throws -> RawEvent {
        let deadline = monotonicSeconds() + timeoutSeconds
        while true {
            let event = try readPDU(deadline: deadline)
            guard case .pdu(let p) = event else { return event }
            if p.opcode == ISCSIOpcode.nopIn && p.ttt != reservedTag {
                pingsSeen += 1
                if answerPings {
                    // Answer the target's ping: ITT reserved, its TTT, immediate, no CmdSN consumed.
                    try socket.send(nopOutPDU(itt: reservedTag, ttt: p.ttt))
                    pingsAnswered += 1
                    continue
                }
            }
            return event
        }
    }

    private func readPDU(deadline: Double) throws -> RawEvent {
        let first: [UInt8]
        switch socket.read(48, deadline: deadline) {
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
            guard case .bytes(let b) = socket.read(ahs, deadline: deadline) else {
                throw E2EError("the target stopped inside a PDU's AHS")
            }
            header += b
        }
        if headerDigest {
            guard case .bytes(let d) = socket.read(Framing.digestBytes, deadline: deadline) else {
                throw E2EError("the target stopped before a header digest")
            }
            let got = rawDigest(d)
            let want = CRC32C.checksum(header)
            if got != want {
                throw E2EError(String(format: "the target sent a wrong header digest 0x%08x (want 0x%08x) on opcode 0x%02x",
                                      got, want, opcode))
            }
        }
        if dsl > options.maxRecvDataSegmentLength {
            throw E2EError("the target sent \(dsl) data bytes in one PDU; we declared \(options.maxRecvDataSegmentLength)")
        }
        var data: [UInt8] = []
        if dsl > 0 {
            let padded = Framing.padded(dsl)
            guard case .bytes(let d) = socket.read(padded, deadline: deadline) else {
                throw E2EError("the target stopped inside a \(dsl)-byte data segment")
            }
            if dataDigest {
                guard case .bytes(let dd) = socket.read(Framing.digestBytes, deadline: deadline) else {
                    throw E2EError("the target stopped before a data digest")
                }
                let got = rawDigest(dd)
                let want = CRC32C.checksum(d)
                if got != want {
                    throw E2EError(String(format: "the target sent a wrong data digest 0x%08x (want 0x%08x) on opcode 0x%02x",
                                          got, want, opcode))
                }
            }
            data = Array(d[0..<dsl])
        }
        let pdu = TargetPDU(header: header, data: data)
        track(pdu)
        return .pdu(pdu)
    }

    /// Follows StatSN and the command window the target advertises.
    private func track(_ p: TargetPDU) {
        if p.consumesStatSN && Serial.greaterThan(p.statSN &+ 1, expStatSN) { expStatSN = p.statSN &+ 1 }
        if p.opcode != ISCSIOpcode.loginResponse || p.header[36] == 0 {
            targetExpCmdSN = p.expCmdSN
            targetMaxCmdSN = p.maxCmdSN
            if Serial.greaterThan(p.maxCmdSN, windowMaxCmdSN) || windowMaxCmdSN == 0 { windowMaxCmdSN = p.maxCmdSN }
        }
    }

    /// The next PDU, which must arrive in time.
    func expectPDU(timeoutSeconds: Double = RawSessionLimits.answerTimeoutSeconds, _ what: String) throws -> TargetPDU {
        switch try receive(timeoutSeconds: timeoutSeconds) {
        case .pdu(let p): return p
        case .closed: throw E2EError("waiting for \(what): the target closed the connection")
        case .timeout: throw E2EError("waiting for \(what): nothing within \(timeoutSeconds) s")
        }
    }

    /// Waits for the final status of every ITT in `itts`, serving R2Ts for writes sent with data and
    /// gathering Data-In. Anything else (Reject, stray responses) is kept in `others`.
    func collect(_ itts: [UInt32], timeoutSeconds: Double = RawSessionLimits.answerTimeoutSeconds) throws
        -> [UInt32: CommandResult] {
        let deadline = monotonicSeconds() + timeoutSeconds
        var wanted = Set(itts)
        wanted.subtract(done)
        for p in keptR2Ts { if let data = pendingWrites[p.itt] { try serve(p, from: data) } }
        keptR2Ts.removeAll()
        while !wanted.isEmpty {
            let left = deadline - monotonicSeconds()
            let event = left > 0 ? try receive(timeoutSeconds: left) : .timeout
            switch event {
            case .closed:
                throw E2EError("the target closed the connection with \(wanted.count) command(s) unanswered")
            case .timeout:
                let some = wanted.sorted().prefix(4).map { String($0, radix: 16) }.joined(separator: ", ")
                throw E2EError("\(options.initiatorName): \(wanted.count) of \(itts.count) command(s) unanswered after " +
                               "\(timeoutSeconds) s (ITT \(some); window \(targetExpCmdSN)...\(targetMaxCmdSN), next CmdSN \(cmdSN))")
            case .pdu(let p):
                absorb(p)
                if p.opcode == ISCSIOpcode.r2t, let data = pendingWrites[p.itt] { try serve(p, from: data) }
                if done.contains(p.itt) { wanted.remove(p.itt) }
            }
        }
        var out: [UInt32: CommandResult] = [:]
        for i in itts {
            out[i] = results.removeValue(forKey: i)
            done.remove(i)
            pendingWrites.removeValue(forKey: i)
        }
        return out
    }

    /// Files a PDU under its command, or in `others`.
    private func absorb(_ p: TargetPDU) {
        switch p.opcode {
        case ISCSIOpcode.dataIn:
            var r = results[p.itt] ?? CommandResult()
            let end = Int(p.bufferOffset) + p.data.count
            if r.data.count < end { r.data += [UInt8](repeating: 0, count: end - r.data.count) }
            r.data.replaceSubrange(Int(p.bufferOffset)..<end, with: p.data)
            if p.hasStatus { r.status = p.status; done.insert(p.itt) }
            results[p.itt] = r
        case ISCSIOpcode.scsiResponse:
            var r = results[p.itt] ?? CommandResult()
            r.status = p.status
            r.response = p.byte2
            r.sense = p.sense
            results[p.itt] = r
            done.insert(p.itt)
        case ISCSIOpcode.r2t:
            if pendingWrites[p.itt] == nil { others.append(p) }
        default:
            others.append(p)
        }
    }

    /// Runs one command to completion.
    func run(_ cdb: [UInt8], lun: UInt64 = 1, read: Bool = false, edtl: Int = 0, writeData: [UInt8]? = nil,
             timeoutSeconds: Double = RawSessionLimits.answerTimeoutSeconds) throws -> CommandResult {
        let itt = try sendCommand(cdb, lun: lun, read: read, edtl: edtl, writeData: writeData)
        return try collect([itt], timeoutSeconds: timeoutSeconds)[itt]!
    }

    /// WRITE(10) of `data` at `lba`, then READ(10) of the same blocks; throws unless both are GOOD and the
    /// bytes read are the bytes written.
    func writeReadVerify(lba: UInt32, data: [UInt8], lun: UInt64 = 1) throws {
        let blocks = UInt16(data.count / RawSessionLimits.blockBytes)
        let w = try run(RawCDB.write10(lba: lba, blocks: blocks), lun: lun, writeData: data)
        guard w.status == RawCodes.good else { throw E2EError("WRITE(10) at \(lba): \(w)") }
        let r = try run(RawCDB.read10(lba: lba, blocks: blocks), lun: lun, read: true, edtl: data.count)
        guard r.status == RawCodes.good else { throw E2EError("READ(10) at \(lba): \(r)") }
        guard r.data == data else { throw E2EError("READ(10) at \(lba) returned other bytes than were written") }
    }

    /// Sends a NOP-Out ping and waits for its echo. Returns every other PDU that arrived before the echo:
    /// the target answers in order, so a command it answered before the ping shows up here. (Command
    /// responses among them are also filed for `collect`, and R2Ts for writes it serves are kept for it.)
    @discardableResult
    func ping(timeoutSeconds: Double = RawSessionLimits.answerTimeoutSeconds) throws -> [TargetPDU] {
        let itt = takeITT()
        let payload = Array("ping \(itt)".utf8)
        try socket.send(nopOutPDU(itt: itt, ttt: reservedTag, data: payload))
        var before: [TargetPDU] = []
        let deadline = monotonicSeconds() + timeoutSeconds
        while true {
            let left = deadline - monotonicSeconds()
            switch left > 0 ? try receive(timeoutSeconds: left) : .timeout {
            case .closed: throw E2EError("ping: the target closed the connection")
            case .timeout: throw E2EError("ping: no NOP-In echo within \(timeoutSeconds) s")
            case .pdu(let p):
                if p.opcode == ISCSIOpcode.nopIn && p.itt == itt {
                    guard p.data == payload else { throw E2EError("ping: the echo carries other data: \(p)") }
                    return before
                }
                if p.opcode == ISCSIOpcode.r2t && pendingWrites[p.itt] != nil { keptR2Ts.append(p); continue }
                if p.opcode == ISCSIOpcode.dataIn || p.opcode == ISCSIOpcode.scsiResponse { absorb(p) }
                before.append(p)
            }
        }
    }

    /// Hands back an R2T the test read itself, for the next `collect` to answer.
    func keep(_ r2t: TargetPDU) { keptR2Ts.append(r2t) }

    /// Forgets what `others` holds (after a test inspected it).
    func clearOthers() { others.removeAll() }

    /// Reads until the target closes (true) or the deadline passes (false).
    func awaitClose(timeoutSeconds: Double) -> Bool {
        socket.awaitClose(deadline: monotonicSeconds() + timeoutSeconds)
    }

    func close() { socket.close() }
}
