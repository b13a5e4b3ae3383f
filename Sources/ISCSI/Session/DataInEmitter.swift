/// One Data-In PDU to queue (RFC 7143 §11.7): the shell builds it over the piece's buffer.
import Floor
import ISCSIWire
import SCSI
public struct DataInPDU: Equatable {
    public var dataSN: UInt32
    /// Where its data sits in the command's data-in stream (the PDU's Buffer Offset).
    public var bufferOffset: UInt32
    /// Where its data starts in the piece's buffer.
    public var pieceOffset: Int
    public var length: Int
    /// F: the last PDU of a sequence, which MaxBurstLength bounds, or of the command.
    public var final: Bool
    /// S: the command's status rides in this PDU (phase collapse), so no SCSI Response follows.
    public var carriesStatus: Bool
    /// The piece's last data: once it is sent the SCSI layer may reuse the buffer.
    public var endsPiece: Bool

    @inlinable
    public init(dataSN: UInt32, bufferOffset: UInt32, pieceOffset: Int, length: Int, final: Bool, carriesStatus: Bool, endsPiece: Bool) {
        self.dataSN = dataSN
        self.bufferOffset = bufferOffset
        self.pieceOffset = pieceOffset
        self.length = length
        self.final = final
        self.carriesStatus = carriesStatus
        self.endsPiece = endsPiece
    }
}

/// The Data-In stream of one read command at ErrorRecoveryLevel 0. The SCSI layer hands the data over in
/// pieces of at most one buffer; each is cut into PDUs of at most the initiator's MaxRecvDataSegmentLength,
/// sequences end (F) every MaxBurstLength bytes and at the command's end, and DataSN counts every PDU of the
/// command. A GOOD status without sense rides in the last PDU; anything else is a SCSI Response of its own.
/// The residual is the SCSI layer's; it goes wherever the status goes.
public struct DataInEmitter {
    @usableFromInline private(set) var dataSN: UInt32 = 0
    /// Stream bytes handed to PDUs so far. Read-only outside the emitter (the stored value is internal, so that
    /// the inlinable `next` may advance it).
    public var streamOffset: UInt32 { _streamOffset }
    @usableFromInline var _streamOffset: UInt32 = 0
    @usableFromInline var pieceLength = 0
    @usableFromInline var pieceQueued = 0
    /// The current piece ends the command.
    public private(set) var pieceFinal = false
    @usableFromInline var collapse = false
    /// Bytes of the sequence the next PDU continues.
    @usableFromInline var sequenceBytes = 0

    public init() {}

    /// The buffer holds `length` more bytes of the stream; more pieces follow.
    @inline(__always)
    public mutating func beginPiece(length: Int) {
        pieceLength = length
        pieceQueued = 0
        pieceFinal = false
        collapse = false
    }

    /// The command ends with these `length` bytes (possibly none). `collapseStatus`: its status is GOOD with no
    /// sense, so it goes in the last Data-In.
    @inline(__always)
    public mutating func beginFinalPiece(length: Int, collapseStatus: Bool) {
        pieceLength = length
        pieceQueued = 0
        pieceFinal = true
        collapse = collapseStatus
    }

    /// Every byte of the piece is in a queued PDU.
    @inline(__always)
    public var pieceQueuedFully: Bool { pieceQueued == pieceLength }

    /// The piece had no data (a non-final one is then sent at once).
    @inline(__always)
    public var pieceEmpty: Bool { pieceLength == 0 }

    /// Once the final piece is queued: the status still needs a SCSI Response of its own.
    @inline(__always)
    public var needsResponse: Bool { pieceFinal && !(collapse && pieceLength > 0) }

    /// The next PDU of the piece; segments and sequences by the negotiated lengths, passed as they are now.
    @inline(__always)
    @inlinable public mutating func next(maxSegmentBytes: Int, maxBurstBytes: Int) -> DataInPDU {
        guard pieceQueued < pieceLength else { preconditionFailure("Data-In asked for past the piece") }
        let n = min(maxSegmentBytes, pieceLength - pieceQueued, maxBurstBytes - sequenceBytes)
        let endsPiece = pieceQueued + n == pieceLength
        let endsCommand = endsPiece && pieceFinal
        sequenceBytes += n
        let endsSequence = endsCommand || sequenceBytes >= maxBurstBytes
        if endsSequence { sequenceBytes = 0 }
        let pdu = DataInPDU(dataSN: dataSN, bufferOffset: _streamOffset, pieceOffset: pieceQueued, length: n,
                            final: endsSequence, carriesStatus: endsCommand && collapse, endsPiece: endsPiece)
        dataSN &+= 1
        _streamOffset &+= UInt32(n)
        pieceQueued += n
        return pdu
    }
}
