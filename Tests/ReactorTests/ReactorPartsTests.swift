import Glibc
import Testing
@testable import Floor
@testable import Store
@testable import Reactor

/// The reactor's pure parts: the user_data budget against its tables, the store errno table, idle trimming and
/// ticks. The layouts themselves, the socket errno table and the ring are the floor's (Tests/FloorTests).
@Suite struct ReactorPartsTests {
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

    /// With no task in use, an idle connection gives back its task table's pages too; the page the table
    /// shares with the NBD requests, the header page and the other connections' regions stay.
    @Test func anIdleTaskTableGivesBackItsWholePagesOnly() {
        let memory = ConnectionMemory(count: 2, taskCapacity: 136, sendQueueRecords: 256)
        let l = memory.layout
        #expect(l.taskTrim.lowerBound % 4096 == 0 && l.taskTrim.upperBound % 4096 == 0)
        #expect(l.taskTrim.lowerBound == l.idleTrim.upperBound && l.taskTrim.lowerBound <= l.tasks)
        #expect(l.taskTrim.upperBound <= l.nbdRequests && l.nbdRequests - l.taskTrim.upperBound < 4096)
        #expect(l.taskTrim.count >= 4096, "136 tasks span several pages")
        for i in 0..<2 { memset(memory.region(i), 0x5A, l.stride) }
        memory.trimTasks(0)
        let r = memory.region(0).assumingMemoryBound(to: UInt8.self)
        #expect(r[l.header] == 0x5A && r[l.rx] == 0x5A && r[l.taskTrim.lowerBound - 1] == 0x5A)
        #expect(r[l.tasks] == 0 && r[l.taskTrim.upperBound - 1] == 0)
        #expect(r[l.taskTrim.upperBound] == 0x5A && r[l.nbdRequests] == 0x5A)
        #expect(memory.region(1).assumingMemoryBound(to: UInt8.self)[l.tasks] == 0x5A)
    }

    @Test func ticksCountElapsedSecondsNotTimerCompletions() {
        #expect(Reactor.nextTick(previous: 4, elapsedNanos: 5_000_000_001) == 5, "an on-time tick")
        #expect(Reactor.nextTick(previous: 4, elapsedNanos: 8_700_000_000) == 8, "a core busy for 3 s catches up")
        #expect(Reactor.nextTick(previous: 4, elapsedNanos: 4_999_999_999) == 5, "an early timer still advances")
    }
}
