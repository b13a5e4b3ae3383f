// The contract between the SCSI layer (which decides what a command needs) and the backing stores
// (which the reactor drives through the ring). SCSI never performs I/O itself: it returns a StoreOp,
// the reactor carries it out on the command's own core, and feeds the result back.

/// Which LUN a store operation addresses. `.own` is the command's LUN; `.other` names another LUN of the
/// same target by its LUN number (EXTENDED COPY copies between LUNs of this target).
public enum StoreTarget: Equatable, Sendable {
    case own
    case other(lun: UInt64)
}

/// One backing-store operation. Offsets and lengths are bytes. `bufferOffset` is a byte offset into the
/// command's data buffer (its registered slot). Every operation completes with one `StoreResult`.
public enum StoreOp: Equatable, Sendable {
    /// Read `length` bytes at `offset` into buffer[bufferOffset ..< bufferOffset+length].
    case read(target: StoreTarget, offset: UInt64, length: Int, bufferOffset: Int)
    /// Write buffer[bufferOffset ..< bufferOffset+length] at `offset`. `fua`: durable before completion.
    case write(target: StoreTarget, offset: UInt64, length: Int, bufferOffset: Int, fua: Bool)
    /// Make every completed write durable (SYNCHRONIZE CACHE).
    case flush(target: StoreTarget)
    /// Deallocate a byte range (UNMAP, WRITE SAME with UNMAP). Reads of it return zeros afterwards.
    case discard(target: StoreTarget, offset: UInt64, length: UInt64)
    /// Provisioning status at `offset`: completes with `.extent(mapped:length:)` describing the run of
    /// bytes from `offset` that share one state (bounded by `maxLength`). GET LBA STATUS.
    case mapStatus(target: StoreTarget, offset: UInt64, maxLength: UInt64)
    /// Hint that a range will be read soon (PRE-FETCH). Completes with `.ok(0)`.
    case prefetch(target: StoreTarget, offset: UInt64, length: UInt64)
    /// Multipath sheep LU (docs/CLUSTER-STATE.md): bring the LU's reservations up to the newest version of the
    /// shared record, or (`publish`) append the LU's reservations as the next version and announce it. Other
    /// stores hold no shared state and complete it with `.ok(0)`.
    case shareState(target: StoreTarget, publish: Bool)
    /// Multipath sheep LU (docs/CLUSTER-STATE.md): COMPARE AND WRITE's critical section across gateways. `enter`
    /// waits until this gateway holds it, `confirm` says whether the holder may still send its write, `leave`
    /// gives it back. Other stores complete it with `.ok(0)`.
    case compareSection(target: StoreTarget, step: CompareSectionStep)
    /// Multipath sheep LU (docs/ALUA.md): SET TARGET PORT GROUPS set `group` to the asymmetric access state
    /// `stateCode` (SPC-4 §6.37, ALUAState's raw value: the floor knows no SCSI types); the change goes into
    /// the shared record and is announced before this completes. Other stores complete it with `.ok(0)`.
    case sharePortGroupState(target: StoreTarget, group: UInt16, stateCode: UInt8)
}

public enum CompareSectionStep: Equatable, Sendable {
    case enter, confirm, leave
}

/// The outcome of a StoreOp.
public enum StoreResult: Equatable, Sendable {
    /// Success; the value is the byte count for read/write, 0 otherwise.
    case ok(Int)
    /// mapStatus answer. `depth`, as qemu:allocation-depth counts it: 0 = allocated in no layer, 1 = in this
    /// volume itself, n = in the (n-1)th volume below it (a sheepdog snapshot or clone parent). A file is
    /// one layer: all of it, holes too, is depth 1, as qemu reports a raw image.
    case extent(mapped: Bool, length: UInt64, depth: UInt8 = 1)
    /// Failure with a classified cause, mapped to sense data by the SCSI layer.
    case failed(StoreError)
}

public enum StoreError: Equatable, Sendable {
    case mediumError        // EIO and friends: MEDIUM ERROR / unrecovered read error (read) or write error (write)
    case noSpace            // ENOSPC: DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT
    case writeProtected     // read-only store or snapshot: DATA PROTECT / WRITE PROTECTED
    case notSupported       // the store cannot do this op: ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE
    case unavailable        // backend gone (sheep down for good): NOT READY / LOGICAL UNIT NOT READY... or ABORTED COMMAND
    case outOfRange         // beyond the end of the store
    case stateChanged       // another gateway changed the shared reservations first: check again, then redo
}

/// What a store can do; the SCSI layer reads it to answer VPD pages and choose code paths.
public struct StoreCapabilities: Equatable, Sendable {
    public var canDiscard: Bool            // UNMAP, WRITE SAME UNMAP, LBPME
    public var discardZeroes: Bool         // reads after discard return zeros (LBPRZ)
    public var canReportMapping: Bool      // GET LBA STATUS answers from the store
    public var readOnly: Bool
    public var hasVolatileCache: Bool      // WCE default in the caching mode page
    public var optimalTransferBytes: Int   // VPD B0 OPTIMAL TRANSFER LENGTH (0 = not reported)
    public var unmapGranularityBytes: Int  // VPD B0 OPTIMAL UNMAP GRANULARITY (bytes; 0 = one block)

    public init(canDiscard: Bool = false, discardZeroes: Bool = false, canReportMapping: Bool = false,
                readOnly: Bool = false, hasVolatileCache: Bool = true, optimalTransferBytes: Int = 0,
                unmapGranularityBytes: Int = 0) {
        self.canDiscard = canDiscard
        self.discardZeroes = discardZeroes
        self.canReportMapping = canReportMapping
        self.readOnly = readOnly
        self.hasVolatileCache = hasVolatileCache
        self.optimalTransferBytes = optimalTransferBytes
        self.unmapGranularityBytes = unmapGranularityBytes
    }
}
