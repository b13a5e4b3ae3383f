import Testing
@testable import Target

/// The LUN lifetime rule on one connection (ISCSI/TargetPins.swift): a target stays alive while tasks that
/// pinned it are in flight, and not longer.
@Suite struct TargetPinsTests {
    static func target(_ tid: Int) -> TargetRuntime {
        TargetRuntime(tid: tid, name: "iqn.2026-01.test:t\(tid)", luns: [], acl: [.all], params: [:], lunGeneration: 1)
    }

    @Test func aReplacedTargetLivesUntilItsLastTaskEnds() {
        var pins = TargetPins()
        var first: TargetRuntime? = TargetPinsTests.target(1)
        weak let watch = first
        pins.replace(first)
        first = nil
        let a = pins.pin(), b = pins.pin()
        pins.replace(TargetPinsTests.target(2))
        #expect(watch != nil, "freed with two tasks in flight")
        #expect(pins.retiredTargets == 1 && pins.pinnedTasks == 2)
        pins.unpin(a)
        #expect(watch != nil, "freed with one task in flight")
        pins.unpin(b)
        #expect(watch == nil, "kept after its last task ended")
        #expect(pins.retiredTargets == 0 && pins.pinnedTasks == 0)
    }

    @Test func aTargetWithNoTaskIsLetGoAtOnce() {
        var pins = TargetPins()
        var first: TargetRuntime? = TargetPinsTests.target(1)
        weak let watch = first
        pins.replace(first)
        first = nil
        let e = pins.pin()
        pins.unpin(e)
        pins.replace(TargetPinsTests.target(2))
        #expect(watch == nil)
        #expect(pins.retiredTargets == 0)
    }

    @Test func tasksOfSeveralEpochsEachHoldTheirOwn() {
        var pins = TargetPins()
        var watches: [() -> TargetRuntime?] = []
        var epochs: [UInt32] = []
        for tid in 1...4 {
            var t: TargetRuntime? = TargetPinsTests.target(tid)
            weak let w = t
            watches.append { w }
            pins.replace(t)
            t = nil
            epochs.append(pins.pin())
        }
        pins.replace(nil)
        #expect(pins.retiredTargets == 4 && pins.pinnedTasks == 4)
        // Out of order: the second epoch's task ends first.
        pins.unpin(epochs[1])
        #expect(watches[1]() == nil && watches[0]() != nil && watches[2]() != nil && watches[3]() != nil)
        for e in [epochs[3], epochs[0], epochs[2]] { pins.unpin(e) }
        #expect(watches.allSatisfy { $0() == nil })
        #expect(pins.pinnedTasks == 0 && pins.current == nil)
    }
}
