/// One outstanding SCSI command on a connection, in preallocated per-connection storage.
import Floor
import URing
import ISCSIWire
import Store
import SCSI
import ISCSI
import NBD
public struct IOTask {
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
public struct TaskQueue {
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
