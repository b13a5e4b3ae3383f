import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import SCSITestSupport

@Suite struct SCSIBlockCommandTests {
    // MARK: VERIFY

    @Test func verifyWithBytchkComparesAndReportsTheMiscompareOffset() {
        let h = Harness(bufferBytes: 65536)
        let n = h.ready()
        let data = pattern(200 * 512, seed: 5)
        h.disk().bytes.replaceSubrange(512 ..< 512 + data.count, with: data)
        let ok = h.run(CDB.rw10(0x2F, lba: 1, blocks: 200, flags: 0x02), nexus: n, write: true, dataOut: data)
        #expect(ok.isGood && ok.dataOutRequested == data.count)
        var bad = data
        bad[150 * 512 + 7] ^= 0x58
        let o = h.run(CDB.rw16(0x8F, lba: 1, blocks: 200, flags: 0x02), nexus: n, write: true, dataOut: bad)
        #expect(o.hasSense(SenseKey.miscompare, 0x1D, 0))
        #expect(o.sense[0] & 0x80 != 0 && o.information == UInt32(150 * 512 + 7))
        // BYTCHK 0 does not look at data.
        let noCmp = h.run(CDB.rw12(0xAF, lba: 1, blocks: 200), nexus: n)
        #expect(noCmp.isGood && noCmp.dataOutRequested == 0)
        #expect(h.run(CDB.rw10(0x2F, lba: 0, blocks: 1, flags: 0x20 | 0x02), nexus: n, write: true,
                      dataOut: Array(data[0 ..< 512])).hasSense(SenseKey.illegalRequest, 0x24, 0))
        #expect(h.run(CDB.rw10(0x2F, lba: 2049, blocks: 0, flags: 0x02), nexus: n).hasSense(SenseKey.illegalRequest, 0x21, 0))
    }

    @Test func verifyBytchk3ComparesOneBlockAgainstEveryBlock() {
        let h = Harness()
        let n = h.ready()
        let block = pattern(512, seed: 9)
        for b in 10 ..< 14 { h.disk().bytes.replaceSubrange(b * 512 ..< (b + 1) * 512, with: block) }
        #expect(h.run(CDB.rw10(0x2F, lba: 10, blocks: 4, flags: 0x06), nexus: n, write: true, dataOut: block).isGood)
        h.disk().bytes[13 * 512 + 3] ^= 1
        let o = h.run(CDB.rw10(0x2F, lba: 10, blocks: 4, flags: 0x06), nexus: n, write: true, dataOut: block)
        #expect(o.hasSense(SenseKey.miscompare, 0x1D, 0) && o.information == UInt32(3 * 512 + 3))
    }

    // MARK: WRITE AND VERIFY, ORWRITE

    @Test func writeAndVerifyWritesDurably() {
        let h = Harness()
        let n = h.ready()
        let data = pattern(1024, seed: 2)
        let o = h.run(CDB.rw10(0x2E, lba: 4, blocks: 2, flags: 0x02), nexus: n, write: true, dataOut: data)
        #expect(o.isGood && Array(h.disk().bytes[2048 ..< 3072]) == data && h.disk().fuaWrites == 1)
    }

    @Test func orWriteORsWithTheMediumAcrossChunks() {
        let h = Harness(luns: [(0, 512, 1024, StoreCapabilities())], bufferBytes: 65536)
        let n = h.ready()
        let blocks = 300
        h.disk().bytes.replaceSubrange(0 ..< blocks * 512, with: [UInt8](repeating: 0xA5, count: blocks * 512))
        let o = h.run(CDB.rw16(0x8B, lba: 0, blocks: UInt32(blocks)), nexus: n, write: true,
                      dataOut: [UInt8](repeating: 0x5A, count: blocks * 512))
        #expect(o.isGood)
        #expect(h.disk().bytes[0 ..< blocks * 512].allSatisfy { $0 == 0xFF })
        #expect(h.disk().bytes[blocks * 512] == 0)
        #expect(h.run(CDB.rw16(0x8B, lba: 0, blocks: 1, flags: 0x40), nexus: n, write: true,
                      dataOut: [UInt8](repeating: 0, count: 512)).hasSense(SenseKey.illegalRequest, 0x24, 0))
        #expect(h.run(CDB.rw16(0x8B, lba: 1025, blocks: 0), nexus: n).hasSense(SenseKey.illegalRequest, 0x21, 0))
    }

    // MARK: COMPARE AND WRITE

    func caw(lba: UInt64, blocks: UInt8, flags: UInt8 = 0) -> [UInt8] {
        [Opcode.compareAndWrite, flags] + CDB.be64(lba) + [0, 0, 0, blocks, 0, 0]
    }

    @Test func compareAndWriteWritesOnMatchAndReportsMiscompareOffset() {
        let h = Harness()
        let n = h.ready()
        let old = [UInt8](repeating: 0x41, count: 1024)
        let new = [UInt8](repeating: 0x42, count: 1024)
        h.disk().bytes.replaceSubrange(0 ..< 1024, with: old)
        #expect(h.run(caw(lba: 0, blocks: 2), nexus: n, write: true, dataOut: old + new).isGood)
        #expect(Array(h.disk().bytes[0 ..< 1024]) == new)
        var verify = new
        verify[1024 - 27] = 0x43
        let o = h.run(caw(lba: 0, blocks: 2), nexus: n, write: true, dataOut: verify + old)
        #expect(o.hasSense(SenseKey.miscompare, 0x1D, 0) && o.information == UInt32(1024 - 27))
        #expect(Array(h.disk().bytes[0 ..< 1024]) == new)   // untouched
    }

    /// Only a multipath sheep LU shares COMPARE AND WRITE's section with other gateways: a LU of one gateway
    /// (here a file-like disk) asks its store for no section step, matched or not.
    @Test func compareAndWriteOnASingleGatewayLUTakesNoSharedSection() {
        let h = Harness()
        let n = h.ready()
        let old = [UInt8](repeating: 0x41, count: 512), new = [UInt8](repeating: 0x42, count: 512)
        h.disk().bytes.replaceSubrange(0 ..< 512, with: old)
        #expect(h.run(caw(lba: 0, blocks: 1), nexus: n, write: true, dataOut: old + new).isGood)
        #expect(h.run(caw(lba: 0, blocks: 1), nexus: n, write: true, dataOut: old + new).hasSense(SenseKey.miscompare, 0x1D, 0))
        #expect(!h.disk().ops.contains { if case .compareSection = $0 { return true } else { return false } })
    }

    @Test func compareAndWriteRejectsWrongDataOutLengthAndTooManyBlocks() {
        let h = Harness(bufferBytes: 65536)
        let n = h.ready()
        let data = [UInt8](repeating: 0, count: 4 * 512)
        let o = h.run(caw(lba: 0, blocks: 1), nexus: n, write: true, dataOut: data)
        #expect(o.hasSense(SenseKey.illegalRequest, 0x24, 0) && o.dataOutRequested == 0)
        let bl = h.run(CDB.inquiry(evpd: true, page: 0xB0), nexus: n, edtl: 255, read: true)
        let maxCAW = Int(bl.dataIn[5])
        #expect(maxCAW == 65536 / (3 * 512))
        let tooBig = h.run(caw(lba: 0, blocks: UInt8(maxCAW + 1)), nexus: n, write: true,
                           dataOut: [UInt8](repeating: 0, count: 2 * (maxCAW + 1) * 512))
        #expect(tooBig.hasSense(SenseKey.illegalRequest, 0x24, 0))
        #expect(h.run(caw(lba: 0, blocks: UInt8(maxCAW)), nexus: n, write: true,
                      dataOut: [UInt8](repeating: 0, count: 2 * maxCAW * 512)).isGood)
        #expect(h.run(caw(lba: 2048, blocks: 1), nexus: n, write: true, dataOut: [UInt8](repeating: 0, count: 1024))
            .hasSense(SenseKey.illegalRequest, 0x21, 0))
    }

    // MARK: WRITE SAME

    func ws10(lba: UInt32, blocks: Int, flags: UInt8 = 0) -> [UInt8] { CDB.rw10(0x41, lba: lba, blocks: blocks, flags: flags) }

    @Test func writeSameReplicatesTheBlockAcrossChunks() {
        let h = Harness(luns: [(0, 512, 4096, StoreCapabilities())], bufferBytes: 65536)
        let n = h.ready()
        let block = pattern(512, seed: 77)
        let o = h.run(ws10(lba: 3, blocks: 300), nexus: n, write: true, dataOut: block)
        #expect(o.isGood)
        for b in 3 ..< 303 { #expect(Array(h.disk().bytes[b * 512 ..< (b + 1) * 512]) == block) }
        #expect(h.disk().bytes[303 * 512] == 0 && h.disk().bytes[3 * 512 - 1] == 0)
    }

    @Test func writeSameUnmapDeallocatesWhateverTheBlockHolds() {
        let h = Harness()
        let n = h.ready()
        h.disk().bytes.replaceSubrange(0 ..< 4096, with: [UInt8](repeating: 0xFF, count: 4096))
        let o = h.run(ws10(lba: 0, blocks: 8, flags: 0x08), nexus: n, write: true, dataOut: [UInt8](repeating: 0xFF, count: 512))
        #expect(o.isGood)
        #expect(h.disk().ops.contains(.discard(target: .own, offset: 0, length: 4096)))
        #expect(h.disk().isUnmapped(0) && h.disk().isUnmapped(4095))
        let r = h.run(CDB.rw10(0x28, lba: 0, blocks: 8), nexus: n, edtl: 4096, read: true)
        #expect(r.dataIn.allSatisfy { $0 == 0 })
        // Zero blocks with UNMAP: deallocate to the end of the medium.
        let end = h.run(CDB.rw16(0x93, lba: 2000, blocks: 0, flags: 0x08), nexus: n, write: true,
                        dataOut: [UInt8](repeating: 0, count: 512))
        #expect(end.isGood && h.disk().ops.contains(.discard(target: .own, offset: 2000 * 512, length: 48 * 512)))
    }

    @Test func writeSameFieldChecks() {
        let h = Harness()
        let n = h.ready()
        let z = [UInt8](repeating: 0, count: 512)
        // ANCHOR without UNMAP, and ANCHOR with it (anchored LBAs are not supported).
        #expect(h.run(ws10(lba: 0, blocks: 1, flags: 0x10), nexus: n, write: true, dataOut: z).hasSense(SenseKey.illegalRequest, 0x24, 0))
        #expect(h.run(ws10(lba: 0, blocks: 1, flags: 0x18), nexus: n, write: true, dataOut: z).hasSense(SenseKey.illegalRequest, 0x24, 0))
        // Data-out must be exactly one block.
        #expect(h.run(ws10(lba: 0, blocks: 1, flags: 0x08), nexus: n, write: true, dataOut: Array(z[0 ..< 256]))
            .hasSense(SenseKey.illegalRequest, 0x24, 0))
        #expect(h.run(ws10(lba: 0, blocks: 1, flags: 0x08), nexus: n, write: true, dataOut: z + z)
            .hasSense(SenseKey.illegalRequest, 0x24, 0))
        // Zero blocks: to the end of the medium.
        h.disk().bytes.replaceSubrange(2040 * 512 ..< 2048 * 512, with: [UInt8](repeating: 1, count: 8 * 512))
        #expect(h.run(ws10(lba: 2040, blocks: 0), nexus: n, write: true, dataOut: z).isGood)
        #expect(h.disk().bytes[2040 * 512 ..< 2048 * 512].allSatisfy { $0 == 0 })
        #expect(h.run(ws10(lba: 2049, blocks: 0), nexus: n, write: true, dataOut: z).hasSense(SenseKey.illegalRequest, 0x21, 0))
        #expect(h.run(ws10(lba: 2047, blocks: 2), nexus: n, write: true, dataOut: z).hasSense(SenseKey.illegalRequest, 0x21, 0))
        // UNMAP on a store that cannot deallocate is refused, consistent with LBPWS = 0.
        let h2 = Harness(luns: [(0, 512, 64, StoreCapabilities())])
        let n2 = h2.ready()
        #expect(h2.run(ws10(lba: 0, blocks: 1, flags: 0x08), nexus: n2, write: true, dataOut: z).hasSense(SenseKey.illegalRequest, 0x24, 0))
    }

    @Test func writeSame16WithNDOBWritesZerosWithoutDataOut() {
        let h = Harness(luns: [(0, 512, 64, StoreCapabilities())])
        let n = h.ready()
        h.disk().bytes.replaceSubrange(0 ..< 1024, with: [UInt8](repeating: 7, count: 1024))
        let o = h.run(CDB.rw16(0x93, lba: 0, blocks: 2, flags: 0x01), nexus: n)
        #expect(o.isGood && o.dataOutRequested == 0 && h.disk().bytes[0 ..< 1024].allSatisfy { $0 == 0 })
    }

    // MARK: UNMAP

    func unmapCDB(length: Int, anchor: Bool = false) -> [UInt8] { [0x42, anchor ? 1 : 0, 0, 0, 0, 0, 0] + CDB.be16(length) + [0] }

    func unmapList(_ ranges: [(UInt64, UInt32)]) -> [UInt8] {
        var d: [UInt8] = CDB.be16(6 + 16 * ranges.count) + CDB.be16(16 * ranges.count) + [0, 0, 0, 0]
        for (lba, n) in ranges { d += CDB.be64(lba) + CDB.be32(UInt64(n)) + [0, 0, 0, 0] }
        return d
    }

    @Test func unmapDiscardsEveryDescriptorAfterValidatingAll() {
        let h = Harness()
        let n = h.ready()
        let list = unmapList([(0, 4), (10, 0), (100, 28)])
        let o = h.run(unmapCDB(length: list.count), nexus: n, write: true, dataOut: list)
        #expect(o.isGood)
        let discards = h.disk().ops.filter { if case .discard = $0 { return true }; return false }
        #expect(discards == [.discard(target: .own, offset: 0, length: 2048), .discard(target: .own, offset: 51200, length: 14336)])
        // One bad descriptor: nothing is discarded.
        h.disk().ops.removeAll()
        let bad = unmapList([(0, 4), (2047, 2)])
        #expect(h.run(unmapCDB(length: bad.count), nexus: n, write: true, dataOut: bad).hasSense(SenseKey.illegalRequest, 0x21, 0))
        #expect(h.disk().ops.isEmpty)
    }

    @Test func unmapParameterListErrors() {
        let h = Harness()
        let n = h.ready()
        #expect(h.run(unmapCDB(length: 0), nexus: n).isGood)
        #expect(h.run(unmapCDB(length: 4), nexus: n, write: true, dataOut: [0, 0, 0, 0]).hasSense(SenseKey.illegalRequest, 0x1A, 0))
        // Block descriptor data length points past the list.
        var lying = unmapList([(0, 1)])
        lying[3] = 32
        #expect(h.run(unmapCDB(length: lying.count), nexus: n, write: true, dataOut: lying).hasSense(SenseKey.illegalRequest, 0x1A, 0))
        // Too many descriptors.
        let many = unmapList((0 ..< 257).map { (UInt64($0), UInt32(1)) })
        #expect(h.run(unmapCDB(length: many.count), nexus: n, write: true, dataOut: many).hasSense(SenseKey.illegalRequest, 0x26, 0))
        // ANCHOR is not supported.
        let one = unmapList([(0, 1)])
        #expect(h.run(unmapCDB(length: one.count, anchor: true), nexus: n, write: true, dataOut: one).hasSense(SenseKey.illegalRequest, 0x24, 0))
        // A LUN that cannot deallocate does not implement UNMAP.
        let h2 = Harness(luns: [(0, 512, 64, StoreCapabilities())])
        let n2 = h2.ready()
        #expect(h2.run(unmapCDB(length: one.count), nexus: n2, write: true, dataOut: one).hasSense(SenseKey.illegalRequest, 0x20, 0))
    }

    // MARK: GET LBA STATUS

    func getLBAStatus(lba: UInt64, alloc: Int) -> [UInt8] { [0x9E, 0x12] + CDB.be64(lba) + CDB.be32(UInt64(alloc)) + [0, 0] }

    func descriptors(_ o: Outcome) -> [(lba: UInt64, blocks: UInt32, status: UInt8)] {
        var out: [(UInt64, UInt32, UInt8)] = []
        var p = 8
        while p + 16 <= o.dataIn.count {
            let d = Array(o.dataIn[p ..< p + 16])
            let lba = d[0 ..< 8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            let n = d[8 ..< 12].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            out.append((lba, n, d[12]))
            p += 16
        }
        return out
    }

    @Test func getLBAStatusDescribesExtentsFromTheStartingLBA() {
        let h = Harness()
        let n = h.ready()
        h.disk().unmap(UInt64(8 * 512) ..< UInt64(16 * 512))
        let o = h.run(getLBAStatus(lba: 4, alloc: 1024), nexus: n, edtl: 1024, read: true)
        #expect(o.isGood)
        let d = descriptors(o)
        #expect(d.count == 3)
        #expect(d[0].lba == 4 && d[0].blocks == 4 && d[0].status == 0)
        #expect(d[1].lba == 8 && d[1].blocks == 8 && d[1].status == 1)
        #expect(d[2].lba == 16 && d[2].blocks == 2048 - 16 && d[2].status == 0)
        let len = o.dataIn[0 ..< 4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        #expect(Int(len) == o.dataIn.count - 4)
        #expect(h.run(getLBAStatus(lba: 2048, alloc: 24), nexus: n, edtl: 24, read: true).hasSense(SenseKey.illegalRequest, 0x21, 0))
        #expect(h.run(getLBAStatus(lba: UInt64.max, alloc: 24), nexus: n, edtl: 24, read: true).hasSense(SenseKey.illegalRequest, 0x21, 0))
    }

    @Test func getLBAStatusTerminatesOnAFragmentedStore() {
        let h = Harness(luns: [(0, 512, 100_000, StoreCapabilities(canDiscard: true, canReportMapping: true))])
        let n = h.ready()
        // Every other block deallocated: an extent per block.
        for b in stride(from: 0, to: 100_000, by: 2) { h.disk().unmapped.append(UInt64(b * 512) ..< UInt64(b * 512 + 512)) }
        let o = h.run(getLBAStatus(lba: 0, alloc: 65536), nexus: n, edtl: 65536, read: true)
        #expect(o.isGood)
        let queries = h.disk().ops.filter { if case .mapStatus = $0 { return true }; return false }.count
        #expect(queries <= LBAStatus.maxQueries)
        let d = descriptors(o)
        #expect(d.count <= LBAStatus.maxDescriptors && !d.isEmpty)
        for (i, x) in d.enumerated() { #expect(x.lba == UInt64(i) && x.blocks == 1 && x.status == UInt8(i % 2 == 0 ? 1 : 0)) }
        // A short allocation length still terminates and truncates.
        let small = h.run(getLBAStatus(lba: 0, alloc: 24), nexus: n, edtl: 24, read: true)
        #expect(small.isGood && small.dataIn.count == 24)
    }

    @Test func getLBAStatusWithoutMappingSupportReportsOneMappedExtent() {
        let h = Harness(luns: [(0, 512, 64, StoreCapabilities())])
        let n = h.ready()
        let o = h.run(getLBAStatus(lba: 10, alloc: 24), nexus: n, edtl: 24, read: true)
        #expect(o.isGood && h.disk().ops.isEmpty)
        let d = descriptors(o)
        #expect(d.count == 1 && d[0].lba == 10 && d[0].blocks == 54 && d[0].status == 0)
    }

    // MARK: PRE-FETCH

    @Test func prefetchChecksRangeAndCompletesGood() {
        let h = Harness()
        let n = h.ready()
        #expect(h.run([0x34, 0, 0, 0, 0, 0, 0, 0, 16, 0], nexus: n).status == SCSIStatus.good)
        #expect(h.disk().ops.contains(.prefetch(target: .own, offset: 0, length: 16 * 512)))
        #expect(h.run([0x90, 0] + CDB.be64(2048) + CDB.be32(1) + [0, 0], nexus: n).hasSense(SenseKey.illegalRequest, 0x21, 0))
        #expect(h.run([0x34, 0, 0, 0, 0, 0, 0, 0, 0, 0], nexus: n).isGood)
    }
}
