import Glibc
import Logging
import Testing
@testable import Floor
@testable import URing
@testable import Store
@testable import Reactor

/// TSIH allocation, accept error handling and rate-limited logging: the pure parts of admission.
@Suite struct AcceptPolicyTests {
    /// Wrap-around skips 0 and every TSIH a live session holds; a released one is reused only after the
    /// others.
    @Test func tsihWrapsAroundPastZeroAndLiveSessions() {
        var a = TSIHAllocator(last: 0xFFFD)
        let first = a.allocate()
        #expect(first == 0xFFFE)
        #expect(a.allocate() == 0xFFFF)
        #expect(a.allocate() == 1, "0 is never a TSIH")
        #expect(a.allocate() == 2)
        // 0xFFFE and 2 end; 0xFFFF and 1 stay live.
        a.release(0xFFFE)
        a.release(2)
        var got: [UInt16] = []
        for _ in 0..<(0xFFFF - 2) { got.append(a.allocate()!) }
        #expect(!got.contains(0xFFFF) && !got.contains(1) && !got.contains(0), "a live or zero TSIH was handed out")
        #expect(Set(got).count == got.count, "a TSIH was handed out twice")
        #expect(got.first == 3, "allocation continues after the last one, not at a just-released one")
        #expect(got.suffix(2) == [0xFFFE, 2], "released TSIHs come back last")
        #expect(a.allocate() == nil, "all 65,535 TSIHs are live")
        a.release(40_000)
        #expect(a.allocate() == 40_000)
    }

    /// The daemon's allocator itself: with every session kept alive, no TSIH is handed out twice (the old
    /// 16-bit counter wrapped onto live sessions).
    @Test func runtimeNeverHandsOutALiveTSIH() {
        let runtime = Runtime(config: ReactorConfig(), portals: [], logger: Logger(label: "tsih-test"))
        var live: Set<UInt16> = []
        var duplicates = 0
        for _ in 0..<Int(UInt16.max) + 1 {
            let v: UInt16? = runtime.allocateTSIH()
            if let v, v == 0 || !live.insert(v).inserted { duplicates += 1 }
        }
        #expect(duplicates == 0, "\(duplicates) TSIHs were 0 or already held by a live session")
        #expect(live.count == Int(UInt16.max))
        runtime.releaseTSIH(7)
        #expect(runtime.allocateTSIH() == 7, "a released TSIH is available again")
    }

    @Test func acceptErrorsAreClassified() {
        for e in [EMFILE, ENFILE, ENOBUFS, ENOMEM, EIO] { #expect(AcceptFailure.classify(errno: e) == .backOff, "\(e)") }
        for e in [ECONNABORTED, EINTR, EAGAIN, EPROTO, EPERM] {
            #expect(AcceptFailure.classify(errno: e) == .perConnection, "\(e)")
        }
        #expect(AcceptFailure.classify(errno: ECANCELED) == .shutdown)
        #expect(AcceptFailure.errnoName(EMFILE) == "EMFILE")
    }

    @Test func acceptBackoffDoublesToItsCapAndResets() {
        var b = AcceptBackoff()
        var delays: [UInt64] = []
        for _ in 0..<8 { delays.append(b.failed()) }
        #expect(delays == [100, 200, 400, 800, 1600, 3200, 3200, 3200])
        b.succeeded()
        #expect(b.failed() == AcceptBackoff.firstDelayMilliseconds)
    }
}
