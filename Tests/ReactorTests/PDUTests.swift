import Glibc
import Testing
@testable import Reactor

/// The BHS codec as pure logic: fields read from wire bytes, and target PDUs built byte for byte.
@Suite struct PDUTests {
    func bytes(_ n: Int = 48) -> UnsafeMutableRawPointer {
        let p = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 8)
        p.initializeMemory(as: UInt8.self, repeating: 0, count: n)
        return p
    }

    func array(_ p: UnsafeRawPointer, _ n: Int = 48) -> [UInt8] {
        Array(UnsafeRawBufferPointer(start: p, count: n))
    }

    @Test func scsiCommandFieldsAreReadBigEndian() {
        // A READ(10) command PDU as libiscsi sends it: immediate=0, F|R, LUN 1, ITT 0x1234, EDTL 4096, CmdSN 7.
        var wire = [UInt8](repeating: 0, count: 48)
        wire[0] = 0x01
        wire[1] = 0xC1           // F, R, attr SIMPLE
        wire[4] = 0              // no AHS
        wire[5] = 0; wire[6] = 0x02; wire[7] = 0x00   // DataSegmentLength 512
        wire[9] = 0x01           // LUN 1 (peripheral)
        wire[16...19] = [0, 0, 0x12, 0x34]
        wire[20...23] = [0, 0, 0x10, 0x00]
        wire[24...27] = [0, 0, 0, 7]
        wire[28...31] = [0, 0, 0, 3]
        wire[32] = 0x28
        wire.withUnsafeBytes { raw in
            let b = BHS(raw.baseAddress!)
            #expect(b.opcode == ISCSIOpcode.scsiCommand)
            #expect(!b.immediate)
            #expect(b.final)
            #expect(b.dataSegmentLength == 512)
            #expect(decodeLUN(b.lunField) == 1)
            #expect(b.itt == 0x1234)
            #expect(b.expectedDataTransferLength == 4096)
            #expect(b.cmdSN == 7)
            #expect(b.expStatSN == 3)
            #expect(b.cdb.load(as: UInt8.self) == 0x28)
        }
    }

    @Test func lunAddressingRoundTrips() {
        for lun: UInt64 in [0, 1, 255, 256, 1000, 16383] {
            #expect(decodeLUN(encodeLUN(lun)) == lun)
        }
        // Peripheral device addressing below 256, flat space above (SAM-5 §4.7).
        #expect(encodeLUN(5) == 0x0005_0000_0000_0000)
        #expect(encodeLUN(300) == 0x412C_0000_0000_0000)
        // Extended addressing is not served.
        #expect(decodeLUN(0xC000_0000_0000_0000) == UInt64.max)
    }

    @Test func scsiResponseCarriesStatusAndResidual() {
        let h = bytes()
        defer { h.deallocate() }
        PDUBuild.scsiResponse(h, itt: 0xAABBCCDD, status: SCSIStatus.checkCondition, residual: .underflow(512),
                              dataLength: 20)
        PDUBuild.setSequence(h, statSN: 9, expCmdSN: 10, maxCmdSN: 41)
        let a = array(h)
        #expect(a[0] == 0x21)
        #expect(a[1] == 0x82)          // F + U
        #expect(a[3] == 0x02)
        #expect(Array(a[5...7]) == [0, 0, 20])
        #expect(Array(a[16...19]) == [0xAA, 0xBB, 0xCC, 0xDD])
        #expect(Array(a[24...35]) == [0, 0, 0, 9, 0, 0, 0, 10, 0, 0, 0, 41])
        #expect(Array(a[44...47]) == [0, 0, 2, 0])
    }

    @Test func dataInWithCollapsedStatus() {
        let h = bytes()
        defer { h.deallocate() }
        PDUBuild.dataIn(h, itt: 1, lunField: encodeLUN(1), dataSN: 3, bufferOffset: 8192, length: 4096,
                        final: true, status: SCSIStatus.good, residual: .overflow(7))
        let a = array(h)
        #expect(a[0] == 0x25)
        #expect(a[1] == 0x85)          // F + O + S
        #expect(a[3] == 0)
        #expect(Array(a[5...7]) == [0, 0x10, 0])
        #expect(a[9] == 1)
        #expect(Array(a[20...23]) == [0xFF, 0xFF, 0xFF, 0xFF])
        #expect(Array(a[36...39]) == [0, 0, 0, 3])
        #expect(Array(a[40...43]) == [0, 0, 0x20, 0])
        #expect(Array(a[44...47]) == [0, 0, 0, 7])
    }

    @Test func dataInWithoutStatusHasNoStatusBits() {
        let h = bytes()
        defer { h.deallocate() }
        PDUBuild.dataIn(h, itt: 1, lunField: 0, dataSN: 0, bufferOffset: 0, length: 512, final: false,
                        status: nil, residual: .underflow(9))
        let a = array(h)
        #expect(a[1] == 0)
        #expect(Array(a[44...47]) == [0, 0, 0, 0])   // residual only travels with status
    }

    @Test func r2tAsksForOneBurst() {
        let h = bytes()
        defer { h.deallocate() }
        PDUBuild.r2t(h, itt: 5, ttt: 0x0001_0002, lunField: encodeLUN(2), r2tSN: 1, bufferOffset: 65536,
                     desiredLength: 262_144)
        let a = array(h)
        #expect(a[0] == 0x31 && a[1] == 0x80)
        #expect(Array(a[20...23]) == [0, 1, 0, 2])
        #expect(Array(a[36...39]) == [0, 0, 0, 1])
        #expect(Array(a[40...43]) == [0, 1, 0, 0])
        #expect(Array(a[44...47]) == [0, 4, 0, 0])
    }

    @Test func loginResponseFlagsStagesAndISID() {
        let h = bytes()
        defer { h.deallocate() }
        PDUBuild.loginResponse(h, transit: true, cont: false, csg: 1, nsg: 3, versionMax: 0, versionActive: 0,
                               isid: 0x23D0_0000_0001, tsih: 0x0102, itt: 0x10, statusClass: 0, statusDetail: 0,
                               dataLength: 100)
        let a = array(h)
        #expect(a[0] == 0x23)
        #expect(a[1] == 0x87)          // T, CSG=1, NSG=3
        #expect(Array(a[8...15]) == [0x23, 0xD0, 0, 0, 0, 1, 1, 2])
        #expect(a[36] == 0 && a[37] == 0)
    }

    @Test func rejectCarriesReason() {
        let h = bytes()
        defer { h.deallocate() }
        PDUBuild.reject(h, reason: RejectReason.dataDigestError)
        let a = array(h)
        #expect(a[0] == 0x3F && a[2] == 0x02)
        #expect(Array(a[5...7]) == [0, 0, 48])
        #expect(Array(a[16...19]) == [0xFF, 0xFF, 0xFF, 0xFF])
    }

    @Test func taskManagementAndLogoutResponses() {
        let h = bytes()
        defer { h.deallocate() }
        PDUBuild.taskManagementResponse(h, itt: 9, response: 5)
        #expect(array(h)[0] == 0x22 && array(h)[2] == 5)
        PDUBuild.logoutResponse(h, itt: 9, response: 0, time2Wait: 2, time2Retain: 20)
        let a = array(h)
        #expect(a[0] == 0x26 && a[1] == 0x80)
        #expect(Array(a[40...43]) == [0, 2, 0, 20])
    }
}

/// The send queue: digests, padding, batching and partial sends.
@Suite struct OutQueueTests {
    @Test func partialSendsFireTokensOnlyWhenARecordIsFullyOut() {
        let memory = UnsafeMutableRawPointer.allocate(byteCount: OutQueue.memoryBytes(capacity: 8), alignment: 64)
        defer { memory.deallocate() }
        var q = OutQueue(capacity: 8, memory: memory)
        let data = [UInt8](repeating: 0xAB, count: 10)
        data.withUnsafeBytes { d in
            for t in 0..<3 {
                let i = q.nextIndex()
                PDUBuild.nopIn(q.header(i), itt: UInt32(t), ttt: reservedTag, lunField: 0, dataLength: 10)
                q.commit(i, data: d.baseAddress, dataLength: 10, headerDigest: false, dataDigest: false,
                         token: .taskDone(task: Int32(t)))
            }
        }
        // Each record: 48 header + 10 data + 2 pad = 60 bytes.
        let first = q.prepareSend()
        #expect(first)
        #expect(q.msg.pointee.msg_iovlen == 9)
        var fired: [SendToken] = []
        var n = q.completed(sent: 70)
        for i in 0..<n { fired.append(q.fired[i]) }
        #expect(fired == [.taskDone(task: 0)])
        #expect(q.count == 2)
        // The next batch resumes 10 bytes into the second record.
        let second = q.prepareSend()
        #expect(second)
        #expect(q.iov[0].iov_len == 38)
        n = q.completed(sent: 50 + 60)
        for i in 0..<n { fired.append(q.fired[i]) }
        #expect(fired == [.taskDone(task: 0), .taskDone(task: 1), .taskDone(task: 2)])
        #expect(q.count == 0)
        let third = q.prepareSend()
        #expect(!third)
        // Emptied, the queue starts again at its first record and arena entry.
        let next = q.nextIndex()
        #expect(next == 0)
    }

    /// An idle session's periodic PDU (a NOP-In each interval) always lands in record 0, so only the first
    /// pages of its send queue are ever resident, however long it stays idle.
    @Test func anIdleQueueReusesItsFirstRecord() {
        let memory = UnsafeMutableRawPointer.allocate(byteCount: OutQueue.memoryBytes(capacity: 8), alignment: 64)
        defer { memory.deallocate() }
        var q = OutQueue(capacity: 8, memory: memory)
        for t in 0..<20 {
            let i = q.nextIndex()
            #expect(i == 0, "ping \(t) went to record \(i)")
            PDUBuild.nopIn(q.header(i), itt: reservedTag, ttt: UInt32(t), lunField: 0, dataLength: 0)
            q.commit(i, data: nil, dataLength: 0, headerDigest: false, dataDigest: false, token: .none)
            let sending = q.prepareSend()
            #expect(sending)
            _ = q.completed(sent: 48)
        }
    }

    @Test func digestsCoverHeaderAndPaddedData() {
        let memory = UnsafeMutableRawPointer.allocate(byteCount: OutQueue.memoryBytes(capacity: 2), alignment: 64)
        defer { memory.deallocate() }
        var q = OutQueue(capacity: 2, memory: memory)
        let data: [UInt8] = [1, 2, 3, 4, 5]
        let i = q.nextIndex()
        PDUBuild.nopIn(q.header(i), itt: 1, ttt: reservedTag, lunField: 0, dataLength: 5)
        data.withUnsafeBytes { d in
            q.commit(i, data: d.baseAddress, dataLength: 5, headerDigest: true, dataDigest: true, token: .none)
        }
        let h = q.header(i)
        let hd = UInt32(littleEndian: (h + 48).loadUnaligned(as: UInt32.self))
        #expect(hd == CRC32C.checksum(UnsafeRawPointer(h), count: 48))
        // 3 pad bytes, then the data digest over data + pad.
        #expect(q.records[i].trailerLength == 7)
        let padded: [UInt8] = [1, 2, 3, 4, 5, 0, 0, 0]
        let dd = UInt32(littleEndian: (h + 52 + 3).loadUnaligned(as: UInt32.self))
        #expect(dd == CRC32C.checksum(padded))
    }
}

@Suite struct PortalAndACLTests {
    @Test func portalsParseLikeTgtd() {
        #expect(Portal.parse("127.0.0.1:3261") == Portal(host: "127.0.0.1", port: 3261))
        #expect(Portal.parse("0.0.0.0") == Portal(host: "0.0.0.0", port: 3260))
        #expect(Portal.parse("[::1]:0") == Portal(host: "::1", port: 0))
        #expect(Portal.parse("[::1]") == Portal(host: "::1", port: 3260))
        #expect(Portal.parse("::1") == Portal(host: "::1", port: 3260))
        #expect(Portal.parse("host:99999") == nil)
        #expect(Portal.parse("[::1]x") == nil)
        #expect(Portal.parse(":3260") == nil)
    }

    @Test func aclRulesMatchAddressesNetworksAndNames() {
        #expect(ACLCheck.allows([.all], address: "10.1.2.3", initiatorName: "iqn.x"))
        #expect(!ACLCheck.allows([], address: "10.1.2.3", initiatorName: "iqn.x"))
        #expect(ACLCheck.allows([.address("127.0.0.1")], address: "127.0.0.1", initiatorName: ""))
        #expect(!ACLCheck.allows([.address("10.9.9.9")], address: "127.0.0.1", initiatorName: ""))
        #expect(ACLCheck.allows([.cidr("10.0.0.0", prefixLength: 8)], address: "10.200.1.1", initiatorName: ""))
        #expect(!ACLCheck.allows([.cidr("10.0.0.0", prefixLength: 8)], address: "11.0.0.1", initiatorName: ""))
        #expect(ACLCheck.allows([.cidr("fd00::", prefixLength: 16)], address: "fd00::5", initiatorName: ""))
        #expect(ACLCheck.allows([.address("127.0.0.1")], address: "::ffff:127.0.0.1", initiatorName: ""))
        #expect(ACLCheck.allows([.initiatorName("IQN.2026-01.Test:A")], address: "1.2.3.4", initiatorName: "iqn.2026-01.test:a"))
        #expect(!ACLCheck.allows([.initiatorName("iqn.a")], address: "1.2.3.4", initiatorName: "iqn.b"))
    }
}
