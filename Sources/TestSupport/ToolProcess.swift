// Child processes with bounded lifetimes, for the end-to-end harness and the perf runner. Output goes to
// files in the caller's log directory rather than pipes: a chatty tool (iscsi-test-cu prints thousands of
// lines) can never block on a full pipe, and the logs survive for the failure message. A process whose
// readiness is a line it prints gets its stdout through a pipe instead, read with poll(2) under a deadline.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A fixture step that failed, as a sentence for the test report or the runner's log.
public struct FixtureError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// How long a process gets between SIGTERM and SIGKILL.
public let killGraceSeconds: Double = 5
/// SIGKILL cannot be ignored; this bound on waiting for its exit only guards against a wedged kernel.
public let reapAfterKillSeconds: Double = 30

/// What a finished tool did.
public struct ToolResult: CustomStringConvertible {
    public let command: String
    public let exitStatus: Int32
    /// True when the process ended by a signal (`exitStatus` then holds the signal number).
    public let killedBySignal: Bool
    /// True when it was killed for running past its time limit.
    public let timedOut: Bool
    public let stdout: String
    public let stderr: String
    public let seconds: Double

    public var succeeded: Bool { !timedOut && !killedBySignal && exitStatus == 0 }
    public var output: String { stdout + stderr }

    /// How it ended, as the end of a sentence ("exited with status 1").
    public var outcome: String {
        timedOut ? "ran past its time limit and was killed after \(String(format: "%.1f", seconds)) s"
            : killedBySignal ? "was killed by signal \(exitStatus)" : "exited with status \(exitStatus)"
    }

    public var description: String {
        "`\(command)` \(outcome)\n--- stdout ---\n\(tail(stdout))\n--- stderr ---\n\(tail(stderr))"
    }
}

/// A started child process. Always waited for: `wait(timeoutSeconds:)` kills it when time runs out, a
/// reaped pid is never signalled, and no child outlives the object that started it.
public final class ToolProcess {
    /// Where stdout goes: a log file, or a pipe for `waitForLines`.
    public enum Stdout { case file, pipe }

    public let command: String
    public let process = Process()
    private let exited = DispatchSemaphore(value: 0)
    private let stdoutURL: URL?
    private let stdoutPipe: Pipe?
    private var buffered = Data()
    private let stderrURL: URL
    private let started = Date()
    private var finished = false

    /// Starts `executable args` with stdin from /dev/null and stderr (and stdout, unless `.pipe`) in files
    /// under `logDir` named after `label`: unique per process, or `label.stdout`/`label.stderr` rewritten by
    /// each start when `uniqueLogNames` is false (the perf runner's logs, one per role).
    public init(_ executable: URL, _ args: [String], logDir: URL, label: String, environment: [String: String] = [:],
                stdout: Stdout = .file, uniqueLogNames: Bool = true) throws {
        command = ([executable.lastPathComponent] + args).map(shellQuote).joined(separator: " ")
        let name = uniqueLogNames ? "\(label)-\(UUID().uuidString.prefix(8))" : label
        stderrURL = logDir.appendingPathComponent("\(name).stderr")
        _ = FileManager.default.createFile(atPath: stderrURL.path, contents: nil)
        let err = try FileHandle(forWritingTo: stderrURL)
        var out: FileHandle? = nil
        defer { try? err.close(); try? out?.close() }
        switch stdout {
        case .file:
            let u = logDir.appendingPathComponent("\(name).stdout")
            _ = FileManager.default.createFile(atPath: u.path, contents: nil)
            out = try FileHandle(forWritingTo: u)
            stdoutURL = u
            stdoutPipe = nil
            process.standardOutput = out
        case .pipe:
            stdoutURL = nil
            stdoutPipe = Pipe()
            process.standardOutput = stdoutPipe
        }
        process.executableURL = executable
        process.arguments = args
        process.standardInput = FileHandle.nullDevice
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        process.standardError = err
        let sem = exited
        process.terminationHandler = { _ in sem.signal() }
        do { try process.run() } catch {
            throw FixtureError("could not start \(command): \(error)")
        }
    }

    public var pid: Int32 { process.processIdentifier }
    public var isRunning: Bool { !finished && process.isRunning }

    /// Output so far (also usable while the process runs, e.g. a daemon's log). Empty for a piped stdout.
    public var stdoutText: String { stdoutURL.flatMap { try? String(contentsOf: $0, encoding: .utf8) } ?? "" }
    public var stderrText: String { (try? String(contentsOf: stderrURL, encoding: .utf8)) ?? "" }

    /// Waits up to `timeoutSeconds`; past that, SIGTERM, then SIGKILL after `killGraceSeconds`.
    public func wait(timeoutSeconds: Double) -> ToolResult {
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

    /// Waits up to `seconds` for the process to exit on its own; true once it has. Never signals it.
    public func waitForExit(seconds: Double) -> Bool {
        if finished { return true }
        if exited.wait(timeout: .now() + seconds) == .timedOut { return false }
        finished = true
        return true
    }

    /// Sends `sig` unless the process has been reaped (its pid may then belong to someone else).
    public func signal(_ sig: Int32) {
        if isRunning { kill(pid, sig) }
    }

    /// `sig` (SIGTERM unless told), a bounded wait, then SIGKILL. True if `sig` alone was enough (or the
    /// process had already exited).
    @discardableResult
    public func terminate(signal sig: Int32 = SIGTERM, graceSeconds: Double = killGraceSeconds) -> Bool {
        if finished { return true }
        if !process.isRunning {
            _ = exited.wait(timeout: .now() + killGraceSeconds)
            finished = true
            return true
        }
        kill(pid, sig)
        if exited.wait(timeout: .now() + graceSeconds) == .success {
            finished = true
            return true
        }
        killNow()
        return false
    }

    /// SIGKILL and wait: a crash, as far as clients can tell.
    public func killNow() {
        if finished { return }
        if process.isRunning { kill(pid, SIGKILL) }
        _ = exited.wait(timeout: .now() + reapAfterKillSeconds)
        finished = true
    }

    deinit {
        if !finished && process.isRunning {
            kill(pid, SIGKILL)   // isRunning: not yet reaped, so the pid is still ours
            _ = exited.wait(timeout: .now() + reapAfterKillSeconds)
        }
    }

    public func result(timedOut: Bool) -> ToolResult {
        let signalled = !process.isRunning && process.terminationReason == .uncaughtSignal
        return ToolResult(command: command,
                          exitStatus: process.isRunning ? -1 : process.terminationStatus,
                          killedBySignal: signalled, timedOut: timedOut,
                          stdout: stdoutText, stderr: stderrText,
                          seconds: Date().timeIntervalSince(started))
    }

    /// Reads piped stdout lines until `done(lines)` holds. Blocks in poll(2) on the pipe, bounded by the
    /// deadline; a process that closes its stdout (exits) first fails the wait at once.
    public func waitForLines(timeoutSeconds: Double, until done: ([String]) -> Bool) throws -> [String] {
        guard let pipe = stdoutPipe else { throw FixtureError("waitForLines needs `\(command)` started with stdout: .pipe") }
        let fd = pipe.fileHandleForReading.fileDescriptor
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let lines = String(decoding: buffered, as: UTF8.self).split(whereSeparator: \.isNewline).map(String.init)
            if done(lines) { return lines }
            let left = deadline.timeIntervalSinceNow
            if left <= 0 {
                throw FixtureError("`\(command)` printed no ready lines within \(timeoutSeconds) s; stdout: \(lines)\n\(tail(stderrText))")
            }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let rc = poll(&pfd, 1, Int32(left * 1000) + 1)
            if rc < 0 && errno == EINTR { continue }
            if rc <= 0 { continue }
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 {
                // Its exit is consumed here, so it is recorded here: a later wait must not wait for it again.
                if exited.wait(timeout: .now() + killGraceSeconds) == .success { finished = true }
                let status = process.isRunning ? "still running" : "exit status \(process.terminationStatus)"
                throw FixtureError("`\(command)` closed its stdout before it was ready (\(status)); stdout: \(lines)\n\(tail(stderrText))")
            }
            buffered.append(contentsOf: chunk[0..<n])
        }
    }
}

/// Runs a tool to completion within `timeoutSeconds`.
public func runTool(_ executable: URL, _ args: [String], logDir: URL, timeoutSeconds: Double, label: String? = nil,
                    environment: [String: String] = [:], uniqueLogNames: Bool = true) throws -> ToolResult {
    let p = try ToolProcess(executable, args, logDir: logDir, label: label ?? executable.lastPathComponent,
                            environment: environment, uniqueLogNames: uniqueLogNames)
    return p.wait(timeoutSeconds: timeoutSeconds)
}

/// Runs a tool and throws (with its output) unless it exits 0 in time.
@discardableResult
public func runToolExpectingSuccess(_ executable: URL, _ args: [String], logDir: URL, timeoutSeconds: Double,
                                    label: String? = nil) throws -> ToolResult {
    let r = try runTool(executable, args, logDir: logDir, timeoutSeconds: timeoutSeconds, label: label)
    if !r.succeeded { throw FixtureError("tool failed: \(r)") }
    return r
}

public func shellQuote(_ s: String) -> String {
    let safe = s.allSatisfy { $0.isLetter || $0.isNumber || "-_./:=,@[]%+".contains($0) }
    return safe && !s.isEmpty ? s : "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'"
}

/// The last `maxBytes` of a log, for failure messages: enough to see why, small enough to read.
public func tail(_ text: String, maxBytes: Int = 4000) -> String {
    let utf8 = Array(text.utf8)
    if utf8.count <= maxBytes { return text }
    return "…" + String(decoding: utf8[(utf8.count - maxBytes)...], as: UTF8.self)
}

/// An executable on PATH (or in sbin, which a non-root PATH may lack), or nil.
public func findOnPath(_ name: String) -> URL? {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    for dir in path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin"] where !dir.isEmpty {
        let candidate = URL(fileURLWithPath: dir).appendingPathComponent(name)
        if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
    }
    return nil
}

/// Ports the kernel calls free right now (bound to port 0 on loopback, read back, closed). Only for daemons
/// that cannot bind port 0 themselves (sheep, tgtd); another process could take one in between, which would
/// fail the start loudly, not silently.
public func freeTCPPorts(_ count: Int) throws -> [Int] {
    var fds: [Int32] = []
    defer { fds.forEach { close($0) } }
    var ports: [Int] = []
    for _ in 0..<count {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw FixtureError("socket: errno \(errno)") }
        fds.append(fd)   // held open until all are chosen, so the same port is not handed out twice
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        a.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &a) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0
            }
        }
        guard ok else { throw FixtureError("bind/getsockname: errno \(errno)") }
        ports.append(Int(UInt16(bigEndian: a.sin_port)))
    }
    return ports
}

/// Many sessions need many descriptors (the load generator's, and the perf runner's children): takes the hard
/// limit of open files as the soft one.
public func raiseFileLimit() {
    var lim = rlimit()
    if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim) == 0 && lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim)
    }
}
