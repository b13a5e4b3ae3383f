import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import ISCSI

/// The Data-In stream of a read (RFC 7143 §11.7, ERL 0) without a socket: segmenting by MaxRecvDataSegmentLength
/// and MaxBurstLength, DataSN, the F and S bits, the status in the last PDU, and pieces of one buffer each.
@Suite struct DataInEmitterTests {
    /// Every PDU of the current piece.
    private func drain(_ e: inout DataInEmitter, maxSegment: Int, maxBurst: Int) -> [DataInPDU] {
        var pdus: [DataInPDU] = []
        while !e.pieceQueuedFully { pdus.append(e.next(maxSegmentBytes: maxSegment, maxBurstBytes: maxBurst)) }
        return pdus
    }

    @Test func oneSegmentCollapsesTheStatus() {
        var e = DataInEmitter()
        e.beginFinalPiece(length: 4096, collapseStatus: true)
        let pdus = drain(&e, maxSegment: 8192, maxBurst: 262_144)
        #expect(pdus == [DataInPDU(dataSN: 0, bufferOffset: 0, pieceOffset: 0, length: 4096, final: true,
                                   carriesStatus: true, endsPiece: true)])
        #expect(!e.needsResponse)
        #expect(e.streamOffset == 4096 && e.dataSN == 1)
    }

    @Test func segmentsByMaxRecvDataSegmentLength() {
        var e = DataInEmitter()
        e.beginFinalPiece(length: 20_000, collapseStatus: true)
        let pdus = drain(&e, maxSegment: 8192, maxBurst: 262_144)
        #expect(pdus.map(\.length) == [8192, 8192, 3616])
        #expect(pdus.map(\.dataSN) == [0, 1, 2])
        #expect(pdus.map(\.bufferOffset) == [0, 8192, 16_384])
        #expect(pdus.map(\.final) == [false, false, true])
        #expect(pdus.map(\.carriesStatus) == [false, false, true], "S only on the last PDU")
    }

    /// F ends every sequence of MaxBurstLength bytes, even inside a piece, and a segment never crosses one.
    @Test func sequencesEndAtMaxBurstLength() {
        var e = DataInEmitter()
        e.beginFinalPiece(length: 10_000, collapseStatus: true)
        let pdus = drain(&e, maxSegment: 3000, maxBurst: 4096)
        #expect(pdus.map(\.length) == [3000, 1096, 3000, 1096, 1808])
        #expect(pdus.map(\.final) == [false, true, false, true, true])
        #expect(pdus.map(\.carriesStatus) == [false, false, false, false, true])
        #expect(pdus.map(\.dataSN) == [0, 1, 2, 3, 4], "DataSN runs on across sequences")
    }

    /// Pieces of one buffer: DataSN, offsets and the burst run on across them; only the piece's last PDU
    /// frees the buffer, and only the command's last carries F at the end of a piece.
    @Test func piecesContinueTheStream() {
        var e = DataInEmitter()
        e.beginPiece(length: 6000)
        let first = drain(&e, maxSegment: 4096, maxBurst: 8192)
        #expect(first.map(\.length) == [4096, 1904])
        #expect(first.map(\.final) == [false, false])
        #expect(first.map(\.endsPiece) == [false, true])
        #expect(!e.pieceFinal && !e.needsResponse)
        e.beginFinalPiece(length: 5000, collapseStatus: true)
        let second = drain(&e, maxSegment: 4096, maxBurst: 8192)
        #expect(second.map(\.length) == [2192, 2808], "the first sequence ends at 8192 stream bytes")
        #expect(second.map(\.bufferOffset) == [6000, 8192])
        #expect(second.map(\.pieceOffset) == [0, 2192])
        #expect(second.map(\.final) == [true, true])
        #expect(second.map(\.dataSN) == [2, 3])
        #expect(e.streamOffset == 11_000)
    }

    /// CHECK CONDITION (or any status with sense) is not collapsed: the data ends with F and a SCSI Response
    /// follows; so does a command with no data at all.
    @Test func statusThatCannotCollapse() {
        var e = DataInEmitter()
        e.beginFinalPiece(length: 512, collapseStatus: false)
        let pdus = drain(&e, maxSegment: 8192, maxBurst: 262_144)
        #expect(pdus.map(\.final) == [true])
        #expect(pdus.map(\.carriesStatus) == [false])
        #expect(e.needsResponse)
        var none = DataInEmitter()
        none.beginFinalPiece(length: 0, collapseStatus: true)
        #expect(none.pieceQueuedFully && none.pieceEmpty && none.needsResponse)
    }

    /// An empty non-final piece queues nothing; the shell hands it back at once.
    @Test func emptyPiece() {
        var e = DataInEmitter()
        e.beginPiece(length: 0)
        #expect(e.pieceQueuedFully && e.pieceEmpty && !e.needsResponse)
        #expect(e.dataSN == 0)
    }
}
