import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import SCSITestSupport

@Suite struct SCSIReadWriteTests {
    @Test(arguments: [6, 10, 12, 16])
    func writeThenReadRoundTripsForEveryCDBSize(size: Int) {
        let h = Harness()
        let n = h.ready()
        let data = pattern(3 * 512, seed: UInt8(size))
        let lba: UInt32 = 17
        let (w, r): ([UInt8], [UInt8])
        switch size {
        case 6: (w, r) = (CDB.write6(lba: lba, blocks: 3), CDB.read6(lba: lba, blocks: 3))
        case 10: (w, r) = (CDB.rw10(0x2A, lba: lba, blocks: 3), CDB.rw10(0x28, lba: lba, blocks: 3))
        case 12: (w, r) = (CDB.rw12(0xAA, lba: lba, blocks: 3), CDB.rw12(0xA8, lba: lba, blocks: 3))
        default: (w, r) = (CDB.rw16(0x8A, lba: UInt64(lba), blocks: 3), CDB.rw16(0x88, lba: UInt64(lba), blocks: 3))
        }
        let wo = h.run(w, nexus: n, write: true, dataOut: data)
        #expect(wo.isGood && wo.residual == .none && wo.dataOutRequested == data.count)
        #expect(Array(h.disk().bytes[17 * 512 ..< 20 * 512]) == data)
        let ro = h.run(r, nexus: n, edtl: data.count, read: true)
        #expect(ro.isGood && ro.residual == .none)
        #expect(ro.dataIn == data)
    }

    @Test func read6LengthZeroMeans256Blocks() {
        let h = Harness()
        let n = h.ready()
        let o = h.run(CDB.read6(lba: 0, blocks: 0), nexus: n, edtl: 256 * 512, read: true)
        #expect(o.isGood && o.dataIn.count == 256 * 512)
    }

    @Test func largeTransfersAreChunkedByTheBuffer() {
        let h = Harness(luns: [(0, 512, 4096, StoreCapabilities())], bufferBytes: 65536)
        let n = h.ready()
        let data = pattern(1000 * 512, seed: 3)
        let w = h.run(CDB.rw16(0x8A, lba: 5, blocks: 1000), nexus: n, write: true, dataOut: data)
        #expect(w.isGood)
        let writes = h.disk().ops.compactMap { op -> Int? in if case .write(_, _, let l, _, _) = op { return l }; return nil }
        #expect(writes.count == 8 && writes.allSatisfy { $0 <= 65536 && $0 % 512 == 0 })
        #expect(Array(h.disk().bytes[5 * 512 ..< 1005 * 512]) == data)
        let r = h.run(CDB.rw16(0x88, lba: 5, blocks: 1000), nexus: n, edtl: data.count, read: true)
        #expect(r.isGood && r.dataIn == data)
        #expect(r.dataInPieces == 7)   // 8 chunks: 7 intermediate Data-In pieces and the final one
    }

    @Test func outOfRangeIsRejectedBeforeAnyData() {
        let h = Harness()
        let n = h.ready()
        for (lba, blocks) in [(UInt64(2047), 2), (2048, 1), (2049, 0), (UInt64.max, 1), (1 << 63, 1)] {
            let r = h.run(CDB.rw16(0x88, lba: lba, blocks: UInt32(blocks)), nexus: n, edtl: blocks * 512, read: true)
            #expect(r.hasSense(SenseKey.illegalRequest, 0x21, 0))
            let w = h.run(CDB.rw16(0x8A, lba: lba, blocks: UInt32(blocks)), nexus: n, write: true,
                          dataOut: [UInt8](repeating: 1, count: blocks * 512))
            #expect(w.hasSense(SenseKey.illegalRequest, 0x21, 0) && w.dataOutRequested == 0)
        }
        let r10 = h.run(CDB.rw10(0x28, lba: 0xFFFF_FFFF, blocks: 1), nexus: n, edtl: 512, read: true)
        #expect(r10.hasSense(SenseKey.illegalRequest, 0x21, 0))
        let zero = h.run(CDB.rw10(0x28, lba: 0, blocks: 0), nexus: n, edtl: 0, read: true)
        #expect(zero.isGood && zero.dataIn.isEmpty)
        let lastBlock = h.run(CDB.rw10(0x28, lba: 2047, blocks: 1), nexus: n, edtl: 512, read: true)
        #expect(lastBlock.isGood)
    }

    @Test func protectFieldsAreRejectedAndDpoFuaAccepted() {
        let h = Harness()
        let n = h.ready()
        for p in 1 ..< 8 {
            let r = h.run(CDB.rw10(0x28, lba: 0, blocks: 1, flags: UInt8(p << 5)), nexus: n, edtl: 512, read: true)
            #expect(r.hasSense(SenseKey.illegalRequest, 0x24, 0))
            #expect(r.sense[15] == 0xC8 + 7 && r.sense[17] == 1)
        }
        let fua = h.run(CDB.rw10(0x2A, lba: 0, blocks: 1, flags: 0x18), nexus: n, write: true,
                        dataOut: [UInt8](repeating: 9, count: 512))
        #expect(fua.isGood && h.disk().fuaWrites == 1)
        #expect(h.run(CDB.rw10(0x28, lba: 0, blocks: 1, flags: 0x18), nexus: n, edtl: 512, read: true).isGood)
    }

    @Test func readResidualsFollowTheExpectedDataTransferLength() {
        let h = Harness()
        let n = h.ready()
        h.disk().bytes.replaceSubrange(0 ..< 1024, with: pattern(1024, seed: 1))
        let none = h.run(CDB.rw10(0x28, lba: 0, blocks: 1), nexus: n, edtl: 0, read: true)
        #expect(none.isGood && none.residual == .overflow(512) && none.dataIn.isEmpty)
        let big = h.run(CDB.rw10(0x28, lba: 0, blocks: 1), nexus: n, edtl: 10000, read: true)
        #expect(big.isGood && big.dataIn.count == 512 && big.residual == .underflow(10000 - 512))
        let part = h.run(CDB.rw10(0x28, lba: 0, blocks: 1), nexus: n, edtl: 200, read: true)
        #expect(part.isGood && part.dataIn == pattern(200, seed: 1) && part.residual == .overflow(312))
        let two = h.run(CDB.rw10(0x28, lba: 0, blocks: 2), nexus: n, edtl: 512, read: true)
        #expect(two.dataIn.count == 512 && two.residual == .overflow(512))
        // READ sent with the W bit instead of R: GOOD, no data-in.
        let wrongDir = h.run(CDB.rw10(0x28, lba: 0, blocks: 1), nexus: n, edtl: 512, read: false, write: true,
                             dataOut: [UInt8](repeating: 0, count: 512))
        #expect(wrongDir.isGood && wrongDir.dataIn.isEmpty && wrongDir.dataOutRequested == 0)
    }

    @Test func writeResidualsWriteOnlyWhatBothSidesAgreeOn() {
        let h = Harness()
        let n = h.ready()
        let a = [UInt8](repeating: 0x61, count: 1024)
        #expect(h.run(CDB.rw10(0x2A, lba: 0, blocks: 2), nexus: n, write: true, dataOut: a).isGood)
        // EDTL two blocks, CDB one block: one block written, underflow.
        let b = [UInt8](repeating: 0x62, count: 1024)
        let o1 = h.run(CDB.rw10(0x2A, lba: 0, blocks: 1), nexus: n, edtl: 1024, write: true, dataOut: b)
        #expect(o1.isGood && o1.residual == .underflow(512) && o1.dataOutRequested == 512)
        #expect(Array(h.disk().bytes[0 ..< 512]) == Array(b[0 ..< 512]))
        #expect(Array(h.disk().bytes[512 ..< 1024]) == Array(a[0 ..< 512]))
        // EDTL one block, CDB two blocks: only the first block written, overflow.
        #expect(h.run(CDB.rw10(0x2A, lba: 0, blocks: 2), nexus: n, write: true, dataOut: a).isGood)
        let o2 = h.run(CDB.rw10(0x2A, lba: 0, blocks: 2), nexus: n, edtl: 512, write: true, dataOut: Array(b[0 ..< 512]))
        #expect(o2.isGood && o2.residual == .overflow(512))
        #expect(Array(h.disk().bytes[512 ..< 1024]) == Array(a[0 ..< 512]))
        // EDTL shorter than a block: nothing written.
        let o3 = h.run(CDB.rw10(0x2A, lba: 0, blocks: 1), nexus: n, edtl: 200, write: true, dataOut: Array(b[0 ..< 200]))
        #expect(o3.isGood && o3.residual == .overflow(312) && o3.dataOutRequested == 0)
        let o4 = h.run(CDB.rw10(0x2A, lba: 0, blocks: 1), nexus: n, edtl: 0)
        #expect(o4.isGood && o4.residual == .overflow(512))
    }

    @Test func storeErrorsMapToSense() {
        let h = Harness()
        let n = h.ready()
        h.disk().failNextRead = .mediumError
        #expect(h.run(CDB.rw10(0x28, lba: 0, blocks: 1), nexus: n, edtl: 512, read: true).hasSense(SenseKey.mediumError, 0x11, 0))
        h.disk().failNextWrite = .noSpace
        let w = h.run(CDB.rw10(0x2A, lba: 0, blocks: 1), nexus: n, write: true, dataOut: [UInt8](repeating: 0, count: 512))
        #expect(w.hasSense(SenseKey.dataProtect, 0x27, 0x07))
        h.disk().failNextWrite = .mediumError
        let w2 = h.run(CDB.rw10(0x2A, lba: 0, blocks: 1), nexus: n, write: true, dataOut: [UInt8](repeating: 0, count: 512))
        #expect(w2.hasSense(SenseKey.mediumError, 0x0C, 0))
        h.disk().failNextRead = .unavailable
        #expect(h.run(CDB.rw10(0x28, lba: 0, blocks: 1), nexus: n, edtl: 512, read: true).hasSense(SenseKey.notReady, 0x04, 0))
        h.disk().failNextRead = .outOfRange
        #expect(h.run(CDB.rw10(0x28, lba: 0, blocks: 1), nexus: n, edtl: 512, read: true).hasSense(SenseKey.illegalRequest, 0x21, 0))
        h.disk().failNextWrite = .writeProtected
        let w3 = h.run(CDB.rw10(0x2A, lba: 0, blocks: 1), nexus: n, write: true, dataOut: [UInt8](repeating: 0, count: 512))
        #expect(w3.hasSense(SenseKey.dataProtect, 0x27, 0))
    }

    @Test func readOnlyLUNRefusesWritesAndSaysSoInModeSense() {
        let h = Harness(luns: [(0, 512, 64, StoreCapabilities(readOnly: true))])
        let n = h.ready()
        let w = h.run(CDB.rw10(0x2A, lba: 0, blocks: 1), nexus: n, write: true, dataOut: [UInt8](repeating: 0, count: 512))
        #expect(w.hasSense(SenseKey.dataProtect, 0x27, 0) && w.dataOutRequested == 0)
        let ms = h.run(CDB.modeSense6(page: 0x3F), nexus: n, edtl: 255, read: true)
        #expect(ms.dataIn[2] & 0x80 != 0)
    }

    @Test func synchronizeCacheFlushesAndChecksRange() {
        let h = Harness()
        let n = h.ready()
        #expect(h.run([0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], nexus: n).isGood)
        #expect(h.disk().flushes == 1)
        let bad = h.run([0x91, 0] + CDB.be64(4000) + CDB.be32(1) + [0, 0], nexus: n)
        #expect(bad.hasSense(SenseKey.illegalRequest, 0x21, 0))
    }

    @Test func writeCacheDisabledMakesEveryWriteFUA() {
        let h = Harness(luns: [(0, 512, 64, StoreCapabilities(hasVolatileCache: false))])
        let n = h.ready()
        #expect(h.run(CDB.rw10(0x2A, lba: 0, blocks: 1), nexus: n, write: true, dataOut: [UInt8](repeating: 0, count: 512)).isGood)
        #expect(h.disk().fuaWrites == 1)
    }
}
