// Child processes of the runner: started with their output in log files, waited for with a deadline, and
// always stopped. Every pid is also appended to RESULTS/pids so that perf/run's exit trap can stop whatever
// a crashed runner left behind.
import Foundation
import TestSupport
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
    private var live: [Int32: ToolProcess] = [:]
    var pidFile: URL?

    func add(_ p: ToolProcess) {
        lock.lock(); live[p.pid] = p; lock.unlock()
        if let f = pidFile, let h = try? FileHandle(forWritingTo: f) {
            h.seekToEndOfFile()
            h.write("\(p.pid)\n".data(using: .utf8)!)
            try? h.close()
        }
    }

    func remove(_ p: ToolProcess) {
        lock.lock(); live[p.pid] = nil; lock.unlock()
    }

    /// Stops every child: SIGTERM to all, a short grace, then SIGKILL (tgtd ignores SIGTERM).
    func stopAll() {
        lock.lock(); let all = Array(live.values); lock.unlock()
        for p in all { p.signal(SIGTERM) }
        for p in all { p.terminate(graceSeconds: 2); remove(p) }
    }
}

/// A started process whose stdout and stderr go to `LABEL.stdout` and `LABEL.stderr` in the log directory,
/// registered with `Children` so that a signal or perf/run's exit trap stops it.
final class Child {
    let tool: ToolProcess
    let label: String

    init(_ exe: String, _ args: [String], logDir: URL, label: String, environment: [String: String]? = nil) throws {
        self.label = label
        do {
            tool = try ToolProcess(URL(fileURLWithPath: exe), args, logDir: logDir, label: label,
                                   environment: environment ?? [:], uniqueLogNames: false)
        } catch { throw RunnerError("cannot start \(exe): \(error)") }
        Children.shared.add(tool)
    }

    var pid: Int32 { tool.pid }
    var process: Process { tool.process }
    var isRunning: Bool { tool.isRunning }
    var stdout: String { tool.stdoutText }
    var stderr: String { tool.stderrText }

    /// Waits until the process exits or `seconds` pass; returns the exit status, or nil on timeout.
    @discardableResult
    func wait(seconds: Double) -> Int32? {
        guard tool.waitForExit(seconds: seconds) else { return nil }
        Children.shared.remove(tool)
        return process.terminationStatus
    }

    /// Stops the process: `signal` first, SIGKILL after `graceSeconds`.
    func stop(signal: Int32 = SIGTERM, graceSeconds: Double = 5) {
        tool.terminate(signal: signal, graceSeconds: graceSeconds)
        Children.shared.remove(tool)
    }
}

/// Runs a command to completion (bounded) and returns (status, stdout, stderr); status -1 on timeout.
func runTool(_ exe: String, _ args: [String], logDir: URL, label: String, timeoutSeconds: Double,
             environment: [String: String]? = nil) throws -> (status: Int32, out: String, err: String) {
    let c = try Child(exe, args, logDir: logDir, label: label, environment: environment)
    let r = c.tool.wait(timeoutSeconds: timeoutSeconds)
    Children.shared.remove(c.tool)
    if r.timedOut { return (-1, r.stdout, r.stderr + "\n(timed out after \(timeoutSeconds) s)") }
    return (r.exitStatus, r.stdout, r.stderr)
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
