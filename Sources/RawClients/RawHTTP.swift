// The one raw HTTP client: a GET of the daemon's metrics endpoint over the raw socket, which answers and closes
// (no keep-alive), for the end-to-end tests and perf/livefuzz.

import TestSupport

/// GET `path` from `endpoint` over HTTP/1.1: the status line, the head and the body. The exchange is bounded
/// by `timeoutSeconds`, and at most `maxBytes` of the answer are read.
public func httpGet(_ endpoint: Endpoint, path: String, timeoutSeconds: Double,
                    maxBytes: Int) throws -> (status: String, head: String, body: String) {
    let s = try RawSocket(endpoint, sendTimeoutSeconds: timeoutSeconds)
    defer { s.close() }
    try s.send(Array("GET \(path) HTTP/1.1\r\nHost: \(endpoint.host):\(endpoint.port)\r\nAccept: text/plain\r\n\r\n".utf8))
    guard let bytes = s.readToEnd(deadline: monotonicSeconds() + timeoutSeconds, maxBytes: maxBytes) else {
        throw RawClientError("GET \(path) from \(endpoint): no complete answer within \(timeoutSeconds) s")
    }
    let text = String(decoding: bytes, as: UTF8.self)
    guard let split = text.range(of: "\r\n\r\n") else { throw RawClientError("no HTTP head in:\n\(text)") }
    let head = String(text[..<split.lowerBound])
    return (String(head.split(separator: "\r\n")[0]), head, String(text[split.upperBound...]))
}
