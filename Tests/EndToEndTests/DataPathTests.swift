// Moving real data: whole-image copies in and out, byte-exact.

import Foundation
import Testing

extension EndToEnd {
    @Suite("Data path")
    struct DataPath {
        static let imageBytes = 64 * mebibyte
        static let convertTimeoutSeconds = 300.0

        /// qemu-img copies a 64 MiB random image onto a LUN and back out, and nothing changes.
        @Test(arguments: [1, 2])
        func qemuImgConvertRoundTripIsByteExact(cores: Int) throws {
            try withTarget(cores: cores, luns: [.file(bytes: DataPath.imageBytes)]) { t in
                let seed = UInt64(0x5EED_0000 + cores)
                let source = try t.scratch.makeRandomFile("source.img", bytes: Int(DataPath.imageBytes), seed: seed)
                let back = t.scratch.path("back.img")
                let url = t.url(lun: 1)

                // -n: the LUN exists already; -f raw on both sides so nothing is probed or guessed.
                let put = try t.tool("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", source.path, url],
                                     timeoutSeconds: DataPath.convertTimeoutSeconds)
                try #require(put.succeeded, "\(put)")
                let get = try t.tool("qemu-img", ["convert", "-f", "raw", "-O", "raw", url, back.path],
                                     timeoutSeconds: DataPath.convertTimeoutSeconds)
                try #require(get.succeeded, "\(get)")

                #expect(fileSize(back) == DataPath.imageBytes)
                let viaInitiator = try firstDifference(source, back)
                #expect(viaInitiator == nil, "read back through iSCSI (seed \(seed)): \(viaInitiator ?? "")")
                let lunFile = try #require(t.lunFiles[1])
                let onDisk = try firstDifference(source, lunFile)
                #expect(onDisk == nil, "backing file after the copy (seed \(seed)): \(onDisk ?? "")")
            }
        }
    }
}
