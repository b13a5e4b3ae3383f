import Glibc
import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import ISCSI

/// iSCSI PDU framing (RFC 7143 §11.1) without a socket: every stage, reads split at every byte boundary,
/// digests right and wrong, AHS, padding, an oversize data segment and a zero-length one.
@Suite struct PDUReceiverTests {
    static let fullFeature = RxFraming(headerDigest: false, dataDigest: false, maxDataSegmentBytes: 8192,
                                       loginRequestsOnly: false)
    static let digests = RxFraming(headerDigest: true, dataDigest: true, maxDataSegmentBytes: 8192,
                                   loginRequestsOnly: false)

    /// A PDU as it goes on the wire: BHS (opcode, AHS words, data length, and `tag` at the ITT), AHS, header
    /// digest, data, zero padding, data digest. `spoil` flips a bit in a digest after computing it.
    static func wire(opcode: UInt8, ahs: [UInt8] = [], data: [UInt8] = [], tag: UInt8 = 0x5A,
                     headerDigest: Bool = false, dataDigest: Bool = false,
                     spoilHeaderDigest: Bool = false, spoilDataDigest: Bool = false) -> [UInt8] {
        precondition(ahs.count % 4 == 0)
        var h = [UInt8](repeating: 0, count: 48)
        h[0] = opcode
        h[4] = UInt8(ahs.count / 4)
        h[5] = UInt8(data.count >> 16 & 0xFF)
        h[6] = UInt8(data.count >> 8 & 0xFF)
        h[7] = UInt8(data.count & 0xFF)
        h[19] = tag
        var out = h + ahs
        if headerDigest { out += digest(out, spoil: spoilHeaderDigest) }
        let padded = data + [UInt8](repeating: 0, count: Framing.padLength(data.count))
        out += padded
        if dataDigest && !data.isEmpty { out += digest(padded, spoil: spoilDataDigest) }
        return out
    }

    static func digest(_ bytes: [UInt8], spoil: Bool) -> [UInt8] {
        let d = CRC32C.checksum(bytes) ^ (spoil ? 1 : 0)
        return withUnsafeBytes(of: d.littleEndian) { Array($0) }
    }

    /// Runs the receiver over `bytes` delivered in the pieces `cuts` marks, placing every data segment in a
    /// fresh sink (or discarding it when `discard`). Returns the events (`.needBytes` left out), the data
    /// segments as they landed, and the headers seen at each `.header`.
    final class Run {
        let headerArea = UnsafeMutableRawPointer.allocate(byteCount: PDUReceiver.headerAreaBytes, alignment: 8)
        var receiver: PDUReceiver
        var events: [RxEvent] = []
        var headers: [[UInt8]] = []
        var landed: [[UInt8]] = []
        var sink: UnsafeMutableRawPointer? = nil
        let discard: Bool

        init(discard: Bool = false) {
            receiver = PDUReceiver(header: headerArea)
            self.discard = discard
        }

        deinit {
            headerArea.deallocate()
            sink?.deallocate()
        }

        func feed(_ bytes: [UInt8], cuts: [Int] = [], framing: RxFraming) {
            var pieces: [ArraySlice<UInt8>] = []
            var from = 0
            for c in cuts + [bytes.count] {
                pieces.append(bytes[from..<c])
                from = c
            }
            for piece in pieces {
                let chunk = Array(piece)
                chunk.withUnsafeBytes { raw in
                    var start = 0
                    // A base address even for an empty piece: zero bytes may still complete a PDU.
                    let base = raw.baseAddress ?? UnsafeRawPointer(headerArea)
                    while true {
                        let e = receiver.receive(base, from: &start, to: chunk.count, framing: framing)
                        if e == .needBytes { #expect(start == chunk.count); return }
                        events.append(e)
                        switch e {
                        case .header: place()
                        case .pdu: landedSegment()
                        case .failed: return
                        case .needBytes: break
                        }
                    }
                }
                if case .failed = events.last { return }
            }
        }

        private func place() {
            let n = receiver.dataLength
            headers.append(Array(UnsafeRawBufferPointer(start: headerArea, count: 48 + receiver.ahsBytes)))
            sink?.deallocate()
            sink = nil
            if !discard {
                sink = .allocate(byteCount: max(n, 1), alignment: 8)
                sink!.initializeMemory(as: UInt8.self, repeating: 0xEE, count: max(n, 1))
            }
            receiver.place(into: sink)
        }

        private func landedSegment() {
            if let sink {
                landed.append(Array(UnsafeRawBufferPointer(start: sink, count: lastLength)))
            } else {
                landed.append([])
            }
        }

        private var lastLength: Int {
            guard let h = headers.last else { return 0 }
            return Int(h[5]) << 16 | Int(h[6]) << 8 | Int(h[7])
        }
    }

    @Test func headerOnlyPDU() {
        let r = Run()
        r.feed(Self.wire(opcode: ISCSIOpcode.nopOut), framing: Self.fullFeature)
        #expect(r.events == [.header, .pdu(dataDigestOK: true)])
        #expect(r.receiver.stage == .bhs)
        #expect(r.headers.first?[0] == ISCSIOpcode.nopOut)
    }

    /// A SCSI Command with an extended-CDB AHS, both digests, 5 data bytes (3 pad): the same outcome however
    /// TCP splits it, and one byte at a time.
    @Test func everySplitOfEveryStage() {
        let ahs: [UInt8] = [0x00, 0x05, 0x01, 0x00, 1, 2, 3, 4]
        let data: [UInt8] = [10, 20, 30, 40, 50]
        let bytes = Self.wire(opcode: ISCSIOpcode.scsiCommand, ahs: ahs, data: data, headerDigest: true,
                              dataDigest: true)
        #expect(bytes.count == 48 + 8 + 4 + 8 + 4)
        for cut in 0...bytes.count {
            let r = Run()
            r.feed(bytes, cuts: [cut], framing: Self.digests)
            #expect(r.events == [.header, .pdu(dataDigestOK: true)], "split at \(cut)")
            #expect(r.landed == [data], "split at \(cut)")
            #expect(r.headers.first.map { Array($0[48...]) } == ahs, "split at \(cut)")
            #expect(r.receiver.ahsBytes == 8)
        }
        let r = Run()
        r.feed(bytes, cuts: Array(1..<bytes.count), framing: Self.digests)
        #expect(r.events == [.header, .pdu(dataDigestOK: true)])
        #expect(r.landed == [data])
    }

    /// Two PDUs back to back, split everywhere: padding ends exactly where the next BHS begins.
    @Test func paddingKeepsTheStreamInStep() {
        for length in 1...5 {
            let first = Self.wire(opcode: ISCSIOpcode.textRequest, data: Array(1...UInt8(length)), tag: 1)
            let second = Self.wire(opcode: ISCSIOpcode.nopOut, data: [9, 8, 7], tag: 2)
            let bytes = first + second
            for cut in 0...bytes.count {
                let r = Run()
                r.feed(bytes, cuts: [cut], framing: Self.fullFeature)
                #expect(r.events == [.header, .pdu(dataDigestOK: true), .header, .pdu(dataDigestOK: true)])
                #expect(r.landed == [Array(1...UInt8(length)), [9, 8, 7]], "length \(length), split at \(cut)")
                #expect(r.headers.map { $0[19] } == [1, 2])
            }
        }
    }

    @Test func wrongHeaderDigestFailsTheConnection() {
        let bytes = Self.wire(opcode: ISCSIOpcode.nopOut, data: [1, 2, 3, 4], headerDigest: true, dataDigest: true,
                              spoilHeaderDigest: true)
        for cut in 0...bytes.count {
            let r = Run()
            r.feed(bytes, cuts: [cut], framing: Self.digests)
            #expect(r.events == [.failed(.headerDigest)], "split at \(cut)")
        }
    }

    @Test func wrongDataDigestIsReportedAndTheNextPDUFollows() {
        let bad = Self.wire(opcode: ISCSIOpcode.nopOut, data: [1, 2, 3, 4, 5, 6], headerDigest: true,
                            dataDigest: true, spoilDataDigest: true)
        let good = Self.wire(opcode: ISCSIOpcode.nopOut, data: [7], headerDigest: true, dataDigest: true)
        for cut in 0...(bad.count + good.count) {
            let r = Run()
            r.feed(bad + good, cuts: [cut], framing: Self.digests)
            #expect(r.events == [.header, .pdu(dataDigestOK: false), .header, .pdu(dataDigestOK: true)],
                    "split at \(cut)")
        }
    }

    /// Discarded data is refused whatever it holds, so its digest is not checked; it still frames the stream.
    @Test func discardedDataIsSkippedUnchecked() {
        let bytes = Self.wire(opcode: ISCSIOpcode.nopOut, data: [1, 2, 3], headerDigest: true, dataDigest: true,
                              spoilDataDigest: true)
            + Self.wire(opcode: ISCSIOpcode.nopOut, headerDigest: true, dataDigest: true)
        let r = Run(discard: true)
        r.feed(bytes, framing: Self.digests)
        #expect(r.events == [.header, .pdu(dataDigestOK: true), .header, .pdu(dataDigestOK: true)])
    }

    /// No data segment: no padding and no data digest, even when data digests were negotiated.
    @Test func zeroLengthDataHasNoDigest() {
        let bytes = Self.wire(opcode: ISCSIOpcode.nopOut, tag: 1, headerDigest: true, dataDigest: true)
            + Self.wire(opcode: ISCSIOpcode.nopOut, tag: 2, headerDigest: true, dataDigest: true)
        #expect(bytes.count == 2 * (48 + 4))
        let r = Run()
        r.feed(bytes, framing: Self.digests)
        #expect(r.events == [.header, .pdu(dataDigestOK: true), .header, .pdu(dataDigestOK: true)])
        #expect(r.headers.map { $0[19] } == [1, 2])
    }

    @Test func oversizeDataSegmentFailsAtTheHeader() {
        let limit = Self.fullFeature.maxDataSegmentBytes
        let atLimit = Self.wire(opcode: ISCSIOpcode.scsiCommand, data: [UInt8](repeating: 3, count: limit))
        let r = Run()
        r.feed(atLimit, framing: Self.fullFeature)
        #expect(r.events == [.header, .pdu(dataDigestOK: true)])
        // Only the header is offered: the receiver must not wait for the data its length field invents.
        let over = Self.wire(opcode: ISCSIOpcode.scsiCommand, data: [UInt8](repeating: 3, count: limit + 1))
        let r2 = Run()
        r2.feed(Array(over[0..<48]), framing: Self.fullFeature)
        #expect(r2.events == [.failed(.dataSegmentTooLong(length: limit + 1, limit: limit))])
    }

    /// During login only Login Requests arrive, without digests, with at most 8192 bytes of data.
    @Test func loginFraming() {
        let login = Self.wire(opcode: ISCSIOpcode.loginRequest | 0x40, data: Array("a=b\0".utf8))
        let r = Run()
        r.feed(login, framing: .login)
        #expect(r.events == [.header, .pdu(dataDigestOK: true)])
        #expect(r.landed == [Array("a=b\0".utf8)])
        let r2 = Run()
        r2.feed(Array(Self.wire(opcode: ISCSIOpcode.scsiCommand)[0..<48]), framing: .login)
        #expect(r2.events == [.failed(.notLoginRequest)])
        let big = Self.wire(opcode: ISCSIOpcode.loginRequest, data: [UInt8](repeating: 0, count: 8196))
        let r3 = Run()
        r3.feed(Array(big[0..<48]), framing: .login)
        #expect(r3.events == [.failed(.dataSegmentTooLong(length: 8196, limit: PDUReceiver.loginDataSegmentBytes))])
    }

    /// Only SCSI Command PDUs carry AHSs; any other is refused at its BHS, before the AHS is waited for.
    @Test func ahsOnAnotherOpcodeFails() {
        let bytes = Self.wire(opcode: ISCSIOpcode.nopOut, ahs: [0, 0, 0, 0])
        let r = Run()
        r.feed(Array(bytes[0..<48]), framing: Self.fullFeature)
        #expect(r.events == [.failed(.ahsOnOpcode(ISCSIOpcode.nopOut))])
    }

    /// The largest AHS fills the header area exactly, header digest included.
    @Test func largestAHS() {
        let ahs = [UInt8](repeating: 7, count: PDUReceiver.maxAHSBytes)
        let bytes = Self.wire(opcode: ISCSIOpcode.scsiCommand, ahs: ahs, headerDigest: true)
        #expect(bytes.count == PDUReceiver.headerAreaBytes)
        let r = Run()
        r.feed(bytes, cuts: [1, 47, 48, 49, 1000, bytes.count - 1], framing: Self.digests)
        #expect(r.events == [.header, .pdu(dataDigestOK: true)])
        #expect(r.receiver.ahsBytes == PDUReceiver.maxAHSBytes)
    }

    /// A recv straight into the sink: offered only for a large enough remainder, and what lands there counts.
    @Test func directReceiveIntoTheSink() {
        let data = (0..<6000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        let bytes = Self.wire(opcode: ISCSIOpcode.dataOut, data: data, dataDigest: true)
        let framing = RxFraming(headerDigest: false, dataDigest: true, maxDataSegmentBytes: 8192,
                                loginRequestsOnly: false)
        let r = Run()
        r.feed(Array(bytes[0..<148]), framing: framing)   // header and the first 100 data bytes
        #expect(r.events == [.header])
        #expect(r.receiver.directSpace(minBytes: 6000) == nil)
        guard let (p, n) = r.receiver.directSpace(minBytes: 4096) else {
            Issue.record("no direct space for 5900 bytes")
            return
        }
        #expect(n == 5900 && p == r.sink! + 100)
        data[100...].withUnsafeBytes { _ = memcpy(p, $0.baseAddress!, 3000) }
        r.receiver.receivedDirectly(3000)
        #expect(r.receiver.directSpace(minBytes: 4096) == nil, "2900 left: staged with what follows")
        r.feed(Array(bytes[3148...]), framing: framing)
        #expect(r.events == [.header, .pdu(dataDigestOK: true)])
        #expect(r.landed == [data])
    }

    /// A direct recv that completes the data segment: the PDU completes on the next call with no bytes.
    @Test func directReceiveCompletesWithoutBytes() {
        let data = [UInt8](repeating: 0x42, count: 4096)
        let bytes = Self.wire(opcode: ISCSIOpcode.dataOut, data: data)
        let r = Run()
        r.feed(Array(bytes[0..<48]), framing: Self.fullFeature)
        guard let (p, n) = r.receiver.directSpace(minBytes: 4096) else {
            Issue.record("no direct space")
            return
        }
        p.initializeMemory(as: UInt8.self, repeating: 0x42, count: n)
        r.receiver.receivedDirectly(n)
        r.feed([], framing: Self.fullFeature)
        #expect(r.events == [.header, .pdu(dataDigestOK: true)])
        #expect(r.landed == [data])
    }
}
