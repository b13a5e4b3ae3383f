// ringtgtadm's parsing of tgtadm command lines; expected messages and exit codes are tgtadm's
// (usr/tgtadm.c), as Debian's tgtadm 1.0.85 prints them.

import Testing
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor

private func parse(_ line: String, environment: [String: String] = [:]) -> TgtadmInvocation {
    TgtadmCommandLine.parse(line.split(separator: " ").map(String.init), environment: environment)
}

private func request(_ line: String) -> AdminRequest? {
    if case .send(let r, _) = parse(line) { return r }
    return nil
}

@Suite struct ControlCommandLineTests {
    @Test func newTargetLongAndShortFormsAgree() {
        let expected = AdminRequest(mode: .target, op: .new, lld: "iscsi", tid: 1, targetName: "iqn.2026-01.test:t1")
        #expect(request("--lld iscsi --op new --mode target --tid 1 --targetname iqn.2026-01.test:t1") == expected)
        #expect(request("-L iscsi -o new -m target -t 1 -T iqn.2026-01.test:t1") == expected)
        #expect(request("-Liscsi -onew -mtarget -t1 -Tiqn.2026-01.test:t1") == expected)
        #expect(request("--lld=iscsi --op=new --mode=tgt --tid=1 --targetname=iqn.2026-01.test:t1") == expected)
        #expect(request("--lld iscsi --op new --mode target --tid 1 --target iqn.2026-01.test:t1") == expected)
    }

    @Test func newLogicalUnitCarriesEveryStoreOption() {
        let r = request("--lld iscsi --op new --mode logicalunit --tid 1 --lun 1 --bstype rdwr --backing-store /tmp/a.img --bsoflags direct --blocksize 4096 --device-type disk --bsopts size=1G --params readonly=1")
        #expect(r == AdminRequest(mode: .logicalUnit, op: .new, lld: "iscsi", tid: 1, lun: 1, backingStore: "/tmp/a.img",
                                  bstype: "rdwr", bsopts: "size=1G", bsoflags: "direct", blockSize: "4096",
                                  params: "readonly=1", deviceType: "disk"))
        let s = request("-L iscsi -o new -m lu -t 1 -l 2 -E sheepdog -b unix:/var/lib/sheepdog/sock:vol1 -y 512 -Y disk")
        #expect(s?.bstype == "sheepdog" && s?.backingStore == "unix:/var/lib/sheepdog/sock:vol1" && s?.lun == 2)
    }

    @Test func bindTakesAddressesNetworksIPv6AndNames() {
        for address in ["ALL", "10.0.0.1", "10.0.0.0/24", "fe80::1", "[fe80::]/64"] {
            #expect(request("--lld iscsi --op bind --mode target --tid 1 -I \(address)")?.initiatorAddress == address)
        }
        let byName = request("--lld iscsi --op unbind --mode target --tid 1 --initiator-name iqn.2026-01.test:init")
        #expect(byName == AdminRequest(mode: .target, op: .unbind, lld: "iscsi", tid: 1, initiatorName: "iqn.2026-01.test:init"))
        #expect(request("-L iscsi -o bind -m target -t 1 -Q iqn.x")?.initiatorName == "iqn.x")
    }

    @Test func showUpdateDeleteAndForce() {
        #expect(request("--lld iscsi --op show --mode target") == AdminRequest(mode: .target, op: .show, lld: "iscsi"))
        #expect(request("--op show --mode portal") == AdminRequest(mode: .portal, op: .show, lld: nil))
        #expect(request("--lld iscsi --op update --mode target --tid 1 --name HeaderDigest --value CRC32C,None")
                == AdminRequest(mode: .target, op: .update, lld: "iscsi", tid: 1, name: "HeaderDigest", value: "CRC32C,None"))
        #expect(request("--lld iscsi --op delete --mode target --tid 3 --force")?.force == true)
        #expect(request("-L iscsi -o delete -m target -t 3 -F")?.force == true)
        #expect(request("--lld iscsi --op delete --mode logicalunit --tid 1 --lun 2")
                == AdminRequest(mode: .logicalUnit, op: .delete, lld: "iscsi", tid: 1, lun: 2))
        #expect(request("--lld iscsi --op update --mode sys --name State --value offline")
                == AdminRequest(mode: .system, op: .update, lld: "iscsi", name: "State", value: "offline"))
        #expect(request("--lld iscsi --op update --mode target --tid 1 --name x --value -1")?.value == "-1")
    }

    @Test func controlPortAndSocketChooseThePath() {
        guard case .send(_, let p0) = parse("--op show --mode target") else { Issue.record("not sent"); return }
        #expect(p0 == "/run/ringtgt/socket.0")
        guard case .send(_, let p9) = parse("-C 9 --op show --mode target") else { Issue.record("not sent"); return }
        #expect(p9 == "/run/ringtgt/socket.9")
        guard case .send(_, let pe) = parse("--control-port 3 --op show --mode target",
                                            environment: ["RINGTGT_IPC_SOCKET": "/tmp/x/sock"]) else { Issue.record("not sent"); return }
        #expect(pe == "/tmp/x/sock.3")
        guard case .send(_, let ps) = parse("--control-socket /tmp/d/ctl --op show --mode target") else { Issue.record("not sent"); return }
        #expect(ps == "/tmp/d/ctl")
    }

    @Test func usageErrorsUseTgtadmsWordsAndStatuses() {
        let cases: [(String, String, Int32)] = [
            ("--lld iscsi --op show", "ringtgtadm: specify the mode\n", 22),
            ("--lld iscsi --mode target", "ringtgtadm: specify the operation type\n", 22),
            ("--lld iscsi --op frob --mode target --tid 1", "ringtgtadm: unknown operation: frob\n", 1),
            ("--lld iscsi --op show --mode frob", "ringtgtadm: unknown mode: frob\n", 1),
            ("--lld iscsi --op delete --mode target", "ringtgtadm: 'tid' option is necessary\n", 22),
            ("--lld iscsi --op new --mode target --tid 0 --targetname x", "ringtgtadm: 'tid' cannot be 0\n", 22),
            ("--lld iscsi --op new --mode target --tid 4", "ringtgtadm: creating new target requires a name, use --targetname\n", 22),
            ("--lld iscsi --op new --mode logicalunit --tid 1", "ringtgtadm: 'lun' option is necessary\n", 22),
            ("--lld iscsi --op new --mode logicalunit --tid 0 --lun 1", "ringtgtadm: 'tid' must not be 0\n", 22),
            ("--lld iscsi --op bind --mode target --tid 1",
             "ringtgtadm: bind operation requires initiator-address, initiator-nameor bus\n", 22),
            ("--lld iscsi --op bind --mode target --tid 1 -I ALL --lun 3",
             "ringtgtadm: target mode: option '-l' is not allowed/supported\n", 22),
            ("--lld iscsi --op update --mode target --tid 1 --name x",
             "ringtgtadm: update operation requires 'name' and 'value' options\n", 22),
            ("--lld iscsi --op update --mode logicalunit --tid 1 --lun 1 -b /x",
             "ringtgtadm: option '-b' not supported in logicalunit mode\n", 22),
            ("--lld iscsi --op show --mode portal --tid 1", "ringtgtadm: option '-t' not supported in portal mode\n", 22),
            ("--lld iscsi --op bind --mode system", "ringtgtadm: operation bind not supported in system mode\n", 22),
            ("--lld iscsi --op new --mode logicalunit --tid 1 --lun 5 --device-type foo", "ringtgtadm: unknown target type: foo\n", 22),
            ("--lld iscsi --mode target --op show extra",
             "ringtgtadm: unrecognized option 'extra'\nTry `ringtgtadm --help' for more information.\n", 22),
            ("--lld iscsi --mode target --op show --bogus",
             "ringtgtadm: unrecognized option '--bogus'\nTry `ringtgtadm --help' for more information.\n", 22),
            ("--lld iscsi --mode target --op show --tid abc",
             "-t argument value 'abc' invalid\nTry `ringtgtadm --help' for more information.\n", 22),
            ("--lld iscsi --mode target --op show --tid",
             "ringtgtadm: option '--tid' requires an argument\nTry `ringtgtadm --help' for more information.\n", 22),
            ("--lld iscsi --mode target --op show -Z",
             "ringtgtadm: invalid option -- 'Z'\nTry `ringtgtadm --help' for more information.\n", 22),
        ]
        for (line, message, code) in cases {
            #expect(parse(line) == .usageError(message, exitCode: code), "\(line)")
        }
    }

    @Test func helpAndVersionPrint() {
        guard case .print(let help) = parse("--help") else { Issue.record("no help"); return }
        #expect(help.contains("--mode target --op new --tid <id> --targetname <name>"))
        #expect(parse("-h") == .print(help))
        #expect(parse("-V") == .print("\(RingtgtVersion.string)\n"))
    }

    @Test func completionScriptOffersTgtadmOptionsAndValues() {
        for line in ["--generate-completion-script zsh", "--generate-completion-script=zsh"] {
            guard case .print(let script) = parse(line) else { Issue.record("no script for \(line)"); continue }
            for word in ["--backing-store", "logicalunit", "sheepdog", "--control-socket"] {
                #expect(script.contains(word), "\(line): no \(word)")
            }
        }
        let hint = "Try `ringtgtadm --help' for more information.\n"
        let refusal = "ringtgtadm: --generate-completion-script takes one of: zsh, bash, fish\n" + hint
        for line in ["--generate-completion-script", "--generate-completion-script tcsh",
                     "--generate-completion-script bash --op show"] {
            #expect(parse(line) == .usageError(refusal, exitCode: 22), "\(line)")
        }
    }
}
