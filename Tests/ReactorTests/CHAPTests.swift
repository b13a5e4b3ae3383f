import Testing

/// CHAP (RFC 7143 §12.1.3, RFC 1994): the codec, the exchange, and the login state machine with a target that
/// has CHAP accounts, driven with the key sequences open-iscsi and libiscsi send.
@Suite struct CHAPTests {
    static let targetName = "iqn.2026-01.org.ringtgt:chap"
    static let initiator = "iqn.2026-01.org.example:host"
    /// Identifier 7, then challenge bytes 1...16.
    static let fixedRandom: () -> [UInt8] = { [7] + Array(1...16) }
    static let alice = CHAPAccount(user: "alice", password: "secret123456")
    static let target = CHAPAccount(user: "tgt0", password: "targetsecret99")
    /// hashlib.md5(bytes([7]) + b"secret123456" + bytes(range(1, 17)))
    static let aliceResponse = "0x3bd368dde929a1905c971f6f7923ae3e"
    /// hashlib.md5(bytes([9]) + b"targetsecret99" + bytes([0xaa] * 16))
    static let targetResponse = "0x38aaad667d19554b0edd11fe42321254"

    // MARK: codec

    @Test func md5ResponseMatchesRFC1994() {
        let r = CHAP.response(identifier: 7, secret: Array("secret123456".utf8), challenge: Array(1...16))
        #expect(CHAP.encodeHex(r) == Self.aliceResponse)
    }

    @Test func binaryValuesInHexAndBase64() {
        #expect(CHAP.decodeBinary("0x0102ff") == [1, 2, 255])
        #expect(CHAP.decodeBinary("0X0A0b") == [10, 11])
        #expect(CHAP.decodeBinary("0x102") == [1, 2])            // odd digit count: implied leading zero
        #expect(CHAP.decodeBinary("0bAQL/") == [1, 2, 255])
        #expect(CHAP.decodeBinary("0bAQI=") == [1, 2])
        #expect(CHAP.decodeBinary("0bAQ==") == [1])
        #expect(CHAP.decodeBinary("0x") == nil)
        #expect(CHAP.decodeBinary("0xzz") == nil)
        #expect(CHAP.decodeBinary("0bAQI") == nil)
        #expect(CHAP.decodeBinary("1234") == nil)
        #expect(CHAP.encodeHex([0, 0xab]) == "0x00ab")
    }

    // MARK: exchange

    @Test func oneWayExchange() throws {
        var x = CHAPExchange(credentials: CHAPCredentials(incoming: [Self.alice]), random: Self.fixedRandom)
        let a = try x.receive(["CHAP_A": "7,6,5"])
        #expect(a == [TextKeyValue("CHAP_A", "5"), TextKeyValue("CHAP_I", "7"),
                      TextKeyValue("CHAP_C", "0x0102030405060708090a0b0c0d0e0f10")])
        #expect(x.state == .challenged)
        #expect(try x.receive(["CHAP_N": "alice", "CHAP_R": Self.aliceResponse]) == [])
        #expect(x.state == .done && x.authenticatedUser == "alice")
    }

    @Test func mutualExchange() throws {
        var x = CHAPExchange(credentials: CHAPCredentials(incoming: [Self.alice], outgoing: Self.target),
                             random: Self.fixedRandom)
        _ = try x.receive(["CHAP_A": "5"])
        let out = try x.receive(["CHAP_N": "alice", "CHAP_R": Self.aliceResponse, "CHAP_I": "9",
                                 "CHAP_C": "0x" + String(repeating: "aa", count: 16)])
        #expect(out == [TextKeyValue("CHAP_N", "tgt0"), TextKeyValue("CHAP_R", Self.targetResponse)])
    }

    @Test func failures() throws {
        func challenged(_ creds: CHAPCredentials = CHAPCredentials(incoming: [Self.alice])) throws -> CHAPExchange {
            var x = CHAPExchange(credentials: creds, random: Self.fixedRandom)
            _ = try x.receive(["CHAP_A": "5"])
            return x
        }
        func failure(_ x: inout CHAPExchange, _ keys: [String: String]) -> CHAPFailure? {
            do { _ = try x.receive(keys); return nil } catch { return error }
        }
        var x = try challenged()
        #expect(failure(&x, ["CHAP_N": "alice", "CHAP_R": "0x" + String(repeating: "00", count: 16)])?.authentication == true)
        x = try challenged()
        #expect(failure(&x, ["CHAP_N": "mallory", "CHAP_R": Self.aliceResponse])?.authentication == true)
        x = try challenged()
        #expect(failure(&x, ["CHAP_N": "alice"])?.authentication == false)
        x = try challenged()
        #expect(failure(&x, ["CHAP_N": "alice", "CHAP_R": "zz"])?.authentication == false)
        // Mutual: only one of CHAP_I/CHAP_C, a reflected challenge, no outgoing account.
        x = try challenged()
        #expect(failure(&x, ["CHAP_N": "alice", "CHAP_R": Self.aliceResponse, "CHAP_I": "1"])?.authentication == false)
        x = try challenged(CHAPCredentials(incoming: [Self.alice], outgoing: Self.target))
        #expect(failure(&x, ["CHAP_N": "alice", "CHAP_R": Self.aliceResponse, "CHAP_I": "1",
                             "CHAP_C": "0x0102030405060708090a0b0c0d0e0f10"])?.authentication == true)
        x = try challenged()
        #expect(failure(&x, ["CHAP_N": "alice", "CHAP_R": Self.aliceResponse, "CHAP_I": "1",
                             "CHAP_C": "0xaabbccdd"])?.authentication == true)
        // No MD5 offered; CHAP_R before CHAP_A.
        var y = CHAPExchange(credentials: CHAPCredentials(incoming: [Self.alice]), random: Self.fixedRandom)
        #expect(failure(&y, ["CHAP_A": "6,7"])?.authentication == true)
        y = CHAPExchange(credentials: CHAPCredentials(incoming: [Self.alice]), random: Self.fixedRandom)
        #expect(failure(&y, ["CHAP_R": Self.aliceResponse])?.authentication == false)
    }

    /// RFC 7143 §12.1.3: challenges must be unpredictable and not repeat. The default generator is the
    /// system's CSPRNG (getrandom); 10,000 challenges of 16 bytes from it are all different.
    @Test func challengesFromTheSystemGeneratorNeverRepeat() throws {
        var seen = Set<String>()
        var identifiers = Set<String>()
        for _ in 0..<10_000 {
            var x = CHAPExchange(credentials: CHAPCredentials(incoming: [Self.alice]))
            let keys = Dictionary(uniqueKeysWithValues: try x.receive(["CHAP_A": "5"]).map { ($0.key, $0.value) })
            let c = try #require(keys["CHAP_C"])
            #expect(CHAP.decodeBinary(c)?.count == CHAP.challengeBytes)
            #expect(seen.insert(c).inserted, "challenge \(c) repeated")
            identifiers.insert(try #require(keys["CHAP_I"]))
        }
        #expect(identifiers.count > 200, "CHAP_I takes many values: \(identifiers.count)")
    }

    /// Mutual CHAP with the real generator: an initiator that knows alice's secret but sends the target's own
    /// challenge back (to have the target compute its answer for it) is refused, and nothing is answered.
    @Test func reflectedChallengeIsRefused() throws {
        var x = CHAPExchange(credentials: CHAPCredentials(incoming: [Self.alice], outgoing: Self.target))
        let keys = Dictionary(uniqueKeysWithValues: try x.receive(["CHAP_A": "5"]).map { ($0.key, $0.value) })
        let id = try #require(keys["CHAP_I"].flatMap { UInt8($0) })
        let challengeText = try #require(keys["CHAP_C"])
        let challenge = try #require(CHAP.decodeBinary(challengeText))
        let right = CHAP.encodeHex(CHAP.response(identifier: id, secret: Self.alice.secret, challenge: challenge))
        do {
            let answer = try x.receive(["CHAP_N": "alice", "CHAP_R": right, "CHAP_I": String(id), "CHAP_C": challengeText])
            Issue.record("a reflected challenge was answered: \(answer)")
        } catch {
            #expect(error.authentication && error.reason.contains("repeats the target's challenge"), "\(error)")
        }
        #expect(x.attemptedUser == "alice")
    }

    // MARK: login

    private func env(_ creds: CHAPCredentials) -> LoginEnvironment {
        let t = TargetRuntime(tid: 1, name: Self.targetName, luns: [], acl: [.all], params: [:], lunGeneration: 0,
                              chap: creds)
        return LoginEnvironment(targetLookup: { $0.lowercased() == Self.targetName ? t : nil },
                                isAllowed: { _, _ in true }, defaults: { _ in TargetKeyDefaults() }, portalGroupTag: 1)
    }

    private func send(_ m: inout LoginStateMachine, _ env: LoginEnvironment, csg: UInt8, nsg: UInt8,
                      transit: Bool = true, _ pairs: [(String, String)]) -> (LoginResponse, LoginOutcome) {
        let req = LoginRequest(transit: transit, continueFlag: false, csg: csg, nsg: nsg, versionMax: 0,
                               versionMin: 0, isid: 0x23D0_0000_0001, tsih: 0, itt: 1, cid: 0)
        let bytes = TextKeys.encode(pairs.map { TextKeyValue($0.0, $0.1) })
        return bytes.withUnsafeBytes { m.receive(req, data: $0, env: env) }
    }

    private func keys(_ r: LoginResponse) -> [String: String] {
        var d: [String: String] = [:]
        for p in (try? TextKeys.parse(r.text)) ?? [] { d[p.key] = p.value }
        return d
    }

    private static let identity: [(String, String)] = [
        ("InitiatorName", initiator), ("TargetName", targetName), ("SessionType", "Normal"),
    ]

    /// open-iscsi's order: AuthMethod list with T=1, CHAP_A, then CHAP_N/CHAP_R (+ CHAP_I/CHAP_C for mutual),
    /// then the operational stage.
    @Test func mutualCHAPLoginAsOpenIscsiDoesIt() throws {
        let e = env(CHAPCredentials(incoming: [Self.alice], outgoing: Self.target))
        var m = LoginStateMachine()
        m.chapRandom = Self.fixedRandom
        let (r1, o1) = send(&m, e, csg: 0, nsg: 1, Self.identity + [("AuthMethod", "CHAP,None")])
        #expect(o1 == .respondAndContinue && r1.status == 0)
        #expect(keys(r1)["AuthMethod"] == "CHAP")
        #expect(!r1.transit, "the security stage cannot end before the initiator authenticated")
        let (r2, _) = send(&m, e, csg: 0, nsg: 1, [("CHAP_A", "5")])
        #expect(r2.status == 0 && !r2.transit)
        #expect(keys(r2)["CHAP_I"] == "7" && keys(r2)["CHAP_C"] == "0x0102030405060708090a0b0c0d0e0f10")
        let (r3, o3) = send(&m, e, csg: 0, nsg: 1, [("CHAP_N", "alice"), ("CHAP_R", Self.aliceResponse),
                                                    ("CHAP_I", "9"), ("CHAP_C", "0x" + String(repeating: "aa", count: 16))])
        #expect(o3 == .respondAndContinue && r3.status == 0 && r3.transit && r3.nsg == 1)
        #expect(keys(r3)["CHAP_N"] == "tgt0" && keys(r3)["CHAP_R"] == Self.targetResponse)
        let (r4, o4) = send(&m, e, csg: 1, nsg: 3, [("HeaderDigest", "None"), ("MaxRecvDataSegmentLength", "65536")])
        #expect(r4.status == 0 && r4.transit)
        if case .respondAndEnterFullFeature = o4 {} else { Issue.record("no full feature phase: \(o4)") }
    }

    @Test func wrongPasswordIsAuthenticationFailure() {
        let e = env(CHAPCredentials(incoming: [Self.alice]))
        var m = LoginStateMachine()
        m.chapRandom = Self.fixedRandom
        _ = send(&m, e, csg: 0, nsg: 1, Self.identity + [("AuthMethod", "CHAP,None")])
        _ = send(&m, e, csg: 0, nsg: 1, [("CHAP_A", "5")])
        let (r, o) = send(&m, e, csg: 0, nsg: 1, [("CHAP_N", "alice"), ("CHAP_R", "0x" + String(repeating: "11", count: 16))])
        #expect(r.status == 0x0201 && o == .respondAndClose)
    }

    @Test func targetWithAccountsRefusesLoginsWithoutCHAP() {
        let e = env(CHAPCredentials(incoming: [Self.alice]))
        // libiscsi without credentials: straight to the operational stage.
        var m = LoginStateMachine()
        #expect(send(&m, e, csg: 1, nsg: 3, Self.identity + [("HeaderDigest", "None")]).0.status == 0x0201)
        // open-iscsi without credentials: AuthMethod=None.
        m = LoginStateMachine()
        #expect(send(&m, e, csg: 0, nsg: 1, Self.identity + [("AuthMethod", "None")]).0.status == 0x0201)
        // No AuthMethod at all, transit out of the security stage.
        m = LoginStateMachine()
        #expect(send(&m, e, csg: 0, nsg: 1, Self.identity).0.status == 0x0201)
        // Skipping the CHAP exchange: AuthMethod=CHAP agreed, then the operational stage.
        m = LoginStateMachine()
        _ = send(&m, e, csg: 0, nsg: 1, Self.identity + [("AuthMethod", "CHAP")])
        #expect(send(&m, e, csg: 1, nsg: 3, [("HeaderDigest", "None")]).0.status != 0)
    }

    @Test func targetWithoutAccountsStillAnswersNone() {
        let e = env(CHAPCredentials())
        var m = LoginStateMachine()
        let (r, _) = send(&m, e, csg: 0, nsg: 1, Self.identity + [("AuthMethod", "CHAP,None")])
        #expect(r.status == 0 && r.transit && keys(r)["AuthMethod"] == "None")
    }

    @Test func mutualWithoutOutgoingAccountFails() {
        let e = env(CHAPCredentials(incoming: [Self.alice]))
        var m = LoginStateMachine()
        m.chapRandom = Self.fixedRandom
        _ = send(&m, e, csg: 0, nsg: 1, Self.identity + [("AuthMethod", "CHAP")])
        _ = send(&m, e, csg: 0, nsg: 1, [("CHAP_A", "5")])
        let (r, _) = send(&m, e, csg: 0, nsg: 1, [("CHAP_N", "alice"), ("CHAP_R", Self.aliceResponse),
                                                  ("CHAP_I", "1"), ("CHAP_C", "0xaabbccddeeff")])
        #expect(r.status == 0x0201)
    }

    // MARK: discovery

    private func discoveryEnv(_ creds: CHAPCredentials) -> LoginEnvironment {
        LoginEnvironment(targetLookup: { _ in nil }, isAllowed: { _, _ in true }, defaults: { _ in TargetKeyDefaults() },
                         portalGroupTag: 1, discoveryCHAP: creds)
    }

    private static let discovery: [(String, String)] = [("InitiatorName", initiator), ("SessionType", "Discovery")]

    /// tgt's GLOBAL_TID accounts (bound without --tid): a discovery session must authenticate with them, by
    /// the same rules as a normal session, mutual CHAP included.
    @Test func discoveryWithAccountsRequiresCHAP() throws {
        let e = discoveryEnv(CHAPCredentials(incoming: [Self.alice], outgoing: Self.target))
        // libiscsi without credentials goes straight to the operational stage; open-iscsi offers None.
        var m = LoginStateMachine()
        #expect(send(&m, e, csg: 1, nsg: 3, Self.discovery + [("HeaderDigest", "None")]).0.status == 0x0201)
        m = LoginStateMachine()
        #expect(send(&m, e, csg: 0, nsg: 1, Self.discovery + [("AuthMethod", "None")]).0.status == 0x0201)
        m = LoginStateMachine()
        m.chapRandom = Self.fixedRandom
        _ = send(&m, e, csg: 0, nsg: 1, Self.discovery + [("AuthMethod", "CHAP")])
        _ = send(&m, e, csg: 0, nsg: 1, [("CHAP_A", "5")])
        let wrong = send(&m, e, csg: 0, nsg: 1, [("CHAP_N", "alice"), ("CHAP_R", "0x" + String(repeating: "11", count: 16))])
        #expect(wrong.0.status == 0x0201 && wrong.1 == .respondAndClose)

        m = LoginStateMachine()
        m.chapRandom = Self.fixedRandom
        let (r1, _) = send(&m, e, csg: 0, nsg: 1, Self.discovery + [("AuthMethod", "CHAP,None")])
        #expect(r1.status == 0 && !r1.transit && keys(r1)["AuthMethod"] == "CHAP")
        _ = send(&m, e, csg: 0, nsg: 1, [("CHAP_A", "5")])
        let (r3, _) = send(&m, e, csg: 0, nsg: 1, [("CHAP_N", "alice"), ("CHAP_R", Self.aliceResponse),
                                                   ("CHAP_I", "9"), ("CHAP_C", "0x" + String(repeating: "aa", count: 16))])
        #expect(r3.status == 0 && r3.transit && keys(r3)["CHAP_R"] == Self.targetResponse)
        let (_, o4) = send(&m, e, csg: 1, nsg: 3, [("HeaderDigest", "None")])
        guard case .respondAndEnterFullFeature(let p) = o4 else { Issue.record("no full feature phase: \(o4)"); return }
        #expect(p.sessionType == .discovery && m.chapAccount == Self.alice)

        // Without discovery accounts, discovery stays open (tgt's default), whatever a target has bound.
        m = LoginStateMachine()
        let (r, o) = send(&m, discoveryEnv(CHAPCredentials()), csg: 1, nsg: 3, Self.discovery + [("HeaderDigest", "None")])
        #expect(r.status == 0 && r.transit)
        if case .respondAndEnterFullFeature = o {} else { Issue.record("open discovery refused: \(o)") }
    }

    /// A discovery session answers to the discovery accounts as they change, as a normal session does to its target's.
    @Test func discoverySessionsAreRecheckedWhenTheAccountsChange() {
        let bound = CHAPCredentials(incoming: [Self.alice])
        #expect(SessionAdmission.discoveryRefusal(CHAPCredentials(), chapAccount: nil) == nil)
        #expect(SessionAdmission.discoveryRefusal(bound, chapAccount: Self.alice) == nil)
        #expect(SessionAdmission.discoveryRefusal(bound, chapAccount: nil)
                == "discovery now requires CHAP and the session did not authenticate")
        #expect(SessionAdmission.discoveryRefusal(CHAPCredentials(incoming: [Self.target]), chapAccount: Self.alice)
                == "CHAP account 'alice' is no longer bound to discovery")
    }
}
