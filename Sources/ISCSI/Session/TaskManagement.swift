/// Which tasks a task management function reaches (RFC 7143 §11.5.1).
import Floor
import ISCSIWire
import SCSI
public enum TaskManagementScope: Equatable {
    /// The function touches no task.
    case none
    /// ABORT TASK: the task with this ITT.
    case task(itt: UInt32)
    /// ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET: every task on this LUN.
    case lun(UInt64)
    /// TARGET WARM or COLD RESET: every task of the session.
    case all
}

/// The reset the SCSI layer carries out once the tasks in scope are aborted.
public enum TaskManagementReset: Equatable {
    case none
    case logicalUnit(UInt64)
    case target
}

/// What the shell does for one Task Management Function Request.
public struct TaskManagementPlan: Equatable {
    public var scope: TaskManagementScope
    public var reset: TaskManagementReset
    /// The response, unless ABORT TASK finds no task (see `TaskManagement.responseForMissingTask`).
    public var response: UInt8
    /// TARGET COLD RESET ends the session once its response is sent.
    public var closesSession: Bool
}

/// What aborting does to a task, by the state it is in.
public enum AbortEffect: Equatable {
    /// A free entry, or only the CmdSN of a command already refused or aborted: nothing to abort.
    case none
    /// Parked behind a CmdSN gap: its CmdSN was received, so it keeps only that, and the commands after it do
    /// not wait for it again.
    case keepOnlyCmdSN
    /// Holds nothing the ring or the socket uses: released now. One waiting for an R2T permit leaves the
    /// core's permit queue first.
    case releaseNow(leavePermitQueue: Bool)
    /// Its buffer is in use by the ring or the socket: released, without a response, when that ends.
    case releaseWhenIOEnds
}

/// Task management decisions (RFC 7143 §11.5-11.6) with no connection: what a function reaches, what becomes
/// of a task in each state, and the response. ErrorRecoveryLevel 0 and no NACA.
public enum TaskManagement {
    /// `lunExists`: the session's target has the addressed LUN. `sessionBound`: the session has its target
    /// and nexus (a discovery session has neither).
    public static func plan(function: UInt8, referencedTask: UInt32, lunNumber: UInt64, lunExists: Bool,
                     sessionBound: Bool) -> TaskManagementPlan {
        var plan = TaskManagementPlan(scope: .none, reset: .none, response: TMResponse.functionComplete,
                                      closesSession: false)
        switch function {
        case TMFunction.abortTask:
            plan.scope = .task(itt: referencedTask)
        case TMFunction.abortTaskSet, TMFunction.clearTaskSet:
            if lunExists { plan.scope = .lun(lunNumber) } else { plan.response = TMResponse.lunDoesNotExist }
        case TMFunction.clearACA:   // NACA is not supported
            plan.response = TMResponse.functionNotSupported
        case TMFunction.logicalUnitReset:
            if lunExists && sessionBound {
                plan.scope = .lun(lunNumber)
                plan.reset = .logicalUnit(lunNumber)
            } else {
                plan.response = TMResponse.lunDoesNotExist
            }
        case TMFunction.targetWarmReset, TMFunction.targetColdReset:
            if sessionBound {
                plan.scope = .all
                plan.reset = .target
                plan.closesSession = function == TMFunction.targetColdReset
            } else {
                plan.response = TMResponse.authorizationFailed
            }
        case TMFunction.taskReassign:   // needs ErrorRecoveryLevel 2
            plan.response = TMResponse.functionNotSupported
        default:
            plan.response = TMResponse.functionRejected
        }
        return plan
    }

    /// Whether a task in `state` with `itt` on `lunNumber` is in `scope`. ABORT TASK does not find the marker
    /// a refused or aborted command leaves: that command is over.
    @inline(__always)
    public static func reaches(_ scope: TaskManagementScope, state: TaskState, itt: UInt32, lunNumber: UInt64) -> Bool {
        guard state != .free else { return false }
        switch scope {
        case .none: return false
        case .task(let ref): return state != .orderMarker && itt == ref
        case .lun(let n): return lunNumber == n
        case .all: return true
        }
    }

    public static func abortEffect(of state: TaskState) -> AbortEffect {
        switch state {
        case .free, .orderMarker: return .none
        case .waitingOrder: return .keepOnlyCmdSN
        case .waitingPermit: return .releaseNow(leavePermitQueue: true)
        case .arriving, .waitingSlot, .receivingData, .waitingGate, .waitingOutSpace, .waitingJob:
            return .releaseNow(leavePermitQueue: false)
        case .storeIO, .sendingData, .finishing: return .releaseWhenIOEnds
        }
    }

    /// ABORT TASK found no task with the ITT: "function complete" when RefCmdSN names a command that never
    /// arrived (the window then counts it received), else "task does not exist" (RFC 7143 §11.5.1).
    public static func responseForMissingTask(refCmdSN: UInt32, requestCmdSN: UInt32, window: inout CmdSNWindow) -> UInt8 {
        window.receivedInPlaceOfMissing(refCmdSN, before: requestCmdSN)
            ? TMResponse.functionComplete : TMResponse.taskDoesNotExist
    }
}
