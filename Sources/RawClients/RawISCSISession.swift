// The one raw iSCSI initiator, on a raw TCP socket (RawSocket.swift), for the end-to-end tests that must
// choose every field a real initiator would get right (CmdSN, ITT, TTT, DataSN, buffer offsets, digests,
// task management), for perf/livefuzz's probes and floods, and for perf/loadgen's session setup (whose socket
// it then hands over with `RawSocket.detach`).
//
// It logs in (normal session, one operational step, after a security stage for CHAP or on request; key
// text it builds itself; optionally tolerating digests on the final Login Response), sends SCSI Command,
// Data-Out, NOP-Out, Task Management and Logout PDUs, and reads the target's PDUs back, each read
// bounded by a deadline so a target that neither answers nor closes shows up as `.timeout`, never a
// hang. Headers come from ISCSIWire's builders and digests from its CRC32C; a PDU with a wrong digest
// from the target is an error of the target and throws. Target only for the login's text keys and CHAP.

import Foundation
import ISCSIWire
import Target
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Bounds of the raw session, with their units.
public enum RawSessionLimits {
    /// How long the target gets to answer one request in the happy path.
    public static let answerTimeoutSeconds = 10.0
    /// Login steps before the helper gives up on reaching full feature phase.
    public static let maxLoginSteps = 4
    /// The largest data segment this initiator accepts (declared as its MaxRecvDataSegmentLength).
    public static let defaultMaxRecvDataSegmentBytes = 262_144
    /// The logical block size of every LUN the harness creates (ringtgtadm's default, as tgtadm's).
    public static let blockBytes = 512
    /// How long a read waits for a digest the target may have put on a PDU that carries none (see
    /// `RawSocket.readPDU`'s `strayDigests`; only with `RawLoginOptions.toleratesLoginResponseDigests`).
    public static let strayDigestWaitSeconds = 0.2
}

// MARK: - PDUs

/// A field of a header or data segment held in an array, read through ISCSIWire.
public func rawBE32(_ b: [UInt8], _ o: Int) -> UInt32 { b.withUnsafeBytes { be32($0.baseAddress!, o) } }
public func rawBE16(_ b: [UInt8], _ o: Int) -> UInt16 { b.withUnsafeBytes { be16($0.baseAddress!, o) } }

/// A digest as it arrives (little-endian, see CRC32C).
public func rawDigest(_ b: [UInt8]) -> UInt32 { b.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) } }

/// A 48-byte BHS written by one of ISCSIWire's builders.
public func rawHeader(_ build: (UnsafeMutableRawPointer) -> Void) -> [UInt8] {
    var h = [UInt8](repeating: 0, count: bhsBytes)
    h.withUnsafeMutableBytes { build($0.baseAddress!) }
    return h
}

/// A PDU without digests: the BHS `build` writes, then `data` padded to 4 bytes.
public func rawPDU(data: [UInt8] = [], _ build: (UnsafeMutableRawPointer) -> Void) -> [UInt8] {
    rawHeader(build) + data + [UInt8](repeating: 0, count: Framing.padLength(data.count))
}

/// The BHS of a SCSI Command (§11.3) with `cdb` (at most 16 bytes) in place; every number the caller's.
public func rawCommandHeader(cdb: [UInt8], lun: UInt64, itt: UInt32, cmdSN: UInt32, expStatSN: UInt32, edtl: Int,
                             read: Bool, write: Bool, immediate: Bool = false, final: Bool = true,
                             dataLength: Int) -> [UInt8] {
    var h = rawHeader {
        InitiatorPDUBuild.scsiCommand($0, read: read, write: write, final: final, lunField: encodeLUN(lun),
                                      itt: itt, expectedLength: UInt32(edtl), cmdSN: cmdSN,
                                      expStatSN: expStatSN, immediateLength: dataLength, immediate: immediate)
    }
    for (i, b) in cdb.prefix(16).enumerated() { h[32 + i] = b }
    return h
}

/// The codes the tests check that are SCSI's, not iSCSI's (those come from ISCSIWire).
public enum RawCodes {
    /// SCSI status bytes.
    public static let good: UInt8 = 0x00, checkCondition: UInt8 = 0x02, taskSetFull: UInt8 = 0x28
}

/// One PDU from the target: its header (BHS and AHS) and data segment, digests already checked.
public struct TargetPDU: CustomStringConvertible {
    public let header: [UInt8]
    public let data: [UInt8]
    /// Digests came with it although none applied (see `RawSocket.readPDU`'s `strayDigests`).
    public var hadStrayDigests = false

    /// A field of the header, read through ISCSIWire's BHS view.
    private func field<T>(_ read: (BHS) -> T) -> T { header.withUnsafeBytes { read(BHS($0.baseAddress!)) } }

    public var opcode: UInt8 { field { $0.opcode } }
    public var flags: UInt8 { field { $0.byte1 } }
    public var final: Bool { field { $0.final } }
    public var itt: UInt32 { field { $0.itt } }
    public var ttt: UInt32 { field { $0.ttt } }
    public var statSN: UInt32 { field { $0.statSN } }
    public var expCmdSN: UInt32 { field { $0.expCmdSN } }
    public var maxCmdSN: UInt32 { field { $0.maxCmdSN } }
    /// SCSI Response: iSCSI response code; TMF Response: the function's response; Reject: the reason.
    public var byte2: UInt8 { field { $0.response } }
    /// Login Response: status class and detail (bytes 36 and 37; `LoginStatus`'s raw value).
    public var loginStatus: UInt16 { field { $0.u16(36) } }
    /// SCSI Response and Data-In with S: the SCSI status.
    public var status: UInt8 { field { $0.status } }
    /// Data-In: the S bit (status collapsed into this PDU).
    public var hasStatus: Bool { opcode == ISCSIOpcode.dataIn && field { $0.hasStatus } }
    /// R2T: R2TSN, buffer offset, desired length. Data-In: DataSN, buffer offset, residual.
    public var u36: UInt32 { field { $0.u32(36) } }
    public var bufferOffset: UInt32 { field { $0.bufferOffset } }
    public var u44: UInt32 { field { $0.u32(44) } }

    /// Fixed-format sense of a SCSI Response: (key, ASC, ASCQ), or nil without sense data.
    public var sense: (key: UInt8, asc: UInt8, ascq: UInt8)? {
        guard opcode == ISCSIOpcode.scsiResponse, data.count >= 2 + 14 else { return nil }
        return (data[4] & 0x0F, data[14], data[15])
    }

    /// Whether this PDU carries a StatSN the initiator must acknowledge.
    public var consumesStatSN: Bool {
        switch opcode {
        case ISCSIOpcode.scsiResponse, ISCSIOpcode.taskManagementResponse, ISCSIOpcode.textResponse, ISCSIOpcode.logoutResponse, ISCSIOpcode.reject,
             ISCSIOpcode.loginResponse:
            return true
        case ISCSIOpcode.nopIn: return itt != reservedTag
        case ISCSIOpcode.dataIn: return hasStatus
        default: return false
        }
    }

    public var description: String {
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
public enum RawCDB {
    public static let testUnitReady = [UInt8](repeating: 0, count: 6)

    /// INQUIRY, standard data, `allocationLength` bytes at most.
    public static func inquiry(allocationLength: UInt16 = 96) -> [UInt8] {
        [Opcode.inquiry, 0, 0, UInt8(allocationLength >> 8), UInt8(allocationLength & 0xFF), 0]
    }
    /// READ CAPACITY(16) (a service action of SERVICE ACTION IN(16)), `allocationLength` bytes at most.
    public static func readCapacity16(allocationLength: UInt32 = 32) -> [UInt8] {
        var c = [UInt8](repeating: 0, count: 16)
        c[0] = Opcode.serviceActionIn16
        c[1] = ServiceAction.readCapacity16
        c.withUnsafeMutableBytes { put32($0.baseAddress!, 10, allocationLength) }
        return c
    }
    public static func read10(lba: UInt32, blocks: UInt16) -> [UInt8] { rw10(Opcode.read10, lba: lba, blocks: blocks) }
    public static func write10(lba: UInt32, blocks: UInt16) -> [UInt8] { rw10(Opcode.write10, lba: lba, blocks: blocks) }
    public static func read16(lba: UInt64, blocks: UInt32) -> [UInt8] { rw16(Opcode.read16, lba: lba, blocks: blocks) }
    public static func write16(lba: UInt64, blocks: UInt32) -> [UInt8] { rw16(Opcode.write16, lba: lba, blocks: blocks) }
    /// COMPARE AND WRITE: `blocks` blocks compared, then as many written (its data is twice their length).
    public static func compareAndWrite(lba: UInt64, blocks: UInt8) -> [UInt8] {
        var c = rw16(Opcode.compareAndWrite, lba: lba, blocks: 0)
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
public struct CommandResult: CustomStringConvertible {
    public var status: UInt8 = 0
    /// iSCSI response code of a SCSI Response (0 = command completed at target).
    public var response: UInt8 = 0
    public var data: [UInt8] = []
    public var sense: (key: UInt8, asc: UInt8, ascq: UInt8)? = nil
    public var description: String {
        var s = String(format: "status 0x%02x response 0x%02x, %d data bytes", status, response, data.count)
        if let k = sense { s += String(format: ", sense %x/%02x/%02x", k.key, k.asc, k.ascq) }
        return s
    }
}

/// Bytes from a seeded generator, so a mismatch can be reproduced.
public func patternBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var g = SeededRandom(seed: seed)
    return g.bytes(count)
}

// MARK: - Session

/// What to offer at login, and the session's time bounds.
public struct RawLoginOptions {
    public var initiatorName: String
    /// 48 bits; the top two bits 01 say "random" format (RFC 7143 §11.12.5).
    public var isid: UInt64
    public var headerDigest: String
    public var dataDigest: String
    public var maxRecvDataSegmentLength: Int
    public var immediateData: Bool
    public var firstBurstLength: Int
    public var maxBurstLength: Int
    public var initialR2T: Bool
    /// Log in through the security stage (AuthMethod=None) before the operational one, as libiscsi and
    /// open-iscsi do, instead of starting in the operational stage. CHAP always has a security stage.
    public var securityStage: Bool
    /// Recognise and skip digests a target puts on operational-stage Login Responses (ringtgtd once did on
    /// the final one), and remember that it did (`RawSession.loginResponseHadDigests`), instead of failing on
    /// the next PDU. Can cost up to `RawSessionLimits.strayDigestWaitSeconds` per response (see `readPDU`).
    public var toleratesLoginResponseDigests: Bool
    /// Shrinks the socket's receive buffer (slow-client tests).
    public var receiveBufferBytes: Int?
    /// One-way CHAP (MD5) in a security stage before the operational one; nil logs in without one.
    public var chap: (user: String, secret: String)?
    /// After login, TEST UNIT READY on these LUNs until the power-on UNIT ATTENTION every new I_T nexus
    /// starts with has been reported, as real initiators do, so tests see only the effects they cause.
    public var clearUnitAttentionLUNs: [UInt64]
    /// Connect from this local IPv4 address (see RawSocket).
    public var sourceAddress: String?
    /// How long the target gets to answer each login step and each TEST UNIT READY after it.
    public var answerTimeoutSeconds: Double
    /// The socket's send timeout.
    public var sendTimeoutSeconds: Double

    public init(initiatorName: String = "iqn.2026-01.org.ringtgt:raw-session", isid: UInt64 = LoginPDU.isid,
                headerDigest: String = "None", dataDigest: String = "None",
                maxRecvDataSegmentLength: Int = RawSessionLimits.defaultMaxRecvDataSegmentBytes,
                immediateData: Bool = true, firstBurstLength: Int = 65536, maxBurstLength: Int = 262_144,
                initialR2T: Bool = true, securityStage: Bool = false, toleratesLoginResponseDigests: Bool = false,
                receiveBufferBytes: Int? = nil, chap: (user: String, secret: String)? = nil,
                clearUnitAttentionLUNs: [UInt64] = [1], sourceAddress: String? = nil,
                answerTimeoutSeconds: Double = RawSessionLimits.answerTimeoutSeconds,
                sendTimeoutSeconds: Double = RawSocketLimits.sendTimeoutSeconds) {
        self.initiatorName = initiatorName
        self.isid = isid
        self.headerDigest = headerDigest
        self.dataDigest = dataDigest
        self.maxRecvDataSegmentLength = maxRecvDataSegmentLength
        self.immediateData = immediateData
        self.firstBurstLength = firstBurstLength
        self.maxBurstLength = maxBurstLength
        self.initialR2T = initialR2T
        self.securityStage = securityStage
        self.toleratesLoginResponseDigests = toleratesLoginResponseDigests
        self.receiveBufferBytes = receiveBufferBytes
        self.chap = chap
        self.clearUnitAttentionLUNs = clearUnitAttentionLUNs
        self.sourceAddress = sourceAddress
        self.answerTimeoutSeconds = answerTimeoutSeconds
        self.sendTimeoutSeconds = sendTimeoutSeconds
    }

    /// The operational keys a normal session offers, naming `target`.
    public func keys(target: String) -> [TextKeyValue] {
        [
            TextKeyValue("InitiatorName", initiatorName), TextKeyValue("SessionType", "Normal"),
            TextKeyValue("TargetName", target),
            TextKeyValue("HeaderDigest", headerDigest), TextKeyValue("DataDigest", dataDigest),
            TextKeyValue("MaxRecvDataSegmentLength", "\(maxRecvDataSegmentLength)"),
            TextKeyValue("InitialR2T", initialR2T ? "Yes" : "No"), TextKeyValue("ImmediateData", immediateData ? "Yes" : "No"),
            TextKeyValue("FirstBurstLength", "\(firstBurstLength)"),
            TextKeyValue("MaxBurstLength", "\(maxBurstLength)"),
            TextKeyValue("MaxOutstandingR2T", "1"), TextKeyValue("DataPDUInOrder", "Yes"),
            TextKeyValue("DataSequenceInOrder", "Yes"), TextKeyValue("ErrorRecoveryLevel", "0"),
            TextKeyValue("MaxConnections", "1"), TextKeyValue("DefaultTime2Wait", "2"),
            TextKeyValue("DefaultTime2Retain", "0"),
        ]
    }
}

/// One event on the connection.
public enum RawEvent {
    case pdu(TargetPDU)
    case closed
    case timeout
}

public final class RawSession {
    public let socket: RawSocket
    public let options: RawLoginOptions
    /// The keys the target answered at login.
    public private(set) var negotiated: [String: String] = [:]
    public private(set) var tsih: UInt16 = 0
    public var headerDigest = false
    public var dataDigest = false
    /// The most data the target accepts in one PDU (its declared MaxRecvDataSegmentLength).
    public private(set) var targetMaxRecvDataSegment = 8192
    public private(set) var firstBurst = 65536
    public private(set) var maxBurst = 262_144
    public private(set) var immediateData = false
    /// InitialR2T as negotiated (RFC 7143 §13.10: Yes unless both sides said No).
    public private(set) var initialR2T = true
    /// The target put digests on a Login Response (see `RawLoginOptions.toleratesLoginResponseDigests`).
    public private(set) var loginResponseHadDigests = false

    /// The next CmdSN to use for a non-immediate command.
    public var cmdSN: UInt32 = 1
    public var expStatSN: UInt32 = 0
    /// The window in the latest PDU from the target.
    public private(set) var targetExpCmdSN: UInt32 = 0
    public private(set) var targetMaxCmdSN: UInt32 = 0
    /// The highest MaxCmdSN seen: an initiator ignores a lower one (RFC 7143 §3.2.2.1), so this is how far
    /// it may go. `sendCommand` refuses to pass it unless the test chooses the CmdSN itself.
    public private(set) var windowMaxCmdSN: UInt32 = 0
    private var nextITT: UInt32 = 0x1000
    /// NOP-In pings (TTT set) the helper answered while reading.
    public private(set) var pingsAnswered = 0
    /// NOP-In pings seen (answered or not).
    public private(set) var pingsSeen = 0
    /// Write data to hand out when the target sends R2T for that ITT.
    private var pendingWrites: [UInt32: [UInt8]] = [:]
    /// Results and PDUs that arrived for commands nobody was waiting for yet.
    private var results: [UInt32: CommandResult] = [:]
    private var done: Set<UInt32> = []
    /// PDUs read while waiting for something else that were not about a command (Reject, TMF, ...).
    public private(set) var others: [TargetPDU] = []
    /// R2Ts a test read itself and handed back with `keep`, served by the next `collect`.
    private var keptR2Ts: [TargetPDU] = []

    /// Connects and logs in to `target`; throws unless the target lets the session into full feature phase.
    public init(_ endpoint: Endpoint, target: String, options: RawLoginOptions = RawLoginOptions()) throws {
        self.options = options
        socket = try RawSocket(endpoint, receiveBufferBytes: options.receiveBufferBytes,
                               sourceAddress: options.sourceAddress, sendTimeoutSeconds: options.sendTimeoutSeconds)
        try login(target: target)
        for lun in options.clearUnitAttentionLUNs {
            var r = try run(RawCDB.testUnitReady, lun: lun, timeoutSeconds: options.answerTimeoutSeconds)
            if r.status == RawCodes.checkCondition && r.sense?.key == 0x06 {
                r = try run(RawCDB.testUnitReady, lun: lun, timeoutSeconds: options.answerTimeoutSeconds)
            }
            guard r.status == RawCodes.good else { throw RawClientError("TEST UNIT READY on LUN \(lun) after login: \(r)") }
        }
    }

    public func takeITT() -> UInt32 {
        nextITT &+= 1
        if nextITT == reservedTag { nextITT = 1 }
        return nextITT
    }

    // MARK: Login

    /// A Login Request, by default from the operational stage straight to full feature phase (no security stage).
    public func loginRequest(keys: [TextKeyValue], csg: UInt8 = 1, nsg: UInt8 = 3) -> [UInt8] {
        LoginPDU.request(keys: keys, csg: csg, nsg: nsg, isid: options.isid, cmdSN: cmdSN, expStatSN: expStatSN)
    }

    /// One security-stage exchange (CSG 0, transit to 1 asked): the target's keys and whether it transited.
    private func securityStep(_ keys: [TextKeyValue]) throws -> (keys: [String: String], transit: Bool) {
        try socket.send(loginRequest(keys: keys, csg: 0, nsg: 1))
        let r = try readLoginResponse(strayDigests: (false, false))
        var answer: [String: String] = [:]
        for kv in (try? TextKeys.parse(r.data)) ?? [] { answer[kv.key] = kv.value }
        return (answer, r.flags & 0x80 != 0)
    }

    /// The target's answer to a Login Request, which must be a success. Login PDUs carry no digests;
    /// `strayDigests` says which ones to recognise and skip if the target sends them anyway.
    private func readLoginResponse(strayDigests: (header: Bool, data: Bool)) throws -> TargetPDU {
        let event = try socket.readPDU(deadline: monotonicSeconds() + options.answerTimeoutSeconds,
                                       maxDataSegmentBytes: options.maxRecvDataSegmentLength, strayDigests: strayDigests)
        guard case .pdu(let r) = event else { throw RawClientError("login: no Login Response (\(event))") }
        track(r)
        guard r.opcode == ISCSIOpcode.loginResponse else { throw RawClientError("login: got \(r)") }
        guard r.loginStatus == LoginStatus.success.rawValue else {
            throw RawClientError(String(format: "login refused: status class 0x%02x detail 0x%02x", r.header[36], r.header[37]))
        }
        if r.hadStrayDigests { loginResponseHadDigests = true }
        return r
    }

    /// The keys that name the session, sent in its first Login Request.
    private static let identityKeys = ["InitiatorName", "SessionType", "TargetName"]

    /// RFC 7143 §12.1.3 as open-iscsi does it: AuthMethod=CHAP, CHAP_A=5, then CHAP_N and CHAP_R.
    private func authenticate(target: String, user: String, secret: String) throws {
        let identity = options.keys(target: target).filter { Self.identityKeys.contains($0.key) }
        let offer = try securityStep(identity + [TextKeyValue("AuthMethod", "CHAP")])
        guard offer.keys["AuthMethod"] == "CHAP" else { throw RawClientError("CHAP login: target answered \(offer.keys)") }
        let challenge = try securityStep([TextKeyValue("CHAP_A", CHAP.md5Algorithm)])
        guard let idText = challenge.keys["CHAP_I"], let id = UInt8(idText),
              let c = challenge.keys["CHAP_C"].flatMap(CHAP.decodeBinary) else {
            throw RawClientError("CHAP login: no challenge in \(challenge.keys)")
        }
        let response = CHAP.response(identifier: id, secret: Array(secret.utf8), challenge: c)
        let done = try securityStep([TextKeyValue("CHAP_N", user), TextKeyValue("CHAP_R", CHAP.encodeHex(response))])
        guard done.transit else { throw RawClientError("CHAP login: the target did not leave the security stage") }
    }

    private func login(target: String) throws {
        var keys = options.keys(target: target)
        if let chap = options.chap {
            try authenticate(target: target, user: chap.user, secret: chap.secret)
        } else if options.securityStage {
            let identity = keys.filter { Self.identityKeys.contains($0.key) }
            let step = try securityStep(identity + [TextKeyValue("AuthMethod", "None")])
            guard step.transit else { throw RawClientError("login: the target did not leave the security stage (\(step.keys))") }
        }
        if options.chap != nil || options.securityStage {
            // Named in the security stage already.
            keys.removeAll { Self.identityKeys.contains($0.key) }
        }
        let stray = options.toleratesLoginResponseDigests
            ? (header: options.headerDigest.contains("CRC32C"), data: options.dataDigest.contains("CRC32C")) : (false, false)
        for _ in 0..<RawSessionLimits.maxLoginSteps {
            try socket.send(loginRequest(keys: keys))
            let r = try readLoginResponse(strayDigests: stray)
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
                initialR2T = (negotiated["InitialR2T"] ?? "Yes") == "Yes"
                return
            }
        }
        throw RawClientError("login did not reach full feature phase in \(RawSessionLimits.maxLoginSteps) steps")
    }

    // MARK: Sending

    /// Frames a PDU: header digest after the BHS, data padded to 4 bytes, data digest after it.
    public func frame(_ bhs: [UInt8], data: [UInt8] = [], corruptHeaderDigest: Bool = false,
               corruptDataDigest: Bool = false) -> [UInt8] {
        var out = bhs
        if headerDigest {
            var crc = CRC32C.checksum(bhs)
            if corruptHeaderDigest { crc ^= 0x5A5A_0001 }
            out += withUnsafeBytes(of: crc.littleEndian, Array.init)
        }
        if !data.isEmpty {
            let padded = data + [UInt8](repeating: 0, count: Framing.padLength(data.count))
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
    public func commandHeader(cdb: [UInt8], lun: UInt64, itt: UInt32, cmdSN: UInt32, edtl: Int, read: Bool, write: Bool,
                              immediate: Bool, final: Bool, dataLength: Int) -> [UInt8] {
        rawCommandHeader(cdb: cdb, lun: lun, itt: itt, cmdSN: cmdSN, expStatSN: expStatSN, edtl: edtl, read: read,
                         write: write, immediate: immediate, final: final, dataLength: dataLength)
    }

    /// Sends a SCSI Command. By default it takes the next CmdSN (unless immediate) and a fresh ITT.
    /// Write data beyond the immediate part is kept and sent when the target asks with R2T (see `collect`).
    @discardableResult
    public func sendCommand(_ cdb: [UInt8], lun: UInt64 = 1, read: Bool = false, edtl: Int = 0, writeData: [UInt8]? = nil,
                     itt: UInt32? = nil, cmdSN: UInt32? = nil, immediate: Bool = false,
                     immediateBytes: Int? = nil, serveR2T: Bool = true) throws -> UInt32 {
        if cmdSN == nil && !immediate && Serial.greaterThan(self.cmdSN, windowMaxCmdSN) {
            throw RawClientError("the test would send CmdSN \(self.cmdSN) beyond the target's MaxCmdSN \(windowMaxCmdSN); " +
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
    public func dataOutPDU(itt: UInt32, ttt: UInt32, offset: Int, dataSN: UInt32, final: Bool, data: [UInt8],
                    lun: UInt64 = 1, corruptDataDigest: Bool = false) -> [UInt8] {
        let h = rawHeader {
            InitiatorPDUBuild.dataOut($0, final: final, lunField: encodeLUN(lun), itt: itt, ttt: ttt,
                                      expStatSN: expStatSN, dataSN: dataSN, bufferOffset: UInt32(offset),
                                      length: data.count)
        }
        return frame(h, data: data, corruptDataDigest: corruptDataDigest)
    }

    public func sendDataOut(itt: UInt32, ttt: UInt32, offset: Int, dataSN: UInt32, final: Bool, data: [UInt8],
                     corruptDataDigest: Bool = false) throws {
        try socket.send(dataOutPDU(itt: itt, ttt: ttt, offset: offset, dataSN: dataSN, final: final, data: data,
                                   corruptDataDigest: corruptDataDigest))
    }

    /// Answers an R2T with the burst it asks for, in PDUs the target accepts.
    public func serve(_ r2t: TargetPDU, from data: [UInt8]) throws {
        let start = Int(r2t.bufferOffset)
        let end = start + Int(r2t.u44)
        guard start >= 0, end <= data.count, start < end else { throw RawClientError("R2T outside the write: \(r2t)") }
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
    public func nopOutPDU(itt: UInt32, ttt: UInt32, data: [UInt8] = []) -> [UInt8] {
        let h = rawHeader {
            InitiatorPDUBuild.nopOut($0, itt: itt, ttt: ttt, cmdSN: cmdSN, expStatSN: expStatSN, dataLength: data.count)
        }
        return frame(h, data: data)
    }

    /// A Task Management Function Request (§11.5), sent immediate.
    public func sendTMF(function: UInt8, lun: UInt64 = 1, referencedITT: UInt32 = reservedTag,
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
    public func sendLogout(reason: UInt8 = 0) throws -> UInt32 {
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
    public func receive(timeoutSeconds: Double, answerPings: Bool = true) throws -> RawEvent {
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
        let event = try socket.readPDU(deadline: deadline, headerDigest: headerDigest, dataDigest: dataDigest,
                                       maxDataSegmentBytes: options.maxRecvDataSegmentLength)
        if case .pdu(let p) = event { track(p) }
        return event
    }

    /// Follows StatSN and the command window the target advertises.
    private func track(_ p: TargetPDU) {
        if p.consumesStatSN && Serial.greaterThan(p.statSN &+ 1, expStatSN) { expStatSN = p.statSN &+ 1 }
        if p.opcode != ISCSIOpcode.loginResponse || p.loginStatus == LoginStatus.success.rawValue {
            targetExpCmdSN = p.expCmdSN
            targetMaxCmdSN = p.maxCmdSN
            if Serial.greaterThan(p.maxCmdSN, windowMaxCmdSN) || windowMaxCmdSN == 0 { windowMaxCmdSN = p.maxCmdSN }
        }
    }

    /// The next PDU, which must arrive in time.
    public func expectPDU(timeoutSeconds: Double = RawSessionLimits.answerTimeoutSeconds, _ what: String) throws -> TargetPDU {
        switch try receive(timeoutSeconds: timeoutSeconds) {
        case .pdu(let p): return p
        case .closed: throw RawClientError("waiting for \(what): the target closed the connection")
        case .timeout: throw RawClientError("waiting for \(what): nothing within \(timeoutSeconds) s")
        }
    }

    /// Waits for the final status of every ITT in `itts`, serving R2Ts for writes sent with data and
    /// gathering Data-In. Anything else (Reject, stray responses) is kept in `others`.
    public func collect(_ itts: [UInt32], timeoutSeconds: Double = RawSessionLimits.answerTimeoutSeconds) throws
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
                throw RawClientError("the target closed the connection with \(wanted.count) command(s) unanswered")
            case .timeout:
                let some = wanted.sorted().prefix(4).map { String($0, radix: 16) }.joined(separator: ", ")
                throw RawClientError("\(options.initiatorName): \(wanted.count) of \(itts.count) command(s) unanswered after " +
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
    public func run(_ cdb: [UInt8], lun: UInt64 = 1, read: Bool = false, edtl: Int = 0, writeData: [UInt8]? = nil,
             timeoutSeconds: Double = RawSessionLimits.answerTimeoutSeconds) throws -> CommandResult {
        let itt = try sendCommand(cdb, lun: lun, read: read, edtl: edtl, writeData: writeData)
        return try collect([itt], timeoutSeconds: timeoutSeconds)[itt]!
    }

    /// WRITE(10) of `data` at `lba`, then READ(10) of the same blocks; throws unless both are GOOD and the
    /// bytes read are the bytes written.
    public func writeReadVerify(lba: UInt32, data: [UInt8], lun: UInt64 = 1) throws {
        let blocks = UInt16(data.count / RawSessionLimits.blockBytes)
        let w = try run(RawCDB.write10(lba: lba, blocks: blocks), lun: lun, writeData: data)
        guard w.status == RawCodes.good else { throw RawClientError("WRITE(10) at \(lba): \(w)") }
        let r = try run(RawCDB.read10(lba: lba, blocks: blocks), lun: lun, read: true, edtl: data.count)
        guard r.status == RawCodes.good else { throw RawClientError("READ(10) at \(lba): \(r)") }
        guard r.data == data else { throw RawClientError("READ(10) at \(lba) returned other bytes than were written") }
    }

    /// Sends a NOP-Out ping and waits for its echo. Returns every other PDU that arrived before the echo:
    /// the target answers in order, so a command it answered before the ping shows up here. (Command
    /// responses among them are also filed for `collect`, and R2Ts for writes it serves are kept for it.)
    @discardableResult
    public func ping(timeoutSeconds: Double = RawSessionLimits.answerTimeoutSeconds) throws -> [TargetPDU] {
        let itt = takeITT()
        let payload = Array("ping \(itt)".utf8)
        try socket.send(nopOutPDU(itt: itt, ttt: reservedTag, data: payload))
        var before: [TargetPDU] = []
        let deadline = monotonicSeconds() + timeoutSeconds
        while true {
            let left = deadline - monotonicSeconds()
            switch left > 0 ? try receive(timeoutSeconds: left) : .timeout {
            case .closed: throw RawClientError("ping: the target closed the connection")
            case .timeout: throw RawClientError("ping: no NOP-In echo within \(timeoutSeconds) s")
            case .pdu(let p):
                if p.opcode == ISCSIOpcode.nopIn && p.itt == itt {
                    guard p.data == payload else { throw RawClientError("ping: the echo carries other data: \(p)") }
                    return before
                }
                if p.opcode == ISCSIOpcode.r2t && pendingWrites[p.itt] != nil { keptR2Ts.append(p); continue }
                if p.opcode == ISCSIOpcode.dataIn || p.opcode == ISCSIOpcode.scsiResponse { absorb(p) }
                before.append(p)
            }
        }
    }

    /// Hands back an R2T the test read itself, for the next `collect` to answer.
    public func keep(_ r2t: TargetPDU) { keptR2Ts.append(r2t) }

    /// Forgets what `others` holds (after a test inspected it).
    public func clearOthers() { others.removeAll() }

    /// Reads until the target closes (true) or the deadline passes (false).
    public func awaitClose(timeoutSeconds: Double) -> Bool {
        socket.awaitClose(deadline: monotonicSeconds() + timeoutSeconds)
    }

    public func close() { socket.close() }
}
