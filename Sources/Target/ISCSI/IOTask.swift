/// One outstanding SCSI command on a connection, in preallocated per-connection storage.
/// Each state has one meaning:
enum TaskState: UInt8 {
    /// Unused entry, on the free list. Never holds a buffer slot: teardown skips free entries.
    case free
    /// Header received, its data segment (immediate data) still arriving; dispatch decides what follows.
    case arriving
    /// Received with CmdSN ahead of ExpCmdSN: waits for the gap to fill (RFC 7143 §3.2.2.1). Holds a buffer
    /// slot only when it carries immediate data.
    case waitingOrder
    /// Answered (TASK SET FULL) or aborted before its CmdSN turn: keeps nothing but its CmdSN, so ExpCmdSN
    /// passes it once the gap before it fills.
    case orderMarker
    /// Its CmdSN turn came while this connection could take no buffer slot: waits on the connection's slot
    /// queue, in CmdSN order.
    case waitingSlot
    /// Needs R2T data but the core's R2T permits are used up: waits in the core's permit queue.
    case waitingPermit
    /// A COMPARE AND WRITE waiting for its LUN's gate (another one is running on some core).
    case waitingGate
    /// R2T sent; Data-Out PDUs are arriving into the buffer.
    case receivingData
    /// A store operation is in flight on the ring.
    case storeIO
    /// A SANITIZE without IMMED waits for its LU's job (Reactor/LUNJobs.swift), which holds its own buffer:
    /// nothing is in flight for the task itself, so an abort releases it at once and the job goes on.
    case waitingJob
    /// Data-In PDUs of a non-final piece are queued or in flight; waits for them to be sent.
    case sendingData
    /// Waiting for room in the connection's send queue to emit more Data-In.
    case waitingOutSpace
    /// Final PDU queued; released when it is sent.
    case finishing
}

struct IOTask {
    var state: TaskState = .free
    var aborted = false
    var itt: UInt32 = 0
    var cmdSN: UInt32 = 0
    var lunField: UInt64 = 0
    var lunNumber: UInt64 = 0
    var edtl: UInt32 = 0
    var slot: Int32 = -1
    var nextFree: Int32 = -1
    /// Link of the connection's TaskQueue the task is on (slot or out-space wait).
    var nextWait: Int32 = -1
    /// The LUN this task runs on, held until `releaseTask`: a forced delete can take the LUN out of the
    /// configuration while the task is in flight, and its store must stay open until the task ends. One
    /// reference serves both layers: it is the SCSI task's own (an NBD request keeps it there too).
    var lun: LogicalUnit? {
        get { scsi.lun }
        set { scsi.lun = newValue }
    }

    // Data-out stream (writes)
    var dataOut = DataOutSequencer()
    var holdsPermit = false

    // Data-in stream (reads)
    var dataIn = DataInEmitter()
    var finalStatus: UInt8 = 0
    var finalResidual: Residual = .none

    /// The file store's progress on this task's current operation (the store's own record; see FileStore).
    var store = StoreRequest()
    /// Which LUN the current store operation addresses (EXTENDED COPY's other LUN), for the store's lookups.
    var storeTarget: StoreTarget = .own

    /// The CDB, kept for commands that wait for their CmdSN turn (the header area is reused meanwhile).
    var cdb: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
    var cdbLength: Int = 0
    var flags: UInt8 = 0
    var holdsCompareAndWriteGate = false
    /// A null LUN's READ (iSCSI or NBD): its data goes out from the pool's zero region, not from its slot
    /// (Reactor.submitStore).
    var dataInFromZeros = false
    /// CLOCK_MONOTONIC when the command started (its latency ends when its status is ready).
    var startNanos: UInt64 = 0
    /// The counters the command is counted in (none when it names no LUN).
    var statistics = LUNStatisticsKey()
    /// Sense produced by the transport itself (data-phase errors).
    var transportSense: SenseData? = nil

    var scsi = SCSITask()
}

/// A FIFO of a connection's task entries, linked through `IOTask.nextWait`: no allocation, bounded by the
/// task table. A task is on at most one queue.
struct TaskQueue {
    private(set) var head: Int32 = -1
    private var tail: Int32 = -1

    var isEmpty: Bool { head < 0 }

    mutating func push(_ t: Int, _ tasks: UnsafeMutablePointer<IOTask>) {
        tasks[t].nextWait = -1
        if tail >= 0 { tasks[Int(tail)].nextWait = Int32(t) } else { head = Int32(t) }
        tail = Int32(t)
    }

    mutating func pop(_ tasks: UnsafeMutablePointer<IOTask>) -> Int {
        let t = Int(head)
        head = tasks[t].nextWait
        if head < 0 { tail = -1 }
        tasks[t].nextWait = -1
        return t
    }

    /// Unlinks `t` wherever it is (task management and teardown; linear, they are rare).
    mutating func remove(_ t: Int, _ tasks: UnsafeMutablePointer<IOTask>) {
        var prev: Int32 = -1
        var cur = head
        while cur >= 0 {
            if cur == Int32(t) {
                let next = tasks[Int(cur)].nextWait
                if prev >= 0 { tasks[Int(prev)].nextWait = next } else { head = next }
                if tail == cur { tail = prev }
                tasks[t].nextWait = -1
                return
            }
            prev = cur
            cur = tasks[Int(cur)].nextWait
        }
    }
}
