import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import ISCSI

/// The CmdSN window (RFC 7143 §3.2.2.1) every CmdSN-carrying PDU goes through, without a socket.
@Suite struct CmdSNWindowTests {
    /// Positions of `sns`, each judged as a non-immediate PDU.
    private func positions(_ w: CmdSNWindow, _ sns: [UInt32]) -> [CmdSNPosition] {
        sns.map { w.position(of: $0, immediate: false) }
    }

    @Test func edgesOfTheWindow() {
        let w = CmdSNWindow(expCmdSN: 10, advertisedMaxCmdSN: 41)
        #expect(positions(w, [9, 10, 11, 40, 41, 42]) == [.outside, .next, .ahead, .ahead, .ahead, .outside])
        #expect(w.contains(10) && w.contains(41) && !w.contains(9) && !w.contains(42))
    }

    @Test func wrapsAroundAt2To32() {
        var w = CmdSNWindow(expCmdSN: 0xFFFF_FFFE, advertisedMaxCmdSN: 3)
        #expect(positions(w, [0xFFFF_FFFD, 0xFFFF_FFFE, 0xFFFF_FFFF, 0, 3, 4])
                == [.outside, .next, .ahead, .ahead, .ahead, .outside])
        for _ in 0..<3 { w.received(w.position(of: w.expCmdSN, immediate: false)) }
        #expect(w.expCmdSN == 1)
        #expect(w.position(of: 0xFFFF_FFFF, immediate: false) == .outside, "taken before the wrap: a duplicate now")
        let max = w.advertise(freeEntries: 32)
        #expect(max == 32 && w.advertisedMaxCmdSN == 32)
    }

    /// Immediate PDUs are delivered whatever their CmdSN and take no turn.
    @Test func immediateDeliveryTakesNoTurn() {
        var w = CmdSNWindow(expCmdSN: 10, advertisedMaxCmdSN: 41)
        for sn: UInt32 in [10, 11, 9, 500] {
            let p = w.position(of: sn, immediate: true)
            #expect(p == .immediate)
            w.received(p)
            w.receivedNonCommand(sn, immediate: true)
        }
        #expect(w.expCmdSN == 10)
    }

    @Test func duplicatesAndOutOfWindowLeaveExpCmdSN() {
        var w = CmdSNWindow(expCmdSN: 10, advertisedMaxCmdSN: 41)
        w.received(w.position(of: 10, immediate: false))
        #expect(w.expCmdSN == 11)
        for sn: UInt32 in [10, 5, 42, 0x8000_0000] {
            let p = w.position(of: sn, immediate: false)
            #expect(p == .outside, "CmdSN \(sn)")
            w.received(p)
        }
        #expect(w.expCmdSN == 11)
        // Ahead of the gap: received, but ExpCmdSN waits for the gap to fill.
        w.received(w.position(of: 13, immediate: false))
        #expect(w.expCmdSN == 11)
    }

    /// After the first Login Request the window is empty until a response advertises one.
    @Test func loginOpensAnEmptyWindow() {
        var w = CmdSNWindow()
        w.begin(at: 0)
        #expect(w.expCmdSN == 0 && w.advertisedMaxCmdSN == 0xFFFF_FFFF)
        #expect(w.position(of: 0, immediate: false) == .outside)
        let max = w.advertise(freeEntries: 32)
        #expect(max == 31)
        #expect(w.position(of: 0, immediate: false) == .next)
    }

    /// The advertised edge never shrinks (initiators ignore a lower MaxCmdSN), and a full table advertises
    /// MaxCmdSN = ExpCmdSN - 1.
    @Test func advertisedEdgeOnlyGrows() {
        var w = CmdSNWindow(expCmdSN: 10, advertisedMaxCmdSN: 9)
        let maxima = [4, 0, -3].map { w.advertise(freeEntries: $0) }
        #expect(maxima == [13, 9, 9], "more entries in use than the window: still ExpCmdSN - 1")
        #expect(w.advertisedMaxCmdSN == 13)
        #expect(w.position(of: 13, immediate: false) == .ahead)
    }

    /// NOP-Out, Text, TMF and Logout take their turn at ExpCmdSN even past the advertised edge, as commands
    /// do not: an initiator that filled the window exactly may send one before a response widens it.
    @Test func nonCommandsTakeTheirTurnAtTheEdge() {
        var w = CmdSNWindow(expCmdSN: 11, advertisedMaxCmdSN: 10)
        #expect(w.position(of: 11, immediate: false) == .outside)
        w.receivedNonCommand(12, immediate: false)
        #expect(w.expCmdSN == 11)
        w.receivedNonCommand(11, immediate: false)
        #expect(w.expCmdSN == 12)
    }

    /// ABORT TASK for a command that never arrived: its CmdSN counts as received when it lies in the window
    /// before the request's own; ExpCmdSN passes it only when it was the gap.
    @Test func abortOfAMissingCommand() {
        var w = CmdSNWindow(expCmdSN: 10, advertisedMaxCmdSN: 41)
        let ahead = w.receivedInPlaceOfMissing(12, before: 14)
        #expect(ahead && w.expCmdSN == 10)
        let atTheGap = w.receivedInPlaceOfMissing(10, before: 14)
        #expect(atTheGap && w.expCmdSN == 11)
        let done = w.receivedInPlaceOfMissing(9, before: 14)
        let notBefore = w.receivedInPlaceOfMissing(14, before: 14)
        let outside = w.receivedInPlaceOfMissing(42, before: 50)
        #expect(!done, "already done")
        #expect(!notBefore, "not before the request")
        #expect(!outside, "outside the window")
        #expect(w.expCmdSN == 11)
    }
}
