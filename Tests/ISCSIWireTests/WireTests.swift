import Testing
import ISCSIWire

@Suite struct SerialTests {
    @Test func comparesAcrossTheWrap() {
        #expect(Serial.lessThan(0xFFFF_FFFF, 0))
        #expect(Serial.greaterThan(0, 0xFFFF_FFFF))
        #expect(Serial.lessThan(0xFFFF_FFF0, 5))
        #expect(!Serial.lessThan(5, 0xFFFF_FFF0))
        #expect(Serial.distance(from: 0xFFFF_FFFE, to: 1) == 3)
        #expect(Serial.distance(from: 1, to: 0xFFFF_FFFE) == -3)
    }

    @Test func equalNumbersAreNeitherLessNorGreater() {
        for n: UInt32 in [0, 1, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF] {
            #expect(!Serial.lessThan(n, n))
            #expect(!Serial.greaterThan(n, n))
            #expect(Serial.atLeast(n, n))
        }
    }

    @Test func theLargestDistanceStillOrders() {
        // 2^31 - 1 apart is the farthest RFC 1982 defines.
        #expect(Serial.lessThan(0, 0x7FFF_FFFF))
        #expect(Serial.greaterThan(0x7FFF_FFFF, 0))
        #expect(Serial.lessThan(0x8000_0000, 0xFFFF_FFFF))
        // Exactly 2^31 apart is undefined in RFC 1982; the signed distance puts the second first, both ways.
        #expect(Serial.lessThan(0x8000_0000, 0))
        #expect(Serial.lessThan(0, 0x8000_0000))
    }

    @Test func windowEdgesAndWrap() {
        #expect(Serial.inWindow(10, low: 10, high: 20))
        #expect(Serial.inWindow(20, low: 10, high: 20))
        #expect(!Serial.inWindow(9, low: 10, high: 20))
        #expect(!Serial.inWindow(21, low: 10, high: 20))
        // A window that wraps past 2^32.
        #expect(Serial.inWindow(0xFFFF_FFFF, low: 0xFFFF_FFF0, high: 5))
        #expect(Serial.inWindow(0, low: 0xFFFF_FFF0, high: 5))
        #expect(Serial.inWindow(5, low: 0xFFFF_FFF0, high: 5))
        #expect(!Serial.inWindow(6, low: 0xFFFF_FFF0, high: 5))
        #expect(!Serial.inWindow(0xFFFF_FFEF, low: 0xFFFF_FFF0, high: 5))
        // MaxCmdSN = ExpCmdSN - 1: the window is closed (RFC 7143 §4.2.2.1).
        #expect(!Serial.inWindow(10, low: 10, high: 9))
        #expect(!Serial.inWindow(0, low: 0, high: 0xFFFF_FFFF))
    }
}

@Suite struct LUNTests {
    @Test func peripheralBelow256() {
        #expect(encodeLUN(0) == 0)
        #expect(encodeLUN(5) == 0x0005_0000_0000_0000)
        #expect(encodeLUN(255) == 0x00FF_0000_0000_0000)
        for lun: UInt64 in [0, 1, 5, 255] { #expect(decodeLUN(encodeLUN(lun)) == lun) }
    }

    @Test func flatSpaceFrom256() {
        #expect(encodeLUN(256) == 0x4100_0000_0000_0000)
        #expect(encodeLUN(300) == 0x412C_0000_0000_0000)
        #expect(encodeLUN(16383) == 0x7FFF_0000_0000_0000)
        for lun: UInt64 in [256, 300, 1000, 16383] { #expect(decodeLUN(encodeLUN(lun)) == lun) }
        // A small LUN in flat form (some initiators send it) decodes too.
        #expect(decodeLUN(0x4005_0000_0000_0000) == 5)
    }

    @Test func otherAddressingIsNotServed() {
        #expect(decodeLUN(0x8000_0000_0000_0000) == UInt64.max)   // logical unit addressing
        #expect(decodeLUN(0xC000_0000_0000_0000) == UInt64.max)   // extended
    }
}

@Suite struct BuilderRoundTripTests {
    private func withHeader(_ body: (UnsafeMutableRawPointer) -> Void) {
        let h = UnsafeMutableRawPointer.allocate(byteCount: bhsBytes + Framing.digestBytes, alignment: 8)
        defer { h.deallocate() }
        h.initializeMemory(as: UInt8.self, repeating: 0xA5, count: bhsBytes + Framing.digestBytes)
        body(h)
    }

    /// The target's builders read back through BHS's named target-side fields, as an initiator reads them.
    @Test func targetFieldsByName() {
        withHeader { h in
            PDUBuild.dataIn(h, itt: 0x11, lunField: encodeLUN(1), dataSN: 2, bufferOffset: 8192, length: 4096,
                            final: true, status: 0x02, residual: .underflow(512))
            PDUBuild.setSequence(h, statSN: 0xFFFF_FFFF, expCmdSN: 5, maxCmdSN: 36)
            let b = BHS(h)
            #expect(b.hasStatus && b.hasResidual && b.status == 0x02)
            #expect(b.statSN == 0xFFFF_FFFF && b.expCmdSN == 5 && b.maxCmdSN == 36)
            #expect(b.itt == 0x11 && b.bufferOffset == 8192 && b.dataSN == 2)
        }
        withHeader { h in
            PDUBuild.dataIn(h, itt: 1, lunField: 0, dataSN: 0, bufferOffset: 0, length: 512, final: false,
                            status: nil, residual: .none)
            #expect(!BHS(h).hasStatus && !BHS(h).hasResidual)
        }
        withHeader { h in
            PDUBuild.scsiResponse(h, itt: 3, status: 0, response: 1, residual: .none, dataLength: 0)
            #expect(BHS(h).response == 1 && BHS(h).status == 0 && !BHS(h).hasResidual)
        }
        withHeader { h in
            PDUBuild.r2t(h, itt: 4, ttt: 0x77, lunField: 0, r2tSN: 0, bufferOffset: 65_536, desiredLength: 131_072)
            #expect(BHS(h).ttt == 0x77 && BHS(h).bufferOffset == 65_536 && BHS(h).desiredDataTransferLength == 131_072)
        }
        withHeader { h in
            PDUBuild.asyncMessage(h, event: 3, lunField: 0, parameter1: 0, parameter2: 0, parameter3: 0, dataLength: 0)
            #expect(BHS(h).asyncEvent == 3)
        }
    }

    @Test func scsiCommand() {
        withHeader { h in
            InitiatorPDUBuild.scsiCommand(h, read: false, write: true, final: false, lunField: encodeLUN(300),
                                          itt: 0x0102_0304, expectedLength: 65_536, cmdSN: 0xFFFF_FFFF,
                                          expStatSN: 7, immediateLength: 8192)
            let b = BHS(h)
            #expect(b.opcode == ISCSIOpcode.scsiCommand)
            #expect(!b.immediate && !b.final)
            #expect(b.byte1 & 0x20 != 0 && b.byte1 & 0x40 == 0)
            #expect(b.ahsBytes == 0)
            #expect(b.dataSegmentLength == 8192)
            #expect(decodeLUN(b.lunField) == 300)
            #expect(b.itt == 0x0102_0304)
            #expect(b.expectedDataTransferLength == 65_536)
            #expect(b.cmdSN == 0xFFFF_FFFF)
            #expect(b.expStatSN == 7)
            #expect(b.cdb.load(as: UInt8.self) == 0, "the CDB is the caller's; the builder zeroes it")
        }
    }

    @Test func dataOut() {
        withHeader { h in
            InitiatorPDUBuild.dataOut(h, final: true, lunField: encodeLUN(1), itt: 9, ttt: 0x55, expStatSN: 3,
                                      dataSN: 4, bufferOffset: 0x0100_0000, length: 0x12_3456)
            let b = BHS(h)
            #expect(b.opcode == ISCSIOpcode.dataOut && b.final)
            #expect(b.dataSegmentLength == 0x12_3456)
            #expect(b.itt == 9 && b.ttt == 0x55 && b.dataSN == 4 && b.bufferOffset == 0x0100_0000)
            #expect(b.expStatSN == 3)
        }
    }

    @Test func loginRequestAndLogoutRequestAreImmediate() {
        withHeader { h in
            InitiatorPDUBuild.loginRequest(h, transit: true, csg: 1, nsg: 3, isid: 0x8000_1234_5678, itt: 1,
                                           cmdSN: 2, expStatSN: 0, dataLength: 13)
            let b = BHS(h)
            #expect(b.opcode == ISCSIOpcode.loginRequest && b.immediate)
            #expect(b.byte1 == 0x80 | 1 << 2 | 3)
            #expect(b.lunField >> 16 == 0x8000_1234_5678, "ISID in bytes 8-13")
            #expect(b.u16(14) == 0, "TSIH 0")
            #expect(b.dataSegmentLength == 13 && b.cmdSN == 2)
            InitiatorPDUBuild.logoutRequest(h, reason: LogoutReason.closeConnection, itt: 5, cmdSN: 6, expStatSN: 7)
            #expect(b.opcode == ISCSIOpcode.logoutRequest && b.immediate && b.final)
            #expect(b.byte1 & LogoutReason.mask == LogoutReason.closeConnection)
            #expect(b.itt == 5 && b.cmdSN == 6 && b.expStatSN == 7 && b.dataSegmentLength == 0)
        }
    }

    @Test func textRequestStartsAFinalExchange() {
        withHeader { h in
            InitiatorPDUBuild.textRequest(h, immediate: true, itt: 3, cmdSN: 4, expStatSN: 5, dataLength: 16)
            let b = BHS(h)
            #expect(b.opcode == ISCSIOpcode.textRequest && b.immediate && b.final)
            #expect(b.itt == 3 && b.ttt == reservedTag && b.cmdSN == 4 && b.expStatSN == 5)
            #expect(b.dataSegmentLength == 16 && b.lunField == 0)
        }
    }

    @Test func nopOutReplyEchoesThePing() {
        withHeader { h in
            InitiatorPDUBuild.nopOutReply(h, lunField: encodeLUN(2), ttt: 0x77, cmdSN: 8, expStatSN: 9, dataLength: 4)
            let b = BHS(h)
            #expect(b.opcode == ISCSIOpcode.nopOut && b.immediate && b.final)
            #expect(b.itt == reservedTag && b.ttt == 0x77 && decodeLUN(b.lunField) == 2)
            #expect(b.dataSegmentLength == 4)
        }
    }

    @Test func targetPDUsReadBackThroughTheView() {
        withHeader { h in
            PDUBuild.r2t(h, itt: 1, ttt: 2, lunField: encodeLUN(3), r2tSN: 4, bufferOffset: 5, desiredLength: 6)
            PDUBuild.setSequence(h, statSN: 7, expCmdSN: 8, maxCmdSN: 9)
            let b = BHS(h)
            #expect(b.opcode == ISCSIOpcode.r2t && b.final)
            #expect(b.itt == 1 && b.ttt == 2 && decodeLUN(b.lunField) == 3)
            #expect(b.u32(24) == 7 && b.u32(28) == 8 && b.u32(32) == 9)
            #expect(b.u32(36) == 4 && b.bufferOffset == 5 && b.u32(44) == 6)
            PDUBuild.loginResponse(h, transit: false, cont: false, csg: 1, nsg: 0, versionMax: 0, versionActive: 0,
                                   isid: 1, tsih: 0, itt: 2, statusClass: LoginStatus.sessionDoesNotExist.statusClass,
                                   statusDetail: LoginStatus.sessionDoesNotExist.statusDetail, dataLength: 0)
            #expect(b.opcode == ISCSIOpcode.loginResponse)
            #expect(b.byte(36) == 2 && b.byte(37) == 0x0A)
            PDUBuild.taskManagementResponse(h, itt: 3, response: TMResponse.functionRejected)
            #expect(b.opcode == ISCSIOpcode.taskManagementResponse && b.byte(2) == 255 && b.itt == 3)
        }
    }

    @Test func headerDigestFollowsTheHeader() {
        withHeader { h in
            PDUBuild.reject(h, reason: RejectReason.protocolError)
            let d = Framing.storeHeaderDigest(h)
            #expect(d == CRC32C.checksum(UnsafeRawPointer(h), count: bhsBytes))
            #expect(UInt32(littleEndian: h.loadUnaligned(fromByteOffset: bhsBytes, as: UInt32.self)) == d)
        }
    }

    @Test func padding() {
        #expect([0, 1, 2, 3, 4, 5, 8].map(Framing.padded) == [0, 4, 4, 4, 4, 8, 8])
        #expect([0, 1, 2, 3, 4, 5, 8].map(Framing.padLength) == [0, 3, 2, 1, 0, 3, 0])
    }

    @Test func endianStoresAndLoadsMirror() {
        withHeader { h in
            put16(h, 1, 0xBEEF); put24(h, 3, 0x12_3456); put32(h, 7, 0xDEAD_BEEF); put64(h, 11, 0x0102_0304_0506_0708)
            #expect(be16(h, 1) == 0xBEEF && be24(h, 3) == 0x12_3456 && be32(h, 7) == 0xDEAD_BEEF)
            #expect(be64(h, 11) == 0x0102_0304_0506_0708)
            #expect(h.load(fromByteOffset: 11, as: UInt8.self) == 1, "most significant byte first")
        }
    }
}
