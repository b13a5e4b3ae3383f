// systemd integration: with NOTIFY_SOCKET set (a `Type=notify` unit, like tgt's), ringtgtd reports READY=1
// once it serves, RELOADING=1 and READY=1 around a SIGHUP reload, and STOPPING=1 when it shuts down.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension EndToEnd {
    @Suite("systemd")
    struct Systemd {
        /// A datagram socket bound where NOTIFY_SOCKET points, standing in for the service manager.
        final class NotifyListener {
            let fd: Int32
            init(path: String) throws {
                fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
                guard fd >= 0 else { throw E2EError("socket: errno \(errno)") }
                var addr = sockaddr_un()
                addr.sun_family = sa_family_t(AF_UNIX)
                withUnsafeMutableBytes(of: &addr.sun_path) { p in
                    for (i, b) in path.utf8.enumerated() { p[i] = b }
                }
                let rc = withUnsafePointer(to: &addr) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                    }
                }
                guard rc == 0 else { close(fd); throw E2EError("bind \(path): errno \(errno)") }
            }
            deinit { close(fd) }

            /// The next datagram, or nil when none comes within the timeout.
            func receive(timeoutSeconds: Int32) -> String? {
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&p, 1, timeoutSeconds * 1000) == 1 else { return nil }
                var buf = [UInt8](repeating: 0, count: 4096)
                let n = recv(fd, &buf, buf.count, 0)
                return n > 0 ? String(decoding: buf[..<n], as: UTF8.self) : nil
            }
        }

        @Test func readyAndStoppingAreNotified() throws {
            let scratch = try Scratch()
            defer { scratch.remove() }
            let notifyPath = scratch.path("notify").path
            let listener = try NotifyListener(path: notifyPath)
            let daemon = try ToolProcess(try Paths.packageBinary("ringtgtd"),
                                         ["-f", "--cores", "1", "--buffers", "16", "--iscsi", "portal=127.0.0.1:0",
                                          "--control-socket", scratch.path("ctl").path],
                                         logDir: scratch.url, label: "daemon", environment: ["NOTIFY_SOCKET": notifyPath])
            defer { daemon.terminate() }
            let ready = listener.receive(timeoutSeconds: 60)
            #expect(ready?.contains("READY=1") == true, "no READY=1 from ringtgtd: \(String(describing: ready)); \(daemon.stderrText)")
            // It serves by then: the control socket answers.
            #expect(FileManager.default.fileExists(atPath: scratch.path("ctl").path))
            #expect(daemon.terminate(), "ringtgtd did not stop on SIGTERM")
            let stopping = listener.receive(timeoutSeconds: 10)
            #expect(stopping?.contains("STOPPING=1") == true, "no STOPPING=1: \(String(describing: stopping))")
        }

        /// sd_notify(3): a SIGHUP reload (ExecReload=) says RELOADING=1 before it applies the file and READY=1 once
        /// it did, so the service manager knows when the new configuration serves.
        @Test func reloadIsNotifiedAsReloadingThenReady() throws {
            let scratch = try Scratch()
            defer { scratch.remove() }
            let notifyPath = scratch.path("notify").path
            let listener = try NotifyListener(path: notifyPath)
            let config = scratch.path("targets.conf")
            try "<target iqn.2026-01.org.ringtgt:reload>\n  backing-store /dev/null\n  bs-type null\n</target>\n"
                .write(to: config, atomically: true, encoding: .utf8)
            let daemon = try ToolProcess(try Paths.packageBinary("ringtgtd"),
                                         ["-f", "--cores", "1", "--buffers", "16", "--iscsi", "portal=127.0.0.1:0",
                                          "--control-socket", scratch.path("ctl").path, "--config", config.path],
                                         logDir: scratch.url, label: "daemon", environment: ["NOTIFY_SOCKET": notifyPath])
            defer { daemon.terminate() }
            let ready = listener.receive(timeoutSeconds: 60)
            #expect(ready?.contains("READY=1") == true, "no READY=1 from ringtgtd: \(String(describing: ready)); \(daemon.stderrText)")
            #expect(kill(daemon.pid, SIGHUP) == 0)
            let reloading = listener.receive(timeoutSeconds: 30)
            #expect(reloading?.contains("RELOADING=1") == true, "no RELOADING=1: \(String(describing: reloading))")
            let readyAgain = listener.receive(timeoutSeconds: 30)
            #expect(readyAgain?.contains("READY=1") == true, "no READY=1 after the reload: \(String(describing: readyAgain))")
            #expect(daemon.terminate(), "ringtgtd did not stop on SIGTERM")
        }
    }
}
