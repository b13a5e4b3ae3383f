// What a client sees of a small sheep cluster: the VDI table (sheep/vdi.c), the op handlers (sheep/ops.c,
// sheep/gateway.c) and the object store (sheep/store/plain_store.c), on one node. Where sheep's behaviour
// is known the handlers do the same, including its sharp edges: a second concurrent create of an object
// succeeds without writing (§7.6), a snapshot exposes a window where the old VDI is already read-only but
// the new inode does not exist yet (§7.9), DEL_VDI of a VDI that still has objects answers SUCCESS and
// changes nothing (v1.0 `delete_vdi_work`; dog zeroes the index first), locks belong to the sheep node, so
// a second locker through the same sheep gets VDI_LOCKED even for shared locks (§7.10).
//
// Several nodes, one cluster: every request names the node it arrived through (`node`, 0-based), and lock
// ownership and inode coherence are per node as in sheep/vdi.c (`vdi_lock`, `add_new_participant`,
// `del_participant`, `is_refresh_required`, `validate_myself`, `invalidate_other_nodes`,
// `inode_coherence_update`) and sheep/gateway.c: a WRITE_OBJ wholly inside an inode's data_vdi_id
// (`is_data_vid_update`) through a participant that is not MODIFIED makes it MODIFIED and every other
// participant INVALIDATED; READ/WRITE/CREATE_AND_WRITE with SD_FLAG_CMD_TGT through an INVALIDATED node answer
// INODE_INVALIDATED, except the refresh read (inode, offset 0, 4,198,968 bytes), which afterwards validates
// the node. A node that leaves drops its shared participations (`remove_node_from_participants`); its normal
// locks stay. Differences from sheep, none visible to a client: the coherence update is applied at once
// instead of through a corosync round, and a hyper volume's B-tree leaves and a root write that starts before
// data_vdi_id invalidate nobody, exactly as sheep (which only looks at `is_data_vid_update`).
//
// VDI attributes (GET_VDI_ATTR, the one internal op served) follow `get_vdi_attr` in sheep/vdi.c: CREAT,
// EXCL and DEL, slots probed from the attribute hash, objects of SD_ATTR_OBJ_SIZE read and written as any.
//
// Deliberate deviations, all for requests a correct client never sends:
// - an object read or write past the end of the object answers INVALID_PARMS (sheep returns garbage or EIO);
// - NEW_VDI with an empty name or an erasure-code policy without parity answers INVALID_PARMS (sheep
//   would create an invisible VDI, or abort);
// - objects are limited to 64 MiB: NEW_VDI with block_size_shift 27…31 answers INVALID_PARMS.
//
// Locking: `stateLock` guards the tables and is never held across a socket call; object bytes are copied
// outside it (an object stays mapped while any request holds a reference). `clusterOpLock` serialises
// cluster ops (NEW/DEL/LOCK/RELEASE/GET_VDI_INFO) as corosync does, across both steps of a snapshot.

#if canImport(Glibc)
import Glibc
#endif
import SheepProtocol

struct ClusterConfig: Sendable, Equatable {
    /// `dog cluster format -c`.
    var copies: UInt8 = SheepWire.defaultCopies
    var copyPolicy: UInt8 = 0
    /// `dog cluster format -z`.
    var blockSizeShift: UInt8 = SheepWire.defaultBlockSizeShift
    /// `dog cluster format -l`: LOCK_VDI takes locks. Off, LOCK_VDI is GET_VDI_INFO and RELEASE_VDI a no-op.
    var useLock = true
    /// The epoch every reply carries.
    var epoch: UInt32 = 1
}

/// The in-use / deleted VID bitmaps (`sys->vdi_inuse`, `sys->vdi_deleted`): 2^24 bits each, laid out as
/// little-endian 64-bit words exactly as READ_VDIS sends them.
struct VIDBitmap {
    static let wordCount = SheepWire.vidCount / 64
    private(set) var words = [UInt64](repeating: 0, count: VIDBitmap.wordCount)

    func test(_ vid: UInt32) -> Bool {
        let v = Int(vid)
        guard v < SheepWire.vidCount else { return false }
        return words[v >> 6] & (1 << UInt64(v & 63)) != 0
    }

    mutating func set(_ vid: UInt32) {
        let v = Int(vid)
        guard v < SheepWire.vidCount else { return }
        words[v >> 6] |= 1 << UInt64(v & 63)
    }

    /// `find_next_zero_bit(bitmap, SD_NR_VDIS, from)`: the first clear bit at or after `from`, or vidCount.
    func nextZero(from: Int) -> Int {
        var i = from
        while i < SheepWire.vidCount {
            let wordIndex = i >> 6
            let clear = ~words[wordIndex] >> UInt64(i & 63)
            if clear != 0 { return min(i + clear.trailingZeroBitCount, SheepWire.vidCount) }
            i = (wordIndex + 1) << 6
        }
        return SheepWire.vidCount
    }

    /// Every set bit, ascending.
    func allSet() -> [UInt32] {
        var out: [UInt32] = []
        for (wi, w) in words.enumerated() where w != 0 {
            for b in 0..<64 where w & (1 << UInt64(b)) != 0 { out.append(UInt32(wi * 64 + b)) }
        }
        return out
    }

    func withBytes<T>(_ body: (UnsafeRawBufferPointer) -> T) -> T {
        words.withUnsafeBytes(body)
    }
}

/// `struct vdi_state_entry`, reduced to what a client can observe.
struct VDIState: Equatable {
    /// `enum shared_lock_state`.
    enum Coherence: Equatable { case modified, shared, invalidated }
    struct Participant: Equatable {
        var node: Int
        var state: Coherence
    }
    enum Lock: Equatable {
        case unlocked
        /// LOCK_TYPE_NORMAL, owned by the node that forwarded the lock.
        case locked(owner: Int)
        /// LOCK_TYPE_SHARED: the participating nodes in joining order, at most SD_MAX_COPIES.
        case shared([Participant])
    }
    var copies: UInt8
    var copyPolicy: UInt8
    var blockSizeShift: UInt8
    var snapshot: Bool
    var deleted = false
    var lock = Lock.unlocked
}

/// Where a multi-step request stands between scheduler steps.
enum RequestPhase {
    case start
    /// Create opened its "temp file": the object is built but not visible yet (§7.6 window).
    case commitCreate(oid: UInt64, object: StoredObject)
    /// Snapshot updated the VDI state (old VID read-only, new VID known) but no inode is written yet.
    case commitSnapshot(SnapshotPlan)
}

struct SnapshotPlan {
    var name: [UInt8]
    var newVID: UInt32
    var baseVID: UInt32
    var currentVID: UInt32
    var newSnapID: UInt32
    var time: UInt64
    var size: UInt64
    var copies: UInt8
    var copyPolicy: UInt8
    var storePolicy: UInt8
    var blockSizeShift: UInt8
}

enum StepResult {
    case finished
    case pending(RequestPhase)
}

final class SheepCluster: @unchecked Sendable {
    /// The test server keeps objects up to 64 MiB (shift 26); sheep allows up to 2 GiB (shift 31). NEW_VDI
    /// asking for more, and reads longer than that, answer INVALID_PARMS.
    static let maxBlockSizeShift: UInt8 = 26
    static let maxObjectBytes = 1 << 26
    private(set) var config: ClusterConfig
    let stateLock = PosixLock()
    let clusterOpLock = PosixLock()
    private var objects: [UInt64: StoredObject] = [:]
    /// Objects whose create is between its two steps (the sheep's temp file exists).
    private var creating: Set<UInt64> = []
    private var inUse = VIDBitmap()
    private var deleted = VIDBitmap()
    private var vdis: [UInt32: VDIState] = [:]
    private let files: ObjectFiles?
    private let log: (String) -> Void
    /// Test hook: holds an index write between its invalidation and its effect (IndexWriteHold.swift).
    let indexHold = IndexWriteHold()

    init(config: ClusterConfig, dataDirectory: String?, log: @escaping (String) -> Void = { _ in }) throws {
        self.config = config
        self.log = log
        if let dir = dataDirectory {
            let f = try ObjectFiles(directory: dir)
            files = f
            let loaded = try f.load()
            objects = loaded.objects
            if let table = loaded.table {
                for v in table.inUse { inUse.set(v) }
                for v in table.deleted { deleted.set(v) }
                self.config = table.config
            }
            // An inode written just before a kill, whose table update never happened, still counts.
            for oid in objects.keys where SheepOID.isInode(oid) { inUse.set(SheepOID.vid(of: oid)) }
            rebuildVDIStates()
            try f.saveTable(VDITableFile(config: self.config, inUse: inUse.allSet(), deleted: deleted.allSet()))
        } else {
            files = nil
        }
    }

    /// `init_vdi_state`: after a restart the state of every VDI is read back from its inode.
    private func rebuildVDIStates() {
        for vid in inUse.allSet() {
            guard let inode = objects[SheepOID.inode(vid: vid)],
                  inode.size >= SheepInodeHeader.encodedSizeBytes else { continue }
            let h = SheepInodeHeader(from: inode.base)
            vdis[vid] = VDIState(copies: h.nrCopies, copyPolicy: h.copyPolicy, blockSizeShift: h.blockSizeShift,
                                 snapshot: h.isSnapshot, deleted: deleted.test(vid))
        }
    }

    // MARK: - Introspection for tests and the admin port

    func objectCount() -> Int { stateLock.withLock { objects.count } }
    func hasObject(_ oid: UInt64) -> Bool { stateLock.withLock { objects[oid] != nil } }
    func vdiState(_ vid: UInt32) -> VDIState? { stateLock.withLock { vdis[vid] } }
    func setUseLock(_ on: Bool) { stateLock.withLock { config.useLock = on } }

    /// `remove_node_from_participants`: a node left the cluster. Its shared participations end; normal locks
    /// it holds survive (sheep keeps them until `dog vdi lock unlock`).
    func removeNode(_ node: Int) {
        stateLock.withLock {
            for (vid, s) in vdis {
                guard case .shared(var ps) = s.lock, let i = ps.firstIndex(where: { $0.node == node }) else { continue }
                ps.remove(at: i)
                vdis[vid]?.lock = ps.isEmpty ? .unlocked : .shared(ps)
            }
        }
    }

    // MARK: - Inode coherence (sheep/vdi.c)

    /// `is_refresh_required`: the node participates in the VDI's shared lock and is INVALIDATED.
    private func isRefreshRequiredLocked(_ vid: UInt32, node: Int) -> Bool {
        guard case .shared(let ps)? = vdis[vid]?.lock else { return false }
        return ps.first(where: { $0.node == node })?.state == .invalidated
    }

    /// The gateway checks of READ/WRITE/CREATE_AND_WRITE: a request from tgt through an invalidated node
    /// must reload the inode first. The refresh read itself is exempt.
    private func mustRefresh(_ h: SheepRequestHeader, node: Int) -> Bool {
        guard h.flags.contains(.tgt), !Self.isInodeRefresh(h) else { return false }
        return stateLock.withLock { isRefreshRequiredLocked(SheepOID.vid(of: h.oid), node: node) }
    }

    /// `is_inode_refresh_req`: the whole header and flat index of an inode.
    static func isInodeRefresh(_ h: SheepRequestHeader) -> Bool {
        SheepOID.isInode(h.oid) && h.objOffset == 0 && Int(h.dataLength) == SheepInodeLayout.clientInodeSizeBytes
    }

    /// `is_data_vid_update`: a write wholly inside the inode's data_vdi_id.
    static func isDataVIDUpdate(_ h: SheepRequestHeader) -> Bool {
        SheepOID.isInode(h.oid) && Int(h.objOffset) >= SheepInodeLayout.headerSizeBytes
            && Int(h.objOffset) + Int(h.dataLength) <= SheepInodeLayout.clientInodeSizeBytes
    }

    /// `validate_myself` + `inode_coherence_update(validate)`: an invalidated node re-read the inode, so every
    /// participant that is not itself waiting to re-read becomes SHARED.
    private func validateLocked(_ vid: UInt32, node: Int) {
        guard case .shared(var ps)? = vdis[vid]?.lock,
              ps.first(where: { $0.node == node })?.state == .invalidated else { return }
        for i in ps.indices where ps[i].node == node || ps[i].state != .invalidated { ps[i].state = .shared }
        vdis[vid]?.lock = .shared(ps)
    }

    /// `invalidate_other_nodes` + `inode_coherence_update(invalidate)`: the writer becomes MODIFIED and every
    /// other participant INVALIDATED. A node that does not participate changes nothing.
    private func invalidateOthersLocked(_ vid: UInt32, node: Int) {
        guard case .shared(var ps)? = vdis[vid]?.lock,
              let me = ps.first(where: { $0.node == node }), me.state != .modified else { return }
        for i in ps.indices { ps[i].state = ps[i].node == node ? .modified : .invalidated }
        vdis[vid]?.lock = .shared(ps)
    }

    // MARK: - Dispatch

    /// Runs the first step of a request that passed the framing and version checks.
    /// `node` is the sheep node the request arrived through.
    func begin(_ h: SheepRequestHeader, _ payload: UnsafeRawBufferPointer, out: OutputBuffer, node: Int = 0) -> StepResult {
        switch h.opcode {
        case .readObj, .writeObj, .createAndWriteObj:
            if mustRefresh(h, node: node) { reply(out, h, .inodeInvalidated); return .finished }
        default: break
        }
        switch h.opcode {
        case .readObj: readObject(h, out: out, node: node)
        case .writeObj: writeObject(h, payload, out: out, node: node)
        case .createAndWriteObj: return beginCreate(h, payload, out: out)
        case .removeObj: removeObject(h, out: out)
        case .discardObj: discardObject(h, out: out)
        case .flushVDI:
            // v1.0+: "Return SD_RES_INVALID_PARMS to ask client not to send flush req again".
            reply(out, h, .invalidParms)
        case .readVDIs: readVDIs(h, out: out)
        case .getClusterDefault: clusterDefault(h, out: out)
        case .newVDI, .delVDI, .getVDIInfo, .lockVDI, .releaseVDI, .getVDIAttr:
            clusterOpLock.lock()
            let r = clusterOp(h, payload, out: out, node: node)
            if case .finished = r { clusterOpLock.unlock() }
            return r
        default:
            reply(out, h, .invalidParms)
        }
        return .finished
    }

    /// Runs the next step of a pending request.
    func resume(_ h: SheepRequestHeader, phase: RequestPhase, out: OutputBuffer) -> StepResult {
        switch phase {
        case .start:
            return .finished
        case .commitCreate(let oid, let object):
            commitCreate(h, oid: oid, object: object, out: out)
        case .commitSnapshot(let plan):
            commitSnapshot(h, plan, out: out)
            clusterOpLock.unlock()
        }
        return .finished
    }

    static func isClusterOp(_ op: SheepOpcode) -> Bool {
        op == .newVDI || op == .delVDI || op == .getVDIInfo || op == .lockVDI || op == .releaseVDI || op == .getVDIAttr
    }

    static func isObjectIO(_ op: SheepOpcode) -> Bool {
        op == .readObj || op == .writeObj || op == .createAndWriteObj || op == .discardObj || op == .removeObj
    }

    // MARK: - Replies

    func reply(_ out: OutputBuffer, _ h: SheepRequestHeader, _ result: SheepResult,
               _ fill: (inout SheepResponseHeader) -> Void = { _ in }) {
        var r = SheepResponseHeader(replyingTo: h, result: result, epoch: config.epoch)
        fill(&r)
        out.appendReply(r)
    }

    // MARK: - Object I/O (gateway ops)

    /// Object size as `get_objsize`: inodes are SD_INODE_SIZE, everything else the VDI's object size.
    private func objectSizeLocked(_ oid: UInt64) -> Int {
        if SheepOID.isInode(oid) { return SheepInodeLayout.fullInodeSizeBytes }
        if SheepOID.isAttr(oid) { return SheepVDIAttrLayout.objectSizeBytes }
        let shift = vdis[SheepOID.vid(of: oid)]?.blockSizeShift ?? config.blockSizeShift
        return 1 << Int(shift)
    }

    /// `oid_is_readonly`: data objects of snapshot VDIs. Inodes of snapshots stay writable.
    private func isReadonlyLocked(_ oid: UInt64) -> Bool {
        guard SheepOID.isData(oid) else { return false }
        return vdis[SheepOID.vid(of: oid)]?.snapshot ?? false
    }

    private static func fits(_ offset: UInt32, _ length: UInt32, _ size: Int) -> Bool {
        UInt64(offset) + UInt64(length) <= UInt64(size)
    }

    private func readObject(_ h: SheepRequestHeader, out: OutputBuffer, node: Int) {
        guard Int(h.dataLength) <= Self.maxObjectBytes else { return reply(out, h, .invalidParms) }
        let obj = stateLock.withLock { objects[h.oid] }
        guard let obj else { return reply(out, h, .noObj) }
        guard Self.fits(h.objOffset, h.dataLength, obj.size) else { return reply(out, h, .invalidParms) }
        // gateway_read_obj validates after a successful refresh read, whatever its flags.
        if Self.isInodeRefresh(h) { stateLock.withLock { validateLocked(SheepOID.vid(of: h.oid), node: node) } }
        var r = SheepResponseHeader(replyingTo: h, result: .success, dataLength: h.dataLength, epoch: config.epoch)
        r.objCopies = 0
        out.appendReply(r) { dst in
            dst.copyMemory(from: obj.base + Int(h.objOffset), byteCount: Int(h.dataLength))
        }
    }

    private func writeObject(_ h: SheepRequestHeader, _ payload: UnsafeRawBufferPointer, out: OutputBuffer, node: Int) {
        stateLock.lock()
        if isReadonlyLocked(h.oid) {
            stateLock.unlock()
            return reply(out, h, .readonly)
        }
        // gateway_write_obj invalidates before the write is forwarded, even when the write then fails.
        if Self.isDataVIDUpdate(h) {
            invalidateOthersLocked(SheepOID.vid(of: h.oid), node: node)
            if let slots = SheepInodeLayout.slotRange(offset: h.objOffset, length: h.dataLength) {
                // Sheep's window between the two (IndexWriteHold.swift), held open when a test asks.
                stateLock.unlock()
                indexHold.pass(slots: slots)
                stateLock.lock()
            }
        }
        guard let obj = objects[h.oid] else {
            stateLock.unlock()
            return reply(out, h, .noObj)
        }
        guard Self.fits(h.objOffset, h.dataLength, obj.size), payload.count == Int(h.dataLength) else {
            stateLock.unlock()
            return reply(out, h, .invalidParms)
        }
        if SheepOID.isInode(h.oid) {
            // Index updates change which objects are referenced: done under the lock (gateway_write_obj).
            writeInodeLocked(obj, vid: SheepOID.vid(of: h.oid), offset: Int(h.objOffset), payload)
            stateLock.unlock()
        } else {
            stateLock.unlock()
            if let src = payload.baseAddress, payload.count > 0 {
                (obj.base + Int(h.objOffset)).copyMemory(from: src, byteCount: payload.count)
            }
        }
        reply(out, h, .success)
    }

    /// A write into an inode. When it covers index slots, slots that changed drop their reference on the old
    /// owner's object (sheep's generational refcounts, reduced to "is any inode still pointing at it"), and
    /// the gref entries of the written slots are zeroed as `gateway_write_obj` does.
    private func writeInodeLocked(_ inode: StoredObject, vid: UInt32, offset: Int, _ payload: UnsafeRawBufferPointer) {
        let indexStart = SheepInodeLayout.headerSizeBytes
        let indexEnd = SheepInodeLayout.clientInodeSizeBytes
        let lo = max(offset, indexStart), hi = min(offset + payload.count, indexEnd)
        let flat = inode.base.load(fromByteOffset: SheepInodeLayout.storePolicyOffset, as: UInt8.self) == 0
        guard lo < hi, flat else {
            if let src = payload.baseAddress, payload.count > 0 {
                (inode.base + offset).copyMemory(from: src, byteCount: payload.count)
            }
            return
        }
        let firstSlot = UInt32((lo - indexStart) / 4)
        let endSlot = UInt32((hi - indexStart + 3) / 4)
        var old: [UInt32] = []
        old.reserveCapacity(Int(endSlot - firstSlot))
        for s in firstSlot..<endSlot { old.append(SheepInodeLayout.loadSlot(inode.base, s)) }
        if let src = payload.baseAddress, payload.count > 0 {
            (inode.base + offset).copyMemory(from: src, byteCount: payload.count)
        }
        for s in firstSlot..<endSlot {
            let before = old[Int(s - firstSlot)]
            let after = SheepInodeLayout.loadSlot(inode.base, s)
            let gref = SheepInodeLayout.grefOffset + Int(s) * 8
            if gref + 8 <= inode.size { inode.base.storeBytes(of: UInt64(0), toByteOffset: gref, as: UInt64.self) }
            if before != 0 && before != after && !isReferencedLocked(owner: before, index: s) {
                removeLocked(SheepOID.data(vid: before, index: s))
            }
        }
    }

    /// Whether any inode's slot `index` names `owner`.
    private func isReferencedLocked(owner: UInt32, index: UInt32) -> Bool {
        for vid in vdis.keys {
            guard let inode = objects[SheepOID.inode(vid: vid)],
                  Int(SheepInodeLayout.slotOffset(index)) + 4 <= inode.size,
                  inode.base.load(fromByteOffset: SheepInodeLayout.storePolicyOffset, as: UInt8.self) == 0
            else { continue }
            if SheepInodeLayout.loadSlot(inode.base, index) == owner { return true }
        }
        return false
    }

    private func removeLocked(_ oid: UInt64) {
        if let obj = objects.removeValue(forKey: oid) { obj.unlinkFile() }
    }

    /// CREATE_AND_WRITE_OBJ step 1: readonly check, copy-on-write source read, then the temp file opened
    /// with O_EXCL. A create finding another create of the same object in flight answers SUCCESS without
    /// writing anything (plain_store.c: "EEXIST … simply return success").
    private func beginCreate(_ h: SheepRequestHeader, _ payload: UnsafeRawBufferPointer, out: OutputBuffer) -> StepResult {
        stateLock.lock()
        if isReadonlyLocked(h.oid) {
            stateLock.unlock()
            reply(out, h, .readonly)
            return .finished
        }
        let size = objectSizeLocked(h.oid)
        let cow = h.flags.contains(.cow)
        var source: StoredObject?
        if cow {
            source = objects[h.cowOid]
            if source == nil && Int(h.dataLength) != size {
                stateLock.unlock()
                reply(out, h, .noObj)
                return .finished
            }
        }
        guard Self.fits(h.objOffset, h.dataLength, size), payload.count == Int(h.dataLength) else {
            stateLock.unlock()
            reply(out, h, .invalidParms)
            return .finished
        }
        if creating.contains(h.oid) {
            stateLock.unlock()
            reply(out, h, .success)
            return .finished
        }
        creating.insert(h.oid)
        stateLock.unlock()

        let object: StoredObject
        do {
            object = try makeObject(h.oid, size: size)
        } catch {
            log("create \(hex(h.oid)) failed: \(error)")
            stateLock.withLock { _ = creating.remove(h.oid) }
            reply(out, h, .noSpace)
            return .finished
        }
        if let source, Int(h.dataLength) != size {
            // gateway_handle_cow: a partial write reads the whole source object first.
            object.copySparse(from: source)
        }
        if let src = payload.baseAddress, payload.count > 0 {
            (object.base + Int(h.objOffset)).copyMemory(from: src, byteCount: payload.count)
        }
        return .pending(.commitCreate(oid: h.oid, object: object))
    }

    /// Step 2: the rename that makes the object visible, replacing any older object of that oid.
    private func commitCreate(_ h: SheepRequestHeader, oid: UInt64, object: StoredObject, out: OutputBuffer) {
        var failed = false
        stateLock.withLock {
            if let files {
                do { try object.rename(to: files.path(for: oid)) } catch {
                    log("commit \(hex(oid)) failed: \(error)")
                    object.unlinkFile()
                    failed = true
                }
            }
            if !failed { objects[oid] = object }
            creating.remove(oid)
        }
        reply(out, h, failed ? .eio : .success)
    }

    private func makeObject(_ oid: UInt64, size: Int) throws -> StoredObject {
        if let files { return try StoredObject.createFile(path: files.tempPath(for: oid), size: size) }
        return try StoredObject.anonymous(size: size)
    }

    /// Installs a complete object immediately (inodes written by VDI ops). Caller holds stateLock.
    private func installLocked(_ oid: UInt64, _ object: StoredObject) throws {
        if let files { try object.rename(to: files.path(for: oid)) }
        objects[oid] = object
    }

    private func removeObject(_ h: SheepRequestHeader, out: OutputBuffer) {
        let existed: Bool = stateLock.withLock {
            let e = objects[h.oid] != nil
            removeLocked(h.oid)
            return e
        }
        reply(out, h, existed ? .success : .noObj)
    }

    /// `local_discard_obj`: zero the slot in the inode of the VID named by the oid, then remove the object.
    /// It edits that inode even when it is a snapshot and whoever owns the slot (SHEEPDOG-PROTOCOL.md §7.8).
    private func discardObject(_ h: SheepRequestHeader, out: OutputBuffer) {
        let vid = SheepOID.vid(of: h.oid), idx = SheepOID.dataIndex(of: h.oid)
        let result: SheepResult = stateLock.withLock {
            guard let inode = objects[SheepOID.inode(vid: vid)] else { return .noObj }
            guard idx < UInt32(SheepInodeLayout.dataIndexSlots) else { return .invalidParms }
            if SheepInodeLayout.loadSlot(inode.base, idx) != 0 {
                var zero: UInt32 = 0
                withUnsafeBytes(of: &zero) { z in
                    writeInodeLocked(inode, vid: vid, offset: Int(SheepInodeLayout.slotOffset(idx)), z)
                }
                removeLocked(h.oid)
            }
            return .success
        }
        reply(out, h, result)
    }

    // MARK: - Local ops

    private func readVDIs(_ h: SheepRequestHeader, out: OutputBuffer) {
        guard Int(h.dataLength) == SheepWire.vdiBitmapBytes else { return reply(out, h, .invalidParms) }
        var r = SheepResponseHeader(replyingTo: h, result: .success, dataLength: h.dataLength, epoch: config.epoch)
        r.dataLength = UInt32(SheepWire.vdiBitmapBytes)
        stateLock.withLock {
            out.appendReply(r) { dst in
                inUse.withBytes { dst.copyMemory(from: $0.baseAddress!, byteCount: SheepWire.vdiBitmapBytes) }
            }
        }
    }

    private func clusterDefault(_ h: SheepRequestHeader, out: OutputBuffer) {
        reply(out, h, .success) {
            $0.defaultCopies = config.copies
            $0.defaultCopyPolicy = config.copyPolicy
            $0.defaultBlockSizeShift = config.blockSizeShift
        }
    }

    // MARK: - Cluster ops (VDI table); caller holds clusterOpLock

    private func clusterOp(_ h: SheepRequestHeader, _ payload: UnsafeRawBufferPointer, out: OutputBuffer,
                           node: Int) -> StepResult {
        switch h.opcode {
        case .newVDI: return newVDI(h, payload, out: out)
        case .getVDIInfo: getVDIInfo(h, payload, out: out, lock: false, node: node)
        case .lockVDI: getVDIInfo(h, payload, out: out, lock: true, node: node)
        case .releaseVDI: releaseVDI(h, out: out, node: node)
        case .delVDI: delVDI(h, payload, out: out)
        case .getVDIAttr: getVDIAttr(h, payload, out: out)
        default: reply(out, h, .invalidParms)
        }
        return .finished
    }

    /// `cluster_get_vdi_attr` + `get_vdi_attr`: look the VDI up by the attribute's name and tag (and the
    /// header's snapid), then probe attribute slots of `sd_hash_vdi(name)` from `hash_vdi_attr`. Reading
    /// (no CREAT, or EXCL) stops at the first missing object with NO_OBJ, or creates the attribute there with
    /// CREAT; a slot with the same name, tag, snap_id and key answers VDI_EXIST with EXCL, is deleted (name
    /// cleared) with DEL, rewritten whole with CREAT, found otherwise. CREAT without EXCL writes the first
    /// slot without looking at it (sheep never reads it), so it also replaces an attribute that collided there.
    /// Deviation: a payload shorter than the header is INVALID_PARMS (sheep reads past its buffer).
    private func getVDIAttr(_ h: SheepRequestHeader, _ payload: UnsafeRawBufferPointer, out: OutputBuffer) {
        let size = SheepVDIAttrLayout.objectSizeBytes
        guard let src = payload.baseAddress, payload.count >= SheepVDIAttrLayout.valueOffset, payload.count <= size
        else { return reply(out, h, .invalidParms) }
        var attr = [UInt8](repeating: 0, count: size)
        attr.withUnsafeMutableBytes { $0.baseAddress!.copyMemory(from: src, byteCount: payload.count) }
        let name = attr.withUnsafeBytes { SheepVDIName.rawBytes($0.baseAddress!, capacity: SheepWire.vdiNameBufferBytes) }
        let tag = attr.withUnsafeBytes {
            SheepVDIName.rawBytes($0.baseAddress! + SheepVDIAttrLayout.tagOffset, capacity: SheepWire.vdiTagBufferBytes)
        }
        let create = h.flags.contains(.attrCreate), excl = h.flags.contains(.attrExclusive)
        let delete = h.flags.contains(.attrDelete)
        stateLock.lock()
        defer { stateLock.unlock() }
        var info = LookupInfo()
        let found = lookupLocked(name: name, tag: tag, snapID: h.snapID, info: &info)
        guard found == .success else { return reply(out, h, found) }
        // "the current VDI id can change if we take a snapshot, so we use the hash value of the VDI name".
        let vid = SheepVDIName.hash(name)
        attr.withUnsafeMutableBytes {
            $0.storeBytes(of: info.createTime.littleEndian, toByteOffset: SheepVDIAttrLayout.ctimeOffset, as: UInt64.self)
        }
        var attrID = attr.withUnsafeBytes { SheepVDIAttr.hash($0.baseAddress!) }
        let end = attrID &- 1
        var result: SheepResult = .fullVDI
        probe: while attrID != end {
            let oid = SheepOID.attr(vid: vid, attrID: attrID)
            let existing = (excl || !create) ? objects[oid] : nil
            guard let existing else {
                if create {
                    result = installAttrLocked(oid, attr, count: payload.count)
                } else {
                    result = .noObj
                }
                break probe
            }
            if Self.sameAttr(existing.base, attr) {
                if excl {
                    result = .vdiExist
                } else if delete {
                    existing.base.storeBytes(of: UInt8(0), toByteOffset: SheepVDIAttrLayout.nameOffset, as: UInt8.self)
                    result = .success
                } else if create {
                    attr.withUnsafeBytes { existing.base.copyMemory(from: $0.baseAddress!, byteCount: size) }
                    result = .success
                } else {
                    result = .success
                }
                break probe
            }
            attrID &+= 1
        }
        let copies = vdis[vid]?.copies ?? 0
        reply(out, h, result) {
            $0.vdiID = vid
            $0.attrID = attrID
            $0.vdiCopies = copies
        }
    }

    /// `sd_write_object(…, create)`: a new object of the attribute size holding the first `count` bytes.
    private func installAttrLocked(_ oid: UInt64, _ attr: [UInt8], count: Int) -> SheepResult {
        do {
            let obj = try makeObject(oid, size: SheepVDIAttrLayout.objectSizeBytes)
            attr.withUnsafeBytes { obj.base.copyMemory(from: $0.baseAddress!, byteCount: count) }
            try installLocked(oid, obj)
            return .success
        } catch {
            log("attribute \(hex(oid)) failed: \(error)")
            return .eio
        }
    }

    /// The header compare of `get_vdi_attr`: strcmp of name, tag and key, and snap_id.
    private static func sameAttr(_ stored: UnsafeMutableRawPointer, _ attr: [UInt8]) -> Bool {
        attr.withUnsafeBytes { a in
            let b = a.baseAddress!
            func str(_ p: UnsafeRawPointer, _ off: Int, _ cap: Int) -> [UInt8] { SheepVDIName.rawBytes(p + off, capacity: cap) }
            return str(stored, SheepVDIAttrLayout.nameOffset, SheepWire.vdiNameBufferBytes) == str(b, SheepVDIAttrLayout.nameOffset, SheepWire.vdiNameBufferBytes)
                && str(stored, SheepVDIAttrLayout.tagOffset, SheepWire.vdiTagBufferBytes) == str(b, SheepVDIAttrLayout.tagOffset, SheepWire.vdiTagBufferBytes)
                && str(stored, SheepVDIAttrLayout.keyOffset, SheepVDIAttrLayout.keyBufferBytes) == str(b, SheepVDIAttrLayout.keyOffset, SheepVDIAttrLayout.keyBufferBytes)
                && stored.loadUnaligned(fromByteOffset: SheepVDIAttrLayout.snapIDOffset, as: UInt32.self)
                    == b.loadUnaligned(fromByteOffset: SheepVDIAttrLayout.snapIDOffset, as: UInt32.self)
        }
    }

    /// `vdi_init_tag`: the payload is name[256] or name[256] + tag[256].
    private static func nameAndTag(_ h: SheepRequestHeader, _ payload: UnsafeRawBufferPointer) -> (name: [UInt8], tag: [UInt8])? {
        let n = SheepWire.vdiNameBufferBytes
        guard let base = payload.baseAddress else { return nil }
        if payload.count == n {
            return (SheepVDIName.rawBytes(base, capacity: n), [])
        }
        if payload.count == n + SheepWire.vdiTagBufferBytes {
            return (SheepVDIName.rawBytes(base, capacity: n),
                    SheepVDIName.rawBytes(base + n, capacity: SheepWire.vdiTagBufferBytes))
        }
        return nil
    }

    struct LookupInfo {
        var vid: UInt32 = 0
        /// Snapshot id the next snapshot/create of this name gets.
        var snapID: UInt32 = 0
        var createTime: UInt64 = 0
        var freeBit: Int = 0
    }

    /// `vdi_lookup` without --recyclevid: probe the bitmap from sd_hash_vdi(name), newest (highest VID in the
    /// run) first.
    private func lookupLocked(name: [UInt8], tag: [UInt8], snapID: UInt32, info: inout LookupInfo) -> SheepResult {
        var left = Int(SheepVDIName.hash(name))
        if left == 0 { left = 1 }
        var right = inUse.nextZero(from: left)
        info.freeBit = right
        if left == right { return .noVDI }
        if right == SheepWire.vidCount {
            right = inUse.nextZero(from: 1)
            info.freeBit = right
            if right == SheepWire.vidCount { return .fullVDI }
        }
        if left < right {
            return fillRangeLocked(left, right, name: name, tag: tag, snapID: snapID, info: &info)
        }
        var r: SheepResult = .noVDI
        if 1 < right { r = fillRangeLocked(1, right, name: name, tag: tag, snapID: snapID, info: &info) }
        if r == .noVDI || r == .noTag {
            r = fillRangeLocked(left, SheepWire.vidCount, name: name, tag: tag, snapID: snapID, info: &info)
        }
        return r
    }

    /// `fill_vdi_info_range`.
    private func fillRangeLocked(_ left: Int, _ right: Int, name: [UInt8], tag: [UInt8], snapID: UInt32,
                                 info: inout LookupInfo) -> SheepResult {
        let hasTag = !tag.isEmpty || snapID != 0
        var found = false
        var i = right - 1
        while i >= left && i > 0 {
            defer { i -= 1 }
            let vid = UInt32(i)
            guard inUse.test(vid) || deleted.test(vid) else { continue }
            guard let inode = objects[SheepOID.inode(vid: vid)] else { return .noObj }
            let inodeName = SheepVDIName.rawBytes(inode.base, capacity: SheepWire.vdiNameBufferBytes)
            guard inodeName == name else { continue }
            let h = SheepInodeHeader(from: inode.base)
            if hasTag {
                // Read, delete, clone on snapshots: the working VDI never matches a tag lookup.
                if !h.isSnapshot {
                    found = true
                    info.vid = h.vdiID
                    continue
                }
                let inodeTag = SheepVDIName.rawBytes(inode.base + SheepInodeLayout.tagOffset,
                                                     capacity: SheepWire.vdiTagBufferBytes)
                let tagMatch = !inodeTag.isEmpty && inodeTag == tag
                if !tagMatch && snapID != h.snapID { continue }
            } else {
                info.snapID = h.snapID &+ 1
                if h.isSnapshot {
                    // The newest entry is a snapshot: the working VDI was deleted.
                    info.vid = h.vdiID
                    break
                }
            }
            info.createTime = h.createTime
            info.vid = h.vdiID
            return .success
        }
        return found ? .noTag : .noVDI
    }

    private func getVDIInfo(_ h: SheepRequestHeader, _ payload: UnsafeRawBufferPointer, out: OutputBuffer, lock: Bool,
                            node: Int) {
        guard let (name, tag) = Self.nameAndTag(h, payload) else { return reply(out, h, .invalidParms) }
        stateLock.lock()
        var info = LookupInfo()
        var result = lookupLocked(name: name, tag: tag, snapID: h.snapID, info: &info)
        let state = vdis[info.vid]
        if result == .success, lock, config.useLock, var s = state {
            // vdi_lock(): the owner is the sheep node the request came through, not the client.
            switch (h.lockType, s.lock) {
            case (.normal, .unlocked):
                s.lock = .locked(owner: node)
            case (.shared, .unlocked):
                // add_new_participant: the first participant owns the inode.
                s.lock = .shared([.init(node: node, state: .modified)])
            case (.shared, .shared(var ps)) where ps.count < SheepWire.maxCopies && !ps.contains(where: { $0.node == node }):
                let anyModified = ps.contains { $0.state == .modified }
                ps.append(.init(node: node, state: anyModified ? .invalidated : .shared))
                s.lock = .shared(ps)
            default:
                // Normal on anything held, shared on normal, shared by the same node again, SD_MAX_COPIES
                // participants already, unknown type.
                result = .vdiLocked
            }
            if result == .success { vdis[info.vid] = s }
        }
        stateLock.unlock()
        reply(out, h, result) {
            if result == .success || result == .vdiLocked {
                $0.vdiID = info.vid
                $0.vdiCopies = state?.copies ?? 0
                $0.vdiBlockSizeShift = state?.blockSizeShift ?? 0
            }
        }
    }

    private func releaseVDI(_ h: SheepRequestHeader, out: OutputBuffer, node: Int) {
        stateLock.withLock {
            guard config.useLock, var s = vdis[h.baseVDIID] else { return }
            switch (h.lockType, s.lock) {
            // vdi_unlock: a normal lock is released whoever asks; a shared one drops the asking node.
            case (.normal, .locked): s.lock = .unlocked
            case (.shared, .shared(var ps)):
                ps.removeAll { $0.node == node }
                s.lock = ps.isEmpty ? .unlocked : .shared(ps)
            default: log("release of VDI \(hex(h.baseVDIID)) in state \(s.lock) as \(h.lockType.rawValue): ignored")
            }
            vdis[h.baseVDIID] = s
        }
        // HEAD always answers SUCCESS.
        reply(out, h, .success)
    }

    /// `cluster_new_vdi`: create, clone (base != 0) or snapshot (snapid != 0).
    private func newVDI(_ h: SheepRequestHeader, _ payload: UnsafeRawBufferPointer, out: OutputBuffer) -> StepResult {
        var copies = h.vdiCopies, copyPolicy = h.vdiCopyPolicy, shift = h.vdiBlockSizeShift
        if copies == 0 { copies = config.copies; copyPolicy = config.copyPolicy }
        if copyPolicy != 0 {
            let parity = copyPolicy & 0x0F, dataStrips = (copyPolicy >> 4) &* 2
            guard parity != 0 else { reply(out, h, .invalidParms); return .finished }
            copies = dataStrips &+ parity
        }
        if shift == 0 { shift = config.blockSizeShift }
        let fillReply: (UInt32) -> (inout SheepResponseHeader) -> Void = { vid in
            { $0.vdiID = vid; $0.vdiCopies = copies; $0.vdiBlockSizeShift = shift }
        }
        guard Int(h.dataLength) == SheepWire.vdiNameBufferBytes, let base = payload.baseAddress else {
            reply(out, h, .invalidParms, fillReply(0))
            return .finished
        }
        let name = SheepVDIName.rawBytes(base, capacity: SheepWire.vdiNameBufferBytes)
        guard !name.isEmpty else { reply(out, h, .invalidParms, fillReply(0)); return .finished }
        guard shift >= SheepWire.minBlockSizeShift && shift <= Self.maxBlockSizeShift else {
            reply(out, h, .invalidParms, fillReply(0))
            return .finished
        }
        let time = sheepTimestamp()

        stateLock.lock()
        var info = LookupInfo()
        let found = lookupLocked(name: name, tag: [], snapID: 0, info: &info)

        if h.snapID != 0 {
            // vdi_snapshot: the working VDI must exist.
            guard found == .success else {
                stateLock.unlock()
                reply(out, h, found, fillReply(0))
                return .finished
            }
            let newVID = UInt32(info.freeBit)
            // notify_vdi_add: the old VID is a snapshot from now on; its inode still says otherwise and the
            // new inode does not exist until the next step.
            vdis[info.vid]?.snapshot = true
            vdis[newVID] = VDIState(copies: copies, copyPolicy: copyPolicy, blockSizeShift: shift, snapshot: false)
            stateLock.unlock()
            let plan = SnapshotPlan(name: name, newVID: newVID, baseVID: h.baseVDIID, currentVID: info.vid,
                                    newSnapID: info.snapID, time: time, size: h.vdiSize, copies: copies,
                                    copyPolicy: copyPolicy, storePolicy: h.vdiStorePolicy, blockSizeShift: shift)
            return .pending(.commitSnapshot(plan))
        }

        // vdi_create: fresh (base 0) or clone.
        switch found {
        case .success:
            stateLock.unlock()
            reply(out, h, .vdiExist, fillReply(0))
            return .finished
        case .noVDI:
            break
        default:
            stateLock.unlock()
            reply(out, h, found, fillReply(0))
            return .finished
        }
        let snapID = info.snapID == 0 ? 1 : info.snapID
        let newVID = UInt32(info.freeBit)
        var baseInode: StoredObject?
        if h.baseVDIID != 0 {
            baseInode = objects[SheepOID.inode(vid: h.baseVDIID)]
            if baseInode == nil {
                stateLock.unlock()
                reply(out, h, .baseVDIRead, fillReply(newVID))
                return .finished
            }
        }
        let oldVID = h.baseVDIID == 0 ? info.vid : h.baseVDIID
        if oldVID != 0, vdis[oldVID] != nil { vdis[oldVID]?.snapshot = true }
        vdis[newVID] = VDIState(copies: copies, copyPolicy: copyPolicy, blockSizeShift: shift, snapshot: false)
        let header = SheepInodeHeader(name: "", createTime: time, vdiSize: h.vdiSize, copyPolicy: copyPolicy,
                                      storePolicy: h.vdiStorePolicy, nrCopies: copies, blockSizeShift: shift,
                                      snapID: snapID, vdiID: newVID, parentVDIID: h.baseVDIID)
        let result = writeNewInodeLocked(vid: newVID, header: header, name: name, indexFrom: baseInode)
        if result == .success { inUse.set(newVID) }
        stateLock.unlock()
        persistTable()
        reply(out, h, result, fillReply(newVID))
        return .finished
    }

    /// Snapshot step 2: mark the base inode a snapshot and write the new working inode with a copy of the
    /// index (`snapshot_vdi`, or `rebase_vdi` when the base is not the current working VDI).
    private func commitSnapshot(_ h: SheepRequestHeader, _ plan: SnapshotPlan, out: OutputBuffer) {
        stateLock.lock()
        var result: SheepResult = .success
        if let base = objects[SheepOID.inode(vid: plan.baseVID)] {
            let ctimeTarget = plan.baseVID == plan.currentVID ? base : objects[SheepOID.inode(vid: plan.currentVID)]
            if let ctimeTarget {
                ctimeTarget.base.storeBytes(of: plan.time.littleEndian, toByteOffset: SheepInodeLayout.snapCTimeOffset,
                                            as: UInt64.self)
            } else {
                result = .vdiWrite
            }
            if result == .success {
                let header = SheepInodeHeader(createTime: plan.time, vdiSize: plan.size, copyPolicy: plan.copyPolicy,
                                              storePolicy: plan.storePolicy, nrCopies: plan.copies,
                                              blockSizeShift: plan.blockSizeShift, snapID: plan.newSnapID,
                                              vdiID: plan.newVID, parentVDIID: plan.baseVID)
                result = writeNewInodeLocked(vid: plan.newVID, header: header, name: plan.name, indexFrom: base)
            }
        } else {
            result = .baseVDIRead
        }
        if result == .success { inUse.set(plan.newVID) }
        stateLock.unlock()
        persistTable()
        reply(out, h, result) {
            $0.vdiID = plan.newVID
            $0.vdiCopies = plan.copies
            $0.vdiBlockSizeShift = plan.blockSizeShift
        }
    }

    /// `alloc_inode` + write: a full-size inode object, index copied from `indexFrom` or, for a new hyper
    /// volume, an empty B-tree root (`sd_inode_init`).
    private func writeNewInodeLocked(vid: UInt32, header: SheepInodeHeader, name: [UInt8],
                                     indexFrom: StoredObject?) -> SheepResult {
        let oid = SheepOID.inode(vid: vid)
        let inode: StoredObject
        do { inode = try makeObject(oid, size: SheepInodeLayout.fullInodeSizeBytes) } catch {
            log("inode \(hex(oid)) failed: \(error)")
            return .vdiWrite
        }
        header.encode(to: inode.base)
        // The name goes in as raw bytes (a String round trip could change invalid UTF-8).
        inode.base.initializeMemory(as: UInt8.self, repeating: 0, count: SheepWire.vdiNameBufferBytes)
        name.withUnsafeBytes { inode.base.copyMemory(from: $0.baseAddress!, byteCount: min(name.count, 255)) }
        if let indexFrom {
            inode.copySparse(from: indexFrom, range: SheepInodeLayout.headerSizeBytes..<SheepInodeLayout.clientInodeSizeBytes)
        } else if header.storePolicy != 0 {
            let root = inode.base + SheepInodeLayout.headerSizeBytes
            root.storeBytes(of: UInt16(0x6274).littleEndian, toByteOffset: 0, as: UInt16.self)
            root.storeBytes(of: UInt16(1).littleEndian, toByteOffset: 2, as: UInt16.self)
        }
        do { try installLocked(oid, inode) } catch {
            log("install \(hex(oid)) failed: \(error)")
            inode.unlinkFile()
            return .vdiWrite
        }
        return .success
    }

    /// `cluster_del_vdi` + `delete_vdi_work` (v1.0/HEAD): a VDI whose index still names objects is left as is
    /// (the deletion "fails" in the sheep log but the reply is SUCCESS); otherwise its inode is emptied. The
    /// VID stays in use and is marked deleted either way.
    private func delVDI(_ h: SheepRequestHeader, _ payload: UnsafeRawBufferPointer, out: OutputBuffer) {
        guard let (name, tag) = Self.nameAndTag(h, payload) else { return reply(out, h, .invalidParms) }
        stateLock.lock()
        var info = LookupInfo()
        let result = lookupLocked(name: name, tag: tag, snapID: h.snapID, info: &info)
        if result == .success, let inode = objects[SheepOID.inode(vid: info.vid)] {
            let hdr = SheepInodeHeader(from: inode.base)
            var busy = false
            if hdr.storePolicy == 0, let objSize = hdr.objectSizeBytes {
                let count = min(UInt64(SheepInodeLayout.dataIndexSlots), dataObjectCount(hdr.vdiSize, objSize))
                var i: UInt32 = 0
                while UInt64(i) < count {
                    if SheepInodeLayout.loadSlot(inode.base, i) != 0 { busy = true; break }
                    i += 1
                }
            }
            if busy {
                log("delete VDI \(hex(info.vid)): vid still has objects, inode left as is")
            } else if !hdr.isDeleted {
                inode.base.initializeMemory(as: UInt8.self, repeating: 0, count: SheepWire.vdiNameBufferBytes)
                inode.base.storeBytes(of: UInt64(0), toByteOffset: SheepInodeLayout.vdiSizeOffset, as: UInt64.self)
                let idx = SheepInodeLayout.headerSizeBytes
                let zeroFrom = idx, zeroCount = inode.size - idx
                // Zero only pages that hold data, so an untouched index stays unallocated.
                var off = 0
                while off < zeroCount {
                    let len = min(4096, zeroCount - off)
                    if !isAllZero(inode.base + zeroFrom + off, len) {
                        (inode.base + zeroFrom + off).initializeMemory(as: UInt8.self, repeating: 0, count: len)
                    }
                    off += len
                }
            }
            deleted.set(info.vid)
            vdis[info.vid]?.deleted = true
        }
        stateLock.unlock()
        if result == .success { persistTable() }
        reply(out, h, result) { if result == .success { $0.vdiID = info.vid } }
    }

    private func persistTable() {
        guard let files else { return }
        let table = stateLock.withLock { VDITableFile(config: config, inUse: inUse.allSet(), deleted: deleted.allSet()) }
        do { try files.saveTable(table) } catch { log("saving the VDI table failed: \(error)") }
    }
}

func hex<T: BinaryInteger>(_ v: T) -> String { String(v, radix: 16) }

/// `count_data_objs`: objects covering `size` bytes, without overflowing for any size.
func dataObjectCount(_ size: UInt64, _ objectSize: UInt64) -> UInt64 {
    size / objectSize + (size % objectSize == 0 ? 0 : 1)
}
