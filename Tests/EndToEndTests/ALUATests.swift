// ALUA end to end: one LU with two target ports (two targets, one file, one scsi_id), each in its own
// target port group; REPORT TARGET PORT GROUPS over iSCSI, and the unit attention a state change made with
// ringtgtadm raises on every session of the LU. (sg_rtpg needs a kernel SCSI device, which these tests do
// not have; the raw client sends the same CDB.)

import Foundation
import Testing

extension EndToEnd {
    @Suite("ALUA")
    struct ALUA {
        static let prefix = "\(RunningTarget.iqnPrefix):alua"
        static let scsiID = "ringtgt-alua-e2e"
        static let rtpg: [UInt8] = [0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 0x04, 0, 0, 0]

        /// (group, state, ports) of each descriptor of length-only RTPG data.
        static func groups(_ data: [UInt8]) -> [(id: UInt16, state: UInt8, ports: [UInt16])] {
            var out: [(UInt16, UInt8, [UInt16])] = []
            var p = 4
            while p + 8 <= data.count {
                let count = Int(data[p + 7])
                guard p + 8 + 4 * count <= data.count else { break }
                let ports = (0 ..< count).map { rawBE16(data, p + 10 + 4 * $0) }
                out.append((rawBE16(data, p + 2), data[p] & 0x0F, ports))
                p += 8 + 4 * count
            }
            return out
        }

        static func update(_ t: RunningTarget, tid: Int, _ name: String, _ value: String) throws {
            try t.admin.must(["--lld", "iscsi", "--op", "update", "--mode", "target", "--tid", "\(tid)",
                              "--name", name, "--value", value])
        }

        /// Whether `r` is CHECK CONDITION with this sense.
        static func sense(_ r: CommandResult, _ key: UInt8, _ asc: UInt8, _ ascq: UInt8) -> Bool {
            r.status == RawCodes.checkCondition && r.sense?.key == key && r.sense?.asc == asc && r.sense?.ascq == ascq
        }

        @Test(.enabled(if: Peer.current == .ringtgt, "tgt has no ALUA"))
        func reportedStatesAndTheUnitAttentionOfAStateChangeOnEverySession() throws {
            try withTarget(luns: [.file(bytes: 16 * mebibyte)]) { t in
                let file = try #require(t.lunFiles[1])
                // The second port: target 2 serves the same file as the same LU (one scsi_id), in group 2.
                try t.admin.must(["--lld", "iscsi", "--op", "update", "--mode", "logicalunit", "--tid", "1", "--lun", "1",
                                  "--params", "scsi_id=\(Self.scsiID),scsi_sn=ALUA1"])
                let second = "\(Self.prefix)-b"
                try t.admin.newTarget(tid: 2, name: second)
                try t.admin.must(["--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "2", "--lun", "1",
                                  "--bstype", "rdwr", "--backing-store", file.path,
                                  "--params", "scsi_id=\(Self.scsiID),scsi_sn=ALUA1"])
                try t.admin.bind(tid: 2)
                try Self.update(t, tid: 2, "alua_group", "2")
                try Self.update(t, tid: 2, "relative_target_port_id", "2")
                try Self.update(t, tid: 2, "alua_state", "standby")

                let a1 = try RawSession(t.endpoint, target: t.iqn,
                                        options: RawLoginOptions(initiatorName: "\(Self.prefix)-i1", isid: 1))
                let a2 = try RawSession(t.endpoint, target: t.iqn,
                                        options: RawLoginOptions(initiatorName: "\(Self.prefix)-i2", isid: 2))
                var options = RawLoginOptions(initiatorName: "\(Self.prefix)-i1", isid: 3)
                options.clearUnitAttentionLUNs = []
                let b1 = try RawSession(t.endpoint, target: second, options: options)

                // Standard INQUIRY: TPGS 11b.
                let inquiry = try a1.run([0x12, 0, 0, 0, 96, 0], read: true, edtl: 96)
                #expect(inquiry.status == RawCodes.good && inquiry.data.count > 5 && inquiry.data[5] & 0x30 == 0x30)
                // The standby path: its power-on unit attention first (unit attentions come before the ALUA
                // check), then NOT READY / TARGET PORT IN STANDBY STATE.
                #expect(Self.sense(try b1.run(RawCDB.testUnitReady), 0x06, 0x29, 0x00))
                let standby = try b1.run(RawCDB.testUnitReady)
                #expect(Self.sense(standby, 0x02, 0x04, 0x0B), "\(standby)")
                // Both paths report both groups, with their configured states and ports.
                for s in [a1, b1] {
                    let r = try s.run(Self.rtpg, read: true, edtl: 1024)
                    try #require(r.status == RawCodes.good, "RTPG: \(r)")
                    let g = Self.groups(r.data)
                    #expect(g.map(\.id) == [1, 2] && g.map(\.ports) == [[1], [2]], "\(g)")
                    #expect(g.map(\.state) == [0x0, 0x2], "\(g)")
                }
                // Fail over with ringtgtadm: A standby, B active/optimized. Every session of the LU, on
                // both ports, is told once, then sees its port's new state.
                try Self.update(t, tid: 1, "alua_state", "standby")
                try Self.update(t, tid: 2, "alua_state", "active/optimized")
                for (name, s) in [("a1", a1), ("a2", a2), ("b1", b1)] {
                    let first = try s.run(RawCDB.testUnitReady)
                    #expect(Self.sense(first, 0x06, 0x2A, 0x06), "\(name): \(first)")
                }
                // READ CAPACITY runs through a standby port (Linux sizes a standby path's device); READ does not.
                #expect(try a1.run([0x25] + [UInt8](repeating: 0, count: 9), read: true, edtl: 8).status == RawCodes.good)
                #expect(Self.sense(try a1.run(RawCDB.read10(lba: 0, blocks: 1), read: true, edtl: 512), 0x02, 0x04, 0x0B))
                #expect(Self.sense(try a2.run(RawCDB.testUnitReady), 0x02, 0x04, 0x0B))
                try b1.writeReadVerify(lba: 0, data: patternBytes(4096, seed: 14))
                let after = Self.groups(try b1.run(Self.rtpg, read: true, edtl: 1024).data)
                #expect(after.map(\.state) == [0x2, 0x0], "\(after)")
            }
        }
    }
}
