// Several sessions at once, each with many commands in flight, on one and on two reactor cores.

import Foundation
import Testing

extension EndToEnd {
    @Suite("Concurrent sessions")
    struct Concurrency {
        static let sessions = 4
        /// aio_write commands each session queues before its first flush (the queue depth it offers).
        static let commandsPerSession = 48
        /// Each command owns a slot this big; lengths vary inside it so that immediate data, unsolicited
        /// Data-Out and R2T-solicited bursts all occur.
        static let slotBytes: Int64 = 256 * 1024
        static let lengthsBytes = [4096, 65536, 262_144, 33280, 512, 131_072]
        static let lunBytes = 64 * mebibyte
        static let sessionTimeoutSeconds = 180.0

        static func regions(session: Int) -> [PatternRegion] {
            (0..<commandsPerSession).map { i in
                let index = session * commandsPerSession + i
                // Patterns 1...254 are unique per region and never 0, so an unwritten (zero) region
                // can never pass verification.
                return PatternRegion(offset: Int64(index) * slotBytes,
                                     length: lengthsBytes[index % lengthsBytes.count],
                                     pattern: UInt8(1 + index % 254))
            }
        }

        /// Four qemu-io sessions each queue 48 writes to their own regions, flush, then read them all
        /// back with pattern checks; then one more session reads every region, and finally the backing
        /// file itself is checked. Nothing may error, mismatch or land outside its region.
        @Test(arguments: [1, 2])
        func parallelSessionsAtQueueDepthVerify(cores: Int) throws {
            #expect(Concurrency.commandsPerSession >= 32)
            #expect(Int64(Concurrency.sessions * Concurrency.commandsPerSession) * Concurrency.slotBytes
                    <= Concurrency.lunBytes)
            try withTarget(cores: cores, luns: [.file(bytes: Concurrency.lunBytes)]) { t in
                let url = t.url(lun: 1)
                let all = (0..<Concurrency.sessions).map { Concurrency.regions(session: $0) }

                // Start every session before waiting for any, so they overlap.
                let running = try all.enumerated().map { (s, regions) in
                    try t.launch("qemu-io", ["-f", "raw"] + QemuIOScript.writeThenVerify(regions) + [url],
                                 label: "qemu-io-s\(s)")
                }
                for (s, p) in running.enumerated() {
                    let r = p.wait(timeoutSeconds: Concurrency.sessionTimeoutSeconds)
                    try #require(r.succeeded, "session \(s): \(r)")
                    let report = QemuIOReport(r.stdout + r.stderr)
                    #expect(report.errorLines.isEmpty, "session \(s): \(report.errorLines.prefix(10))")
                    let offsets = Set(all[s].map(\.offset))
                    #expect(report.wroteOffsets.count == all[s].count && Set(report.wroteOffsets) == offsets,
                            "session \(s): \(report.wroteOffsets.count) of \(all[s].count) writes completed")
                    #expect(report.readOffsets.count == all[s].count && Set(report.readOffsets) == offsets,
                            "session \(s): \(report.readOffsets.count) of \(all[s].count) reads completed")
                }

                // Another session (possibly on another core) sees everything the others wrote.
                let everything = all.flatMap { $0 }
                let check = try t.tool("qemu-io", ["-f", "raw", "-r"] + QemuIOScript.verify(everything) + [url],
                                       timeoutSeconds: Concurrency.sessionTimeoutSeconds)
                try #require(check.succeeded, "\(check)")
                let report = QemuIOReport(check.stdout + check.stderr)
                #expect(report.errorLines.isEmpty, "cross-session read: \(report.errorLines.prefix(10))")
                #expect(report.readOffsets.count == everything.count,
                        "cross-session read: \(report.readOffsets.count) of \(everything.count) reads completed")

                let lunFile = try #require(t.lunFiles[1])
                let problems = try verifyBackingFile(lunFile, regions: everything, fileBytes: Concurrency.lunBytes)
                #expect(problems.isEmpty, "backing file: \(problems.prefix(10))")
            }
        }
    }
}
