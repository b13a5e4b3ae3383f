import CURing
import Floor
import Glibc
import Testing
@testable import URing

/// The io_uring wrapper on a real, tiny ring: its errno table and the submission spill area.
@Suite struct RingTests {
    @Test func ringWaitErrnoTable() {
        for e in [ETIME, EINTR] { #expect(RingWaitOutcome.classify(errno: e) == .fine) }
        for e in [EAGAIN, EBUSY, ENOMEM] { #expect(RingWaitOutcome.classify(errno: e) == .retry) }
        for e in [EBADF, EFAULT, EINVAL, ENAMETOOLONG] { #expect(RingWaitOutcome.classify(errno: e) == .unexpected) }
    }

    /// SQEs in the spill area (as the kernel refusing a submit leaves them) reach the kernel before any SQE
    /// prepared after them, and none is lost.
    @Test func spilledSubmissionsGoInFirstAndInOrder() throws {
        let ring = try Ring(entries: 2)
        func nop(_ s: UnsafeMutablePointer<io_uring_sqe>, _ tag: UInt64) {
            io_uring_prep_nop(s)
            s.pointee.user_data = tag
        }
        nop(ring.sqe(), 1)
        nop(ring.sqe(), 2)   // the queue (2 entries) is full now
        #expect(ring.spillCapacity == 2)
        // What sqeWhenFull does when the submit took nothing.
        nop(ring.spill, 3)
        nop(ring.spill + 1, 4)
        ring.spillState.pointee.count = 2
        nop(ring.sqe(), 5)
        #expect(ring.spilled == 0)
        // The queue has room again, but spilled SQEs are still older than any new one.
        nop(ring.spill, 6)
        nop(ring.spill + 1, 7)
        ring.spillState.pointee.count = 2
        nop(ring.sqe(), 8)
        var seen: [UInt64] = []
        let deadline = monotonicNanos() + 5_000_000_000
        while seen.count < 8 && monotonicNanos() < deadline {
            let rc = ring.submitAndWait(timeoutNanos: 100_000_000)
            #expect(rc >= 0 || rc == -ETIME)
            let n = ring.peekBatch()
            for i in 0..<n { seen.append(ring.cqe(i).pointee.user_data) }
            ring.advance(n)
        }
        #expect(seen == [1, 2, 3, 4, 5, 6, 7, 8])
    }
}
