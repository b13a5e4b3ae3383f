import Testing
@testable import SheepProtocol

@Suite struct SheepOIDHelpers {
    @Test func inodeAndDataOids() {
        #expect(SheepOID.inode(vid: 0x7c2b25) == 0x807c_2b25_0000_0000)
        #expect(SheepOID.data(vid: 0x7c2b25, index: 0x000F_FFFF) == 0x007c_2b25_000F_FFFF)
        #expect(SheepOID.vid(of: 0x807c_2b25_0000_0000) == 0x7c2b25)
        #expect(SheepOID.vid(of: 0x007c_2b25_0000_0010) == 0x7c2b25)
        #expect(SheepOID.dataIndex(of: 0x007c_2b25_0000_0010) == 0x10)
        // The VID is 24 bits: higher bits of a too-large VID do not leak into the type bits.
        #expect(SheepOID.inode(vid: 0xFF00_0001) == 0x8000_0001_0000_0000)
    }

    @Test func objectKinds() {
        #expect(SheepOID.isInode(0x8000_0001_0000_0000))
        #expect(!SheepOID.isData(0x8000_0001_0000_0000))
        #expect(SheepOID.isData(0x0000_0001_0000_0007))
        #expect(!SheepOID.isInode(0x0000_0001_0000_0007))
        #expect(!SheepOID.isData(0x4000_0001_0000_0000))  // VM state
        #expect(!SheepOID.isData(0x2000_0001_0000_0000))  // attribute
        #expect(!SheepOID.isData(0x1000_0001_0000_0000))  // B-tree node
        #expect(!SheepOID.isData(0x0800_0001_0000_0000))  // ledger
    }
}

@Suite struct SheepInodeLayoutTests {
    @Test func sizesFromProtoH() {
        #expect(SheepInodeLayout.headerSizeBytes == 4664)
        #expect(SheepInodeLayout.clientInodeSizeBytes == 4_198_968)
        #expect(SheepInodeLayout.fullInodeSizeBytes == 12_587_576)
        #expect(SheepInodeLayout.slotOffset(0) == 4664)
        #expect(SheepInodeLayout.slotOffset(10) == 4704)
        #expect(SheepInodeLayout.slotOffset(0xF_FFFF) == 4_198_964)
        #expect(SheepInodeLayout.maxFlatVDISizeBytesAtDefaultShift == 4_398_046_511_104)
    }

    @Test func slotRangesOnlyForWholeAlignedSlots() {
        #expect(SheepInodeLayout.slotRange(offset: 4664, length: 4) == 0..<1)
        #expect(SheepInodeLayout.slotRange(offset: 4664 + 40, length: 12) == 10..<13)
        #expect(SheepInodeLayout.slotRange(offset: 4662, length: 4) == nil)
        #expect(SheepInodeLayout.slotRange(offset: 4665, length: 4) == nil)
        #expect(SheepInodeLayout.slotRange(offset: 4664, length: 3) == nil)
        #expect(SheepInodeLayout.slotRange(offset: 4_198_964, length: 8) == nil)
    }

    @Test func headerFieldsSitAtTheirOffsets() {
        let h = SheepInodeHeader(name: "vol", tag: "snap1", createTime: 0x0102_0304_0506_0708,
                                 snapCTime: 0x1111_2222_3333_4444, vmClockNsec: 5, vdiSize: 1 << 30,
                                 vmStateSize: 6, copyPolicy: 0x21, storePolicy: 1, nrCopies: 3,
                                 blockSizeShift: 22, snapID: 2, vdiID: 0x7c2b25, parentVDIID: 0x7c2b24,
                                 btreeCounter: 9)
        let b = h.bytes
        #expect(b.count == 572)
        #expect(Array(b[0..<4]) == [0x76, 0x6f, 0x6c, 0x00])
        #expect(b[255] == 0)
        #expect(Array(b[256..<262]) == [0x73, 0x6e, 0x61, 0x70, 0x31, 0x00])
        #expect(Array(b[512..<520]) == [0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01])
        #expect(Array(b[520..<528]) == [0x44, 0x44, 0x33, 0x33, 0x22, 0x22, 0x11, 0x11])
        #expect(b[528] == 5)
        #expect(Array(b[536..<544]) == [0, 0, 0, 0x40, 0, 0, 0, 0])
        #expect(b[544] == 6)
        #expect(Array(b[552..<556]) == [0x21, 0x01, 0x03, 0x16])
        #expect(Array(b[556..<572]) == [2, 0, 0, 0, 0x25, 0x2b, 0x7c, 0, 0x24, 0x2b, 0x7c, 0, 9, 0, 0, 0])
        #expect(SheepInodeHeader(bytes: b) == h)
        #expect(h.isSnapshot)
        #expect(h.objectSizeBytes == 4 << 20)
        #expect(SheepInodeHeader(bytes: Array(b[0..<571])) == nil)
    }

    @Test func slotLoadAndStore() {
        var image = [UInt8](repeating: 0, count: SheepInodeLayout.headerSizeBytes + 16)
        image.withUnsafeMutableBytes { raw in
            SheepInodeLayout.storeSlot(raw.baseAddress!, 2, 0x00ab_cdef)
            #expect(SheepInodeLayout.loadSlot(UnsafeRawPointer(raw.baseAddress!), 2) == 0x00ab_cdef)
            #expect(SheepInodeLayout.loadSlot(UnsafeRawPointer(raw.baseAddress!), 1) == 0)
        }
        #expect(Array(image[4672..<4676]) == [0xef, 0xcd, 0xab, 0x00])
    }

    @Test func badShiftHasNoObjectSize() {
        #expect(SheepInodeHeader(blockSizeShift: 0).objectSizeBytes == nil)
        #expect(SheepInodeHeader(blockSizeShift: 19).objectSizeBytes == nil)
        #expect(SheepInodeHeader(blockSizeShift: 32).objectSizeBytes == nil)
        #expect(SheepInodeHeader(blockSizeShift: 31).objectSizeBytes == 1 << 31)
    }
}

@Suite struct SheepVDINameTests {
    @Test func fnvHashMatchesSheepdog() {
        // "test" → 0x7c2b25 is quoted in `dog vdi list` output (sheepdog#72).
        #expect(SheepVDIName.hash("test") == 0x7c2b25)
        // FNV-1a 64 of "" is the offset basis; masked to 24 bits.
        #expect(SheepVDIName.hash("") == 0x222325)  // 0xcbf29ce484222325
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c (published FNV test vector).
        #expect(SheepVDIName.hash("a") == 0x01ec8c)
    }

    @Test func payloadIsZeroPaddedNameThenTag() throws {
        let p = try SheepVDIName.payload(name: "vol", tag: "t1")
        #expect(p.count == 512)
        #expect(Array(p[0..<4]) == [0x76, 0x6f, 0x6c, 0])
        #expect(Array(p[256..<259]) == [0x74, 0x31, 0])
        #expect(p[4..<256].allSatisfy { $0 == 0 })
        let n = try SheepVDIName.payload(name: "vol", includeTag: false)
        #expect(n.count == 256)
    }

    @Test func rejectsBadNames() {
        #expect(throws: SheepVDINameError.empty(what: "VDI name")) { try SheepVDIName.payload(name: "") }
        #expect(throws: SheepVDINameError.tooLong(what: "VDI name", bytes: 256)) {
            try SheepVDIName.payload(name: String(repeating: "x", count: 256))
        }
        #expect(throws: SheepVDINameError.containsNUL(what: "snapshot tag")) {
            try SheepVDIName.payload(name: "a", tag: "b\u{0}c")
        }
        #expect((try? SheepVDIName.payload(name: String(repeating: "x", count: 255))) != nil)
    }

    @Test func decodeStopsAtNUL() {
        var buf = [UInt8](repeating: 0, count: 256)
        buf[0] = 0x61; buf[1] = 0x62; buf[3] = 0x63
        let s = buf.withUnsafeBytes { SheepVDIName.decode($0.baseAddress!, capacity: 256) }
        #expect(s == "ab")
        let full = [UInt8](repeating: 0x7A, count: 256)
        #expect(full.withUnsafeBytes { SheepVDIName.decode($0.baseAddress!, capacity: 256) }.count == 256)
    }
}
