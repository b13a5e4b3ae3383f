import Glibc
import Testing
@testable import Floor

/// The floor's pure parts: user_data layouts, the socket errno table, the rate-limited log line, iovecs.
@Suite struct FloorPartsTests {
    /// Numeric IPv4 and IPv6 addresses (IPv6 with or without brackets) become the right sockaddr; a host name
    /// or garbage does not; the address binds and connects over loopback.
    @Test func numericSocketAddress() throws {
        let v4 = try #require(NumericSocketAddress(host: "127.0.0.1", port: 3260))
        #expect(v4.family == AF_INET && Int(v4.length) == MemoryLayout<sockaddr_in>.size)
        v4.withSockaddr { p, _ in
            p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                #expect(UInt16(bigEndian: $0.pointee.sin_port) == 3260)
                #expect($0.pointee.sin_addr.s_addr == inet_addr("127.0.0.1"))
            }
        }
        for host in ["::1", "[::1]"] {
            let v6 = try #require(NumericSocketAddress(host: host, port: 1))
            #expect(v6.family == AF_INET6 && Int(v6.length) == MemoryLayout<sockaddr_in6>.size)
        }
        for bad in ["localhost", "", "1.2.3", "[::1", "::g"] { #expect(NumericSocketAddress(host: bad, port: 1) == nil) }

        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        #expect(NumericSocketAddress(host: "127.0.0.1", port: 0)!.bind(listener) == 0)
        #expect(listen(listener, 1) == 0)
        var a = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &len) } }
        let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(client) }
        #expect(NumericSocketAddress(host: "127.0.0.1", port: Int(UInt16(bigEndian: a.sin_port)))!.connect(client) == 0)
    }

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
