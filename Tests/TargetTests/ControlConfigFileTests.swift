import Foundation
import Testing
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor

@Suite struct ControlConfigFileTests {
    @Test func configurationBecomesTargetsLUNsACLAndKeys() throws {
        let h = ControlHarness()
        h.opener.sizes["/dev/null"] = 1 << 30
        let text = """
            # ringtgt test configuration
            default-driver iscsi

            <target iqn.2026-01.test:one>
                backing-store /tmp/one.img
                <backing-store /dev/null>
                    bs-type null
                    bsopts size=1G
                    lun 5
                </backing-store>
                backing-store /tmp/two.img
                initiator-address 10.0.0.0/24
                initiator-name iqn.2026-01.test:host
                MaxRecvDataSegmentLength 65536
                HeaderDigest CRC32C,None
                vendor_id ACME
            </target>
            <target iqn.2026-01.test:two>
                bs-type null
                block-size 4096
                lun 7
                backing-store /dev/null
                readonly 1
            </target>
            """
        try ConfigFile.apply(text, to: h.registry)
        let snapshot = try #require(h.fabric.latest)
        #expect(snapshot.targets.map(\.tid) == [1, 2])

        let one = try #require(snapshot.target(tid: 1))
        #expect(one.name == "iqn.2026-01.test:one")
        #expect(one.luns.map(\.number) == [1, 2, 5])
        #expect(one.lun(1)?.path == "/tmp/one.img" && one.lun(1)?.bstype == "rdwr")
        #expect(one.lun(2)?.path == "/tmp/two.img")
        #expect(one.lun(5)?.bstype == "null")
        #expect(one.luns.allSatisfy { $0.vendor == "ACME" })
        #expect(one.acl == [.cidr("10.0.0.0", prefixLength: 24), .initiatorName("iqn.2026-01.test:host")])
        #expect(one.params == ["MaxRecvDataSegmentLength": "65536", "HeaderDigest": "CRC32C,None"])
        let nullSpec = try #require(h.opener.opened.first { $0.path == "/dev/null" && $0.tid == 1 })
        #expect(nullSpec.options == ["size": "1G"])

        let two = try #require(snapshot.target(tid: 2))
        #expect(two.luns.map(\.number) == [7])
        #expect(two.lun(7)?.blockSize == 4096)
        #expect(two.lun(7)?.capabilities.readOnly == true)
        #expect(two.acl == [.all])   // no initiator-address: tgt-admin binds ALL
    }

    @Test func tidContinuesAfterExistingTargetsAndCanBeFixed() throws {
        let h = ControlHarness()
        h.run("--lld iscsi --op new --mode target --tid 4 --targetname iqn.2026-01.test:existing")
        try ConfigFile.apply("<target iqn.2026-01.test:a>\n</target>\n<target iqn.2026-01.test:b>\ntid 10\n</target>\n<target iqn.2026-01.test:c>\n</target>\n",
                             to: h.registry)
        #expect(h.registry.currentSnapshot.targets.map(\.tid) == [4, 5, 10, 11])
    }

    @Test func syntaxErrorsNameTheLineAndItsContent() {
        let cases: [(String, ConfigFile.Failure)] = [
            ("<target iqn.2026-01.test:a>\n    frobnicate 3\n</target>\n",
             .init(line: 2, content: "frobnicate 3", message: "unknown setting 'frobnicate'")),
            ("backing-store /tmp/x\n",
             .init(line: 1, content: "backing-store /tmp/x", message: "'backing-store' outside <target>")),
            ("\n<target iqn.2026-01.test:a>\n    backing-store /tmp/x\n",
             .init(line: 2, content: "<target iqn.2026-01.test:a>", message: "<target> is never closed")),
            ("<target iqn.2026-01.test:a>\n  <backing-store /tmp/x>\n    initiator-address ALL\n  </backing-store>\n</target>\n",
             .init(line: 3, content: "initiator-address ALL", message: "'initiator-address' is not a backing-store setting")),
            ("<target iqn.2026-01.test:a>\n  incominguser joe\n</target>\n",
             .init(line: 2, content: "incominguser joe", message: "incominguser takes a user and a password")),
            ("<target iqn.2026-01.test:a>\n  lun x\n</target>\n",
             .init(line: 2, content: "lun x", message: "lun must be a number")),
            ("</target>\n", .init(line: 1, content: "</target>", message: "</target> without <target>")),
        ]
        for (text, expected) in cases {
            let h = ControlHarness()
            #expect(throws: ConfigFile.Failures([expected])) { try ConfigFile.apply(text, to: h.registry) }
            #expect(h.fabric.published.isEmpty, "a syntax error must change nothing: \(expected)")
        }
    }

    @Test func applyErrorsNameTheLineThatCausedThem() {
        let h = ControlHarness()
        h.opener.missingPaths = ["/missing.img"]
        let text = """
            <target iqn.2026-01.test:a>
                backing-store /tmp/ok.img
                backing-store /missing.img
            </target>
            """
        #expect(throws: ConfigFile.Failures([ConfigFile.Failure(line: 3, content: "backing-store /missing.img",
                                           message: "invalid request: open /missing.img: No such file or directory")])) {
            try ConfigFile.apply(text, to: h.registry)
        }

        let h2 = ControlHarness()
        let keys = "<target iqn.2026-01.test:a>\n  MaxRecvDataSegmentLength 100\n</target>\n"
        #expect(throws: ConfigFile.Failures([ConfigFile.Failure(line: 2, content: "MaxRecvDataSegmentLength 100", message: "invalid request")])) {
            try ConfigFile.apply(keys, to: h2.registry)
        }

        let h3 = ControlHarness()
        let params = "<target iqn.2026-01.test:a>\n  backing-store /tmp/x\n  vendor_id Ünïcode\n</target>\n"
        #expect(throws: ConfigFile.Failures([ConfigFile.Failure(line: 3, content: "vendor_id Ünïcode", message: "invalid request: vendor_id must be printable ASCII")])) {
            try ConfigFile.apply(params, to: h3.registry)
        }

        // As tgt-admin -e: a target that exists already is left as it is.
        let h4 = ControlHarness()
        h4.run("--lld iscsi --op new --mode target --tid 1 --targetname iqn.2026-01.test:a")
        let report = try? ConfigFile.apply("<target iqn.2026-01.test:a>\n  backing-store /tmp/a\n</target>\n", to: h4.registry)
        #expect(report?.notes == ["target iqn.2026-01.test:a already exists"])
        #expect(h4.registry.currentSnapshot.target(tid: 1)?.luns.isEmpty == true)
    }

    @Test func crlfLinesAreAccepted() throws {
        let h = ControlHarness()
        try ConfigFile.apply("<target iqn.2026-01.test:dos>\r\n  backing-store /tmp/d.img\r\n</target>\r\n", to: h.registry)
        #expect(h.registry.currentSnapshot.target(tid: 1)?.lun(1)?.path == "/tmp/d.img")
    }

    @Test func loadReadsAFile() throws {
        let dir = makeTemporaryDirectory()
        defer { _ = try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/targets.conf"
        try "<target iqn.2026-01.test:file>\n backing-store \(dir)/f.img\n</target>\n".write(toFile: path, atomically: true, encoding: .utf8)
        let h = ControlHarness()
        // The dry run checks that a file store exists.
        #expect(throws: ConfigFile.Failures.self) { try ConfigFile.load(path: path, into: h.registry) }
        #expect(h.fabric.published.isEmpty)
        _ = FileManager.default.createFile(atPath: dir + "/f.img", contents: nil)
        try ConfigFile.load(path: path, into: h.registry)
        #expect(h.registry.currentSnapshot.target(tid: 1)?.lun(1)?.path == dir + "/f.img")
        #expect(throws: ConfigFile.Missing.self) { try ConfigFile.load(path: dir + "/nope.conf", into: h.registry) }
    }
}

@Suite struct ControlConfigFileCHAPTests {
    @Test func incomingAndOutgoingUsersCreateAndBindAccounts() throws {
        let h = ControlHarness()
        let text = """
            <target iqn.2026-01.test:a>
                incominguser alice secret123456
                outgoinguser tgt0 targetsecret99
            </target>
            <target iqn.2026-01.test:b>
                incominguser alice secret123456
            </target>
            """
        try ConfigFile.apply(text, to: h.registry)
        let a = try #require(h.registry.currentSnapshot.targets.first { $0.name == "iqn.2026-01.test:a" })
        #expect(a.chap == CHAPCredentials(incoming: [CHAPAccount(user: "alice", password: "secret123456")],
                                          outgoing: CHAPAccount(user: "tgt0", password: "targetsecret99")))
        let b = try #require(h.registry.currentSnapshot.targets.first { $0.name == "iqn.2026-01.test:b" })
        #expect(b.chap.incoming.map(\.user) == ["alice"])

        // The same user with another password, and a line without a password, name their lines.
        let h2 = ControlHarness()
        let clash = "<target iqn.2026-01.test:a>\n  incominguser u usersecret001\n</target>\n<target iqn.2026-01.test:b>\n  incominguser u usersecret002\n</target>\n"
        #expect(throws: ConfigFile.Failures([ConfigFile.Failure(line: 5, content: "incominguser u usersecret002",
                                                                message: "account u already exists with another password")])) {
            try ConfigFile.apply(clash, to: h2.registry)
        }
        let h3 = ControlHarness()
        #expect(throws: ConfigFile.Failures([ConfigFile.Failure(line: 2, content: "outgoinguser lonely",
                                           message: "outgoinguser takes a user and a password")])) {
            try ConfigFile.apply("<target iqn.2026-01.test:a>\n  outgoinguser lonely\n</target>\n", to: h3.registry)
        }
    }
}
