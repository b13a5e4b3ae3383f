import Floor
import URing
import ISCSIWire
import Store
import SCSI
import ISCSI
import NBD
import CURing
import Glibc

/// A listening address as given by `--iscsi portal=HOST:PORT` (IPv6 as `[ADDR]:PORT`), or a unix socket path
/// (`--nbd unix=PATH`, as qemu-nbd's `-k PATH`).
public struct Portal: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int
    /// Set for a unix-domain listener; `host` and `port` are then unused.
    public var unixPath: String?

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public init(unixPath: String) {
        self.host = ""
        self.port = 0
        self.unixPath = unixPath
    }

    /// `sockaddr_un.sun_path` holds 108 bytes with its terminating NUL.
    public static let unixPathCapacityBytes = 107

    /// The IANA port for NBD, the default of `--nbd portal=HOST`.
    public static let nbdDefaultPort = 10809

    /// Parses "HOST:PORT", "[V6]:PORT", "HOST" (port `defaultPort`, 3260 for iSCSI).
    public static func parse(_ s: String, defaultPort: Int = 3260) -> Portal? {
        var host = s
        var port = defaultPort
        if s.hasPrefix("[") {
            guard let close = s.firstIndex(of: "]") else { return nil }
            host = String(s[s.index(after: s.startIndex)..<close])
            let rest = s[s.index(after: close)...]
            if rest.hasPrefix(":") {
                guard let p = Int(rest.dropFirst()), (0...65535).contains(p) else { return nil }
                port = p
            } else if !rest.isEmpty { return nil }
        } else if let colon = s.lastIndex(of: ":") {
            if s.firstIndex(of: ":") != colon { return Portal(host: s, port: defaultPort) }   // bare IPv6
            host = String(s[..<colon])
            guard let p = Int(s[s.index(after: colon)...]), (0...65535).contains(p) else { return nil }
            port = p
        }
        if host.isEmpty { return nil }
        return Portal(host: host, port: port)
    }

    public var isIPv6: Bool { host.contains(":") }
    public var description: String {
        if let unixPath { return "unix:\(unixPath)" }
        return isIPv6 ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}

public enum SocketAddress {
    /// Backlog of a listening socket: connections the kernel completes before a core accepts them.
    static let listenBacklogConnections: Int32 = 1024

    /// Creates a socket bound to the portal with SO_REUSEPORT so every core can bind the same address. It
    /// does not listen yet (`listen(_:portal:)`): a bound port reserves the address and resolves port 0, while
    /// connections are refused until the daemon is configured.
    public static func bound(_ portal: Portal) throws(NetError) -> Int32 {
        if let path = portal.unixPath { return try boundUnix(path) }
        let family = portal.isIPv6 ? AF_INET6 : AF_INET
        let fd = socket(family, RT_SOCK_STREAM | RT_SOCK_CLOEXEC, 0)
        if fd < 0 { throw .system("socket", errno) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(4))
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(4))
        if portal.isIPv6 { setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(4)) }
        guard let address = NumericSocketAddress(host: portal.host, port: portal.port) else {
            close(fd)
            throw .badAddress(portal.host)
        }
        let rc = address.bind(fd)
        if rc != 0 { let e = errno; close(fd); throw .system("bind \(portal)", e) }
        return fd
    }

    /// A unix-domain socket bound to `path`. A socket file left by an earlier run is replaced, as qemu-nbd
    /// does; any other file at the path is an error, never removed.
    static func boundUnix(_ path: String) throws(NetError) -> Int32 {
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count <= Portal.unixPathCapacityBytes, !bytes.contains(0) else {
            throw .badAddress(path)
        }
        var st = stat()
        if lstat(path, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFSOCK else { throw .system("bind unix:\(path) (not a socket)", EEXIST) }
            unlink(path)
        }
        let fd = socket(AF_UNIX, RT_SOCK_STREAM | RT_SOCK_CLOEXEC, 0)
        if fd < 0 { throw .system("socket", errno) }
        var a = sockaddr_un()
        a.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &a.sun_path) { dst in
            for (i, b) in bytes.enumerated() { dst[i] = b }
        }
        let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        if rc != 0 { let e = errno; close(fd); throw .system("bind unix:\(path)", e) }
        return fd
    }

    /// Starts accepting connections on a socket from `bound(_:)`.
    public static func listen(_ fd: Int32, portal: Portal) throws(NetError) {
        if Glibc.listen(fd, listenBacklogConnections) != 0 { throw .system("listen \(portal)", errno) }
    }

    /// The port a socket is bound to (learns the kernel's choice for port 0).
    public static func boundPort(_ fd: Int32) -> Int {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return port(of: &ss)
    }

    static func port(of ss: inout sockaddr_storage) -> Int {
        if Int32(ss.ss_family) == AF_INET {
            return withUnsafePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                Int(UInt16(bigEndian: $0.pointee.sin_port)) } }
        }
        return withUnsafePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) {
            Int(UInt16(bigEndian: $0.pointee.sin6_port)) } }
    }

    /// The peer name of every client of a unix-domain listener.
    public static let unixPeerName = "unix"

    public static func peerName(_ fd: Int32) -> String { name(fd, peer: true) }
    public static func localName(_ fd: Int32) -> String { name(fd, peer: false) }

    /// "ADDR" of one end of a connected socket (IPv4-mapped IPv6 shown as IPv4).
    static func name(_ fd: Int32, peer: Bool) -> String {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            peer ? getpeername(fd, $0, &len) : getsockname(fd, $0, &len) } }
        if rc != 0 { return "?" }
        return addressText(&ss)
    }

    static func addressText(_ ss: inout sockaddr_storage) -> String {
        // Clients of a unix listener have no address: ACL address rules never match them, `ALL` does.
        if Int32(ss.ss_family) == AF_UNIX { return unixPeerName }
        var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        if Int32(ss.ss_family) == AF_INET {
            withUnsafePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { p in
                var a = p.pointee.sin_addr
                _ = inet_ntop(AF_INET, &a, &buf, socklen_t(buf.count)) } }
        } else {
            withUnsafePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { p in
                var a = p.pointee.sin6_addr
                _ = inet_ntop(AF_INET6, &a, &buf, socklen_t(buf.count)) } }
        }
        var s = String(cString: buf)
        if s.hasPrefix("::ffff:") && s.contains(".") { s.removeFirst(7) }
        return s
    }
}

public enum NetError: Error, CustomStringConvertible {
    case system(String, Int32)
    case badAddress(String)
    public var description: String {
        switch self {
        case .system(let what, let e): return "\(what): \(String(cString: strerror(e)))"
        case .badAddress(let a): return "not a numeric IP address: \(a)"
        }
    }
}
