import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import ISCSI

/// R2T and Data-Out sequencing (RFC 7143 §11.7-11.8, ERL 0) without a socket: offsets, DataSN, the F bit,
/// overflow beyond the burst or the chunk, and the Data-Out timeout.
@Suite struct DataOutSequencerTests {
    /// A chunk of `length` bytes at stream offset 0 with no immediate data, its first R2T issued at tick 5.
    private func receiving(length: Int, maxBurst: Int, immediate: Int = 0) -> (DataOutSequencer, R2TRequest) {
        var s = DataOutSequencer(immediateBytes: immediate)
        let start = s.beginChunk(offset: 0, length: length)
        #expect(!start.complete)
        let r2t = s.issueR2T(ttt: 0x0001_0003, maxBurstLength: maxBurst, tick: 5)
        return (s, r2t)
    }

    /// Lands a Data-Out the sequencer places, returning its verdict (nil when it would be refused).
    private func land(_ s: inout DataOutSequencer, offset: Int, length: Int, dataSN: UInt32,
                      final: Bool) -> DataOutVerdict? {
        guard s.placement(offset: offset, length: length) != nil else { return nil }
        return s.received(dataSN: dataSN, length: length, final: final)
    }

    @Test func burstsCoverTheChunkInOrder() {
        var (s, r2t) = receiving(length: 10_000, maxBurst: 4096)
        #expect(r2t == R2TRequest(r2tSN: 0, bufferOffset: 0, desiredLength: 4096))
        #expect(s.ttt == 0x0001_0003)
        let r1 = land(&s, offset: 0, length: 1024, dataSN: 0, final: false)
        #expect(r1 == .burstContinues)
        let r2 = land(&s, offset: 1024, length: 3072, dataSN: 1, final: true)
        #expect(r2 == .burstDone)
        #expect(s.ttt == reservedTag, "no Data-Out is expected until the next R2T")
        let r3 = s.issueR2T(ttt: 7, maxBurstLength: 4096, tick: 6)
        #expect(r3 == R2TRequest(r2tSN: 1, bufferOffset: 4096, desiredLength: 4096))
        let r4 = land(&s, offset: 4096, length: 4096, dataSN: 0, final: true)
        #expect(r4 == .burstDone, "DataSN restarts per R2T")
        let r5 = s.issueR2T(ttt: 8, maxBurstLength: 4096, tick: 7)
        #expect(r5 == R2TRequest(r2tSN: 2, bufferOffset: 8192, desiredLength: 1808))
        let r6 = land(&s, offset: 8192, length: 1808, dataSN: 0, final: true)
        #expect(r6 == .chunkDone)
        #expect(s.chunkReceived == 10_000 && s.ttt == reservedTag)
    }

    @Test func offsetsOutOfOrderAreRefused() {
        let (s, _) = receiving(length: 8192, maxBurst: 8192)
        #expect(s.placement(offset: 0, length: 512) == 0)
        #expect(s.placement(offset: 512, length: 512) == nil, "a gap before it")
        var t = s
        let r7 = land(&t, offset: 0, length: 512, dataSN: 0, final: false)
        #expect(r7 == .burstContinues)
        #expect(t.placement(offset: 0, length: 512) == nil, "a repeat")
        #expect(t.placement(offset: 512, length: 512) == 512)
    }

    /// A later chunk sits at buffer[0]: placements are relative to the chunk, and immediate data inside it moves.
    @Test func laterChunksAndImmediateData() {
        var s = DataOutSequencer(immediateBytes: 6000)
        let r8 = s.beginChunk(offset: 0, length: 4096)
        #expect(r8 == ChunkStart(moveImmediateBytes: 0, complete: true))
        let r9 = s.beginChunk(offset: 4096, length: 4096)
        #expect(r9 == ChunkStart(moveImmediateBytes: 1904, complete: false))
        #expect(s.chunkReceived == 1904)
        let r10 = s.issueR2T(ttt: 9, maxBurstLength: 65536, tick: 0)
        #expect(r10 == R2TRequest(r2tSN: 0, bufferOffset: 6000, desiredLength: 2192))
        #expect(s.placement(offset: 6000, length: 2192) == 1904)
        let r11 = s.received(dataSN: 0, length: 2192, final: true)
        #expect(r11 == .chunkDone)
        let r12 = s.beginChunk(offset: 8192, length: 4096)
        #expect(r12 == ChunkStart(moveImmediateBytes: 0, complete: false))
        let r13 = s.issueR2T(ttt: 10, maxBurstLength: 65536, tick: 0)
        #expect(r13.r2tSN == 1, "R2TSN counts across chunks")
    }

    @Test func wrongDataSNBreaksTheSequence() {
        var (s, _) = receiving(length: 8192, maxBurst: 8192)
        let r14 = land(&s, offset: 0, length: 4096, dataSN: 0, final: false)
        #expect(r14 == .burstContinues)
        let r15 = land(&s, offset: 4096, length: 4096, dataSN: 2, final: true)
        #expect(r15 == .wrongDataSN)
        #expect(s.ttt == reservedTag && s.placement(offset: 4096, length: 4096) == nil)
    }

    @Test func finalBitMustMarkTheEndOfTheBurst() {
        var (early, _) = receiving(length: 8192, maxBurst: 8192)
        let r16 = land(&early, offset: 0, length: 4096, dataSN: 0, final: true)
        #expect(r16 == .wrongFinalBit)
        var (missing, _) = receiving(length: 8192, maxBurst: 4096)
        let r17 = land(&missing, offset: 0, length: 4096, dataSN: 0, final: false)
        #expect(r17 == .wrongFinalBit)
        #expect(missing.ttt == reservedTag)
    }

    /// Data beyond what the R2T asked for (MaxBurstLength) or beyond the chunk (and so the expected length).
    @Test func overflowIsRefused() {
        let (s, r2t) = receiving(length: 65536, maxBurst: 16384)
        #expect(r2t.desiredLength == 16384)
        #expect(s.placement(offset: 0, length: 16385) == nil, "beyond MaxBurstLength")
        #expect(s.placement(offset: 0, length: 16384) == 0)
        let (small, _) = receiving(length: 1000, maxBurst: 16384)
        #expect(small.placement(offset: 0, length: 1001) == nil, "beyond the chunk")
        #expect(DataOutSequencer().placement(offset: 0, length: 1) == nil, "no burst open")
    }

    @Test func timeoutsRunFromThePermitWaitAndFromEachR2T() {
        var s = DataOutSequencer()
        _ = s.beginChunk(offset: 0, length: 8192)
        #expect(!s.expired(tick: 1000, limitSeconds: 30), "nothing asked for yet")
        s.awaitPermit(tick: 10)
        #expect(!s.expired(tick: 40, limitSeconds: 30))
        #expect(s.expired(tick: 41, limitSeconds: 30))
        _ = s.issueR2T(ttt: 1, maxBurstLength: 4096, tick: 50)
        #expect(!s.expired(tick: 80, limitSeconds: 30) && s.expired(tick: 81, limitSeconds: 30))
        let r18 = s.received(dataSN: 0, length: 4096, final: true)
        #expect(r18 == .burstDone)
        _ = s.issueR2T(ttt: 2, maxBurstLength: 4096, tick: 90)
        #expect(!s.expired(tick: 120, limitSeconds: 30), "each R2T restarts the clock")
        s.abandon()
        #expect(!s.expired(tick: 1000, limitSeconds: 30))
    }
}
