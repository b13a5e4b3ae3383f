// The NBD transmission rules, request by request: the store operations each command becomes, in order, and
// the error each failure answers with. No sockets: the machine's actions are checked as values.

import Testing
@testable import Floor
@testable import URing
@testable import Store
@testable import SCSI
@testable import NBD

@Suite struct NBDRequestTests {
    static let slot = 65_536
    static let discarding = StoreCapabilities(canDiscard: true, discardZeroes: true, readOnly: false)
    static let plain = StoreCapabilities(canDiscard: false, discardZeroes: false, readOnly: false)

    static func request(_ type: UInt16, flags: UInt16 = 0, offset: UInt64 = 8192, length: UInt32 = 4096) -> NBDRequest {
        NBDRequest(NBDRequestHeader(flags: flags, type: type, cookie: 7, offset: offset, length: length))
    }

    /// Runs a request to its reply, answering every store operation with `answer`; returns the operations
    /// submitted and the reply's error.
    static func run(_ r: NBDRequest, caps: StoreCapabilities = plain,
                    answer: (StoreOp) -> StoreResult = { _ in .ok(0) }) -> (ops: [StoreOp], zeroed: [Int], error: UInt32) {
        var r = r
        var ops: [StoreOp] = []
        var zeroed: [Int] = []
        var action = r.start(capabilities: caps, slotBytes: slot)
        while true {
            switch action {
            case .reply(let error):
                return (ops, zeroed, error)
            case .submit(let op):
                ops.append(op)
                action = r.storeDone(answer(op), slotBytes: slot)
            case .zeroSlotAndSubmit(let bytes, let op):
                zeroed.append(bytes)
                ops.append(op)
                action = r.storeDone(answer(op), slotBytes: slot)
            case .describeAndSubmit, .describeAndReply:
                Issue.record("only BLOCK_STATUS describes extents")
                return (ops, zeroed, .max)
            }
            #expect(ops.count < 100, "a request must end")
            if ops.count >= 100 { return (ops, zeroed, .max) }
        }
    }

    @Test func readIsOneReadIntoTheSlot() {
        let (ops, zeroed, error) = Self.run(Self.request(NBDWire.cmdRead))
        #expect(ops == [.read(target: .own, offset: 8192, length: 4096, bufferOffset: 0)])
        #expect(zeroed.isEmpty)
        #expect(error == 0)
    }

    @Test func writeCarriesFUAToTheStore() {
        #expect(Self.run(Self.request(NBDWire.cmdWrite)).ops
                == [.write(target: .own, offset: 8192, length: 4096, bufferOffset: 0, fua: false)])
        #expect(Self.run(Self.request(NBDWire.cmdWrite, flags: NBDWire.cmdFlagFUA)).ops
                == [.write(target: .own, offset: 8192, length: 4096, bufferOffset: 0, fua: true)])
    }

    @Test func flushIsOneFlush() {
        let (ops, _, error) = Self.run(Self.request(NBDWire.cmdFlush, offset: 0, length: 0))
        #expect(ops == [.flush(target: .own)])
        #expect(error == 0)
    }

    @Test func trimDiscardsAndWithFUAFlushesAfter() {
        #expect(Self.run(Self.request(NBDWire.cmdTrim)).ops == [.discard(target: .own, offset: 8192, length: 4096)])
        let (ops, _, error) = Self.run(Self.request(NBDWire.cmdTrim, flags: NBDWire.cmdFlagFUA))
        #expect(ops == [.discard(target: .own, offset: 8192, length: 4096), .flush(target: .own)])
        #expect(error == 0)
    }

    @Test func unsupportedTrimIsAHintButNotWithFUA() {
        let refuse: (StoreOp) -> StoreResult = {
            if case .discard = $0 { return .failed(.notSupported) }
            return .ok(0)
        }
        #expect(Self.run(Self.request(NBDWire.cmdTrim), answer: refuse).error == 0)
        // With FUA the client asked for durability of a deallocation the store did not do.
        let fua = Self.run(Self.request(NBDWire.cmdTrim, flags: NBDWire.cmdFlagFUA), answer: refuse)
        #expect(fua.ops == [.discard(target: .own, offset: 8192, length: 4096)])
        #expect(fua.error == NBDWire.errInvalid)
    }

    @Test func writeZeroesDeallocatesWhereHolesReadAsZeros() {
        let (ops, zeroed, error) = Self.run(Self.request(NBDWire.cmdWriteZeroes, flags: NBDWire.cmdFlagFUA),
                                            caps: Self.discarding)
        #expect(ops == [.discard(target: .own, offset: 8192, length: 4096), .flush(target: .own)])
        #expect(zeroed.isEmpty)
        #expect(error == 0)
    }

    @Test func writeZeroesWithNoHoleWritesZerosInSlotPieces() {
        let length = UInt32(Self.slot * 2 + 512)
        let (ops, zeroed, error) = Self.run(
            Self.request(NBDWire.cmdWriteZeroes, flags: NBDWire.cmdFlagNoHole | NBDWire.cmdFlagFUA, length: length),
            caps: Self.discarding)
        // The slot is zeroed once, for the largest piece, and written three times.
        #expect(zeroed == [Self.slot])
        #expect(ops == [
            .write(target: .own, offset: 8192, length: Self.slot, bufferOffset: 0, fua: true),
            .write(target: .own, offset: 8192 + UInt64(Self.slot), length: Self.slot, bufferOffset: 0, fua: true),
            .write(target: .own, offset: 8192 + 2 * UInt64(Self.slot), length: 512, bufferOffset: 0, fua: true),
        ])
        #expect(error == 0)
    }

    @Test func writeZeroesOnAStoreWithoutDiscardWritesZeros() {
        let (ops, zeroed, _) = Self.run(Self.request(NBDWire.cmdWriteZeroes, length: 1024))
        #expect(zeroed == [1024])
        #expect(ops == [.write(target: .own, offset: 8192, length: 1024, bufferOffset: 0, fua: false)])
    }

    @Test func aFailedPieceEndsWriteZeroesAtOnce() {
        var pieces = 0
        let (ops, _, error) = Self.run(
            Self.request(NBDWire.cmdWriteZeroes, flags: NBDWire.cmdFlagNoHole, length: UInt32(Self.slot * 4))) { _ in
            pieces += 1
            return pieces == 2 ? .failed(.noSpace) : .ok(Self.slot)
        }
        #expect(ops.count == 2)
        #expect(error == NBDWire.errNoSpace)
    }

    @Test func aFailedFlushAfterDiscardIsTheAnswer() {
        let (ops, _, error) = Self.run(Self.request(NBDWire.cmdTrim, flags: NBDWire.cmdFlagFUA)) {
            if case .flush = $0 { return .failed(.mediumError) }
            return .ok(0)
        }
        #expect(ops.count == 2)
        #expect(error == NBDWire.errIO)
    }

    @Test func cacheIsAReadAheadHint() {
        let (ops, _, error) = Self.run(Self.request(NBDWire.cmdCache, length: 1 << 20))
        #expect(ops == [.prefetch(target: .own, offset: 8192, length: 1 << 20)])
        #expect(error == 0)
        #expect(Self.run(Self.request(NBDWire.cmdCache)) { _ in .failed(.notSupported) }.error == 0)
        #expect(Self.run(Self.request(NBDWire.cmdCache)) { _ in .failed(.unavailable) }.error == NBDWire.errIO)
    }

    @Test func fastZeroFailsAtOnceWhereZerosWouldBeWritten() {
        let slow = Self.run(Self.request(NBDWire.cmdWriteZeroes, flags: NBDWire.cmdFlagFastZero))
        #expect(slow.ops.isEmpty && slow.zeroed.isEmpty)
        #expect(slow.error == NBDWire.errNotSup)
        let noHole = Self.run(Self.request(NBDWire.cmdWriteZeroes, flags: NBDWire.cmdFlagFastZero | NBDWire.cmdFlagNoHole),
                              caps: Self.discarding)
        #expect(noHole.ops.isEmpty && noHole.error == NBDWire.errNotSup)
        // Deallocating is fast: FAST_ZERO goes ahead.
        let fast = Self.run(Self.request(NBDWire.cmdWriteZeroes, flags: NBDWire.cmdFlagFastZero), caps: Self.discarding)
        #expect(fast.ops == [.discard(target: .own, offset: 8192, length: 4096)])
        #expect(fast.error == 0)
    }

    @Test func storeErrorsMapToNBDErrors() {
        let cases: [(StoreError, UInt16, UInt32)] = [
            (.writeProtected, NBDWire.cmdWrite, NBDWire.errPerm),
            (.noSpace, NBDWire.cmdWrite, NBDWire.errNoSpace),
            (.outOfRange, NBDWire.cmdWrite, NBDWire.errNoSpace),
            (.outOfRange, NBDWire.cmdWriteZeroes, NBDWire.errNoSpace),
            (.outOfRange, NBDWire.cmdRead, NBDWire.errInvalid),
            (.notSupported, NBDWire.cmdFlush, NBDWire.errInvalid),
            (.mediumError, NBDWire.cmdRead, NBDWire.errIO),
            (.unavailable, NBDWire.cmdWrite, NBDWire.errIO),
        ]
        for (e, command, nbd) in cases {
            #expect(NBDRequest.error(e, command: command) == nbd, "\(e) on command \(command)")
            let length: UInt32 = command == NBDWire.cmdFlush ? 0 : 4096
            #expect(Self.run(Self.request(command, length: length)) { _ in .failed(e) }.error == nbd)
        }
    }

    // MARK: BLOCK_STATUS

    /// Runs a BLOCK_STATUS request over a store whose map is `extents` (mapped, bytes) from offset 0, with
    /// allocation depth 1 where no `depths` are given; returns the map operations and the descriptors (length,
    /// status) of the first context's chunk (base:allocation unless only qemu:allocation-depth is selected), and
    /// of the second's when two are selected, or the error.
    static func blockStatus(offset: UInt64 = 0, length: UInt32, flags: UInt16 = 0, slotBytes: Int = slot,
                            contexts: NBDMetaContexts = .baseAllocation,
                            extents: [(Bool, UInt64)], depths: [UInt8]? = nil, failWith: StoreError? = nil)
        -> (maps: [StoreOp], descriptors: [(UInt32, UInt32)], error: UInt32, second: [(UInt32, UInt32)]) {
        let header = NBDRequestHeader(flags: flags, type: NBDWire.cmdBlockStatus, cookie: 7, offset: offset,
                                      length: length)
        var r = NBDRequest(header, contexts: contexts)
        var maps: [StoreOp] = []
        var descriptors: [(UInt32, UInt32)] = []
        var second: [(UInt32, UInt32)] = []
        func answer(_ op: StoreOp) -> StoreResult {
            maps.append(op)
            if let failWith { return .failed(failWith) }
            guard case .mapStatus(_, let at, let maxLength) = op else { return .failed(.mediumError) }
            var start: UInt64 = 0
            for (k, (mapped, bytes)) in extents.enumerated() {
                if at < start + bytes || (bytes == 0 && at == start) {
                    return .extent(mapped: mapped, length: min(start + bytes - at, maxLength), depth: depths?[k] ?? 1)
                }
                start += bytes
            }
            return .failed(.outOfRange)
        }
        func put(_ d: NBDBlockDescriptor, _ into: inout [(UInt32, UInt32)]) {
            #expect(d.index <= into.count, "descriptors are written in order")
            if d.index == into.count { into.append((d.length, d.status)) } else { into[d.index] = (d.length, d.status) }
        }
        func describe(_ d: NBDBlockDescriptors) {
            put(d.first, &descriptors)
            if let s = d.second { put(s, &second) }
            #expect((d.second != nil) == (contexts.count == 2), "one descriptor per selected context")
        }
        var action = r.start(capabilities: plain, slotBytes: slotBytes)
        while maps.count < 1000 {
            switch action {
            case .submit(let op):
                action = r.storeDone(answer(op), slotBytes: slotBytes)
            case .describeAndSubmit(let d, let op):
                describe(d)
                action = r.storeDone(answer(op), slotBytes: slotBytes)
            case .describeAndReply(let d):
                describe(d)
                return (maps, descriptors, 0, second)
            case .reply(let error):
                return (maps, descriptors, error, second)
            case .zeroSlotAndSubmit:
                Issue.record("BLOCK_STATUS writes nothing")
                return (maps, descriptors, .max, second)
            }
        }
        Issue.record("BLOCK_STATUS did not end")
        return (maps, descriptors, .max, second)
    }

    static let hole = NBDWire.stateHole | NBDWire.stateZero

    @Test func blockStatusDescribesHolesAndDataAndMergesRuns() {
        // hole 4 KiB, data 8 KiB + 4 KiB (two store answers, one run), hole to the end.
        let (maps, d, error, _) = Self.blockStatus(length: 65_536, extents: [(false, 4096), (true, 8192), (true, 4096),
                                                                           (false, 1 << 20)])
        #expect(error == 0)
        #expect(maps.count == 4)
        #expect(d.map(\.0) == [4096, 12_288, 49_152])
        #expect(d.map(\.1) == [Self.hole, 0, Self.hole])
        #expect(d.reduce(0) { $0 + $1.0 } == 65_536, "the descriptors cover the request exactly")
    }

    @Test func blockStatusStartsAtTheRequestOffsetAndStopsAtItsEnd() {
        let (maps, d, _, _) = Self.blockStatus(offset: 6144, length: 4096, extents: [(false, 4096), (true, 1 << 20)])
        #expect(maps.first == .mapStatus(target: .own, offset: 6144, maxLength: 4096))
        #expect(d.map(\.0) == [4096])
        #expect(d.map(\.1) == [0])
    }

    @Test func reqOneAnswersWithOneDescriptor() {
        let (maps, d, _, _) = Self.blockStatus(length: 65_536, flags: NBDWire.cmdFlagReqOne,
                                            extents: [(false, 4096), (true, 1 << 20)])
        #expect(maps.count == 1)
        #expect(d.map(\.0) == [4096])
    }

    @Test func descriptorsStopAtWhatTheSlotHolds() {
        // Alternating 512-byte runs; a 56-byte slot holds the chunk header, the context ID and 4 descriptors.
        let extents = (0..<64).map { ($0 % 2 == 0, UInt64(512)) }
        let (_, d, error, _) = Self.blockStatus(length: 32_768, slotBytes: 56, extents: extents)
        #expect(error == 0)
        #expect(d.count == 4)
        #expect(d.map(\.0) == [512, 512, 512, 512])
        // Two contexts split the slot: 112 bytes hold 4 descriptors for each.
        let (_, b, e2, depth) = Self.blockStatus(length: 32_768, slotBytes: 112,
                                                 contexts: [.baseAllocation, .allocationDepth], extents: extents)
        #expect(e2 == 0 && b.count == 4 && depth.count == 1 && depth.first?.0 == 2048, "\(b) \(depth)")
    }

    /// qemu:allocation-depth beside base:allocation: each context merges its own runs, and both chunks tile the
    /// request. Here a clone's map: its own object (depth 1), a hole (0), two objects of its parent (2), then
    /// one of the grandparent (3).
    @Test func allocationDepthIsItsOwnChunkWithItsOwnRuns() {
        let extents: [(Bool, UInt64)] = [(true, 4096), (false, 4096), (true, 4096), (true, 4096), (true, 4096)]
        let both: NBDMetaContexts = [.baseAllocation, .allocationDepth]
        let (maps, base, error, depth) = Self.blockStatus(length: 20_480, contexts: both, extents: extents,
                                                          depths: [1, 0, 2, 2, 3])
        #expect(error == 0 && maps.count == 5)
        #expect(base.map(\.0) == [4096, 4096, 12_288] && base.map(\.1) == [0, Self.hole, 0])
        #expect(depth.map(\.0) == [4096, 4096, 8192, 4096] && depth.map(\.1) == [1, 0, 2, 3])
        // Only qemu:allocation-depth selected: it is the first (and only) chunk.
        let (_, only, _, none) = Self.blockStatus(length: 20_480, contexts: .allocationDepth, extents: extents,
                                                  depths: [1, 0, 2, 2, 3])
        #expect(only.map(\.1) == [1, 0, 2, 3] && none.isEmpty)
        // A store that cannot map reports this layer's data.
        let (_, unknown, _, unknownDepth) = Self.blockStatus(length: 8192, contexts: both, extents: [],
                                                             failWith: .notSupported)
        #expect(unknown.map(\.1) == [0] && unknownDepth.map(\.1) == [1])
    }

    @Test func aStoreThatCannotMapReportsData() {
        let (_, d, error, _) = Self.blockStatus(length: 8192, extents: [], failWith: .notSupported)
        #expect(error == 0)
        #expect(d.map(\.0) == [8192])
        #expect(d.map(\.1) == [0])
        let failed = Self.blockStatus(length: 8192, extents: [], failWith: .unavailable)
        #expect(failed.error == NBDWire.errIO)
        #expect(failed.descriptors.isEmpty)
    }

    @Test func aStoreThatMapsNothingEndsTheRequestWithEIO() {
        let (maps, _, error, _) = Self.blockStatus(length: 8192, extents: [(true, 0), (true, 1 << 20)])
        #expect(maps.count == 1)
        #expect(error == NBDWire.errIO)
    }
}
