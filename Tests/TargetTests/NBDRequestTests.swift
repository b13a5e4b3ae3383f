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
}
