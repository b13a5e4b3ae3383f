import Testing
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor

/// Who may log in and who may stay: CHAP secret rules (RFC 7143 §12.1.3), State offline (tgt's system and
/// target states), and the re-check of logged-in sessions when a target's ACL or accounts change.
@Suite struct AdmissionTests {
    static let iqn = "iqn.2026-01.test:t1"
    static let initiator = "iqn.2026-01.org.example:host"
    static let account = "--lld iscsi --mode account"
    static let alice = CHAPAccount(user: "alice", password: "alicesecret01")

    // MARK: CHAP secrets

    @Test func secretsShorterThan96BitsAreRefused() {
        let h = ControlHarness()
        let short = h.run("\(Self.account) --op new --user alice --password elevenbytes")
        #expect(short.exitCode == 22)
        #expect(short.stderr == "ringtgtadm: invalid request: a CHAP secret must be at least 12 bytes (RFC 7143 12.1.3)\n")
        #expect(h.run("\(Self.account) --op new --user alice --password x").exitCode == 22)
        #expect(h.run("\(Self.account) --op show").stdout == "", "a refused account must not be created")
        #expect(h.run("\(Self.account) --op new --user alice --password twelvebytes!").exitCode == 0)
    }

    @Test func aTargetsSecretsMustDifferInEachDirection() {
        let h = ControlHarness()
        h.run("--lld iscsi --op new --mode target --tid 1 --targetname \(Self.iqn)")
        h.run("\(Self.account) --op new --user alice --password samesecret123")
        h.run("\(Self.account) --op new --user tgt0 --password samesecret123")
        h.run("\(Self.account) --op new --user tgt1 --password othersecret12")
        #expect(h.run("\(Self.account) --op bind --tid 1 --user alice").exitCode == 0)
        let out = h.run("\(Self.account) --op bind --tid 1 --user tgt0 --outgoing")
        #expect(out.exitCode == 22)
        #expect(out.stderr == "ringtgtadm: invalid request: the outgoing account tgt0 has the same secret as the "
                + "incoming account alice; a target's secrets must differ in each direction (RFC 7143 12.1.3)\n")
        // The same account both ways is the same secret both ways.
        #expect(h.run("\(Self.account) --op bind --tid 1 --user alice --outgoing").exitCode == 22)
        // The other order: an incoming account that repeats the outgoing secret.
        #expect(h.run("\(Self.account) --op bind --tid 1 --user tgt1 --outgoing").exitCode == 0)
        h.run("\(Self.account) --op new --user bob --password othersecret12")
        #expect(h.run("\(Self.account) --op bind --tid 1 --user bob").exitCode == 22)
        let chap = h.registry.currentSnapshot.target(tid: 1)?.chap
        #expect(chap == CHAPCredentials(incoming: [CHAPAccount(user: "alice", password: "samesecret123")],
                                        outgoing: CHAPAccount(user: "tgt1", password: "othersecret12")))
    }

    @Test func configFileNamesTheLineOfAShortOrRepeatedSecret() {
        let h = ControlHarness()
        #expect(throws: ConfigFile.Failures([ConfigFile.Failure(line: 3, content: "incominguser alice short",
                                           message: "invalid request: a CHAP secret must be at least 12 bytes (RFC 7143 12.1.3)")])) {
            try ConfigFile.apply("<target iqn.2026-01.test:a>\n  initiator-address ALL\n  incominguser alice short\n</target>\n",
                                 to: h.registry)
        }
        let h2 = ControlHarness()
        let repeated = "<target iqn.2026-01.test:a>\n  incominguser alice samesecret123\n  outgoinguser tgt0 samesecret123\n</target>\n"
        #expect(throws: ConfigFile.Failures([ConfigFile.Failure(line: 3, content: "outgoinguser tgt0 samesecret123",
                                           message: "invalid request: the outgoing account tgt0 has the same secret as "
                                               + "the incoming account alice; a target's secrets must differ in each "
                                               + "direction (RFC 7143 12.1.3)")])) {
            try ConfigFile.apply(repeated, to: h2.registry)
        }
    }

    @Test func mutualCHAPWithTheInitiatorsSecretFails() throws {
        let sameAsAlice = CHAPAccount(user: "tgt0", secret: Self.alice.secret)
        var x = CHAPExchange(credentials: CHAPCredentials(incoming: [Self.alice], outgoing: sameAsAlice),
                             random: { [7] + Array(1...16) })
        _ = try x.receive(["CHAP_A": "5"])
        let response = CHAP.encodeHex(CHAP.response(identifier: 7, secret: Self.alice.secret, challenge: Array(1...16)))
        do {
            _ = try x.receive(["CHAP_N": "alice", "CHAP_R": response, "CHAP_I": "9",
                               "CHAP_C": "0x" + String(repeating: "aa", count: 16)])
            Issue.record("the target answered mutual CHAP with the initiator's own secret")
        } catch {
            #expect(error.authentication == true)
        }
    }

    // MARK: State offline

    private func login(_ env: LoginEnvironment, _ pairs: [(String, String)]) -> LoginResponse {
        var m = LoginStateMachine()
        let req = LoginRequest(transit: true, csg: 1, nsg: 3, isid: 0x23D0_0000_0001, itt: 1)
        let bytes = TextKeys.encode(pairs.map { TextKeyValue($0.0, $0.1) })
        return bytes.withUnsafeBytes { m.receive(req, data: $0, env: env) }.0
    }

    private func env(_ target: TargetRuntime, systemOffline: Bool = false) -> LoginEnvironment {
        LoginEnvironment(targetLookup: { $0 == target.name ? target : nil }, isAllowed: { _, _ in true },
                         defaults: { _ in TargetKeyDefaults() }, portalGroupTag: 1, systemOffline: systemOffline)
    }

    private static let normal = [("InitiatorName", initiator), ("TargetName", iqn), ("SessionType", "Normal")]
    private static let discovery = [("InitiatorName", initiator), ("SessionType", "Discovery")]

    @Test func offlineSystemRefusesEveryLoginAndOfflineTargetItsOwn() {
        let ready = TargetRuntime(tid: 1, name: Self.iqn, luns: [], acl: [.all], params: [:], lunGeneration: 0)
        let offline = TargetRuntime(tid: 1, name: Self.iqn, luns: [], acl: [.all], params: [:], lunGeneration: 0,
                                    offline: true)
        #expect(login(env(ready), Self.normal).status == 0)
        #expect(login(env(ready, systemOffline: true), Self.normal).status == 0x0301)
        #expect(login(env(ready, systemOffline: true), Self.discovery).status == 0x0301)
        #expect(login(env(offline), Self.normal).status == 0x0300)
        #expect(login(env(offline), Self.discovery).status == 0, "a target's state does not concern discovery")
    }

    @Test func stateUpdatesArePublished() {
        let h = ControlHarness()
        h.run("--lld iscsi --op new --mode target --tid 1 --targetname \(Self.iqn)")
        #expect(h.run("--lld iscsi --op update --mode sys --name State -v offline").exitCode == 0)
        #expect(h.registry.currentSnapshot.systemOffline)
        #expect(h.run("--lld iscsi --op update --mode target --tid 1 --name state --value offline").exitCode == 0)
        #expect(h.registry.currentSnapshot.target(tid: 1)?.offline == true)
        h.run("--lld iscsi --op update --mode sys --name State -v ready")
        h.run("--lld iscsi --op update --mode target --tid 1 --name state --value ready")
        #expect(!h.registry.currentSnapshot.systemOffline && h.registry.currentSnapshot.target(tid: 1)?.offline == false)
    }

    // MARK: Sessions after a change

    private func target(acl: [ACLRule] = [.all], chap: CHAPCredentials = CHAPCredentials()) -> TargetRuntime {
        TargetRuntime(tid: 1, name: Self.iqn, luns: [], acl: acl, params: [:], lunGeneration: 0, chap: chap)
    }

    private func refusal(_ t: TargetRuntime, _ account: CHAPAccount?, peer: String = "127.0.0.1") -> String? {
        SessionAdmission.refusal(target: t, peerAddress: peer, initiatorName: Self.initiator, chapAccount: account)
    }

    @Test func sessionsAreReCheckedAgainstTheTargetsACLAndAccounts() {
        #expect(refusal(target(), nil) == nil)
        #expect(refusal(target(acl: [.address("127.0.0.1")]), nil) == nil)
        #expect(refusal(target(acl: [.address("10.0.0.1")]), nil) == "the ACL of \(Self.iqn) no longer admits it")
        #expect(refusal(target(acl: []), nil) != nil)
        let bound = CHAPCredentials(incoming: [Self.alice])
        #expect(refusal(target(chap: bound), nil) == "\(Self.iqn) now requires CHAP and the session did not authenticate")
        #expect(refusal(target(chap: bound), Self.alice) == nil)
        let other = CHAPCredentials(incoming: [CHAPAccount(user: "bob", password: "bobsecret0001")])
        #expect(refusal(target(chap: other), Self.alice) == "CHAP account 'alice' is no longer bound to \(Self.iqn)")
        // The same user name with a new secret (account deleted and made again) is not the account it proved.
        let renewed = CHAPCredentials(incoming: [CHAPAccount(user: "alice", password: "newsecret0001")])
        #expect(refusal(target(chap: renewed), Self.alice) != nil)
        // An outgoing account alone does not make CHAP mandatory (tgt).
        #expect(refusal(target(chap: CHAPCredentials(outgoing: Self.alice)), nil) == nil)
    }
}
