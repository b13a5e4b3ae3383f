import Floor
import ISCSIWire
import SCSI
import Glibc

/// How the PDUs on a connection are framed just now. Digests and MaxRecvDataSegmentLength are negotiated at
/// login and only apply from full feature phase on (RFC 7143 §13.1, §13.12); before it no digest is sent, a
/// data segment is at most 8192 bytes and only Login Requests may arrive (§6.1, §11.12).
public struct RxFraming: Equatable {
    @usableFromInline var headerDigest: Bool
    @usableFromInline var dataDigest: Bool
    @usableFromInline var maxDataSegmentBytes: Int
    @usableFromInline var loginRequestsOnly: Bool

    @inlinable
    public init(headerDigest: Bool, dataDigest: Bool, maxDataSegmentBytes: Int, loginRequestsOnly: Bool) {
        self.headerDigest = headerDigest
        self.dataDigest = dataDigest
        self.maxDataSegmentBytes = maxDataSegmentBytes
        self.loginRequestsOnly = loginRequestsOnly
    }

    public static let login = RxFraming(headerDigest: false, dataDigest: false,
                                 maxDataSegmentBytes: PDUReceiver.loginDataSegmentBytes, loginRequestsOnly: true)
}

/// A PDU whose framing cannot be trusted: the shell closes the connection, since TCP gives no way to find the
/// next PDU boundary again.
public enum RxProtocolError: Equatable {
    /// Anything but a Login Request before full feature phase (RFC 7143 §6.1).
    case notLoginRequest
    /// Only SCSI Command PDUs carry AHSs (RFC 7143 §11.2.2); the opcode is named in the log.
    case ahsOnOpcode(UInt8)
    /// RFC 7143 §7.8: a header that fails its digest cannot be trusted for framing.
    case headerDigest
    /// Beyond the MaxRecvDataSegmentLength we declared.
    case dataSegmentTooLong(length: Int, limit: Int)
}

/// What the receiver wants the shell to do next.
public enum RxEvent: Equatable {
    /// Every byte offered was taken; receive more.
    case needBytes
    /// The whole header (BHS, AHS, verified header digest) is in the header area and the data segment fits the
    /// framing: the shell decides where the data segment goes and calls `place(into:)` (or stalls and calls it
    /// once it can).
    case header
    /// The PDU is complete. A failed data digest means Reject and discard (RFC 7143 §7.8); discarded data is
    /// never checked, since it is refused anyway.
    case pdu(dataDigestOK: Bool)
    case failed(RxProtocolError)
}

/// iSCSI PDU framing over a byte stream (RFC 7143 §11.1), as a machine with no socket behind it. Bytes go in
/// in any split (TCP delivers partial reads); the header is assembled in the connection's header area, the
/// data segment goes where the shell placed it (a buffer slot, the control buffer, or nowhere), and events come
/// out. The header area holds at most `headerAreaBytes`; a data segment never exceeds the framing's limit.
public struct PDUReceiver {
    /// The largest total AHS: its length field is one byte of 4-byte words (RFC 7143 §11.2.1.2).
    static let maxAHSBytes = 255 * Framing.ahsWordBytes
    /// BHS + largest AHS + header digest.
    public static let headerAreaBytes = bhsBytes + maxAHSBytes + Framing.digestBytes
    /// Login PDUs carry at most 8192 bytes of data (RFC 7143 §11.12.5 with the login default of §13.12).
    static let loginDataSegmentBytes = 8192

    public enum Stage: UInt8 {
        case bhs, ahs, headerDigest
        /// The header is complete; the shell has not said where the data segment goes.
        case placing
        case data, pad, dataDigest
    }

    /// Where the header is assembled: `headerAreaBytes`, owned by the shell.
    @usableFromInline let header: UnsafeMutableRawPointer
    @usableFromInline private(set) var stage = Stage.bhs
    /// Bytes of the current stage already received.
    @usableFromInline private(set) var have = 0
    /// The current PDU's AHS length. Read-only outside the receiver: the stored values are internal, so that
    /// the inlinable stages may set them.
    public var ahsBytes: Int { _ahsBytes }
    @usableFromInline var _ahsBytes = 0
    /// The current PDU's data segment, without padding.
    public var dataLength: Int { _dataLength }
    @usableFromInline var _dataLength = 0
    @usableFromInline var padLength = 0
    /// Where the data segment lands; nil discards it.
    @usableFromInline var sink: UnsafeMutableRawPointer? = nil
    /// The received data digest, as it came off the wire.
    @usableFromInline var wireDataDigest: UInt32 = 0

    public init(header: UnsafeMutableRawPointer) {
        self.header = header
    }

    /// Takes bytes [start, end) of `base` as far as the next event; `start` moves past what was taken.
    @inline(__always)
    @inlinable public mutating func receive(_ base: UnsafeRawPointer, from start: inout Int, to end: Int,
                          framing: RxFraming) -> RxEvent {
        while true {
            switch stage {
            case .bhs, .ahs, .headerDigest:
                // The BHS at 0, its AHS at 48 and the header digest after that, so that both the digest and
                // the extended CDB see one contiguous header.
                if start == end { return .needBytes }
                let base0 = stage == .bhs ? 0 : (stage == .ahs ? bhsBytes : bhsBytes + ahsBytes)
                let need = stage == .bhs ? bhsBytes : (stage == .ahs ? ahsBytes : Framing.digestBytes)
                let n = min(end - start, need - have)
                memcpy(header + base0 + have, base + start, n)
                start += n
                have += n
                if have < need { return .needBytes }
                if let event = headerStageDone(framing) { return event }
            case .placing:
                preconditionFailure("data segment bytes received before it was placed")
            case .data:
                // Straight into the sink: write data lands in its buffer slot with this one copy.
                if have == dataLength {
                    stage = .pad
                    have = 0
                    continue
                }
                if start == end { return .needBytes }
                let n = min(end - start, dataLength - have)
                if let p = sink { memcpy(p + have, base + start, n) }
                start += n
                have += n
            case .pad:
                // 0-3 bytes to the 4-byte boundary; their value is not checked (RFC 7143 §11.1 asks senders for
                // zeros), but the data digest covers them.
                if have == padLength {
                    if framing.dataDigest && dataLength > 0 {
                        stage = .dataDigest
                        have = 0
                        continue
                    }
                    return complete(dataDigestOK: true)
                }
                if start == end { return .needBytes }
                let n = min(end - start, padLength - have)
                start += n
                have += n
            case .dataDigest:
                // Kept as it came, little-endian like every CRC32C on the wire.
                if start == end { return .needBytes }
                let n = min(end - start, Framing.digestBytes - have)
                withUnsafeMutableBytes(of: &wireDataDigest) { d in _ = memcpy(d.baseAddress! + have, base + start, n) }
                start += n
                have += n
                if have == Framing.digestBytes { return complete(dataDigestOK: dataDigestMatches()) }
            }
        }
    }

    /// A header stage has all its bytes: the next stage, or the event it ends in.
    @inlinable mutating func headerStageDone(_ framing: RxFraming) -> RxEvent? {
        let bhs = BHS(header)
        switch stage {
        case .bhs:
            // Judged before waiting for more bytes: garbage must not make us wait for an AHS or a data segment
            // that its length fields invent.
            if framing.loginRequestsOnly && bhs.opcode != ISCSIOpcode.loginRequest {
                return .failed(.notLoginRequest)
            }
            _ahsBytes = bhs.ahsBytes
            if ahsBytes > 0 && bhs.opcode != ISCSIOpcode.scsiCommand { return .failed(.ahsOnOpcode(bhs.opcode)) }
            if ahsBytes > 0 {
                stage = .ahs
                have = 0
                return nil
            }
            return headerDone(framing)
        case .ahs:
            return headerDone(framing)
        case .headerDigest:
            let want = CRC32C.checksum(UnsafeRawPointer(header), count: bhsBytes + ahsBytes)
            let got = UInt32(littleEndian: (header + bhsBytes + ahsBytes).loadUnaligned(as: UInt32.self))
            if want != got { return .failed(.headerDigest) }
            return placing(framing)
        case .placing, .data, .pad, .dataDigest:
            preconditionFailure("a header stage ended in stage \(stage)")
        }
    }

    /// BHS and AHS are in: the header digest follows when one was negotiated (nil: receive it).
    @usableFromInline mutating func headerDone(_ framing: RxFraming) -> RxEvent? {
        if framing.headerDigest {
            stage = .headerDigest
            have = 0
            return nil
        }
        return placing(framing)
    }

    @inlinable mutating func placing(_ framing: RxFraming) -> RxEvent {
        _dataLength = BHS(header).dataSegmentLength
        padLength = Framing.padLength(dataLength)
        sink = nil
        stage = .placing
        have = 0
        if dataLength > framing.maxDataSegmentBytes {
            return .failed(.dataSegmentTooLong(length: dataLength, limit: framing.maxDataSegmentBytes))
        }
        return .header
    }

    /// The shell has decided where the data segment goes: `dataLength` bytes at `sink`, or nowhere (nil).
    @inline(__always)
    @inlinable public mutating func place(into sink: UnsafeMutableRawPointer?) {
        guard stage == .placing else { preconditionFailure("a data segment placed in stage \(stage)") }
        self.sink = sink
        stage = .data
        have = 0
    }

    /// Where a recv may write the rest of the data segment itself, skipping the staging copy; nil unless at least
    /// `minBytes` of it are still to come into a sink.
    @inline(__always)
    @inlinable public func directSpace(minBytes: Int) -> (UnsafeMutableRawPointer, Int)? {
        guard stage == .data, let p = sink, dataLength - have >= minBytes else { return nil }
        return (p + have, dataLength - have)
    }

    /// `n` bytes arrived at `directSpace`.
    @inline(__always)
    public mutating func receivedDirectly(_ n: Int) {
        guard stage == .data, sink != nil, have + n <= dataLength else {
            preconditionFailure("\(n) bytes received directly in stage \(stage)")
        }
        have += n
    }

    @usableFromInline mutating func complete(dataDigestOK: Bool) -> RxEvent {
        stage = .bhs
        have = 0
        return .pdu(dataDigestOK: dataDigestOK)
    }

    /// The digest covers the data and its zero padding (RFC 7143 §11.1). Discarded data passes: it is refused
    /// whatever it holds.
    @usableFromInline func dataDigestMatches() -> Bool {
        guard let p = sink else { return true }
        var crc = CRC32C.update(CRC32C.initialState, UnsafeRawPointer(p), count: dataLength)
        var zero: UInt32 = 0
        if padLength > 0 { crc = CRC32C.update(crc, &zero, count: padLength) }
        return ~crc == UInt32(littleEndian: wireDataDigest)
    }
}
