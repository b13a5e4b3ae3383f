// Hyper volumes (`dog vdi create -y`, a B-tree index) served as LUNs: a 5 TiB VDI with data beyond the 4 TiB a
// flat index reaches, written by dog and read through iSCSI, written through iSCSI and read by dog. Against
// the sheep test server and, when sheep and dog are installed, a real 3-node cluster.

import Foundation
import Testing

extension EndToEnd {
    @Suite("Sheepdog hyper volumes")
    struct SheepHyperVolumes {
        static let vdiBytes: Int64 = 5 << 40
        static let objectBytes: Int64 = 4 * mebibyte
        /// dog's write: from 512 bytes past a 4 KiB boundary just below an object boundary above 4 TiB, over
        /// two object boundaries (partial objects at both ends, a whole one between).
        static let dogOffset: Int64 = (4 << 40) + 3 * mebibyte - 4096 + 512
        static let dogBytes = Int(6 * mebibyte) + 12288
        /// The iSCSI write: near the end of the 5 TiB, across one object boundary.
        static let iscsiOffset: Int64 = vdiBytes - 9 * mebibyte + 4096
        static let iscsiBytes = Int(5 * mebibyte)

        /// A byte range of LUN 1 through qemu's raw driver (offset/size) over its iscsi driver, whose options
        /// come from the LUN's URL (`iscsi://HOST:PORT/IQN/LUN`; an --image-opts filename is not parsed as one).
        private static func rangeOpts(_ t: SheepTarget, offset: Int64, bytes: Int) -> String {
            let parts = t.url(lun: 1).dropFirst("iscsi://".count).split(separator: "/")
            return "driver=raw,offset=\(offset),size=\(bytes),file.driver=iscsi,file.transport=tcp,"
                + "file.portal=\(parts[0]),file.target=\(parts[1]),file.lun=\(parts[2])"
        }

        @Test(arguments: SheepKind.allCases)
        func fiveTiBHyperVolumeBeyondFourTiBBothWays(kind: SheepKind) throws {
            try withSheep(kind) { sheep in
                try sheep.dogMust(["vdi", "create", "-y", "big", "\(SheepHyperVolumes.vdiBytes)"])
                let seed: UInt64 = 0x4A9E_2001
                let dogData = try sheep.scratch.makeRandomFile("dog-data.img", bytes: SheepHyperVolumes.dogBytes, seed: seed)
                try sheep.writeVDI("big", offset: SheepHyperVolumes.dogOffset, from: dogData)

                try withSheepTarget(sheep) { t in
                    try t.addLUN(1, backingStore: sheep.backingStore("big"))

                    // dog's bytes, through iSCSI, with a 4 KiB margin of zeros on each side.
                    let margin = 4096
                    let out = t.scratch.path("lun-range.img")
                    let read = try t.target.tool("qemu-img", ["convert", "--image-opts",
                        SheepHyperVolumes.rangeOpts(t, offset: SheepHyperVolumes.dogOffset - Int64(margin),
                                                    bytes: SheepHyperVolumes.dogBytes + 2 * margin),
                        "-O", "raw", out.path], timeoutSeconds: SheepE2ELimits.toolTimeoutSeconds)
                    #expect(read.succeeded, "reading the range through iSCSI: \(read)")
                    let problems = try compareAt(out, offset: Int64(margin), expected: dogData,
                                                 totalBytes: Int64(SheepHyperVolumes.dogBytes + 2 * margin))
                    #expect(problems.isEmpty, "dog vdi write beyond 4 TiB, read through iSCSI (seed \(seed)): \(problems)")

                    // iSCSI's bytes, through dog.
                    let iscsiSeed: UInt64 = 0x4A9E_2002
                    let iscsiData = try t.scratch.makeRandomFile("iscsi-data.img", bytes: SheepHyperVolumes.iscsiBytes,
                                                                 seed: iscsiSeed)
                    let write = try t.target.tool("qemu-img", ["convert", "-n", "-f", "raw", iscsiData.path,
                        "--target-image-opts", SheepHyperVolumes.rangeOpts(t, offset: SheepHyperVolumes.iscsiOffset,
                                                                           bytes: SheepHyperVolumes.iscsiBytes)],
                        timeoutSeconds: SheepE2ELimits.toolTimeoutSeconds)
                    #expect(write.succeeded, "writing the range through iSCSI: \(write)")
                    try t.requireAlive("after writing a hyper volume")
                    let viaDog = t.scratch.path("dog-range.img")
                    try sheep.dogMust(["vdi", "read", "big", "\(SheepHyperVolumes.iscsiOffset)", "\(SheepHyperVolumes.iscsiBytes)"],
                                      stdout: viaDog)
                    let diff = try firstDifference(iscsiData, viaDog)
                    #expect(diff == nil, "written through iSCSI beyond 4 TiB, dog vdi read (seed \(iscsiSeed)): \(diff ?? "")")

                    // The objects dog's map lists are exactly the ones written, all owned by the VDI.
                    let map = try sheep.dogMust(["vdi", "object", "map", "big"]).stdout
                    let listed = map.split(whereSeparator: \.isNewline).dropFirst().compactMap { line -> Int64? in
                        line.split(separator: " ").first.flatMap { Int64($0) }
                    }
                    let o = SheepHyperVolumes.objectBytes
                    func objects(_ off: Int64, _ n: Int) -> [Int64] { Array((off / o)...((off + Int64(n) - 1) / o)) }
                    let expected = objects(SheepHyperVolumes.dogOffset, SheepHyperVolumes.dogBytes)
                        + objects(SheepHyperVolumes.iscsiOffset, SheepHyperVolumes.iscsiBytes)
                    #expect(listed == expected, "dog vdi object map:\n\(map)")

                    // GET LBA STATUS answers from the same owners: qemu-img map shows data exactly there.
                    let qmap = try t.target.tool("qemu-img", ["map", "--output=json", "-f", "raw", t.url(lun: 1)],
                                                 timeoutSeconds: SheepE2ELimits.toolTimeoutSeconds)
                    #expect(qmap.succeeded, "qemu-img map: \(qmap)")
                    let extents = (try? JSONSerialization.jsonObject(with: Data(qmap.stdout.utf8))) as? [[String: Any]] ?? []
                    var dataRanges: [(Int64, Int64)] = []
                    for e in extents where (e["data"] as? Bool) == true {
                        guard let start = (e["start"] as? NSNumber)?.int64Value, let len = (e["length"] as? NSNumber)?.int64Value
                        else { continue }
                        if let last = dataRanges.last, last.1 == start { dataRanges[dataRanges.count - 1].1 = start + len }
                        else { dataRanges.append((start, start + len)) }
                    }
                    let want = [expected.prefix(3), expected.suffix(3)].map { ($0.first! * o, ($0.last! + 1) * o) }
                    #expect(dataRanges.map(\.0) == want.map(\.0) && dataRanges.map(\.1) == want.map(\.1),
                            "qemu-img map data extents \(dataRanges), expected \(want)")
                }
            }
        }
    }
}
