import CURing
import Glibc
import Testing
@testable import Target

/// The reactor's pure parts: user_data layouts, errno tables, and the submission spill area on a tiny ring.
@Suite struct ReactorPartsTests {
    @Test func userDataRoundTripsAtTheBitLimits() {
        for (c, g) in [(0, UInt32(0)), (ConnectionOp.connectionLimit - 1, UInt32.max), (4095, UInt32(1))] {
            let u = ConnectionOp(connection: c, generation: g).encode(.send)
            #expect(UserData.kind(u) == OpKind.send.rawValue)
            #expect(ConnectionOp.decode(u) == ConnectionOp(connection: c, generation: g))
        }
        let maxTask = TaskOp(connection: TaskOp.connectionLimit - 1, task: TaskOp.taskLimit - 1, generation: .max)
        #expect(UserData.kind(maxTask.encode()) == OpKind.storeIO.rawValue)
        #expect(TaskOp.decode(maxTask.encode()) == maxTask)
        let zeroTask = TaskOp(connection: 0, task: 0, generation: 0)
        #expect(TaskOp.decode(zeroTask.encode()) == zeroTask)
        #expect(TaskOp.connectionLimit == 16384, "the daemon accepts --max-connections up to 16384")
        for op in [ChannelOp.Op.connect, .send, .recv] {
            let ch = ChannelOp(endpoint: ChannelOp.endpointLimit - 1, op: op, generation: .max)
            #expect(UserData.kind(ch.encode()) == OpKind.sheep.rawValue)
            #expect(ChannelOp.decode(ch.encode()) == ch)
        }
        #expect(ChannelOp.decode(UserData.pack(.sheep, 3 << UInt64(UserData.generationBits))) == nil,
                "an operation code no channel issues")
        let l = ListenerOp(listener: ListenerOp.listenerLimit - 1)
        #expect(UserData.kind(l.encode(.acceptRetry)) == OpKind.acceptRetry.rawValue)
        #expect(ListenerOp.decode(l.encode(.acceptRetry)) == l)
        #expect(UserData.kindBits + UserData.generationBits + TaskOp.connectionBits + TaskOp.taskBits == 64)
        #expect(UserData.kindBits + UserData.generationBits + ChannelOp.endpointBits + ChannelOp.opBits == 64)
    }

    @Test func userDataBudgetIsCheckedAgainstTheTables() {
        let config = ReactorConfig()
        #expect(UserData.check(maxConnections: config.maxConnections,
                               taskCapacity: config.commandWindow + config.immediateCommandAllowance, listeners: 8) == nil)
        #expect(UserData.check(maxConnections: 16384, taskCapacity: 1024, listeners: 1) == nil)
        #expect(UserData.check(maxConnections: 16385, taskCapacity: 136, listeners: 1)?.contains("16385 connections") == true)
        #expect(UserData.check(maxConnections: 4096, taskCapacity: 1025, listeners: 1)?.contains("1025 task entries") == true)
    }

    @Test func storeErrnoTable() {
        #expect(StoreErrno.classify(errno: EINTR) == .retry)
        #expect(StoreErrno.classify(errno: EAGAIN) == .retry)
        for e in [ENOSPC, EDQUOT] { #expect(StoreErrno.classify(errno: e) == .fail(.noSpace)) }
        for e in [EROFS, EPERM, EACCES, EBADF] { #expect(StoreErrno.classify(errno: e) == .fail(.writeProtected)) }
        for e in [EOPNOTSUPP, EINVAL] { #expect(StoreErrno.classify(errno: e) == .fail(.notSupported)) }
        for e in [EIO, ENXIO, ENODEV, EFBIG, ENOMEM, ECANCELED, ENAMETOOLONG] {
            #expect(StoreErrno.classify(errno: e) == .fail(.mediumError))
        }
    }

    @Test func socketErrnoTable() {
        for e in [EINTR, EAGAIN] { #expect(SocketErrno.classify(errno: e) == .retry) }
        for e in [ECONNRESET, EPIPE, ETIMEDOUT, EHOSTUNREACH, ENOTCONN] { #expect(SocketErrno.classify(errno: e) == .peerGone) }
        for e in [ECANCELED, EBADF, ENOTSOCK, EFAULT, ENOMEM, ENAMETOOLONG] { #expect(SocketErrno.classify(errno: e) == .failed) }
    }

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

    /// ringtgt-livefuzz hostile found it: 10,000 login PDUs at once kept a core busy for seconds, it reaped one
    /// tick completion for all of them, and every login timeout came about 3 s late. Ticks follow the clock.
    /// An idle connection gives back its staging and send-queue pages and keeps the page with its header area
    /// and msghdr; nothing outside its own region is touched.
    @Test func idleTrimGivesBackTheStagingAndSendQueuePagesOnly() {
        let memory = ConnectionMemory(count: 2, taskCapacity: 136, sendQueueRecords: 256)
        let l = memory.layout
        #expect(l.idleTrim.lowerBound % 4096 == 0 && l.idleTrim.upperBound % 4096 == 0)
        #expect(l.idleTrim.lowerBound > l.out && l.idleTrim.lowerBound <= l.rx && l.idleTrim.upperBound == l.tasks)
        #expect(l.idleTrim.count >= Connection.rxBytes + 4096, "the staging and most of the send queue go back")
        for i in 0..<2 { memset(memory.region(i), 0x5A, l.stride) }
        memory.trimIdle(0)
        let r = memory.region(0).assumingMemoryBound(to: UInt8.self)
        #expect(r[l.header] == 0x5A && r[l.out] == 0x5A && r[l.idleTrim.lowerBound - 1] == 0x5A)
        #expect(r[l.idleTrim.lowerBound] == 0 && r[l.rx] == 0 && r[l.idleTrim.upperBound - 1] == 0)
        #expect(r[l.tasks] == 0x5A && r[l.stride - 1] == 0x5A)
        #expect(memory.region(1).assumingMemoryBound(to: UInt8.self)[l.rx] == 0x5A)
    }

    @Test func ticksCountElapsedSecondsNotTimerCompletions() {
        #expect(Reactor.nextTick(previous: 4, elapsedNanos: 5_000_000_001) == 5, "an on-time tick")
        #expect(Reactor.nextTick(previous: 4, elapsedNanos: 8_700_000_000) == 8, "a core busy for 3 s catches up")
        #expect(Reactor.nextTick(previous: 4, elapsedNanos: 4_999_999_999) == 5, "an early timer still advances")
    }
}
