import DeterministicRandom
import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import SCSITestSupport

/// Random CDBs for every opcode, with random lengths and directions: every command must complete (the
/// harness bounds the steps), never ask for data-out beyond the EDTL, never send more data-in than the
/// EDTL, and always return well-formed sense with CHECK CONDITION.
@Suite struct SCSIFuzzTests {
    @Test func randomCDBsAlwaysCompleteWithinTheContract() {
        let h = Harness(luns: [(0, 512, 512, StoreCapabilities(canDiscard: true, discardZeroes: true, canReportMapping: true)),
                               (1, 4096, 64, StoreCapabilities(readOnly: true))], bufferBytes: 65536)
        let nexuses = [h.nexus("iqn.2026-01.fuzz:a", isid: 1), h.nexus("iqn.2026-01.fuzz:b", isid: 2)]
        var rng = SeededRandom(seed: 0x9E37_79B9_7F4A_7C15)
        let pool = (0 ..< 200_000).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        var completed = 0
        var good = 0
        let known = SupportedOpcodes.all
        for i in 0 ..< 16_384 {
            // Mostly commands this device server knows (with their CDB length and service action), the
            // rest any opcode at any length.
            let pick = rng.below(4) != 0 ? known[rng.below(known.count)] : nil
            let length = pick?.usage.count ?? [6, 10, 12, 16, 16, 32][rng.below(6)]
            var cdb = (0 ..< length).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            cdb[0] = pick?.opcode ?? UInt8(i % 256)
            // Keep flags clear and addresses and lengths small often enough to reach the data paths.
            if rng.below(4) != 0 { cdb[1] &= 0x02 }
            if rng.below(4) != 0 { for j in 2 ..< length { cdb[j] &= rng.below(2) == 0 ? 0x01 : 0x00 } }
            if let sa = pick?.serviceAction { cdb[1] = UInt8(sa) }
            cdb[length - 1] = 0
            let edtl = [0, 1, 24, 512, 1024, 4096, 65536, 200_000][rng.below(8)]
            let write = rng.below(3) == 0
            let read = !write && rng.below(4) != 0
            let data = write ? Array(pool[0 ..< edtl]) : []
            let lun = UInt64([0, 0, 0, 1, 2][rng.below(5)])
            let o = h.run(cdb, lun: lun, nexus: nexuses[rng.below(2)], edtl: edtl, read: read, write: write, dataOut: data)
            #expect(o.dataIn.count <= (read ? edtl : 0))
            #expect(o.dataOutRequested <= (write ? edtl : 0))
            if o.status == SCSIStatus.checkCondition {
                #expect(o.sense.count == 18 && o.sense[0] & 0x7F == 0x70 && o.sense[7] == 10)
            } else {
                #expect(o.sense.isEmpty)
            }
            if o.isGood { good += 1 }
            completed += 1
        }
        #expect(completed == 16_384)
        // The run reached past the CDB checks often enough to exercise the data paths.
        let storeOps = h.disk(0).ops.count + h.disk(1).ops.count
        #expect(good > 1000 && storeOps > 100, "good \(good), store ops \(storeOps)")
    }
}
