// Per-session and per-command state of the load generator, in storage allocated once at start.
// Everything here is a trivial struct reached through a raw pointer: the I/O path neither allocates nor
// retains, and pays no exclusivity checks.
import Glibc
import Target

/// Bounds of one session's preallocated storage, with their units.
enum SessionLimits {
    /// One header slot holds a BHS (48), its header digest (4), and the pad bytes plus data digest of the
    /// data segment that follows it (at most 3 + 4, from byte 56).
    static let headerSlotBytes = 64
    static let dataDigestOffsetInSlot = 56
    /// Linux refuses sendmsg with more than UIO_MAXIOV iovecs.
    static let maxIovecsPerSend = 1024
    /// Largest AHS a target may send (the field counts 4-byte words in one byte).
    static let maxAHSBytes = 255 * 4
    /// Receive buffer per active session. A whole PDU must fit with room for the next, so it is at least
    /// four of the largest PDUs we accept (MaxRecvDataSegmentLength 256 KiB plus header and digests).
    static let minActiveReceiveBytes = 1 << 20
    /// Receive buffer of an idle session: it only ever sees NOP-Ins and async messages.
    static let idleReceiveBytes = 64 << 10
    /// NOP-In ping data we echo back; targets send none or a few bytes.
    static let nopEchoBytes = 8192
    /// Extra header slots for NOP-Out replies and slack.
    static let spareHeaderSlots = 64
    /// Random picks of a free unit before a linear probe (verify mode keeps one I/O per unit).
    static let unitPickAttempts = 8
}

/// One SCSI command in flight. ITT = generation << 16 | index, so a late or forged tag is recognised.
struct IOTask {
    var active = false
    var write = false
    var generation: UInt16 = 0
    var lba: UInt64 = 0
    /// Verify mode: which unit, and the write generation the data carries.
    var unit = 0
    var writeGeneration: UInt32 = 0
    var startNanos: UInt64 = 0
    /// Data-In bytes seen so far (reads).
    var receivedBytes = 0
    /// Verify mode: a Data-In of this read did not hold the expected pattern.
    var failedVerify = false
    /// The write payload (ioBytes), preallocated per task; reads leave it untouched.
    var data: UnsafeMutableRawPointer? = nil
}

/// One iSCSI session (and its single connection), owned by one worker thread.
struct SessionState {
    var fd: Int32 = -1
    /// Index among all sessions of the run (verify mode partitions units by it).
    var globalIndex = 0
    var queueDepth = 0
    var alive = true
    /// True once the session stops issuing (run over, or target asked for logout).
    var draining = false

    // Negotiated.
    var headerDigest = false
    var dataDigest = false
    var maxSendSegmentBytes = 8192
    var firstBurstBytes = 65536
    var initialR2T = true
    var immediateData = true
    var lunField: UInt64 = 0

    // Sequence numbers.
    var cmdSN: UInt32 = 0
    var expStatSN: UInt32 = 0
    var maxCmdSN: UInt32 = 0

    // Commands.
    var tasks: UnsafeMutablePointer<IOTask>? = nil
    var freeTasks: UnsafeMutablePointer<Int32>? = nil
    var freeCount = 0
    var inFlight = 0
    /// Commands issued so far and the quota (count mode; Int.max when the run is timed).
    var issued = 0
    var quota = Int.max
    var sequentialCursor = 0

    // Receive buffer: [rxHead, rxTail) holds bytes not yet parsed.
    var rx: UnsafeMutableRawPointer? = nil
    var rxCapacity = 0
    var rxHead = 0
    var rxTail = 0
    var maxPDUBytes = 0

    // Send queue: iovecs waiting to go, the first `iovInFlight` of them in the current sendmsg.
    var iov: UnsafeMutablePointer<iovec>? = nil
    /// For each iovec, the sequence number of the header slot of the PDU it belongs to.
    var iovSlot: UnsafeMutablePointer<UInt32>? = nil
    var iovCapacity = 0
    var iovCount = 0
    var iovInFlight = 0
    var sendInFlight = false
    var msg: UnsafeMutablePointer<msghdr>? = nil

    // Header arena: a FIFO of 64-byte slots; [slotTail, slotHead) are referenced by queued iovecs.
    var slots: UnsafeMutableRawPointer? = nil
    var slotMask: UInt32 = 0
    var slotHead: UInt32 = 0
    var slotTail: UInt32 = 0

    var nopEcho: UnsafeMutableRawPointer? = nil

    // Verify mode: per owned unit, its last written generation (0 = unknown) and whether an I/O is on it.
    var unitGeneration: UnsafeMutablePointer<UInt32>? = nil
    var unitBusy: UnsafeMutablePointer<UInt8>? = nil
    var unitsOwned = 0
}

/// Allocates a session's storage once (none of it is freed per I/O).
func allocateSession(_ s: UnsafeMutablePointer<SessionState>, queueDepth: Int, ioBytes: Int, maxBurstBytes: Int,
                     verifyUnits: Int) {
    let q = max(queueDepth, 0)
    s.pointee.queueDepth = q
    if q > 0 {
        let tasks = UnsafeMutablePointer<IOTask>.allocate(capacity: q)
        let free = UnsafeMutablePointer<Int32>.allocate(capacity: q)
        for i in 0..<q {
            let data = UnsafeMutableRawPointer.allocate(byteCount: ioBytes, alignment: 4096)
            // A recognisable non-zero payload for unverified writes.
            data.initializeMemory(as: UInt8.self, repeating: 0xA5, count: ioBytes)
            tasks.advanced(by: i).initialize(to: IOTask(data: data))
            free[i] = Int32(q - 1 - i)
        }
        s.pointee.tasks = tasks
        s.pointee.freeTasks = free
        s.pointee.freeCount = q
    }
    let maxPDU = bhsBytes + SessionLimits.maxAHSBytes + Framing.digestBytes + LoginOffer.ourMaxRecvDataSegmentBytes
        + 3 + Framing.digestBytes
    s.pointee.maxPDUBytes = maxPDU
    s.pointee.rxCapacity = q > 0 ? max(SessionLimits.minActiveReceiveBytes, 4 * maxPDU)
                                 : max(SessionLimits.idleReceiveBytes, 2 * bhsBytes + 2 * SessionLimits.nopEchoBytes)
    // An idle session never needs more than one large PDU in its buffer; a PDU larger than that fails it.
    if q == 0 { s.pointee.maxPDUBytes = s.pointee.rxCapacity / 2 }
    s.pointee.rx = .allocate(byteCount: s.pointee.rxCapacity, alignment: 4096)

    // Header slots: per command its SCSI Command, then Data-Out PDUs for the unsolicited burst and for up to
    // two R2T bursts (one being answered while the previous one's send completion is still unprocessed).
    let segment = max(512, s.pointee.maxSendSegmentBytes)
    let pdusPerBurst = (max(maxBurstBytes, s.pointee.firstBurstBytes) + segment - 1) / segment
    var needed = q * (1 + 3 * pdusPerBurst) + SessionLimits.spareHeaderSlots
    var slotCount = 1
    while slotCount < needed { slotCount <<= 1 }
    needed = slotCount
    s.pointee.slots = .allocate(byteCount: slotCount * SessionLimits.headerSlotBytes, alignment: 64)
    s.pointee.slots!.initializeMemory(as: UInt8.self, repeating: 0, count: slotCount * SessionLimits.headerSlotBytes)
    s.pointee.slotMask = UInt32(slotCount - 1)
    // Each PDU is at most three iovecs: header (+digest), data, pad + data digest.
    s.pointee.iovCapacity = 3 * slotCount
    s.pointee.iov = .allocate(capacity: s.pointee.iovCapacity)
    s.pointee.iovSlot = .allocate(capacity: s.pointee.iovCapacity)
    s.pointee.msg = .allocate(capacity: 1)
    s.pointee.msg!.initialize(to: msghdr())
    s.pointee.nopEcho = .allocate(byteCount: SessionLimits.nopEchoBytes, alignment: 16)
    if verifyUnits > 0 {
        s.pointee.unitsOwned = verifyUnits
        s.pointee.unitGeneration = .allocate(capacity: verifyUnits)
        s.pointee.unitGeneration!.initialize(repeating: 0, count: verifyUnits)
        s.pointee.unitBusy = .allocate(capacity: verifyUnits)
        s.pointee.unitBusy!.initialize(repeating: 0, count: verifyUnits)
    }
}
