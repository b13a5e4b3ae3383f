// The live fuzzer: each case is one connection with a valid start (an iSCSI login, or the NBD handshake)
// followed by a stream of valid PDUs or requests, mutated. Case N's bytes depend only on (seed, N), so a
// failure replays with `--seed S --case N`. The target's answers are read and dropped: the fuzzer judges
// liveness (probes), survival and memory, not the content of each answer. The PDUs and requests are built
// with ISCSIWire's builders and RawClients' framing; the numbers come from DeterministicRandom's SeededRandom.
import Foundation
import ISCSIWire
import RawClients
import Target
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Values at the edges of the fields they land in.
let interestingBytes: [UInt8] = [0, 1, 0x7f, 0x80, 0xfe, 0xff, 0x3f, 0x40, 0xc0]
let interesting32: [UInt32] = [0, 1, 47, 48, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 0xffff_fffe, 8192, 65535, 65536,
                               65537, 262_144, 16_777_215, 1 << 20]

enum Protocol: String { case iscsi, nbd }

/// One case's bytes: the valid opening is sent as is (it must succeed for the case to reach the mutated part,
/// except when `mutateOpening`), then `stream`.
struct FuzzCase {
    var proto: Protocol
    var opening: [UInt8]
    var stream: [UInt8]
    /// Read the answers for this long before closing (0: close at once, mid-answer).
    var lingerMilliseconds: Int
    var description: String
}

enum Mutator {
    /// 1-4 mutations of a byte stream made of units (PDUs or requests) starting at `boundaries`.
    static func mutate(_ s: inout [UInt8], boundaries: [Int], headerBytes: Int, rng: inout SeededRandom, log: inout [String]) {
        let n = 1 + rng.below(4)
        for _ in 0..<n {
            guard !s.isEmpty else { return }
            let unit = boundaries.isEmpty ? 0 : rng.pick(boundaries)
            let op = rng.below(10)
            switch op {
            case 0:  // flip a bit, mostly in a header
                let at = rng.chance(800) ? min(s.count - 1, unit + rng.below(headerBytes)) : rng.below(s.count)
                s[at] ^= 1 << UInt8(rng.below(8)); log.append("flip@\(at)")
            case 1:  // an edge value in a byte
                let at = min(s.count - 1, unit + rng.below(headerBytes))
                s[at] = rng.pick(interestingBytes); log.append("byte@\(at)")
            case 2:  // an edge value in an aligned 32-bit field of a header
                let at = unit + 4 * rng.below(headerBytes / 4)
                put(&s, at, rng.pick(interesting32)); log.append("u32@\(at)")
            case 3:  // truncate the stream
                let cut = rng.below(s.count)
                s.removeLast(s.count - cut); log.append("truncate@\(cut)")
            case 4:  // splice: a copy of another chunk of the stream inserted anywhere
                let from = rng.below(s.count), len = 1 + rng.below(min(96, s.count - from))
                let chunk = Array(s[from..<(from + len)])
                s.insert(contentsOf: chunk, at: rng.below(s.count + 1)); log.append("splice\(len)")
            case 5:  // delete a chunk
                let from = rng.below(s.count), len = 1 + rng.below(min(64, s.count - from))
                s.removeSubrange(from..<(from + len)); log.append("delete\(len)")
            case 6:  // random bytes inserted
                let len = 1 + rng.below(64)
                s.insert(contentsOf: rng.bytes(len), at: rng.below(s.count + 1)); log.append("insert\(len)")
            case 7:  // duplicate a whole unit (same tags, same sequence numbers)
                let end = boundaries.first(where: { $0 > unit }) ?? s.count
                if end > unit && end <= s.count { s.insert(contentsOf: Array(s[unit..<end]), at: end) }
                log.append("dup@\(unit)")
            default:  // a random 32-bit value in a header
                let at = unit + 4 * rng.below(headerBytes / 4)
                put(&s, at, UInt32(truncatingIfNeeded: rng.next())); log.append("rand32@\(at)")
            }
        }
    }

    static func put(_ s: inout [UInt8], _ at: Int, _ v: UInt32) {
        for i in 0..<4 where at + i < s.count { s[at + i] = UInt8(truncatingIfNeeded: v >> UInt32(24 - 8 * i)) }
    }
}

enum CaseMaker {
    /// iSCSI full-feature PDUs, numbered as a real session after login numbers them (CmdSN from 1).
    static func iscsi(rng: inout SeededRandom) -> (stream: [UInt8], boundaries: [Int], kinds: [String]) {
        var sess = ISCSISessionNumbers()
        var out: [UInt8] = [], bounds: [Int] = [], kinds: [String] = []
        for _ in 0..<(1 + rng.below(8)) {
            bounds.append(out.count)
            let k = rng.below(12)
            let lun = UInt64(rng.chance(850) ? 1 + rng.below(2) : rng.below(300))
            switch k {
            case 0: kinds.append("nop"); out += sess.nop(rng.chance(300) ? rng.bytes(rng.below(600)) : [])
            case 1: kinds.append("inquiry"); out += sess.cmd(RawCDB.inquiry(allocationLength: rng.pick([36, 96, 255, 4096])), lun: lun, expected: 96)
            case 2: kinds.append("read"); out += sess.cmd(RawCDB.read10(lba: UInt32(rng.below(4096)), blocks: UInt16(1 + rng.below(64))), lun: lun, expected: 512 * (1 + rng.below(64)))
            case 3:
                let len = 512 * (1 + rng.below(8))
                kinds.append("write"); out += sess.cmd(RawCDB.write10(lba: UInt32(rng.below(4096)), blocks: UInt16(len / 512)), lun: lun, expected: len, write: rng.bytes(len))
            case 4:  // a write that asks for R2T (more expected than immediate), then Data-Out that may or may not fit
                let len = 4096 * (1 + rng.below(16))
                kinds.append("write-r2t"); out += sess.cmd(RawCDB.write10(lba: UInt32(rng.below(4096)), blocks: UInt16(len / 512)), lun: lun, expected: len, write: [])
                if rng.chance(500) { bounds.append(out.count); out += sess.dataOut(ttt: UInt32(rng.below(4)), offset: UInt32(rng.below(len)), data: rng.bytes(512 * (1 + rng.below(8)))) }
            case 5: kinds.append("text"); out += sess.text(rng.chance(500) ? "SendTargets=All" : "MaxRecvDataSegmentLength=\(rng.below(1 << 25))")
            case 6: kinds.append("tmf"); out += sess.tmf(function: UInt8(1 + rng.below(8)), ref: sess.itt &- UInt32(rng.below(3)), lun: lun)
            case 7: kinds.append("logout"); out += sess.logout(reason: UInt8(rng.below(4)))
            case 8: kinds.append("snack"); out += sess.raw(opcode: ISCSIOpcode.snack, flags: UInt8(0x80 | rng.below(4)))
            case 9:  // any CDB opcode, any bytes
                var cdb = rng.bytes(16)
                cdb[0] = rng.pick([0x00, 0x03, 0x1a, 0x25, 0x9e, 0xa0, 0x88, 0x8a, 0x35, 0x42, 0x41, 0x93, 0x89, 0x5a, 0x55, 0x12, UInt8(rng.below(256))])
                kinds.append("cdb\(cdb[0])"); out += sess.cmd(cdb, lun: lun, expected: rng.pick([0, 8, 512, 4096, 1 << 20]))
            case 10: kinds.append("data-out"); out += sess.dataOut(ttt: rng.chance(500) ? reservedTag : UInt32(rng.below(8)), offset: UInt32(rng.below(65536)), data: rng.bytes(rng.below(1024)))
            default: kinds.append("opcode"); out += sess.raw(opcode: UInt8(rng.below(64)), flags: UInt8(rng.below(256)))
            }
        }
        return (out, bounds, kinds)
    }

    static func nbd(rng: inout SeededRandom) -> (stream: [UInt8], boundaries: [Int], kinds: [String]) {
        var out: [UInt8] = [], bounds: [Int] = [], kinds: [String] = []
        let size: UInt64 = 1 << 30
        for h in 0..<(1 + rng.below(8)) {
            bounds.append(out.count)
            let off = UInt64(rng.below(1 << 20)) * 512 % size
            let len = UInt32(512 * (1 + rng.below(64)))
            let t = rng.below(10)
            switch t {
            case 0, 1: kinds.append("read"); out += RawNBDClient.requestHeader(type: NBDWire.cmdRead, cookie: UInt64(h), offset: off, length: len)
            case 2: kinds.append("write"); out += RawNBDClient.requestHeader(type: NBDWire.cmdWrite, cookie: UInt64(h), offset: off, length: len) + rng.bytes(Int(len))
            case 3: kinds.append("disc"); out += RawNBDClient.requestHeader(type: NBDWire.cmdDisc, cookie: UInt64(h), offset: 0, length: 0)
            case 4: kinds.append("flush"); out += RawNBDClient.requestHeader(type: NBDWire.cmdFlush, cookie: UInt64(h), offset: 0, length: 0)
            case 5: kinds.append("trim"); out += RawNBDClient.requestHeader(type: NBDWire.cmdTrim, cookie: UInt64(h), offset: off, length: len)
            case 6: kinds.append("wzero"); out += RawNBDClient.requestHeader(type: NBDWire.cmdWriteZeroes, flags: UInt16(rng.below(4)), cookie: UInt64(h), offset: off, length: len)
            case 7: kinds.append("bstatus"); out += RawNBDClient.requestHeader(type: NBDWire.cmdBlockStatus, cookie: UInt64(h), offset: off, length: len)
            case 8: kinds.append("cache"); out += RawNBDClient.requestHeader(type: NBDWire.cmdCache, cookie: UInt64(h), offset: off, length: len)
            default: kinds.append("type"); out += RawNBDClient.requestHeader(type: UInt16(rng.below(65536)), flags: UInt16(rng.below(65536)), cookie: UInt64(h), offset: rng.next(), length: UInt32(truncatingIfNeeded: rng.next()))
            }
        }
        return (out, bounds, kinds)
    }

    /// Case `index` of `seed`: a fresh generator per case, so any case replays on its own.
    static func make(seed: UInt64, index: Int, protocols: [Protocol]) -> FuzzCase {
        var rng = SeededRandom(seed: seed, stream: UInt64(index), purpose: 0)
        let proto = protocols[rng.below(protocols.count)]
        var opening = proto == .iscsi ? fuzzLogin() : RawNBDClient.opening(export: "")
        var log: [String] = []
        // One case in ten mutates the opening instead (login or option haggling), and sends nothing after it.
        if rng.chance(100) {
            Mutator.mutate(&opening, boundaries: [0], headerBytes: proto == .iscsi ? bhsBytes : NBDWire.optionHeaderBytes, rng: &rng, log: &log)
            return FuzzCase(proto: proto, opening: opening, stream: [], lingerMilliseconds: 50,
                            description: "\(proto.rawValue) opening " + log.joined(separator: ","))
        }
        var (stream, bounds, kinds) = proto == .iscsi ? iscsi(rng: &rng) : nbd(rng: &rng)
        if !rng.chance(50) {   // a few streams stay valid, the baseline that must always work
            Mutator.mutate(&stream, boundaries: bounds, headerBytes: proto == .iscsi ? bhsBytes : NBDWire.requestBytes, rng: &rng, log: &log)
        }
        let linger = rng.pick([0, 5, 30, 100])
        return FuzzCase(proto: proto, opening: opening, stream: stream, lingerMilliseconds: linger,
                        description: "\(proto.rawValue) \(kinds.joined(separator: "+")) \(log.joined(separator: ",")) linger \(linger)ms")
    }
}

/// The valid opening of an iSCSI case: the raw initiator's operational keys, straight to full feature phase.
func fuzzLogin() -> [UInt8] {
    LoginPDU.request(keys: RawLoginOptions(initiatorName: FuzzLimits.initiator).keys(target: FuzzLimits.iqn))
}

/// Sequence numbers of a session that just logged in (CmdSN 1, ExpStatSN 2 when the login used StatSN 1).
struct ISCSISessionNumbers {
    var cmdSN: UInt32 = 1
    var itt: UInt32 = 1
    let expStatSN: UInt32 = 1

    mutating func next() -> (UInt32, UInt32) { defer { cmdSN &+= 1; itt &+= 1 }; return (cmdSN, itt) }

    mutating func cmd(_ cdb: [UInt8], lun: UInt64, expected: Int, write: [UInt8]? = nil) -> [UInt8] {
        let (sn, tag) = next(), data = write ?? []
        return rawCommandHeader(cdb: cdb, lun: lun, itt: tag, cmdSN: sn, expStatSN: expStatSN, edtl: expected,
                                read: write == nil && expected > 0, write: write != nil, dataLength: data.count)
            + data + [UInt8](repeating: 0, count: Framing.padLength(data.count))
    }
    mutating func nop(_ data: [UInt8]) -> [UInt8] {
        let tag = itt; itt &+= 1
        return rawPDU(data: data) { InitiatorPDUBuild.nopOut($0, itt: tag, ttt: reservedTag, cmdSN: cmdSN, expStatSN: expStatSN, dataLength: data.count) }
    }
    mutating func dataOut(ttt: UInt32, offset: UInt32, data: [UInt8]) -> [UInt8] {
        rawPDU(data: data) { InitiatorPDUBuild.dataOut($0, final: true, lunField: encodeLUN(1), itt: itt &- 1, ttt: ttt, expStatSN: expStatSN, dataSN: 0, bufferOffset: offset, length: data.count) }
    }
    mutating func text(_ kv: String) -> [UInt8] {
        let data = Array(kv.utf8) + [0]
        let (sn, tag) = next()
        return rawPDU(data: data) { InitiatorPDUBuild.textRequest($0, immediate: true, itt: tag, cmdSN: sn, expStatSN: expStatSN, dataLength: data.count) }
    }
    mutating func tmf(function: UInt8, ref: UInt32, lun: UInt64) -> [UInt8] {
        let tag = itt; itt &+= 1
        return rawPDU { InitiatorPDUBuild.taskManagementRequest($0, function: function, lunField: encodeLUN(lun), itt: tag, referencedTaskTag: ref, cmdSN: cmdSN, expStatSN: expStatSN, refCmdSN: cmdSN &- 1) }
    }
    mutating func logout(reason: UInt8) -> [UInt8] {
        let tag = itt; itt &+= 1
        return rawPDU { InitiatorPDUBuild.logoutRequest($0, reason: reason, itt: tag, cmdSN: cmdSN, expStatSN: expStatSN) }
    }
    mutating func raw(opcode: UInt8, flags: UInt8) -> [UInt8] {
        let (sn, tag) = next()
        return rawPDU { h in
            h.storeBytes(of: opcode, as: UInt8.self)
            h.storeBytes(of: flags, toByteOffset: 1, as: UInt8.self)
            put32(h, 16, tag); put32(h, 24, sn); put32(h, 28, expStatSN)
        }
    }
}

/// Runs one case; true when the mutated stream went out after a successful opening. Errors on the fuzzed
/// connection are expected (the target may close it at any point).
@discardableResult
func runCase(_ c: FuzzCase, iscsiPort: Int, nbdPort: Int) -> Bool {
    let port = c.proto == .iscsi ? iscsiPort : nbdPort
    guard let s = try? RawSocket(loopback(port), sendTimeoutSeconds: FuzzBounds.caseIOSeconds) else { return false }
    defer { s.close() }
    // Each wait on the fuzzed connection gets its own bound, as each recv of a socket timeout would.
    func step() -> Double { monotonicSeconds() + FuzzBounds.caseIOSeconds }
    let linger = Double(c.lingerMilliseconds) / 1000
    if c.proto == .nbd { guard case .bytes = s.read(NBDWire.greetingBytes, deadline: step()) else { return false } }
    guard (try? s.send(c.opening)) != nil else { return false }
    if c.stream.isEmpty { _ = s.awaitClose(deadline: monotonicSeconds() + linger); return false }
    if c.proto == .iscsi {
        guard case .pdu(let r)? = try? s.readPDU(deadline: step()), r.opcode == ISCSIOpcode.loginResponse,
              r.loginStatus == LoginStatus.success.rawValue else { return false }
    } else {
        guard case .bytes = s.read(NBDWire.exportNameReplyBytes, deadline: step()) else { return false }
    }
    guard (try? s.send(c.stream)) != nil else { return false }
    if linger > 0 { _ = s.awaitClose(deadline: monotonicSeconds() + linger) }
    return true
}

/// 127.0.0.1:`port`, where livefuzz's daemon listens.
func loopback(_ port: Int) -> Endpoint { Endpoint(host: "127.0.0.1", port: port, portalGroupTag: 1) }

enum FuzzBounds {
    /// A probe (fresh login, INQUIRY, READ; NBD handshake and READ) must finish within this.
    static let probeSeconds = 5.0
    /// Each send or receive on a fuzzed connection gives up after this.
    static let caseIOSeconds = 2.0
    /// Allowed growth of the daemon's RSS from the first probe to the end.
    static let rssGrowthFraction = 0.10
    /// The source address of the probes: apart from the fuzzed connections (127.0.0.1).
    static let probeSource = "127.0.0.2"
}

/// The liveness probe: both front ends answer a fresh client within `FuzzBounds.probeSeconds`; returns the
/// seconds taken, or throws what failed.
func probe(iscsiPort: Int, nbdPort: Int, source: String = FuzzBounds.probeSource) throws -> Double {
    let t0 = monotonicSeconds()
    // A new session's first command to a LUN may meet its UNIT ATTENTION (power on / reset): the session
    // reports it with TEST UNIT READY on both LUNs first, as real initiators do.
    let options = RawLoginOptions(initiatorName: FuzzLimits.initiator + "-probe", clearUnitAttentionLUNs: [1, 2],
                                  sourceAddress: source, answerTimeoutSeconds: FuzzBounds.probeSeconds,
                                  sendTimeoutSeconds: FuzzBounds.probeSeconds)
    let sess = try RawSession(loopback(iscsiPort), target: FuzzLimits.iqn, options: options)
    defer { sess.close() }
    let inq = try sess.run(RawCDB.inquiry(), read: true, edtl: 96, timeoutSeconds: FuzzBounds.probeSeconds)
    guard inq.status == RawCodes.good, inq.data.count >= 36 else { throw FuzzError("probe INQUIRY: \(inq)") }
    let rd = try sess.run(RawCDB.read10(lba: 0, blocks: 8), lun: 2, read: true, edtl: 4096, timeoutSeconds: FuzzBounds.probeSeconds)
    guard rd.status == RawCodes.good, rd.data.count == 4096 else { throw FuzzError("probe READ: \(rd)") }
    let n = try RawNBDClient(loopback(nbdPort), timeoutSeconds: FuzzBounds.probeSeconds, sourceAddress: source)
    defer { n.connection.socket.close() }
    try n.attach(export: "")
    n.request(type: NBDWire.cmdRead, cookie: 7, offset: 0, length: 4096)
    guard let reply = n.reply(dataBytes: 4096) else { throw FuzzError("probe NBD READ: no reply") }
    guard reply.error == 0, reply.cookie == 7 else { throw FuzzError("probe NBD READ: error \(reply.error), cookie \(reply.cookie)") }
    let dt = monotonicSeconds() - t0
    if dt > FuzzBounds.probeSeconds { throw FuzzError("probe took \(dt) s") }
    return dt
}
