// The NBD transmission rules, request by request: the store operations each command becomes, in order, and
// the error each failure answers with. No sockets: the machine's actions are checked as values.

import Testing
@testable import Target

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

    /// Runs a BLOCK_STATUS request over a store whose map is `extents` (mapped, bytes) from offset 0; returns the
    /// map operations and the descriptors (length, status) the reply carries, or the error.
    static func blockStatus(offset: UInt64 = 0, length: UInt32, flags: UInt16 = 0, slotBytes: Int = slot,
                            extents: [(Bool, UInt64)], failWith: StoreError? = nil)
        -> (maps: [StoreOp], descriptors: [(UInt32, UInt32)], error: UInt32) {
        var r = request(NBDWire.cmdBlockStatus, flags: flags, offset: offset, length: length)
        var maps: [StoreOp] = []
        var descriptors: [(UInt32, UInt32)] = []
        func answer(_ op: StoreOp) -> StoreResult {
            maps.append(op)
            if let failWith { return .failed(failWith) }
            guard case .mapStatus(_, let at, let maxLength) = op else { return .failed(.mediumError) }
            var start: UInt64 = 0
            for (mapped, bytes) in extents {
                if at < start + bytes || (bytes == 0 && at == start) {
                    return .extent(mapped: mapped, length: min(start + bytes - at, maxLength))
                }
                start += bytes
            }
            return .failed(.outOfRange)
        }
        func describe(_ index: Int, _ length: UInt32, _ status: UInt32) {
            #expect(index <= descriptors.count, "descriptors are written in order")
            if index == descriptors.count { descriptors.append((length, status)) } else { descriptors[index] = (length, status) }
        }
        var action = r.start(capabilities: plain, slotBytes: slotBytes)
        while maps.count < 1000 {
            switch action {
            case .submit(let op):
                action = r.storeDone(answer(op), slotBytes: slotBytes)
            case .describeAndSubmit(let index, let length, let status, let op):
                describe(index, length, status)
                action = r.storeDone(answer(op), slotBytes: slotBytes)
            case .describeAndReply(let index, let length, let status):
                describe(index, length, status)
                return (maps, descriptors, 0)
            case .reply(let error):
                return (maps, descriptors, error)
            case .zeroSlotAndSubmit:
                Issue.record("BLOCK_STATUS writes nothing")
                return (maps, descriptors, .max)
            }
        }
        Issue.record("BLOCK_STATUS did not end")
        return (maps, descriptors, .max)
    }

    static let hole = NBDWire.stateHole | NBDWire.stateZero

    @Test func blockStatusDescribesHolesAndDataAndMergesRuns() {
        // hole 4 KiB, data 8 KiB + 4 KiB (two store answers, one run), hole to the end.
        let (maps, d, error) = Self.blockStatus(length: 65_536, extents: [(false, 4096), (true, 8192), (true, 4096),
                                                                           (false, 1 << 20)])
        #expect(error == 0)
        #expect(maps.count == 4)
        #expect(d.map(\.0) == [4096, 12_288, 49_152])
        #expect(d.map(\.1) == [Self.hole, 0, Self.hole])
        #expect(d.reduce(0) { $0 + $1.0 } == 65_536, "the descriptors cover the request exactly")
    }

    @Test func blockStatusStartsAtTheRequestOffsetAndStopsAtItsEnd() {
        let (maps, d, _) = Self.blockStatus(offset: 6144, length: 4096, extents: [(false, 4096), (true, 1 << 20)])
        #expect(maps.first == .mapStatus(target: .own, offset: 6144, maxLength: 4096))
        #expect(d.map(\.0) == [4096])
        #expect(d.map(\.1) == [0])
    }

    @Test func reqOneAnswersWithOneDescriptor() {
        let (maps, d, _) = Self.blockStatus(length: 65_536, flags: NBDWire.cmdFlagReqOne,
                                            extents: [(false, 4096), (true, 1 << 20)])
        #expect(maps.count == 1)
        #expect(d.map(\.0) == [4096])
    }

    @Test func descriptorsStopAtWhatTheSlotHolds() {
        // Alternating 512-byte runs; a 36-byte slot holds the context ID and 4 descriptors.
        let extents = (0..<64).map { ($0 % 2 == 0, UInt64(512)) }
        let (_, d, error) = Self.blockStatus(length: 32_768, slotBytes: 36, extents: extents)
        #expect(error == 0)
        #expect(d.count == 4)
        #expect(d.map(\.0) == [512, 512, 512, 512])
    }

    @Test func aStoreThatCannotMapReportsData() {
        let (_, d, error) = Self.blockStatus(length: 8192, extents: [], failWith: .notSupported)
        #expect(error == 0)
        #expect(d.map(\.0) == [8192])
        #expect(d.map(\.1) == [0])
        let failed = Self.blockStatus(length: 8192, extents: [], failWith: .unavailable)
        #expect(failed.error == NBDWire.errIO)
        #expect(failed.descriptors.isEmpty)
    }

    @Test func aStoreThatMapsNothingEndsTheRequestWithEIO() {
        let (maps, _, error) = Self.blockStatus(length: 8192, extents: [(true, 0), (true, 1 << 20)])
        #expect(maps.count == 1)
        #expect(error == NBDWire.errIO)
    }
}
