import Testing
@testable import ISCSIWire
@testable import ISCSI
@testable import Reactor

/// Where an arriving SCSI Command goes (RFC 7143 §3.2.2.1, §10.3), how long a CmdSN gap may last, and the
/// task queues, without a socket.
@Suite struct CommandOrderTests {
    private func arrival(immediate: Bool = false, cmdSN: UInt32 = 10, dataLength: Int = 0, writeBit: Bool = false,
                         edtl: UInt32 = 4096, cdbLength: Int = 16) -> CommandArrival {
        CommandArrival(immediate: immediate, cmdSN: cmdSN, dataLength: dataLength, writeBit: writeBit, edtl: edtl,
                       cdbLength: cdbLength)
    }

    /// ExpCmdSN 10, MaxCmdSN 41 advertised.
    private let window = CmdSNWindow(expCmdSN: 10, advertisedMaxCmdSN: 41)

    private func verdict(_ a: CommandArrival, immediateData: Bool = true, firstBurst: Int = 65536,
                         mayParkData: Bool = true) -> CommandVerdict {
        a.verdict(position: window.position(of: a.cmdSN, immediate: a.immediate), immediateData: immediateData,
                  firstBurst: firstBurst, mayParkData: mayParkData)
    }

    @Test func inOrderAndImmediateCommandsRun() {
        #expect(verdict(arrival()) == .run)
        #expect(verdict(arrival(immediate: true, cmdSN: 99)) == .run)
        #expect(verdict(arrival(dataLength: 4096, writeBit: true)) == .run)
        #expect(verdict(arrival(cdbLength: 260)) == .run)
    }

    @Test func outOfWindowCommandsAreDropped() {
        #expect(verdict(arrival(cmdSN: 9)) == .drop)
        #expect(verdict(arrival(cmdSN: 500, dataLength: 4096, writeBit: true)) == .drop)
    }

    /// Each way immediate data can be refused, in order and ahead of the gap.
    @Test func refusedImmediateDataIsRejected() {
        for sn: UInt32 in [10, 12] {
            #expect(verdict(arrival(cmdSN: sn, dataLength: 512, writeBit: false)) == .rejectImmediateData, "no W bit")
            #expect(verdict(arrival(cmdSN: sn, dataLength: 1024, writeBit: true), firstBurst: 512) == .rejectImmediateData,
                    "beyond FirstBurstLength")
            #expect(verdict(arrival(cmdSN: sn, dataLength: 512, writeBit: true, edtl: 256)) == .rejectImmediateData,
                    "beyond the expected transfer length")
            #expect(verdict(arrival(cmdSN: sn, dataLength: 512, writeBit: true), immediateData: false) == .rejectImmediateData,
                    "ImmediateData=No")
        }
        #expect(verdict(arrival(dataLength: 512, writeBit: true, edtl: 512), firstBurst: 512) == .run)
    }

    @Test func commandsAheadOfTheGapPark() {
        #expect(verdict(arrival(cmdSN: 11)) == .park)
        #expect(verdict(arrival(cmdSN: 11, cdbLength: 32)) == .park)
        #expect(verdict(arrival(cmdSN: 11, cdbLength: 36)) == .rejectExtendedCDB)
        #expect(verdict(arrival(cmdSN: 11, dataLength: 4096, writeBit: true)) == .parkWithData)
        #expect(verdict(arrival(cmdSN: 11, dataLength: 4096, writeBit: true), mayParkData: false) == .refuseParkedData)
        // With no data there is nothing to keep: the bound on parked data does not apply.
        #expect(verdict(arrival(cmdSN: 11), mayParkData: false) == .park)
    }

    /// Only a command whose data lands in a buffer, or that may run at once, takes a slot as it arrives.
    @Test func onlyCommandsThatMayRunOrCarryDataTakeASlotOnArrival() {
        #expect(arrival(cmdSN: 10).needsSlotOnArrival(window))
        #expect(arrival(immediate: true, cmdSN: 12).needsSlotOnArrival(window))
        #expect(arrival(cmdSN: 12, dataLength: 512, writeBit: true).needsSlotOnArrival(window))
        #expect(!arrival(cmdSN: 12).needsSlotOnArrival(window))
        #expect(!arrival(cmdSN: 9).needsSlotOnArrival(window))
    }

    /// Feeds (commands waiting, ExpCmdSN, tick) to a new watch with a 20 s limit; returns its answers.
    private func watch(_ ticks: [(Int, UInt32, UInt64)]) -> [Bool] {
        var w = CmdSNGapWatch()
        return ticks.map { w.expired(waiting: $0.0, expCmdSN: $0.1, tick: $0.2, limitSeconds: 20) }
    }

    @Test func aGapExpiresOnlyWhenItLastsBeyondTheLimit() {
        // Seen at tick 101: still allowed 20 s later, expired the tick after.
        #expect(watch([(0, 5, 100), (3, 5, 101), (3, 5, 121), (3, 5, 122)]) == [false, false, false, true])
    }

    @Test func progressOrAnEmptyGapRestartsTheClock() {
        // ExpCmdSN moved: a new gap (or the same commands behind a later missing CmdSN) starts its own clock.
        #expect(watch([(3, 5, 0), (2, 6, 15), (2, 6, 35), (2, 6, 36)]) == [false, false, false, true])
        // Nothing waited in between: no gap, whatever ExpCmdSN is.
        #expect(watch([(3, 6, 0), (0, 6, 10), (1, 6, 11), (1, 6, 31), (1, 6, 32)]) == [false, false, false, false, true])
    }

    @Test func taskQueuesKeepOrderAndUnlinkAnywhere() {
        let tasks = UnsafeMutablePointer<IOTask>.allocate(capacity: 8)
        tasks.initialize(repeating: IOTask(), count: 8)
        defer { tasks.deinitialize(count: 8); tasks.deallocate() }
        var q = TaskQueue()
        #expect(q.isEmpty)
        for t in [3, 5, 1, 7] { q.push(t, tasks) }
        q.remove(5, tasks)   // middle
        q.remove(7, tasks)   // tail
        q.remove(6, tasks)   // not there
        q.push(2, tasks)
        var order: [Int] = []
        while !q.isEmpty { order.append(q.pop(tasks)) }
        #expect(order == [3, 1, 2])
        q.push(4, tasks)
        q.remove(4, tasks)   // the only one
        #expect(q.isEmpty)
        q.push(0, tasks)
        #expect(q.pop(tasks) == 0 && q.isEmpty)
    }
}
