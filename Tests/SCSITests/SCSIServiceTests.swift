import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import SCSITestSupport

/// MODE SENSE/SELECT, REPORT SUPPORTED OPERATION CODES, EXTENDED COPY and RECEIVE COPY RESULTS.
@Suite struct SCSIServiceTests {
    // MARK: MODE SENSE / MODE SELECT

    /// Pages in a MODE SENSE reply: code -> bytes (header included).
    func pages(_ d: [UInt8], header: Int, descriptors: Int) -> [UInt8: [UInt8]] {
        var out: [UInt8: [UInt8]] = [:]
        var p = header + descriptors
        while p + 2 <= d.count {
            let len = Int(d[p + 1]) + 2
            out[d[p] & 0x3F] = Array(d[p ..< min(d.count, p + len)])
            p += len
        }
        return out
    }

    @Test func modeSenseAllPagesWithBlockDescriptor() {
        let h = Harness()
        let n = h.ready()
        let o = h.run(CDB.modeSense6(page: 0x3F), nexus: n, edtl: 255, read: true)
        #expect(o.isGood)
        let d = o.dataIn
        #expect(Int(d[0]) == d.count - 1 && d[2] == 0x10 && d[3] == 8)
        #expect(Array(d[4 ..< 12]) == [0, 0, 0x08, 0x00, 0, 0, 0x02, 0x00])
        let p = pages(d, header: 4, descriptors: 8)
        #expect(Set(p.keys) == [0x01, 0x08, 0x0A, 0x1C])
        #expect(p[0x08]![2] & 0x04 != 0)                   // WCE on: the store has a volatile cache
        #expect(p[0x0A]!.count == 12 && p[0x1C]!.count == 12 && p[0x08]!.count == 20)
        let ten = h.run(CDB.modeSense10(page: 0x0A, llbaa: true), nexus: n, edtl: 1024, read: true)
        #expect(ten.isGood && ten.dataIn[4] & 0x01 == 1 && ten.dataIn[7] == 16)
        #expect(Int(ten.dataIn[0]) << 8 | Int(ten.dataIn[1]) == ten.dataIn.count - 2)
        // 4 bytes asked: truncated, no overflow.
        let four = h.run(CDB.modeSense6(page: 0x3F, alloc: 4), nexus: n, edtl: 4, read: true)
        #expect(four.dataIn.count == 4 && four.residual == .none)
    }

    @Test func modeSensePageControlAndBadPages() {
        let h = Harness()
        let n = h.ready()
        let chg = h.run(CDB.modeSense6(page: 0x0A, pc: 1, dbd: true), nexus: n, edtl: 255, read: true)
        #expect(chg.isGood && chg.dataIn[3] == 0 && chg.dataIn[4 + 4] == 0x08)   // SWP changeable
        let saved = h.run(CDB.modeSense6(page: 0x0A, pc: 3), nexus: n, edtl: 255, read: true)
        #expect(saved.hasSense(SenseKey.illegalRequest, 0x39, 0))
        #expect(h.run(CDB.modeSense6(page: 0x05), nexus: n, edtl: 255, read: true).hasSense(SenseKey.illegalRequest, 0x24, 0))
        #expect(h.run([0x1A, 0, 0x0A, 0x01, 255, 0], nexus: n, edtl: 255, read: true).hasSense(SenseKey.illegalRequest, 0x24, 0))
        #expect(h.run([0x1A, 0, 0x3F, 0xFF, 255, 0], nexus: n, edtl: 255, read: true).isGood)
    }

    /// libiscsi's set_swp/clear_swp: read the current control page, flip SWP, MODE SELECT it back.
    @Test func modeSelectSoftwareWriteProtectRoundTrip() {
        let h = Harness()
        let a = h.ready("iqn.2026-01.test:a")
        let b = h.ready("iqn.2026-01.test:b", isid: 2)
        let cur = h.run(CDB.modeSense6(page: 0x0A, dbd: true), nexus: a, edtl: 255, read: true)
        var page = Array(cur.dataIn[4 ..< 16])
        page[4] |= 0x08
        let list: [UInt8] = [0, 0, 0, 0] + page
        #expect(h.run([0x15, 0x10, 0, 0, UInt8(list.count), 0], nexus: a, write: true, dataOut: list).isGood)
        let ms = h.run(CDB.modeSense6(page: 0x0A, dbd: true), nexus: a, edtl: 255, read: true)
        #expect(ms.dataIn[2] & 0x80 != 0 && ms.dataIn[4 + 4] & 0x08 != 0)
        #expect(h.run(CDB.rw10(0x28, lba: 0, blocks: 1), nexus: a, edtl: 512, read: true).isGood)
        let w = h.run(CDB.rw10(0x2A, lba: 0, blocks: 1), nexus: a, write: true, dataOut: [UInt8](repeating: 0, count: 512))
        #expect(w.hasSense(SenseKey.dataProtect, 0x27, 0))
        // The other nexus learns the parameters changed, once.
        #expect(h.run([0, 0, 0, 0, 0, 0], nexus: b).hasSense(SenseKey.unitAttention, 0x2A, 0x01))
        #expect(h.run([0, 0, 0, 0, 0, 0], nexus: b).isGood)
        page[4] &= ~0x08
        #expect(h.run([0x15, 0x10, 0, 0, UInt8(list.count), 0], nexus: a, write: true, dataOut: [0, 0, 0, 0] + page).isGood)
        #expect(h.run(CDB.rw10(0x2A, lba: 0, blocks: 1), nexus: a, write: true, dataOut: [UInt8](repeating: 0, count: 512)).isGood)
        #expect(h.run([0, 0, 0, 0, 0, 0], nexus: a).isGood)   // the requester gets no UA
    }

    @Test func modeSelectRejectsUnchangeableBitsSavingAndBadLengths() {
        let h = Harness()
        let n = h.ready()
        let cur = h.run(CDB.modeSense6(page: 0x0A, dbd: true), nexus: n, edtl: 255, read: true)
        var page = Array(cur.dataIn[4 ..< 16])
        page[2] |= 0x04                                            // D_SENSE is not changeable
        let o = h.run([0x15, 0x10, 0, 0, 16, 0], nexus: n, write: true, dataOut: [0, 0, 0, 0] + page)
        #expect(o.hasSense(SenseKey.illegalRequest, 0x26, 0) && o.sense[15] == 0x80 && o.sense[17] == 6)
        #expect(h.run([0x15, 0x11, 0, 0, 16, 0], nexus: n, write: true, dataOut: [0, 0, 0, 0] + page)
            .hasSense(SenseKey.illegalRequest, 0x24, 0))
        var wrongLength = Array(cur.dataIn[4 ..< 16])
        wrongLength[1] = 9
        #expect(h.run([0x15, 0x10, 0, 0, 16, 0], nexus: n, write: true, dataOut: [0, 0, 0, 0] + wrongLength)
            .hasSense(SenseKey.illegalRequest, 0x26, 0))
        // Turning the write cache off makes writes FUA.
        let caching = h.run(CDB.modeSense6(page: 0x08, dbd: true), nexus: n, edtl: 255, read: true)
        var c = Array(caching.dataIn[4 ..< 24])
        c[2] &= ~0x04
        #expect(h.run([0x55, 0x10, 0, 0, 0, 0, 0, 0, 28, 0], nexus: n, write: true, dataOut: [0, 0, 0, 0, 0, 0, 0, 0] + c).isGood)
        #expect(h.run(CDB.rw10(0x2A, lba: 0, blocks: 1), nexus: n, write: true, dataOut: [UInt8](repeating: 0, count: 512)).isGood)
        #expect(h.disk().fuaWrites == 1)
        // A LU reset restores the defaults.
        SCSITask.logicalUnitReset(h.lun(), by: n)
        h.clearUAs(n)
        #expect(h.run(CDB.modeSense6(page: 0x08), nexus: n, edtl: 255, read: true).dataIn[12 + 2] & 0x04 != 0)
    }

    // MARK: REPORT SUPPORTED OPERATION CODES

    func rsoc(options: UInt8, opcode: UInt8 = 0, sa: UInt16 = 0, rctd: Bool = false, alloc: Int = 65535) -> [UInt8] {
        [0xA3, 0x0C, (rctd ? 0x80 : 0) | options, opcode] + CDB.be16(Int(sa)) + CDB.be32(UInt64(alloc)) + [0, 0]
    }

    @Test func reportAllOpcodesAndEachOneBack() {
        let h = Harness()
        let n = h.ready()
        let all = h.run(rsoc(options: 0), nexus: n, edtl: 65535, read: true)
        #expect(all.isGood)
        let len = all.dataIn[0 ..< 4].reduce(0) { $0 << 8 | Int($1) }
        #expect(len == all.dataIn.count - 4 && len % 8 == 0)
        var seen = 0
        var p = 4
        while p + 8 <= all.dataIn.count {
            let op = all.dataIn[p], sa = UInt16(all.dataIn[p + 2]) << 8 | UInt16(all.dataIn[p + 3])
            let servactv = all.dataIn[p + 5] & 0x01 != 0
            #expect(servactv || sa == 0)
            #expect(all.dataIn[p + 5] & 0x02 == 0)
            let one = h.run(rsoc(options: servactv ? 2 : 1, opcode: op, sa: sa), nexus: n, edtl: 65535, read: true)
            #expect(one.isGood && one.dataIn[1] & 0x07 == 3 && one.dataIn[4] == op)
            let cdbLength = Int(all.dataIn[p + 6]) << 8 | Int(all.dataIn[p + 7])
            #expect(Int(one.dataIn[2]) << 8 | Int(one.dataIn[3]) == cdbLength)
            let wrong = h.run(rsoc(options: servactv ? 1 : 2, opcode: op, sa: sa), nexus: n, edtl: 65535, read: true)
            #expect(wrong.hasSense(SenseKey.illegalRequest, 0x24, 0))
            seen += 1
            p += 8
        }
        #expect(seen > 50)
        let read10 = h.run(rsoc(options: 1, opcode: 0x28), nexus: n, edtl: 65535, read: true)
        #expect(read10.dataIn[5] & 0x18 == 0x18)
        let verify10 = h.run(rsoc(options: 1, opcode: 0x2F), nexus: n, edtl: 65535, read: true)
        #expect(verify10.dataIn[5] & 0x10 == 0x10)
        let missing = h.run(rsoc(options: 1, opcode: 0xC5), nexus: n, edtl: 65535, read: true)
        #expect(missing.isGood && missing.dataIn[1] & 0x07 == 1)
    }

    @Test func reportOpcodesWithTimeoutDescriptors() {
        let h = Harness()
        let n = h.ready()
        let all = h.run(rsoc(options: 0, rctd: true), nexus: n, edtl: 65535, read: true)
        var p = 4
        var count = 0
        while p + 20 <= all.dataIn.count {
            #expect(all.dataIn[p + 5] & 0x02 != 0)
            #expect(all.dataIn[p + 8] == 0 && all.dataIn[p + 9] == 0x0A)
            p += 20
            count += 1
        }
        #expect(p == all.dataIn.count && count > 50)
        let small = h.run(rsoc(options: 0, alloc: 1024), nexus: n, edtl: 1024, read: true)
        #expect(small.isGood && small.dataIn.count <= 1024)
    }

    // MARK: EXTENDED COPY / RECEIVE COPY RESULTS

    func targetDescriptor(naa: [UInt8]) -> [UInt8] {
        var d = [UInt8](repeating: 0, count: 32)
        d[0] = 0xE4
        d[4] = 0x01; d[5] = 0x03; d[7] = 16
        for i in 0 ..< 16 { d[8 + i] = naa[i] }
        d[30] = 0x02                                              // 512-byte blocks
        return d
    }

    func segment(src: Int, dst: Int, blocks: Int, srcLBA: UInt64, dstLBA: UInt64, type: UInt8 = 0x02) -> [UInt8] {
        [type, 0, 0, 0x18] + CDB.be16(src) + CDB.be16(dst) + [0, 0] + CDB.be16(blocks) + CDB.be64(srcLBA) + CDB.be64(dstLBA)
    }

    func xcopyList(listID: UInt8, usage: UInt8 = 0, targets: [[UInt8]], segments: [[UInt8]]) -> [UInt8] {
        let t = targets.flatMap { $0 }, s = segments.flatMap { $0 }
        return [listID, usage << 3] + CDB.be16(t.count) + [0, 0, 0, 0] + CDB.be32(UInt64(s.count)) + [0, 0, 0, 0] + t + s
    }

    func xcopy(_ h: Harness, _ n: Nexus, _ list: [UInt8]) -> Outcome {
        h.run([0x83, 0] + [UInt8](repeating: 0, count: 8) + CDB.be32(UInt64(list.count)) + [0, 0], nexus: n, write: true, dataOut: list)
    }

    func naa(_ h: Harness, _ lun: UInt64) -> [UInt8] { h.lun(lun).naa }

    @Test func extendedCopyCopiesBetweenTwoLUNsInChunks() {
        let h = Harness(luns: [(0, 512, 2048, StoreCapabilities()), (1, 512, 4096, StoreCapabilities())], bufferBytes: 65536)
        let n = h.ready()
        let data = pattern(600 * 512, seed: 4)
        h.disk(0).bytes.replaceSubrange(10 * 512 ..< 610 * 512, with: data)
        let list = xcopyList(listID: 7, targets: [targetDescriptor(naa: naa(h, 0)), targetDescriptor(naa: naa(h, 1))],
                             segments: [segment(src: 0, dst: 1, blocks: 600, srcLBA: 10, dstLBA: 3000)])
        let o = xcopy(h, n, list)
        #expect(o.isGood)
        #expect(Array(h.disk(1).bytes[3000 * 512 ..< 3600 * 512]) == data)
        #expect(h.disk(1).ops.contains { if case .write(.other(1), _, _, _, _) = $0 { return true }; return false })
        let status = h.run([0x84, 0x00, 7] + [UInt8](repeating: 0, count: 7) + CDB.be32(1024) + [0, 0], nexus: n, edtl: 1024, read: true)
        #expect(status.isGood && status.dataIn.count == 12 && status.dataIn[4] == 1)
        #expect(status.dataIn[8 ..< 12].reduce(0) { $0 << 8 | Int($1) } == data.count)
        let unknown = h.run([0x84, 0x00, 8] + [UInt8](repeating: 0, count: 7) + CDB.be32(1024) + [0, 0], nexus: n, edtl: 1024, read: true)
        #expect(unknown.hasSense(SenseKey.illegalRequest, 0x24, 0))
    }

    @Test func extendedCopyValidation() {
        let h = Harness()
        let n = h.ready()
        let t = targetDescriptor(naa: naa(h, 0))
        let good = segment(src: 0, dst: 0, blocks: 8, srcLBA: 0, dstLBA: 100)
        #expect(xcopy(h, n, []).isGood)
        // Truncated lists.
        let full = xcopyList(listID: 1, targets: [t], segments: [good])
        #expect(xcopy(h, n, Array(full[0 ..< 16 + 31])).hasSense(SenseKey.illegalRequest, 0x1A, 0))
        #expect(xcopy(h, n, Array(full[0 ..< full.count - 1])).hasSense(SenseKey.illegalRequest, 0x1A, 0))
        // Too many descriptors.
        #expect(xcopy(h, n, xcopyList(listID: 1, targets: [t, t, t], segments: [good])).hasSense(SenseKey.illegalRequest, 0x26, 0x06))
        #expect(xcopy(h, n, xcopyList(listID: 1, targets: [t], segments: Array(repeating: good, count: 17)))
            .hasSense(SenseKey.illegalRequest, 0x26, 0x08))
        // Unsupported descriptor types.
        var fc = t
        fc[0] = 0xE0
        #expect(xcopy(h, n, xcopyList(listID: 1, targets: [fc], segments: [good])).hasSense(SenseKey.illegalRequest, 0x26, 0x07))
        let stream: [UInt8] = [0x03, 0, 0, 0x10] + [UInt8](repeating: 0, count: 16)
        #expect(xcopy(h, n, xcopyList(listID: 1, targets: [t], segments: [stream])).hasSense(SenseKey.illegalRequest, 0x26, 0x09))
        // Unreachable targets and ranges abort the copy.
        #expect(xcopy(h, n, xcopyList(listID: 1, targets: [t], segments: [segment(src: 0, dst: 1, blocks: 8, srcLBA: 0, dstLBA: 0)]))
            .senseKey == SenseKey.copyAborted)
        #expect(xcopy(h, n, xcopyList(listID: 1, targets: [t], segments: [segment(src: 0, dst: 0, blocks: 8, srcLBA: 0, dstLBA: 2047)]))
            .senseKey == SenseKey.copyAborted)
        var stranger = t
        stranger[20] ^= 0xFF
        #expect(xcopy(h, n, xcopyList(listID: 1, targets: [stranger], segments: [good])).hasSense(SenseKey.copyAborted, 0x08, 0x04))
        // Operating parameters.
        let op = h.run([0x84, 0x03, 0] + [UInt8](repeating: 0, count: 7) + CDB.be32(1024) + [0, 0], nexus: n, edtl: 1024, read: true)
        #expect(op.isGood && op.dataIn[9] == 2 && op.dataIn[11] == 16 && op.dataIn[43] == 2)
    }
}
