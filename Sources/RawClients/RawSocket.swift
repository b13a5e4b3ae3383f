// The blocking loopback socket under the raw clients: connect (optionally from another loopback address),
// send with a kernel send timeout, and reads that wait at most until a deadline, so a peer that neither
// answers nor closes shows up as `.timeout`, never a hang.

import Floor
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// What a raw client found wrong, as a sentence for the test report or the tool's output.
public struct RawClientError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Seconds on a monotonic clock, for deadlines.
public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// Bounds of the socket, with their units.
public enum RawSocketLimits {
    /// Kernel send timeout by default: a send blocked longer than this means the peer stopped reading.
    public static let sendTimeoutSeconds = 10.0
    /// Bytes asked of the kernel per recv.
    public static let receiveChunkBytes = 65536
    /// Consumed bytes the read buffer keeps before it compacts.
    public static let compactAfterBytes = 1 << 20
}

/// A connected TCP socket whose reads wait at most until a deadline.
public final class RawSocket {
    public private(set) var fd: Int32
    private var buffer: [UInt8] = []
    private var bufferStart = 0
    private var chunk = [UInt8](repeating: 0, count: RawSocketLimits.receiveChunkBytes)

    public enum Read: Equatable {
        case bytes([UInt8])
        /// EOF or a reset: the peer ended the connection.
        case closed
        /// Nothing (or not enough) arrived before the deadline.
        case timeout
    }

    /// Connects to `endpoint`. `receiveBufferBytes` shrinks SO_RCVBUF (set before connect so the window the
    /// peer sees is small from the start). `sourceAddress` (IPv4, e.g. "127.0.0.2") binds the local end first,
    /// so a client can appear as many initiators over loopback. Every send gives up after `sendTimeoutSeconds`.
    public init(_ endpoint: Endpoint, receiveBufferBytes: Int? = nil, sourceAddress: String? = nil,
                sendTimeoutSeconds: Double = RawSocketLimits.sendTimeoutSeconds) throws {
        fd = socket(endpoint.isIPv6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw RawClientError("socket: errno \(errno)") }
        let whole = Int(sendTimeoutSeconds)
        var tv = timeval(tv_sec: whole, tv_usec: Int((sendTimeoutSeconds - Double(whole)) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        if var rcv = receiveBufferBytes.map(Int32.init) {
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, socklen_t(MemoryLayout<Int32>.size))
        }
        if let sourceAddress {
            guard let source = NumericSocketAddress(host: sourceAddress, port: 0), source.bind(fd) == 0 else {
                let e = errno
                Glibc.close(fd)
                fd = -1
                throw RawClientError("bind to \(sourceAddress): errno \(e)")
            }
        }
        let rc = endpoint.connect(fd)
        guard rc == 0 else {
            let e = errno
            Glibc.close(fd)
            fd = -1
            throw RawClientError("connect to \(endpoint): errno \(e)")
        }
    }

    deinit { close() }

    public func close() {
        if fd >= 0 { Glibc.close(fd); fd = -1 }
    }

    /// Sends every byte; throws when the peer reset the connection or stopped reading past the send timeout.
    public func send(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw RawClientError("send failed after \(sent) of \(bytes.count) bytes: errno \(errno)")
            }
            sent += n
        }
    }

    /// Sends and ignores failure: for bytes sent to a peer that may already have closed on us.
    public func sendIgnoringErrors(_ bytes: [UInt8]) { try? send(bytes) }

    /// Reads exactly `count` bytes, or reports EOF / the deadline.
    public func read(_ count: Int, deadline: Double) -> Read {
        let got = peek(count, deadline: deadline)
        guard case .bytes = got else { return got }
        bufferStart += count
        if bufferStart > RawSocketLimits.compactAfterBytes { buffer.removeFirst(bufferStart); bufferStart = 0 }
        return got
    }

    /// The next `count` bytes without consuming them (the next `read` returns them again), or EOF / the
    /// deadline: a look at what follows before deciding how to read it, e.g. whether a digest the target
    /// should not have sent follows a PDU (see `readPDU`'s `strayDigests`).
    public func peek(_ count: Int, deadline: Double) -> Read {
        while buffer.count - bufferStart < count {
            if let end = receiveMore(deadline: deadline) { return end }
        }
        return .bytes(Array(buffer[bufferStart..<(bufferStart + count)]))
    }

    /// Hands the connected descriptor to its next owner (perf/loadgen's io_uring workers) with the send
    /// timeout cleared; this socket then neither reads nor closes it. Throws, closing the socket, when bytes
    /// were received that nobody read: they would be lost to the new owner.
    public func detach() throws -> Int32 {
        guard buffer.count == bufferStart else {
            let unread = buffer.count - bufferStart
            close()
            throw RawClientError("\(unread) bytes received but not read when the socket was handed over")
        }
        var none = timeval(tv_sec: 0, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &none, socklen_t(MemoryLayout<timeval>.size))
        let handed = fd
        fd = -1
        return handed
    }

    /// Reads and discards until EOF. Returns false if the connection is still open at the deadline.
    public func awaitClose(deadline: Double) -> Bool {
        while true {
            buffer.removeAll(keepingCapacity: true)
            bufferStart = 0
            switch receiveMore(deadline: deadline) {
            case .closed?: return true
            case .timeout?: return false
            case .bytes?, nil: continue
            }
        }
    }

    /// Everything until EOF, at most `maxBytes`; nil when the deadline passes first.
    public func readToEnd(deadline: Double, maxBytes: Int) -> [UInt8]? {
        while buffer.count - bufferStart < maxBytes {
            switch receiveMore(deadline: deadline) {
            case .closed?: return Array(buffer[bufferStart...])
            case .timeout?: return nil
            case .bytes?, nil: continue
            }
        }
        return Array(buffer[bufferStart..<(bufferStart + maxBytes)])
    }

    /// One recv into the buffer (nil), or how the wait ended.
    private func receiveMore(deadline: Double) -> Read? {
        while true {
            let wait = deadline - monotonicSeconds()
            if wait <= 0 { return .timeout }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, Int32(min(wait * 1000 + 1, 60_000)))
            if r < 0 { if errno == EINTR { continue }; return .closed }
            if r == 0 { continue }   // re-checks the deadline
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, Int32(MSG_DONTWAIT)) }
            if n == 0 { return .closed }
            if n < 0 {
                if errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK { continue }
                return .closed   // ECONNRESET and friends
            }
            if bufferStart > 0 && bufferStart == buffer.count { buffer.removeAll(keepingCapacity: true); bufferStart = 0 }
            buffer.append(contentsOf: chunk[0..<n])
            return nil
        }
    }
}
