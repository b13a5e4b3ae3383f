// `ringtgtd --lun0-controller`: libiscsi's iscsi-ls sees tgt's LUN map, a controller at LUN 0 and the disk at 1.

import Foundation
import Testing

extension EndToEnd {
    @Suite("LUN 0 controller")
    struct ControllerLUN {
        @Test(.enabled(if: Peer.current == .ringtgt, "a ringtgtd option"))
        func lun0IsAStorageArrayControllerAsOnTgt() throws {
            let scratch = try Scratch()
            defer { scratch.remove() }
            let daemon = try TargetDaemon(peer: .ringtgt, cores: 1, portals: [.ipv4Loopback],
                                          extraArgs: ["--lun0-controller"], scratch: scratch)
            defer { daemon.stop() }
            let iqn = "\(RunningTarget.iqnPrefix):t1"
            try daemon.admin.newTarget(tid: 1, name: iqn)
            let f = try scratch.makeSparseFile("lun1.img", bytes: 16 * mebibyte)
            try daemon.admin.newFileLUN(tid: 1, lun: 1, path: f)
            let lun0 = try daemon.admin.run(["--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "1",
                                             "--lun", "0", "--bstype", "rdwr", "--backing-store", f.path])
            #expect(!lun0.succeeded && lun0.output.contains("this logical unit number already exists"), "\(lun0)")
            try daemon.admin.bind(tid: 1)
            let t = RunningTarget(daemon: daemon, scratch: scratch, iqn: iqn, lunFiles: [1: f],
                                  lunBytes: [1: 16 * mebibyte])

            let ls = try t.tool("iscsi-ls", ["-s", t.endpoint.portalURL])
            try #require(ls.succeeded, "\(ls)")
            let luns = ISCSILsListing(ls.stdout).target(iqn)?.luns
            #expect(luns?[0]?.type == "STORAGE_ARRAY_CONTROLLER" && luns?[1]?.type == "DIRECT_ACCESS", "\(ls.stdout)")
            let inq = try t.tool("iscsi-inq", [t.url(lun: 0)])
            #expect(inq.succeeded && inq.stdout.contains("STORAGE_ARRAY_CONTROLLER"), "\(inq)")
            try t.requireAlive("after the scan")
        }
    }
}
