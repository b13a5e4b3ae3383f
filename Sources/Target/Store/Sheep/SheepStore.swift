import CURing
import Glibc
import Logging
import SheepProtocol

/// A write that needs the home core: the object is unallocated, owned by a parent snapshot (copy-on-write),
/// or sheep answered READONLY because a snapshot was taken under us. It carries a pointer into the
/// requester's buffer slot, which stays untouched until the reply. (Allocation path only: steady-state I/O to
/// allocated objects never builds one.)
final class SheepHomeRequest: @unchecked Sendable {
    enum Kind {
        case write(index: Int, objectOffset: Int, length: Int, data: UnsafeRawPointer)
        /// Deallocate a whole object this VDI owns (UNMAP): its index slot becomes 0.
        case deallocate(index: Int)
    }
    let volume: SheepVolume
    let kind: Kind
    let originCore: Int
    let waiter: SheepWaiter
    /// The VID a data write went to when sheep answered READONLY (0 otherwise).
    var readonlyVID: UInt32

    init(volume: SheepVolume, kind: Kind, originCore: Int, waiter: SheepWaiter, readonlyVID: UInt32 = 0) {
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
        }
    }
}

/// The home core's bookkeeping for one VDI: objects being created (later requests for them wait), and the
/// reload after a snapshot.
final class SheepHome {
    var creating: [Int: [SheepHomeRequest]] = [:]
    var reloading = false
    var waitingReload: [SheepHomeRequest] = []
    var reconcileLeft = 0
}

/// One step of home-core work waiting for a sheep reply.
final class SheepHomeOp {
    enum Stage {
        case create(vid: UInt32)
        case slotWrite(vid: UInt32, value: UInt32)
        case plainWrite(vid: UInt32)
        case reloadLookup
        /// Reading the new working VDI's index, to add slots a snapshot copied before our write reached it.
        case reloadIndex(newVID: UInt32)
        /// Writing one such slot; the last one ends the reload.
        case reconcileSlot
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

/// All-zero memory for zeroing writes (UNMAP of partial objects): anonymous pages, never written.
enum ZeroPages {
    static let bytes = 1 << 31
    static let base: UnsafeRawPointer = {
        let p = mmap(nil, bytes, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        precondition(p != MAP_FAILED && p != nil, "mmap of the zero region failed")
        return UnsafeRawPointer(p!)
    }()
}

/// What the sheep store needs from the loop that runs it. The reactor is the one implementation; the store is
/// generic over it, so these are direct calls, not calls through an existential.
protocol SheepStoreHost: AnyObject {
    /// Seconds-resolution clock of the loop (reply timeouts, reconnect backoff).
    var tick: UInt64 { get }
    var logger: Logger { get }
    /// Cores of the daemon (a VDI's home core is one of them).
    var coreCount: Int { get }
    /// False once the loop is stopping: nothing new goes to sheep.
    var isRunning: Bool { get }
    /// A free submission queue entry of the loop's ring.
    func sqe() -> UnsafeMutablePointer<io_uring_sqe>
    /// The progress record of the request `tag` names, nil when its requester has gone (connection closed).
    func storeRequest(_ tag: UInt64) -> UnsafeMutablePointer<StoreRequest>?
    /// The VDI the request `tag` addresses (the command's own LUN, or another LUN for EXTENDED COPY).
    func storeVolume(_ tag: UInt64) -> SheepVolume?
    /// The request `tag` finished with `result` (after `start` returned nil).
    func storeFinished(_ tag: UInt64, _ result: StoreResult)
    /// Hands allocation work to the VDI's home core.
    func postHome(core: Int, _ request: SheepHomeRequest)
    /// Hands the home core's answer back to the core the request came from.
    func postHomeDone(core: Int, _ waiter: SheepWaiter, _ failure: StoreError?)
}

/// The sheepdog store of one core: a channel per sheep endpoint, and the home-core state of the VDIs homed
/// here. Requests are (operation, buffer, progress record, tag); completions go back by tag.
final class SheepStore<Host: SheepStoreHost> {
    unowned(unsafe) let host: Host
    let core: Int
    var channels: [SheepChannel<Host>?] = []
    var dirty: [SheepChannel<Host>] = []
    var homes: [ObjectIdentifier: SheepHome] = [:]
    var homeOps: [Int32: SheepHomeOp] = [:]
    var homeOpCounter: Int32 = 0

    /// `host` owns this store and outlives it.
    init(host: Host, core: Int) {
        self.host = host
        self.core = core
    }

    var logger: Logger { host.logger }
    var coreCount: Int { host.coreCount }

    /// Whether the VDI's home is this core (or a core that does not exist: then this one does the work).
    @inline(__always)
    func isHome(_ vol: SheepVolume) -> Bool { vol.homeCore == core || vol.homeCore >= coreCount }

    // MARK: - Channels

    func channel(_ volume: SheepVolume) -> SheepChannel<Host> {
        let i = volume.endpointIndex
        if i < channels.count, let ch = channels[i] { return ch }
        // Endpoints are numbered per daemon and few; the bound only guards the user_data layout.
        precondition(i < ChannelOp.endpointLimit, "sheep endpoint \(i) beyond user_data's \(ChannelOp.endpointBits) bits")
        if i >= channels.count { channels += Array(repeating: nil, count: i + 1 - channels.count) }
        let ch = SheepChannel(store: self, endpointIndex: i, endpoint: volume.spec.endpoint)
        channels[i] = ch
        return ch
    }

    func markDirty(_ ch: SheepChannel<Host>) {
        if !dirty.contains(where: { $0 === ch }) { dirty.append(ch) }
    }

    /// Sends what the channels queued since the last flush (once per loop pass, so requests go out in batches).
    func flush() {
        if dirty.isEmpty { return }
        for ch in dirty { ch.flush() }
        dirty.removeAll(keepingCapacity: true)
    }

    func onTick(_ tick: UInt64) {
        for ch in channels { ch?.onTick(tick) }
    }

    /// Stopping: fails every request still waiting for sheep.
    func abandon() {
        for ch in channels { ch?.abandon() }
    }

    func completion(_ op: ChannelOp, res: Int32) {
        guard op.endpoint < channels.count, let ch = channels[op.endpoint] else { return }
        switch op.op {
        case .connect: if op.generation == ch.generation { ch.onConnect(res) }
        case .send: ch.onSend(res)
        case .recv: ch.onRecv(res)
        }
    }

    // MARK: - Store operations on a sheep LUN

    /// Starts `op` on `vol` for the request `tag`, whose progress record is `r` (the caller keeps it until the
    /// request finishes). Returns the result when it is known at once (unallocated reads, mapping queries,
    /// refusals), nil when requests are in flight; then `host.storeFinished(tag, result)` follows.
    func start(_ op: StoreOp, on vol: SheepVolume, _ r: UnsafeMutablePointer<StoreRequest>,
               data base: UnsafeMutableRawPointer, tag: UInt64) -> StoreResult? {
        switch op {
        case .read(_, let offset, let length, let bo):
            guard offset &+ UInt64(length) <= vol.byteCount else {
                return .failed(.outOfRange)
            }
            begin(r, length: length)
            let ch = channel(vol)
            forEachPiece(vol, offset, length) { idx, objOff, len, done in
                let owner = vol.owner(idx)
                let dest = base + bo + done
                if owner == 0 {
                    // Unallocated: zeros, no request (SHEEPDOG-PROTOCOL.md §7.4).
                    memset(dest, 0, len)
                    return
                }
                let h = SheepRequestHeader.readObject(id: 0, oid: SheepOID.data(vid: owner, index: UInt32(idx)),
                                                      offset: UInt32(objOff), length: UInt32(len))
                addPiece(r, tag, ch, h, payload: nil, payloadLength: 0, dest: dest, destCapacity: len)
            }
            return finishSubmit(r)
        case .write(_, let offset, let length, let bo, _):
            if vol.readOnly { return .failed(.writeProtected) }
            guard offset &+ UInt64(length) <= vol.byteCount else {
                return .failed(.outOfRange)
            }
            begin(r, length: length)
            writePieces(r, tag, vol, offset: offset, length: length, data: UnsafeRawPointer(base + bo))
            return finishSubmit(r)
        case .discard(_, let offset, let length):
            if vol.readOnly { return .failed(.writeProtected) }
            guard offset &+ length <= vol.byteCount else {
                return .failed(.outOfRange)
            }
            begin(r, length: 0)
            discardPieces(r, tag, vol, offset: offset, length: length)
            return finishSubmit(r)
        case .flush:
            // v1.0+ sheep writes replicas with O_DSYNC before answering and answers FLUSH_VDI with
            // INVALID_PARMS; older sheep with an object cache flushes it. Either answer is success.
            begin(r, length: 0)
            addPiece(r, tag, channel(vol), .flushVDI(id: 0, vid: vol.vid), payload: nil, payloadLength: 0,
                     dest: nil, destCapacity: 0)
            return finishSubmit(r)
        case .mapStatus(_, let offset, let maxLength):
            return mapStatus(vol, offset: offset, maxLength: maxLength)
        case .prefetch:
            return .ok(0)
        }
    }

    /// Splits [offset, offset+length) at object boundaries: body(index, offsetInObject, length, doneSoFar).
    @inline(__always)
    func forEachPiece(_ vol: SheepVolume, _ offset: UInt64, _ length: Int, _ body: (Int, Int, Int, Int) -> Void) {
        let shift = vol.objectShift
        let mask = UInt64(vol.objectBytes - 1)
        var done = 0
        while done < length {
            let at = offset + UInt64(done)
            let idx = Int(at >> UInt64(shift))
            let objOff = Int(at & mask)
            let len = min(length - done, vol.objectBytes - objOff)
            body(idx, objOff, len, done)
            done += len
        }
    }

    private func begin(_ r: UnsafeMutablePointer<StoreRequest>, length: Int) {
        // A guard piece, dropped by finishSubmit, so that no piece completes the request while it is being split.
        r.pointee = StoreRequest(kind: .sheep, length: length, pending: 1)
    }

    private func finishSubmit(_ r: UnsafeMutablePointer<StoreRequest>) -> StoreResult? {
        r.pointee.pending -= 1
        if r.pointee.pending > 0 { return nil }
        return r.pointee.failure.map { .failed($0) } ?? .ok(r.pointee.length)
    }

    private func addPiece(_ r: UnsafeMutablePointer<StoreRequest>, _ tag: UInt64, _ ch: SheepChannel<Host>,
                          _ h: SheepRequestHeader, payload: UnsafeRawPointer?, payloadLength: Int,
                          dest: UnsafeMutableRawPointer?, destCapacity: Int) {
        if ch.submit(h, payload: payload, payloadLength: payloadLength, dest: dest, destCapacity: destCapacity,
                     waiter: .request(tag: tag)) {
            r.pointee.pending += 1
        } else {
            // The channel's request table is full: fail this piece (the initiator retries on BUSY-like sense).
            r.pointee.failure = .unavailable
        }
    }

    private func writePieces(_ r: UnsafeMutablePointer<StoreRequest>, _ tag: UInt64, _ vol: SheepVolume,
                             offset: UInt64, length: Int, data: UnsafeRawPointer) {
        let ch = channel(vol)
        let cur = vol.vid
        forEachPiece(vol, offset, length) { idx, objOff, len, done in
            let owner = vol.owner(idx)
            if owner == cur && owner != 0 {
                // Allocated and ours: straight to sheep from this core.
                let h = SheepRequestHeader.writeObject(id: 0, oid: SheepOID.data(vid: cur, index: UInt32(idx)),
                                                       offset: UInt32(objOff), length: UInt32(len), copies: vol.copies)
                addPiece(r, tag, ch, h, payload: data + done, payloadLength: len, dest: nil, destCapacity: 0)
            } else {
                sendHome(r, SheepHomeRequest(volume: vol, kind: .write(index: idx, objectOffset: objOff,
                                                                       length: len, data: data + done),
                                             originCore: core, waiter: .request(tag: tag)))
            }
        }
    }

    private func discardPieces(_ r: UnsafeMutablePointer<StoreRequest>, _ tag: UInt64, _ vol: SheepVolume,
                               offset: UInt64, length: UInt64) {
        var at = offset
        let end = offset + length
        let objBytes = UInt64(vol.objectBytes)
        let cur = vol.vid
        while at < end {
            let idx = Int(at / objBytes)
            let objOff = at % objBytes
            let len = min(end - at, objBytes - objOff)
            let owner = vol.owner(idx)
            if owner != 0 {
                if objOff == 0 && len == objBytes && owner == cur {
                    sendHome(r, SheepHomeRequest(volume: vol, kind: .deallocate(index: idx), originCore: core,
                                                 waiter: .request(tag: tag)))
                } else {
                    // Part of an object, or one a snapshot shares with us: write zeros (copy-on-write when the
                    // snapshot owns it), so reads return zeros and the snapshot keeps its data.
                    writePieces(r, tag, vol, offset: at, length: Int(len), data: ZeroPages.base)
                }
            }
            at += len
        }
    }

    private func sendHome(_ r: UnsafeMutablePointer<StoreRequest>, _ req: SheepHomeRequest) {
        r.pointee.pending += 1
        if isHome(req.volume) {
            homeHandle(req)
        } else {
            host.postHome(core: req.volume.homeCore, req)
        }
    }

    func mapStatus(_ vol: SheepVolume, offset: UInt64, maxLength: UInt64) -> StoreResult {
        guard offset < vol.byteCount else { return .extent(mapped: false, length: 0) }
        let objBytes = UInt64(vol.objectBytes)
        let end = min(vol.byteCount, offset &+ maxLength)
        var at = offset
        let mapped = vol.owner(Int(offset / objBytes)) != 0
        while at < end {
            let idx = Int(at / objBytes)
            if (vol.owner(idx) != 0) != mapped { break }
            at = UInt64(idx + 1) * objBytes
        }
        return .extent(mapped: mapped, length: min(at, end) - offset)
    }

    // MARK: - Replies

    /// A sheep reply (or a failure) for whoever waits on it.
    func reply(_ waiter: SheepWaiter, result: SheepResult, bytes: Int, failure: StoreError?, vdiID: UInt32 = 0) {
        switch waiter {
        case .none: break
        case .request(let tag):
            var outcome: StoreError? = failure
            if outcome == nil {
                switch result {
                case .success: break
                case .readonly: outcome = .writeProtected
                case .noSpace: outcome = .noSpace
                default: outcome = .mediumError
                }
            }
            pieceDone(tag, failure: outcome, result: result)
        case .home(let op):
            homeReply(op, result: result, failure: failure, vdiID: vdiID)
        }
    }

    /// A data write went to a VDI that has become a snapshot: the home core reloads and redoes it as
    /// copy-on-write into the new working VDI. The piece stays pending until the home core answers.
    func readonlyWrite(_ waiter: SheepWaiter, oid: UInt64, objectOffset: Int, length: Int,
                       data: UnsafeRawPointer?) -> Bool {
        // The volume the piece was written to: for EXTENDED COPY that is not the command's own LUN.
        guard case .request(let tag) = waiter, let data, let vol = host.storeVolume(tag) else { return false }
        let req = SheepHomeRequest(volume: vol, kind: .write(index: Int(SheepOID.dataIndex(of: oid)),
                                                             objectOffset: objectOffset, length: length, data: data),
                                   originCore: core, waiter: waiter, readonlyVID: SheepOID.vid(of: oid))
        if isHome(vol) { homeHandle(req) } else { host.postHome(core: vol.homeCore, req) }
        return true
    }

    /// One piece of a request finished; the last one finishes the request.
    func pieceDone(_ tag: UInt64, failure: StoreError?, result: SheepResult) {
        guard let r = host.storeRequest(tag), r.pointee.kind == .sheep, r.pointee.pending > 0 else { return }
        if let failure, r.pointee.failure == nil {
            // A FLUSH_VDI answered INVALID_PARMS means there is nothing to flush (no object cache).
            if !(result == .invalidParms && r.pointee.length == 0 && failure == .mediumError) {
                r.pointee.failure = failure
            }
        }
        r.pointee.pending -= 1
        if r.pointee.pending > 0 { return }
        host.storeFinished(tag, r.pointee.failure.map { .failed($0) } ?? .ok(r.pointee.length))
    }

    /// The home core's answer for a piece that this core waits for (from the mailbox).
    func homeAnswered(_ waiter: SheepWaiter, failure: StoreError?) {
        if case .request(let tag) = waiter { pieceDone(tag, failure: failure, result: .success) }
    }

    /// A home-core answer for a piece that another core (or this one) waits for.
    func homeDone(_ req: SheepHomeRequest, failure: StoreError?) {
        if req.originCore == core || req.originCore >= coreCount {
            homeAnswered(req.waiter, failure: failure)
        } else {
            host.postHomeDone(core: req.originCore, req.waiter, failure)
        }
    }

    // MARK: - Home core: allocation, copy-on-write, index updates, reload after a snapshot

    func home(_ vol: SheepVolume) -> SheepHome {
        let key = ObjectIdentifier(vol)
        if let h = homes[key] { return h }
        let h = SheepHome()
        homes[key] = h
        return h
    }

    func homeHandle(_ req: SheepHomeRequest) {
        if !host.isRunning {
            // Stopping: nothing new goes to sheep.
            homeDone(req, failure: .unavailable)
            return
        }
        let vol = req.volume
        let h = home(vol)
        if h.reloading { h.waitingReload.append(req); return }
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
        let ch = channel(vol)
        switch req.kind {
        case .write(_, let objOff, let len, let data):
            if owner == cur {
                let op = newHomeOp(SheepHomeOp(request: req, volume: vol, stage: .plainWrite(vid: cur)))
                let hdr = SheepRequestHeader.writeObject(id: 0, oid: SheepOID.data(vid: cur, index: UInt32(idx)),
                                                         offset: UInt32(objOff), length: UInt32(len), copies: vol.copies)
                submitHome(ch, hdr, payload: data, length: len, op: op, req: req)
                return
            }
            h.creating[idx] = []
            let cow: UInt64 = owner == 0 ? 0 : SheepOID.data(vid: owner, index: UInt32(idx))
            let op = newHomeOp(SheepHomeOp(request: req, volume: vol, stage: .create(vid: cur)))
            let hdr = SheepRequestHeader.createAndWrite(id: 0, oid: SheepOID.data(vid: cur, index: UInt32(idx)),
                                                        cowOid: cow, offset: UInt32(objOff), length: UInt32(len),
                                                        copies: vol.copies)
            submitHome(ch, hdr, payload: data, length: len, op: op, req: req)
        case .deallocate:
            if owner != cur {
                homeDone(req, failure: nil)   // nothing of ours to deallocate any more
                return
            }
            h.creating[idx] = []
            writeSlot(vol, idx: idx, value: 0, vid: cur, req: req)
        }
    }

    private func submitHome(_ ch: SheepChannel<Host>, _ hdr: SheepRequestHeader, payload: UnsafeRawPointer?, length: Int,
                            op: Int32, req: SheepHomeRequest?) {
        if !ch.submit(hdr, payload: payload, payloadLength: length, dest: nil, destCapacity: 0, waiter: .home(op: op)) {
            homeOps[op] = nil
            if let req { finishHome(req, failure: .unavailable) }
        }
    }

    /// Persists one index slot: WRITE_OBJ of 4 bytes at 4664 + 4*idx of the working inode (only the slot that
    /// changed, so sheep resets no other slot's refcount, §7.5).
    private func writeSlot(_ vol: SheepVolume, idx: Int, value: UInt32, vid: UInt32, req: SheepHomeRequest) {
        let op = SheepHomeOp(request: req, volume: vol, stage: .slotWrite(vid: vid, value: value))
        op.payload = withUnsafeBytes(of: value.littleEndian) { Array($0) }
        let id = newHomeOp(op)
        let hdr = SheepRequestHeader.writeObject(id: 0, oid: SheepOID.inode(vid: vid),
                                                 offset: SheepInodeLayout.slotOffset(UInt32(idx)), length: 4,
                                                 copies: vol.copies)
        let p = op.payload.withUnsafeBytes { $0.baseAddress! }   // the array lives in the op until the reply
        submitHome(channel(vol), hdr, payload: p, length: 4, op: id, req: req)
    }

    private func newHomeOp(_ op: SheepHomeOp) -> Int32 {
        homeOpCounter &+= 1
        if homeOpCounter < 0 { homeOpCounter = 1 }
        homeOps[homeOpCounter] = op
        return homeOpCounter
    }

    func homeReply(_ id: Int32, result: SheepResult, failure: StoreError?, vdiID: UInt32) {
        guard let op = homeOps.removeValue(forKey: id) else { return }
        let vol = op.volume
        if let failure {
            if let req = op.request { finishHome(req, failure: failure) }
            switch op.stage {
            case .reloadLookup: reloadFinished(vol, newVID: nil)
            case .reloadIndex(let v): reloadFinished(vol, newVID: v)   // no reconcile possible; carry on
            case .reconcileSlot: reconcileStep(vol)
            default: break
            }
            return
        }
        switch op.stage {
        case .plainWrite(let vid):
            guard let req = op.request else { return }
            if result == .readonly { req.readonlyVID = vid; homeHandle(req); return }
            finishHome(req, failure: result == .success ? nil : mapResult(result))
        case .create(let vid):
            guard let req = op.request else { return }
            if result == .readonly {
                // A snapshot was taken: the create went to what is now a snapshot. Reload, then redo.
                releaseCreating(vol, req.index, requeueTo: true)
                req.readonlyVID = vid
                homeHandle(req)
                return
            }
            guard result == .success else {
                finishHome(req, failure: mapResult(result))
                return
            }
            // The data is in place: now, and only now, record it in the index (tgt d4622d1).
            writeSlot(vol, idx: req.index, value: vid, vid: vid, req: req)
        case .slotWrite(_, let value):
            guard let req = op.request else { return }
            if result == .success { vol.setOwner(req.index, value) }
            finishHome(req, failure: result == .success ? nil : mapResult(result))
        case .reloadLookup:
            guard result == .success, vdiID != 0, vdiID != vol.vid else {
                if result == .vdiLocked {
                    logger.error("sheep VDI '\(vol.name)': the new working VDI is locked by another client")
                }
                reloadFinished(vol, newVID: nil)
                return
            }
            if vol.lockedVID != 0 { vol.addLock(vdiID) }
            readNewIndex(vol, newVID: vdiID)
        case .reloadIndex(let newVID):
            if result == .success, let buf = op.buffer {
                reconcile(vol, newVID: newVID, newIndex: buf)
            } else {
                reloadFinished(vol, newVID: newVID)
            }
        case .reconcileSlot:
            if result != .success {
                logger.error("sheep VDI '\(vol.name)': writing an index slot to the new working VDI failed: \(result.name)")
            }
            reconcileStep(vol)
        }
    }

    private func mapResult(_ r: SheepResult) -> StoreError {
        switch r {
        case .noSpace: return .noSpace
        case .readonly: return .writeProtected
        default: return .mediumError
        }
    }

    /// Answers the request and lets waiters for the same object proceed.
    private func finishHome(_ req: SheepHomeRequest, failure: StoreError?) {
        homeDone(req, failure: failure)
        releaseCreating(req.volume, req.index, requeueTo: false)
    }

    private func releaseCreating(_ vol: SheepVolume, _ idx: Int, requeueTo: Bool) {
        let h = home(vol)
        guard let waiting = h.creating.removeValue(forKey: idx) else { return }
        for w in waiting { homeHandle(w) }
    }

    /// READONLY: a snapshot turned our working VDI into a snapshot. Find the new working VDI (same name,
    /// snapid 0) and carry on writing copy-on-write to it; our index stays valid because the new working VDI
    /// starts with a copy of it (§7.9).
    private func startReload(_ vol: SheepVolume) {
        let h = home(vol)
        guard !h.reloading else { return }
        h.reloading = true
        let op = SheepHomeOp(request: nil, volume: vol, stage: .reloadLookup)
        op.payload = (try? SheepVDIName.payload(name: vol.name, tag: "")) ?? []
        let id = newHomeOp(op)
        logger.info("sheep VDI '\(vol.name)': a snapshot was taken (READONLY); reloading the working VDI")
        // The new working VDI is locked as the old one was (tgt does the same); a cluster without locking
        // answers LOCK_VDI like GET_VDI_INFO.
        let hdr = SheepRequestHeader.vdiLookup(vol.lockedVID != 0 ? .lockVDI : .getVDIInfo, id: 0, snapID: 0)
        let p = op.payload.withUnsafeBytes { $0.baseAddress! }
        if !channel(vol).submit(hdr, payload: p, payloadLength: op.payload.count, dest: nil, destCapacity: 0,
                                     waiter: .home(op: id)) {
            homeOps[id] = nil
            reloadFinished(vol, newVID: nil)
        }
    }

    /// Reads the new working VDI's index (4 MiB; snapshots are rare).
    private func readNewIndex(_ vol: SheepVolume, newVID: UInt32) {
        let op = SheepHomeOp(request: nil, volume: vol, stage: .reloadIndex(newVID: newVID))
        let bytes = SheepInodeLayout.dataIndexSizeBytes
        op.buffer = .allocate(byteCount: bytes, alignment: 64)
        let id = newHomeOp(op)
        let hdr = SheepRequestHeader.readObject(id: 0, oid: SheepOID.inode(vid: newVID),
                                                offset: UInt32(SheepInodeLayout.headerSizeBytes), length: UInt32(bytes))
        if !channel(vol).submit(hdr, payload: nil, payloadLength: 0, dest: op.buffer, destCapacity: bytes,
                                     waiter: .home(op: id)) {
            homeOps[id] = nil
            reloadFinished(vol, newVID: newVID)
        }
    }

    /// A data object created just before the snapshot can have its index slot written to the old inode after
    /// sheep copied that index into the new working VDI (§7.9, sheepdog#331). Every slot we know of that the new
    /// index lacks is written to it before any write continues, so nothing acknowledged is lost.
    private func reconcile(_ vol: SheepVolume, newVID: UInt32, newIndex: UnsafeMutableRawPointer) {
        vol.setVID(newVID)
        let h = home(vol)
        var missing: [(Int, UInt32)] = []
        for idx in 0..<vol.indexSlots {
            let mine = vol.owner(idx)
            if mine == 0 { continue }
            let theirs = UInt32(littleEndian: newIndex.load(fromByteOffset: idx * 4, as: UInt32.self))
            if theirs != mine { missing.append((idx, mine)) }
        }
        h.reconcileLeft = missing.count
        if missing.isEmpty { reloadFinished(vol, newVID: newVID); return }
        logger.warning("sheep VDI '\(vol.name)': \(missing.count) index slot(s) missing from the new working VDI; writing them")
        for (idx, value) in missing {
            let op = SheepHomeOp(request: nil, volume: vol, stage: .reconcileSlot)
            op.payload = withUnsafeBytes(of: value.littleEndian) { Array($0) }
            let id = newHomeOp(op)
            let hdr = SheepRequestHeader.writeObject(id: 0, oid: SheepOID.inode(vid: newVID),
                                                     offset: SheepInodeLayout.slotOffset(UInt32(idx)), length: 4,
                                                     copies: vol.copies)
            let p = op.payload.withUnsafeBytes { $0.baseAddress! }
            if !channel(vol).submit(hdr, payload: p, payloadLength: 4, dest: nil, destCapacity: 0,
                                         waiter: .home(op: id)) {
                homeOps[id] = nil
                reconcileStep(vol)
            }
        }
    }

    private func reconcileStep(_ vol: SheepVolume) {
        let h = home(vol)
        h.reconcileLeft -= 1
        if h.reconcileLeft <= 0 { reloadFinished(vol, newVID: vol.vid) }
    }

    private func reloadFinished(_ vol: SheepVolume, newVID: UInt32?) {
        let h = home(vol)
        h.reloading = false
        let waiting = h.waitingReload
        h.waitingReload = []
        guard let newVID, newVID != 0 else {
            // No new working VDI (deleted, or the lookup failed): the writes cannot go anywhere safe.
            logger.error("sheep VDI '\(vol.name)': no working VDI after READONLY; failing writes")
            for r in waiting { homeDone(r, failure: .writeProtected) }
            return
        }
        logger.info("sheep VDI '\(vol.name)': working VDI is now \(String(newVID, radix: 16))")
        vol.setVID(newVID)
        for r in waiting { r.readonlyVID = 0; homeHandle(r) }
    }
}
