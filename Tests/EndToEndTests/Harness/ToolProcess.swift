// Child processes with bounded lifetimes. Output goes to files in the test's scratch directory rather
// than pipes: a chatty tool (iscsi-test-cu prints thousands of lines) can never block on a full pipe,
// and the logs survive for the failure message.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// How long a process gets between SIGTERM and SIGKILL.
let killGraceSeconds: Double = 5

/// What a finished tool did.
struct ToolResult: CustomStringConvertible {
    let command: String
    let exitStatus: Int32
    /// True when the process ended by a signal (`exitStatus` then holds the signal number).
    let killedBySignal: Bool
    /// True when the harness killed it for running past its time limit.
    let timedOut: Bool
    let stdout: String
    let stderr: String
    let seconds: Double

    var succeeded: Bool { !timedOut && !killedBySignal && exitStatus == 0 }
    var output: String { stdout + stderr }

    var description: String {
        let how = timedOut ? "ran past its time limit and was killed after \(String(format: "%.1f", seconds)) s"
            : killedBySignal ? "was killed by signal \(exitStatus)" : "exited with status \(exitStatus)"
        return "`\(command)` \(how)\n--- stdout ---\n\(tail(stdout))\n--- stderr ---\n\(tail(stderr))"
    }
}

/// A started child process. Always waited for: `wait(timeoutSeconds:)` kills it when time runs out.
final class ToolProcess {
    let command: String
    let process = Process()
    private let exited = DispatchSemaphore(value: 0)
    private let stdoutURL: URL
    private let stderrURL: URL
    private let started = Date()
    private var finished = false

    /// Starts `executable args` with stdin from /dev/null and stdout/stderr into files under `logDir`.
    init(_ executable: URL, _ args: [String], logDir: URL, label: String, environment: [String: String] = [:]) throws {
        command = ([executable.lastPathComponent] + args).map(shellQuote).joined(separator: " ")
        let unique = "\(label)-\(UUID().uuidString.prefix(8))"
        stdoutURL = logDir.appendingPathComponent("\(unique).stdout")
        stderrURL = logDir.appendingPathComponent("\(unique).stderr")
        _ = FileManager.default.createFile(atPath: stdoutURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: stderrURL.path, contents: nil)
        let out = try FileHandle(forWritingTo: stdoutURL)
        let err = try FileHandle(forWritingTo: stderrURL)
        defer { try? out.close(); try? err.close() }
        process.executableURL = executable
        process.arguments = args
        process.standardInput = FileHandle.nullDevice
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        process.standardOutput = out
        process.standardError = err
        let sem = exited
        process.terminationHandler = { _ in sem.signal() }
        do { try process.run() } catch {
            throw E2EError("could not start \(command): \(error)")
        }
    }

    var pid: Int32 { process.processIdentifier }
    var isRunning: Bool { !finished && process.isRunning }

    /// Output so far (also usable while the process runs, e.g. the daemon's log).
    var stdoutText: String { (try? String(contentsOf: stdoutURL, encoding: .utf8)) ?? "" }
    var stderrText: String { (try? String(contentsOf: stderrURL, encoding: .utf8)) ?? "" }

    /// Waits up to `timeoutSeconds`; past that, SIGTERM, then SIGKILL after `killGraceSeconds`.
    func wait(timeoutSeconds: Double) -> ToolResult {
        var timedOut = false
        if !finished {
            if exited.wait(timeout: .now() + timeoutSeconds) == .timedOut {
                timedOut = true
                terminate()
            }
            finished = true
        }
        return result(timedOut: timedOut)
    }

    /// SIGTERM, a bounded wait, then SIGKILL. Returns true if SIGTERM alone was enough.
    @discardableResult
    func terminate(graceSeconds: Double = killGraceSeconds) -> Bool {
        if finished { return true }
        // Already reaped: never signal a pid that may now belong to someone else.
        if !process.isRunning {
            _ = exited.wait(timeout: .now() + killGraceSeconds)
            finished = true
            return true
        }
        kill(pid, SIGTERM)
        if exited.wait(timeout: .now() + graceSeconds) == .success {
            finished = true
            return true
        }
        kill(pid, SIGKILL)
        // SIGKILL cannot be ignored; the bound only guards against a wedged kernel.
        _ = exited.wait(timeout: .now() + 30)
        finished = true
        return false
    }

    /// A safety net: no child outlives the object that started it, even when a test throws early.
    deinit {
        if !finished && process.isRunning {
            kill(pid, SIGKILL)   // isRunning: not yet reaped, so the pid is still ours
            _ = exited.wait(timeout: .now() + 30)
        }
    }

    func result(timedOut: Bool) -> ToolResult {
        let signalled = !process.isRunning && process.terminationReason == .uncaughtSignal
        return ToolResult(command: command,
                          exitStatus: process.isRunning ? -1 : process.terminationStatus,
                          killedBySignal: signalled, timedOut: timedOut,
                          stdout: stdoutText, stderr: stderrText,
                          seconds: Date().timeIntervalSince(started))
    }
}

/// Runs a tool to completion within `timeoutSeconds`.
func runTool(_ executable: URL, _ args: [String], logDir: URL, timeoutSeconds: Double,
             label: String? = nil) throws -> ToolResult {
    let p = try ToolProcess(executable, args, logDir: logDir, label: label ?? executable.lastPathComponent)
    return p.wait(timeoutSeconds: timeoutSeconds)
}

/// Runs a tool and throws (with its output) unless it exits 0 in time.
@discardableResult
func runToolExpectingSuccess(_ executable: URL, _ args: [String], logDir: URL, timeoutSeconds: Double,
                             label: String? = nil) throws -> ToolResult {
    let r = try runTool(executable, args, logDir: logDir, timeoutSeconds: timeoutSeconds, label: label)
    if !r.succeeded { throw E2EError("tool failed: \(r)") }
    return r
}

func shellQuote(_ s: String) -> String {
    let safe = s.allSatisfy { $0.isLetter || $0.isNumber || "-_./:=,@[]%+".contains($0) }
    return safe && !s.isEmpty ? s : "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'"
}
