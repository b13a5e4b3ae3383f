// The daemon under attack: ringtgtd started by this tool on ephemeral ports (its ready line names them), with
// one null LUN and one file LUN (also the NBD exports), and always stopped at the end.
import Foundation
#if canImport(Glibc)
import Glibc
#endif

enum FuzzLimits {
    /// How long ringtgtd gets to print its ready line.
    static let readySeconds = 30.0
    static let iqn = "iqn.2026-01.org.ringtgt.fuzz:t1"
    static let initiator = "iqn.2026-01.org.ringtgt.fuzz:initiator"
    /// The file LUN (LUN 2) on tmpfs: small, the fuzzer needs addresses, not capacity.
    static let fileLUNBytes: Int64 = 64 << 20
    static let blockBytes = 512
}

struct FuzzError: Error, CustomStringConvertible {
    let description: String
    init(_ s: String) { description = s }
}

func say(_ s: String) {
    FileHandle.standardError.write((s + "\n").data(using: .utf8)!)
}

final class TargetDaemon {
    let process = Process()
    let dir: URL
    let stderrURL: URL
    private(set) var iscsiPort = 0
    private(set) var nbdPort = 0
    private(set) var metricsPort = 0

    /// `descriptorLimit`: start ringtgtd with both RLIMIT_NOFILE limits lowered to this (the EMFILE runs; the
    /// daemon raises its soft limit only up to the hard one).
    init(ringtgtd: String, cores: Int, extraArgs: [String] = [], descriptorLimit: Int? = nil) throws {
        dir = URL(fileURLWithPath: "/dev/shm/ringtgt-livefuzz-\(getpid())")
        try? FileManager.default.removeItem(at: dir)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let img = dir.appendingPathComponent("lun2.img").path
        guard FileManager.default.createFile(atPath: img, contents: nil), truncate(img, off_t(FuzzLimits.fileLUNBytes)) == 0 else {
            throw FuzzError("cannot create \(img)")
        }
        let conf = dir.appendingPathComponent("targets.conf")
        try """
        <target \(FuzzLimits.iqn)>
            <backing-store /dev/null>
                bs-type null
                bsopts size=1G
                lun 1
            </backing-store>
            <backing-store \(img)>
                lun 2
            </backing-store>
        </target>

        """.write(to: conf, atomically: true, encoding: .utf8)
        stderrURL = dir.appendingPathComponent("ringtgtd.err")
        _ = FileManager.default.createFile(atPath: stderrURL.path, contents: nil)
        let args = ["-f", "--cores", "\(cores)", "--iscsi", "portal=127.0.0.1:0", "--nbd", "portal=127.0.0.1:0",
                    "--metrics", "portal=127.0.0.1:0", "--control-socket", dir.appendingPathComponent("ctl").path,
                    "--config", conf.path] + extraArgs
        if let limit = descriptorLimit {
            process.executableURL = URL(fileURLWithPath: "/bin/sh")
            process.arguments = ["-c", "ulimit -Sn \(limit) && ulimit -Hn \(limit) && exec \"$0\" \"$@\"", ringtgtd] + args
        } else {
            process.executableURL = URL(fileURLWithPath: ringtgtd)
            process.arguments = args
        }
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = try FileHandle(forWritingTo: stderrURL)
        process.standardError = try FileHandle(forWritingTo: stderrURL)
        try process.run()
        do { try waitReady() } catch {
            // No caller holds this daemon yet to stop it.
            stop()
            throw error
        }
    }

    var pid: Int32 { process.processIdentifier }
    var isRunning: Bool { process.isRunning }
    var log: String { (try? String(contentsOf: stderrURL, encoding: .utf8)) ?? "" }

    /// "ringtgtd ready: 1 core(s), portals 127.0.0.1:P1, NBD 127.0.0.1:P2, control ..., metrics 127.0.0.1:P3"
    private func waitReady() throws {
        let deadline = Date().addingTimeInterval(FuzzLimits.readySeconds)
        while Date() < deadline {
            guard process.isRunning else { throw FuzzError("ringtgtd exited during start: \(log.suffix(2000))") }
            if let line = log.split(separator: "\n").first(where: { $0.contains("ringtgtd ready:") }) {
                func port(after key: String) -> Int {
                    guard let r = line.range(of: key) else { return 0 }
                    let rest = line[r.upperBound...].prefix { $0 != "," && $0 != " " }
                    return Int(rest.split(separator: ":").last ?? "") ?? 0
                }
                iscsiPort = port(after: "portals ")
                nbdPort = port(after: "NBD ")
                metricsPort = port(after: "metrics ")
                guard iscsiPort > 0, nbdPort > 0 else { throw FuzzError("cannot read the ports from: \(line)") }
                return
            }
            usleep(20_000)
        }
        throw FuzzError("ringtgtd printed no ready line within \(FuzzLimits.readySeconds) s")
    }

    /// VmRSS, KiB.
    var rssKiB: Int {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
        for line in s.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Int(line.split(whereSeparator: { $0 == " " || $0 == "\t" })[1]) ?? 0
        }
        return 0
    }

    /// Descriptors the daemon holds: every accepted connection is one.
    var openDescriptors: Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? 0
    }

    /// utime + stime of all threads, in clock ticks.
    var cpuTicks: Int {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = s.lastIndex(of: ")") else { return 0 }
        let f = s[s.index(after: close)...].split(separator: " ")
        // Fields after the command: state is f[0], utime is field 14 overall (f[11]), stime f[12].
        return (Int(f[11]) ?? 0) + (Int(f[12]) ?? 0)
    }

    /// Logged-in connections, from the metrics page (one received-bytes line per connection), or nil.
    func loggedInConnections() -> Int? {
        guard metricsPort > 0, let page = httpGet(port: metricsPort, path: "/metrics") else { return nil }
        return page.split(separator: "\n").filter { $0.hasPrefix("ringtgt_connection_received_bytes_total{") }.count
    }

    func stop() {
        if process.isRunning {
            kill(pid, SIGTERM)
            let deadline = Date().addingTimeInterval(10)
            while process.isRunning && Date() < deadline { usleep(10_000) }
            if process.isRunning { kill(pid, SIGKILL) }
        }
        process.waitUntilExit()
        try? FileManager.default.removeItem(at: dir)
    }

    /// How the daemon ended, when it has.
    var death: String? {
        guard !process.isRunning else { return nil }
        let how = process.terminationReason == .uncaughtSignal ? "signal \(process.terminationStatus)" : "exit \(process.terminationStatus)"
        let tail = log.split(separator: "\n").suffix(15).joined(separator: "\n")
        return "ringtgtd died (\(how)); log tail:\n\(tail)"
    }
}

/// A bounded HTTP/1.0 GET on loopback (the metrics page).
func httpGet(port: Int, path: String) -> String? {
    guard let s = try? TCPSocket.connect(port: port, timeoutSeconds: 5) else { return nil }
    defer { s.close() }
    guard (try? s.send(Array("GET \(path) HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".utf8))) != nil else { return nil }
    var all: [UInt8] = []
    while let chunk = try? s.recvSome(65536), !chunk.isEmpty { all += chunk }
    return String(decoding: all, as: UTF8.self)
}

/// Raise this process's descriptor limit to its hard limit (10,000 hostile connections need it).
func raiseOwnDescriptorLimit() -> Int {
    var lim = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim) == 0 else { return 0 }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim)
    }
    return Int(lim.rlim_cur)
}
