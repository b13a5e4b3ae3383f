
/// Where a PDU's CmdSN lies against the session's window (RFC 7143 §3.2.2.1).
import Floor
import ISCSIWire
import SCSI
public enum CmdSNPosition: Equatable {
    /// The I bit is set: delivered at once, takes no CmdSN turn.
    case immediate
    /// Its CmdSN is ExpCmdSN and inside the window: its turn is now.
    case next
    /// Inside the window but ahead of ExpCmdSN: waits for the gap before it to fill.
    case ahead
    /// Outside [ExpCmdSN, MaxCmdSN] (a duplicate, or beyond what was advertised): dropped without an answer.
    case outside
}

/// The session's CmdSN window: ExpCmdSN and the highest MaxCmdSN advertised, in serial-number arithmetic so it
/// wraps at 2^32. Every PDU that carries a CmdSN is judged and counted here, and nowhere else.
public struct CmdSNWindow {
    /// The next CmdSN expected in order; the turns before it have been taken.
    public private(set) var expCmdSN: UInt32 = 0
    /// The highest MaxCmdSN stamped into a PDU so far. Initiators never shrink their window (RFC 7143
    /// §3.2.2.1: a lower MaxCmdSN is ignored), so every CmdSN up to this one must be accepted.
    private(set) var advertisedMaxCmdSN: UInt32 = 0

    public init() {}

    /// For tests, and for a session resumed at a known point.
    init(expCmdSN: UInt32, advertisedMaxCmdSN: UInt32) {
        self.expCmdSN = expCmdSN
        self.advertisedMaxCmdSN = advertisedMaxCmdSN
    }

    /// The first Login Request fixes the numbering (RFC 7143 §11.12.7-8). The window stays empty until a
    /// response advertises one.
    public mutating func begin(at cmdSN: UInt32) {
        expCmdSN = cmdSN
        advertisedMaxCmdSN = cmdSN &- 1
    }

    /// Judged against the window the initiator was given, not the one `maxCmdSN(freeEntries:)` would give now:
    /// that one already counts the arriving command's own task entry, and shrinks while responses wait to be
    /// sent, so a command sent at the edge of the advertised window would be dropped and never answered.
    @inline(__always)
    func contains(_ sn: UInt32) -> Bool {
        Serial.inWindow(sn, low: expCmdSN, high: advertisedMaxCmdSN)
    }

    @inline(__always)
    public func isNext(_ sn: UInt32) -> Bool { sn == expCmdSN }

    /// Where a SCSI Command (or any PDU judged as strictly) lies.
    @inline(__always)
    public func position(of sn: UInt32, immediate: Bool) -> CmdSNPosition {
        if immediate { return .immediate }
        if !contains(sn) { return .outside }
        return sn == expCmdSN ? .next : .ahead
    }

    /// The PDU at `position` was received: a turn at ExpCmdSN is used up, any other leaves it where it is.
    @inline(__always)
    public mutating func received(_ position: CmdSNPosition) {
        if position == .next { expCmdSN &+= 1 }
    }

    /// NOP-Out, Text, Task Management and Logout: a non-immediate one whose CmdSN is ExpCmdSN takes its turn,
    /// whatever the advertised edge says (an initiator that filled the window exactly may send one before a
    /// response widens it); immediate ones and any other CmdSN leave ExpCmdSN alone.
    @inline(__always)
    public mutating func receivedNonCommand(_ sn: UInt32, immediate: Bool) {
        if !immediate && sn == expCmdSN { expCmdSN &+= 1 }
    }

    /// A command parked behind the gap (or the marker of one refused or aborted there) takes its turn now.
    @inline(__always)
    public mutating func advance() {
        expCmdSN &+= 1
    }

    /// ABORT TASK for a task that never arrived (RFC 7143 §11.5.1): a RefCmdSN inside the window and before the
    /// request's own CmdSN names a command that, on our one ordered connection, never will; it counts as
    /// received so the commands behind it run. False for any other RefCmdSN (already done, or outside).
    mutating func receivedInPlaceOfMissing(_ refCmdSN: UInt32, before cmdSN: UInt32) -> Bool {
        guard contains(refCmdSN) && Serial.lessThan(refCmdSN, cmdSN) else { return false }
        if refCmdSN == expCmdSN { expCmdSN &+= 1 }
        return true
    }

    /// MaxCmdSN = ExpCmdSN + free command entries - 1: an initiator can never have more commands outstanding
    /// than we have task entries (ExpCmdSN advances on receipt, not on completion).
    @inline(__always)
    func maxCmdSN(freeEntries: Int) -> UInt32 {
        expCmdSN &+ UInt32(max(0, freeEntries)) &- 1
    }

    /// The MaxCmdSN to stamp into an outgoing PDU; the advertised edge only ever grows.
    @inline(__always)
    public mutating func advertise(freeEntries: Int) -> UInt32 {
        let max = maxCmdSN(freeEntries: freeEntries)
        if Serial.greaterThan(max, advertisedMaxCmdSN) { advertisedMaxCmdSN = max }
        return max
    }
}
