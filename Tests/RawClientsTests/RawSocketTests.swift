// RawSocket against a loopback peer this test holds: the outcomes every raw client is built on (bytes, a
// timeout at the deadline, the peer's close), reading to the end, and waiting for a close while data flows.

import RawClients
import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A listening socket on 127.0.0.1, port 0 (the kernel's choice, read back), and the one connection it accepts.
final class LoopbackPeer {
    let listener: Int32
    let endpoint: Endpoint
    private(set) var fd: Int32 = -1

    init() throws {
        let l = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &a) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(l, $0, len) == 0 && listen(l, 1) == 0 && getsockname(l, $0, &len) == 0
            }
        }
        guard ok else {
            close(l)
            throw RawClientError("listen on 127.0.0.1:0: errno \(errno)")
        }
        listener = l
        endpoint = Endpoint(host: "127.0.0.1", port: Int(UInt16(bigEndian: a.sin_port)), portalGroupTag: 1)
    }

    /// The client's connection (already in the backlog once RawSocket's connect returned). Its sends give up
    /// after `RawSocketTests.peerSendTimeoutSeconds`: a client that stops reading fails the test, never hangs it.
    func accept() {
        fd = Glibc.accept(listener, nil, nil)
        var tv = timeval(tv_sec: RawSocketTests.peerSendTimeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    func send(_ bytes: [UInt8]) {
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return }
            sent += n
        }
    }

    func closeConnection() { if fd >= 0 { close(fd); fd = -1 } }

    deinit { closeConnection(); close(listener) }
}

@Suite struct RawSocketTests {
    /// How long a read that must time out waits: short, it is the bound under test.
    static let shortWaitSeconds = 0.2
    /// How long a read that must succeed may wait.
    static let answerSeconds = 10.0
    static let peerSendTimeoutSeconds = 10
    /// What the peer sends before the client reads: well inside loopback's socket buffers.
    static let unreadBytes = 40_000

    @Test func readsBytesThenTimesOutThenSeesTheClose() throws {
        let peer = try LoopbackPeer()
        let s = try RawSocket(peer.endpoint)
        peer.accept()
        peer.send([1, 2, 3, 4, 5])
        #expect(s.read(3, deadline: monotonicSeconds() + Self.answerSeconds) == .bytes([1, 2, 3]))
        #expect(s.read(2, deadline: monotonicSeconds() + Self.answerSeconds) == .bytes([4, 5]))
        let before = monotonicSeconds()
        #expect(s.read(1, deadline: before + Self.shortWaitSeconds) == .timeout)
        #expect(monotonicSeconds() - before >= Self.shortWaitSeconds)
        peer.send([6])
        peer.closeConnection()
        #expect(s.read(2, deadline: monotonicSeconds() + Self.answerSeconds) == .closed, "one byte, then the end: not two bytes")
    }

    @Test func readToEndStopsAtTheCloseOrTheLimit() throws {
        let peer = try LoopbackPeer()
        let whole = patternBytes(Self.unreadBytes, seed: 3)
        let s = try RawSocket(peer.endpoint)
        peer.accept()
        peer.send(whole)
        #expect(s.readToEnd(deadline: monotonicSeconds() + Self.shortWaitSeconds, maxBytes: 1 << 20) == nil,
                "still open at the deadline")
        peer.closeConnection()
        #expect(s.readToEnd(deadline: monotonicSeconds() + Self.answerSeconds, maxBytes: 1 << 20) == whole)

        let peer2 = try LoopbackPeer()
        let s2 = try RawSocket(peer2.endpoint)
        peer2.accept()
        peer2.send(whole)
        #expect(s2.readToEnd(deadline: monotonicSeconds() + Self.answerSeconds, maxBytes: 1000) == Array(whole.prefix(1000)))
    }

    @Test func awaitCloseDiscardsWhatArrivesUntilTheClose() throws {
        let peer = try LoopbackPeer()
        let s = try RawSocket(peer.endpoint)
        peer.accept()
        peer.send(patternBytes(Self.unreadBytes, seed: 4))
        #expect(!s.awaitClose(deadline: monotonicSeconds() + Self.shortWaitSeconds), "open: false at the deadline")
        peer.send(patternBytes(Self.unreadBytes, seed: 5))
        peer.closeConnection()
        #expect(s.awaitClose(deadline: monotonicSeconds() + Self.answerSeconds))
    }
}
