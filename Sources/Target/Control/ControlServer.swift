// The daemon's control socket: a unix stream socket served by one thread of its own (never a reactor
// core). One request per connection, bounded in size and time; a malformed request gets an error reply.
// Only the daemon's own user (normally root, as tgtd requires) may connect: the socket is mode 0600 and
// the peer's credentials (SO_PEERCRED) are checked on every connection, as tgt's ipc_perm does, so a
// socket made reachable by mistake (a looser mode, a bind mount) is still no way in.

#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging

/// Who may use the control socket. tgtd's ipc_perm admits uid 0 with gid 0 only; ringtgtd admits root and
/// the user it runs as (a daemon run unprivileged, as the tests do, can still be administered by its owner).
public enum ControlPeerPolicy {
    /// A connected peer's SO_PEERCRED (struct ucred).
    public struct Credentials: Equatable, Sendable {
        public var pid: Int32
        public var uid: UInt32
        public var gid: UInt32
    }

    /// The one rule: root, or the daemon's own (effective) user.
    public static func allows(_ peer: Credentials, daemonUID: UInt32) -> Bool {
        peer.uid == 0 || peer.uid == daemonUID
    }

    /// The kernel's record of who connected (nil when it cannot be read: refused).
    public static func credentials(_ fd: Int32) -> Credentials? {
        // struct ucred { pid_t pid; uid_t uid; gid_t gid; } (Glibc hides it behind _GNU_SOURCE).
        var cred: (pid: Int32, uid: UInt32, gid: UInt32) = (0, 0, 0)
        var length = socklen_t(MemoryLayout.size(ofValue: cred))
        guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &length) == 0 else { return nil }
        return Credentials(pid: cred.pid, uid: cred.uid, gid: cred.gid)
    }
}

public final class ControlServer: @unchecked Sendable {
    public enum StartError: Error, Equatable, CustomStringConvertible {
        case pathTooLong(String)
        case inUse(String)            // another daemon answers on this socket
        case notASocket(String)       // something else has this name; we never delete it
        case system(String, Int32)    // the call that failed and errno

        public var description: String {
            switch self {
            case .pathTooLong(let p): return "control socket path too long: \(p)"
            case .inUse(let p): return "control socket \(p) is in use by another daemon (choose another -C/--control-port)"
            case .notASocket(let p): return "\(p) exists and is not a socket"
            case .system(let call, let e): return "\(call): \(String(cString: strerror(e)))"
            }
        }
    }

    /// Pending connections the kernel queues for us.
    static let listenBacklog: Int32 = 16

    /// Refused control connections logged per interval; a local user looping on connect cannot fill the log.
    static let refusalLogBurstLines = 5
    static let refusalLogIntervalSeconds: UInt64 = 10

    public let path: String
    private let handler: (AdminRequest) -> AdminResponse
    private let logger: Logger?
    /// Test hook: who the peer of an accepted connection is (SO_PEERCRED by default).
    private let peerCredentials: (Int32) -> ControlPeerPolicy.Credentials?
    /// Only the accept loop's thread touches it.
    private var refusalLog = RateLimitedLog(intervalSeconds: ControlServer.refusalLogIntervalSeconds,
                                            burst: ControlServer.refusalLogBurstLines)
    /// Listening, not yet served (after `listen()`); the loop owns it once serving.
    private var listenFD: Int32 = -1
    private var loop: AcceptLoop?
    /// The socket's name is ours to remove.
    private var socketPresent = false

    public init(path: String, logger: Logger? = nil,
                peerCredentials: @escaping (Int32) -> ControlPeerPolicy.Credentials? = ControlPeerPolicy.credentials,
                handler: @escaping (AdminRequest) -> AdminResponse) {
        self.path = path
        self.logger = logger
        self.peerCredentials = peerCredentials
        self.handler = handler
    }

    public convenience init(path: String, registry: Registry, logger: Logger? = nil) {
        self.init(path: path, logger: logger) { registry.execute($0) }
    }

    /// Creates the socket (removing a stale one left by a dead daemon) and starts serving.
    public func start() throws {
        try listen()
        try serve()
    }

    /// Creates the socket without serving it yet: a client connects into the backlog and its request waits
    /// until `serve()`. The daemon listens first thing and serves once it is ready, so `ringtgtd -f &
    /// ringtgtadm ...` never races the start-up.
    public func listen() throws {
        precondition(loop == nil && listenFD < 0, "ControlServer started twice")
        // The socket is bound under this name first; it must fit sun_path as well as the final one.
        let temporary = "\(path).tmp-\(getpid())"
        guard ControlWire.address(path) != nil, var tmpAddr = ControlWire.address(temporary) else {
            throw StartError.pathTooLong(path)
        }
        try removeStaleSocket()
        let directory = (path as NSString).deletingLastPathComponent
        if !directory.isEmpty && access(directory, F_OK) != 0 {
            if mkdir(directory, 0o755) != 0 && errno != EEXIST { throw StartError.system("mkdir \(directory)", errno) }
        }

        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw StartError.system("socket", errno) }
        // Bind under a temporary name, restrict it to 0600, then rename it into place, so the socket is
        // never reachable with looser permissions.
        unlink(temporary)
        let bound = withUnsafePointer(to: &tmpAddr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if bound != 0 { let e = errno; close(fd); throw StartError.system("bind \(temporary)", e) }
        if chmod(temporary, 0o600) != 0 { let e = errno; close(fd); unlink(temporary); throw StartError.system("chmod", e) }
        if Glibc.listen(fd, Self.listenBacklog) != 0 { let e = errno; close(fd); unlink(temporary); throw StartError.system("listen", e) }
        if rename(temporary, path) != 0 { let e = errno; close(fd); unlink(temporary); throw StartError.system("rename", e) }
        socketPresent = true
        listenFD = fd
    }

    /// Starts the thread that answers requests (after `listen()`).
    public func serve() throws {
        precondition(loop == nil && listenFD >= 0, "ControlServer.serve() without listen()")
        do {
            loop = try AcceptLoop(listenFD: listenFD, name: "ringtgt-control") { [unowned self] in handle($0) }
        } catch {
            if case .system(let call, let e) = error { throw StartError.system(call, e) }
            throw StartError.system("pipe", EINVAL)
        }
        listenFD = -1   // the loop's now
    }

    /// Stops serving, waits for the thread, removes the socket.
    public func stop() {
        stopServing()
        if socketPresent {
            socketPresent = false
            unlink(path)
        }
    }

    /// Stops answering and closes the socket, but leaves its name until `stop()`: a client connecting now
    /// is refused, and `ringtgtadm --op delete --mode system`, which waits for the name to go, returns only
    /// once the daemon has finished shutting down.
    public func stopServing() {
        if let loop {
            loop.stop()   // closes the socket
            self.loop = nil
        }
        if listenFD >= 0 {
            close(listenFD)
            listenFD = -1
        }
    }

    deinit { stop() }

    /// A socket file nobody answers on is a dead daemon's: remove it. One that answers belongs to a live
    /// daemon; anything that is not a socket is left alone.
    private func removeStaleSocket() throws {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        guard (st.st_mode & S_IFMT) == S_IFSOCK else { throw StartError.notASocket(path) }
        guard let addr = ControlWire.address(path) else { throw StartError.pathTooLong(path) }
        let probe = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if probe < 0 { throw StartError.system("socket", errno) }
        defer { close(probe) }
        if ControlWire.connect(probe, addr) == 0 { throw StartError.inUse(path) }
        unlink(path)
    }

    /// Checks the peer; a refused one is logged (rate-limited) with who it was.
    private func peerAllowed(_ fd: Int32) -> Bool {
        let peer = peerCredentials(fd)
        if let peer, ControlPeerPolicy.allows(peer, daemonUID: geteuid()) { return true }
        if let logger, let suppressed = refusalLog.admit(nowNanos: monotonicNanos()) {
            let who = peer.map { "uid \($0.uid), gid \($0.gid), pid \($0.pid)" } ?? "a peer whose credentials cannot be read"
            logger.warning("control socket \(path): refused \(who): only root or uid \(geteuid()) may administer this daemon\(RateLimitedLog.suffix(suppressed))")
        }
        return false
    }

    private func handle(_ fd: Int32) {
        ControlWire.setTimeouts(fd, seconds: ControlWire.ioTimeoutSeconds)
        let allowed = peerAllowed(fd)
        let denied = AdminResponse.failure(AdminError(.invalidRequest, "permission denied"))
        let response: AdminResponse
        // A refused peer's request is read too (and dropped): closing a socket with unread bytes resets it,
        // and the peer would see a broken pipe instead of the reason.
        do {
            let bytes = try ControlWire.readMessage(fd, limit: ControlWire.maxRequestBytes)
            if !allowed {
                response = denied
            } else if let request = try? JSONDecoder().decode(AdminRequest.self, from: Data(bytes)) {
                response = handler(request)
            } else {
                response = .failure(AdminError(.invalidRequest, "malformed request"))
            }
        } catch .tooLarge(let n) {
            response = allowed ? .failure(AdminError(.invalidRequest, "request of \(n) bytes exceeds \(ControlWire.maxRequestBytes)")) : denied
        } catch {
            return   // the peer went away or stalled: nobody to answer
        }
        guard let payload = try? JSONEncoder().encode(response) else { return }
        try? ControlWire.writeMessage(fd, Array(payload))
    }
}
