// Test support: an in-process server on an ephemeral port that every test stops, raw pipelined clients,
// and a child-process runner for the real binary (restart and CLI tests).

import Foundation
#if canImport(Glibc)
import Floor
import Glibc
#endif
import Testing
@testable import SheepTestServer
import SheepProtocol
import TestSupport

/// Runs `body` against a fresh in-process server and always stops it.
func withServer<T>(_ configure: (inout ServerOptions) -> Void = { _ in },
                   _ body: (SheepTestServer) throws -> T) throws -> T {
    var options = ServerOptions()
    options.tcpPort = 0
    configure(&options)
    let server = try SheepTestServer(options: options)
    try server.start()
    defer { server.stop() }
    return try body(server)
}

extension SheepTestServer {
    var endpoint: SheepBackingSpec.Endpoint { .tcp(host: "127.0.0.1", port: tcpPort ?? 0) }
    func client() throws -> SheepClient { try SheepClient(endpoint: endpoint) }
    func dog() throws -> DogOperations { DogOperations(client: try client()) }
}

/// A unique scratch directory, removed by `removeTree`.
func makeTempDirectory() -> String {
    var template = Array("/tmp/sheep-test-XXXXXX".utf8CString)
    let p = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    return p.map { String(cString: $0) } ?? "/tmp/sheep-test-fallback-\(getpid())"
}

func removeTree(_ path: String) {
    guard let entries = directoryEntries(path) else { unlink(path); return }
    for (name, type) in entries {
        let full = path + "/" + name
        if type == UInt8(DT_DIR) { removeTree(full) } else { unlink(full) }
    }
    rmdir(path)
}

func pattern(_ seed: UInt8, _ count: Int) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: Int(seed) &* 31 &+ $0 &* 7 &+ ($0 >> 9)) }
}

/// Sends `requests` in one write (so they reach the server's scheduler together), then collects one reply
/// per request, in the order they arrive.
func pipeline(_ c: SheepClient, _ requests: [(SheepRequestHeader, [UInt8])]) throws -> [SheepReply] {
    var bytes: [UInt8] = []
    for (h, p) in requests { bytes += h.bytes + p }
    try bytes.withUnsafeBytes { try writeAll(c.fd, $0.baseAddress!, $0.count) }
    return try requests.map { _ in try c.receive() }
}

/// Whether a socket has something to read (or is closed) within `milliseconds`.
func readable(_ fd: Int32, milliseconds: Int32) -> Bool {
    var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    return poll(&p, 1, milliseconds) > 0
}

// MARK: - Child processes (TestSupport's bounded runner)

/// The server binary, built next to the test bundle.
func serverBinary() -> URL {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buf, buf.count - 1)
    var exe = n > 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : CommandLine.arguments[0]
    // …/.build/x86_64-unknown-linux-gnu/debug/ringtgtPackageTests.xctest
    while let slash = exe.lastIndex(of: "/"), !exe.hasSuffix("/debug") && !exe.hasSuffix("/release") {
        exe = String(exe[..<slash])
        if exe.isEmpty { break }
    }
    return URL(fileURLWithPath: exe + "/ringtgt-sheep-testserver")
}

/// Starts `ringtgt-sheep-testserver serve ARGS` with its logs in `dir` and waits for its `listening tcp` line.
func startServerProcess(_ args: [String], logDir dir: String) throws -> (process: ToolProcess, lines: [String]) {
    try SheepTestServerFixture.start(serverBinary(), args, logDir: URL(fileURLWithPath: dir), readyPrefixes: ["listening tcp "])
}

/// Runs `ringtgt-sheep-testserver ARGS` to completion with `stdin` bytes; its exit status (-1 when it was killed)
/// and its stdout bytes.
func runTool(_ args: [String], stdin input: [UInt8] = []) throws -> (status: Int32, stdout: [UInt8]) {
    let dir = makeTempDirectory()
    defer { removeTree(dir) }
    let stdin = URL(fileURLWithPath: dir + "/stdin"), stdout = URL(fileURLWithPath: dir + "/stdout")
    try Data(input).write(to: stdin)
    let r = try DogCommand(executable: serverBinary(), connection: [], logDir: URL(fileURLWithPath: dir))
        .run(args, stdin: stdin, stdout: stdout)
    return (r.killedBySignal || r.timedOut ? -1 : r.exitStatus, readWholeFile(stdout.path) ?? [])
}
