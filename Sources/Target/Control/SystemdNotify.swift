// sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET, so `Type=notify` units (tgt's own unit
// uses it) know when ringtgtd serves. A path starting with '@' is in the abstract namespace.

import Glibc

public enum SystemdNotify {
    /// Sends `state` (e.g. "READY=1") when the service manager asked for notifications; returns whether it did.
    @discardableResult
    public static func send(_ state: String, environmentSocket: String? = nil) -> Bool {
        guard let path = environmentSocket ?? getenv("NOTIFY_SOCKET").map({ String(cString: $0) }),
              !path.isEmpty, path.utf8.count < 108 else { return false }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        if bytes[0] == UInt8(ascii: "@") { bytes[0] = 0 }
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            for (i, b) in bytes.enumerated() { p[i] = b }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (bytes[0] == 0 ? 0 : 1))
        let sent = state.withCString { s in
            withUnsafePointer(to: &addr) { a in
                a.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, s, strlen(s), 0, $0, length) }
            }
        }
        return sent >= 0
    }
}
