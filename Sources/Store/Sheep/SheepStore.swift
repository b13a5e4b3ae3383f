import Floor
import URing
import CURing
import Glibc
import Logging
import SheepProtocol

/// All-zero memory for zeroing writes (UNMAP of partial objects): anonymous pages, never written.
public enum ZeroPages {
    static let bytes = 1 << 31
    static let base: UnsafeRawPointer = {
        let p = mmap(nil, bytes, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        precondition(p != MAP_FAILED && p != nil, "mmap of the zero region failed")
        return UnsafeRawPointer(p!)
    }()
}

/// What the sheep store needs from the loop that runs it. The reactor is the one implementation; the store is
/// generic over it, so these are direct calls, not calls through an existential.
public protocol SheepStoreHost: AnyObject {
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
    /// A shared SCSI state change the connection waits for is in sheep (or failed to get there).
    func sharedChangeAnswered(connection: Int, generation: UInt32)
}

/// The sheepdog store of one core: a channel per sheep endpoint, and the home-core state of the VDIs homed
/// here. Requests are (operation, buffer, progress record, tag); completions go back by tag.
public final class SheepStore<Host: SheepStoreHost> {
    /// The reactor that owns this store (`Reactor.sheep`) and outlives it; no admin command ends either.
    unowned(unsafe) let host: Host
    let core: Int
    var channels: [SheepChannel<Host>?] = []
    var dirty: [SheepChannel<Host>] = []
    /// Allocation, copy-on-write and reloads of the VDIs homed on this core; this store carries out its actions.
    var home = SheepHomeMachine()
    private var runningHome = false

    /// `host` owns this store and outlives it.
    public init(host: Host, core: Int) {
        self.host = host
        self.core = core
    }

    var logger: Logger { host.logger }
    var coreCount: Int { host.coreCount }

    /// Whether the VDI's home is this core (or a core that does not exist: then this one does the work).
    @inline(__always)
    func isHome(_ vol: SheepVolume) -> Bool { isThisCore(vol.homeCore) }

    /// Work for a core that is this one, or that does not exist (fewer cores than when the volume was opened),
    /// is done here.
    @inline(__always)
    private func isThisCore(_ c: Int) -> Bool { c == core || c >= coreCount }

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
    @inline(__always)
    public func flush() {
        if !dirty.isEmpty { flushDirtyChannels() }
    }

    private func flushDirtyChannels() {
        for ch in dirty { ch.flush() }
        dirty.removeAll(keepingCapacity: true)
    }

    public func onTick(_ tick: UInt64) {
        for ch in channels { ch?.onTick(tick) }
        if !home.homes.isEmpty {
            home.nowNanos = monotonicNanos()
            home.refreshDueRecords(tick: tick)
            home.beatDue()
            home.expireCompareSections()
            runHome()
        }
    }

    /// When the loop must next wake for the home core's timers (a COMPARE AND WRITE waiting to ask sheep
    /// again), in monotonic nanoseconds; 0 when none is set.
    @inline(__always)
    public var wakeNanos: UInt64 { home.compareWakeNanos }

    /// Runs the home core's timers that fell due.
    public func runTimers() {
        let now = monotonicNanos()
        guard home.compareWakeNanos != 0, now >= home.compareWakeNanos else { return }
        home.nowNanos = now
        home.stopping = !host.isRunning
        home.compareTimers()
        runHome()
    }

    /// Task management aborted the task of store request `tag`: what has not been sent to sheep is dropped
    /// and counts as failed (the task is released when its last piece is answered, without a response).
    public func cancel(tag: UInt64) {
        for ch in channels {
            guard let ch else { continue }
            for _ in 0..<ch.cancel(tag: tag) { pieceDone(tag, failure: .unavailable, result: .success) }
        }
    }

    /// Stopping: fails every request still waiting for sheep.
    public func abandon() {
        for ch in channels { ch?.abandon() }
    }

    public func completion(_ op: ChannelOp, res: Int32) {
        guard op.endpoint < channels.count, let ch = channels[op.endpoint] else { return }
        switch op.op {
        case .connect: if op.generation == ch.generation { ch.onConnect(res) }
        case .send: ch.onSend(res)
        case .recv: ch.onRecv(res)
        }
    }

    // MARK: - Store operations on a sheep LUN

    /// Starts `op` on `vol` for the request `buffer.tag`, whose progress record is `r` (the caller keeps it until the
    /// request finishes). Returns the result when it is known at once (unallocated reads, mapping queries,
    /// refusals), nil when requests are in flight; then `host.storeFinished(tag, result)` follows.
    public func start(_ op: StoreOp, on vol: SheepVolume, _ r: UnsafeMutablePointer<StoreRequest>,
               _ buffer: StoreBuffer) -> StoreResult? {
        let base = buffer.data, tag = buffer.tag
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
                if vol.coherent && owner != vol.vid {
                    // Another gateway may have allocated it, or copied it from the snapshot that owns it, and our
                    // index can be stale even when sheep counts this node valid: a refresh read that ran between
                    // another gateway's invalidation and its index write revalidated us with the old index. So
                    // the owner comes from sheep: a read of the piece's slot of our inode, with SD_FLAG_CMD_TGT
                    // (sheep checks staleness only against the oid's own VDI, not a snapshot's we may read).
                    let h = SheepRequestHeader.readIndexSlot(id: 0, vid: vol.vid, index: UInt32(idx), flags: .tgt)
                    addPiece(r, tag, ch, h, payload: nil, payloadLength: 0, dest: dest, destCapacity: len,
                             probe: (idx, objOff))
                    return
                }
                if owner == 0 {
                    // Unallocated: zeros, no request (SHEEPDOG-PROTOCOL.md §7.4).
                    memset(dest, 0, len)
                    return
                }
                let h = SheepRequestHeader.readObject(id: 0, oid: SheepOID.data(vid: owner, index: UInt32(idx)),
                                                      offset: UInt32(objOff), length: UInt32(len), flags: vol.objectFlags)
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
        case .shareState(_, let publish):
            guard vol.coherent else { return .ok(0) }   // one gateway: the LU's state is the whole state
            begin(r, length: 0)
            r.pointee.pending += 1
            let req = SheepHomeRequest(volume: vol, kind: .record(publish: publish), originCore: core,
                                       waiter: .request(tag: tag))
            if isHome(vol) { homeHandle(req) } else { host.postHome(core: vol.homeCore, req) }
            return finishSubmit(r)
        case .compareSection(_, let step):
            guard vol.coherent else { return .ok(0) }   // one gateway: the LU's own gate is the whole section
            begin(r, length: 0)
            r.pointee.pending += 1
            let req = SheepHomeRequest(volume: vol, kind: .compareSection(step), originCore: core,
                                       waiter: .request(tag: tag))
            if isHome(vol) { homeHandle(req) } else { host.postHome(core: vol.homeCore, req) }
            return finishSubmit(r)
        case .sharePortGroupState(_, let group, let stateCode):
            guard vol.coherent else { return .ok(0) }   // one gateway: the daemon's groups are the whole table
            guard let state = ALUAState(rawValue: stateCode) else { preconditionFailure("STPG posts only ALUAState codes") }
            begin(r, length: 0)
            r.pointee.pending += 1
            vol.lunState?.portGroupStatePosted(group)
            let req = SheepHomeRequest(volume: vol, kind: .change(.portGroups(.state(group: group, state))),
                                       originCore: core, waiter: .request(tag: tag))
            if isHome(vol) { homeHandle(req) } else { host.postHome(core: vol.homeCore, req) }
            // The group's state is one for every LU it is a group of: the other multipath sheep LUs' records
            // get it too (nobody waits for those), or loading one of their versions would set it back.
            for other in vol.lunState?.coherentVolumes(inGroup: group, except: vol) ?? [] {
                shareChange(other, .portGroups(.state(group: group, state)), waiter: .none)
            }
            return finishSubmit(r)
        }
    }

    /// Multipath: a change to the LU's shared SCSI state made outside a command (a session's end released
    /// its SPC-2 reservation, a reset); the volume's home core appends it to the record (docs/CLUSTER-STATE.md).
    /// `waiter` (a connection, or none) is answered once the change is in sheep.
    public func shareChange(_ vol: SheepVolume, _ change: SharedStateChange, waiter: SheepWaiter) {
        guard vol.coherent else { return }
        if case .portGroups(.state(let id, _)) = change { vol.lunState?.portGroupStatePosted(id) }
        let req = SheepHomeRequest(volume: vol, kind: .change(change), originCore: core, waiter: waiter)
        if isHome(vol) { homeHandle(req) } else { host.postHome(core: vol.homeCore, req) }
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
                          dest: UnsafeMutableRawPointer?, destCapacity: Int, probe: (index: Int, objectOffset: Int)? = nil) {
        if ch.submit(h, payload: payload, payloadLength: payloadLength, dest: dest, destCapacity: destCapacity,
                     waiter: .request(tag: tag), probe: probe) {
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
                                                       offset: UInt32(objOff), length: UInt32(len), copies: vol.copies,
                                                       extraFlags: vol.objectFlags)
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
                // A hyper volume keeps its objects: nothing in sheep drops an object whose B-tree entry is cleared.
                if objOff == 0 && len == objBytes && owner == cur && !vol.isHyper {
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

    /// The run of objects from `offset` that share one allocation depth (so one mapped state too): an object
    /// no VDI in the chain owns is a hole; one a snapshot owns reads as data but lies a layer down.
    func mapStatus(_ vol: SheepVolume, offset: UInt64, maxLength: UInt64) -> StoreResult {
        guard offset < vol.byteCount else { return .extent(mapped: false, length: 0, depth: 0) }
        let objBytes = UInt64(vol.objectBytes)
        let end = min(vol.byteCount, offset &+ maxLength)
        var at = offset
        let depth = vol.allocationDepth(ofOwner: vol.owner(Int(offset / objBytes)))
        while at < end {
            let idx = Int(at / objBytes)
            if vol.allocationDepth(ofOwner: vol.owner(idx)) != depth { break }
            at = UInt64(idx + 1) * objBytes
        }
        return .extent(mapped: depth != 0, length: min(at, end) - offset, depth: depth)
    }

    // MARK: - Replies

    /// A sheep reply (or a failure) for whoever waits on it.
    func reply(_ waiter: SheepWaiter, result: SheepResult, bytes: Int, failure: StoreError?, vdiID: UInt32 = 0,
               attrID: UInt32 = 0) {
        switch waiter {
        case .none, .rejoin, .connection: break
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
            homeReply(op, result: result, failure: failure, vdiID: vdiID, attrID: attrID)
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

    /// Sheep answered the probe with the piece's index slot (`owner`, nil when the reply was short): the piece
    /// is read from that owner (zeros for a hole), as the same piece of the same request.
    func probeAnswered(_ waiter: SheepWaiter, _ piece: (index: Int, objectOffset: Int), owner: UInt32?, length: Int,
                       dest: UnsafeMutableRawPointer, channel ch: SheepChannel<Host>) {
        guard case .request(let tag) = waiter, let vol = host.storeVolume(tag), let owner else {
            return reply(waiter, result: .eio, bytes: 0, failure: .unavailable)
        }
        if owner == 0 {
            memset(dest, 0, length)
            return reply(waiter, result: .success, bytes: 0, failure: nil)
        }
        let h = SheepRequestHeader.readObject(id: 0, oid: SheepOID.data(vid: owner, index: UInt32(piece.index)),
                                              offset: UInt32(piece.objectOffset), length: UInt32(length), flags: vol.objectFlags)
        if !ch.submit(h, payload: nil, payloadLength: 0, dest: dest, destCapacity: length, waiter: waiter) {
            reply(waiter, result: .eio, bytes: 0, failure: .unavailable)
        }
    }

    /// A piece sheep answered INODE_INVALIDATED: the home core reloads the inode, then redoes the piece against
    /// the fresh index. The piece stays pending until the home core answers.
    func invalidatedPiece(_ waiter: SheepWaiter, _ kind: SheepHomeRequest.Kind) -> Bool {
        guard case .request(let tag) = waiter, let vol = host.storeVolume(tag), vol.coherent else { return false }
        let req = SheepHomeRequest(volume: vol, kind: kind, originCore: core, waiter: waiter)
        req.invalidated = true
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
    public func homeAnswered(_ waiter: SheepWaiter, failure: StoreError?) {
        switch waiter {
        case .request(let tag): pieceDone(tag, failure: failure, result: .success)
        case .connection(let index, let generation): host.sharedChangeAnswered(connection: Int(index), generation: generation)
        case .none, .home, .rejoin: break
        }
    }

    /// A home-core answer for a piece that another core (or this one) waits for.
    public func homeDone(_ req: SheepHomeRequest, failure: StoreError?) {
        if req.waiter == .none { return }   // a shared state change nobody waits for
        if isThisCore(req.originCore) {
            homeAnswered(req.waiter, failure: failure)
        } else {
            host.postHomeDone(core: req.originCore, req.waiter, failure)
        }
    }

    // MARK: - Home core (the decisions are SheepHomeMachine's)

    public func homeHandle(_ req: SheepHomeRequest) {
        if case .change(.portGroups(.state(let id, _))) = req.kind {
            // Queued below: from here the home core's queue keeps it from being undone (pendingPortGroupStates).
            req.volume.lunState?.portGroupStateArrived(id)
        }
        home.stopping = !host.isRunning
        home.nowNanos = monotonicNanos()
        home.request(req)
        runHome()
    }

    func homeReply(_ id: Int32, result: SheepResult, failure: StoreError?, vdiID: UInt32, attrID: UInt32 = 0) {
        home.nowNanos = monotonicNanos()
        home.reply(id, result: result, failure: failure, vdiID: vdiID, attrID: attrID)
        runHome()
    }

    /// Carries out the machine's actions in order. An answer can lead back here (a finished request starts the
    /// next one on this core): then the loop already running picks the new actions up, so no call nests.
    private func runHome() {
        if runningHome { return }
        runningHome = true
        defer { runningHome = false }
        while let action = home.nextAction() {
            switch action {
            case .send(let op, let vol, let header, let payload, let payloadLength, let dest, let destCapacity):
                if !channel(vol).submit(header, payload: payload, payloadLength: payloadLength, dest: dest,
                                        destCapacity: destCapacity, waiter: .home(op: op)) {
                    home.reply(op, result: .eio, failure: .unavailable, vdiID: 0)
                }
            case .answer(let req, let failure):
                homeDone(req, failure: failure)
            case .log(let level, let message):
                logger.log(level: level, "\(message)")
            case .record(let vol, let record, let outcome):
                logger.debug("sheep VDI '\(vol.name)': shared SCSI record version \(record.version) (\(outcome))")
                if record.version > vol.adoptedVersion {
                    // Our own versions are in the LU already: applying the command there queued their unit attentions.
                    if record.writer != vol.gatewayID {
                        vol.lunState?.adoptShared(record)
                    } else {
                        vol.lunState?.adoptOwn(record)
                    }
                    // Either writer: the ALUA section is compared with what the LU knows, so our own versions
                    // (already applied here) raise nothing.
                    vol.lunState?.adoptPortGroups(record.portGroups, pending: home.pendingPortGroupStates(vol))
                    vol.adoptedVersion = record.version
                }
            case .liveness(let vol, let dead):
                vol.lunState?.setDeadPorts(dead)
            }
        }
    }
}
