import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import ISCSI

/// The login state machine driven with the key sets real initiators send.
@Suite struct LoginTests {
    static let targetName = "iqn.2026-01.org.ringtgt:disk1"
    static let initiator = "iqn.2026-01.org.example:host"

    final class Env {
        var target = TargetRuntime(tid: 1, name: LoginTests.targetName, alias: nil, luns: [], acl: [.all],
                                   params: [:], lunGeneration: 0)
        var allowed = true
        var defaults = TargetKeyDefaults()
        var sessions: [UInt16] = []
        var env: LoginEnvironment {
            LoginEnvironment(
                targetLookup: { name in name.lowercased() == self.target.name.lowercased() ? self.target : nil },
                isAllowed: { _, _ in self.allowed },
                defaults: { _ in self.defaults },
                portalGroupTag: 7,
                sessionExists: { tsih, _, _ in self.sessions.contains(tsih) })
        }
    }

    private func send(_ m: inout LoginStateMachine, _ env: Env, csg: UInt8, nsg: UInt8, transit: Bool = true,
                      cont: Bool = false, isid: UInt64 = 0x23D0_0000_0001, tsih: UInt16 = 0,
                      versionMin: UInt8 = 0, _ text: [UInt8]) -> (LoginResponse, LoginOutcome) {
        let req = LoginRequest(transit: transit, continueFlag: cont, csg: csg, nsg: nsg, versionMax: 0,
                               versionMin: versionMin, isid: isid, tsih: tsih, itt: 0x1234, cid: 0)
        return text.withUnsafeBytes { m.receive(req, data: $0, env: env.env) }
    }

    private func text(_ pairs: [(String, String)]) -> [UInt8] {
        TextKeys.encode(pairs.map { TextKeyValue($0.0, $0.1) })
    }

    private func keys(_ r: LoginResponse) -> [String: String] {
        var d: [String: String] = [:]
        for p in (try? TextKeys.parse(r.text)) ?? [] { d[p.key] = p.value }
        return d
    }

    private func params(_ o: LoginOutcome) -> SessionParameters? {
        if case .respondAndEnterFullFeature(let p) = o { return p }
        return nil
    }

    // libiscsi lib/login.c without CHAP: one PDU, CSG=1 (operational) NSG=3, T=1, every key at once.
    static let libiscsiNormal: [(String, String)] = [
        ("InitiatorName", initiator), ("TargetName", targetName), ("SessionType", "Normal"),
        ("HeaderDigest", "None,CRC32C"), ("DataDigest", "None"), ("InitialR2T", "No"), ("ImmediateData", "Yes"),
        ("MaxBurstLength", "262144"), ("FirstBurstLength", "262144"), ("DefaultTime2Wait", "2"),
        ("DefaultTime2Retain", "0"), ("MaxOutstandingR2T", "1"), ("ErrorRecoveryLevel", "0"), ("IFMarker", "No"),
        ("OFMarker", "No"), ("MaxConnections", "1"), ("MaxRecvDataSegmentLength", "262144"),
        ("DataPDUInOrder", "Yes"), ("DataSequenceInOrder", "Yes"),
    ]

    @Test func libiscsiNormalLoginInOneStep() throws {
        let env = Env()
        var m = LoginStateMachine()
        let (r, o) = send(&m, env, csg: 1, nsg: 3, text(Self.libiscsiNormal))
        #expect(r.status == 0 && r.transit && !r.continueFlag && r.csg == 1 && r.nsg == 3)
        #expect(r.itt == 0x1234 && r.isid == 0x23D0_0000_0001 && r.tsih == 0)
        let k = keys(r)
        #expect(k["TargetPortalGroupTag"] == "7")
        #expect(k["MaxRecvDataSegmentLength"] == "262144")
        #expect(k["HeaderDigest"] == "None")
        #expect(k["DataDigest"] == "None")
        #expect(k["InitialR2T"] == "No")
        #expect(k["ImmediateData"] == "Yes")
        #expect(k["MaxBurstLength"] == "262144")
        #expect(k["FirstBurstLength"] == "65536")
        #expect(k["IFMarker"] == "No" && k["OFMarker"] == "No")
        #expect(k["InitiatorName"] == nil && k["TargetName"] == nil)
        let p = try #require(params(o))
        #expect(p.sessionType == .normal && p.initiatorName == Self.initiator && p.targetName == Self.targetName)
        #expect(p.initiatorMaxRecvDataSegmentLength == 262144 && p.targetMaxRecvDataSegmentLength == 262144)
        #expect(!p.initialR2T && p.immediateData)
        #expect(p.maxBurstLength == 262144 && p.firstBurstLength == 65536)
        #expect(p.defaultTime2Wait == 2 && p.defaultTime2Retain == 0 && p.maxOutstandingR2T == 1)
        #expect(p.targetPortalGroupTag == 7)
        #expect(m.target === env.target && m.initiatorName == Self.initiator)
    }

    // open-iscsi: security stage with AuthMethod=None, then the operational keys.
    @Test func openIscsiLoginThroughSecurityStage() throws {
        let env = Env()
        env.defaults.targetAlias = "disk one"
        var m = LoginStateMachine()
        let (r1, o1) = send(&m, env, csg: 0, nsg: 1, text([
            ("InitiatorName", Self.initiator), ("InitiatorAlias", "host"), ("TargetName", Self.targetName),
            ("SessionType", "Normal"), ("AuthMethod", "None"),
        ]))
        #expect(o1 == .respondAndContinue)
        #expect(r1.status == 0 && r1.transit && r1.csg == 0 && r1.nsg == 1)
        let k1 = keys(r1)
        #expect(k1["AuthMethod"] == "None")
        #expect(k1["TargetPortalGroupTag"] == "7")
        #expect(k1["TargetAlias"] == "disk one")
        // open-iscsi fails the login on any other key in a security-stage response (usr/login.c).
        #expect(Set(k1.keys).isSubset(of: ["AuthMethod", "TargetPortalGroupTag", "TargetAlias", "TargetAddress"]))

        let (r2, o2) = send(&m, env, csg: 1, nsg: 3, text([
            ("HeaderDigest", "None"), ("DataDigest", "None"), ("DefaultTime2Wait", "2"), ("DefaultTime2Retain", "0"),
            ("IFMarker", "No"), ("OFMarker", "No"), ("ErrorRecoveryLevel", "0"), ("InitialR2T", "No"),
            ("ImmediateData", "Yes"), ("MaxBurstLength", "16776192"), ("FirstBurstLength", "262144"),
            ("MaxOutstandingR2T", "1"), ("MaxConnections", "1"), ("DataPDUInOrder", "Yes"),
            ("DataSequenceInOrder", "Yes"), ("MaxRecvDataSegmentLength", "262144"),
        ]))
        #expect(r2.status == 0 && r2.transit && r2.csg == 1 && r2.nsg == 3)
        let k2 = keys(r2)
        #expect(k2["TargetPortalGroupTag"] == nil)
        #expect(k2["MaxBurstLength"] == "262144")
        #expect(k2["MaxRecvDataSegmentLength"] == "262144")
        let p = try #require(params(o2))
        #expect(p.initiatorAlias == "host" && p.targetAlias == "disk one")
        #expect(p.maxBurstLength == 262144 && p.firstBurstLength == 65536)
        #expect(m.initiatorAlias == "host")
    }

    @Test func openIscsiDiscoveryLogin() throws {
        let env = Env()
        var m = LoginStateMachine()
        let (r, o) = send(&m, env, csg: 1, nsg: 3, text([
            ("InitiatorName", Self.initiator), ("SessionType", "Discovery"), ("HeaderDigest", "None"),
            ("DataDigest", "None"), ("DefaultTime2Wait", "2"), ("DefaultTime2Retain", "0"), ("IFMarker", "No"),
            ("OFMarker", "No"), ("ErrorRecoveryLevel", "0"), ("MaxRecvDataSegmentLength", "32768"),
        ]))
        let p = try #require(params(o))
        #expect(p.sessionType == .discovery && p.targetName == nil)
        #expect(p.initiatorMaxRecvDataSegmentLength == 32768)
        #expect(keys(r)["TargetPortalGroupTag"] == nil)
        #expect(m.target == nil && m.sessionType == .discovery)
    }

    @Test func libiscsiDiscoveryGetsIrrelevantForSessionKeys() throws {
        let env = Env()
        var m = LoginStateMachine()
        var pairs = Self.libiscsiNormal.filter { $0.0 != "TargetName" && $0.0 != "SessionType" }
        pairs.append(("SessionType", "Discovery"))
        pairs.append(("TargetName", Self.targetName))
        let (r, o) = send(&m, env, csg: 1, nsg: 3, text(pairs))
        #expect(params(o)?.sessionType == .discovery)
        let k = keys(r)
        #expect(k["InitialR2T"] == "Irrelevant" && k["MaxBurstLength"] == "Irrelevant")
        #expect(k["FirstBurstLength"] == "Irrelevant" && k["MaxConnections"] == "Irrelevant")
        #expect(k["TargetName"] == "Irrelevant")
        #expect(k["HeaderDigest"] == "None")
    }

    @Test func securityStraightToFullFeature() throws {
        let env = Env()
        var m = LoginStateMachine()
        let (r, o) = send(&m, env, csg: 0, nsg: 3, text([
            ("InitiatorName", Self.initiator), ("TargetName", Self.targetName), ("AuthMethod", "None"),
        ]))
        #expect(r.transit && r.nsg == 3)
        let p = try #require(params(o))
        // Our MaxRecvDataSegmentLength was never declared: the RFC default applies to what we accept.
        #expect(p.targetMaxRecvDataSegmentLength == 8192)
        #expect(p.initialR2T && p.immediateData && p.maxBurstLength == 262144)
    }

    @Test func stayInStageThenTransitWithEmptyRequest() throws {
        let env = Env()
        var m = LoginStateMachine()
        let (r1, o1) = send(&m, env, csg: 1, nsg: 0, transit: false, text([
            ("InitiatorName", Self.initiator), ("TargetName", Self.targetName), ("MaxBurstLength", "65536"),
        ]))
        #expect(o1 == .respondAndContinue && !r1.transit && r1.csg == 1)
        let (r2, o2) = send(&m, env, csg: 1, nsg: 3, [])
        #expect(r2.transit && r2.text.isEmpty)
        #expect(params(o2)?.maxBurstLength == 65536)
    }

    @Test func continueBitReassemblesSplitText() throws {
        let env = Env()
        var m = LoginStateMachine()
        let all = text(Self.libiscsiNormal)
        let cut = 37   // in the middle of a key=value
        let (r1, o1) = send(&m, env, csg: 1, nsg: 0, transit: false, cont: true, Array(all[..<cut]))
        #expect(o1 == .respondAndContinue && r1.text.isEmpty && !r1.transit && !r1.continueFlag && r1.status == 0)
        let (r2, o2) = send(&m, env, csg: 1, nsg: 3, Array(all[cut...]))
        #expect(r2.status == 0 && r2.transit)
        #expect(params(o2)?.initiatorName == Self.initiator)
    }

    @Test func reassemblyIsBounded() {
        let env = Env()
        var m = LoginStateMachine()
        let chunk = [UInt8](repeating: UInt8(ascii: "a"), count: 8192)
        var last: (LoginResponse, LoginOutcome)?
        for _ in 0..<9 {
            last = send(&m, env, csg: 1, nsg: 0, transit: false, cont: true, chunk)
            if last?.1 == .respondAndClose { break }
        }
        #expect(last?.1 == .respondAndClose)
        #expect(last?.0.status == LoginStatus.initiatorError.rawValue)
    }

    @Test func longResponseIsSplitWithContinueBit() throws {
        let env = Env()
        var m = LoginStateMachine()
        var pairs: [(String, String)] = [("InitiatorName", Self.initiator), ("TargetName", Self.targetName)]
        for i in 0..<250 { pairs.append(("X-com.example.key.\(1000 + i)", "v")) }
        let (r1, o1) = send(&m, env, csg: 1, nsg: 3, text(pairs))
        #expect(o1 == .respondAndContinue && r1.continueFlag && !r1.transit)
        #expect(r1.text.count == ISCSILimits.loginDataSegmentBytes)
        let (r2, o2) = send(&m, env, csg: 1, nsg: 3, [])
        #expect(!r2.continueFlag && r2.transit && r2.nsg == 3)
        #expect(params(o2) != nil)
        let whole = try TextKeys.parse(r1.text + r2.text)
        #expect(whole.filter { $0.value == "NotUnderstood" }.count == 250)
    }

    @Test func textDuringTargetContinuationIsRefused() {
        let env = Env()
        var m = LoginStateMachine()
        var pairs: [(String, String)] = [("InitiatorName", Self.initiator), ("TargetName", Self.targetName)]
        for i in 0..<250 { pairs.append(("X-com.example.key.\(1000 + i)", "v")) }
        _ = send(&m, env, csg: 1, nsg: 3, text(pairs))
        let (r, o) = send(&m, env, csg: 1, nsg: 3, text([("MaxBurstLength", "512")]))
        #expect(o == .respondAndClose && r.status == 0x0200)
    }

    // Status codes of RFC 7143 §11.13.5.
    private func firstLoginStatus(_ pairs: [(String, String)], csg: UInt8 = 1, nsg: UInt8 = 3, transit: Bool = true,
                                  cont: Bool = false, tsih: UInt16 = 0, versionMin: UInt8 = 0,
                                  configure: (Env) -> Void = { _ in }) -> (UInt16, LoginOutcome) {
        let env = Env()
        configure(env)
        var m = LoginStateMachine()
        let (r, o) = send(&m, env, csg: csg, nsg: nsg, transit: transit, cont: cont, tsih: tsih,
                          versionMin: versionMin, text(pairs))
        return (r.status, o)
    }

    @Test func missingInitiatorNameIs0207() {
        let (s, o) = firstLoginStatus([("TargetName", Self.targetName)])
        #expect(s == 0x0207 && o == .respondAndClose)
    }

    @Test func normalSessionWithoutTargetNameIs0207() {
        #expect(firstLoginStatus([("InitiatorName", Self.initiator)]).0 == 0x0207)
        #expect(firstLoginStatus([("InitiatorName", Self.initiator), ("SessionType", "Normal")]).0 == 0x0207)
    }

    @Test func unknownTargetIs0203() {
        #expect(firstLoginStatus([("InitiatorName", Self.initiator), ("TargetName", "iqn.nope")]).0 == 0x0203)
    }

    @Test func targetNameMatchesCaseInsensitively() {
        let (s, o) = firstLoginStatus([("InitiatorName", Self.initiator), ("TargetName", Self.targetName.uppercased())])
        #expect(s == 0 && params(o) != nil)
    }

    @Test func aclDenialIs0202() {
        let (s, o) = firstLoginStatus([("InitiatorName", Self.initiator), ("TargetName", Self.targetName)]) { $0.allowed = false }
        #expect(s == 0x0202 && o == .respondAndClose)
    }

    @Test func unsupportedVersionIs0205() {
        #expect(firstLoginStatus(Self.libiscsiNormal, versionMin: 1).0 == 0x0205)
    }

    @Test func bogusSessionTypeIs0209() {
        #expect(firstLoginStatus([("InitiatorName", Self.initiator), ("SessionType", "Boot")]).0 == 0x0209)
    }

    @Test func unknownTSIHIs020A() {
        #expect(firstLoginStatus(Self.libiscsiNormal, tsih: 5).0 == 0x020A)
        #expect(firstLoginStatus(Self.libiscsiNormal, tsih: 5) { $0.sessions = [5] }.0 == 0)
    }

    @Test func badStageFieldsAre0200() {
        #expect(firstLoginStatus(Self.libiscsiNormal, cont: true).0 == 0x0200)          // T and C
        #expect(firstLoginStatus(Self.libiscsiNormal, csg: 2, nsg: 3).0 == 0x0200)      // reserved CSG
        #expect(firstLoginStatus(Self.libiscsiNormal, csg: 3, nsg: 3).0 == 0x0200)      // CSG full feature
        #expect(firstLoginStatus(Self.libiscsiNormal, csg: 1, nsg: 0).0 == 0x0200)      // backwards
        #expect(firstLoginStatus(Self.libiscsiNormal, csg: 1, nsg: 1).0 == 0x0200)      // same stage
        #expect(firstLoginStatus(Self.libiscsiNormal, csg: 1, nsg: 2).0 == 0x0200)      // reserved NSG
        #expect(firstLoginStatus(Self.libiscsiNormal, csg: 1, nsg: 2, transit: false).0 == 0)   // NSG ignored when T=0
    }

    @Test func malformedTextIs0200() {
        let env = Env()
        var m = LoginStateMachine()
        let (r, o) = send(&m, env, csg: 1, nsg: 3, Array("InitiatorName\0".utf8))
        #expect(r.status == 0x0200 && o == .respondAndClose)
        #expect(m.failureReason?.contains("no '='") == true)
    }

    @Test func keyRepeatedAcrossPDUsIs0200() {
        let env = Env()
        var m = LoginStateMachine()
        _ = send(&m, env, csg: 1, nsg: 0, transit: false, text([
            ("InitiatorName", Self.initiator), ("TargetName", Self.targetName), ("MaxBurstLength", "65536"),
        ]))
        let (r, o) = send(&m, env, csg: 1, nsg: 3, text([("MaxBurstLength", "65536")]))
        #expect(r.status == 0x0200 && o == .respondAndClose)
    }

    @Test func identityKeysOnlyInFirstRequest() {
        let env = Env()
        var m = LoginStateMachine()
        _ = send(&m, env, csg: 0, nsg: 1, text([("InitiatorName", Self.initiator), ("TargetName", Self.targetName)]))
        let (r, _) = send(&m, env, csg: 1, nsg: 3, text([("SessionType", "Discovery")]))
        #expect(r.status == 0x0200)
    }

    @Test func stageMismatchAndIdentityChangeAre0200() {
        let env = Env()
        var m = LoginStateMachine()
        _ = send(&m, env, csg: 0, nsg: 1, text([("InitiatorName", Self.initiator), ("TargetName", Self.targetName)]))
        // After transiting to operational, a security-stage request is out of order.
        #expect(send(&m, env, csg: 0, nsg: 1, []).0.status == 0x0200)

        var m2 = LoginStateMachine()
        _ = send(&m2, env, csg: 0, nsg: 1, text([("InitiatorName", Self.initiator), ("TargetName", Self.targetName)]))
        #expect(send(&m2, env, csg: 1, nsg: 3, isid: 0x99, []).0.status == 0x0200)
    }

    @Test func requiredDigestNotOfferedFailsAtTransit() {
        let (s, o) = firstLoginStatus(Self.libiscsiNormal) { $0.defaults.dataDigest = [.crc32c] }
        #expect(s == 0x0200 && o == .respondAndClose)
        var pairs = Self.libiscsiNormal.filter { $0.0 != "DataDigest" }
        pairs.append(("DataDigest", "CRC32C,None"))
        let (s2, o2) = firstLoginStatus(pairs) { $0.defaults.dataDigest = [.crc32c] }
        #expect(s2 == 0 && params(o2)?.dataDigest == .crc32c)
    }

    @Test func requestAfterFullFeatureIsRefused() {
        let env = Env()
        var m = LoginStateMachine()
        _ = send(&m, env, csg: 1, nsg: 3, text(Self.libiscsiNormal))
        let (r, o) = send(&m, env, csg: 1, nsg: 3, [])
        #expect(r.status == 0x0200 && o == .respondAndClose)
    }

    // Target-originated offers: keys the initiator left out whose RFC default exceeds the target's limits.
    @Test func targetOffersLowerMaxBurstWhenInitiatorOmitsIt() throws {
        let env = Env()
        env.defaults.maxBurstLength = 65536
        env.defaults.immediateData = false
        env.defaults.headerDigest = [.crc32c]
        var m = LoginStateMachine()
        let (r1, o1) = send(&m, env, csg: 1, nsg: 3, text([("InitiatorName", Self.initiator), ("TargetName", Self.targetName)]))
        #expect(o1 == .respondAndContinue && !r1.transit && r1.status == 0)
        let k1 = keys(r1)
        #expect(k1["MaxBurstLength"] == "65536")
        #expect(k1["ImmediateData"] == "No")
        #expect(k1["HeaderDigest"] == "CRC32C")
        #expect(k1["DataDigest"] == nil && k1["FirstBurstLength"] == nil)
        let (r2, o2) = send(&m, env, csg: 1, nsg: 3, text([("MaxBurstLength", "32768"), ("ImmediateData", "No"),
                                                             ("HeaderDigest", "CRC32C")]))
        #expect(r2.transit && r2.text.isEmpty)
        let p = try #require(params(o2))
        #expect(p.maxBurstLength == 32768 && !p.immediateData && p.headerDigest == .crc32c)
    }

    @Test func answersToTargetOffersAreChecked() {
        let env = Env()
        env.defaults.maxBurstLength = 65536
        var m = LoginStateMachine()
        _ = send(&m, env, csg: 1, nsg: 3, text([("InitiatorName", Self.initiator), ("TargetName", Self.targetName)]))
        let (r, o) = send(&m, env, csg: 1, nsg: 3, text([("MaxBurstLength", "262144")]))
        #expect(r.status == 0x0200 && o == .respondAndClose)

        var m2 = LoginStateMachine()
        _ = send(&m2, env, csg: 1, nsg: 3, text([("InitiatorName", Self.initiator), ("TargetName", Self.targetName)]))
        let (r2, o2) = send(&m2, env, csg: 1, nsg: 3, text([("X-unrelated", "1")]))
        #expect(r2.status == 0x0200 && o2 == .respondAndClose)
    }

    @Test func noTargetOffersWhenInitiatorNegotiatedEverything() throws {
        let env = Env()
        env.defaults.maxBurstLength = 65536
        var m = LoginStateMachine()
        let (r, o) = send(&m, env, csg: 1, nsg: 3, text(Self.libiscsiNormal))
        #expect(r.transit && keys(r)["MaxBurstLength"] == "65536")
        #expect(params(o)?.maxBurstLength == 65536)
    }

    // open-iscsi with default discovery settings goes from the security stage straight to full feature.
    @Test func openIscsiDiscoveryStraightFromSecurityStage() throws {
        let env = Env()
        var m = LoginStateMachine()
        let (r, o) = send(&m, env, csg: 0, nsg: 3, text([
            ("InitiatorName", Self.initiator), ("InitiatorAlias", "host"), ("SessionType", "Discovery"),
            ("AuthMethod", "None"),
        ]))
        #expect(r.transit && r.csg == 0 && r.nsg == 3)
        #expect(keys(r) == ["AuthMethod": "None"])
        let p = try #require(params(o))
        #expect(p.sessionType == .discovery && p.targetMaxRecvDataSegmentLength == 8192)
    }

    // Found by the login fuzzer (fuzz/regressions/login/duplicate-maxrecvdsl-in-response).
    @Test func aMalformedMaxRecvDataSegmentLengthIsAnsweredOnceWithoutOurDeclarationBesideIt() throws {
        let env = Env()
        var m = LoginStateMachine()
        var pairs = Self.libiscsiNormal.filter { $0.0 != "MaxRecvDataSegmentLength" }
        pairs.append(("MaxRecvDataSegmentLength", "2621Int"))
        let (r, o) = send(&m, env, csg: 1, nsg: 3, text(pairs))
        let all = try TextKeys.parse(r.text)
        #expect(all.filter { $0.key == "MaxRecvDataSegmentLength" }.map(\.value) == ["Reject"], "\(all)")
        // Never declared, so the RFC default governs what the target receives.
        let p = try #require(params(o))
        #expect(p.targetMaxRecvDataSegmentLength == ISCSILimits.defaultMaxRecvDataSegmentBytes)
    }

    // Found by the login fuzzer (fuzz/regressions/login/target-only-keys-from-the-initiator-answered-once).
    @Test func targetOnlyKeysFromTheInitiatorAreNotAnsweredBesideOurDeclaration() throws {
        let env = Env()
        env.defaults = TargetKeyDefaults(targetAlias: "disk-a")
        var m = LoginStateMachine()
        var pairs = Self.libiscsiNormal
        pairs.append(("TargetPortalGroupTag", "5"))
        pairs.append(("TargetAlias", "theirs"))
        let (r, o) = send(&m, env, csg: 1, nsg: 3, text(pairs))
        // The response parses (no key twice) and carries the target's own values.
        let all = try TextKeys.parse(r.text)
        #expect(all.filter { $0.key == "TargetPortalGroupTag" }.map(\.value) == ["7"], "\(all)")
        #expect(all.filter { $0.key == "TargetAlias" }.map(\.value) == ["disk-a"], "\(all)")
        #expect(r.status == 0 && params(o) != nil, "\(r) \(o)")
    }

    /// A target whose limits are below the RFC defaults (here a 64 KiB burst) must offer them before full feature
    /// phase. A login that leaves the security stage straight for full feature phase gives it no chance, and one
    /// whose MaxBurstLength was rejected has used the key up: both are refused rather than run above the limit.
    /// Found by the login fuzzer (fuzz/regressions/login/security-to-full-feature-skips-burst-offers and
    /// burst-above-target-limit-after-operational-stage).
    @Test func aSessionNeverEndsAboveTheTargetsBurstLimits() throws {
        let env = Env()
        env.defaults = TargetKeyDefaults(maxBurstLength: 65536, firstBurstLength: 65536)
        var skip = LoginStateMachine()
        let identity = [("InitiatorName", Self.initiator), ("TargetName", Self.targetName), ("AuthMethod", "None")]
        let (r1, o1) = send(&skip, env, csg: 0, nsg: 3, text(identity))
        #expect(o1 == .respondAndClose && r1.status == 0x0200, "\(r1) \(o1)")

        var rejected = LoginStateMachine()
        var pairs = Self.libiscsiNormal.filter { $0.0 != "MaxBurstLength" }
        pairs.append(("MaxBurstLength", "262144x"))
        let (r2, o2) = send(&rejected, env, csg: 1, nsg: 3, text(pairs))
        #expect(o2 == .respondAndClose && r2.status == 0x0200, "\(r2) \(o2)")

        // The same target with a well-behaved initiator: the burst is negotiated down and the login succeeds.
        var good = LoginStateMachine()
        let (r3, o3) = send(&good, env, csg: 1, nsg: 3, text(Self.libiscsiNormal))
        #expect(r3.status == 0 && keys(r3)["MaxBurstLength"] == "65536")
        let p = try #require(params(o3))
        #expect(p.maxBurstLength == 65536 && p.firstBurstLength <= 65536)
    }
}
