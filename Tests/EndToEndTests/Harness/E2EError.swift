// One error type for the harness, so a failed setup step reads as a sentence in the test report.

struct E2EError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
