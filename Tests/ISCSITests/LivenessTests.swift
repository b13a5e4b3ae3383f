import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import ISCSI

/// Liveness by tick without a socket or a clock: login timeout, an initiator that stops reading, the NOP-In
/// ping and its answer, and the Data-Out timeout.
@Suite struct LivenessTests {
    static let limits = LivenessLimits(loginSeconds: 15, sendStallSeconds: 30, dataOutSeconds: 20,
                                       nopIntervalSeconds: 5, nopTimeoutSeconds: 10)

    @Test func loginTimeout() {
        let l = ConnectionLiveness(tick: 100)
        #expect(l.check(tick: 115, loggingIn: true, sendQueued: false, limits: Self.limits) == nil)
        #expect(l.check(tick: 116, loggingIn: true, sendQueued: false, limits: Self.limits) == .loginTimeout)
        #expect(l.check(tick: 1000, loggingIn: false, sendQueued: false, limits: Self.limits) == nil,
                "a logged-in connection has no login timeout")
    }

    @Test func sendStallCountsFromTheLastProgress() {
        var l = ConnectionLiveness(tick: 0)
        l.sent(tick: 50)
        #expect(l.check(tick: 80, loggingIn: false, sendQueued: true, limits: Self.limits) == nil)
        #expect(l.check(tick: 81, loggingIn: false, sendQueued: true, limits: Self.limits) == .sendStalled)
        #expect(l.check(tick: 81, loggingIn: false, sendQueued: false, limits: Self.limits) == nil,
                "nothing queued: nothing stalls")
        #expect(LivenessFailure.sendStalled.reason == "initiator stopped reading")
    }

    @Test func pingAfterSilenceAndItsAnswer() {
        var l = ConnectionLiveness(tick: 0)
        l.received(tick: 10)
        #expect(l.pingCheck(tick: 14, limits: Self.limits, canSend: true) == .idle)
        #expect(l.pingCheck(tick: 15, limits: Self.limits, canSend: false) == .idle, "no room: no ping")
        #expect(l.pingCheck(tick: 15, limits: Self.limits, canSend: true) == .send(ttt: 1))
        #expect(l.pingTTT == 1)
        #expect(l.pingCheck(tick: 25, limits: Self.limits, canSend: true) == .idle, "still within the timeout")
        l.received(tick: 25)
        #expect(l.pingTTT == reservedTag, "any bytes answer the ping")
        #expect(l.pingCheck(tick: 30, limits: Self.limits, canSend: true) == .send(ttt: 2))
    }

    @Test func unansweredPingCloses() {
        var l = ConnectionLiveness(tick: 0)
        #expect(l.pingCheck(tick: 5, limits: Self.limits, canSend: true) == .send(ttt: 1))
        #expect(l.pingCheck(tick: 15, limits: Self.limits, canSend: true) == .idle)
        #expect(l.pingCheck(tick: 16, limits: Self.limits, canSend: true) == .close(.pingUnanswered))
    }

    @Test func noPingsWhenTheIntervalIsZero() {
        var limits = Self.limits
        limits.nopIntervalSeconds = 0
        var l = ConnectionLiveness(tick: 0)
        #expect(l.pingCheck(tick: 1_000_000, limits: limits, canSend: true) == .idle)
    }

    @Test func pingTTTsWrapBeforeTheReservedTag() {
        var l = ConnectionLiveness(tick: 0, nextPingTTT: ConnectionLiveness.pingTTTLimit)
        #expect(l.pinged(tick: 0) == ConnectionLiveness.pingTTTLimit)
        #expect(l.pinged(tick: 0) == 1)
        #expect(l.pinged(tick: 0) == 2)
    }

    /// The Data-Out timeout runs from the R2T (or from waiting for a permit) and stops once the chunk is in.
    @Test func dataOutTimeout() {
        let l = ConnectionLiveness(tick: 0)
        var s = DataOutSequencer()
        _ = s.beginChunk(offset: 0, length: 8192)
        #expect(!l.dataOutExpired(s, tick: 1000, limits: Self.limits), "no R2T yet: nothing is awaited")
        s.awaitPermit(tick: 100)
        #expect(!l.dataOutExpired(s, tick: 120, limits: Self.limits))
        #expect(l.dataOutExpired(s, tick: 121, limits: Self.limits))
        _ = s.issueR2T(ttt: 1, maxBurstLength: 8192, tick: 200)
        #expect(!l.dataOutExpired(s, tick: 220, limits: Self.limits))
        #expect(l.dataOutExpired(s, tick: 221, limits: Self.limits))
        #expect(s.received(dataSN: 0, length: 8192, final: true) == .chunkDone)
        #expect(!l.dataOutExpired(s, tick: 10_000, limits: Self.limits))
    }
}
