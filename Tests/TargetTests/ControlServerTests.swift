// The control socket over a real unix socket in a temporary directory; each test starts and stops
// its own server thread.

import Foundation
import Logging
import Testing
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor

/// Keeps the lines logged through it, for tests that check what the daemon says.
private final class CapturedLog: @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [String] = []
    func append(_ line: String) { lock.lock(); lines.append(line); lock.unlock() }
    var all: [String] { lock.lock(); defer { lock.unlock() }; return lines }

    var logger: Logger { Logger(label: "test") { _ in Handler(log: self) } }

    struct Handler: LogHandler {
        let log: CapturedLog
        var logLevel: Logger.Level = .trace
        var metadata = Logger.Metadata()
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) { log.append("\(event.level): \(event.message)") }
    }
}

private func rawExchange(_ path: String, _ bytes: [UInt8]) throws -> AdminResponse {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    #expect(fd >= 0)
    defer { close(fd) }
    let addr = try #require(ControlWire.address(path))
    #expect(ControlWire.connect(fd, addr) == 0)
    try ControlWire.writeAll(fd, bytes)
    let reply = try ControlWire.readMessage(fd, limit: ControlWire.maxResponseBytes)
    return try JSONDecoder().decode(AdminResponse.self, from: Data(reply))
}

private func withServer(_ body: (String, ControlHarness, ControlServer) throws -> Void) throws {
    let dir = makeTemporaryDirectory()
    #expect(!dir.isEmpty)
    defer { _ = try? FileManager.default.removeItem(atPath: dir) }
    let h = ControlHarness()
    let path = dir + "/socket.0"
    let server = ControlServer(path: path, registry: h.registry)
    try server.start()
    defer { server.stop() }
    try body(path, h, server)
}

@Suite struct ControlServerTests {
    @Test func requestsRoundTripOverTheSocket() throws {
        try withServer { path, h, _ in
            let created = ControlClient.send(AdminRequest(mode: .target, op: .new, tid: 1, targetName: "iqn.2026-01.test:t1"), to: path)
            #expect(created == .success(AdminResponse(exitCode: 0)))
            let dup = ControlClient.send(AdminRequest(mode: .target, op: .new, tid: 1, targetName: "iqn.2026-01.test:t2"), to: path)
            #expect(dup == .success(AdminResponse(exitCode: 22, stderr: "ringtgtadm: this target already exists\n")))
            let shown = try ControlClient.send(AdminRequest(mode: .lld, op: .show), to: path).get()
            #expect(shown.stdout == "LLDs:\n    iscsi: ready\n        Target 1: iqn.2026-01.test:t1\n")
            #expect(h.fabric.latest?.target(tid: 1)?.name == "iqn.2026-01.test:t1")
        }
    }

    @Test func socketIsPrivateAndRemovedOnStop() throws {
        var socketPath = ""
        try withServer { path, _, server in
            socketPath = path
            var st = stat()
            #expect(lstat(path, &st) == 0)
            #expect(st.st_mode & S_IFMT == S_IFSOCK)
            #expect(st.st_mode & 0o777 == 0o600)
            server.stop()
            #expect(access(path, F_OK) != 0)
        }
        #expect(!socketPath.isEmpty)
    }

    @Test func malformedRequestGetsAnErrorAndTheServerKeepsServing() throws {
        try withServer { path, _, _ in
            let garbage = Array("{\"mode\": 7}".utf8)
            let framed = [0, 0, 0, UInt8(garbage.count)] + garbage
            let reply = try rawExchange(path, framed)
            #expect(reply == AdminResponse(exitCode: 22, stderr: "ringtgtadm: invalid request: malformed request\n"))
            let next = ControlClient.send(AdminRequest(mode: .target, op: .show), to: path)
            #expect(next == .success(AdminResponse(exitCode: 0)))
        }
    }

    @Test func oversizeRequestIsRefusedBeforeItIsRead() throws {
        try withServer { path, _, _ in
            let huge = ControlWire.maxRequestBytes + 1
            let header: [UInt8] = [UInt8(huge >> 24), UInt8((huge >> 16) & 0xFF), UInt8((huge >> 8) & 0xFF), UInt8(huge & 0xFF)]
            let reply = try rawExchange(path, header)
            #expect(reply.exitCode == 22)
            #expect(reply.stderr == "ringtgtadm: invalid request: request of \(huge) bytes exceeds \(ControlWire.maxRequestBytes)\n")
            #expect(ControlClient.send(AdminRequest(mode: .portal, op: .show), to: path) == .success(AdminResponse(exitCode: 0)))
        }
    }

    @Test func clientThatHangsUpEarlyDoesNotStopTheServer() throws {
        try withServer { path, _, _ in
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            let addr = try #require(ControlWire.address(path))
            #expect(ControlWire.connect(fd, addr) == 0)
            try ControlWire.writeAll(fd, [0, 0])   // half a length prefix, then gone
            close(fd)
            #expect(ControlClient.send(AdminRequest(mode: .target, op: .show), to: path) == .success(AdminResponse(exitCode: 0)))
        }
    }

    @Test func staleSocketFromADeadDaemonIsReplaced() throws {
        let dir = makeTemporaryDirectory()
        defer { _ = try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/socket.5"
        // A socket file nobody listens on any more.
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = try #require(ControlWire.address(path))
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(bound == 0)
        close(fd)
        let h = ControlHarness()
        let server = ControlServer(path: path, registry: h.registry)
        try server.start()
        defer { server.stop() }
        #expect(ControlClient.send(AdminRequest(mode: .target, op: .show), to: path) == .success(AdminResponse(exitCode: 0)))
    }

    @Test func liveSocketOfAnotherDaemonIsLeftAlone() throws {
        try withServer { path, _, _ in
            let second = ControlServer(path: path, registry: ControlHarness().registry)
            #expect(throws: ControlServer.StartError.inUse(path)) { try second.start() }
            #expect(ControlClient.send(AdminRequest(mode: .target, op: .show), to: path) == .success(AdminResponse(exitCode: 0)))
        }
    }

    @Test func nonSocketFileIsNeverDeleted() throws {
        let dir = makeTemporaryDirectory()
        defer { _ = try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/socket.0"
        #expect(FileManager.default.createFile(atPath: path, contents: Data("keep".utf8)))
        let server = ControlServer(path: path, registry: ControlHarness().registry)
        #expect(throws: ControlServer.StartError.notASocket(path)) { try server.start() }
        #expect(FileManager.default.contents(atPath: path) == Data("keep".utf8))
    }

    /// `ringtgtd -f & ringtgtadm ...`: the daemon listens first thing and serves once ready, so a client that
    /// connects during start-up waits in the backlog and gets its answer instead of "not connected".
    @Test func requestDuringStartUpIsAnsweredOnceServing() throws {
        let dir = makeTemporaryDirectory()
        defer { _ = try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/socket.0"
        let server = ControlServer(path: path, registry: ControlHarness().registry)
        try server.listen()
        defer { server.stop() }
        let answered = DispatchSemaphore(value: 0)
        final class Box: @unchecked Sendable { var result: Result<AdminResponse, ControlClient.Failure>? }
        let box = Box()
        let client = Thread {
            box.result = ControlClient.send(AdminRequest(mode: .target, op: .show), to: path)
            answered.signal()
        }
        client.start()
        // Not served yet: no answer may come (a bounded look, not synchronisation; an answer would be a bug).
        #expect(answered.wait(timeout: .now() + 0.3) == .timedOut)
        try server.serve()
        #expect(answered.wait(timeout: .now() + 30) == .success)
        #expect(box.result == .success(AdminResponse(exitCode: 0)))
    }

    @Test func onlyRootAndTheDaemonsUserMayAdminister() {
        typealias C = ControlPeerPolicy.Credentials
        #expect(ControlPeerPolicy.allows(C(pid: 1, uid: 0, gid: 0), daemonUID: 0))
        #expect(ControlPeerPolicy.allows(C(pid: 1, uid: 0, gid: 100), daemonUID: 1000))   // root, whatever its group
        #expect(ControlPeerPolicy.allows(C(pid: 1, uid: 1000, gid: 1000), daemonUID: 1000))
        #expect(!ControlPeerPolicy.allows(C(pid: 1, uid: 1000, gid: 0), daemonUID: 0))     // group root is not enough
        #expect(!ControlPeerPolicy.allows(C(pid: 1, uid: 65534, gid: 65534), daemonUID: 1000))
    }

    /// The real SO_PEERCRED of a connection from this process is this process's.
    @Test func peerCredentialsAreTheConnectingProcesss() throws {
        var fds: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        let cred = try #require(ControlPeerPolicy.credentials(fds[0]))
        #expect(cred == ControlPeerPolicy.Credentials(pid: getpid(), uid: geteuid(), gid: getegid()))
        #expect(ControlPeerPolicy.credentials(-1) == nil)
    }

    /// A peer the rule refuses gets tgtadm's "invalid request" with the reason, its request is never run,
    /// and the refusal is logged with who it was, at most `refusalLogBurstLines` lines per interval.
    @Test func aRefusedPeerGetsAnErrorAndIsLogged() throws {
        let dir = makeTemporaryDirectory()
        defer { _ = try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/socket.0"
        let log = CapturedLog()
        let h = ControlHarness()
        let stranger = ControlPeerPolicy.Credentials(pid: 4242, uid: 65534, gid: 65534)
        let server = ControlServer(path: path, logger: log.logger, peerCredentials: { _ in stranger }) {
            h.registry.execute($0)
        }
        try server.start()
        defer { server.stop() }
        let attempts = ControlServer.refusalLogBurstLines + 3
        for _ in 0..<attempts {
            let r = ControlClient.send(AdminRequest(mode: .target, op: .new, tid: 1, targetName: "iqn.2026-01.test:t1"), to: path)
            #expect(r == .success(AdminResponse(exitCode: 22, stderr: "ringtgtadm: invalid request: permission denied\n")), "\(r)")
        }
        #expect(h.fabric.latest?.target(tid: 1) == nil, "a refused request must not run")
        let lines = log.all
        #expect(lines.count == ControlServer.refusalLogBurstLines, "\(lines)")
        #expect(lines.first?.contains("refused uid 65534, gid 65534, pid 4242") == true, "\(lines)")
    }

    /// tgtadm with no daemon: "failed to send request hdr to tgt daemon, Transport endpoint is not connected",
    /// exit 107, both for a missing socket and for a dead daemon's socket that refuses connections.
    @Test func clientWithNoDaemonAnswersLikeTgtadm() throws {
        let missing = ControlClient.send(AdminRequest(mode: .target, op: .show), to: "/tmp/ringtgt-no-such-dir/socket.0")
        #expect(missing == .failure(ControlClient.daemonDown))
        #expect(ControlClient.daemonDown.errorNumber == 107)
        #expect(ControlClient.daemonDown.message == "failed to send request hdr to tgt daemon, Transport endpoint is not connected")

        let dir = makeTemporaryDirectory()
        defer { _ = try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/socket.0"
        let server = ControlServer(path: path, registry: ControlHarness().registry)
        try server.listen()
        server.stopServing()   // the name stays, nobody listens: connect() is refused
        #expect(FileManager.default.fileExists(atPath: path))
        let refused = ControlClient.send(AdminRequest(mode: .target, op: .show), to: path)
        #expect(refused == .failure(ControlClient.daemonDown))
        server.stop()
        #expect(!FileManager.default.fileExists(atPath: path))
    }
}
