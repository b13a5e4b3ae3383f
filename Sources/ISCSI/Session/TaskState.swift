/// The state of one outstanding SCSI command (`IOTask`), which the session machines (task management)
/// reason about. Each state has one meaning:
import Floor
import ISCSIWire
import SCSI
public enum TaskState: UInt8 {
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
