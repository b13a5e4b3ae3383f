// The login state machine (Login.swift, Negotiation.swift, CHAP.swift) driven by a sequence of Login Request
// PDUs. Input: one byte choosing the environment, then raw Login PDUs. A text carrying "CHAP_R=?" gets the
// correct response to the last challenge patched in, so the fuzzer reaches past authentication; "CHAP_C=!"
// gets the target's own challenge, which must be refused.

import ISCSIWire
// The machines' internals are reachable only where Target is built for testing: debug, and fuzz/run's build.
#if DEBUG || FUZZING
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor

enum LoginFuzz {
    static let targetName = "iqn.2026-01.org.ringtgt:fuzz"
    static let user = CHAPAccount(user: "alice", password: "secret123456")
    static let mutual = CHAPAccount(user: "tgt0", password: "targetsecret99")
    /// Login PDUs a connection sends before the fuzzer's input is treated as over (the runtime's login
    /// timeout bounds it in the daemon).
    static let maxPDUs = 64

    /// Challenges remembered across inputs (a bound on the fuzzer's memory, not on the target's).
    static let maxSeenChallenges = 1 << 20
    nonisolated(unsafe) static var seenChallenges: Set<[UInt8]> = []

    struct Setup {
        var target: TargetRuntime
        var defaults: TargetKeyDefaults
        var env: LoginEnvironment
    }

    static func setup(_ choice: UInt8) -> Setup {
        var credentials = CHAPCredentials()
        switch choice & 3 {
        case 1: credentials = CHAPCredentials(incoming: [user])
        case 2: credentials = CHAPCredentials(incoming: [user], outgoing: mutual)
        default: break
        }
        let target = TargetRuntime(tid: 1, name: targetName, alias: choice & 4 != 0 ? "fuzz-alias" : nil, luns: [],
                                   acl: [.all], params: [:], lunGeneration: 0, chap: credentials)
        var defaults = TargetKeyDefaults()
        if choice & 8 != 0 {
            // The tightest limits an admin may set, so the clamps are exercised from both sides.
            defaults = TargetKeyDefaults(headerDigest: [.crc32c], dataDigest: [.none], maxRecvDataSegmentLength: 512,
                                         maxBurstLength: 512, firstBurstLength: 512, initialR2T: true,
                                         immediateData: false, maxOutstandingR2T: 1, defaultTime2Wait: 0,
                                         defaultTime2Retain: 0, targetAlias: "a")
        }
        let discovery = choice & 16 != 0 ? CHAPCredentials(incoming: [user]) : CHAPCredentials()
        let d = defaults
        let env = LoginEnvironment(
            targetLookup: { $0.lowercased() == targetName ? target : nil },
            isAllowed: { _, name in choice & 32 == 0 || name.hasSuffix(":ok") },
            defaults: { _ in d }, portalGroupTag: 7,
            sessionExists: { tsih, _, _ in tsih == 1 },
            systemOffline: choice & 0xC0 == 0xC0, discoveryCHAP: discovery)
        return Setup(target: target, defaults: defaults, env: env)
    }

    static func run(_ raw: UnsafeRawBufferPointer) {
        var input = FuzzInput(raw)
        let s = setup(input.byte())
        var machine = LoginStateMachine()
        var challenge: (id: UInt8, bytes: [UInt8])? = nil
        var closed = false
        var assembled: [UInt8] = []
        // The request text so far: a text sent with C=1 is only taken in, and answered when its last PDU comes.
        var requestText: [UInt8] = []
        var stream = PDUStream(input)
        for _ in 0 ..< maxPDUs {
            guard let pdu = stream.next() else { break }
            let f = pdu.flags
            let req = LoginRequest(
                transit: f & 0x80 != 0, continueFlag: f & 0x40 != 0, csg: (f >> 2) & 3, nsg: f & 3,
                versionMax: pdu.bhs[2], versionMin: pdu.bhs[3],
                isid: UInt64(pdu.u16(8)) << 32 | UInt64(pdu.u32(10)), tsih: pdu.u16(14), itt: pdu.itt,
                cid: pdu.u16(20), cmdSN: pdu.u32(24), expStatSN: pdu.u32(28))
            var data = pdu.data
            if let c = challenge { patchCHAPResponse(&data, c, secret: user.secret) }
            let (r, outcome) = data.withUnsafeBytes { machine.receive(req, data: $0, env: s.env) }
            requestText += data
            if !req.continueFlag {
                if let c = challenge, let keys = try? TextKeys.parse(requestText),
                   let theirs = keys.first(where: { $0.key == "CHAP_C" }).flatMap({ CHAP.decodeBinary($0.value) }), theirs == c.bytes {
                    FuzzCheck.expect(outcome == .respondAndClose, "the target's own challenge reflected back was answered")
                }
                requestText = []
            }

            FuzzCheck.expect(r.itt == req.itt && r.isid == req.isid, "response names another task or ISID")
            FuzzCheck.expect(!(r.transit && r.continueFlag), "response with both T and C")
            FuzzCheck.expect(r.text.count <= ISCSILimits.loginDataSegmentBytes, "response text \(r.text.count) bytes")
            // A long answer is cut at 8192 bytes, anywhere: it is whole once the continuation ends.
            assembled += r.text
            if !r.continueFlag {
                TextKeyCheck.wellFormed(assembled, "login response")
                assembled = []
            }
            if closed {
                FuzzCheck.expect(outcome == .respondAndClose && r.statusClass != 0, "login went on after it ended")
            }
            switch outcome {
            case .respondAndClose:
                FuzzCheck.expect(r.statusClass != 0 && r.text.isEmpty, "a close without a reject status")
                closed = true
            case .respondAndContinue:
                FuzzCheck.expect(r.statusClass == 0, "a reject that does not close")
            case .respondAndEnterFullFeature(let p):
                FuzzCheck.expect(r.statusClass == 0 && r.transit && r.nsg == 3, "full feature without T=1 NSG=3")
                checkParameters(p, s, machine: machine)
                closed = true
            }
            if let keys = try? TextKeys.parse(r.text),
               let id = keys.first(where: { $0.key == "CHAP_I" }).flatMap({ UInt8($0.value) }),
               let c = keys.first(where: { $0.key == "CHAP_C" }).flatMap({ CHAP.decodeBinary($0.value) }) {
                // A challenge is fresh random bytes, across logins: one that repeats lets a recorded response
                // replay. Checked over the whole run, not one input.
                FuzzCheck.expect(!seenChallenges.contains(c), "CHAP challenge repeated")
                FuzzCheck.expect(c.count == CHAP.challengeBytes, "CHAP challenge of \(c.count) bytes")
                if seenChallenges.count >= maxSeenChallenges { seenChallenges.removeAll(keepingCapacity: true) }
                seenChallenges.insert(c)
                challenge = (id, c)
            }
        }
    }

    /// Negotiated values stay within what the target declared and the RFC allows, and a target with CHAP
    /// accounts never reaches full feature phase unauthenticated.
    static func checkParameters(_ p: SessionParameters, _ s: Setup, machine: LoginStateMachine) {
        let d = s.defaults
        let limits = ISCSILimits.minDataSegmentBytes ... ISCSILimits.maxDataSegmentBytes
        FuzzCheck.expect(limits.contains(p.initiatorMaxRecvDataSegmentLength), "initiator MaxRecvDSL \(p.initiatorMaxRecvDataSegmentLength)")
        FuzzCheck.expect(limits.contains(p.targetMaxRecvDataSegmentLength) && p.targetMaxRecvDataSegmentLength <= max(d.maxRecvDataSegmentLength, ISCSILimits.defaultMaxRecvDataSegmentBytes),
                         "target MaxRecvDSL \(p.targetMaxRecvDataSegmentLength)")
        if p.sessionType == .normal {
            // Burst limits whose RFC default exceeds the target's are offered by the target before full feature
            // phase (targetOffers); a login that skipped the operational stage, or used a key up on a rejected
            // value, is refused (KeyNegotiator.finish). Either way no session runs above what the admin set.
            FuzzCheck.expect((ISCSILimits.minDataSegmentBytes ... d.maxBurstLength).contains(p.maxBurstLength),
                             "MaxBurstLength \(p.maxBurstLength), target limit \(d.maxBurstLength)")
            FuzzCheck.expect(p.firstBurstLength >= ISCSILimits.minDataSegmentBytes && p.firstBurstLength <= p.maxBurstLength
                             && p.firstBurstLength <= d.firstBurstLength,
                             "FirstBurstLength \(p.firstBurstLength), MaxBurstLength \(p.maxBurstLength)")
        }
        FuzzCheck.expect(p.defaultTime2Wait >= 0 && p.defaultTime2Wait <= ISCSILimits.maxTime2WaitSeconds, "DefaultTime2Wait")
        FuzzCheck.expect(p.defaultTime2Retain >= 0 && p.defaultTime2Retain <= ISCSILimits.maxTime2WaitSeconds, "DefaultTime2Retain")
        FuzzCheck.expect(p.maxOutstandingR2T >= 1 && p.maxConnections == 1 && p.errorRecoveryLevel == 0,
                         "MaxOutstandingR2T \(p.maxOutstandingR2T), MaxConnections \(p.maxConnections), ERL \(p.errorRecoveryLevel)")
        FuzzCheck.expect(d.headerDigest.contains(p.headerDigest) && d.dataDigest.contains(p.dataDigest), "a digest the target does not offer")
        FuzzCheck.expect(p.dataPDUInOrder && p.dataSequenceInOrder, "out-of-order data negotiated")
        FuzzCheck.expect(!p.initiatorName.isEmpty && p.initiatorName.utf8.count <= ISCSILimits.maxNameBytes, "InitiatorName")
        switch p.sessionType {
        case .normal:
            FuzzCheck.expect(p.targetName == targetName, "logged in to \(p.targetName ?? "nil")")
            if s.target.chap.required {
                FuzzCheck.expect(machine.chapAccount == user, "full feature phase on a CHAP target without authentication")
            }
        case .discovery:
            FuzzCheck.expect(p.targetName == nil, "a discovery session with a target")
        }
    }

    /// Replaces the "?" of "CHAP_R=?" with the right answer to the last challenge, and the "!" of "CHAP_C=!"
    /// with that challenge itself (a reflection).
    static func patchCHAPResponse(_ data: inout [UInt8], _ c: (id: UInt8, bytes: [UInt8]), secret: [UInt8]) {
        let answer = CHAP.encodeHex(CHAP.response(identifier: c.id, secret: secret, challenge: c.bytes))
        for (marker, value) in [("CHAP_R=?", answer), ("CHAP_C=!", CHAP.encodeHex(c.bytes))] {
            let m = Array(marker.utf8)
            guard data.count >= m.count else { continue }
            for i in 0 ... data.count - m.count where data[i ..< i + m.count].elementsEqual(m) {
                data.replaceSubrange(i + m.count - 1 ..< i + m.count, with: Array(value.utf8))
                break
            }
        }
    }
}
#endif
