// The harness's parsers, pinned to output captured from the real tools (libiscsi 1.19, qemu 7.2,
// tgtadm 1.0.85). These run without any daemon.

import Testing

@Suite("Harness parsers")
struct HarnessParserTests {
    @Test func portalLinesParseForIPv4AndIPv6() {
        let text = "Portal: 127.0.0.1:41234,1\nPortal: [::1]:37909,1\n"
        #expect(Endpoint.parsePortals(text) == [
            Endpoint(host: "127.0.0.1", port: 41234, portalGroupTag: 1),
            Endpoint(host: "[::1]", port: 37909, portalGroupTag: 1),
        ])
        #expect(Endpoint.parsePortals("garbage\nPortal: nonsense\n").isEmpty)
    }

    @Test func iscsiLsListingAndItsSizeFormula() {
        let text = """
            Target:iqn.2026-01.org.ringtgt:t1 Portal:127.0.0.1:21824,1
            Lun:0    Type:STORAGE_ARRAY_CONTROLLER
            Lun:1    Type:DIRECT_ACCESS (Size:63M)
            Lun:2    Type:DIRECT_ACCESS (Size:2G)
            """
        let l = ISCSILsListing(text)
        let t = l.target("iqn.2026-01.org.ringtgt:t1")
        #expect(t?.portal == "127.0.0.1:21824,1")
        #expect(t?.luns[1]?.size == "63M")
        #expect(t?.luns[2]?.size == "2G")
        #expect(t?.luns[0]?.size == nil)
        // 64 MiB and 3 GiB of 512-byte blocks, as iscsi-ls printed them against tgt.
        #expect(ISCSILsListing.expectedSize(blockCount: 131_072, blockBytes: 512) == "63M")
        #expect(ISCSILsListing.expectedSize(blockCount: 6_291_456, blockBytes: 512) == "2G")
    }

    @Test func readCapacity16Output() throws {
        let rc = try ReadCapacity16("""
            RETURNED LOGICAL BLOCK ADDRESS:131071
            LOGICAL BLOCK LENGTH IN BYTES:512
            P_TYPE:0 PROT_EN:0
            P_I_EXPONENT:0 LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT:3
            LBPME:1 LBPRZ:0
            LOWEST ALIGNED LOGICAL BLOCK ADDRESS:0
            Total size:67108864
            """)
        #expect(rc.blockCount == 131_072 && rc.blockBytes == 512 && rc.totalBytes == 67_108_864 && rc.lbpme == 1)
        #expect(throws: E2EError.self) { try ReadCapacity16("Login Failed.") }
    }

    @Test func qemuIOReportCountsCompletionsAndErrors() {
        let r = QemuIOReport("""
            wrote 65536/65536 bytes at offset 65536
            64 KiB, 1 ops; 00.06 sec (1.113 MiB/sec and 17.8120 ops/sec)
            Pattern verification failed at offset 0, 4096 bytes
            read 4096/4096 bytes at offset 0
            aio_write failed: Input/output error
            """)
        #expect(r.wroteOffsets == [65536])
        #expect(r.readOffsets == [0])
        #expect(r.errorLines.count == 2)
    }

    /// Trimmed from a real `iscsi-test-cu -d -t ALL URL URL` run against tgt.
    static let cunitSample = """
        Suite: CompareAndWrite
          Test: Simple ...    [SKIPPED] COMPAREANDWRITE is not implemented.
            [SKIPPED] COMPAREANDWRITE is not implemented.
        passed
        Suite: GetLBAStatus
          Test: Simple ...passed
          Test: BeyondEol ...    [FAILED] GET_LBA_STATUS successful but should have failed with ILLEGAL_REQUEST(0x05)/LBA_OUT_OF_RANGE(0x2100)
        FAILED
            1. test_get_lba_status_beyond_eol.c:38  - CU_ASSERT_EQUAL(_r,0)
        Suite: ModeSense6
          Test: Residuals ...passed    [SKIPPED] not this test's
          Test: Next ...passed

        Run Summary:    Type  Total    Ran Passed Failed Inactive
                      suites     3      3    n/a      0        0
                       tests      5      5      4      1        0
                     asserts     10     10      9      1      n/a
        """

    @Test func cunitOutputCountsSkipsSeparately() throws {
        let r = try CUnitReport(HarnessParserTests.cunitSample)
        #expect(r.consistencyProblem() == nil)
        #expect(r.tests.map(\.name) == ["CompareAndWrite.Simple", "GetLBAStatus.Simple", "GetLBAStatus.BeyondEol",
                                        "ModeSense6.Residuals", "ModeSense6.Next"])
        #expect(r.skipped.map(\.name) == ["CompareAndWrite.Simple"])
        #expect(r.skipped.first?.skipReason == "COMPAREANDWRITE is not implemented.")
        #expect(r.failed.map(\.name) == ["GetLBAStatus.BeyondEol"])
        // A marker after a verdict belongs to the gap between tests, not to the test that passed.
        #expect(r.passedNotSkipped.map(\.name) == ["GetLBAStatus.Simple", "ModeSense6.Residuals", "ModeSense6.Next"])
    }

    @Test func cunitOutputThatStopsMidTestIsAnError() {
        #expect(throws: E2EError.self) { try CUnitReport("Suite: A\n  Test: B ...    [SKIPPED] x\n") }
        let noSummary = try? CUnitReport("Suite: A\n  Test: B ...passed\n")
        #expect(noSummary?.consistencyProblem() != nil)
    }

    @Test func skipListReadsBacktickedNamesAndReasons() {
        let md = """
            | Test | Why |
            |---|---|
            | `Sanitize.Reset` | needs --allow-sanitize |
            | WriteAtomic16.VPD | not implemented |
            | not a test | whatever |
            """
        let l = ConformanceSkipList(markdown: md)
        #expect(l.reasons == ["Sanitize.Reset": "needs --allow-sanitize", "WriteAtomic16.VPD": "not implemented"])
    }

    @Test func theRepositorySkipListIsWellFormed() throws {
        let doc = try String(contentsOf: Paths.packageRoot.appendingPathComponent("docs/CONFORMANCE.md"),
                             encoding: .utf8)
        let l = ConformanceSkipList(markdown: doc)
        #expect(!l.reasons.isEmpty)
        #expect(l.reasons.values.allSatisfy { $0.count > 10 }, "every skip needs a real reason")
    }

    @Test func nullLUNSizeSpelling() {
        #expect(nullLUNOptions(bytes: gibibyte, peer: .ringtgt).last == "size=1G")
        #expect(nullLUNOptions(bytes: 3 * mebibyte, peer: .ringtgt).last == "size=3M")
        #expect(nullLUNOptions(bytes: 4096, peer: .ringtgt).last == "size=4096")
    }
}
