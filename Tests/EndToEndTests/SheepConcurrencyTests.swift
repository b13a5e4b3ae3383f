// Several sessions on a two-core daemon writing into the same unallocated objects of one VDI at once. Sheep
// loses data when two creates of one object overlap (SHEEPDOG-PROTOCOL.md §7.6), so the LUN's home core must
// serialise them; whichever core a session lands on, nothing may be lost.

import Foundation
import Testing

extension EndToEnd {
    @Suite("Sheepdog concurrent sessions")
    struct SheepConcurrency {
        /// Four sessions, 32 writes of 64 KiB each, all queued at once (queue depth 32). Region k of session s
        /// starts at slot k*4+s of 256 KiB: every 4 MiB object of the fresh VDI receives four writes from each
        /// session, the first of which all race to create it.
        static let load = WriterLoad(sessions: 4, writesPerSession: 32, queueDepth: 32, slotBytes: 256 * 1024,
                                     lengthsBytes: [65536])
        static let vdiBytes = 32 * mebibyte
        /// Fresh VDIs, one after another, for more chances at a race.
        static let rounds = 3

        @Test(arguments: SheepKind.allCases)
        func sessionsRacingIntoUnallocatedObjectsLoseNothing(kind: SheepKind) throws {
            let load = SheepConcurrency.load
            #expect(load.totalBytes == SheepConcurrency.vdiBytes)
            let vdis = (0..<SheepConcurrency.rounds).map { SheepVDI(name: "race\($0)", bytes: SheepConcurrency.vdiBytes) }
            try withSheepTarget(kind, cores: 2, vdis: vdis) { t in
                for (i, vdi) in vdis.enumerated() {
                    let lun = i + 1
                    let outcome = load.collect(try load.launch(on: t, lun: lun))
                    #expect(outcome.problems.isEmpty && outcome.errorLines.isEmpty,
                            "round \(i): \(outcome.problems.prefix(4)) \(outcome.errorLines.prefix(10))")
                    #expect(outcome.completed.count == load.allRegions.count,
                            "round \(i): \(outcome.completed.count) of \(load.allRegions.count) writes completed")

                    // Another session sees every region; sheep holds every region and nothing else.
                    let viaISCSI = try t.verifyThroughISCSI(lun: lun, load.allRegions)
                    #expect(viaISCSI.isEmpty, "round \(i), read back through iSCSI: \(viaISCSI)")
                    let viaDog = try t.verifyThroughDog(vdi.name, load.allRegions, bytes: SheepConcurrency.vdiBytes)
                    #expect(viaDog.isEmpty, "round \(i), dog vdi read: \(viaDog)")
                }
            }
        }
    }
}
