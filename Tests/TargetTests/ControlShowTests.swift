// Expected texts are tgt's layout (usr/target.c tgt_target_show_all, usr/iscsi/session.c, usr/iscsi/target.c),
// checked against Debian tgt 1.0.85's tgtadm output for the same configuration.

import Testing
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor

@Suite struct ControlShowTests {
    @Test func diskSizeUsesTgtsArithmetic() {
        #expect(ShowFormatter.diskSize(100 * 1024 * 1024) == "105 MB")   // tgt shows a 100 MiB file as 105 MB
        #expect(ShowFormatter.diskSize(1 << 40) == "1099512 MB")          // tgt's 1 TiB null store
        #expect(ShowFormatter.diskSize(0) == "0 MB")
    }

    @Test func showTargetMatchesTgtsLayout() {
        let h = ControlHarness()
        h.run("--lld iscsi --op new --mode target --tid 1 --targetname iqn.2026-01.test:t1")
        h.run("--lld iscsi --op new --mode logicalunit --tid 1 --lun 1 --bstype rdwr --backing-store /tmp/ctl_disk.img")
        h.opener.sizes["/dev/null"] = 1 << 40
        h.run("--lld iscsi --op new --mode logicalunit --tid 1 --lun 4 --bstype null --backing-store /dev/null --blocksize 4096")
        h.run("--lld iscsi --op bind --mode target --tid 1 -I ALL")
        h.run("--lld iscsi --op bind --mode target --tid 1 -I 10.0.0.0/24")
        h.run("--lld iscsi --op bind --mode target --tid 1 -I fe80::1")
        h.run("--lld iscsi --op bind --mode target --tid 1 --initiator-name iqn.2026-01.test:init")
        h.run("--lld iscsi --op new --mode target --tid 2 --targetname iqn.2026-01.test:t2")
        h.fabric.sessionList = [SessionInfo(tid: 1, sid: 4, initiatorName: "iqn.2026-01.test:init",
                                            initiatorPortName: "iqn.2026-01.test:init,i,0x23d000000001", tsih: 4,
                                            connections: [.init(cid: 0, peerAddress: "127.0.0.1")])]
        let r = h.run("--lld iscsi --op show --mode target")
        #expect(r.exitCode == 0)
        #expect(r.stderr == "")
        let expected = """
            Target 1: iqn.2026-01.test:t1
                System information:
                    Driver: iscsi
                    State: ready
                I_T nexus information:
                    I_T nexus: 4
                        Initiator: iqn.2026-01.test:init alias: none
                        Connection: 0
                            IP Address: 127.0.0.1
                LUN information:
                    LUN: 1
                        Type: disk
                        SCSI ID: IET     00010001
                        SCSI SN: beaf11
                        Size: 105 MB, Block size: 512
                        Online: Yes
                        Removable media: No
                        Prevent removal: No
                        Readonly: No
                        SWP: No
                        Thin-provisioning: No
                        Backing store type: rdwr
                        Backing store path: /tmp/ctl_disk.img
                        Backing store flags: \("")
                    LUN: 4
                        Type: disk
                        SCSI ID: IET     00010004
                        SCSI SN: beaf14
                        Size: 1099512 MB, Block size: 4096
                        Online: Yes
                        Removable media: No
                        Prevent removal: No
                        Readonly: No
                        SWP: No
                        Thin-provisioning: No
                        Backing store type: null
                        Backing store path: /dev/null
                        Backing store flags: \("")
                Account information:
                ACL information:
                    ALL
                    10.0.0.0/24
                    fe80::1
                    iqn.2026-01.test:init
            Target 2: iqn.2026-01.test:t2
                System information:
                    Driver: iscsi
                    State: ready
                I_T nexus information:
                LUN information:
                Account information:
                ACL information:

            """
        #expect(r.stdout == expected)
    }

    @Test func controllerLUN0IsShownAsTgtShowsItWhenEmulated() {
        let h = ControlHarness(controllerLUN0: true)
        h.run("--lld iscsi --op new --mode target --tid 1 --targetname iqn.2026-01.test:t1")
        h.run("--lld iscsi --op new --mode logicalunit --tid 1 --lun 3 --bstype rdwr --backing-store /tmp/ctl_disk.img --bsoflags direct")
        let expected = """
            Target 1: iqn.2026-01.test:t1
                System information:
                    Driver: iscsi
                    State: ready
                I_T nexus information:
                LUN information:
                    LUN: 0
                        Type: controller
                        SCSI ID: IET     00010000
                        SCSI SN: beaf10
                        Size: 0 MB, Block size: 1
                        Online: Yes
                        Removable media: No
                        Prevent removal: No
                        Readonly: No
                        SWP: No
                        Thin-provisioning: No
                        Backing store type: null
                        Backing store path: None
                        Backing store flags: \("")
                    LUN: 3
                        Type: disk
                        SCSI ID: IET     00010003
                        SCSI SN: beaf13
                        Size: 105 MB, Block size: 512
                        Online: Yes
                        Removable media: No
                        Prevent removal: No
                        Readonly: No
                        SWP: No
                        Thin-provisioning: No
                        Backing store type: rdwr
                        Backing store path: /tmp/ctl_disk.img
                        Backing store flags: direct
                Account information:
                ACL information:

            """
        #expect(h.run("--lld iscsi --op show --mode target").stdout == expected)
    }

    @Test func showWithNoTargetsPrintsNothing() {
        let h = ControlHarness()
        let r = h.run("--lld iscsi --op show --mode target")
        #expect(r == AdminResponse(exitCode: 0, stdout: "", stderr: ""))
    }

    @Test func showTargetParametersListsTgtsKeysInTgtsOrder() {
        let h = ControlHarness()
        h.run("--lld iscsi --op new --mode target --tid 1 --targetname iqn.2026-01.test:t1")
        h.run("--lld iscsi --op update --mode target --tid 1 --name MaxRecvDataSegmentLength --value 65536")
        h.run("--lld iscsi --op update --mode target --tid 1 --name HeaderDigest --value CRC32C,None")
        let expected = """
            nop_interval=0
            nop_count=0
            MaxRecvDataSegmentLength=65536
            HeaderDigest=CRC32C
            DataDigest=None
            InitialR2T=Yes
            MaxOutstandingR2T=1
            ImmediateData=Yes
            FirstBurstLength=65536
            MaxBurstLength=262144
            DataPDUInOrder=Yes
            DataSequenceInOrder=Yes
            ErrorRecoveryLevel=0
            IFMarker=No
            OFMarker=No
            DefaultTime2Wait=2
            DefaultTime2Retain=20
            OFMarkInt=Reject
            IFMarkInt=Reject
            MaxConnections=1
            RDMAExtensions=Yes
            TargetRecvDataSegmentLength=262144
            InitiatorRecvDataSegmentLength=262144
            MaxOutstandingUnexpectedPDUs=0
            MaxXmitDataSegmentLength=8192
            MaxQueueCmd=128

            """
        #expect(h.run("--lld iscsi --op show --mode target --tid 1").stdout == expected)
        #expect(h.run("--lld iscsi --op show --mode target --tid 7").stderr == "ringtgtadm: can't find the target\n")
    }

    @Test func nopSettingsAppearInShowLikeTgts() {
        let h = ControlHarness()
        h.run("--lld iscsi --op new --mode target --tid 1 --targetname iqn.2026-01.test:t1")
        #expect(h.run("--lld iscsi --op update --mode target --tid 1 --name nop_interval --value 5").exitCode == 0)
        #expect(h.run("--lld iscsi --op update --mode target --tid 1 --name nop_count --value 3").exitCode == 0)
        let all = h.run("--lld iscsi --op show --mode target").stdout
        #expect(all.contains("        State: ready\n        Nop interval: 5\n        Nop count: 3\n    I_T nexus information:\n"))
        #expect(h.run("--lld iscsi --op show --mode target --tid 1").stdout.hasPrefix("nop_interval=5\nnop_count=3\n"))
    }

    @Test func portalsAreListedWithIPv6InBrackets() {
        let h = ControlHarness()
        h.fabric.portalList = [PortalInfo(host: "127.0.0.1", port: 43211, portalGroupTag: 1),
                               PortalInfo(host: "::1", port: 3260, portalGroupTag: 1)]
        let r = h.run("--lld iscsi --op show --mode portal")
        #expect(r.stdout == "Portal: 127.0.0.1:43211,1\nPortal: [::1]:3260,1\n")
    }

    @Test func connectionsAreListedLikeTgts() {
        let h = ControlHarness()
        h.run("--lld iscsi --op new --mode target --tid 1 --targetname iqn.2026-01.test:t1")
        h.fabric.sessionList = [SessionInfo(tid: 1, sid: 4, initiatorName: "iqn.2026-01.test:init",
                                            initiatorPortName: "iqn.2026-01.test:init,i,0x000000000001", tsih: 4,
                                            connections: [.init(cid: 0, peerAddress: "127.0.0.1")])]
        let r = h.run("--lld iscsi --op show --mode conn --tid 1")
        #expect(r.stdout == "Session: 4\n    Connection: 0\n        Initiator: iqn.2026-01.test:init\n        IP Address: 127.0.0.1\n")
    }

    @Test func systemAndLLDShowFollowTgtsLayout() {
        let h = ControlHarness()
        h.run("--lld iscsi --op new --mode target --tid 1 --targetname iqn.2026-01.test:t1")
        let sys = h.run("--lld iscsi --op show --mode sys").stdout
        #expect(sys == """
            System:
                State: ready
                debug: off
            LLDs:
                iscsi: ready
            Backing stores:
                rdwr (bsoflags sync:direct)
                null
                sheepdog
            Device types:
                disk

            """)
        #expect(h.run("--lld iscsi --op show --mode lld").stdout == "LLDs:\n    iscsi: ready\n        Target 1: iqn.2026-01.test:t1\n")
    }

    @Test func byteCountsTakeBinarySuffixes() {
        #expect(ByteCount.parse("1G") == 1 << 30)
        #expect(ByteCount.parse("512") == 512)
        #expect(ByteCount.parse("4k") == 4096)
        #expect(ByteCount.parse("2MiB") == 2 << 20)
        #expect(ByteCount.parse("1TB") == 1 << 40)
        #expect(ByteCount.parse("") == nil)
        #expect(ByteCount.parse("G") == nil)
        #expect(ByteCount.parse("1.5G") == nil)
        #expect(ByteCount.parse("-1") == nil)
        #expect(ByteCount.parse("99999999999P") == nil)
    }
}
