// Discovery CHAP as tgt has it: accounts bound without --tid (tgtadm's GLOBAL_TID) authenticate discovery
// sessions (SessionType=Discovery). Checked through libiscsi's iscsi-ls (its own CHAP code), a raw discovery
// login that skips the security stage, and targets.conf's incomingdiscoveryuser / outgoingdiscoveryuser.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension EndToEnd {
    @Suite("CHAP: discovery")
    struct DiscoveryCHAP {
        /// The discovery accounts: incoming (the initiator's) and outgoing (the target's, for mutual CHAP).
        static let (user, secret) = ("disc", "discsecret12")
        static let (targetUser, targetSecret) = ("dout", "doutsecret12")
        static let account = ["--lld", "iscsi", "--mode", "account"]
        /// How long a SIGHUP reload may take to show.
        static let reloadTimeoutSeconds = 15.0
        static let pollIntervalMicroseconds: useconds_t = 20_000

        /// libiscsi's discovery URL: `iscsi://USER%SECRET@HOST:PORT`, plus `?target_user=U&target_password=P`
        /// for mutual CHAP.
        static func url(_ e: Endpoint, user: String? = nil, secret: String? = nil,
                        targetUser: String? = nil, targetSecret: String? = nil) -> String {
            CHAPLogins.url(e, path: "", user: user, secret: secret, targetUser: targetUser, targetSecret: targetSecret)
        }

        /// A discovery login straight from the operational stage to full feature phase (no security stage):
        /// the Login Response's status class and detail.
        static func rawDiscoveryLogin(_ e: Endpoint) throws -> [UInt8]? {
            let c = try RawConnection(e)
            c.send(LoginPDU.request(initiator: "\(RunningTarget.iqnPrefix):raw-discovery", target: nil))
            return c.awaitOutcome().loginStatus.map { [$0.cls, $0.detail] }
        }

        @Test func accountsBoundWithoutATidGuardDiscovery() throws {
            try withTarget(luns: [.null(bytes: 16 * mebibyte)]) { t in
                func ls(_ url: String) throws -> ToolResult { try t.tool("iscsi-ls", [url]) }
                let open = try ls(Self.url(t.endpoint))
                #expect(open.succeeded && open.stdout.contains(t.iqn), "discovery before any account: \(open)")
                #expect(try Self.rawDiscoveryLogin(t.endpoint) == [0, 0])

                try t.admin.must(Self.account + ["--op", "new", "--user", Self.user, "--password", Self.secret])
                try t.admin.must(Self.account + ["--op", "bind", "--user", Self.user])
                let none = try ls(Self.url(t.endpoint))
                #expect(!none.succeeded && none.output.contains("Authentication failure"), "no credentials: \(none)")
                let wrong = try ls(Self.url(t.endpoint, user: Self.user, secret: "wrongsecret1"))
                #expect(!wrong.succeeded && wrong.output.contains("Authentication failure"), "\(wrong)")
                let ok = try ls(Self.url(t.endpoint, user: Self.user, secret: Self.secret))
                #expect(ok.succeeded && ok.stdout.contains(t.iqn), "\(ok)")
                #expect(try Self.rawDiscoveryLogin(t.endpoint) == [2, 1], "a discovery login that skips CHAP")
                // The target's own logins are not concerned: it has no account bound.
                #expect(try t.tool("iscsi-inq", [t.url(lun: 1)]).succeeded)

                // Mutual CHAP: refused until an outgoing account is bound, then the initiator checks its answer.
                let mutual = Self.url(t.endpoint, user: Self.user, secret: Self.secret,
                                      targetUser: Self.targetUser, targetSecret: Self.targetSecret)
                #expect(try !ls(mutual).succeeded, "mutual CHAP without an outgoing discovery account")
                try t.admin.must(Self.account + ["--op", "new", "--user", Self.targetUser, "--password", Self.targetSecret])
                try t.admin.must(Self.account + ["--op", "bind", "--user", Self.targetUser, "--outgoing"])
                let both = try ls(mutual)
                #expect(both.succeeded && both.stdout.contains(t.iqn), "\(both)")
                let badTarget = try ls(Self.url(t.endpoint, user: Self.user, secret: Self.secret,
                                                targetUser: Self.targetUser, targetSecret: "notthesecret1"))
                #expect(!badTarget.succeeded, "\(badTarget)")

                let sys = try t.admin.must(["--lld", "iscsi", "--op", "show", "--mode", "system"]).stdout
                #expect(sys.contains("    Account information:\n\n    \(Self.user)\n    \(Self.targetUser) (outgoing)\n"), "\(sys)")

                try t.admin.must(Self.account + ["--op", "unbind", "--user", Self.user])
                #expect(try ls(Self.url(t.endpoint)).succeeded, "discovery once the account is unbound")
                try t.requireAlive("after the discovery logins")
            }
        }

        @Test func incomingDiscoveryUserFromTheConfigFile() throws {
            try CHAPAdmission.requireRingtgt()
            let files = try Scratch()
            defer { files.remove() }
            let iqn = "\(RunningTarget.iqnPrefix):discovery-conf"
            let target = "<target \(iqn)>\n    backing-store /dev/null\n    bs-type null\n</target>\n"
            let conf = files.path("targets.conf")
            try ("incomingdiscoveryuser \(Self.user) \(Self.secret)\noutgoingdiscoveryuser \(Self.targetUser) \(Self.targetSecret)\n"
                 + target).write(to: conf, atomically: true, encoding: .utf8)
            try withTarget(daemonOptions: ["--config", conf.path], luns: [], createsTarget: false) { t in
                func ls(_ url: String) throws -> ToolResult { try t.tool("iscsi-ls", [url]) }
                let none = try ls(Self.url(t.endpoint))
                #expect(!none.succeeded && none.output.contains("Authentication failure"), "\(none)")
                #expect(try Self.rawDiscoveryLogin(t.endpoint) == [2, 1])
                let mutual = try ls(Self.url(t.endpoint, user: Self.user, secret: Self.secret,
                                             targetUser: Self.targetUser, targetSecret: Self.targetSecret))
                #expect(mutual.succeeded && mutual.stdout.contains(iqn), "\(mutual)")

                // A reload without the directives opens discovery again.
                try target.write(to: conf, atomically: true, encoding: .utf8)
                #expect(kill(t.pid, SIGHUP) == 0)
                let deadline = monotonicSeconds() + Self.reloadTimeoutSeconds
                while try !ls(Self.url(t.endpoint)).succeeded && monotonicSeconds() < deadline {
                    usleep(Self.pollIntervalMicroseconds)
                }
                #expect(try ls(Self.url(t.endpoint)).succeeded, "discovery after the reload")
                try t.requireAlive("after the reload")
            }
        }
    }
}
