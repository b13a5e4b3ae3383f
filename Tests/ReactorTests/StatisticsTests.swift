// Statistics: the latency histogram and its quantiles, and a core's LUN table.

import Foundation
import Testing
@testable import Reactor

@Suite struct LatencyHistogramTests {
    /// Latencies spread over the whole range, including bucket edges.
    static let samples: [UInt64] = {
        var v: [UInt64] = Array(0..<64)
        var x: UInt64 = 64
        while x < (1 << 44) {
            v += [x - 1, x, x + 1, x + x / 3]
            x = x * 5 / 4 + 1
        }
        return v + [UInt64.max]
    }()

    @Test func everyLatencyFallsInsideItsBucket() {
        for v in Self.samples {
            let b = LatencyHistogram.bucket(nanos: v)
            #expect(b >= 0 && b < LatencyHistogram.bucketCount)
            #expect(LatencyHistogram.lowerBoundNanos(b) <= v, "\(v) below bucket \(b)")
            if b < LatencyHistogram.bucketCount - 1 {
                #expect(v < LatencyHistogram.upperBoundNanos(b), "\(v) past bucket \(b)")
            }
        }
    }

    @Test func bucketsAreExactBelowEightNanosecondsAndAtMostAQuarterWideAbove() {
        for v in UInt64(0)..<8 { #expect(LatencyHistogram.bucket(nanos: v) == Int(v)) }
        for b in 8..<(LatencyHistogram.bucketCount - 1) {
            let lo = LatencyHistogram.lowerBoundNanos(b), hi = LatencyHistogram.upperBoundNanos(b)
            #expect(hi > lo)
            #expect((hi - lo) * 4 <= lo, "bucket \(b) [\(lo), \(hi)) is wider than 25 %")
            #expect(LatencyHistogram.bucket(nanos: lo) == b && LatencyHistogram.bucket(nanos: hi - 1) == b)
        }
        #expect(LatencyHistogram.bucket(nanos: 1 << 50) == LatencyHistogram.bucketCount - 1)
        #expect(LatencyHistogram.upperBoundNanos(LatencyHistogram.bucketCount - 1) == UInt64.max)
    }

    @Test func quantilesAreNeverBelowTheTruthAndAtMostOneBucketAbove() {
        var buckets = [UInt64](repeating: 0, count: LatencyHistogram.bucketCount)
        // 1000 commands taking 1 µs, 2 µs, ..., 1000 µs.
        for i in UInt64(1)...1000 { buckets[LatencyHistogram.bucket(nanos: i * 1000)] += 1 }
        for (q, truth) in [(0.5, 500_000.0), (0.9, 900_000.0), (0.99, 990_000.0), (0.999, 999_000.0)] {
            let got = LatencyHistogram.quantileNanos(q, buckets: buckets, maxNanos: 1_000_000)!
            #expect(Double(got) >= truth - 1 && Double(got) <= truth * 1.25, "q \(q): \(got)")
        }
        #expect(LatencyHistogram.quantileNanos(1, buckets: buckets, maxNanos: 1_000_000) == 1_000_000)
        #expect(LatencyHistogram.quantileNanos(0.5, buckets: [UInt64](repeating: 0, count: 4), maxNanos: 0) == nil)
    }
}

@Suite struct LUNStatisticsTableTests {
    static func unit(slot: Int32, id: UInt64) -> LogicalUnit {
        LogicalUnit(number: 1, blockSize: 512, blockCount: 8, capabilities: StoreCapabilities(), serial: "s",
                    naa: [UInt8](repeating: 0, count: 16), backing: .null, bstype: "null", path: "/dev/null",
                    statisticsSlot: slot, statisticsID: id)
    }

    @Test func countsPerDirectionAndStartsAfreshForANewOwnerOfTheSlot() {
        let table = LUNStatisticsTable()
        let a = LUNStatisticsKey(Self.unit(slot: 7, id: 1))
        table.started(a, read: true, write: false, bytes: 4096)
        table.done(a, read: true, write: false, bytes: 4096, good: true, nanos: 20_000)
        table.started(a, read: false, write: true, bytes: 8192)
        table.done(a, read: false, write: true, bytes: 8192, good: true, nanos: 40_000)
        table.started(a, read: false, write: false, bytes: 0)
        table.done(a, read: false, write: false, bytes: 0, good: false, nanos: 1_000)
        table.aborted(a)
        let s = table.read(slot: 7, id: 1)
        #expect(s.counters.read.submittedCommands == 1 && s.counters.read.doneBytes == 4096)
        #expect(s.counters.write.submittedBytes == 8192 && s.counters.write.doneCommands == 1)
        #expect(s.counters.commands == 3 && s.counters.doneCommands == 3)
        #expect(s.counters.errors == 1 && s.counters.aborts == 1)
        #expect(s.counters.latencySumNanos == 61_000 && s.counters.latencyMaxNanos == 40_000)
        #expect(s.latencyBuckets.reduce(0, +) == 3)
        // Another id asking about the slot sees nothing of it; a new LUN in the slot starts from zero.
        #expect(table.read(slot: 7, id: 2) == LUNStatistics())
        let b = LUNStatisticsKey(Self.unit(slot: 7, id: 2))
        table.started(b, read: true, write: false, bytes: 512)
        #expect(table.read(slot: 7, id: 2).counters.read.submittedBytes == 512)
        #expect(table.read(slot: 7, id: 2).counters.write.submittedBytes == 0)
        #expect(table.read(slot: 7, id: 1) == LUNStatistics())
        // A LUN without a slot is not counted, and costs nothing.
        table.started(LUNStatisticsKey(Self.unit(slot: -1, id: 0)), read: true, write: false, bytes: 1)
    }
}
