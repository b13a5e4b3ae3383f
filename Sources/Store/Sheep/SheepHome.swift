import Floor
import URing
import Logging
import SheepProtocol

/// A write that needs the home core: the object is unallocated, owned by a parent snapshot (copy-on-write),
/// or sheep answered READONLY because a snapshot was taken under us. It carries a pointer into the
/// requester's buffer slot, which stays untouched until the reply. (Allocation path only: steady-state I/O to
/// allocated objects never builds one.)
public final class SheepHomeRequest: @unchecked Sendable {
    public enum Kind {
        case write(index: Int, objectOffset: Int, length: Int, data: UnsafeRawPointer)
        /// Deallocate a whole object this VDI owns (UNMAP): its index slot becomes 0.
        case deallocate(index: Int)
        /// A read piece sheep answered INODE_INVALIDATED (or its stale-index probe was): redone after the reload.
        case read(index: Int, objectOffset: Int, length: Int, dest: UnsafeMutableRawPointer)
        /// Multipath: bring the shared SCSI record up to date (or append the LU's state to it) for a
        /// reservation command (StoreOp.shareState).
        case record(publish: Bool)
        /// Multipath: COMPARE AND WRITE's section across gateways (StoreOp.compareSection, SheepHomeCompare.swift).
        case compareSection(CompareSectionStep)
        /// Multipath: append a change made outside a command (logout, nexus loss, a reset) to the shared SCSI
        /// record; answered once it is in sheep (or known to change nothing).
        case change(SharedStateChange)
    }
    let volume: SheepVolume
    let kind: Kind
    let originCore: Int
    let waiter: SheepWaiter
    /// The VID a data write went to when sheep answered READONLY (0 otherwise).
    var readonlyVID: UInt32
    /// Sheep answered INODE_INVALIDATED: the inode must be reloaded before this is redone.
    var invalidated = false
    /// Times this request met INODE_INVALIDATED (bounded by SheepHomeLimits.invalidationsMax).
    var invalidations = 0
    /// Loop tick at which a `.record(publish: false)` or a `.change` began to wait
    /// (SharedStateLimits.syncWaitSecondsMax).
    var queuedTick: UInt64 = 0

    public init(volume: SheepVolume, kind: Kind, originCore: Int, waiter: SheepWaiter, readonlyVID: UInt32 = 0) {
        self.volume = volume
        self.kind = kind
        self.originCore = originCore
        self.waiter = waiter
        self.readonlyVID = readonlyVID
    }

    var index: Int {
        switch kind {
        case .write(let i, _, _, _): return i
        case .deallocate(let i): return i
        case .read(let i, _, _, _): return i
        case .record, .compareSection, .change: return 0
        }
    }
}

public enum SheepHomeLimits {
    /// Requests parked while the inode is reloaded after INODE_INVALIDATED, per VDI; beyond, they fail as
    /// busy. Above what the channels of all cores can have in flight for one VDI in practice.
    static let refreshWaitersMax = 8192
    /// A request that meets INODE_INVALIDATED this many times (other gateways keep changing the index
    /// between our reload and our retry) fails with a medium error instead of looping.
    static let invalidationsMax = 16
}

/// The home core's bookkeeping for one VDI: objects being created (later requests for them wait), and the
/// reload after a snapshot.
public final class SheepHome {
    var creating: [Int: [SheepHomeRequest]] = [:]
    var reloading = false
    /// The VID a reload after a snapshot started from (0 when none is under way).
    var reloadFrom: UInt32 = 0
    var waitingReload: [SheepHomeRequest] = []
    var reconcileLeft = 0
    /// Hyper volumes: index changes waiting for the B-tree write in flight. One batch is written at a time,
    /// because sheep runs one connection's requests concurrently and an older root must not land last.
    var treePending: [(SheepHomeRequest, UInt32)] = []
    /// The changes the write in flight persists, the leaves it writes, steps left and the first failure.
    var treeBatch: [(SheepHomeRequest, UInt32)] = []
    var treeLeaves: [(leaf: Int, created: Bool)] = []
    var treeStepsLeft = 0
    var treeFailure: StoreError? = nil
    /// Multipath (SHEEPDOG-PROTOCOL.md §7.10): the inode is being re-read after INODE_INVALIDATED; requests
    /// wait in `waitingRefresh`. Slots this core changed meanwhile are newer than what the read returns.
    var refreshing = false
    var waitingRefresh: [SheepHomeRequest] = []
    var changedDuringRefresh: [Int] = []
    /// Header + flat index (4,198,968 bytes), allocated at the first reload and kept.
    var refreshBuffer: UnsafeMutableRawPointer? = nil
    /// Multipath: this gateway's copy of the shared SCSI record (docs/CLUSTER-STATE.md), the attribute object
    /// a read of it lands in (allocated at the first read and kept), and whether another refresh was asked
    /// for while one ran.
    var record: SheepSCSIRecordSync? = nil
    var recordRead = SheepSideRead(bytes: SheepVDIAttrLayout.objectSizeBytes)
    var recordAgain = false
    /// The step in flight is the index write that announces a version this core published.
    var recordAnnouncing = false
    /// The volume whose record this is (set with `record`), for the refresh interval.
    weak var recordVolume: SheepVolume? = nil
    /// Loop tick of the last refresh started (SheepHomeMachine.recordDue).
    var recordTick: UInt64 = 0
    /// Reservation commands waiting for the record to be current, the one whose version is being appended,
    /// and those waiting to append theirs.
    var recordSyncWaiters: [SheepHomeRequest] = []
    var recordPublisher: SheepHomeRequest? = nil
    var recordPublishQueue: [SheepHomeRequest] = []
    /// I/O that met INODE_INVALIDATED, held after the inode reload until the record is re-read too, and the
    /// record version known when it was held: a newer one from another gateway fails writes `.stateChanged`.
    var waitingRecord: [SheepHomeRequest] = []
    var waitingRecordVersion: UInt64 = 0
    /// A reservation command whose version lost the race: answered `.stateChanged` once the refresh that
    /// follows has loaded the winner's version into the LU, so that the command applies again to that.
    var recordLostPublisher: SheepHomeRequest? = nil
    /// Changes made outside a command (SharedStateChange.enqueue bounds them), waiting; those being appended
    /// (a refresh, then the version, again after a lost race) and how often they lost; and the requests each
    /// group answers.
    var changes: [SharedStateChange] = []
    var changeWaiters: [SheepHomeRequest] = []
    var changesInFlight: [SharedStateChange] = []
    var changeWaitersInFlight: [SheepHomeRequest] = []
    var changeAttempts = 0

    /// Multipath: COMPARE AND WRITE's section (SheepHomeCompare.swift): the machine, the request it works for
    /// (an enter or a leave), the enter of the command that holds it, enters waiting their turn, where a read
    /// of the lease state lands, and when the machine asked to be woken (0: not).
    var compare: SheepCompareSection? = nil
    weak var compareVolume: SheepVolume? = nil
    var compareCurrent: SheepHomeRequest? = nil
    var compareHolder: SheepHomeRequest? = nil
    var compareQueue: [SheepHomeRequest] = []
    var compareRead = SheepSideRead(bytes: CompareLeaseState.encodedBytes)
    var compareWakeNanos: UInt64 = 0

    /// Multipath: this gateway's heartbeat and what it saw of the others' (SheepHomeLiveness.swift): the machine,
    /// where a read of the slots lands, when the last beat started (monotonic nanoseconds, 0: never), whether
    /// the last one failed (logged once), this gateway's ports to the LU (from its last publication), the dead
    /// ports last reported to the LU, and the LU's power-on.
    var liveness: SheepLiveness? = nil
    var livenessRead = SheepSideRead(bytes: GatewayLivenessLimits.regionBytes)
    var livenessStarted: UInt64 = 0
    var livenessFailing = false
    var ownPorts: [UInt16] = []
    var deadPortsReported: [UInt16] = []
    var powerOn = PowerOnPhase.unknown

    var powerOnUndecided: Bool {
        if case .deciding = powerOn { return true }
        return false
    }

    /// A record operation (or the announce after one) is under way.
    var recordRunning: Bool { (record?.isBusy ?? false) || recordAnnouncing }

    deinit {
        refreshBuffer?.deallocate()
        recordRead.deallocate()
        compareRead.deallocate()
        livenessRead.deallocate()
    }
}

/// Where a side machine's READ_OBJ lands (allocated at its first read and kept), and whether the step in flight
/// is such a read.
struct SheepSideRead {
    let bytes: Int
    private var buffer: UnsafeMutableRawPointer? = nil
    private var pending = false

    init(bytes: Int) { self.bytes = bytes }

    /// A read is sent: where it lands.
    mutating func begin() -> UnsafeMutableRawPointer {
        if buffer == nil { buffer = .allocate(byteCount: bytes, alignment: 64) }
        pending = true
        return buffer!
    }

    /// The step's reply came: what the read brought (empty when the step was no read, or failed).
    mutating func take(_ result: SheepResult) -> [UInt8] {
        defer { pending = false }
        guard pending, result == .success, let buffer else { return [] }
        return Array(UnsafeRawBufferPointer(start: buffer, count: bytes))
    }

    func deallocate() { buffer?.deallocate() }
}

/// One step of home-core work waiting for a sheep reply.
public final class SheepHomeOp {
    public enum Stage {
        case create(vid: UInt32)
        case slotWrite(vid: UInt32, value: UInt32)
        case plainWrite(vid: UInt32)
        /// A read redone after a reload.
        case read
        /// Sheep's refresh read of the inode (offset 0, header + flat index) after INODE_INVALIDATED.
        case refreshRead(vid: UInt32)
        case reloadLookup
        /// Reading the new working VDI's index, to add slots a snapshot copied before our write reached it.
        case reloadIndex(newVID: UInt32)
        /// Writing one such slot; the last one ends the reload.
        case reconcileSlot
        /// Hyper volume: writing a changed B-tree leaf, then the inode root and btree_counter.
        case treeLeaf
        case treeRoot
        /// Multipath: the no-op index write that tells the snapshot's other participants to reload.
        case announce(newVID: UInt32)
        /// Multipath: a step of reading or appending the shared SCSI record (SheepSCSIRecordSync).
        case record
        /// Multipath: a step of COMPARE AND WRITE's section (SheepCompareSection).
        case compare
        /// Multipath: a step of a heartbeat (SheepLiveness).
        case liveness
        /// Multipath: the request's index slot, read from our inode in sheep into `buffer` (4 bytes) before a
        /// read or write of an object our index says is not ours (SheepHomeMachine.readSlot).
        case slotRead
    }
    let request: SheepHomeRequest?
    let volume: SheepVolume
    var stage: Stage
    /// Payload that must outlive the send: the 4-byte slot value, or name+tag for a lookup.
    var payload: [UInt8] = []
    /// The new inode's index while reconciling (allocation path only).
    var buffer: UnsafeMutableRawPointer? = nil

    deinit { buffer?.deallocate() }

    init(request: SheepHomeRequest?, volume: SheepVolume, stage: Stage) {
        self.request = request
        self.volume = volume
        self.stage = stage
    }
}

/// The home core's decisions for the VDIs homed on it: allocation and copy-on-write of data objects, index
/// updates, and the reload after a snapshot (SHEEPDOG-PROTOCOL.md §7.6-§7.9). Requests and sheep replies go
/// in; what to send, whom to answer and what to log come out, in order, through `nextAction()`. It touches no
/// socket, ring or other core, so it is tested with tables of reply sequences (SheepHomeMachineTests).
/// It is the only writer of its volumes' object index and VID, which it updates as replies confirm them.
/// Allocation path only: steady-state I/O to allocated objects never reaches it.
public struct SheepHomeMachine {
    public enum Action {
        /// Send `header` (with its payload, or into `dest`) to the volume's sheep; its answer comes back through
        /// `reply(op, ...)`, and a send that cannot be made is answered with a failure.
        case send(op: Int32, volume: SheepVolume, header: SheepRequestHeader, payload: UnsafeRawPointer?,
                  payloadLength: Int, dest: UnsafeMutableRawPointer?, destCapacity: Int)
        /// The request is done: nil is success.
        case answer(SheepHomeRequest, StoreError?)
        case log(Logger.Level, String)
        /// A record operation on the volume ended: `record` is the newest version this gateway knows.
        case record(SheepVolume, SheepSCSIRecord, SheepSCSIRecordSync.Outcome)
        /// The other gateways' ports of the volume's LU whose heartbeat stopped (SheepLiveness.swift) changed.
        case liveness(SheepVolume, [UInt16])
    }

    /// Internal, not private: SheepHomeRecord.swift walks it for records due a refresh.
    var homes: [ObjectIdentifier: SheepHome] = [:]
    private var ops: [Int32: SheepHomeOp] = [:]
    private var opCounter: Int32 = 0
    /// Internal, not private: SheepHomeRecord.swift adds the record's steps.
    var actions: [Action] = []
    private var actionHead = 0
    /// Set when the core stops: requests are answered `.unavailable` without going to sheep.
    var stopping = false
    /// Monotonic clock, set by the shell before each call (COMPARE AND WRITE's lease is timed with it).
    var nowNanos: UInt64 = 0
    /// The earliest time a COMPARE AND WRITE section asked to be woken at; 0: none.
    var compareWakeNanos: UInt64 = 0
    /// The loop tick last seen (refreshDueRecords), for how long a reservation command has waited.
    var tick: UInt64 = 0

    /// The next thing to do, in the order decided; nil when there is nothing left.
    mutating func nextAction() -> Action? {
        guard actionHead < actions.count else {
            if actionHead > 0 { actions.removeAll(keepingCapacity: true); actionHead = 0 }
            return nil
        }
        defer { actionHead += 1 }
        return actions[actionHead]
    }

    /// Steps waiting for a reply (for tests and leak checks).
    var stepsInFlight: Int { ops.count }

    mutating func home(_ vol: SheepVolume) -> SheepHome {
        let key = ObjectIdentifier(vol)
        if let h = homes[key] { return h }
        let h = SheepHome()
        homes[key] = h
        return h
    }

    /// A write or deallocation that needs the home core.
    mutating func request(_ req: SheepHomeRequest) {
        if stopping {
            // Stopping: nothing new goes to sheep.
            actions.append(.answer(req, .unavailable))
            return
        }
        if case .record(let publish) = req.kind { recordRequest(req, publish: publish); return }
        if case .compareSection(let step) = req.kind { compareRequest(req, step); return }
        if case .change(let change) = req.kind { recordChange(req, change); return }
        let vol = req.volume
        let h = home(vol)
        if h.reloading { h.waitingReload.append(req); return }
        if req.invalidated {
            req.invalidated = false
            req.invalidations += 1
            guard req.invalidations <= SheepHomeLimits.invalidationsMax else {
                actions.append(.log(.error, "sheep VDI '\(vol.name)': INODE_INVALIDATED \(req.invalidations) times in a row; failing the request"))
                actions.append(.answer(req, .mediumError))
                return
            }
            park(h, req)
            startRefresh(vol)
            return
        }
        if h.refreshing { park(h, req); return }
        if case .read(let idx, let objOff, let len, let dest) = req.kind {
            let owner = vol.owner(idx)
            if vol.coherent && owner != vol.vid { readSlot(vol, req); return }
            read(vol, req, from: owner, index: idx, objectOffset: objOff, length: len, dest: dest)
            return
        }
        if req.readonlyVID != 0 && vol.isHyper {
            // dog refuses to snapshot a hyper volume, and a new working VDI's tree is not ours to follow.
            actions.append(.log(.error, "sheep VDI '\(vol.name)': hyper volume became read-only (READONLY); failing writes"))
            actions.append(.answer(req, .writeProtected))
            return
        }
        if req.readonlyVID != 0 {
            if req.readonlyVID == vol.vid {
                h.waitingReload.append(req)
                startReload(vol)
                return
            }
            req.readonlyVID = 0   // already reloaded since: redo against the new working VDI
        }
        let idx = req.index
        if h.creating[idx] != nil {
            // Another request is creating or changing this object: wait for it (sheep loses data when two
            // creates of one object overlap, §7.6).
            h.creating[idx]!.append(req)
            return
        }
        let cur = vol.vid
        let owner = vol.owner(idx)
        switch req.kind {
        case .write(_, let objOff, let len, let data):
            if owner == cur {
                let op = newHomeOp(SheepHomeOp(request: req, volume: vol, stage: .plainWrite(vid: cur)))
                let hdr = SheepRequestHeader.writeObject(id: 0, oid: SheepOID.data(vid: cur, index: UInt32(idx)),
                                                         offset: UInt32(objOff), length: UInt32(len), copies: vol.copies)
                send(op, vol, hdr, payload: data, length: len)
                return
            }
            h.creating[idx] = []
            // Multipath: sheep's slot decides between create and write (readSlot); a create over an object
            // another gateway made would replace it.
            if vol.coherent { readSlot(vol, req); return }
            create(vol, req, index: idx, objectOffset: objOff, length: len, data: data, from: owner)
        case .deallocate:
            if owner != cur {
                actions.append(.answer(req, nil))   // nothing of ours to deallocate any more
                return
            }
            h.creating[idx] = []
            if vol.isHyper { treeSet(vol, req, value: 0) } else { writeSlot(vol, idx: idx, value: 0, vid: cur, req: req) }
        case .read, .record, .compareSection, .change:
            break   // answered above
        }
    }

    /// A read of object `idx` of VDI `owner` into `dest`; zeros, at once, when `owner` is 0 (a hole).
    private mutating func read(_ vol: SheepVolume, _ req: SheepHomeRequest, from owner: UInt32, index idx: Int,
                               objectOffset objOff: Int, length len: Int, dest: UnsafeMutableRawPointer) {
        if owner == 0 {
            dest.initializeMemory(as: UInt8.self, repeating: 0, count: len)
            actions.append(.answer(req, nil))
            return
        }
        let hdr = SheepRequestHeader.readObject(id: 0, oid: SheepOID.data(vid: owner, index: UInt32(idx)),
                                                offset: UInt32(objOff), length: UInt32(len))
        send(newHomeOp(SheepHomeOp(request: req, volume: vol, stage: .read)), vol, hdr, payload: nil, length: 0,
             dest: dest, destCapacity: len)
    }

    /// CREATE_AND_WRITE of object `idx` of the working VDI, copy-on-write from `owner`'s object unless 0. The
    /// caller holds the object's creation gate.
    private mutating func create(_ vol: SheepVolume, _ req: SheepHomeRequest, index idx: Int, objectOffset objOff: Int,
                                 length len: Int, data: UnsafeRawPointer, from owner: UInt32) {
        let cur = vol.vid
        let cow: UInt64 = owner == 0 ? 0 : SheepOID.data(vid: owner, index: UInt32(idx))
        let op = newHomeOp(SheepHomeOp(request: req, volume: vol, stage: .create(vid: cur)))
        let hdr = SheepRequestHeader.createAndWrite(id: 0, oid: SheepOID.data(vid: cur, index: UInt32(idx)),
                                                    cowOid: cow, offset: UInt32(objOff), length: UInt32(len),
                                                    copies: vol.copies)
        send(op, vol, hdr, payload: data, length: len)
    }

    /// Multipath: our index can be stale although sheep counts this node valid. Sheep revalidates a node after
    /// its refresh read (`gateway_read_obj` → `validate_myself`), and a gateway changing the index invalidates
    /// the others *before* it forwards its index write (`gateway_write_obj`: `invalidate_other_nodes`, then
    /// `gateway_forward_request`): a refresh read that runs in between returns the old index and leaves us
    /// valid. So for an object our index says is not ours, the slot is read from our inode in sheep (with
    /// SD_FLAG_CMD_TGT: still INODE_INVALIDATED when sheep knows we are stale), and that decides.
    private mutating func readSlot(_ vol: SheepVolume, _ req: SheepHomeRequest) {
        let op = SheepHomeOp(request: req, volume: vol, stage: .slotRead)
        op.buffer = .allocate(byteCount: SheepInodeLayout.slotBytes, alignment: 4)
        let dest = op.buffer
        let id = newHomeOp(op)
        let hdr = SheepRequestHeader.readIndexSlot(id: 0, vid: vol.vid, index: UInt32(req.index))
        send(id, vol, hdr, payload: nil, length: 0, dest: dest, destCapacity: SheepInodeLayout.slotBytes)
    }

    /// Sheep's slot for the request (readSlot): the read goes to the owner it names (zeros for a hole); a write
    /// to an object we own already is a plain write, else a create (copy-on-write from the owner named).
    private mutating func slotAnswered(_ vol: SheepVolume, _ req: SheepHomeRequest, slot: UInt32) {
        let cur = vol.vid, idx = req.index
        switch req.kind {
        case .read(_, let objOff, let len, let dest):
            read(vol, req, from: slot, index: idx, objectOffset: objOff, length: len, dest: dest)
        case .write(_, let objOff, let len, let data):
            guard slot == cur else {
                create(vol, req, index: idx, objectOffset: objOff, length: len, data: data, from: slot)
                return
            }
            // Another gateway made the object since our index was read: write into it, and let the requests
            // waiting for this object go (they find it ours now).
            if vol.owner(idx) != cur {
                actions.append(.log(.debug, "sheep VDI '\(vol.name)': object \(idx) was allocated by another gateway; writing to it"))
                recordOwner(vol, idx, cur)
            }
            let hdr = SheepRequestHeader.writeObject(id: 0, oid: SheepOID.data(vid: cur, index: UInt32(idx)),
                                                     offset: UInt32(objOff), length: UInt32(len), copies: vol.copies)
            send(newHomeOp(SheepHomeOp(request: req, volume: vol, stage: .plainWrite(vid: cur))), vol, hdr,
                 payload: data, length: len)
            releaseCreating(vol, idx, requeueTo: false)
        case .deallocate, .record, .compareSection, .change:
            finishHome(req, failure: nil)   // never sent here
        }
    }

    /// Holds a request until the inode reload ends.
    private mutating func park(_ h: SheepHome, _ req: SheepHomeRequest) {
        guard h.waitingRefresh.count < SheepHomeLimits.refreshWaitersMax else {
            actions.append(.answer(req, .unavailable))
            return
        }
        h.waitingRefresh.append(req)
    }

    /// Asks the shell to send `hdr` for step `op`. When the channel cannot take it, the shell answers the step
    /// with a failure, as a lost connection would.
    private mutating func send(_ op: Int32, _ vol: SheepVolume, _ hdr: SheepRequestHeader, payload: UnsafeRawPointer?,
                               length: Int, dest: UnsafeMutableRawPointer? = nil, destCapacity: Int = 0) {
        var hdr = hdr
        if hdr.opcode == .readObj || hdr.opcode == .writeObj || hdr.opcode == .createAndWriteObj {
            hdr.flags.formUnion(vol.objectFlags)
        }
        actions.append(.send(op: op, volume: vol, header: hdr, payload: payload, payloadLength: length, dest: dest,
                             destCapacity: destCapacity))
    }

    /// Persists one index slot: WRITE_OBJ of 4 bytes at 4664 + 4*idx of the working inode (only the slot that
    /// changed, so sheep resets no other slot's refcount, §7.5).
    private mutating func writeSlot(_ vol: SheepVolume, idx: Int, value: UInt32, vid: UInt32, req: SheepHomeRequest) {
        let op = SheepHomeOp(request: req, volume: vol, stage: .slotWrite(vid: vid, value: value))
        op.payload = withUnsafeBytes(of: value.littleEndian) { Array($0) }
        let id = newHomeOp(op)
        let hdr = SheepRequestHeader.writeIndexSlot(id: 0, vid: vid, index: UInt32(idx), copies: vol.copies)
        let p = op.payload.withUnsafeBytes { $0.baseAddress! }   // the array lives in the op until the reply
        send(id, vol, hdr, payload: p, length: SheepInodeLayout.slotBytes)
    }

    mutating func newHomeOp(_ op: SheepHomeOp) -> Int32 {
        opCounter &+= 1
        if opCounter < 0 { opCounter = 1 }
        ops[opCounter] = op
        return opCounter
    }

    /// Sends one request of a side machine (the shared record, COMPARE AND WRITE's section, the heartbeat) for
    /// `vol`: a READ_OBJ lands in `read`'s buffer, and `read` remembers that its reply carries data; anything
    /// else carries `payload`, which lives in the op until the reply.
    mutating func sendSideRequest(_ vol: SheepVolume, stage: SheepHomeOp.Stage, _ hdr: SheepRequestHeader,
                                  payload: [UInt8], read: inout SheepSideRead) {
        let op = SheepHomeOp(request: nil, volume: vol, stage: stage)
        op.payload = payload
        let id = newHomeOp(op)
        if hdr.opcode == .readObj {
            actions.append(.send(op: id, volume: vol, header: hdr, payload: nil, payloadLength: 0,
                                 dest: read.begin(), destCapacity: read.bytes))
            return
        }
        let p = op.payload.isEmpty ? nil : op.payload.withUnsafeBytes { UnsafeRawPointer($0.baseAddress!) }
        actions.append(.send(op: id, volume: vol, header: hdr, payload: p, payloadLength: op.payload.count,
                             dest: nil, destCapacity: 0))
    }

    /// Sheep's answer to step `id` (`failure` when there was none: connection lost for good, or not sent).
    mutating func reply(_ id: Int32, result: SheepResult, failure: StoreError?, vdiID: UInt32, attrID: UInt32 = 0) {
        guard let op = ops.removeValue(forKey: id) else { return }
        if case .record = op.stage {
            recordReply(op.volume, result: failure == nil ? result : .eio, vdiID: vdiID, attrID: attrID)
            return
        }
        if case .compare = op.stage {
            compareReply(op.volume, result: failure == nil ? result : .eio, vdiID: vdiID)
            return
        }
        if case .liveness = op.stage {
            livenessReply(op.volume, result: failure == nil ? result : .eio, vdiID: vdiID)
            return
        }
        let vol = op.volume
        // A plain write never took its object's creation gate (request() sends it only when the object is ours and
        // no creation is under way), so its end must not open the gate a creation of the same object holds.
        var holdsGate = true
        if case .plainWrite = op.stage { holdsGate = false }
        if case .read = op.stage { holdsGate = false }
        if case .slotRead = op.stage, let req = op.request, case .read = req.kind { holdsGate = false }
        if let failure {
            if let req = op.request { finishHome(req, failure: failure, releasesGate: holdsGate) }
            switch op.stage {
            case .refreshRead(let vid): refreshFinished(vol, vid: vid, inode: nil, result: .eio)
            case .reloadLookup: reloadFinished(vol, newVID: nil)
            case .reloadIndex(let v): reloadFinished(vol, newVID: v)   // no reconcile possible; carry on
            case .announce(let v): reloadFinished(vol, newVID: v)
            case .reconcileSlot: reconcileStep(vol)
            case .treeLeaf, .treeRoot: treeStep(vol, op.stage, failure: failure)
            default: break
            }
            return
        }
        if result == .inodeInvalidated, let req = op.request {
            // Another gateway changed the index: reload, then redo from the start with the fresh index.
            req.invalidated = true
            request(req)
            if case .create = op.stage { releaseCreating(vol, req.index, requeueTo: true) }
            if case .slotWrite = op.stage { releaseCreating(vol, req.index, requeueTo: true) }
            if case .slotRead = op.stage, holdsGate { releaseCreating(vol, req.index, requeueTo: true) }
            return
        }
        switch op.stage {
        case .read:
            guard let req = op.request else { return }
            actions.append(.answer(req, result == .success ? nil : SheepHomeMachine.mapResult(result)))
        case .refreshRead(let vid):
            refreshFinished(vol, vid: vid, inode: result == .success ? home(vol).refreshBuffer : nil, result: result)
        case .plainWrite(let vid):
            guard let req = op.request else { return }
            if result == .readonly { req.readonlyVID = vid; request(req); return }
            finishHome(req, failure: result == .success ? nil : SheepHomeMachine.mapResult(result), releasesGate: false)
        case .create(let vid):
            guard let req = op.request else { return }
            if result == .readonly {
                // A snapshot was taken: the create went to what is now a snapshot. Reload, then redo.
                releaseCreating(vol, req.index, requeueTo: true)
                req.readonlyVID = vid
                request(req)
                return
            }
            guard result == .success else {
                finishHome(req, failure: SheepHomeMachine.mapResult(result))
                return
            }
            // The data is in place: now, and only now, record it in the index (tgt d4622d1).
            if vol.isHyper { treeSet(vol, req, value: vid) } else { writeSlot(vol, idx: req.index, value: vid, vid: vid, req: req) }
        case .slotWrite(_, let value):
            guard let req = op.request else { return }
            if result == .success { recordOwner(vol, req.index, value) }
            finishHome(req, failure: result == .success ? nil : SheepHomeMachine.mapResult(result))
        case .reloadLookup:
            guard result == .success, vdiID != 0, vdiID != vol.vid else {
                if result == .vdiLocked {
                    actions.append(.log(.error, "sheep VDI '\(vol.name)': the new working VDI is locked by another client"))
                }
                reloadFinished(vol, newVID: nil)
                return
            }
            if vol.lockedVID != 0 { vol.addLock(vdiID) }
            readNewIndex(vol, newVID: vdiID)
        case .reloadIndex(let newVID):
            if result == .success, let buf = op.buffer {
                reconcile(vol, newVID: newVID, newIndex: buf + (vol.coherent ? SheepInodeLayout.headerSizeBytes : 0))
            } else {
                reloadFinished(vol, newVID: newVID)
            }
        case .reconcileSlot:
            if result != .success {
                actions.append(.log(.error, "sheep VDI '\(vol.name)': writing an index slot to the new working VDI failed: \(result.name)"))
            }
            reconcileStep(vol)
        case .treeLeaf, .treeRoot:
            treeStep(vol, op.stage, failure: result == .success ? nil : SheepHomeMachine.mapResult(result))
        case .announce(let newVID):
            if result != .success {
                actions.append(.log(.warning, "sheep VDI '\(vol.name)': telling other gateways of the snapshot failed: \(result.name)"))
            }
            reloadFinished(vol, newVID: newVID)
        case .slotRead:
            guard let req = op.request else { return }
            guard result == .success, let buf = op.buffer else {
                finishHome(req, failure: SheepHomeMachine.mapResult(result), releasesGate: holdsGate)
                return
            }
            slotAnswered(vol, req, slot: UInt32(littleEndian: buf.load(as: UInt32.self)))
        case .record, .compare, .liveness:
            break   // answered above
        }
    }

    // MARK: - Hyper volumes (B-tree index)

    /// Records object `req.index` → `value` in the hyper volume's B-tree; the request is answered once the
    /// changed leaves and root are written.
    private mutating func treeSet(_ vol: SheepVolume, _ req: SheepHomeRequest, value: UInt32) {
        let h = home(vol)
        h.treePending.append((req, value))
        if h.treeStepsLeft == 0 { startTreeBatch(vol) }
    }

    /// Applies every waiting change to the tree (sd_inode_set_vid), then writes the leaves they changed: new
    /// ones with CREATE_AND_WRITE, others in place, each up to its last entry. The root follows once all
    /// leaves are written, so the root never names a leaf sheep does not have.
    private mutating func startTreeBatch(_ vol: SheepVolume) {
        let h = home(vol)
        guard let tree = vol.hyper, h.treeStepsLeft == 0, !h.treePending.isEmpty else { return }
        let pending = h.treePending
        h.treePending = []
        h.treeBatch = []
        h.treeLeaves = []
        h.treeFailure = nil
        for (req, value) in pending {
            let r = tree.set(UInt32(req.index), to: value, vdiID: vol.vid)
            if r == .ok { h.treeBatch.append((req, value)); continue }
            actions.append(.log(.error, "sheep VDI '\(vol.name)': B-tree cannot record object \(req.index): \(r)"))
            finishHome(req, failure: r == .full ? .noSpace : .mediumError)
        }
        guard !h.treeBatch.isEmpty else { return }
        while let change = tree.takeChange() {
            h.treeLeaves.append(change)
            let leaf = tree.leafBuffer(change.leaf), oid = tree.oid(ofLeaf: change.leaf)
            let len = SheepBTree.usedBytes(leaf)
            let hdr = change.created
                ? SheepRequestHeader.createAndWrite(id: 0, oid: oid, cowOid: 0, offset: 0, length: UInt32(len), copies: vol.copies)
                : SheepRequestHeader.writeObject(id: 0, oid: oid, offset: 0, length: UInt32(len), copies: vol.copies)
            h.treeStepsLeft += 1
            send(newHomeOp(SheepHomeOp(request: nil, volume: vol, stage: .treeLeaf)), vol, hdr, payload: leaf, length: len)
        }
        if h.treeStepsLeft == 0 { writeTreeRoot(vol) }
    }

    /// The inode from btree_counter to the root's last entry (`SheepHyperIndex.rootWrite`).
    private mutating func writeTreeRoot(_ vol: SheepVolume) {
        guard let tree = vol.hyper else { return }
        let h = home(vol)
        let (offset, length) = tree.rootWrite
        h.treeStepsLeft = 1
        let hdr = SheepRequestHeader.writeObject(id: 0, oid: SheepOID.inode(vid: vol.vid), offset: UInt32(offset),
                                                 length: UInt32(length), copies: vol.copies)
        send(newHomeOp(SheepHomeOp(request: nil, volume: vol, stage: .treeRoot)), vol, hdr,
             payload: UnsafeRawPointer(tree.image + offset), length: length)
    }

    private mutating func treeStep(_ vol: SheepVolume, _ stage: SheepHomeOp.Stage, failure: StoreError?) {
        let h = home(vol)
        if h.treeFailure == nil { h.treeFailure = failure }
        h.treeStepsLeft -= 1
        guard h.treeStepsLeft == 0 else { return }
        if case .treeLeaf = stage, h.treeFailure == nil { writeTreeRoot(vol); return }
        let batch = h.treeBatch, failed = h.treeFailure
        h.treeBatch = []
        if failed != nil {
            // The tree in memory is ahead of sheep: the next change rewrites (or creates) these leaves and the
            // root, and a write retried to these objects re-records them.
            for change in h.treeLeaves { vol.hyper?.retake(change.leaf, created: change.created) }
            actions.append(.log(.error, "sheep VDI '\(vol.name)': writing the B-tree failed"))
        }
        h.treeLeaves = []
        for (req, value) in batch {
            if failed == nil { vol.setOwner(req.index, value) }
            finishHome(req, failure: failed)
        }
        startTreeBatch(vol)
    }

    private static func mapResult(_ r: SheepResult) -> StoreError {
        switch r {
        case .noSpace: return .noSpace
        case .readonly: return .writeProtected
        default: return .mediumError
        }
    }

    /// Answers the request and lets waiters for the same object proceed.
    private mutating func finishHome(_ req: SheepHomeRequest, failure: StoreError?, releasesGate: Bool = true) {
        actions.append(.answer(req, failure))
        if releasesGate { releaseCreating(req.volume, req.index, requeueTo: false) }
    }

    private mutating func releaseCreating(_ vol: SheepVolume, _ idx: Int, requeueTo: Bool) {
        let h = home(vol)
        guard let waiting = h.creating.removeValue(forKey: idx) else { return }
        for w in waiting { request(w) }
    }

    /// READONLY: a snapshot turned our working VDI into a snapshot. Find the new working VDI (same name,
    /// snapid 0) and carry on writing copy-on-write to it; our index stays valid because the new working VDI
    /// starts with a copy of it (§7.9).
    private mutating func startReload(_ vol: SheepVolume) {
        let h = home(vol)
        guard !h.reloading else { return }
        h.reloading = true
        h.reloadFrom = vol.vid
        let op = SheepHomeOp(request: nil, volume: vol, stage: .reloadLookup)
        op.payload = (try? SheepVDIName.payload(name: vol.name, tag: "")) ?? []
        let id = newHomeOp(op)
        actions.append(.log(.info, "sheep VDI '\(vol.name)': a snapshot was taken (READONLY); reloading the working VDI"))
        // The new working VDI is locked as the old one was (tgt does the same); a cluster without locking
        // answers LOCK_VDI like GET_VDI_INFO.
        let hdr = SheepRequestHeader.vdiLookup(vol.lockedVID != 0 ? .lockVDI : .getVDIInfo, id: 0, snapID: 0,
                                               lockType: vol.lockType)
        let p = op.payload.withUnsafeBytes { $0.baseAddress! }
        send(id, vol, hdr, payload: p, length: op.payload.count)
    }

    /// Reads the new working VDI's index (4 MiB; snapshots are rare). A coherent volume reads it with sheep's
    /// refresh read (from offset 0, with the header), which also validates this node on the new VDI.
    private mutating func readNewIndex(_ vol: SheepVolume, newVID: UInt32) {
        let op = SheepHomeOp(request: nil, volume: vol, stage: .reloadIndex(newVID: newVID))
        let skip = vol.coherent ? SheepInodeLayout.headerSizeBytes : 0
        let bytes = SheepInodeLayout.dataIndexSizeBytes + skip
        op.buffer = .allocate(byteCount: bytes, alignment: 64)
        let id = newHomeOp(op)
        let hdr = SheepRequestHeader.readObject(id: 0, oid: SheepOID.inode(vid: newVID),
                                                offset: UInt32(SheepInodeLayout.headerSizeBytes - skip), length: UInt32(bytes))
        send(id, vol, hdr, payload: nil, length: 0, dest: op.buffer, destCapacity: bytes)
    }

    /// A data object created just before the snapshot can have its index slot written to the old inode after
    /// sheep copied that index into the new working VDI (§7.9, sheepdog#331). Every slot we know of that the new
    /// index lacks is written to it before any write continues, so nothing acknowledged is lost.
    private mutating func reconcile(_ vol: SheepVolume, newVID: UInt32, newIndex: UnsafeMutableRawPointer) {
        vol.setVID(newVID)
        let h = home(vol)
        var missing: [(Int, UInt32)] = []
        for idx in 0..<vol.indexSlots {
            let mine = vol.owner(idx)
            let theirs = UInt32(littleEndian: newIndex.load(fromByteOffset: idx * 4, as: UInt32.self))
            if theirs == newVID && mine != newVID {
                // Another gateway already wrote to the new working VDI: its slot is the newer one.
                recordOwner(vol, idx, theirs)
                continue
            }
            if mine == 0 { continue }
            if theirs != mine { missing.append((idx, mine)) }
        }
        h.reconcileLeft = missing.count
        if missing.isEmpty { reloadFinished(vol, newVID: newVID); return }
        actions.append(.log(.warning, "sheep VDI '\(vol.name)': \(missing.count) index slot(s) missing from the new working VDI; writing them"))
        for (idx, value) in missing {
            let op = SheepHomeOp(request: nil, volume: vol, stage: .reconcileSlot)
            op.payload = withUnsafeBytes(of: value.littleEndian) { Array($0) }
            let id = newHomeOp(op)
            let hdr = SheepRequestHeader.writeIndexSlot(id: 0, vid: newVID, index: UInt32(idx), copies: vol.copies)
            let p = op.payload.withUnsafeBytes { $0.baseAddress! }
            send(id, vol, hdr, payload: p, length: SheepInodeLayout.slotBytes)
        }
    }

    private mutating func reconcileStep(_ vol: SheepVolume) {
        let h = home(vol)
        h.reconcileLeft -= 1
        if h.reconcileLeft <= 0 { reloadFinished(vol, newVID: vol.vid) }
    }

    /// An index slot no object of the VDI can use (the last one, when the VDI is smaller than 4 TiB).
    static func announceSlot(_ vol: SheepVolume) -> Int? {
        let objects = (vol.byteCount + UInt64(vol.objectBytes) - 1) / UInt64(vol.objectBytes)
        let last = SheepInodeLayout.dataIndexSlots - 1
        return objects <= UInt64(last) ? last : nil
    }

    /// Sets an owner this core learned from sheep's answer to its own write: newer than a reload in flight.
    private mutating func recordOwner(_ vol: SheepVolume, _ idx: Int, _ value: UInt32) {
        vol.setOwner(idx, value)
        let h = home(vol)
        if h.refreshing { h.changedDuringRefresh.append(idx) }
    }

    /// INODE_INVALIDATED: another gateway wrote the index. Sheep's refresh read (offset 0, header + flat
    /// index, exactly) brings ours up to date and tells sheep this node is valid again (§7.10).
    private mutating func startRefresh(_ vol: SheepVolume) {
        let h = home(vol)
        guard !h.refreshing else { return }
        h.refreshing = true
        h.changedDuringRefresh.removeAll(keepingCapacity: true)
        let bytes = SheepInodeLayout.clientInodeSizeBytes
        if h.refreshBuffer == nil { h.refreshBuffer = .allocate(byteCount: bytes, alignment: 64) }
        let vid = vol.vid
        actions.append(.log(.debug, "sheep VDI '\(vol.name)': another gateway changed the index (INODE_INVALIDATED); reloading the inode"))
        let hdr = SheepRequestHeader.readObject(id: 0, oid: SheepOID.inode(vid: vid), offset: 0, length: UInt32(bytes))
        send(newHomeOp(SheepHomeOp(request: nil, volume: vol, stage: .refreshRead(vid: vid))), vol, hdr, payload: nil,
             length: 0, dest: h.refreshBuffer, destCapacity: bytes)
    }

    /// The refresh read's answer: adopt the index (except slots this core changed since), then redo the
    /// waiting requests. If the VDI has become a snapshot meanwhile, its index is adopted and the working VDI
    /// is looked up, locked and reloaded as after READONLY (tgt a86ca22).
    private mutating func refreshFinished(_ vol: SheepVolume, vid: UInt32, inode: UnsafeMutableRawPointer?,
                                          result: SheepResult) {
        let h = home(vol)
        h.refreshing = false
        let waiting = h.waitingRefresh
        h.waitingRefresh = []
        if inode != nil && vid != vol.vid {
            // A snapshot moved us to another VDI meanwhile: that reload read the index; just redo.
            for r in waiting { request(r) }
            return
        }
        guard let inode else {
            actions.append(.log(.error, "sheep VDI '\(vol.name)': reloading the inode after INODE_INVALIDATED failed: \(result.name)"))
            for r in waiting { actions.append(.answer(r, .mediumError)) }
            return
        }
        let index = inode + SheepInodeLayout.headerSizeBytes
        var changed = 0
        for idx in 0..<vol.indexSlots {
            let theirs = UInt32(littleEndian: index.load(fromByteOffset: idx * 4, as: UInt32.self))
            if theirs != vol.owner(idx) && !h.changedDuringRefresh.contains(idx) {
                vol.setOwner(idx, theirs)
                changed += 1
            }
        }
        h.changedDuringRefresh.removeAll(keepingCapacity: true)
        actions.append(.log(.debug, "sheep VDI '\(vol.name)': inode reloaded, \(changed) index slot(s) changed"))
        // Another gateway's index write may be the announce of a new record version: read it too, and redo
        // the held I/O only after it, so that a write is checked against a reservation announced meanwhile.
        let sharesState = h.record != nil || vol.lunState != nil
        if sharesState { refreshRecord(vol) }
        if SheepInodeHeader(from: UnsafeRawPointer(inode)).isSnapshot {
            h.waitingReload += waiting
            startReload(vol)
            return
        }
        if sharesState, let r = h.record, h.recordRunning {
            if h.waitingRecord.isEmpty { h.waitingRecordVersion = r.known.version }
            h.waitingRecord += waiting
            return
        }
        for r in waiting { request(r) }
    }

    private mutating func reloadFinished(_ vol: SheepVolume, newVID: UInt32?) {
        let h = home(vol)
        let from = h.reloadFrom
        h.reloadFrom = 0
        if let newVID, newVID != 0, from != 0, from != newVID, vol.coherent,
           let slot = Self.announceSlot(vol) {
            // Another gateway that has not written since the snapshot still reads the objects of the old VDI,
            // which we (and it, later) copy into the new one, and sheep checks those reads against the old
            // VDI. A write into the old inode's index invalidates every other participant there, so their next
            // request reloads and finds the new working VDI. It writes 0 to a slot past the end of the VDI
            // (always 0: nothing is referenced or released) and goes before any of our writes is redone.
            actions.append(.log(.info, "sheep VDI '\(vol.name)': telling other gateways that \(String(from, radix: 16)) is a snapshot now"))
            let hdr = SheepRequestHeader.writeIndexSlot(id: 0, vid: from, index: UInt32(slot), copies: vol.copies)
            // Without SD_FLAG_CMD_TGT: were we invalidated there, sheep would refuse it before invalidating.
            actions.append(.send(op: newHomeOp(SheepHomeOp(request: nil, volume: vol, stage: .announce(newVID: newVID))),
                                 volume: vol, header: hdr, payload: ZeroPages.base,
                                 payloadLength: SheepInodeLayout.slotBytes, dest: nil, destCapacity: 0))
            return
        }
        h.reloading = false
        let waiting = h.waitingReload
        h.waitingReload = []
        guard let newVID, newVID != 0 else {
            // No new working VDI (deleted, or the lookup failed): the writes cannot go anywhere safe.
            actions.append(.log(.error, "sheep VDI '\(vol.name)': no working VDI after READONLY; failing writes"))
            for r in waiting { actions.append(.answer(r, .writeProtected)) }
            return
        }
        actions.append(.log(.info, "sheep VDI '\(vol.name)': working VDI is now \(String(newVID, radix: 16))"))
        vol.setVID(newVID)
        for r in waiting { r.readonlyVID = 0; request(r) }
    }
}
