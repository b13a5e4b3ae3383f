import Floor
import URing
import ISCSIWire
import Store
import SCSI
import ISCSI
import NBD
import Glibc

/// Where one connection's fixed-size memory sits inside its region of the core's ConnectionMemory. The
/// parts every connection touches (header area, send bookkeeping) come first and share pages; the large
/// parts (receive staging, send arena, task tables) follow and are touched only as far as they are used.
public struct ConnectionMemoryLayout {
    let header: Int
    let out: Int
    let rx: Int
    let tasks: Int
    let nbdRequests: Int
    /// Bytes per connection, a whole number of pages.
    let stride: Int
    /// The pages an idle connection gives back (`ConnectionMemory.trimIdle`): the send queue's bookkeeping and
    /// arena after its first page, and the receive staging. Their contents are rewritten before they are read
    /// again once the send queue and the staging are empty.
    let idleTrim: Range<Int>
    /// The task table's whole pages (`ConnectionMemory.trimTasks`), given back too when no task is in use:
    /// the tasks are initialized again as they are needed. The page the table shares with the NBD requests
    /// stays.
    let taskTrim: Range<Int>

    init(taskCapacity: Int, sendQueueRecords: Int) {
        func align(_ n: Int, _ a: Int) -> Int { (n + a - 1) / a * a }
        let page = 4096
        header = 0
        out = align(Connection.headerAreaBytes, 64)
        rx = align(out + OutQueue.memoryBytes(capacity: sendQueueRecords), page)
        tasks = align(rx + Connection.rxBytes, 64)
        nbdRequests = align(tasks + taskCapacity * MemoryLayout<IOTask>.stride, 64)
        stride = align(nbdRequests + taskCapacity * MemoryLayout<NBDRequest>.stride, page)
        // The msghdr at the start of the send queue keeps its page (with the header area).
        idleTrim = align(out + MemoryLayout<msghdr>.stride, page)..<(tasks / page * page)
        taskTrim = (tasks / page * page)..<max(tasks / page * page, nbdRequests / page * page)
    }
}

/// Every connection's fixed-size memory (receive staging, header area, task tables, send queue), reserved
/// once per core at start: one region per connection index. The reservation is address space only
/// (MAP_NORESERVE); pages become resident as a connection uses them, and go back to the kernel when the
/// connection is released. So connection churn cannot grow or fragment the heap (glibc keeps freed
/// per-thread arena memory, and its mmap threshold adapts upwards, so churn used to ratchet RSS up).
public struct ConnectionMemory: ~Copyable {
    let layout: ConnectionMemoryLayout
    let count: Int
    let base: UnsafeMutableRawPointer
    let totalBytes: Int

    init(count: Int, taskCapacity: Int, sendQueueRecords: Int) {
        layout = ConnectionMemoryLayout(taskCapacity: taskCapacity, sendQueueRecords: sendQueueRecords)
        self.count = count
        totalBytes = layout.stride * count
        let p = mmap(nil, totalBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        precondition(p != MAP_FAILED && p != nil, "mmap of the connection memory failed")
        base = p!
    }

    deinit { munmap(base, totalBytes) }

    /// Start of connection index `i`'s region (page aligned, zero until first used).
    @inline(__always)
    func region(_ i: Int) -> UnsafeMutableRawPointer { base + i * layout.stride }

    /// Gives back the pages of idle connection `i` that it refills before reading (`layout.idleTrim`); they
    /// read as zeros until touched again. Safe only while nothing is queued to send, no send is in flight and
    /// nothing received waits in the staging area unaccounted (no recv completion pending).
    func trimIdle(_ i: Int) {
        if layout.idleTrim.isEmpty { return }
        _ = madvise(region(i) + layout.idleTrim.lowerBound, layout.idleTrim.count, MADV_DONTNEED)
    }

    /// Gives back the task table pages of idle connection `i` (`layout.taskTrim`). Safe only once the
    /// connection has deinitialized its tasks (`Connection.releaseTaskTable`): they read as zeros afterwards.
    func trimTasks(_ i: Int) {
        if layout.taskTrim.isEmpty { return }
        _ = madvise(region(i) + layout.taskTrim.lowerBound, layout.taskTrim.count, MADV_DONTNEED)
    }

    /// Gives connection `i`'s pages back to the kernel; the region reads as zeros afterwards.
    func release(_ i: Int) {
        _ = madvise(region(i), layout.stride, MADV_DONTNEED)
    }
}
