import Testing
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor

private let iqn = "iqn.2026-01.test:t1"
private let newTarget = "--lld iscsi --op new --mode target --tid 1 --targetname \(iqn)"
private let newLUN1 = "--lld iscsi --op new --mode logicalunit --tid 1 --lun 1 --bstype rdwr --backing-store /tmp/disk.img"

@Suite struct ControlRegistryTests {
    @Test func duplicateTidIsRefusedWithTgtadmsWordsAndEINVAL() {
        let h = ControlHarness()
        #expect(h.run(newTarget).exitCode == 0)
        let r = h.run("--lld iscsi --op new --mode target --tid 1 --targetname iqn.2026-01.test:other")
        #expect(r.exitCode == 22)
        #expect(r.stderr == "ringtgtadm: this target already exists\n")
        #expect(h.fabric.published.count == 1)
    }

    @Test func duplicateTargetNameIsRefusedIgnoringCase() {
        let h = ControlHarness()
        h.run(newTarget)
        let r = h.run("--lld iscsi --op new --mode target --tid 2 --targetname IQN.2026-01.TEST:T1")
        #expect(r.stderr == "ringtgtadm: this target already exists\n")
    }

    @Test func targetNameWithForbiddenCharactersIsInvalid() {
        let h = ControlHarness()
        let r = h.run(["--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", "3", "--targetname", "bad name"])
        #expect(r.exitCode == 22)
        #expect(r.stderr.hasPrefix("ringtgtadm: invalid request"))
        #expect(h.fabric.published.isEmpty)
    }

    @Test func logicalUnitOnMissingTargetCannotFindTheTarget() {
        let h = ControlHarness()
        let r = h.run(newLUN1)
        #expect(r.exitCode == 22)
        #expect(r.stderr == "ringtgtadm: can't find the target\n")
        #expect(h.opener.opened.isEmpty)
    }

    @Test func duplicateLUNIsRefusedWithoutOpeningTheStoreAgain() {
        let h = ControlHarness()
        h.run(newTarget)
        #expect(h.run(newLUN1).exitCode == 0)
        let r = h.run(newLUN1)
        #expect(r.stderr == "ringtgtadm: this logical unit number already exists\n")
        #expect(h.opener.opened.count == 1)
    }

    @Test func openerFailureIsReportedAfterTgtsWords() {
        let h = ControlHarness()
        h.opener.missingPaths = ["/nonexistent.img"]
        h.run(newTarget)
        let r = h.run("--lld iscsi --op new --mode logicalunit --tid 1 --lun 2 --bstype rdwr --backing-store /nonexistent.img")
        #expect(r.exitCode == 22)
        #expect(r.stderr == "ringtgtadm: invalid request: open /nonexistent.img: No such file or directory\n")
        #expect(h.registry.currentSnapshot.target(tid: 1)?.luns.isEmpty == true)
    }

    @Test func specCarriesBstypePathOptionsFlagsAndBlockSize() throws {
        let h = ControlHarness()
        h.opener.sizes["/dev/null"] = 1 << 30
        h.run(newTarget)
        let r = h.run("--lld iscsi --op new --mode logicalunit --tid 1 --lun 3 --bstype null --backing-store /dev/null --bsopts size=1G;x=y --bsoflags sync:direct --blocksize 4096")
        #expect(r.exitCode == 0, "\(r.stderr)")
        let spec = try #require(h.opener.opened.first)
        #expect(spec == BackingSpec(tid: 1, lun: 3, bstype: "null", path: "/dev/null", rawOptions: "size=1G;x=y",
                                    options: ["size": "1G", "x": "y"], openFlags: [.sync, .direct], blockSize: 4096))
        let unit = try #require(h.registry.currentSnapshot.target(tid: 1)?.lun(3))
        #expect(unit.blockSize == 4096)
        #expect(unit.blockCount == (1 << 30) / 4096)
        #expect(unit.bstype == "null" && unit.path == "/dev/null")
    }

    @Test func missingBstypeMeansRdwr() throws {
        let h = ControlHarness()
        h.run(newTarget)
        h.run("--lld iscsi --op new --mode logicalunit --tid 1 --lun 1 --backing-store /tmp/disk.img")
        #expect(try #require(h.opener.opened.first).bstype == "rdwr")
    }

    @Test func badBlockSizeBadOflagsAndUnknownBstypeAreInvalidRequests() {
        let h = ControlHarness()
        h.run(newTarget)
        for extra in ["--blocksize 1000", "--bsoflags fast", "--bstype aio"] {
            let r = h.run("--lld iscsi --op new --mode logicalunit --tid 1 --lun 1 --backing-store /tmp/disk.img \(extra)")
            #expect(r.exitCode == 22)
            #expect(r.stderr.hasPrefix("ringtgtadm: invalid request"), "\(extra): \(r.stderr)")
        }
        #expect(h.registry.currentSnapshot.target(tid: 1)?.luns.isEmpty == true)
    }

    @Test func deletingMissingLUNCannotFindTheLogicalUnit() {
        let h = ControlHarness()
        h.run(newTarget)
        let r = h.run("--lld iscsi --op delete --mode logicalunit --tid 1 --lun 9")
        #expect(r.stderr == "ringtgtadm: can't find the logical unit\n")
    }

    @Test func deletingLUNReleasesItsBackingOnlyAfterPublishing() throws {
        let h = ControlHarness()
        h.run(newTarget)
        h.run(newLUN1)
        let before = h.fabric.published.count
        #expect(h.run("--lld iscsi --op delete --mode logicalunit --tid 1 --lun 1").exitCode == 0)
        #expect(h.opener.publishedCountAtRelease == [before + 1])
        #expect(try #require(h.fabric.latest?.target(tid: 1)).luns.isEmpty)
    }

    @Test func lunGenerationRisesWhenTheLUNListChangesAndOnlyThen() throws {
        let h = ControlHarness()
        h.run(newTarget)
        let g0 = try #require(h.fabric.latest?.target(tid: 1)).lunGeneration
        h.run(newLUN1)
        let g1 = try #require(h.fabric.latest?.target(tid: 1)).lunGeneration
        h.run("--lld iscsi --op bind --mode target --tid 1 -I ALL")
        h.run("--lld iscsi --op update --mode target --tid 1 --name MaxBurstLength --value 1048576")
        let g2 = try #require(h.fabric.latest?.target(tid: 1)).lunGeneration
        h.run("--lld iscsi --op delete --mode logicalunit --tid 1 --lun 1")
        let g3 = try #require(h.fabric.latest?.target(tid: 1)).lunGeneration
        #expect(g1 > g0)
        #expect(g2 == g1)
        #expect(g3 > g2)
    }

    @Test func logicalUnitsKeepTheirIdentityAcrossSnapshots() throws {
        let h = ControlHarness()
        h.run(newTarget)
        h.run(newLUN1)
        let first = try #require(h.fabric.latest?.target(tid: 1)?.lun(1))
        h.run("--lld iscsi --op new --mode logicalunit --tid 1 --lun 2 --backing-store /tmp/disk2.img")
        h.run("--lld iscsi --op bind --mode target --tid 1 -I 10.0.0.0/24")
        let latest = try #require(h.fabric.latest?.target(tid: 1))
        #expect(latest.lun(1) === first)
        #expect(latest.luns.map(\.number) == [1, 2])
        #expect(h.fabric.published.map(\.version) == Array(1...UInt64(h.fabric.published.count)))
    }

    @Test func bindAndUnbindMaintainTheACLInTgtsOrder() throws {
        let h = ControlHarness()
        h.run(newTarget)
        #expect(h.run("--lld iscsi --op bind --mode target --tid 1 --initiator-name iqn.2026-01.test:init").exitCode == 0)
        #expect(h.run("--lld iscsi --op bind --mode target --tid 1 -I ALL").exitCode == 0)
        #expect(h.run("--lld iscsi --op bind --mode target --tid 1 -I 10.0.0.0/24").exitCode == 0)
        #expect(h.run("--lld iscsi --op bind --mode target --tid 1 -I [fe80::]/64").exitCode == 0)
        #expect(h.run("--lld iscsi --op bind --mode target --tid 1 -I 2001:db8::1").exitCode == 0)
        var acl = try #require(h.fabric.latest?.target(tid: 1)).acl
        #expect(acl == [.all, .cidr("10.0.0.0", prefixLength: 24), .cidr("fe80::", prefixLength: 64),
                        .address("2001:db8::1"), .initiatorName("iqn.2026-01.test:init")])

        let dup = h.run("--lld iscsi --op bind --mode target --tid 1 -I ALL")
        #expect(dup.stderr == "ringtgtadm: this access control rule already exists\n")
        let missing = h.run("--lld iscsi --op unbind --mode target --tid 1 -I 10.9.9.9")
        #expect(missing.stderr == "ringtgtadm: this access control rule does not exist\n")
        #expect(h.run("--lld iscsi --op unbind --mode target --tid 1 -I ALL").exitCode == 0)
        #expect(h.run("--lld iscsi --op unbind --mode target --tid 1 --initiator-name IQN.2026-01.TEST:INIT").exitCode == 0)
        acl = try #require(h.fabric.latest?.target(tid: 1)).acl
        #expect(acl == [.cidr("10.0.0.0", prefixLength: 24), .cidr("fe80::", prefixLength: 64), .address("2001:db8::1")])
    }

    @Test func bindOnMissingTargetCannotFindTheTarget() {
        let h = ControlHarness()
        #expect(h.run("--lld iscsi --op bind --mode target --tid 9 -I ALL").stderr == "ringtgtadm: can't find the target\n")
    }

    @Test func malformedAddressesAreInvalidRequests() {
        let h = ControlHarness()
        h.run(newTarget)
        for bad in ["10.0.0.1/24", "10.0.0.0/33", "300.1.1.1", "host.example", "[10.0.0.1]", "fe80::/129", "10.0.0.0/"] {
            let r = h.run("--lld iscsi --op bind --mode target --tid 1 -I \(bad)")
            #expect(r.exitCode == 22, "\(bad)")
            #expect(r.stderr.hasPrefix("ringtgtadm: invalid request"), "\(bad): \(r.stderr)")
        }
    }

    @Test func targetKeysAreValidatedAndStoredNormalised() throws {
        let h = ControlHarness()
        h.run(newTarget)
        let ok = [("HeaderDigest", "CRC32C,None"), ("DataDigest", "CRC32C"), ("MaxRecvDataSegmentLength", "65536"),
                  ("maxburstlength", "1048576"), ("ImmediateData", "No"), ("InitialR2T", "No"),
                  ("DefaultTime2Wait", "0"), ("MaxOutstandingR2T", "0x10")]
        for (k, v) in ok {
            let r = h.run("--lld iscsi --op update --mode target --tid 1 --name \(k) --value \(v)")
            #expect(r.exitCode == 0, "\(k)=\(v): \(r.stderr)")
        }
        let params = try #require(h.fabric.latest?.target(tid: 1)).params
        #expect(params == ["HeaderDigest": "CRC32C,None", "DataDigest": "CRC32C,None", "MaxRecvDataSegmentLength": "65536",
                           "MaxBurstLength": "1048576", "ImmediateData": "No", "InitialR2T": "No",
                           "DefaultTime2Wait": "0", "MaxOutstandingR2T": "16"])

        let bad = [("HeaderDigest", "Foo"), ("MaxRecvDataSegmentLength", "100"), ("MaxRecvDataSegmentLength", "16777216"),
                   ("ImmediateData", "no"), ("MaxBurstLength", "abc"), ("Bogus", "1"), ("ErrorRecoveryLevel", "2"),
                   ("MaxConnections", "2"), ("IFMarker", "Yes"), ("DefaultTime2Retain", "3601")]
        for (k, v) in bad {
            let r = h.run("--lld iscsi --op update --mode target --tid 1 --name \(k) --value \(v)")
            #expect(r.exitCode == 22, "\(k)=\(v)")
            #expect(r.stderr == "ringtgtadm: invalid request\n", "\(k)=\(v)")
        }
        #expect(try #require(h.fabric.latest?.target(tid: 1)).params == params)
    }

    @Test func targetAliasSetsTheRuntimeAlias() throws {
        let h = ControlHarness()
        h.run(newTarget)
        #expect(h.run("--lld iscsi --op update --mode target --tid 1 --name TargetAlias --value disk-one").exitCode == 0)
        #expect(try #require(h.fabric.latest?.target(tid: 1)).alias == "disk-one")
    }

    @Test func updateOnMissingTargetCannotFindTheTarget() {
        let h = ControlHarness()
        let r = h.run("--lld iscsi --op update --mode target --tid 9 --name MaxBurstLength --value 512")
        #expect(r.stderr == "ringtgtadm: can't find the target\n")
    }

    @Test func targetWithSessionsIsStillActiveUnlessForced() throws {
        let h = ControlHarness()
        h.run(newTarget)
        h.run(newLUN1)
        h.fabric.sessionList = [SessionInfo(tid: 1, sid: 4, initiatorName: "iqn.2026-01.test:init",
                                            initiatorPortName: "iqn.2026-01.test:init,i,0x000000000001", tsih: 4,
                                            connections: [.init(cid: 0, peerAddress: "127.0.0.1")])]
        let refused = h.run("--lld iscsi --op delete --mode target --tid 1")
        #expect(refused.stderr == "ringtgtadm: this target is still active\n")
        #expect(h.opener.releasedCount == 0)
        #expect(h.run("--lld iscsi --op delete --mode target --tid 1 --force").exitCode == 0)
        #expect(h.fabric.latest?.targets.isEmpty == true)
        #expect(h.opener.releasedCount == 1)
        #expect(h.run("--lld iscsi --op delete --mode target --tid 1").stderr == "ringtgtadm: can't find the target\n")
    }

    @Test func controllerLUN0IsReservedWhenEmulated() {
        let h = ControlHarness(controllerLUN0: true)
        h.run(newTarget)
        let add = h.run("--lld iscsi --op new --mode logicalunit --tid 1 --lun 0 --backing-store /tmp/disk.img")
        #expect(add.stderr == "ringtgtadm: this logical unit number already exists\n")
        let delete = h.run("--lld iscsi --op delete --mode logicalunit --tid 1 --lun 0")
        #expect(delete.stderr == "ringtgtadm: invalid request\n")
    }

    @Test func lun0IsAnOrdinaryLUNWithoutControllerEmulation() throws {
        let h = ControlHarness()
        h.run(newTarget)
        #expect(h.run("--lld iscsi --op new --mode logicalunit --tid 1 --lun 0 --backing-store /tmp/disk.img").exitCode == 0)
        #expect(try #require(h.fabric.latest?.target(tid: 1)).lun(0) != nil)
        #expect(h.run("--lld iscsi --op delete --mode logicalunit --tid 1 --lun 0").exitCode == 0)
    }

    @Test func defaultIdentityMatchesTgts() throws {
        let h = ControlHarness()
        h.run(newTarget)
        h.run(newLUN1)
        let unit = try #require(h.fabric.latest?.target(tid: 1)?.lun(1))
        #expect(unit.serial == "beaf11")
        // scsi_id "IET     00010001" read as hex digits (I, T and spaces read as 0), NAA 6 in the top nibble.
        #expect(unit.naa == [0x60, 0, 0, 0, 0, 0, 0, 0, 0x0E, 0, 0, 0, 0, 0x01, 0, 0x01])
    }

    @Test func paramsOnNewOpenReadOnlyAndSetIdentity() throws {
        let h = ControlHarness()
        h.run(newTarget)
        let r = h.run("--lld iscsi --op new --mode logicalunit --tid 1 --lun 1 --backing-store /tmp/disk.img --params readonly=1,vendor_id=ACMECORPORATION,scsi_sn=SN123")
        #expect(r.exitCode == 0, "\(r.stderr)")
        #expect(try #require(h.opener.opened.first).readOnly)
        let unit = try #require(h.fabric.latest?.target(tid: 1)?.lun(1))
        #expect(unit.capabilities.readOnly)
        #expect(unit.vendor == "ACMECORP")      // INQUIRY's 8 bytes, truncated as tgt does
        #expect(unit.serial == "SN123")
    }

    @Test func updatingParamsRebuildsTheUnitOverTheSameStore() throws {
        let h = ControlHarness()
        h.run(newTarget)
        h.run(newLUN1)
        let before = try #require(h.fabric.latest?.target(tid: 1)?.lun(1))
        let r = h.run("--lld iscsi --op update --mode logicalunit --tid 1 --lun 1 --params product_id=Widget,scsi_id=abc,mode_page=8:0:18:0x10:0:0xff:0xff:0:0:0xff:0xff:0xff:0xff:0x80:0x14:0:0:0:0:0:0")
        #expect(r.exitCode == 0, "\(r.stderr)")
        let after = try #require(h.fabric.latest?.target(tid: 1)?.lun(1))
        #expect(after !== before)
        #expect(after.product == "Widget")
        #expect(after.naa == [0x60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0A, 0xBC])
        #expect(after.capabilities.hasVolatileCache == false)
        #expect(after.blockCount == before.blockCount)
        #expect(h.opener.opened.count == 1)
        #expect(h.opener.releasedCount == 0)
        let g = try #require(h.fabric.latest?.target(tid: 1)).lunGeneration
        #expect(h.run("--lld iscsi --op update --mode logicalunit --tid 1 --lun 1 --params bogus=1").stderr
                .hasPrefix("ringtgtadm: invalid request"))
        #expect(try #require(h.fabric.latest?.target(tid: 1)).lunGeneration == g)
    }

    @Test func thinProvisioningCanBeTurnedOffButNotForcedOn() throws {
        let h = ControlHarness()
        h.opener.capabilities = StoreCapabilities(canDiscard: true, discardZeroes: true, canReportMapping: true)
        h.run(newTarget)
        h.run("--lld iscsi --op new --mode logicalunit --tid 1 --lun 1 --backing-store /tmp/a --params thin_provisioning=0")
        let unit = try #require(h.fabric.latest?.target(tid: 1)?.lun(1))
        #expect(!unit.capabilities.canDiscard && !unit.capabilities.canReportMapping)

        h.opener.capabilities = StoreCapabilities(canDiscard: false)
        let r = h.run("--lld iscsi --op new --mode logicalunit --tid 1 --lun 2 --backing-store /tmp/b --params thin_provisioning=1")
        #expect(r.exitCode == 22)
        #expect(h.opener.releasedCount == 1)   // opened, then refused: the store is given back
    }

    @Test func unknownDriverIsRefused() {
        let h = ControlHarness()
        #expect(h.run("--lld iser --op show --mode target").stderr == "ringtgtadm: can't find the driver\n")
    }

    @Test func systemStateAndDebugCanBeUpdated() {
        let h = ControlHarness()
        #expect(h.registry.isSystemReady)
        #expect(h.run("--lld iscsi --op update --mode sys --name State --value offline").exitCode == 0)
        #expect(!h.registry.isSystemReady)
        #expect(h.run("--lld iscsi --op show --mode sys").stdout.hasPrefix("System:\n    State: offline\n    debug: off\n"))
        #expect(h.run("--lld iscsi --op update --mode sys --name State --value sleepy").exitCode == 22)
        #expect(h.run("--lld iscsi --op update --mode sys --name debug --value on").exitCode == 0)
        #expect(h.run("--lld iscsi --op show --mode sys").stdout.contains("    debug: on\n"))
    }

    @Test func targetStateCanBeSetOffline() {
        let h = ControlHarness()
        h.run(newTarget)
        #expect(h.run("--lld iscsi --op update --mode target --tid 1 --name state --value offline").exitCode == 0)
        #expect(h.registry.targetState(tid: 1) == .offline)
        #expect(h.run("--lld iscsi --op show --mode target").stdout.contains("        State: offline\n"))
    }
}

/// CHAP accounts, with tgtadm's words and layout (checked against Debian's tgtd 1.0.85).
@Suite struct ControlAccountTests {
    private let account = "--lld iscsi --mode account"

    @Test func accountsAreListedNewestFirstAndBoundAsTgtDoes() throws {
        let h = ControlHarness()
        h.run(newTarget)
        #expect(h.run("\(account) --op show").stdout == "")
        #expect(h.run("\(account) --op new --user alice --password secret123456").exitCode == 0)
        #expect(h.run("\(account) --op new --user bob --password bobsecret0002").exitCode == 0)
        let dup = h.run("\(account) --op new --user alice --password alicesecret02")
        #expect(dup.exitCode == 22 && dup.stderr == "ringtgtadm: this account already exists\n")
        #expect(h.run("\(account) --op show").stdout == "Account list:\n    bob\n    alice\n")

        #expect(h.run("\(account) --op bind --tid 1 --user alice").exitCode == 0)
        #expect(h.run("\(account) --op bind --tid 1 --user bob --outgoing").exitCode == 0)
        let second = h.run("\(account) --op bind --tid 1 --user alice --outgoing")
        #expect(second.stderr == "ringtgtadm: this target already has an outgoing account\n")
        #expect(h.run("\(account) --op bind --tid 1 --user carol").stderr == "ringtgtadm: can't find the account\n")
        #expect(h.run("\(account) --op bind --tid 7 --user alice").stderr == "ringtgtadm: can't find the target\n")

        let chap = try #require(h.registry.currentSnapshot.target(tid: 1)?.chap)
        #expect(chap.incoming == [CHAPAccount(user: "alice", password: "secret123456")])
        #expect(chap.outgoing == CHAPAccount(user: "bob", password: "bobsecret0002"))
        let show = h.run("--lld iscsi --op show --mode target").stdout
        #expect(show.contains("    Account information:\n        alice\n        bob (outgoing)\n    ACL information:\n"))

        // Unbinding needs the right direction; deleting an account unbinds it everywhere.
        #expect(h.run("\(account) --op unbind --tid 1 --user bob").stderr == "ringtgtadm: can't find the account\n")
        #expect(h.run("\(account) --op delete --user alice").exitCode == 0)
        #expect(h.registry.currentSnapshot.target(tid: 1)?.chap.incoming == [])
        #expect(h.run("\(account) --op unbind --tid 1 --user bob --outgoing").exitCode == 0)
        #expect(h.registry.currentSnapshot.target(tid: 1)?.chap == CHAPCredentials())
        #expect(h.run("\(account) --op delete --user nobody").stderr == "ringtgtadm: can't find the account\n")
        #expect(h.run("\(account) --op show").stdout == "Account list:\n    bob\n")
    }

    /// tgtadm's GLOBAL_TID: an account bound without --tid is for discovery sessions, listed at the end of
    /// `--op show --mode system` as tgt lists it (its blank line too); errors in tgt's words (tgtd 1.0.85).
    @Test func accountsBoundWithoutATidAreForDiscovery() throws {
        let h = ControlHarness()
        h.run(newTarget)
        for op in ["new --user disc --password discsecret12", "new --user dout --password doutsecret12", "bind --user disc"] {
            #expect(h.run("\(account) --op \(op)").exitCode == 0, "\(op)")
        }
        let twice = h.run("\(account) --op bind --user disc")
        #expect(twice.exitCode == 22 && twice.stderr == "ringtgtadm: this account already exists\n")
        #expect(h.run("\(account) --op bind --user dout --outgoing").exitCode == 0)
        #expect(h.run("\(account) --op bind --user disc --outgoing").stderr
                == "ringtgtadm: this target already has an outgoing account\n")
        #expect(h.run("\(account) --op bind --user nosuch").stderr == "ringtgtadm: can't find the account\n")
        #expect(h.run("\(account) --op bind --tid 0 --user disc").stderr == "ringtgtadm: can't find the target\n")

        let snapshot = h.registry.currentSnapshot
        #expect(snapshot.discoveryCHAP == CHAPCredentials(incoming: [CHAPAccount(user: "disc", password: "discsecret12")],
                                                          outgoing: CHAPAccount(user: "dout", password: "doutsecret12")))
        #expect(snapshot.target(tid: 1)?.chap == CHAPCredentials(), "a target keeps its own accounts")
        let sys = h.run("--lld iscsi --op show --mode sys").stdout
        #expect(sys.hasSuffix("Device types:\n    disk\n    Account information:\n\n    disc\n    dout (outgoing)\n"), "\(sys)")
        #expect(!h.run("--lld iscsi --op show --mode target").stdout.contains("disc"))
        #expect(h.run("\(account) --op show").stdout == "Account list:\n    dout\n    disc\n")

        // Unbinding needs the right direction, as for a target; deleting an account unbinds it here too.
        #expect(h.run("\(account) --op unbind --user dout").stderr == "ringtgtadm: can't find the account\n")
        #expect(h.run("\(account) --op unbind --user disc").exitCode == 0)
        #expect(h.run("\(account) --op unbind --user disc").stderr == "ringtgtadm: can't find the account\n")
        #expect(h.run("--lld iscsi --op show --mode sys").stdout.hasSuffix("    disk\n    Account information:\n\n    dout (outgoing)\n"))
        #expect(h.run("\(account) --op delete --user dout").exitCode == 0)
        #expect(h.registry.currentSnapshot.discoveryCHAP == CHAPCredentials())
        #expect(h.run("--lld iscsi --op show --mode sys").stdout.hasSuffix("Device types:\n    disk\n"))

        // RFC 7143 12.1.3 as for a target: one secret may not authenticate both ends.
        #expect(h.run("\(account) --op new --user same --password discsecret12").exitCode == 0)
        #expect(h.run("\(account) --op bind --user disc").exitCode == 0)
        #expect(h.run("\(account) --op bind --user same --outgoing").exitCode == 22)
    }
}

@Suite struct ControlPollTests {
    @Test func pollWindowIsSetAtRunTimeAndPublished() {
        let h = ControlHarness()
        #expect(h.registry.currentSnapshot.pollNanos == nil)
        #expect(h.run("--lld iscsi --op update --mode sys --name poll_us --value 200").exitCode == 0)
        #expect(h.fabric.published.last?.pollNanos == 200_000)
        let bad = h.run("--lld iscsi --op update --mode sys --name poll_us --value -1")
        #expect(bad.exitCode == 22)
        #expect(h.run("--lld iscsi --op update --mode sys --name poll_us --value 2000000").exitCode == 22)
        #expect(h.run("--lld iscsi --op update --mode sys --name poll_us --value 0").exitCode == 0)
        #expect(h.fabric.published.last?.pollNanos == 0)
    }
}
