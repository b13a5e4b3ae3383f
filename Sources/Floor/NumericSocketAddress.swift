import Glibc

/// A numeric IPv4 or IPv6 address and a port as a `sockaddr` for bind(2) and connect(2): the one builder the
/// listeners, the test fixtures and the raw test clients share. Host names are not resolved (the sheep
/// client's `SheepSocketAddress.resolve` does that, for `tcp:HOST:PORT` backing stores).
public struct NumericSocketAddress {
    private var storage = sockaddr_storage()
    public let length: socklen_t
    public let family: Int32

    /// `host` is a numeric address, an IPv6 one with or without brackets; nil when it is not one.
    public init?(host: String, port: Int) {
        var bare = Substring(host)
        if bare.hasPrefix("["), bare.hasSuffix("]") { bare = bare.dropFirst().dropLast() }
        let text = String(bare)
        let netPort = in_port_t(UInt16(truncatingIfNeeded: port).bigEndian)
        if text.contains(":") {
            var a = sockaddr_in6()
            a.sin6_family = sa_family_t(AF_INET6)
            a.sin6_port = netPort
            guard inet_pton(AF_INET6, text, &a.sin6_addr) == 1 else { return nil }
            (family, length) = (AF_INET6, Self.store(a, into: &storage))
        } else {
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_port = netPort
            guard inet_pton(AF_INET, text, &a.sin_addr) == 1 else { return nil }
            (family, length) = (AF_INET, Self.store(a, into: &storage))
        }
    }

    private static func store<Address>(_ a: Address, into storage: inout sockaddr_storage) -> socklen_t {
        withUnsafeMutableBytes(of: &storage) { s in withUnsafeBytes(of: a) { s.copyMemory(from: $0) } }
        return socklen_t(MemoryLayout<Address>.size)
    }

    public func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        withUnsafeBytes(of: storage) { body($0.baseAddress!.assumingMemoryBound(to: sockaddr.self), length) }
    }

    /// bind(2) of `fd` to this address: 0, or -1 with errno set.
    public func bind(_ fd: Int32) -> Int32 { withSockaddr { Glibc.bind(fd, $0, $1) } }

    /// connect(2) of `fd` to this address: 0, or -1 with errno set.
    public func connect(_ fd: Int32) -> Int32 { withSockaddr { Glibc.connect(fd, $0, $1) } }
}
