/// Where an R2T asks for data (RFC 7143 §11.8): the fields the shell stamps into the PDU it queues.
import Floor
import ISCSIWire
import SCSI
public struct R2TRequest: Equatable {
    public var r2tSN: UInt32
    public var bufferOffset: Int
    public var desiredLength: Int
}

/// What the first bytes of a chunk need before the SCSI layer may use them.
public struct ChunkStart: Equatable {
    /// Immediate-data bytes at buffer[chunk offset...] to move to buffer[0...] (the chunk starts inside the
    /// immediate data, which sits at buffer[0..<immediateBytes]).
    public var moveImmediateBytes: Int
    /// The immediate data covers the whole chunk: no R2T.
    public var complete: Bool
}

/// What a Data-Out PDU, once its data has landed, means for the sequence.
public enum DataOutVerdict: Equatable {
    /// Not the DataSN this burst expects: ERL 0 cannot recover a lost Data-Out, so reject it and fail the command.
    case wrongDataSN
    /// F set before the burst is complete, or missing at its end: reject it and fail the command.
    case wrongFinalBit
    /// More Data-Out of this burst follows.
    case burstContinues
    /// The burst is complete but the chunk is not: issue the next R2T.
    case burstDone
    /// The chunk's bytes are all in the buffer.
    case chunkDone
}

/// The R2T and Data-Out sequencing of one write command at ErrorRecoveryLevel 0 (RFC 7143 §11.7-11.8). The SCSI
/// layer asks for the data-out stream in chunks of at most one buffer; each chunk beyond the immediate data
/// is asked for in bursts of at most MaxBurstLength, one R2T each, and its Data-Out PDUs must arrive in order
/// (offset and DataSN) with F on the last. The shell holds the R2T permit and the buffer, and carries out
/// what this returns.
public struct DataOutSequencer {
    private struct Burst {
        var ttt: UInt32
        var offset: Int         // stream offset of the burst
        var length: Int
        var received: Int
        var expectedDataSN: UInt32
    }

    private enum State {
        /// No chunk wants bytes (none asked for yet, all here, or the sequence was abandoned).
        case idle
        /// The chunk wants bytes; the next R2T is not issued yet.
        case betweenBursts
        /// As betweenBursts, waiting for one of the core's R2T permits since `sinceTick`.
        case waitingPermit(sinceTick: UInt64)
        /// An R2T was sent at `sinceTick`; its Data-Out PDUs are arriving.
        case receiving(Burst, sinceTick: UInt64)
    }

    private var state = State.idle
    /// Stream bytes [0, immediateBytes) arrived with the command.
    private(set) var immediateBytes = 0
    /// The chunk: stream bytes [chunkOffset, chunkOffset + chunkLength) held at buffer[0...].
    private(set) var chunkOffset = 0
    private(set) var chunkLength = 0
    /// In-order bytes received from chunkOffset.
    private(set) var chunkReceived = 0
    /// R2TSN counts the task's R2Ts across all its chunks.
    private var nextR2TSN: UInt32 = 0

    public init(immediateBytes: Int = 0) {
        self.immediateBytes = immediateBytes
    }

    /// The TTT a Data-Out must carry now; the reserved tag when none is expected.
    @inline(__always)
    public var ttt: UInt32 {
        if case .receiving(let b, _) = state { return b.ttt }
        return reservedTag
    }

    /// The SCSI layer wants stream bytes [offset, offset + length) in the buffer.
    public mutating func beginChunk(offset: Int, length: Int) -> ChunkStart {
        guard case .idle = state else { preconditionFailure("a chunk begins while one is being received") }
        chunkOffset = offset
        chunkLength = length
        var have = 0
        var move = 0
        if offset < immediateBytes {
            if offset == 0 {
                have = min(length, immediateBytes)
            } else {
                have = min(length, immediateBytes - offset)
                move = have
            }
        }
        chunkReceived = have
        let complete = have >= length
        state = complete ? .idle : .betweenBursts
        return ChunkStart(moveImmediateBytes: move, complete: complete)
    }

    /// The core has no R2T permit free: the Data-Out timeout runs from now.
    public mutating func awaitPermit(tick: UInt64) {
        switch state {
        case .betweenBursts, .waitingPermit: state = .waitingPermit(sinceTick: tick)
        case .idle, .receiving: preconditionFailure("an R2T permit is awaited with no burst to ask for")
        }
    }

    /// A permit is held: the R2T for the next burst, at most `maxBurstLength` bytes, answered with `ttt`.
    public mutating func issueR2T(ttt: UInt32, maxBurstLength: Int, tick: UInt64) -> R2TRequest {
        switch state {
        case .betweenBursts, .waitingPermit: break
        case .idle, .receiving: preconditionFailure("an R2T is issued with no burst to ask for")
        }
        let offset = chunkOffset + chunkReceived
        let length = min(maxBurstLength, chunkLength - chunkReceived)
        let sn = nextR2TSN
        nextR2TSN &+= 1
        state = .receiving(Burst(ttt: ttt, offset: offset, length: length, received: 0, expectedDataSN: 0),
                           sinceTick: tick)
        return R2TRequest(r2tSN: sn, bufferOffset: offset, desiredLength: length)
    }

    /// Where a Data-Out's `length` bytes at stream `offset` go in the buffer: nil when they are out of order,
    /// beyond the burst the R2T asked for, or outside the chunk (or no burst is open).
    @inline(__always)
    public func placement(offset: Int, length: Int) -> Int? {
        guard case .receiving(let b, _) = state,
              offset == b.offset + b.received, length <= b.length - b.received,
              offset >= chunkOffset, offset + length <= chunkOffset + chunkLength
        else { return nil }
        return offset - chunkOffset
    }

    /// A Data-Out that `placement` accepted has landed.
    @inline(__always)
    public mutating func received(dataSN: UInt32, length: Int, final: Bool) -> DataOutVerdict {
        guard case .receiving(var b, let since) = state else {
            preconditionFailure("Data-Out landed with no burst open")
        }
        if dataSN != b.expectedDataSN {
            state = .idle
            return .wrongDataSN
        }
        b.expectedDataSN &+= 1
        b.received += length
        chunkReceived += length
        let burstDone = b.received == b.length
        if final != burstDone {
            state = .idle
            return .wrongFinalBit
        }
        if !burstDone {
            state = .receiving(b, sinceTick: since)
            return .burstContinues
        }
        if chunkReceived < chunkLength {
            state = .betweenBursts
            return .burstDone
        }
        state = .idle
        return .chunkDone
    }

    /// The command stops waiting for Data-Out (timeout, task management, or a broken sequence).
    @inline(__always)
    public mutating func abandon() {
        state = .idle
    }

    /// Whether the initiator has kept this sequence waiting (for a permit or for Data-Out) longer than
    /// `limitSeconds`.
    func expired(tick: UInt64, limitSeconds: UInt64) -> Bool {
        switch state {
        case .waitingPermit(let since), .receiving(_, let since): return tick &- since > limitSeconds
        case .idle, .betweenBursts: return false
        }
    }
}
