// Discovery and identification: what an initiator sees before it moves any data.

import Foundation
import Testing

extension EndToEnd {
    @Suite("Discovery and identification")
    struct Discovery {
        /// iscsi-ls logs in for SendTargets, then to each target, and lists every LUN with its size.
        @Test func iscsiLsListsTargetAndLUNsWithSizes() throws {
            try withTarget(luns: [.file(bytes: 64 * mebibyte), .file(bytes: 3 * gibibyte)]) { t in
                let r = try t.tool("iscsi-ls", ["-s", t.endpoint.portalURL])
                try #require(r.succeeded, "\(r)")
                let listing = ISCSILsListing(r.stdout)
                let target = try #require(listing.target(t.iqn), "target \(t.iqn) not listed:\n\(r.stdout)")
                #expect(target.portal == "\(t.endpoint),\(t.endpoint.portalGroupTag)")
                for lun in [1, 2] {
                    let rc = try ReadCapacity16(try t.tool("iscsi-readcapacity16", [t.url(lun: lun)]).stdout)
                    let entry = try #require(target.luns[lun], "LUN \(lun) not listed:\n\(r.stdout)")
                    #expect(entry.type == "DIRECT_ACCESS")
                    #expect(entry.size == ISCSILsListing.expectedSize(blockCount: rc.blockCount,
                                                                     blockBytes: rc.blockBytes),
                            "LUN \(lun) of \(t.lunBytes[lun]!) bytes")
                }
                #expect(target.luns.keys.filter { $0 > 2 }.isEmpty, "unexpected LUNs:\n\(r.stdout)")
            }
        }

        /// A target bound to another initiator address is neither discovered nor reachable.
        @Test func targetBoundToOtherAddressIsHidden() throws {
            try withTarget(luns: [.file(bytes: 16 * mebibyte)]) { t in
                let hidden = "\(RunningTarget.iqnPrefix):hidden"
                let f = try t.scratch.makeSparseFile("hidden.img", bytes: 16 * mebibyte)
                try t.admin.newTarget(tid: 2, name: hidden)
                try t.admin.newFileLUN(tid: 2, lun: 1, path: f)
                try t.admin.bind(tid: 2, initiatorAddress: "10.9.9.9")

                let r = try t.tool("iscsi-ls", ["-s", t.endpoint.portalURL])
                try #require(r.succeeded, "\(r)")
                let listing = ISCSILsListing(r.stdout)
                #expect(listing.target(t.iqn) != nil, "open target missing:\n\(r.stdout)")
                #expect(listing.target(hidden) == nil, "target bound to 10.9.9.9 was listed:\n\(r.stdout)")

                let direct = try t.tool("iscsi-inq", [t.url(lun: 1, target: hidden)])
                #expect(!direct.succeeded && !direct.timedOut,
                        "login to a target bound to 10.9.9.9 from 127.0.0.1 must be refused: \(direct)")
            }
        }

        /// Standard INQUIRY names the vendor and product and says "disk".
        @Test func standardInquiry() throws {
            try withTarget(luns: [.file(bytes: 16 * mebibyte)]) { t in
                let r = try t.tool("iscsi-inq", [t.url(lun: 1)])
                try #require(r.succeeded, "\(r)")
                let f = keyValueFields(r.stdout)
                let traits = t.peer.traits
                #expect(f["Peripheral Device Type"] == "DIRECT_ACCESS")
                #expect(f["Peripheral Qualifier"] == "CONNECTED")
                #expect(f["Vendor"] == traits.vendor, "\(r.stdout)")
                #expect(f["Product"] == traits.product, "\(r.stdout)")
                #expect(f["Removable"] == "0")
                #expect(f["CmdQue"] == "1", "command queuing must be advertised:\n\(r.stdout)")
            }
        }

        /// VPD pages 0x00, 0x80, 0x83, 0xB0 and 0xB2 answer with sensible content. libiscsi 1.19's
        /// iscsi-inq reads -c with atoi(), so page codes are given in decimal (128 = 0x80).
        @Test func vitalProductDataPages() throws {
            try withTarget(luns: [.file(bytes: 16 * mebibyte)]) { t in
                let url = t.url(lun: 1)
                let traits = t.peer.traits
                func page(_ code: Int) throws -> String {
                    let r = try t.tool("iscsi-inq", ["-e", "1", "-c", "\(code)", url])
                    try #require(r.succeeded, "VPD page \(code): \(r)")
                    return r.stdout
                }

                let supported = supportedVPDPages(try page(0x00))
                for p in [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2] {
                    #expect(supported.contains(p), "VPD 0x\(String(p, radix: 16)) not in page 0x00: \(supported)")
                }

                let serial = try page(0x80)
                let sn = keyValueFields(serial)["Unit Serial Number"] ?? ""
                #expect(!sn.trimmingCharacters(in: CharacterSet(charactersIn: "[] ")).isEmpty,
                        "empty unit serial number:\n\(serial)")

                let ident = try page(0x83)
                #expect(ident.contains("Designator Type:(3) NAA"), "no NAA designator:\n\(ident)")
                #expect(ident.contains("Association:(0) LOGICAL_UNIT"), "no LU designator:\n\(ident)")
                if traits.advertisesTargetPortDesignator {
                    #expect(ident.contains("Association:(1) TARGET_PORT"),
                            "no target port designator:\n\(ident)")
                }

                let limits = keyValueFields(try page(0xB0))
                #expect(limits["wsnz"] != nil, "block limits page did not parse")
                if traits.thinProvisioned {
                    #expect((Int(limits["maximum unmap lba count"] ?? "") ?? 0) > 0,
                            "UNMAP advertised by 0xB2 needs a maximum unmap LBA count in 0xB0: \(limits)")
                    #expect((Int(limits["maximum compare and write length"] ?? "") ?? 0) > 0,
                            "COMPARE AND WRITE needs a maximum length in 0xB0: \(limits)")
                }

                let provisioning = keyValueFields(try page(0xB2))
                #expect(provisioning["lbpu"] != nil, "logical block provisioning page did not parse")
                if traits.thinProvisioned {
                    #expect(provisioning["lbpu"] == "1", "UNMAP not advertised: \(provisioning)")
                    #expect(provisioning["lbpws"] == "1", "WRITE SAME(16) UNMAP not advertised: \(provisioning)")
                }
            }
        }

        /// READ CAPACITY(16) reports the backing file's exact size.
        @Test func readCapacity16MatchesBackingFile() throws {
            let bytes = 96 * mebibyte
            try withTarget(luns: [.file(bytes: bytes)]) { t in
                let r = try t.tool("iscsi-readcapacity16", [t.url(lun: 1)])
                try #require(r.succeeded, "\(r)")
                let rc = try ReadCapacity16(r.stdout)
                #expect(rc.blockBytes == 512 || rc.blockBytes == 4096)
                #expect(rc.blockCount * rc.blockBytes == bytes, "\(r.stdout)")
                #expect(rc.totalBytes == bytes)
                #expect(rc.lbpme == (t.peer.traits.thinProvisioned ? 1 : 0), "LBPME:\n\(r.stdout)")
            }
        }

        /// The daemon listens on IPv6 too, and initiators reach the target through [::1].
        @Test func ipv6PortalServesDiscoveryAndIO() throws {
            let portals: [PortalSpec] = Peer.current.traits.honoursAllPortals
                ? [.ipv4Loopback, .ipv6Loopback] : [.ipv6Loopback]
            try withTarget(luns: [.file(bytes: 16 * mebibyte)], portals: portals) { t in
                let v6 = try #require(t.ipv6Endpoint, "no IPv6 portal in \(t.endpoints)")
                let ls = try t.tool("iscsi-ls", ["-s", v6.portalURL])
                try #require(ls.succeeded, "\(ls)")
                let listed = try #require(ISCSILsListing(ls.stdout).target(t.iqn), "\(ls.stdout)")
                #expect(listed.luns[1]?.type == "DIRECT_ACCESS")

                let io = try t.tool("qemu-io", ["-f", "raw", "-c", "write -P 0x5a 0 64k",
                                                "-c", "read -P 0x5a 0 64k", t.url(lun: 1, via: v6)])
                try #require(io.succeeded, "\(io)")
                #expect(!io.stdout.contains("Pattern verification failed"), "\(io.stdout)")
                #expect(!io.stdout.contains("failed"), "\(io.stdout)")
                if t.endpoints.count > 1 {
                    let v4 = try t.tool("iscsi-inq", [t.url(lun: 1)])
                    #expect(v4.succeeded, "IPv4 portal beside IPv6: \(v4)")
                }
            }
        }
    }
}
