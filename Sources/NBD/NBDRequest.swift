/// One NBD transmission request, from admission to its reply (proto.md, "Transmission phase"): which store
/// operations carry it out and in what order, and the error its reply carries. Pure: the connection keeps one
/// per task entry, carries out each action and feeds back the store's results. Admission itself (flags, range,
/// payload size, read-only) is `NBDExportLimits.check`.
import Floor
import ISCSIWire
import SCSI
public struct NBDRequest {
    /// What the connection does next for this request.
    public enum Action: Equatable {
        /// Submit the operation to the store; its result comes back through `storeDone`.
        case submit(StoreOp)
        /// Zero the first `bytes` of the request's buffer slot, then submit the operation. WRITE_ZEROES written
        /// as data writes the same zeroed slot once per piece, so the slot is zeroed only before the first.
        case zeroSlotAndSubmit(bytes: Int, StoreOp)
        /// Queue the reply with this NBD error (0 for success; a successful READ carries the slot).
        case reply(error: UInt32)
        /// BLOCK_STATUS: write the extent descriptors into the slot (one per selected context, in its region),
        /// then submit the operation. A descriptor written again at the same index replaces it (a run continues).
        case describeAndSubmit(NBDBlockDescriptors, StoreOp)
        /// BLOCK_STATUS: write the descriptors, then queue the reply; each context's chunk carries its
        /// descriptors up to and including the one just written.
        case describeAndReply(NBDBlockDescriptors)
    }

    /// One context's run of descriptors while BLOCK_STATUS maps: how many are written, and the last one.
    public struct Lane: Equatable {
        var count = 0
        var lastLength: UInt32 = 0
        var lastStatus: UInt32 = 0

        /// Takes a run of `length` bytes with `status`: it extends the last descriptor if the status is the same
        /// (runs of one status are merged; a store reports at most one object or file extent per answer).
        mutating func take(_ length: UInt32, _ status: UInt32) -> NBDBlockDescriptor {
            if count > 0 && status == lastStatus {
                lastLength += length
            } else {
                count += 1
                lastLength = length
                lastStatus = status
            }
            return NBDBlockDescriptor(index: count - 1, length: lastLength, status: status)
        }
    }

    private enum State: Equatable {
        /// Admitted; `start` has not run.
        case admitted
        /// One read, write or flush in flight; its result is the answer.
        case single
        /// A TRIM, or a WRITE_ZEROES the store deallocates, in flight. `flushAfter`: it carried FUA, and a
        /// discard has no FUA of its own, so a flush follows before the answer.
        case discarding(flushAfter: Bool)
        /// WRITE_ZEROES as data: the piece ending at `end` (bytes into the request) is in flight.
        case zeroing(end: UInt32)
        /// The flush after a FUA discard is in flight.
        case flushing
        /// CACHE's read-ahead is in flight.
        case caching
        /// BLOCK_STATUS: the map of the bytes from `done` is in flight; each selected context's descriptors so
        /// far are in its lane (at most two contexts are served).
        case mapping(done: UInt32, first: Lane, second: Lane)
        /// The reply is decided; the request has no more events.
        case answered
    }

    public let cookie: UInt64
    public let command: UInt16
    let flags: UInt16
    public let offset: UInt64
    public let length: UInt32
    /// The metadata contexts a BLOCK_STATUS answers.
    public let contexts: NBDMetaContexts
    private var state = State.admitted

    public init(_ r: NBDRequestHeader, contexts: NBDMetaContexts = []) {
        cookie = r.cookie
        command = r.type
        flags = r.flags
        offset = r.offset
        length = r.length
        self.contexts = contexts
    }

    /// An empty entry, for task entries that never carried a request.
    public init() {
        self.init(NBDRequestHeader(flags: 0, type: NBDWire.cmdFlush, cookie: 0, offset: 0, length: 0))
    }

    private var fua: Bool { flags & NBDWire.cmdFlagFUA != 0 }

    /// The first action of an admitted request. `capabilities` are those of the LUN that serves it now;
    /// `slotBytes` is the size of the request's buffer slot.
    public mutating func start(capabilities: StoreCapabilities, slotBytes: Int) -> Action {
        guard state == .admitted else { preconditionFailure("NBD request started twice") }
        switch command {
        case NBDWire.cmdRead:
            state = .single
            return .submit(.read(target: .own, offset: offset, length: Int(length), bufferOffset: 0))
        case NBDWire.cmdWrite:
            state = .single
            return .submit(.write(target: .own, offset: offset, length: Int(length), bufferOffset: 0, fua: fua))
        case NBDWire.cmdTrim:
            state = .discarding(flushAfter: fua)
            return .submit(.discard(target: .own, offset: offset, length: UInt64(length)))
        case NBDWire.cmdCache:
            // A hint, like PRE-FETCH: the store reads ahead where it can.
            state = .caching
            return .submit(.prefetch(target: .own, offset: offset, length: UInt64(length)))
        case NBDWire.cmdBlockStatus:
            precondition(!contexts.isEmpty, "BLOCK_STATUS admitted without a metadata context")
            state = .mapping(done: 0, first: Lane(), second: Lane())
            return .submit(.mapStatus(target: .own, offset: offset, maxLength: UInt64(length)))
        case NBDWire.cmdWriteZeroes:
            if flags & NBDWire.cmdFlagNoHole == 0 && capabilities.canDiscard && capabilities.discardZeroes {
                // A hole reads back as zeros on this store: deallocating is writing zeros.
                state = .discarding(flushAfter: fua)
                return .submit(.discard(target: .own, offset: offset, length: UInt64(length)))
            }
            if flags & NBDWire.cmdFlagFastZero != 0 {
                // proto.md: FAST_ZERO asks to fail at once rather than zero as slowly as a write would.
                state = .answered
                return .reply(error: NBDWire.errNotSup)
            }
            let piece = min(Int(length), slotBytes)
            state = .zeroing(end: UInt32(piece))
            return .zeroSlotAndSubmit(bytes: piece, .write(target: .own, offset: offset, length: piece,
                                                            bufferOffset: 0, fua: fua))
        default:
            // Admission lets through only the commands above and FLUSH.
            state = .single
            return .submit(.flush(target: .own))
        }
    }

    /// The store finished the operation in flight.
    public mutating func storeDone(_ result: StoreResult, slotBytes: Int) -> Action {
        let current = state
        switch current {
        case .admitted, .answered:
            preconditionFailure("NBD request got a store result with nothing in flight")
        case .single, .flushing:
            return answer(result)
        case .caching:
            // A store that cannot read ahead has still done what a hint asks.
            if case .failed(.notSupported) = result { return answer(.ok(0)) }
            return answer(result)
        case .discarding(let flushAfter):
            // TRIM is a hint: a store that cannot deallocate has done nothing wrong. With FUA the client asked
            // for durability too, which an unsupported discard cannot give.
            if case .failed(.notSupported) = result, command == NBDWire.cmdTrim, !flushAfter {
                return answer(.ok(0))
            }
            if case .failed = result { return answer(result) }
            if flushAfter {
                state = .flushing
                return .submit(.flush(target: .own))
            }
            return answer(result)
        case .mapping(let done, var first, var second):
            let mapped: Bool
            let depth: UInt8
            var run: UInt64
            switch result {
            case .extent(let m, let n, let d):
                mapped = m
                run = n
                depth = d
            case .failed(.notSupported), .ok:
                // A store that cannot tell reports the rest as data of this layer, which is always correct.
                mapped = true
                depth = 1
                run = UInt64(length - done)
            case .failed:
                return answer(result)
            }
            run = min(run, UInt64(length - done))
            // A store that maps no bytes would never end the request.
            if run == 0 { return answer(.failed(.mediumError)) }
            let end = done + UInt32(run)
            // Each selected context, in ID order (base:allocation, then qemu:allocation-depth), gets the run in
            // its own lane.
            let baseStatus = mapped ? 0 : NBDWire.stateHole | NBDWire.stateZero
            let depthStatus = UInt32(depth)
            let described = NBDBlockDescriptors(
                first: first.take(UInt32(run), contexts.contains(.baseAllocation) ? baseStatus : depthStatus),
                second: contexts.count == 2 ? second.take(UInt32(run), depthStatus) : nil)
            let capacity = contexts.laneCapacity(slotBytes: slotBytes)
            if end >= length || flags & NBDWire.cmdFlagReqOne != 0 || max(first.count, second.count) >= capacity {
                state = .answered
                return .describeAndReply(described)
            }
            state = .mapping(done: end, first: first, second: second)
            return .describeAndSubmit(described, .mapStatus(target: .own, offset: offset + UInt64(end),
                                                            maxLength: UInt64(length - end)))
        case .zeroing(let end):
            if case .failed = result { return answer(result) }
            if end >= length { return answer(result) }
            let piece = min(Int(length - end), slotBytes)
            state = .zeroing(end: end + UInt32(piece))
            return .submit(.write(target: .own, offset: offset + UInt64(end), length: piece, bufferOffset: 0,
                                  fua: fua))
        }
    }

    private mutating func answer(_ result: StoreResult) -> Action {
        state = .answered
        if case .failed(let e) = result { return .reply(error: NBDRequest.error(e, command: command)) }
        return .reply(error: 0)
    }

    /// The NBD error a store failure answers with (proto.md, "Error values").
    static func error(_ e: StoreError, command: UInt16) -> UInt32 {
        switch e {
        case .writeProtected: return NBDWire.errPerm
        case .noSpace: return NBDWire.errNoSpace
        case .outOfRange:
            return command == NBDWire.cmdWrite || command == NBDWire.cmdWriteZeroes ? NBDWire.errNoSpace : NBDWire.errInvalid
        case .notSupported: return NBDWire.errInvalid
        // NBD has no reservations to check again: a write that met another gateway's change is failed.
        case .mediumError, .unavailable, .stateChanged: return NBDWire.errIO
        }
    }
}

/// One extent descriptor of a BLOCK_STATUS reply: descriptor `index` of its context's chunk.
public struct NBDBlockDescriptor: Equatable {
    public var index: Int
    public var length: UInt32
    public var status: UInt32
}

/// The descriptors one store answer writes: one per selected context (at most two are served), in ID order.
public struct NBDBlockDescriptors: Equatable {
    public var first: NBDBlockDescriptor
    public var second: NBDBlockDescriptor?
}
