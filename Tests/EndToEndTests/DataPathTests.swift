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

                try t.qemuImgRoundTrip(source, via: url, into: back, timeoutSeconds: DataPath.convertTimeoutSeconds)

                #expect(fileSize(back) == DataPath.imageBytes)
                let viaInitiator = try firstDifference(source, back)
                #expect(viaInitiator == nil, "read back through iSCSI (seed \(seed)): \(viaInitiator ?? "")")
                let lunFile = try #require(t.lunFiles[1])
                let onDisk = try firstDifference(source, lunFile)
                #expect(onDisk == nil, "backing file after the copy (seed \(seed)): \(onDisk ?? "")")
            }
        }

        /// A null LUN's READ is sent from a read-only zero region instead of its zeroed buffer slot. The slot
        /// a READ takes is the one the WRITE before it just filled (the pool hands out the last freed slot),
        /// so a READ that sent its slot would return the written bytes. COMPARE AND WRITE still reads zeros
        /// into its slot to compare them (a slot with the written bytes would miscompare).
        @Test func aNullLUNReadsZerosAfterWritesFilledItsBuffers() throws {
            try withTarget(luns: [.null(bytes: gibibyte)]) { t in
                let s = try RawSession(t.endpoint, target: t.iqn,
                                       options: RawLoginOptions(initiatorName: "\(RunningTarget.iqnPrefix):null-zeros"))
                defer { s.close() }
                let blocks: UInt16 = 256
                let bytes = Int(blocks) * RawSessionLimits.blockBytes
                for round in 0..<3 {
                    let w = try s.run(RawCDB.write10(lba: 0, blocks: blocks),
                                      writeData: [UInt8](repeating: 0xAB &+ UInt8(round), count: bytes))
                    try #require(w.status == RawCodes.good, "WRITE: \(w)")
                    let r = try s.run(RawCDB.read10(lba: 0, blocks: blocks), read: true, edtl: bytes)
                    try #require(r.status == RawCodes.good, "READ: \(r)")
                    #expect(r.data.count == bytes)
                    #expect(r.data.allSatisfy { $0 == 0 }, "round \(round): a null LUN's READ returned non-zero bytes")
                }
                let block = RawSessionLimits.blockBytes
                let w = try s.run(RawCDB.write10(lba: 0, blocks: 1), writeData: [UInt8](repeating: 0xEE, count: block))
                try #require(w.status == RawCodes.good, "WRITE: \(w)")
                let caw = try s.run(RawCDB.compareAndWrite(lba: 0, blocks: 1),
                                    writeData: [UInt8](repeating: 0, count: block) + [UInt8](repeating: 0xCD, count: block))
                #expect(caw.status == RawCodes.good, "COMPARE AND WRITE of zeros on a null LUN: \(caw)")
            }
        }
    }
}
