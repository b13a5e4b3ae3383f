// Task management (RFC 7143 §11.5, §11.6): ABORT TASK on a command that waits for its Data-Out, and
// the responses to the other functions, including the ones ErrorRecoveryLevel 0 does not support.

import Foundation
import ISCSIWire
import Testing

extension EndToEnd {
    @Suite("Robust: task management")
    struct RobustTaskManagement {
        static let initiator = "\(RunningTarget.iqnPrefix):tmf"

        /// Reads the TMF Response for `itt`; throws on anything else.
        static func tmfResponse(_ s: RawSession, _ itt: UInt32, _ what: String) throws -> UInt8 {
            let p = try s.expectPDU("the TMF Response to \(what)")
            guard p.opcode == ISCSIOpcode.taskManagementResponse, p.itt == itt else {
                throw E2EError("\(what): expected the TMF Response, got \(p)")
            }
            return p.byte2
        }

        /// A TEST UNIT READY after a reset may report the reset once (UNIT ATTENTION); the next is GOOD.
        static func expectReadyAfterReset(_ s: RawSession, _ what: String) throws {
            let first = try s.run(RawCDB.testUnitReady)
            if first.status != RawCodes.good {
                #expect(first.status == RawCodes.checkCondition && first.sense?.key == 0x06,
                        "\(what): the first TEST UNIT READY afterwards: \(first)")
            }
            let second = try s.run(RawCDB.testUnitReady)
            #expect(second.status == RawCodes.good, "\(what): TEST UNIT READY afterwards: \(second)")
        }

        /// ABORT TASK on a WRITE whose Data-Out never came: "function complete", no SCSI Response for the
        /// aborted command ever, its TTT is dead, and the session carries on.
        @Test func abortTaskOnAWriteWaitingForData() throws {
            try withTarget(luns: [.file(bytes: 16 * mebibyte)]) { t in
                let s = try RawSession(t.endpoint, target: t.iqn, options: RawLoginOptions(initiatorName: RobustTaskManagement.initiator))
                let data = patternBytes(8192, seed: 3)
                let writeCmdSN = s.cmdSN
                let itt = try s.sendCommand(RawCDB.write10(lba: 64, blocks: 16), writeData: data, immediateBytes: 0,
                                            serveR2T: false)
                let r2t = try s.expectPDU("R2T")
                try #require(r2t.opcode == ISCSIOpcode.r2t && r2t.itt == itt, "\(r2t)")

                let tmf = try s.sendTMF(function: TMFunction.abortTask, referencedITT: itt, refCmdSN: writeCmdSN)
                let response = try RobustTaskManagement.tmfResponse(s, tmf, "ABORT TASK")
                #expect(response == TMResponse.functionComplete, "ABORT TASK of a waiting WRITE: response \(response)")
                let after = try s.ping()
                #expect(after.isEmpty, "after ABORT TASK the target sent \(after)")

                // Data for the aborted command: its TTT is no longer valid.
                try s.sendDataOut(itt: itt, ttt: r2t.ttt, offset: 0, dataSN: 0, final: true, data: data)
                let reject = try s.expectPDU("the Reject of Data-Out for an aborted task")
                #expect(reject.opcode == ISCSIOpcode.reject && reject.byte2 == 0x09, "\(reject)")
                let quiet = try s.ping()
                #expect(!quiet.contains { $0.itt == itt }, "the aborted WRITE was answered: \(quiet)")

                // Nothing was written, and the session goes on.
                let back = try s.run(RawCDB.read10(lba: 64, blocks: 16), read: true, edtl: 8192)
                #expect(back.status == RawCodes.good && back.data == [UInt8](repeating: 0, count: 8192),
                        "the aborted WRITE changed the disk: \(back)")
                try s.writeReadVerify(lba: 64, data: data)
                #expect(s.others.isEmpty, "\(s.others)")
            }
        }

        /// ABORT TASK for a task that is not there (RFC 7143 §11.5.1): one that already completed, or whose
        /// RefCmdSN lies outside the window, "does not exist"; one whose RefCmdSN is inside the window (it
        /// was never received) completes, and the target treats that CmdSN as received, so a command the
        /// initiator sent after it, parked waiting for the gap, now runs.
        @Test func abortTaskOfACompletedLostOrUnknownTask() throws {
            try withTarget(luns: [.null(bytes: gibibyte)]) { t in
                let s = try RawSession(t.endpoint, target: t.iqn, options: RawLoginOptions(initiatorName: RobustTaskManagement.initiator))
                let doneCmdSN = s.cmdSN
                let doneITT = try s.sendCommand(RawCDB.testUnitReady)
                #expect(try s.collect([doneITT])[doneITT]!.status == RawCodes.good)
                let a = try s.sendTMF(function: TMFunction.abortTask, referencedITT: doneITT, refCmdSN: doneCmdSN)
                let ra = try RobustTaskManagement.tmfResponse(s, a, "ABORT TASK of a completed task")
                #expect(ra == TMResponse.taskDoesNotExist,
                        "ABORT TASK of a task that completed (RefCmdSN \(doneCmdSN) below ExpCmdSN): response \(ra)")

                let b = try s.sendTMF(function: TMFunction.abortTask, referencedITT: 0x00AB_CDEF,
                                      refCmdSN: s.cmdSN &+ 0x1000_0000)
                let rb = try RobustTaskManagement.tmfResponse(s, b, "ABORT TASK with a RefCmdSN outside the window")
                #expect(rb == TMResponse.taskDoesNotExist, "ABORT TASK with a RefCmdSN outside the window: response \(rb)")

                // A "lost" command: its CmdSN is taken but it is never sent. The next one waits for it.
                let lostCmdSN = s.cmdSN
                let lostITT = s.takeITT()
                s.cmdSN &+= 1
                let parked = try s.sendCommand(RawCDB.testUnitReady)
                let waiting = try s.ping()
                #expect(waiting.isEmpty, "a command behind a CmdSN gap was answered: \(waiting)")
                let c = try s.sendTMF(function: TMFunction.abortTask, referencedITT: lostITT, refCmdSN: lostCmdSN)
                let parkedResult = try s.collect([parked])[parked]!
                #expect(parkedResult.status == RawCodes.good, "the parked command after the gap was aborted: \(parkedResult)")
                var tmf = s.others.first { $0.itt == c }
                if tmf == nil { tmf = try s.expectPDU("the TMF Response to ABORT TASK of a lost command") }
                #expect(tmf?.opcode == ISCSIOpcode.taskManagementResponse && tmf?.byte2 == TMResponse.functionComplete,
                        "ABORT TASK of a command never received (RefCmdSN in the window): \(String(describing: tmf))")
                s.clearOthers()
                #expect(try s.run(RawCDB.testUnitReady).status == RawCodes.good)
                #expect(s.targetExpCmdSN == s.cmdSN, "ExpCmdSN \(s.targetExpCmdSN), next CmdSN \(s.cmdSN)")
            }
        }

        /// Every function gets an answer: the resets and ABORT TASK SET complete, a LUN that does not exist
        /// is named, unsupported and unknown functions are refused, and TARGET COLD RESET ends the connection.
        @Test func everyFunctionIsAnswered() throws {
            try withTarget(luns: [.file(bytes: 16 * mebibyte)]) { t in
                let (s, bystander) = try t.sessionWithBystander(RobustTaskManagement.initiator)
                typealias F = TMFunction
                typealias R = TMResponse
                // (function, LUN, acceptable responses, name)
                let cases: [(UInt8, UInt64, Set<UInt8>, String)] = [
                    (F.abortTaskSet, 1, [R.functionComplete], "ABORT TASK SET"),
                    (F.clearTaskSet, 1, [R.functionComplete, R.functionNotSupported], "CLEAR TASK SET"),
                    (F.logicalUnitReset, 1, [R.functionComplete], "LOGICAL UNIT RESET"),
                    (F.logicalUnitReset, 9, [R.lunDoesNotExist], "LOGICAL UNIT RESET of a missing LUN"),
                    (F.targetWarmReset, 0, [R.functionComplete], "TARGET WARM RESET"),
                    (F.clearACA, 1, [R.functionNotSupported, R.functionRejected], "CLEAR ACA"),
                    // ErrorRecoveryLevel 0: no reassignment.
                    (F.taskReassign, 1, [R.reassignmentNotSupported, R.functionNotSupported], "TASK REASSIGN"),
                    (20, 1, [R.functionRejected], "function 20"),
                    (0x7F, 1, [R.functionRejected], "function 127"),
                ]
                for (function, lun, accepted, name) in cases {
                    let itt = try s.sendTMF(function: function, lun: lun)
                    let r = try RobustTaskManagement.tmfResponse(s, itt, name)
                    #expect(accepted.contains(r), "\(name): response \(r), expected one of \(accepted.sorted())")
                    if function == F.logicalUnitReset && lun == 1 || function == F.targetWarmReset {
                        try RobustTaskManagement.expectReadyAfterReset(s, name)
                    } else {
                        #expect(try s.run(RawCDB.testUnitReady).status == RawCodes.good, "TEST UNIT READY after \(name)")
                    }
                }
                // The bystander lived through a target reset: at most one UNIT ATTENTION, then business as usual.
                try RobustTaskManagement.expectReadyAfterReset(bystander, "the bystander")
                try bystander.writeReadVerify(lba: 0, data: patternBytes(32 * 1024, seed: 1))

                // TARGET COLD RESET: answered, then the connection is closed (RFC 7143 §11.5.1; the RFC lets
                // the target drop every other session too, so the bystander is not checked afterwards).
                let cold = try s.sendTMF(function: F.targetColdReset, lun: 0)
                let rc = try RobustTaskManagement.tmfResponse(s, cold, "TARGET COLD RESET")
                #expect(rc == TMResponse.functionComplete, "TARGET COLD RESET: response \(rc)")
                #expect(s.awaitClose(timeoutSeconds: RawSessionLimits.answerTimeoutSeconds),
                        "the connection stayed open after TARGET COLD RESET")
                #expect(s.others.isEmpty, "\(s.others)")
            }
        }
    }
}
