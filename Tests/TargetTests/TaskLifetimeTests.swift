import Testing
@testable import Target

/// The LUN lifetime rule at the SCSI task (docs/DESIGN.md): a command in flight keeps its LUN, the target it
/// started under and its nexus alive after everything else let go of them, and holds nothing once it ended.
@Suite struct TaskLifetimeTests {
    @Test func aCommandInFlightHoldsItsLUNTargetAndNexusUntilItEnds() {
        var task = SCSITask()
        weak var lun: LogicalUnit?
        weak var target: TargetRuntime?
        weak var nexus: Nexus?
        do {
            // The harness stands for the control plane and the session: both drop their references below.
            let h = Harness()
            let n = h.nexus()
            h.clearUAs(n)
            lun = h.lun()
            target = h.target
            nexus = n
            let read10: [UInt8] = [0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0]
            let action = read10.withUnsafeBytes { raw in
                task.start(cdb: raw, expectedLength: 4096, readBit: true, writeBit: false, lunNumber: 0, lun: h.lun(),
                           target: h.target, nexus: n, buffer: h.buffer)
            }
            guard case .store = action else {
                Issue.record("a READ should wait for its store read, got \(action)")
                return
            }
        }
        #expect(lun != nil && target != nil && nexus != nil, "freed under a command in flight")
        task.endCommand()
        #expect(lun == nil && target == nil && nexus == nil, "kept after the command ended")
    }
}
