// Child processes of the runner, on TestSupport's ToolProcess: started with their output in log files, waited
// for with a deadline, and always stopped. Every pid is also appended to RESULTS/pids so that perf/run's exit trap can stop whatever
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

    /// Stops one child: `signal` first, SIGKILL after `graceSeconds`.
    func stop(_ p: ToolProcess, signal: Int32 = SIGTERM, graceSeconds: Double = killGraceSeconds) {
        p.terminate(signal: signal, graceSeconds: graceSeconds)
        remove(p)
    }

    /// Stops every child: SIGTERM to all, a short grace, then SIGKILL (tgtd ignores SIGTERM).
    func stopAll() {
        lock.lock(); let all = Array(live.values); lock.unlock()
        for p in all { p.signal(SIGTERM) }
        for p in all { stop(p, graceSeconds: 2) }
    }
}

/// Starts a process whose stdout (unless piped) and stderr go to `LABEL.stdout` and `LABEL.stderr` in the log
/// directory, registered with `Children` so that a signal or perf/run's exit trap stops it.
func startChild(_ exe: String, _ args: [String], logDir: URL, label: String, environment: [String: String] = [:],
                stdout: ToolProcess.Stdout = .file) throws -> ToolProcess {
    let p: ToolProcess
    do {
        p = try ToolProcess(URL(fileURLWithPath: exe), args, logDir: logDir, label: label, environment: environment,
                            stdout: stdout, uniqueLogNames: false)
    } catch { throw RunnerError("cannot start \(exe): \(error)") }
    Children.shared.add(p)
    return p
}

/// Runs a command to completion (bounded: killed past `timeoutSeconds`), registered with `Children` meanwhile.
func runTool(_ exe: String, _ args: [String], logDir: URL, label: String, timeoutSeconds: Double,
             environment: [String: String] = [:]) throws -> ToolResult {
    let p = try startChild(exe, args, logDir: logDir, label: label, environment: environment)
    defer { Children.shared.remove(p) }
    return p.wait(timeoutSeconds: timeoutSeconds)
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

func log(_ s: String) {
    FileHandle.standardError.write((s + "\n").data(using: .utf8)!)
}
