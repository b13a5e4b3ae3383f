// Sheepdog LUNs moving real data: whole-image copies through iSCSI checked against `dog vdi read`, and data
// written with dog read back through iSCSI. Each test runs against the sheep test server and, when sheep
// and dog are installed, against a real 3-node cluster.

import Foundation
import Testing

extension EndToEnd {
    @Suite("Sheepdog data path")
    struct SheepDataPath {
        static let imageBytes = 64 * mebibyte
        static let preloadVDIBytes = 32 * mebibyte
        /// Starts 512 bytes past a 4 KiB boundary just below the 4 MiB object boundary and ends inside an
        /// object, so dog writes partial objects at both ends and whole objects between.
        static let preloadOffset: Int64 = 3 * mebibyte - 4096 + 512
        static let preloadBytes = Int(6 * mebibyte) + 12288

        /// qemu-img copies 64 MiB of random data onto a sheepdog LUN and back out: byte-exact. `dog vdi read`
        /// of the VDI shows the same bytes, so the data really is in sheep's objects under the VDI's index.
        @Test(arguments: SheepKind.allCases)
        func qemuImgRoundTripMatchesDogRead(kind: SheepKind) throws {
            try withSheepTarget(kind, vdis: [SheepVDI(name: "data", bytes: SheepDataPath.imageBytes)]) { t in
                let seed: UInt64 = 0x5EED_5EE9
                let source = try t.scratch.makeRandomFile("source.img", bytes: Int(SheepDataPath.imageBytes), seed: seed)
                try t.copyIn(source, lun: 1)

                let back = t.scratch.path("back.img")
                try t.copyOut(lun: 1, to: back)
                #expect(fileSize(back) == SheepDataPath.imageBytes)
                let viaISCSI = try firstDifference(source, back)
                #expect(viaISCSI == nil, "read back through iSCSI (seed \(seed)): \(viaISCSI ?? "")")

                let dumped = t.scratch.path("dog.img")
                try t.sheep.readVDI("data", to: dumped)
                let viaDog = try firstDifference(source, dumped)
                #expect(viaDog == nil, "dog vdi read after the copy (seed \(seed)): \(viaDog ?? "")")
            }
        }

        /// Bytes written with `dog vdi write` before the LUN is added (here over `tcp:HOST:PORT:VDI`) read back
        /// through iSCSI exactly, and the rest of the LUN reads as zeros.
        @Test(arguments: SheepKind.allCases)
        func dogWrittenDataReadsBackThroughISCSI(kind: SheepKind) throws {
            try withSheep(kind) { sheep in
                try sheep.createVDI("pre", bytes: SheepDataPath.preloadVDIBytes)
                let seed: UInt64 = 0xD06_0001
                let data = try sheep.scratch.makeRandomFile("dog-data.img", bytes: SheepDataPath.preloadBytes, seed: seed)
                try sheep.writeVDI("pre", offset: SheepDataPath.preloadOffset, from: data)

                try withSheepTarget(sheep) { t in
                    try t.addLUN(1, backingStore: sheep.backingStore("pre", tcp: true))
                    let out = t.scratch.path("lun.img")
                    try t.copyOut(lun: 1, to: out)
                    let problems = try compareAt(out, offset: SheepDataPath.preloadOffset, expected: data,
                                                 totalBytes: SheepDataPath.preloadVDIBytes)
                    #expect(problems.isEmpty, "LUN over tcp after dog vdi write (seed \(seed)): \(problems)")
                }
            }
        }

        /// An IPv6 sheep address in tgt's form with brackets, `tcp:[::1]:PORT:VDI`, serves data both ways.
        @Test(arguments: SheepKind.allCases)
        func ipv6BracketedSheepAddressServesData(kind: SheepKind) throws {
            var options = SheepServerOptions()
            options.listenHost = "::1"   // a real sheep listens on every address by default
            let bytes = 16 * mebibyte
            try withSheepTarget(kind, options: options) { t in
                try t.sheep.createVDI("six", bytes: bytes)
                try t.addLUN(1, backingStore: "tcp:[::1]:\(t.sheep.tcpPort):six")
                let regions = [PatternRegion(offset: 4 * mebibyte - 4096, length: 65536, pattern: 0x66)]
                let io = try t.qemuIO(1, ["-c", "write -P 0x66 \(regions[0].offset) \(regions[0].length)"])
                #expect(io.succeeded && QemuIOReport(io.stdout + io.stderr).errorLines.isEmpty, "\(io)")
                let back = try t.verifyThroughISCSI(lun: 1, regions)
                #expect(back.isEmpty, "read back over IPv6: \(back)")
                let dog = try t.verifyThroughDog("six", regions, bytes: bytes)
                #expect(dog.isEmpty, "dog vdi read: \(dog)")
            }
        }
    }
}

/// Checks that `file` is `totalBytes` long, holds `expected`'s bytes at `offset`, and zeros everywhere else.
func compareAt(_ file: URL, offset: Int64, expected: URL, totalBytes: Int64) throws -> [String] {
    let got = try Data(contentsOf: file, options: .alwaysMapped)
    let want = try Data(contentsOf: expected)
    var problems: [String] = []
    if Int64(got.count) != totalBytes { problems.append("\(file.lastPathComponent) is \(got.count) bytes, not \(totalBytes)") }
    let start = Int(offset), end = start + want.count
    guard end <= got.count else { return problems + ["the data at \(start) runs past the end of \(got.count) bytes"] }
    if got[start..<end] != want {
        var i = 0
        got.withUnsafeBytes { (g: UnsafeRawBufferPointer) in
            want.withUnsafeBytes { (w: UnsafeRawBufferPointer) in while i < want.count && g[start + i] == w[i] { i += 1 } }
        }
        problems.append("the written bytes differ first at offset \(start + i)")
    }
    if let at = firstNonZero(got, 0..<start) { problems.append("non-zero byte at \(at), before the written bytes") }
    if let at = firstNonZero(got, end..<got.count) { problems.append("non-zero byte at \(at), after the written bytes") }
    return problems
}

/// The first non-zero byte of `data` within `range` (chunked compares: fast in debug builds), or nil.
func firstNonZero(_ data: Data, _ range: Range<Int>) -> Int? {
    let zeros = Data(repeating: 0, count: 1 << 20)
    var at = range.lowerBound
    while at < range.upperBound {
        let n = min(zeros.count, range.upperBound - at)
        if data[at..<(at + n)] != zeros[0..<n] {
            return (at..<(at + n)).first { data[$0] != 0 }
        }
        at += n
    }
    return nil
}
