// The admin tool's error paths: tgtadm's messages and a non-zero exit, and a daemon that carries on.

import Foundation
import Testing

extension EndToEnd {
    @Suite("Admin errors")
    struct AdminErrors {
        /// The daemon still serves target 1 and its LUN: discovery lists it and INQUIRY answers.
        static func expectStillServing(_ t: RunningTarget) throws {
            try t.requireAlive("after the rejected admin command")
            let ls = try t.tool("iscsi-ls", ["-s", t.endpoint.portalURL])
            try #require(ls.succeeded, "\(ls)")
            let listed = ISCSILsListing(ls.stdout).target(t.iqn)
            #expect(listed?.luns[1]?.type == "DIRECT_ACCESS", "\(ls.stdout)")
            let inq = try t.tool("iscsi-inq", [t.url(lun: 1)])
            #expect(inq.succeeded, "\(inq)")
        }

        @Test func lunOnMissingTargetIsRefused() throws {
            try withTarget(luns: [.file(bytes: 16 * mebibyte)]) { t in
                let f = try t.scratch.makeSparseFile("orphan.img", bytes: 16 * mebibyte)
                let r = try t.admin.run(["--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "9",
                                         "--lun", "1", "--bstype", "rdwr", "--backing-store", f.path])
                #expect(!r.succeeded && !r.timedOut && !r.killedBySignal, "\(r)")
                #expect(r.output.contains("can't find the target"), "tgtadm says \"can't find the target\": \(r)")
                try AdminErrors.expectStillServing(t)
            }
        }

        @Test func duplicateTidIsRefused() throws {
            try withTarget(luns: [.file(bytes: 16 * mebibyte)]) { t in
                let other = "\(RunningTarget.iqnPrefix):other"
                let r = try t.admin.run(["--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", "1",
                                         "--targetname", other])
                #expect(!r.succeeded && !r.timedOut && !r.killedBySignal, "\(r)")
                #expect(r.output.contains("this target already exists"),
                        "tgtadm says \"this target already exists\": \(r)")
                try AdminErrors.expectStillServing(t)
                let ls = try t.tool("iscsi-ls", ["-s", t.endpoint.portalURL])
                #expect(ISCSILsListing(ls.stdout).target(other) == nil, "the refused target appeared:\n\(ls.stdout)")
            }
        }

        @Test func duplicateLUNIsRefused() throws {
            try withTarget(luns: [.file(bytes: 16 * mebibyte)]) { t in
                let f = try t.scratch.makeSparseFile("again.img", bytes: 32 * mebibyte)
                let r = try t.admin.run(["--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "1",
                                         "--lun", "1", "--bstype", "rdwr", "--backing-store", f.path])
                #expect(!r.succeeded && !r.timedOut && !r.killedBySignal, "\(r)")
                #expect(r.output.contains("this logical unit number already exists"),
                        "tgtadm says \"this logical unit number already exists\": \(r)")
                try AdminErrors.expectStillServing(t)
                // The LUN kept its original 16 MiB backing file.
                let rc = try ReadCapacity16(try t.tool("iscsi-readcapacity16", [t.url(lun: 1)]).stdout)
                #expect(rc.totalBytes == 16 * mebibyte)
            }
        }

        /// `--op show --mode target` is shaped like tgtadm's, which scripts parse.
        @Test func showTargetLooksLikeTgtadm() throws {
            try withTarget(luns: [.file(bytes: 16 * mebibyte)]) { t in
                let r = try t.admin.must(["--lld", "iscsi", "--op", "show", "--mode", "target"])
                let lines = r.stdout.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
                #expect(lines.first == "Target 1: \(t.iqn)", "\(r.stdout)")
                #expect(lines.contains("LUN: 1"), "\(r.stdout)")
                #expect(lines.contains("Backing store path: \(t.lunFiles[1]!.path)"), "\(r.stdout)")
                #expect(lines.contains("Backing store type: rdwr"), "\(r.stdout)")
                #expect(lines.contains("ACL information:") && lines.contains("ALL"), "\(r.stdout)")
            }
        }
    }
}
