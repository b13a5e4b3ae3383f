import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import ISCSI

/// Task management decisions (RFC 7143 §11.5-11.6) without a socket: what each function reaches and the
/// answer for a task in every state.
@Suite struct TaskManagementTests {
    private func plan(_ function: UInt8, lunExists: Bool = true, sessionBound: Bool = true) -> TaskManagementPlan {
        TaskManagement.plan(function: function, referencedTask: 0x42, lunNumber: 3, lunExists: lunExists,
                            sessionBound: sessionBound)
    }

    /// A task in each state, from arrival to done: the effect of an abort, and whether ABORT TASK finds it.
    @Test func abortOfATaskInEveryState() {
        let expected: [(TaskState, AbortEffect, Bool)] = [
            (.free, .none, false),                                   // done, or never arrived
            (.arriving, .releaseNow(leavePermitQueue: false), true),
            (.waitingOrder, .keepOnlyCmdSN, true),                   // parked by CmdSN
            (.orderMarker, .none, false),                            // refused or aborted while parked
            (.waitingSlot, .releaseNow(leavePermitQueue: false), true),
            (.waitingPermit, .releaseNow(leavePermitQueue: true), true),
            (.waitingGate, .releaseNow(leavePermitQueue: false), true),
            (.receivingData, .releaseNow(leavePermitQueue: false), true),   // awaiting Data-Out
            (.storeIO, .releaseWhenIOEnds, true),                    // at the store
            (.sendingData, .releaseWhenIOEnds, true),                // sending Data-In
            (.waitingOutSpace, .releaseNow(leavePermitQueue: false), true),
            (.finishing, .releaseWhenIOEnds, true),                  // status queued
        ]
        for (state, effect, found) in expected {
            #expect(TaskManagement.abortEffect(of: state) == effect, "\(state)")
            #expect(TaskManagement.reaches(.task(itt: 0x42), state: state, itt: 0x42, lunNumber: 3) == found, "\(state)")
            #expect(!TaskManagement.reaches(.task(itt: 0x43), state: state, itt: 0x42, lunNumber: 3), "\(state)")
        }
    }

    /// A task that has not arrived: its RefCmdSN in the window before the request counts it received; one
    /// already done (behind ExpCmdSN) or beyond the window does not exist.
    @Test func abortOfATaskThatHasNotArrived() {
        var w = CmdSNWindow(expCmdSN: 10, advertisedMaxCmdSN: 41)
        let atTheGap = TaskManagement.responseForMissingTask(refCmdSN: 10, requestCmdSN: 12, window: &w)
        #expect(atTheGap == TMResponse.functionComplete && w.expCmdSN == 11)
        let done = TaskManagement.responseForMissingTask(refCmdSN: 9, requestCmdSN: 12, window: &w)
        let beyond = TaskManagement.responseForMissingTask(refCmdSN: 60, requestCmdSN: 61, window: &w)
        #expect(done == TMResponse.taskDoesNotExist && beyond == TMResponse.taskDoesNotExist && w.expCmdSN == 11)
    }

    @Test func setAndResetFunctionsReachTheirLUNOrEverything() {
        for f in [TMFunction.abortTaskSet, TMFunction.clearTaskSet, TMFunction.logicalUnitReset] {
            let scope = plan(f).scope
            #expect(scope == .lun(3))
            #expect(TaskManagement.reaches(scope, state: .orderMarker, itt: 1, lunNumber: 3), "markers on the LUN go too")
            #expect(!TaskManagement.reaches(scope, state: .storeIO, itt: 1, lunNumber: 4))
            #expect(!TaskManagement.reaches(scope, state: .free, itt: 1, lunNumber: 3))
        }
        #expect(plan(TMFunction.logicalUnitReset).reset == .logicalUnit(3))
        for f in [TMFunction.targetWarmReset, TMFunction.targetColdReset] {
            let p = plan(f)
            #expect(p.scope == .all && p.reset == .target && p.response == TMResponse.functionComplete)
            #expect(p.closesSession == (f == TMFunction.targetColdReset))
            #expect(TaskManagement.reaches(p.scope, state: .receivingData, itt: 7, lunNumber: 9))
        }
    }

    @Test func refusedFunctionsReachNoTask() {
        let cases: [(TaskManagementPlan, UInt8)] = [
            (plan(TMFunction.abortTaskSet, lunExists: false), TMResponse.lunDoesNotExist),
            (plan(TMFunction.clearTaskSet, lunExists: false), TMResponse.lunDoesNotExist),
            (plan(TMFunction.logicalUnitReset, lunExists: false), TMResponse.lunDoesNotExist),
            (plan(TMFunction.logicalUnitReset, sessionBound: false), TMResponse.lunDoesNotExist),
            (plan(TMFunction.targetWarmReset, sessionBound: false), TMResponse.authorizationFailed),
            (plan(TMFunction.targetColdReset, sessionBound: false), TMResponse.authorizationFailed),
            (plan(TMFunction.clearACA), TMResponse.functionNotSupported),
            (plan(TMFunction.taskReassign), TMResponse.functionNotSupported),
            (plan(0x7F), TMResponse.functionRejected),
        ]
        for (p, response) in cases {
            #expect(p.scope == .none && p.reset == .none && !p.closesSession && p.response == response)
        }
        #expect(plan(TMFunction.abortTask).scope == .task(itt: 0x42))
    }
}
