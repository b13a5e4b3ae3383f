import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import SCSITestSupport

/// WRITE SAME on a write-protected LU (a sheepdog snapshot LUN, a read-only file): DATA PROTECT, also with
/// UNMAP set, although such an LU does not advertise LBPWS (libiscsi's ReadOnly.ReadOnlySBC).
@Suite struct SCSIWriteSameReadOnlyTests {
    @Test func writeSameOnAReadOnlyLUIsWriteProtectedWithOrWithoutUnmap() {
        let h = Harness(luns: [(0, 512, 64, StoreCapabilities(readOnly: true))])
        let n = h.nexus()
        h.clearUAs(n)
        let block = [UInt8](repeating: 0x5A, count: 512)
        for flags: UInt8 in [0x00, 0x08] {
            let ws10 = h.run(CDB.rw10(0x41, lba: 0, blocks: 1, flags: flags), nexus: n, write: true, dataOut: block)
            #expect(ws10.hasSense(SenseKey.dataProtect, 0x27, 0), "WRITE SAME(10) flags \(flags)")
            let ws16 = h.run(CDB.rw16(0x93, lba: 0, blocks: 1, flags: flags), nexus: n, write: true, dataOut: block)
            #expect(ws16.hasSense(SenseKey.dataProtect, 0x27, 0), "WRITE SAME(16) flags \(flags)")
        }
        #expect(h.disk().bytes[0 ..< 512].allSatisfy { $0 == 0 })
    }
}
