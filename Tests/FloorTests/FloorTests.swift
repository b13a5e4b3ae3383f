import Glibc
import Testing
@testable import Floor

/// The floor's pure parts: user_data layouts, the socket errno table, the rate-limited log line, iovecs.
@Suite struct FloorPartsTests {
    @Test func userDataRoundTripsAtTheBitLimits() {
        for (c, g) in [(0, UInt32(0)), (ConnectionOp.connectionLimit - 1, UInt32.max), (4095, UInt32(1))] {
            let u = ConnectionOp(connection: c, generation: g).encode(.send)
            #expect(UserData.kind(u) == OpKind.send.rawValue)
            #expect(ConnectionOp.decode(u) == ConnectionOp(connection: c, generation: g))
        }
        let maxTask = TaskOp(connection: TaskOp.connectionLimit - 1, task: TaskOp.taskLimit - 1, generation: .max)
        #expect(UserData.kind(maxTask.encode()) == OpKind.storeIO.rawValue)
        #expect(TaskOp.decode(maxTask.encode()) == maxTask)
        let zeroTask = TaskOp(connection: 0, task: 0, generation: 0)
        #expect(TaskOp.decode(zeroTask.encode()) == zeroTask)
        #expect(TaskOp.connectionLimit == 16384, "the daemon accepts --max-connections up to 16384")
        for op in [ChannelOp.Op.connect, .send, .recv] {
            let ch = ChannelOp(endpoint: ChannelOp.endpointLimit - 1, op: op, generation: .max)
            #expect(UserData.kind(ch.encode()) == OpKind.sheep.rawValue)
            #expect(ChannelOp.decode(ch.encode()) == ch)
        }
        #expect(ChannelOp.decode(UserData.pack(.sheep, 3 << UInt64(UserData.generationBits))) == nil,
                "an operation code no channel issues")
        let l = ListenerOp(listener: ListenerOp.listenerLimit - 1)
        #expect(UserData.kind(l.encode(.acceptRetry)) == OpKind.acceptRetry.rawValue)
        #expect(ListenerOp.decode(l.encode(.acceptRetry)) == l)
        #expect(UserData.kindBits + UserData.generationBits + TaskOp.connectionBits + TaskOp.taskBits == 64)
        #expect(UserData.kindBits + UserData.generationBits + ChannelOp.endpointBits + ChannelOp.opBits == 64)
    }

    @Test func socketErrnoTable() {
        for e in [EINTR, EAGAIN] { #expect(SocketErrno.classify(errno: e) == .retry) }
        for e in [ECONNRESET, EPIPE, ETIMEDOUT, EHOSTUNREACH, ENOTCONN] { #expect(SocketErrno.classify(errno: e) == .peerGone) }
        for e in [ECANCELED, EBADF, ENOTSOCK, EFAULT, ENOMEM, ENAMETOOLONG] { #expect(SocketErrno.classify(errno: e) == .failed) }
    }

    @Test func rateLimitedLogWritesOneLinePerIntervalWithTheCountLeftOut() {
        var log = RateLimitedLog(intervalSeconds: 10)
        let second: UInt64 = 1_000_000_000
        #expect(log.admit(nowNanos: 5 * second) == 0)
        var quiet = 0
        for i in 0..<1000 where log.admit(nowNanos: 5 * second + UInt64(i) * 1_000_000) == nil { quiet += 1 }
        #expect(quiet == 1000)
        #expect(log.admit(nowNanos: 15 * second) == 1000)
        #expect(log.admit(nowNanos: 16 * second) == nil)
        #expect(RateLimitedLog.suffix(3) == " (3 similar suppressed)" && RateLimitedLog.suffix(0) == "")
    }

    /// A gathered send resumed after a partial send skips what went out: whole pieces first, then part of one.
    @Test func appendIovecSkipsWhatAnEarlierSendTook() {
        let iov = UnsafeMutablePointer<iovec>.allocate(capacity: 3)
        defer { iov.deallocate() }
        let a = UnsafeMutableRawPointer.allocate(byteCount: 48, alignment: 8)
        let b = UnsafeMutableRawPointer.allocate(byteCount: 100, alignment: 8)
        defer { a.deallocate(); b.deallocate() }
        var skip = 60
        var v = appendIovec(iov, 0, a, 48, &skip)
        #expect(v == 0 && skip == 12, "the header went out whole")
        v = appendIovec(iov, v, b, 100, &skip)
        #expect(v == 1 && skip == 0)
        #expect(iov[0].iov_base == UnsafeMutableRawPointer(b + 12) && iov[0].iov_len == 88)
        v = appendIovec(iov, v, a, 48, &skip)
        #expect(v == 2 && iov[1].iov_base == a && iov[1].iov_len == 48, "nothing left to skip")
    }

    @Test func monotonicClockNeverGoesBack() {
        var last = monotonicNanos()
        for _ in 0..<1000 {
            let now = monotonicNanos()
            #expect(now >= last)
            last = now
        }
        #expect(last > 0)
    }
}
