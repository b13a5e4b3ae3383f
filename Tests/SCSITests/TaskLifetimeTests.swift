import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import SCSITestSupport

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
                           session: SessionBinding(target: h.target, nexus: n), buffer: h.buffer)
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

    /// The control plane counts an EXTENDED COPY whose parameter list has not arrived as a command on every LUN
    /// of its target (the list may name any), and not on a LUN of another target.
    @Test func anExtendedCopyWaitingForItsListCountsOnEveryLUNOfItsTarget() {
        let caps = StoreCapabilities(canDiscard: true, discardZeroes: true, canReportMapping: true)
        let h = Harness(luns: [(0, 512, 2048, caps), (1, 512, 2048, caps)])
        let stranger = Harness().lun()
        let n = h.nexus()
        h.clearUAs(n)
        var task = SCSITask()
        let listBytes: UInt8 = 64
        let cdb: [UInt8] = [0x83, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, listBytes, 0, 0]
        let action = cdb.withUnsafeBytes { raw in
            task.start(cdb: raw, expectedLength: UInt32(listBytes), readBit: false, writeBit: true, lunNumber: 0,
                       lun: h.lun(0), session: SessionBinding(target: h.target, nexus: n), buffer: h.buffer)
        }
        guard case .dataOut = action else {
            Issue.record("an EXTENDED COPY should ask for its parameter list, got \(action)")
            return
        }
        #expect(task.copyTouches([ObjectIdentifier(h.lun(1))]), "not counted on the other LUN of its target")
        #expect(!task.copyTouches([ObjectIdentifier(stranger)]), "counted on a LUN of another target")
    }
}
