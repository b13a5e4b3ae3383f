// Detaching, the pid file and stopping on request: the parts of tgtd's main() around the event loop.
//
// tgtd detaches with daemon(3) before it starts anything. A Swift process may already run threads of the
// runtime by then, and fork() copies only the calling one, so ringtgtd never forks: without -f it starts
// itself again (posix_spawn of /proc/self/exe, same arguments) with a pipe to report on, and waits on
// that pipe. The child leaves the session (setsid), takes /dev/null as stdio, and writes one byte once its
// control socket and portals answer, or the reason it could not start. So `ringtgtd && ringtgtadm ...`
// never races the start-up, and a failed start exits non-zero with the reason, where tgtd's parent would
// have exited 0 already.

#if canImport(Glibc)
import Glibc
#endif

public enum Detach {
    /// Names the descriptor of the pipe to the waiting parent, in the child's environment.
    public static let readyFDVariable = "RINGTGTD_READY_FD"
    /// The byte a started child writes; anything else on the pipe is its error text.
    static let readyByte: UInt8 = 0x01
    /// Bound on the error text a child reports (it is one log line).
    static let maxReasonBytes = 4096

    /// The parent: starts the detached child with `arguments` (argv without argv[0]) and waits until it is
    /// ready (returns 0) or has failed (prints its reason to stderr, returns 1). The pipe closes when the
    /// child dies, so the wait ends either way.
    public static func runDetached(arguments: [String]) -> Int32 {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { return report("pipe: \(String(cString: strerror(errno)))") }
        // Only the child's copy of the write end may stay open, or EOF would never come when it dies: the
        // parent closes its copy right after the spawn, and the read end is not inherited.
        let readEnd = fds[0], childEnd = fds[1]
        _ = fcntl(readEnd, F_SETFD, FD_CLOEXEC)
        inheritOnly(childEnd)
        setenv(readyFDVariable, "\(childEnd)", 1)
        let argv0 = CommandLine.arguments.first ?? "ringtgtd"
        var cArgs: [UnsafeMutablePointer<CChar>?] = ([argv0] + arguments).map { strdup($0) } + [nil]
        defer { for p in cArgs { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, "/proc/self/exe", nil, nil, &cArgs, environ)
        unsetenv(readyFDVariable)
        close(childEnd)
        guard rc == 0 else { close(readEnd); return report("cannot start the daemon: \(String(cString: strerror(rc)))") }
        defer { close(readEnd) }
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 512)
        while received.count < maxReasonBytes {
            let n = chunk.withUnsafeMutableBytes { read(readEnd, $0.baseAddress!, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            received += chunk[..<n]
            if received.first == readyByte { return 0 }
        }
        if received.first == readyByte { return 0 }
        var status: Int32 = 0
        var how = ""
        if waitpid(pid, &status, 0) == pid {
            let signalled = status & 0x7f
            how = signalled != 0 ? " (killed by signal \(signalled))" : " (exit status \((status >> 8) & 0xff))"
        }
        let reason = String(decoding: received, as: UTF8.self)
        return report(reason.isEmpty ? "the daemon exited during start-up\(how)" : reason)
    }

    /// Marks every descriptor but stdio and `keep` close-on-exec. Whoever started us may have left a
    /// descriptor open to learn when we exit (Foundation's Process does): the daemon must not hold it, or the
    /// caller would wait for the daemon instead of this command.
    private static func inheritOnly(_ keep: Int32) {
        // The listing's own descriptor is closed by the time the loop runs (fcntl on it then fails).
        guard let entries = directoryEntries("/proc/self/fd") else { return }
        for (name, _) in entries {
            guard let fd = Int32(name), fd > STDERR_FILENO, fd != keep else { continue }
            let flags = fcntl(fd, F_GETFD)
            if flags >= 0 { _ = fcntl(fd, F_SETFD, flags | FD_CLOEXEC) }
        }
    }

    private static func report(_ text: String) -> Int32 {
        fputs("ringtgtd: \(text)\n", stderr)
        return 1
    }
}

/// The child's end of the pipe: tells the waiting parent that the daemon serves, or why it does not.
public final class ReadinessPipe {
    private var fd: Int32

    private init(fd: Int32) { self.fd = fd }

    /// The pipe this process was started with by `Detach.runDetached`, or nil (started with -f, or by hand).
    /// Takes the variable out of the environment, so nothing this daemon starts inherits it.
    public static func inherited() -> ReadinessPipe? {
        guard let text = getenv(Detach.readyFDVariable).map({ String(cString: $0) }) else { return nil }
        unsetenv(Detach.readyFDVariable)
        guard let fd = Int32(text), fd > STDERR_FILENO, fcntl(fd, F_GETFD) >= 0 else { return nil }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        return ReadinessPipe(fd: fd)
    }

    /// daemon(0, 0)'s half that must happen in the child: a session of its own (no controlling terminal),
    /// "/" as working directory (no mount kept busy), stdio on /dev/null (its log goes to syslog).
    public func detachFromTerminal() {
        _ = setsid()
        _ = chdir("/")
        let null = open("/dev/null", O_RDWR)
        if null >= 0 {
            for target in [STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO] { _ = dup2(null, target) }
            if null > STDERR_FILENO { close(null) }
        }
    }

    public func ready() { send([Detach.readyByte]) }

    public func failed(_ reason: String) { send(Array(reason.utf8.prefix(Detach.maxReasonBytes))) }

    private func send(_ bytes: [UInt8]) {
        guard fd >= 0 else { return }
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            offset += n
        }
        close(fd)
        fd = -1
    }
}

/// `--pid-file PATH` (tgtd's -p): the daemon's pid, written once it serves, removed when it stops.
public enum PidFile {
    public static func write(_ path: String, pid: pid_t = getpid()) throws(PidFileError) {
        // Under a temporary name, then renamed: a reader never sees an empty or half-written file.
        let temporary = "\(path).tmp-\(pid)"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw PidFileError(path: path, errno: errno) }
        let text = Array("\(pid)\n".utf8)
        let n = text.withUnsafeBytes { Glibc.write(fd, $0.baseAddress!, $0.count) }
        let e = errno
        close(fd)
        guard n == text.count else { unlink(temporary); throw PidFileError(path: path, errno: n < 0 ? e : EIO) }
        guard rename(temporary, path) == 0 else { let e = errno; unlink(temporary); throw PidFileError(path: path, errno: e) }
    }

    /// Removes the file if it still holds this process's pid (never a successor's).
    public static func remove(_ path: String, pid: pid_t = getpid()) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        var buffer = [UInt8](repeating: 0, count: 32)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
        close(fd)
        guard n > 0 else { return }
        let digits = buffer[..<n].filter { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
        if String(decoding: digits, as: UTF8.self) == "\(pid)" { unlink(path) }
    }
}

public struct PidFileError: Error, CustomStringConvertible {
    public var path: String
    public var errno: Int32
    public var description: String { "can't create \(path), \(String(cString: strerror(errno)))" }
}
