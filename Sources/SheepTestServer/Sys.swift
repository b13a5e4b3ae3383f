// Thin wrappers over the POSIX calls the test server needs: a mutex, threads, clocks, sockets. The server
// is test support, not the ringtgt I/O path, but it still avoids Foundation so that its hot loop (pipelined
// READ_OBJ) costs a few syscalls per batch and nothing per byte.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A plain pthread mutex. Never held across a blocking socket call.
final class PosixLock: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    init() {
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    @inline(__always) func lock() { pthread_mutex_lock(mutex) }
    @inline(__always) func unlock() { pthread_mutex_unlock(mutex) }

    @inline(__always)
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}

/// A condition variable paired with a PosixLock-like mutex of its own.
final class PosixCondition: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let cond: UnsafeMutablePointer<pthread_cond_t>

    init() {
        mutex = .allocate(capacity: 1)
        cond = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(cond, nil)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Waits while `predicate` is true. Call only inside `withLock`.
    func wait(while predicate: () -> Bool) {
        while predicate() { pthread_cond_wait(cond, mutex) }
    }

    /// Waits while `predicate` is true, at most `timeoutSeconds`; returns whether it became false. Call only
    /// inside `withLock`.
    func wait(while predicate: () -> Bool, timeoutSeconds: Int) -> Bool {
        var deadline = timespec()
        clock_gettime(CLOCK_REALTIME, &deadline)
        deadline.tv_sec += timeoutSeconds
        while predicate() {
            if pthread_cond_timedwait(cond, mutex, &deadline) == ETIMEDOUT { return !predicate() }
        }
        return true
    }

    func broadcast() { pthread_cond_broadcast(cond) }
}

private final class ThreadBody {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}

/// Starts a joinable thread.
func startThread(_ body: @escaping () -> Void) -> pthread_t? {
    let box = Unmanaged.passRetained(ThreadBody(body))
    var tid = pthread_t()
    let rc = pthread_create(&tid, nil, { arg in
        guard let arg else { return nil }
        let body = Unmanaged<ThreadBody>.fromOpaque(arg).takeRetainedValue()
        body.run()
        return nil
    }, box.toOpaque())
    if rc != 0 {
        box.release()
        return nil
    }
    return tid
}

func joinThread(_ tid: pthread_t) {
    pthread_join(tid, nil)
}

/// Monotonic nanoseconds, for delays and idle timers.
func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// Sheep's timestamp format: seconds << 32 | nanoseconds (µs resolution, as `cluster_new_vdi`).
func sheepTimestamp() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return (UInt64(ts.tv_sec) << 32) | UInt64((ts.tv_nsec / 1000) * 1000)
}

func errnoString(_ code: Int32 = errno) -> String {
    String(cString: strerror(code))
}

struct SysError: Error, CustomStringConvertible {
    var what: String
    var code: Int32
    init(_ what: String, _ code: Int32 = errno) { self.what = what; self.code = code }
    var description: String { "\(what): \(errnoString(code))" }
}

/// Writes all of `count` bytes to a blocking descriptor.
func writeAll(_ fd: Int32, _ base: UnsafeRawPointer, _ count: Int) throws {
    var done = 0
    while done < count {
        let n = send(fd, base + done, count - done, Int32(MSG_NOSIGNAL))
        if n < 0 {
            if errno == EINTR { continue }
            // Not a socket (stdout to a pipe or file): fall back to write(2).
            if errno == ENOTSOCK {
                let w = write(fd, base + done, count - done)
                if w < 0 { if errno == EINTR { continue }; throw SysError("write") }
                done += w
                continue
            }
            throw SysError("send")
        }
        done += n
    }
}

/// Reads exactly `count` bytes from a blocking descriptor; false on a clean EOF before the first byte.
func readExactly(_ fd: Int32, _ base: UnsafeMutableRawPointer, _ count: Int) throws -> Bool {
    var done = 0
    while done < count {
        let n = read(fd, base + done, count - done)
        if n < 0 {
            if errno == EINTR { continue }
            throw SysError("read")
        }
        if n == 0 {
            if done == 0 { return false }
            throw SysError("read: connection closed mid-message", ECONNRESET)
        }
        done += n
    }
    return true
}

func setNonBlocking(_ fd: Int32) {
    let flags = fcntl(fd, F_GETFL)
    _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
}

func setNoDelay(_ fd: Int32) {
    var one: Int32 = 1
    _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
}

/// Writes `text` to `path` atomically (temp file + rename), so a reader never sees a partial file.
func writeFileAtomically(_ path: String, _ text: String) throws {
    let tmp = path + ".tmp.\(getpid())"
    let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    if fd < 0 { throw SysError("open \(tmp)") }
    var bytes = Array(text.utf8)
    do {
        try bytes.withUnsafeMutableBytes { raw in
            if raw.count > 0 { try writeAll(fd, raw.baseAddress!, raw.count) }
        }
        if fsync(fd) != 0 { throw SysError("fsync \(tmp)") }
    } catch {
        close(fd)
        unlink(tmp)
        throw error
    }
    close(fd)
    bytes.removeAll()
    if rename(tmp, path) != 0 { throw SysError("rename \(tmp)") }
}

func readWholeFile(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    if fd < 0 { return nil }
    defer { close(fd) }
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
        if n < 0 { if errno == EINTR { continue }; return nil }
        if n == 0 { break }
        out.append(contentsOf: chunk[0..<n])
    }
    return out
}
