// Migration from tgt: the LUN parameters that set what initiators see, and `ringtgtd --tgt-defaults`,
// read back through libiscsi's iscsi-inq and iscsi-readcapacity16 and, when Debian's tgtd is installed,
// compared with a real tgtd LUN field by field.

import Foundation
import Testing

extension EndToEnd {
    @Suite("Migration knobs")
    struct MigrationKnobs {
        /// What an initiator sees of one LUN, in the fields the migration knobs set.
        struct Seen: Equatable, CustomStringConvertible {
            var vendor = "", product = "", revision = "", removable = ""
            var lbppbe = "", lowestAlignedLBA = "", lbpme = "", lbprz = ""
            var optimalGranularity = "", maxUnmapLBACount = "", lbpu = "", lbpws = "", provisioningType = ""

            var description: String {
                "vendor=\(vendor) product=\(product) rev=\(revision) RMB=\(removable) LBPPBE=\(lbppbe) "
                    + "LALBA=\(lowestAlignedLBA) LBPME=\(lbpme) LBPRZ=\(lbprz) OTLG=\(optimalGranularity) "
                    + "maxUnmap=\(maxUnmapLBACount) lbpu=\(lbpu) lbpws=\(lbpws) ptype=\(provisioningType)"
            }
        }

        /// Runs the libiscsi tools against `url` and collects the fields.
        static func look(at url: String, tool: (String, [String]) throws -> ToolResult) throws -> Seen {
            func output(_ name: String, _ args: [String]) throws -> String {
                let r = try tool(name, args + [url])
                try #require(r.succeeded, "\(name) \(args): \(r)")
                return r.stdout
            }
            var s = Seen()
            let inq = keyValueFields(try output("iscsi-inq", []))
            s.vendor = inq["Vendor"] ?? "?"; s.product = inq["Product"] ?? "?"
            s.revision = inq["Revision"] ?? "?"; s.removable = inq["Removable"] ?? "?"
            let rcText = try output("iscsi-readcapacity16", [])
            let rc = keyValueFields(rcText)
            // "P_I_EXPONENT:0 LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT:3" is one line of two fields.
            let lbppbeKey = "LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT:"
            s.lbppbe = rcText.components(separatedBy: lbppbeKey).dropFirst().first
                .map { String($0.prefix { $0.isNumber }) } ?? "?"
            s.lowestAlignedLBA = rc["LOWEST ALIGNED LOGICAL BLOCK ADDRESS"] ?? "?"
            s.lbpme = rc["LBPME"] ?? "?"; s.lbprz = rc["LBPRZ"] ?? "?"
            // iscsi-inq reads -c with atoi(): 176 = 0xB0, 178 = 0xB2.
            let b0 = keyValueFields(try output("iscsi-inq", ["-e", "1", "-c", "176"]))
            s.optimalGranularity = b0["optimal transfer length granularity"] ?? "?"
            s.maxUnmapLBACount = b0["maximum unmap lba count"] ?? "?"
            let b2 = keyValueFields(try output("iscsi-inq", ["-e", "1", "-c", "178"]))
            s.lbpu = b2["lbpu"] ?? "?"; s.lbpws = b2["lbpws"] ?? "?"; s.provisioningType = b2["provisioning type"] ?? "?"
            return s
        }

        /// `--op update --mode logicalunit --params` on a running daemon changes INQUIRY, READ CAPACITY(16)
        /// and the VPD pages an initiator reads on its next login.
        @Test func paramsUpdateChangesWhatInitiatorsSee() throws {
            try withTarget(luns: [.file(bytes: 16 * mebibyte)]) { t in
                let params = "vendor_id=IET,product_id=VTL-DISK,lbppbe=3,la_lba=5,optimal_xfer_gran=16,"
                    + "removable=1,thin_provisioning=0"
                try t.admin.must(["--lld", "iscsi", "--op", "update", "--mode", "logicalunit", "--tid", "1",
                                  "--lun", "1", "--params", params])
                let s = try Self.look(at: t.url(lun: 1)) { try t.tool($0, $1) }
                #expect(s.vendor == "IET" && s.product == "VTL-DISK" && s.removable == "1", "\(s)")
                #expect(s.lbppbe == "3" && s.lowestAlignedLBA == "5" && s.optimalGranularity == "16", "\(s)")
                #expect(s.lbpme == "0" && s.lbpu == "0" && s.maxUnmapLBACount == "0", "\(s)")

                let show = try t.admin.must(["--lld", "iscsi", "--op", "show", "--mode", "target"]).stdout
                #expect(show.contains("Removable media: Yes"), "\(show)")

                let bad = try t.admin.run(["--lld", "iscsi", "--op", "update", "--mode", "logicalunit", "--tid", "1",
                                           "--lun", "1", "--params", "lbppbe=16"])
                #expect(!bad.succeeded && bad.stderr.contains("invalid request"), "\(bad)")
            }
        }

        /// `ringtgtd --tgt-defaults`: a new file LUN shows tgt's vendor, LBPPBE and provisioning. With
        /// tgtd installed, a tgtd LUN on the same kind of file must show the very same fields.
        @Test func tgtDefaultsLookLikeTgt() throws {
            let ours = try withTarget(daemonOptions: ["--tgt-defaults"], luns: [.file(bytes: 16 * mebibyte)]) { t in
                try Self.look(at: t.url(lun: 1)) { try t.tool($0, $1) }
            }
            #expect(ours.vendor == "IET" && ours.product == "VIRTUAL-DISK" && ours.removable == "0", "\(ours)")
            #expect(ours.lbpme == "0" && ours.lbpu == "0" && ours.provisioningType == "0", "\(ours)")
            #expect(ours.optimalGranularity == "0", "\(ours)")

            guard (try? Tools.require("tgtd")) != nil, (try? Tools.require("tgtadm")) != nil else {
                print("tgtd is not installed: --tgt-defaults checked against tgt's documented values only")
                return
            }
            let scratch = try Scratch()
            defer { scratch.remove() }
            let daemon = try TargetDaemon(peer: .tgt, cores: 1, portals: [.ipv4Loopback], scratch: scratch)
            defer { daemon.stop() }
            let iqn = "\(RunningTarget.iqnPrefix):tgt"
            try daemon.admin.newTarget(tid: 1, name: iqn)
            try daemon.admin.newFileLUN(tid: 1, lun: 1, path: try scratch.makeSparseFile("lun1.img", bytes: 16 * mebibyte))
            try daemon.admin.bind(tid: 1)
            let endpoint = try #require(daemon.endpoints.first)
            let theirs = try Self.look(at: "\(endpoint.portalURL)/\(iqn)/1") { name, args in
                try runTool(try Tools.require(name), args, logDir: scratch.url, timeoutSeconds: 60)
            }
            #expect(ours == theirs, "ringtgtd --tgt-defaults: \(ours)\ntgtd: \(theirs)")
        }
    }
}
