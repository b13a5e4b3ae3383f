// CHAP through libiscsi's own CHAP code: accounts made and bound with tgtadm's commands, one-way and mutual
// logins, and the refusals (no credentials, a wrong secret, a target that answers mutual CHAP wrongly).

import Foundation
import Testing

extension EndToEnd {
    @Suite("CHAP")
    struct CHAPLogins {
        static let user = "alice"
        static let secret = "secret123456"
        static let targetUser = "tgt0"
        static let targetSecret = "targetsecret99"

        /// libiscsi's URL forms: `iscsi://USER%SECRET@HOST:PORT/IQN/LUN` and, for mutual CHAP,
        /// `?target_user=U&target_password=P`.
        static func url(_ t: RunningTarget, user: String? = nil, secret: String? = nil,
                        targetUser: String? = nil, targetSecret: String? = nil) -> String {
            url(t.endpoint, path: "/\(t.iqn)/1", user: user, secret: secret, targetUser: targetUser, targetSecret: targetSecret)
        }

        /// `path` "" is a discovery session's URL.
        static func url(_ e: Endpoint, path: String, user: String?, secret: String?,
                        targetUser: String?, targetSecret: String?) -> String {
            var u = "iscsi://"
            if let user, let secret { u += "\(user)%\(secret)@" }
            u += "\(e.host):\(e.port)\(path)"
            if let targetUser, let targetSecret { u += "?target_user=\(targetUser)&target_password=\(targetSecret)" }
            return u
        }

        @Test func oneWayAndMutualCHAP() throws {
            try withTarget(luns: [.file(bytes: 16 * mebibyte)]) { t in
                // Before any account is bound, a login without credentials works.
                #expect(try t.tool("iscsi-inq", [Self.url(t)]).succeeded)

                let account = ["--lld", "iscsi", "--mode", "account"]
                try t.admin.must(account + ["--op", "new", "--user", Self.user, "--password", Self.secret])
                try t.admin.must(account + ["--op", "bind", "--tid", "1", "--user", Self.user])

                let none = try t.tool("iscsi-inq", [Self.url(t)])
                #expect(!none.succeeded && none.output.contains("Authentication failure"),
                        "a login without credentials must fail with 0x0201: \(none)")
                let wrong = try t.tool("iscsi-inq", [Self.url(t, user: Self.user, secret: "wrongsecret1")])
                #expect(!wrong.succeeded && wrong.output.contains("Authentication failure"), "\(wrong)")
                let stranger = try t.tool("iscsi-inq", [Self.url(t, user: "mallory", secret: Self.secret)])
                #expect(!stranger.succeeded && stranger.output.contains("Authentication failure"), "\(stranger)")

                let ok = try t.tool("iscsi-inq", [Self.url(t, user: Self.user, secret: Self.secret)])
                #expect(ok.succeeded && ok.stdout.contains("DIRECT_ACCESS"), "\(ok)")
                // Data moves over an authenticated session too.
                let rc = try t.tool("iscsi-readcapacity16", [Self.url(t, user: Self.user, secret: Self.secret)])
                #expect(rc.succeeded, "\(rc)")

                // Mutual CHAP: the initiator checks the target's answer.
                let noOutgoing = try t.tool("iscsi-inq", [Self.url(t, user: Self.user, secret: Self.secret,
                                                                  targetUser: Self.targetUser, targetSecret: Self.targetSecret)])
                #expect(!noOutgoing.succeeded, "mutual CHAP without an outgoing account must fail: \(noOutgoing)")
                try t.admin.must(account + ["--op", "new", "--user", Self.targetUser, "--password", Self.targetSecret])
                try t.admin.must(account + ["--op", "bind", "--tid", "1", "--user", Self.targetUser, "--outgoing"])
                let mutual = try t.tool("iscsi-inq", [Self.url(t, user: Self.user, secret: Self.secret,
                                                              targetUser: Self.targetUser, targetSecret: Self.targetSecret)])
                #expect(mutual.succeeded, "\(mutual)")
                let badTarget = try t.tool("iscsi-inq", [Self.url(t, user: Self.user, secret: Self.secret,
                                                                 targetUser: Self.targetUser, targetSecret: "notthesecret1")])
                #expect(!badTarget.succeeded && badTarget.output.contains("CHAP_R"),
                        "the initiator must refuse a target that does not know the secret it expects: \(badTarget)")

                // Discovery needs no account (as tgt), and `show` lists the bindings as tgt does.
                let ls = try t.tool("iscsi-ls", ["-s", t.endpoint.portalURL])
                #expect(ls.stdout.contains(t.iqn), "\(ls)")
                let show = try t.admin.must(["--lld", "iscsi", "--op", "show", "--mode", "target"])
                #expect(show.stdout.contains("Account information:\n        \(Self.user)\n        \(Self.targetUser) (outgoing)\n"),
                        "\(show.stdout)")

                // Unbinding the incoming account makes the target open again.
                try t.admin.must(account + ["--op", "unbind", "--tid", "1", "--user", Self.user])
                #expect(try t.tool("iscsi-inq", [Self.url(t)]).succeeded)
                try t.requireAlive("after the CHAP logins")
            }
        }
    }
}
