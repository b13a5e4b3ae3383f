// The clients' oracle on its own: a read that differs from the shadow is caught, unknown blocks are not
// judged, and the PRNG is a pure function of its seed.

import DeterministicRandom
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor

import Testing

@Suite struct SimWorkloadTests {
    static func workload() -> SimWorkload {
        SimWorkload(name: "w", range: 100..<164, blockSize: 512, maxBlocksPerCommand: 8, commands: 1000, queueDepth: 1,
                    verify: true)
    }

    @Test func aReadIsCheckedAgainstTheLastAcknowledgedWriteByteForByte() {
        var rng = SeededRandom(seed: 7)
        let w = Self.workload()
        var write: SimCommand? = nil
        while write == nil { write = w.next(&rng, flushAllowed: false).flatMap { $0.op == .write ? $0 : nil } }
        let c = write!
        let bytes = c.blocks * 512
        var data = [UInt8](repeating: 0, count: bytes)
        data.withUnsafeMutableBytes { w.fill(c, offset: 0, count: bytes, into: $0.baseAddress!) }
        #expect(data.contains { $0 != 0 })
        w.end(c, .good)
        let read = SimCommand(op: .read, lba: c.lba, blocks: c.blocks, seed: 0, isReadBack: false)
        // In pieces at odd offsets, as Data-In may split them.
        let cut = 509
        data.withUnsafeBytes { p in
            #expect(w.check(read, offset: 0, count: cut, from: p.baseAddress!))
            #expect(w.check(read, offset: cut, count: bytes - cut, from: p.baseAddress! + cut))
        }
        #expect(w.failures.isEmpty)
        data[bytes - 1] ^= 0x40
        data.withUnsafeBytes { p in #expect(!w.check(read, offset: 0, count: bytes, from: p.baseAddress!)) }
        #expect(w.failures.count == 1)
        #expect(w.failures.first?.contains("block \(c.lba + UInt64(c.blocks) - 1) byte 511:") == true)
    }

    @Test func neverWrittenBlocksMustReadZerosAndLostWritesAreNotJudged() {
        var rng = SeededRandom(seed: 11)
        let w = Self.workload()
        let zeros = [UInt8](repeating: 0, count: 512)
        let ones = [UInt8](repeating: 1, count: 512)
        let read = SimCommand(op: .read, lba: 120, blocks: 1, seed: 0, isReadBack: false)
        zeros.withUnsafeBytes { #expect(w.check(read, offset: 0, count: 512, from: $0.baseAddress!)) }
        ones.withUnsafeBytes { #expect(!w.check(read, offset: 0, count: 512, from: $0.baseAddress!)) }
        var write: SimCommand? = nil
        while write == nil { write = w.next(&rng, flushAllowed: false).flatMap { $0.op == .write ? $0 : nil } }
        w.end(write!, .lost)
        let lostRead = SimCommand(op: .read, lba: write!.lba, blocks: 1, seed: 0, isReadBack: false)
        ones.withUnsafeBytes { #expect(w.check(lostRead, offset: 0, count: 512, from: $0.baseAddress!)) }
        #expect(w.failures.count == 1)
    }
}
