// Test support: an in-process server on an ephemeral port that every test stops, raw pipelined clients,
// and a child-process runner for the real binary (restart and CLI tests).

#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import SheepTestServer
import SheepProtocol

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
    guard let dir = opendir(path) else { unlink(path); return }
    while let e = readdir(dir) {
        let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        if name == "." || name == ".." { continue }
        let full = path + "/" + name
        if e.pointee.d_type == UInt8(DT_DIR) { removeTree(full) } else { unlink(full) }
    }
    closedir(dir)
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

// MARK: - Child processes

/// The server binary, built next to the test bundle.
func serverBinaryPath() -> String {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buf, buf.count - 1)
    var exe = n > 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : CommandLine.arguments[0]
    // …/.build/x86_64-unknown-linux-gnu/debug/ringtgtPackageTests.xctest
    while let slash = exe.lastIndex(of: "/"), !exe.hasSuffix("/debug") && !exe.hasSuffix("/release") {
        exe = String(exe[..<slash])
        if exe.isEmpty { break }
    }
    return exe + "/ringtgt-sheep-testserver"
}

final class ChildProcess {
    let pid: pid_t
    private let stdoutFD: Int32
    private var buffered: [UInt8] = []
    private var reaped = false

    init(_ path: String, _ args: [String]) throws {
        var outPipe: [Int32] = [0, 0]
        guard pipe(&outPipe) == 0 else { throw SysError("pipe") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        posix_spawn_file_actions_addclose(&actions, outPipe[0])
        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + args).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var p: pid_t = 0
        let rc = posix_spawn(&p, path, &actions, nil, argv, environ)
        close(outPipe[1])
        guard rc == 0 else { close(outPipe[0]); throw SysError("posix_spawn \(path)", rc) }
        pid = p
        stdoutFD = outPipe[0]
    }

    /// The next stdout line (blocking), nil at end of output.
    func readLine() -> String? {
        while true {
            if let nl = buffered.firstIndex(of: 0x0A) {
                let line = String(decoding: buffered[0..<nl], as: UTF8.self)
                buffered.removeSubrange(0...nl)
                return line
            }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = chunk.withUnsafeMutableBytes { read(stdoutFD, $0.baseAddress!, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return nil }
            buffered.append(contentsOf: chunk[0..<n])
        }
    }

    /// Sends `signal` and reaps the process; returns the wait status.
    @discardableResult
    func kill(_ signal: Int32 = SIGKILL) -> Int32 {
        guard !reaped else { return 0 }
        Glibc.kill(pid, signal)
        return wait()
    }

    @discardableResult
    func wait() -> Int32 {
        guard !reaped else { return 0 }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        reaped = true
        close(stdoutFD)
        return status
    }

    deinit { if !reaped { kill() } }
}

/// Runs the binary to completion with `stdin` bytes, returning (exit status, stdout bytes).
func runTool(_ args: [String], stdin input: [UInt8] = []) throws -> (status: Int32, stdout: [UInt8]) {
    var inPipe: [Int32] = [0, 0], outPipe: [Int32] = [0, 0]
    guard pipe(&inPipe) == 0, pipe(&outPipe) == 0 else { throw SysError("pipe") }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_adddup2(&actions, inPipe[0], 0)
    posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
    posix_spawn_file_actions_addclose(&actions, inPipe[1])
    posix_spawn_file_actions_addclose(&actions, outPipe[0])
    let path = serverBinaryPath()
    let argv: [UnsafeMutablePointer<CChar>?] = ([path] + args).map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, path, &actions, nil, argv, environ)
    close(inPipe[0]); close(outPipe[1])
    guard rc == 0 else { close(inPipe[1]); close(outPipe[0]); throw SysError("posix_spawn", rc) }
    // Feed stdin from a thread so a large input cannot deadlock against a full stdout pipe.
    let writer = input
    let wfd = inPipe[1]
    let t = startThread {
        var w = writer
        w.withUnsafeMutableBytes { if $0.count > 0 { _ = try? writeAll(wfd, $0.baseAddress!, $0.count) } }
        close(wfd)
    }
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(outPipe[0], $0.baseAddress!, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }
        out.append(contentsOf: chunk[0..<n])
    }
    close(outPipe[0])
    if let t { joinThread(t) }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return (status, out)
}
