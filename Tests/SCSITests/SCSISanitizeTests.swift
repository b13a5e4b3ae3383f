import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import SCSITestSupport

/// SANITIZE: BLOCK ERASE / CRYPTOGRAPHIC ERASE through the store, the sanitize-in-progress state other
/// commands see, failure mode and EXIT FAILURE MODE, and the CDB checks libiscsi's Sanitize.* make.
@Suite struct SCSISanitizeTests {
    static let blockErase: UInt8 = 0x02
    static let cryptoErase: UInt8 = 0x03
    static let exitFailureMode: UInt8 = 0x1F

    func sanitize(_ action: UInt8, immed: Bool = false, ause: Bool = false, paramLength: UInt16 = 0) -> [UInt8] {
        [Opcode.sanitize, (immed ? 0x80 : 0) | (ause ? 0x20 : 0) | action, 0, 0, 0, 0, 0,
         UInt8(paramLength >> 8), UInt8(paramLength & 0xFF), 0]
    }

    static let tur: [UInt8] = [0, 0, 0, 0, 0, 0]
    static let read10: [UInt8] = [Opcode.read10, 0, 0, 0, 0, 0, 0, 0, 1, 0]

    static let overwrite: UInt8 = 0x01

    /// An OVERWRITE parameter list: header (INVERT, TEST, OVERWRITE COUNT; INITIALIZATION PATTERN LENGTH) and
    /// the pattern.
    func overwriteList(_ pattern: [UInt8], count: UInt8 = 1, invert: Bool = false, test: UInt8 = 0) -> [UInt8] {
        [(invert ? 0x80 : 0) | test << 5 | count, 0, UInt8(pattern.count >> 8), UInt8(pattern.count & 0xFF)] + pattern
    }

    func overwrite(_ h: Harness, _ n: Nexus, _ list: [UInt8], immed: Bool = false) -> Outcome {
        h.run(sanitize(Self.overwrite, immed: immed, paramLength: UInt16(list.count)), nexus: n, write: true, dataOut: list)
    }

    /// Starts a SANITIZE as the reactor does, without running its job: the command's next action (nil while it
    /// waits for the job) and the job, which the test steps.
    func startJob(_ h: Harness, _ n: Nexus, _ cdb: [UInt8], dataOut: [UInt8] = [],
                  task: inout SCSITask) -> (next: SCSIAction?, job: JobDriver)? {
        var action = cdb.withUnsafeBytes { raw in
            task.start(cdb: raw, expectedLength: UInt32(dataOut.count), readBit: false, writeBit: !dataOut.isEmpty,
                       lunNumber: 0, lun: h.lun(), session: SessionBinding(target: h.target, nexus: n), buffer: h.buffer)
        }
        if case .dataOut(let offset, let length) = action {
            for i in 0 ..< length { h.buffer[i] = dataOut[offset + i] }
            action = task.dataOutReceived(buffer: h.buffer)
        }
        guard action == .startJob, let job = task.beginSanitizeJob() else { return nil }
        return (task.sanitizeJobStarted(), JobDriver(job, harness: h, own: 0))
    }

    @Test(arguments: [blockErase, cryptoErase])
    func eraseDeallocatesTheWholeLUInPiecesThenFlushes(action: UInt8) {
        // Two and a half pieces: the last one short.
        let blocks = SanitizeLimits.erasePieceBytes * 5 / 2 / 512
        let h = Harness(luns: [(0, 512, blocks, StoreCapabilities(canDiscard: true, discardZeroes: true, canReportMapping: true))])
        let n = h.ready()
        let w = h.run([Opcode.write10, 0, 0, 0, 0, 0, 0, 0, 1, 0], nexus: n, write: true,
                      dataOut: [UInt8](repeating: 0x61, count: 512))
        #expect(w.isGood)
        let o = h.run(sanitize(action), nexus: n)
        #expect(o.isGood)
        let discards = h.disk().ops.compactMap { op -> (UInt64, UInt64)? in
            if case .discard(_, let off, let len) = op { return (off, len) }
            return nil
        }
        #expect(discards.count == 3)
        #expect(discards.map(\.1).reduce(0, +) == blocks * 512)
        #expect(discards.allSatisfy { $0.1 <= SanitizeLimits.erasePieceBytes })
        #expect(h.disk().ops.last == .flush(target: .own))
        #expect(h.disk().isUnmapped(0) && h.disk().isUnmapped(blocks * 512 - 1))
        #expect(h.run(Self.read10, nexus: n, edtl: 512, read: true).isGood)
    }

    @Test func otherCommandsSeeSanitizeInProgressWithProgress() {
        let blocks = SanitizeLimits.erasePieceBytes * 4 / 512
        let h = Harness(luns: [(0, 512, blocks, StoreCapabilities(canDiscard: true, discardZeroes: true, canReportMapping: true))])
        let n = h.ready()
        let other = h.ready("iqn.2026-01.test:other")
        var task = SCSITask()
        guard var (next, job) = startJob(h, n, sanitize(Self.blockErase), task: &task) else {
            Issue.record("no job"); return
        }
        #expect(next == nil)                                   // without IMMED the command waits for the job
        #expect(job.step() == nil)                             // one piece of four

        let t = h.run(Self.tur, nexus: other)
        #expect(t.hasSense(SenseKey.notReady, 0x04, 0x1B))
        #expect(h.run(Self.read10, nexus: other, edtl: 512, read: true).hasSense(SenseKey.notReady, 0x04, 0x1B))
        #expect(h.run(sanitize(Self.blockErase), nexus: other).hasSense(SenseKey.notReady, 0x04, 0x1B))
        #expect(h.run([Opcode.inquiry, 0, 0, 0, 96, 0], nexus: other, edtl: 96, read: true).isGood)
        let rs = h.run([Opcode.requestSense, 0, 0, 0, 18, 0], nexus: other, edtl: 18, read: true)
        #expect(rs.isGood && rs.dataIn.count == 18)
        #expect(rs.dataIn[2] & 0x0F == SenseKey.notReady && rs.dataIn[12] == 0x04 && rs.dataIn[13] == 0x1B)
        let progress = Int(rs.dataIn[16]) << 8 | Int(rs.dataIn[17])
        #expect(rs.dataIn[15] & 0x80 != 0 && progress > 0x3000 && progress < 0x5000)

        let end = job.runToEnd()
        #expect(end == .ok(0))
        next = task.storeCompleted(end, buffer: h.buffer)
        #expect(next == .complete(status: SCSIStatus.good, dataInLength: 0, residual: .none))
        task.endCommand()
        #expect(h.run(Self.tur, nexus: other).isGood)
    }

    @Test func theJobGoesOnAfterItsCommandIsAbortedAndEndsWithTheLU() {
        let h = Harness()
        let n = h.ready()
        #expect(h.run([Opcode.write10, 0, 0, 0, 0, 0, 0, 0, 1, 0], nexus: n, write: true,
                      dataOut: [UInt8](repeating: 0x61, count: 512)).isGood)
        var task = SCSITask()
        guard let started = startJob(h, n, sanitize(Self.overwrite, paramLength: 5), dataOut: overwriteList([0x5A]),
                                     task: &task) else { Issue.record("no job"); return }
        var job = started.job
        #expect(started.next == nil)
        #expect(job.step() == nil)
        task.endCommand()                                      // ABORT TASK, a reset or logout: only the command ends
        let again = h.ready("iqn.2026-01.test:reconnected")
        #expect(h.run(Self.tur, nexus: again).hasSense(SenseKey.notReady, 0x04, 0x1B))
        #expect(job.runToEnd() == .ok(0))
        #expect(h.run(Self.tur, nexus: again).isGood)
        #expect(h.disk().bytes.allSatisfy { $0 == 0x5A })
        #expect(h.disk().ops.last == .flush(target: .own))
    }

    @Test func immedCompletesAtOnceWhileTheJobRuns() {
        let h = Harness()
        let n = h.ready()
        var task = SCSITask()
        guard let started = startJob(h, n, sanitize(Self.blockErase, immed: true), task: &task) else {
            Issue.record("no job"); return
        }
        var job = started.job
        #expect(started.next == .complete(status: SCSIStatus.good, dataInLength: 0, residual: .none))
        #expect(h.run(Self.tur, nexus: n).hasSense(SenseKey.notReady, 0x04, 0x1B))
        #expect(job.runToEnd() == .ok(0))
        #expect(h.run(Self.tur, nexus: n).isGood)
        // Through the harness as a whole: IMMED answers GOOD and the erase is done.
        #expect(h.run(sanitize(Self.cryptoErase, immed: true), nexus: n).isGood)
        #expect(h.disk().isUnmapped(0))
    }

    @Test func aStoreErrorLeavesFailureModeUntilExitIsAllowedOrASanitizeCompletes() {
        let h = Harness()
        let n = h.ready()
        h.disk().failNextWrite = .mediumError
        #expect(overwrite(h, n, overwriteList([1, 2])).hasSense(SenseKey.mediumError, 0x31, 0x03))
        #expect(h.run(Self.read10, nexus: n, edtl: 512, read: true).hasSense(SenseKey.mediumError, 0x31, 0x03))
        #expect(h.run(Self.tur, nexus: n).hasSense(SenseKey.mediumError, 0x31, 0x03))
        // AUSE was zero: only a completed sanitize ends the failure mode.
        #expect(h.run(sanitize(Self.exitFailureMode), nexus: n).hasSense(SenseKey.illegalRequest, 0x24, 0x00))
        #expect(h.run(sanitize(Self.cryptoErase), nexus: n).isGood)
        #expect(h.run(Self.tur, nexus: n).isGood)

        // A job the daemon stops under leaves failure mode too; with AUSE, EXIT FAILURE MODE ends it.
        var task = SCSITask()
        guard var (_, job) = startJob(h, n, sanitize(Self.blockErase, immed: true, ause: true), task: &task) else {
            Issue.record("no job"); return
        }
        #expect(job.step() == nil)
        #expect(job.job.abandon() == .finished(failed: true))
        #expect(h.run(Self.tur, nexus: n).hasSense(SenseKey.mediumError, 0x31, 0x03))
        #expect(h.run(sanitize(Self.exitFailureMode), nexus: n).isGood)
        #expect(h.run(Self.read10, nexus: n, edtl: 512, read: true).isGood)
    }

    @Test func overwriteRepeatsThePatternInEveryBlockForEachPass() {
        let h = Harness()
        let n = h.ready()
        let blocks = Int(h.lun().blockCount)
        #expect(overwrite(h, n, overwriteList([1, 2, 3])).isGood)
        let expected = (0 ..< 512).map { UInt8($0 % 3 + 1) }
        #expect(Array(h.disk().bytes[0 ..< 512]) == expected)
        #expect(Array(h.disk().bytes[(blocks - 1) * 512 ..< blocks * 512]) == expected)
        let writes = { h.disk().ops.filter { if case .write = $0 { return true }; return false }.count }
        let perPass = writes()
        #expect(perPass == blocks * 512 / (h.bufferBytes - h.bufferBytes % 512))
        #expect(h.disk().ops.last == .flush(target: .own))

        // INVERT: the pattern is inverted between passes, so two passes leave it inverted and three do not.
        #expect(overwrite(h, n, overwriteList([0x0F], count: 2, invert: true)).isGood)
        #expect(writes() == perPass * 3)
        #expect(h.disk().bytes.allSatisfy { $0 == 0xF0 })
        #expect(overwrite(h, n, overwriteList([0x0F], count: 3, invert: true)).isGood)
        #expect(h.disk().bytes.allSatisfy { $0 == 0x0F })
        // A whole block of pattern, as libiscsi's Sanitize.Overwrite sends.
        #expect(overwrite(h, n, overwriteList([UInt8](repeating: 0xAA, count: 512))).isGood)
        #expect(h.disk().bytes.allSatisfy { $0 == 0xAA })
        #expect(h.run(Self.read10, nexus: n, edtl: 512, read: true).dataIn == [UInt8](repeating: 0xAA, count: 512))
    }

    @Test func overwriteParameterListChecks() {
        let h = Harness()
        let n = h.ready()
        let block = [UInt8](repeating: 0, count: 512)
        // PARAMETER LIST LENGTH: more than the header, at most a block more (field pointer: CDB byte 7).
        for length in [0, 1, 2, 3, 4, 512 + 5] {
            let o = h.run(sanitize(Self.overwrite, paramLength: UInt16(length)), nexus: n, write: true,
                          dataOut: [UInt8](repeating: 0, count: length))
            #expect(o.hasSense(SenseKey.illegalRequest, 0x24, 0x00) && o.sense[15] == 0xC0 && o.sense[17] == 7,
                    "parameter list length \(length)")
        }
        // What libiscsi checks as INVALID FIELD IN CDB: a zero count, and pattern lengths of 0 or over a block.
        #expect(overwrite(h, n, overwriteList(block, count: 0)).hasSense(SenseKey.illegalRequest, 0x24, 0x00))
        var zeroLength = overwriteList(block)
        zeroLength[2] = 0; zeroLength[3] = 0
        #expect(overwrite(h, n, zeroLength).hasSense(SenseKey.illegalRequest, 0x24, 0x00))
        var tooLong = overwriteList(block)
        tooLong[2] = UInt8((512 + 4) >> 8); tooLong[3] = UInt8((512 + 4) & 0xFF)
        #expect(overwrite(h, n, tooLong).hasSense(SenseKey.illegalRequest, 0x24, 0x00))
        // TEST: no test modes (INVALID FIELD IN PARAMETER LIST, byte 0 bit 6).
        let test = overwrite(h, n, overwriteList([1], test: 2))
        #expect(test.hasSense(SenseKey.illegalRequest, 0x26, 0x00) && test.sense[15] == 0x8E && test.sense[17] == 0)
        #expect(h.disk().ops.isEmpty)
        #expect(h.run(Self.tur, nexus: n).isGood)
    }

    @Test func cdbChecksAsLibiscsiExpects() {
        let h = Harness()
        let n = h.ready()
        for sa: UInt8 in 0 ... 0x1F where ![Self.overwrite, Self.blockErase, Self.cryptoErase, Self.exitFailureMode].contains(sa) {
            #expect(h.run(sanitize(sa), nexus: n).hasSense(SenseKey.illegalRequest, 0x24, 0x00), "service action \(sa)")
        }
        for sa in [Self.blockErase, Self.cryptoErase, Self.exitFailureMode] {
            #expect(h.run(sanitize(sa, paramLength: 8), nexus: n, write: true, dataOut: [UInt8](repeating: 0, count: 8))
                .hasSense(SenseKey.illegalRequest, 0x24, 0x00))
            var reservedBit = sanitize(sa)
            reservedBit[1] |= 0x40
            #expect(h.run(reservedBit, nexus: n).hasSense(SenseKey.illegalRequest, 0x24, 0x00))
            for byte in 2 ... 6 {
                var reserved = sanitize(sa)
                reserved[byte] = UInt8(byte)
                #expect(h.run(reserved, nexus: n).hasSense(SenseKey.illegalRequest, 0x24, 0x00))
            }
        }
        #expect(h.disk().ops.isEmpty)
    }

    @Test func writeProtectionAndStoresThatCannotDeallocate() {
        let h = Harness(luns: [(0, 512, 2048, StoreCapabilities(canDiscard: true, discardZeroes: true, readOnly: true)),
                               (1, 512, 2048, StoreCapabilities(canDiscard: false))])
        let n = h.nexus()
        h.clearUAs(n)
        h.clearUAs(n, lun: 1)
        #expect(h.run(sanitize(Self.blockErase), lun: 0, nexus: n).hasSense(SenseKey.dataProtect, 0x27, 0x00))
        #expect(h.run(sanitize(Self.blockErase), lun: 1, nexus: n).hasSense(SenseKey.illegalRequest, 0x20, 0x00))
        // REPORT SUPPORTED OPERATION CODES, one command: offered on LUN 0 only.
        let one: (UInt64) -> Outcome = { lun in
            h.run([Opcode.maintenanceIn, 0x0C, 0x02, Opcode.sanitize, 0, Self.blockErase, 0, 0, 1, 0, 0, 0],
                  lun: lun, nexus: n, edtl: 256, read: true)
        }
        #expect(one(0).dataIn[1] & 0x07 == 0x03 && one(1).dataIn[1] & 0x07 == 0x01)
        let overwriteOffered = h.run([Opcode.maintenanceIn, 0x0C, 0x02, Opcode.sanitize, 0, Self.overwrite, 0, 0, 1, 0, 0, 0],
                                     lun: 0, nexus: n, edtl: 256, read: true)
        #expect(overwriteOffered.dataIn[1] & 0x07 == 0x03 && overwriteOffered.dataIn[5] == 0x80 | 0x20 | Self.overwrite)
        #expect(h.run(sanitize(Self.overwrite, paramLength: 5), lun: 0, nexus: n, write: true, dataOut: overwriteList([7]))
            .hasSense(SenseKey.dataProtect, 0x27, 0x00))
        let bdc: (UInt64) -> UInt8 = { lun in
            h.run([Opcode.inquiry, 1, 0xB1, 0, 64, 0], lun: lun, nexus: n, edtl: 64, read: true).dataIn[7]
        }
        #expect(bdc(0) == 0x50 && bdc(1) == 0)
    }
}
