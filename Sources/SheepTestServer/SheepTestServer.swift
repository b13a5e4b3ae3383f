// The server: listeners (TCP and/or unix), one thread per client connection, an optional admin listener,
// and the runtime controls tests use (faults on/off, cut and restore the service, pause and resume).
// With `nodes` > 1 it is several sheep nodes of one cluster: each node listens on its own port (node 0 on
// `tcpPort`, the others on free ports) and unix path (`unixPath`, then `unixPath.N`), and a request is
// executed as the node it arrived through (locks and inode coherence are per node, SheepCluster.swift).
// A node can be killed (it leaves the cluster: listeners and connections closed, shared locks dropped) and
// started again.

#if canImport(Glibc)
import Glibc
#endif
import Logging
import SheepProtocol

struct ServerOptions: Sendable {
    /// Address the sheep TCP listener binds (IPv4 or IPv6 literal or name).
    var listenHost = "127.0.0.1"
    /// nil: no TCP listener. 0: an ephemeral port.
    var tcpPort: Int?
    var unixPath: String?
    /// nil: no admin listener. 0: an ephemeral port. Always bound to the loopback address.
    var adminPort: Int?
    var order: ReplyOrder = .random
    var reorderWindow = 8
    /// A reorder window that does not fill runs after this much input silence.
    var reorderIdleMilliseconds = 20
    var seed: UInt64 = 1
    var faults = FaultPlan()
    var faultsEnabled = true
    var cluster = ClusterConfig()
    var dataDirectory: String?
    /// Sheep nodes of the cluster, 1...maxNodes.
    var nodes = 1
    static let maxNodes = 8
}

final class SheepTestServer: @unchecked Sendable {
    let options: ServerOptions
    let cluster: SheepCluster
    let log: Logger

    private let registry = PosixLock()
    private var connections: [UInt64: ClientConnection] = [:]
    private var nextConnectionNumber: UInt64 = 0
    private var listeners: [Listener] = []
    private var adminListener: Listener?
    private var isCut = false
    private var stopping = false
    private let exited = PosixCondition()
    private var liveThreads = 0

    private let faultLock = PosixLock()
    private var faults: FaultPlan
    private var faultsEnabled: Bool

    private let pause = PosixCondition()
    private var paused = false

    private(set) var adminPort: UInt16?
    /// Per node: the bound TCP port (kept across cut/kill so a node comes back on it).
    private var nodeTCPPorts: [UInt16?]
    private var killedNodes: Set<Int> = []
    var tcpPort: UInt16? { registry.withLock { nodeTCPPorts[0] } }
    var unixPath: String? { options.unixPath }

    func tcpPort(node: Int) -> UInt16? { registry.withLock { nodeTCPPorts[node] } }
    func unixPath(node: Int) -> String? {
        guard let p = options.unixPath else { return nil }
        return node == 0 ? p : "\(p).\(node)"
    }

    init(options: ServerOptions, logger: Logger = Logger(label: "sheep-testserver")) throws {
        self.options = options
        log = logger
        faults = options.faults
        faultsEnabled = options.faultsEnabled
        nodeTCPPorts = Array(repeating: nil, count: max(1, options.nodes))
        let l = logger
        cluster = try SheepCluster(config: options.cluster, dataDirectory: options.dataDirectory) { l.info("\($0)") }
    }

    // MARK: - Lifecycle

    func start() throws {
        try openServiceListeners()
        if let port = options.adminPort {
            let admin = try Listener.tcp(host: "127.0.0.1", port: port)
            adminListener = admin
            adminPort = admin.port
            try startAcceptThread(admin, admin: true)
        }
    }

    private func openServiceListeners() throws {
        let nodes = registry.withLock { (0..<nodeTCPPorts.count).filter { !killedNodes.contains($0) } }
        try openListeners(nodes: nodes)
    }

    private func openListeners(nodes: [Int]) throws {
        var opened: [Listener] = []
        do {
            for node in nodes {
                if let port = options.tcpPort {
                    // After a cut or a kill, come back on the same port.
                    let previous = registry.withLock { nodeTCPPorts[node] }
                    let l = try Listener.tcp(host: options.listenHost, port: previous.map(Int.init) ?? (node == 0 ? port : 0),
                                             node: node)
                    registry.withLock { nodeTCPPorts[node] = l.port }
                    opened.append(l)
                }
                if let path = unixPath(node: node) { opened.append(try Listener.unix(path: path, node: node)) }
            }
        } catch {
            opened.forEach { $0.close() }
            throw error
        }
        registry.withLock { listeners += opened }
        for l in opened { try startAcceptThread(l, admin: false) }
    }

    /// The node leaves the cluster as a killed sheep does: its listeners and connections close, and the
    /// others see it leave (`remove_node_from_participants`).
    func killNode(_ node: Int) throws {
        guard node >= 0 && node < nodeTCPPorts.count else { throw SysError("no node \(node)", EINVAL) }
        let ls: [Listener] = registry.withLock {
            guard killedNodes.insert(node).inserted else { return [] }
            let mine = listeners.filter { $0.node == node }
            listeners.removeAll { $0.node == node }
            return mine
        }
        ls.forEach { $0.shutdownAndJoin(); $0.close() }
        registry.withLock { connections.values.filter { $0.node == node }.forEach { $0.shutdownSocket() } }
        cluster.removeNode(node)
    }

    /// A killed node joins again (a fresh sheep: it holds no shared locks).
    func startNode(_ node: Int) throws {
        guard node >= 0 && node < nodeTCPPorts.count else { throw SysError("no node \(node)", EINVAL) }
        let start: Bool = registry.withLock { killedNodes.remove(node) != nil && !isCut }
        if start { try openListeners(nodes: [node]) }
    }

    /// Stops everything and waits for every thread the server started.
    func stop() {
        let ls: [Listener] = registry.withLock {
            stopping = true
            return listeners + (adminListener.map { [$0] } ?? [])
        }
        pause.withLock { pause.broadcast() }
        cluster.indexHold.release()   // a held index write must not keep its connection's thread
        ls.forEach { $0.shutdownAndJoin() }
        registry.withLock { connections.values.forEach { $0.shutdownSocket() } }
        exited.withLock { exited.wait(while: { liveThreads > 0 }) }
        ls.forEach { $0.close() }
        registry.withLock { listeners = []; adminListener = nil }
    }

    var isStopping: Bool { registry.withLock { stopping } }

    // MARK: - Controls

    func currentFaults() -> FaultPlan? {
        faultLock.withLock { faultsEnabled && !faults.isEmpty ? faults : nil }
    }

    func setFaults(_ plan: FaultPlan) { faultLock.withLock { faults = plan } }
    func setFaultsEnabled(_ on: Bool) { faultLock.withLock { faultsEnabled = on } }
    var areFaultsEnabled: Bool { faultLock.withLock { faultsEnabled } }

    /// Takes the service away: listeners closed (connects are refused) and every client connection cut.
    func cut() {
        let ls: [Listener] = registry.withLock {
            guard !isCut else { return [] }
            isCut = true
            let l = listeners
            listeners = []
            return l
        }
        ls.forEach { $0.shutdownAndJoin(); $0.close() }
        registry.withLock { connections.values.forEach { $0.shutdownSocket() } }
    }

    /// Brings the service back on the same port and path.
    func restore() throws {
        let wasCut: Bool = registry.withLock {
            let w = isCut
            isCut = false
            return w
        }
        if wasCut { try openServiceListeners() }
    }

    /// Stops serving requests without closing anything: clients see a sheep that hangs.
    func pauseService() { pause.withLock { paused = true } }
    func resumeService() { pause.withLock { paused = false; pause.broadcast() } }

    /// Blocks while paused; false if the server is stopping.
    func waitWhilePaused() -> Bool {
        pause.withLock { pause.wait(while: { paused && !isStoppingUnlocked() }) }
        return !isStopping
    }

    private func isStoppingUnlocked() -> Bool { registry.withLock { stopping } }

    var connectionCount: Int { registry.withLock { connections.count } }

    // MARK: - Threads

    private func startAcceptThread(_ listener: Listener, admin: Bool) throws {
        threadStarted()
        guard let tid = startThread({ [self] in
            acceptLoop(listener, admin: admin)
            threadExited()
        }) else {
            threadExited()
            throw SysError("pthread_create", EAGAIN)
        }
        listener.setAcceptThread(tid)
    }

    private func acceptLoop(_ listener: Listener, admin: Bool) {
        while true {
            let fd = accept(listener.fd, nil, nil)
            if fd < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                if listener.isShutDown { return }
                if errno == EMFILE || errno == ENFILE {
                    log.warning("accept: \(errnoString()); retrying")
                    usleep(10_000)
                    continue
                }
                return
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            if admin {
                spawn { [self] in AdminSession(fd: fd, server: self).run() ; Glibc.close(fd) }
                continue
            }
            if listener.isTCP { setNoDelay(fd) }
            let conn: ClientConnection? = registry.withLock {
                guard !stopping && !isCut else { return nil }
                guard !killedNodes.contains(listener.node) else { return nil }
                let c = ClientConnection(fd: fd, number: nextConnectionNumber, server: self, node: listener.node)
                nextConnectionNumber += 1
                connections[c.number] = c
                return c
            }
            guard let conn else { Glibc.close(fd); continue }
            log.debug("connection \(conn.number) accepted")
            spawn { [self] in
                conn.run()
                registry.withLock {
                    connections[conn.number] = nil
                    Glibc.close(conn.fd)
                }
                log.debug("connection \(conn.number) closed")
            }
        }
    }

    private func spawn(_ body: @escaping () -> Void) {
        threadStarted()
        guard let tid = startThread({ [self] in body(); threadExited() }) else {
            threadExited()
            log.error("pthread_create failed")
            return
        }
        pthread_detach(tid)
    }

    private func threadStarted() { exited.withLock { liveThreads += 1 } }
    private func threadExited() { exited.withLock { liveThreads -= 1; exited.broadcast() } }
}

/// A listening socket and its accept thread.
final class Listener: @unchecked Sendable {
    let fd: Int32
    let port: UInt16?
    let path: String?
    let isTCP: Bool
    /// The sheep node this listener belongs to.
    let node: Int
    private var acceptThread: pthread_t?
    private let lock = PosixLock()
    private var shutDown = false
    private var closed = false

    private init(fd: Int32, port: UInt16?, path: String?, isTCP: Bool, node: Int) {
        self.fd = fd; self.port = port; self.path = path; self.isTCP = isTCP; self.node = node
    }

    var isShutDown: Bool { lock.withLock { shutDown } }

    func setAcceptThread(_ tid: pthread_t) { lock.withLock { acceptThread = tid } }

    static func tcp(host: String, port: Int, node: Int = 0) throws -> Listener {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        var res: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &res)
        guard rc == 0, let first = res else {
            throw SysError("getaddrinfo \(host): \(String(cString: gai_strerror(rc)))", EINVAL)
        }
        defer { freeaddrinfo(res) }
        let fd = socket(first.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw SysError("socket") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        try bindAndListen(fd, first.pointee.ai_addr, first.pointee.ai_addrlen, "\(host):\(port)")
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let boundPort: UInt16 = withUnsafeMutablePointer(to: &ss) { p in
            _ = p.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
            if p.pointee.ss_family == sa_family_t(AF_INET6) {
                return p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin6_port) }
            }
            return p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) }
        }
        return Listener(fd: fd, port: boundPort, path: nil, isTCP: true, node: node)
    }

    static func unix(path: String, node: Int = 0) throws -> Listener {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw SysError("unix socket path too long: \(path)", ENAMETOOLONG)
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        unlink(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw SysError("socket") }
        try withUnsafePointer(to: &addr) {
            try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                try bindAndListen(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size), path)
            }
        }
        return Listener(fd: fd, port: nil, path: path, isTCP: false, node: node)
    }

    /// Connections a listener queues before it accepts them (listen(2)'s backlog).
    static let backlog: Int32 = 128

    /// Binds `fd` to `address` and listens; on failure closes `fd` and throws what failed, naming `what`.
    private static func bindAndListen(_ fd: Int32, _ address: UnsafePointer<sockaddr>, _ length: socklen_t,
                                      _ what: String) throws {
        var failed: SysError?
        if bind(fd, address, length) != 0 {
            failed = SysError("bind \(what)")
        } else if listen(fd, backlog) != 0 {
            failed = SysError("listen \(what)")
        }
        if let failed {
            Glibc.close(fd)
            throw failed
        }
    }

    /// Wakes the accept thread (shutdown makes a blocked accept return) and waits for it.
    func shutdownAndJoin() {
        let tid: pthread_t? = lock.withLock {
            guard !shutDown else { return nil }
            shutDown = true
            return acceptThread
        }
        Glibc.shutdown(fd, Int32(SHUT_RDWR))
        if let tid { joinThread(tid) }
    }

    func close() {
        let doClose: Bool = lock.withLock {
            let c = !closed
            closed = true
            return c
        }
        guard doClose else { return }
        Glibc.close(fd)
        if let path { unlink(path) }
    }
}
