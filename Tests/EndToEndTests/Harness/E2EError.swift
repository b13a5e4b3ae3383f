// One error type for the harness, so a failed setup step reads as a sentence in the test report.

struct E2EError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The last `maxBytes` of a log, for failure messages: enough to see why, small enough to read.
func tail(_ text: String, maxBytes: Int = 4000) -> String {
    let utf8 = Array(text.utf8)
    if utf8.count <= maxBytes { return text }
    return "…" + String(decoding: utf8[(utf8.count - maxBytes)...], as: UTF8.self)
}
