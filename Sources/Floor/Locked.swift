import Glibc

/// A value shared between the control plane and the cores, or between cores, behind a lock. The I/O path
/// never takes one (it reads published atomics instead).
///
/// A pthread mutex rather than Synchronization's `Mutex`: on Linux `Mutex` parks on a raw futex, which
/// ThreadSanitizer cannot see, so under `scripts/sanitize thread` every access it guards reads as a data race
/// and hides the real ones. TSan intercepts pthread_mutex_lock and unlock. Uncontended, both are one atomic
/// exchange each way.
///
/// The class is public and its members `package`: Swift 6.3 neither inlines nor specializes the generic
/// `withLock` of a `package` class in another module (every call went through the unspecialized generic).
public final class Locked<Value>: @unchecked Sendable {
    /// Heap-allocated: a pthread mutex must not move once initialised.
    @usableFromInline let mutex: UnsafeMutablePointer<pthread_mutex_t>
    @usableFromInline var value: Value

    package init(_ value: Value) {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        let rc = pthread_mutex_init(mutex, nil)
        precondition(rc == 0, "pthread_mutex_init: \(rc)")
        self.value = value
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    @inlinable @inline(__always)
    package func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
