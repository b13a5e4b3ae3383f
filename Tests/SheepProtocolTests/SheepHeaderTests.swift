import Testing
@testable import SheepProtocol

// Expected bytes are written out from the struct offsets in SHEEPDOG-PROTOCOL.md §2 (little-endian), not
// produced by the encoder under test.

@Suite struct SheepRequestHeaderVectors {
    @Test func readObjectEncodesEveryFieldAtItsOffset() {
        let h = SheepRequestHeader.readObject(id: 0x1122_3344, oid: 0x007c_2b25_0000_0003, offset: 0x2000,
                                              length: 0x1000)
        let expected: [UInt8] = [
            0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // proto_ver 1, READ_OBJ, flags 0, epoch 0
            0x44, 0x33, 0x22, 0x11, 0x00, 0x10, 0x00, 0x00,  // id, data_length 4096
            0x03, 0x00, 0x00, 0x00, 0x25, 0x2b, 0x7c, 0x00,  // oid
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // cow_oid
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // copies, copy_policy, ec_index, reserved, tgt_epoch
            0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // offset 0x2000, pad
        ]
        #expect(h.bytes == expected)
        #expect(!h.carriesPayload)
    }

    @Test func copyOnWriteCreateCarriesCowOidCopiesAndFlags() {
        let h = SheepRequestHeader.createAndWrite(id: 7, oid: 0x0000_0002_0000_0005, cowOid: 0x0000_0001_0000_0005,
                                                  offset: 512, length: 1024, copies: 3, extraFlags: .cache)
        let expected: [UInt8] = [
            0x01, 0x01, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00,  // CREATE_AND_WRITE, flags WRITE|COW|CACHE
            0x07, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00,  // id 7, data_length 1024
            0x05, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,  // oid
            0x05, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,  // cow_oid
            0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // copies 3
            0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // offset 512
        ]
        #expect(h.bytes == expected)
        #expect(h.carriesPayload)
        #expect(h.flags == [.write, .cow, .cache])
    }

    @Test func newVDIEncodesTheVDIUnion() {
        var h = SheepRequestHeader.newVDI(id: 0xABCD, size: 0x0000_0001_0000_0000, baseVID: 0x7c2b25,
                                          snapshot: true, copies: 2, copyPolicy: 0x21, storePolicy: 1,
                                          blockSizeShift: 23)
        h.lockType = .shared
        let expected: [UInt8] = [
            0x01, 0x11, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,  // NEW_VDI, WRITE
            0xCD, 0xAB, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00,  // id, data_length 256
            0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,  // vdi_size 4 GiB
            0x25, 0x2b, 0x7c, 0x00, 0x02, 0x21, 0x01, 0x17,  // base_vdi_id, copies, copy_policy, store_policy, shift
            0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,  // snapid 1, type 1
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // pad
        ]
        #expect(h.bytes == expected)
    }

    @Test func lookupAndReleaseShapes() {
        let lock = SheepRequestHeader.vdiLookup(.lockVDI, id: 1, snapID: 9, lockType: .shared)
        #expect(lock.bytes[1] == 0x12)
        #expect(Array(lock.bytes[12..<16]) == [0x00, 0x02, 0x00, 0x00])  // 512 bytes name + tag
        #expect(Array(lock.bytes[32..<40]) == [0x09, 0, 0, 0, 0x01, 0, 0, 0])
        let release = SheepRequestHeader.releaseVDI(id: 2, vid: 0x00ab_cdef)
        #expect(Array(release.bytes[0..<4]) == [0x01, 0x13, 0x00, 0x00])  // no WRITE flag, no payload
        #expect(Array(release.bytes[24..<28]) == [0xef, 0xcd, 0xab, 0x00])
        let vdis = SheepRequestHeader.readVDIs(id: 3)
        #expect(Array(vdis.bytes[12..<16]) == [0x00, 0x00, 0x20, 0x00])  // exactly 2 MiB
        let flush = SheepRequestHeader.flushVDI(id: 4, vid: 0x7c2b25)
        #expect(Array(flush.bytes[16..<24]) == [0, 0, 0, 0, 0x25, 0x2b, 0x7c, 0x80])
    }

    @Test func decodeIsTheInverseOfEncodeAtAnyAlignment() {
        var h = SheepRequestHeader.writeObject(id: 0xFFFF_FFFF, oid: 0x8000_0001_0000_0000, offset: 4664 + 8,
                                               length: 8, copies: 1, extraFlags: [.direct, .tgt])
        h.epoch = 0xDEAD_BEEF
        h.cowOid = 0x0102_0304_0506_0708
        h.objTargetEpoch = 77
        h.objECIndex = 5
        h.objCopyPolicy = 6
        var buffer = [UInt8](repeating: 0xEE, count: SheepWire.headerSizeBytes + 3)
        buffer.withUnsafeMutableBytes { raw in
            h.encode(to: raw.baseAddress! + 3)  // deliberately misaligned
            let back = SheepRequestHeader(from: UnsafeRawPointer(raw.baseAddress! + 3))
            #expect(back == h)
            #expect(back.flags == [.write, .direct, .tgt])
            #expect(back.epoch == 0xDEAD_BEEF)
            #expect(back.objTargetEpoch == 77)
            #expect(back.objECIndex == 5)
            #expect(back.objCopyPolicy == 6)
        }
        #expect(Array(buffer[0..<3]) == [0xEE, 0xEE, 0xEE])  // nothing written before the header
        #expect(Array(buffer[3 + 4..<3 + 8]) == [0xEF, 0xBE, 0xAD, 0xDE])
        #expect(Array(buffer[3 + 36..<3 + 40]) == [77, 0, 0, 0])
    }

    @Test func settersDoNotDisturbNeighbouringFields() {
        var h = SheepRequestHeader()
        h.vdiCopies = 0xFF
        h.vdiBlockSizeShift = 0xFF
        h.baseVDIID = 0
        h.vdiCopyPolicy = 0
        h.vdiStorePolicy = 0
        #expect(h.vdiCopies == 0xFF)
        #expect(h.vdiBlockSizeShift == 0xFF)
        h.flags = SheepFlags(rawValue: 0xFFFF)
        h.protoVersion = 0
        h.opcode = SheepOpcode(rawValue: 0)
        h.epoch = 0
        #expect(h.flags.rawValue == 0xFFFF)
        #expect(h.words.word0 == 0x0000_0000_FFFF_0000)
    }
}

@Suite struct SheepResponseHeaderVectors {
    @Test func vdiReplyFields() {
        var request = SheepRequestHeader.vdiLookup(.getVDIInfo, id: 0x0102_0304)
        request.epoch = 99
        var r = SheepResponseHeader(replyingTo: request, result: .noTag, epoch: 5)
        r.vdiID = 0x7c2b26
        r.attrID = 0x0A0B0C0D
        r.vdiCopies = 3
        r.vdiBlockSizeShift = 22
        let expected: [UInt8] = [
            0x00, 0x14, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00,  // proto_ver 0, GET_VDI_INFO, flags, epoch 5
            0x04, 0x03, 0x02, 0x01, 0x00, 0x00, 0x00, 0x00,  // id echoed, data_length 0
            0x0E, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // result NO_TAG, rsvd
            0x26, 0x2b, 0x7c, 0x00, 0x0D, 0x0C, 0x0B, 0x0A,  // vdi_id, attr_id
            0x03, 0x16, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // copies, block_size_shift
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ]
        #expect(r.bytes == expected)
        let back = r.bytes.withUnsafeBytes { SheepResponseHeader(from: $0.baseAddress!) }
        #expect(back == r)
        #expect(back.result == .noTag)
        #expect(back.vdiID == 0x7c2b26)
    }

    @Test func clusterDefaultAndObjectShapes() {
        var r = SheepResponseHeader()
        r.result = .success
        r.defaultCopies = 3
        r.defaultCopyPolicy = 0x42
        r.defaultBlockSizeShift = 22
        #expect(Array(r.bytes[16..<24]) == [0, 0, 0, 0, 0x03, 0x42, 0x16, 0x00])
        var o = SheepResponseHeader()
        o.result = .readonly
        o.dataLength = 4096
        o.objCopies = 2
        o.objOffset = 0x1122_3344_5566_7788
        #expect(Array(o.bytes[12..<32]) == [0x00, 0x10, 0x00, 0x00, 0x1A, 0, 0, 0, 0x02, 0, 0, 0,
                                            0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11])
    }
}

@Suite struct SheepResultCodes {
    @Test func namesMatchSheepdogProtoH() {
        #expect(SheepResult.readonly.rawValue == 0x1A)
        #expect(SheepResult.readonly.name == "READONLY")
        #expect(SheepResult.waitForJoin.rawValue == 0x17)
        #expect(SheepResult.halt.name == "HALT")
        #expect(SheepResult.inodeInvalidated.rawValue == 0x1D)
        #expect(SheepResult.collectingClusterInfo.rawValue == 0x95)
        #expect(SheepResult(rawValue: 0x77).name == "0x77")
    }

    @Test func parsesNamesAndNumbers() {
        #expect(SheepResult(name: "WAIT_FOR_JOIN") == .waitForJoin)
        #expect(SheepResult(name: "sd_res_eio") == .eio)
        #expect(SheepResult(name: "0x19") == .halt)
        #expect(SheepResult(name: "26") == .readonly)
        #expect(SheepResult(name: "NOT_A_CODE") == nil)
    }

    @Test func transientCodes() {
        #expect(SheepResult.waitForJoin.isTransient)
        #expect(SheepResult.halt.isTransient)
        #expect(!SheepResult.eio.isTransient)
        #expect(!SheepResult.noObj.isTransient)
        #expect(!SheepResult.readonly.isTransient)
    }
}
