// Child processes of the runner: started with their output in log files, waited for with a deadline, and
// always stopped. Every pid is also appended to RESULTS/pids so that perf/run's exit trap can stop whatever
// a crashed runner left behind.
import Foundation
#if canImport(Glibc)
import Glibc
#endif

struct RunnerError: Error, CustomStringConvertible {
    let description: String
    init(_ s: String) { description = s }
}

/// The processes this runner started and has not yet reaped.
final class Children: @unchecked Sendable {
    static let shared = Children()
    private let lock = NSLock()
    private var live: [Int32: Process] = [:]
    var pidFile: URL?

    func add(_ p: Process) {
        lock.lock(); live[p.processIdentifier] = p; lock.unlock()
        if let f = pidFile, let h = try? FileHandle(forWritingTo: f) {
            h.seekToEndOfFile()
            h.write("\(p.processIdentifier)\n".data(using: .utf8)!)
            try? h.close()
        }
    }

    func remove(_ p: Process) {
        lock.lock(); live[p.processIdentifier] = nil; lock.unlock()
    }

    /// Stops every child: SIGTERM, a short grace, then SIGKILL (tgtd ignores SIGTERM).
    func stopAll() {
        lock.lock(); let all = Array(live.values); lock.unlock()
        for p in all where p.isRunning { kill(p.processIdentifier, SIGTERM) }
        let deadline = Date().addingTimeInterval(2)
        while Date() < deadline && all.contains(where: { $0.isRunning }) { usleep(20_000) }
        for p in all where p.isRunning { kill(p.processIdentifier, SIGKILL) }
        for p in all { p.waitUntilExit(); remove(p) }
    }
}

/// A started process whose stdout and stderr go to files.
final class Child {
    let process = Process()
    let stdoutURL: URL
    let stderrURL: URL
    let label: String

    init(_ exe: String, _ args: [String], logDir: URL, label: String, environment: [String: String]? = nil) throws {
        self.label = label
        stdoutURL = logDir.appendingPathComponent("\(label).out")
        stderrURL = logDir.appendingPathComponent("\(label).err")
        _ = FileManager.default.createFile(atPath: stdoutURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: stderrURL.path, contents: nil)
        process.executableURL = URL(fileURLWithPath: exe)
        process.arguments = args
        if let environment {
            var env = ProcessInfo.processInfo.environment
            for (k, v) in environment { env[k] = v }
            process.environment = env
        }
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = try FileHandle(forWritingTo: stdoutURL)
        process.standardError = try FileHandle(forWritingTo: stderrURL)
        do { try process.run() } catch { throw RunnerError("cannot start \(exe): \(error)") }
        Children.shared.add(process)
    }

    var pid: Int32 { process.processIdentifier }
    var isRunning: Bool { process.isRunning }
    var stdout: String { (try? String(contentsOf: stdoutURL, encoding: .utf8)) ?? "" }
    var stderr: String { (try? String(contentsOf: stderrURL, encoding: .utf8)) ?? "" }

    /// Waits until the process exits or `seconds` pass; returns the exit status, or nil on timeout.
    @discardableResult
    func wait(seconds: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning {
            if Date() >= deadline { return nil }
            usleep(5_000)
        }
        process.waitUntilExit()
        Children.shared.remove(process)
        return process.terminationStatus
    }

    /// Stops the process: `signal` first, SIGKILL after `graceSeconds`.
    func stop(signal: Int32 = SIGTERM, graceSeconds: Double = 5) {
        if process.isRunning { kill(pid, signal) }
        if wait(seconds: graceSeconds) == nil {
            kill(pid, SIGKILL)
            _ = wait(seconds: 5)
        }
    }
}

/// Runs a command to completion (bounded) and returns (status, stdout, stderr); status -1 on timeout.
func runTool(_ exe: String, _ args: [String], logDir: URL, label: String, timeoutSeconds: Double,
             environment: [String: String]? = nil) throws -> (status: Int32, out: String, err: String) {
    let c = try Child(exe, args, logDir: logDir, label: label, environment: environment)
    guard let status = c.wait(seconds: timeoutSeconds) else {
        c.stop(signal: SIGKILL, graceSeconds: 1)
        return (-1, c.stdout, c.stderr + "\n(timed out after \(timeoutSeconds) s)")
    }
    return (status, c.stdout, c.stderr)
}

/// Installs SIGINT/SIGTERM handling: stop every child, then exit.
func installSignalCleanup() {
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        signal(sig, SIG_IGN)
        let src = DispatchSource.makeSignalSource(signal: sig, queue: .global())
        src.setEventHandler {
            FileHandle.standardError.write("ringtgt-perf: signal \(sig): stopping children\n".data(using: .utf8)!)
            Children.shared.stopAll()
            exit(130)
        }
        src.resume()
        signalSources.append(src)
    }
}
nonisolated(unsafe) var signalSources: [DispatchSourceSignal] = []

/// Many sessions need many descriptors, in the runner's children too: take the hard limit.
func raiseFileLimit() {
    var lim = rlimit()
    if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim) == 0 && lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim)
    }
}

/// A TCP port that was free a moment ago (tgtd needs an explicit one).
func freePort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_port = 0
    a.sin_addr.s_addr = inet_addr("127.0.0.1")
    _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    return Int(UInt16(bigEndian: a.sin_port))
}

/// VmRSS and VmHWM of a process, KiB.
func memoryKiB(pid: Int32) -> (rss: Int, hwm: Int) {
    guard let s = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return (0, 0) }
    var rss = 0, hwm = 0
    for line in s.split(separator: "\n") {
        let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
        guard parts.count >= 2 else { continue }
        if parts[0] == "VmRSS:" { rss = Int(parts[1]) ?? 0 }
        if parts[0] == "VmHWM:" { hwm = Int(parts[1]) ?? 0 }
    }
    return (rss, hwm)
}

func log(_ s: String) {
    FileHandle.standardError.write((s + "\n").data(using: .utf8)!)
}
