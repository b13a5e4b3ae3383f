/// What becomes of an arriving SCSI Command (RFC 7143 §3.2.2.1 for CmdSN, §10.3 for immediate data).
import Floor
import ISCSIWire
import SCSI
public enum CommandVerdict: Equatable {
    /// Non-immediate with a CmdSN outside [ExpCmdSN, MaxCmdSN]: dropped without an answer.
    case drop
    /// An extended CDB ahead of its turn: a waiting command keeps at most 32 CDB bytes. Reject.
    case rejectExtendedCDB
    /// Immediate data that was not negotiated or not allowed for this command: Reject.
    case rejectImmediateData
    /// Immediate, or its CmdSN is ExpCmdSN: runs now.
    case run
    /// Ahead of ExpCmdSN, no data: waits for its turn holding no buffer slot.
    case park
    /// Ahead of ExpCmdSN with immediate data, which cannot be asked for again: waits keeping its slot.
    case parkWithData
    /// As parkWithData, but the connection or core already keeps its bound of parked data: answered TASK SET
    /// FULL now. Its CmdSN still counts as received, so ExpCmdSN passes it when the gap before it fills.
    case refuseParkedData
}

/// The fields of a SCSI Command PDU that decide where it goes.
public struct CommandArrival {
    @usableFromInline var immediate: Bool
    @usableFromInline var cmdSN: UInt32
    @usableFromInline var dataLength: Int
    @usableFromInline var writeBit: Bool
    @usableFromInline var edtl: UInt32
    @usableFromInline var cdbLength: Int

    @inlinable
    public init(immediate: Bool, cmdSN: UInt32, dataLength: Int, writeBit: Bool, edtl: UInt32, cdbLength: Int) {
        self.immediate = immediate
        self.cmdSN = cmdSN
        self.dataLength = dataLength
        self.writeBit = writeBit
        self.edtl = edtl
        self.cdbLength = cdbLength
    }

    /// Whether the command takes a buffer slot as its header arrives: its data lands there, or it may run at
    /// once. A command without data that arrives ahead of its turn takes one only when its turn comes, so
    /// commands behind a CmdSN gap cannot hold a core's buffers.
    @inline(__always)
    func needsSlotOnArrival(_ window: CmdSNWindow) -> Bool {
        immediate || dataLength > 0 || window.isNext(cmdSN)
    }

    /// `position` is `CmdSNWindow.position(of: cmdSN, immediate: immediate)`.
    @inlinable public func verdict(position: CmdSNPosition, immediateData: Bool, firstBurst: Int, mayParkData: Bool) -> CommandVerdict {
        if position == .outside { return .drop }
        let now = position != .ahead
        if cdbLength > 32 && !now { return .rejectExtendedCDB }
        if dataLength > 0 && (!immediateData || !writeBit || dataLength > firstBurst || dataLength > Int(edtl)) {
            return .rejectImmediateData
        }
        if now { return .run }
        if dataLength == 0 { return .park }
        return mayParkData ? .parkWithData : .refuseParkedData
    }
}

/// How long the gap at ExpCmdSN has lasted: commands wait behind a CmdSN that has not arrived. RFC 7143
/// §3.2.2.1 lets a target wait for it, but on a session of one connection (MaxConnections=1) only a lost or
/// aborted command leaves one, and it does not fill by itself: like LIO, end the session when it lasts.
public struct CmdSNGapWatch {
    private enum State: Equatable {
        case none
        case open(expCmdSN: UInt32, sinceTick: UInt64)
    }
    private var state = State.none

    public init() {}

    /// Called once a tick with the number of commands waiting behind the gap. True when the same gap (no
    /// progress of ExpCmdSN) has lasted more than `limitSeconds`.
    public mutating func expired(waiting: Int, expCmdSN: UInt32, tick: UInt64, limitSeconds: UInt64) -> Bool {
        guard waiting > 0 else {
            state = .none
            return false
        }
        if case .open(let sn, let since) = state, sn == expCmdSN {
            return tick &- since > limitSeconds
        }
        state = .open(expCmdSN: expCmdSN, sinceTick: tick)
        return false
    }
}
