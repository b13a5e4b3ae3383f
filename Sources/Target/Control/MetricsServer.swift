// `ringtgtd --metrics portal=HOST:PORT`: a minimal HTTP/1.0 and 1.1 responder for Prometheus, on a thread of
// its own (never a reactor core). One request per connection, one connection at a time, each bounded in
// size and time; the page is built on demand from the cores' counters (Registry.metricsText).

#if canImport(Glibc)
import Glibc
#endif
import Foundation

public final class MetricsServer: @unchecked Sendable {
    /// Largest request head read (request line and headers); a longer one is answered 431.
    static let maxRequestBytes = 8192
    /// A client that sends its request or reads the answer slower than this is dropped.
    static let ioTimeoutSeconds = 5
    /// Pending connections the kernel queues for us.
    static let listenBacklog: Int32 = 16
    /// Prometheus' text exposition format.
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    public let requested: Portal
    /// The address bound (the kernel's port when `requested` asked for port 0); valid after `start`.
    public private(set) var bound: Portal
    private let page: () -> String
    private var loop: AcceptLoop?

    public init(portal: Portal, page: @escaping () -> String) {
        requested = portal
        bound = portal
        self.page = page
    }

    public func start() throws {
        precondition(loop == nil, "MetricsServer started twice")
        let fd = try SocketAddress.bound(requested)
        do {
            try SocketAddress.listen(fd, portal: requested)
            bound.port = SocketAddress.boundPort(fd)
            loop = try AcceptLoop(listenFD: fd, name: "ringtgt-metrics") { [unowned self] in handle($0) }
        } catch {
            close(fd)
            throw error
        }
    }

    public func stop() {
        loop?.stop()
        loop = nil
    }

    deinit { stop() }

    private func handle(_ fd: Int32) {
        ControlWire.setTimeouts(fd, seconds: Self.ioTimeoutSeconds)
        var head: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1024)
        while MetricsHTTP.headEnd(head) == nil && head.count <= Self.maxRequestBytes {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            head += chunk[0..<n]
        }
        let answer = MetricsHTTP.respond(to: head, limit: Self.maxRequestBytes, page: page)
        try? ControlWire.writeAll(fd, answer)
    }
}

/// The HTTP side of the metrics endpoint, pure: request bytes in, response bytes out.
public enum MetricsHTTP {
    /// Where the request head ends (after CRLF CRLF, or LF LF from a lax client), nil if not yet.
    static func headEnd(_ bytes: [UInt8]) -> Int? {
        var i = 0
        while i + 1 < bytes.count {
            if bytes[i] == 0x0A && bytes[i + 1] == 0x0A { return i + 2 }
            if i + 3 < bytes.count && bytes[i] == 0x0D && bytes[i + 1] == 0x0A && bytes[i + 2] == 0x0D
                && bytes[i + 3] == 0x0A { return i + 4 }
            i += 1
        }
        return nil
    }

    static func response(_ status: String, body: String, contentType: String = "text/plain; charset=utf-8",
                         extra: String = "", includeBody: Bool = true) -> [UInt8] {
        let bytes = Array(body.utf8)
        var text = "HTTP/1.1 \(status)\r\nContent-Type: \(contentType)\r\nContent-Length: \(bytes.count)\r\n"
        text += extra + "Connection: close\r\n\r\n"
        return Array(text.utf8) + (includeBody ? bytes : [])
    }

    /// GET (or HEAD) /metrics answers the page; anything else gets the status that says why not.
    public static func respond(to request: [UInt8], limit: Int, page: () -> String) -> [UInt8] {
        guard let end = headEnd(request) else {
            if request.count > limit { return response("431 Request Header Fields Too Large", body: "request too large\n") }
            return response("400 Bad Request", body: "incomplete request\n")
        }
        guard let head = String(bytes: request[0..<end], encoding: .utf8),
              let line = head.split(whereSeparator: \.isNewline).first else {
            return response("400 Bad Request", body: "malformed request\n")
        }
        let parts = line.split(separator: " ")
        guard parts.count == 3, parts[2].hasPrefix("HTTP/1.") else {
            return response("400 Bad Request", body: "malformed request line\n")
        }
        let method = parts[0], target = parts[1]
        guard method == "GET" || method == "HEAD" else {
            return response("405 Method Not Allowed", body: "only GET and HEAD\n", extra: "Allow: GET, HEAD\r\n")
        }
        let path = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)[0]
        guard path == "/metrics" else { return response("404 Not Found", body: "try /metrics\n") }
        return response("200 OK", body: page(), contentType: MetricsServer.contentType, includeBody: method == "GET")
    }
}
