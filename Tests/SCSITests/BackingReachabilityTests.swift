import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import SCSITestSupport

/// A LU follows its store's reachability: nothing changes while a loss is shorter than the bound, the LU
/// turns unavailable once it is longer, and available again when the store has its data back.
@Suite struct BackingReachabilityTests {
    static func unavailable(_ s: LUNState) -> Bool { s.flags & LUNState.flagBackingUnavailable != 0 }

    @Test func aLossLongerThanTheBoundMakesTheLUUnavailableUntilItEnds() {
        let state = LUNState(blockSize: 512, blockCount: 8, capabilities: StoreCapabilities())
        let r = BackingReachability()
        state.followBacking(r)
        #expect(!Self.unavailable(state))

        r.markDown(atNanos: monotonicNanos())
        state.followBacking(r)
        #expect(!Self.unavailable(state), "a loss that just began already refuses commands")

        let bound = LUNState.unreachableSecondsBeforeUnavailable * 1_000_000_000
        r.markUp()
        r.markDown(atNanos: monotonicNanos() - bound - 1)
        r.markDown(atNanos: monotonicNanos())   // a later failure does not move the start of the loss
        state.followBacking(r)
        #expect(Self.unavailable(state), "a loss longer than the bound")

        r.markUp()
        state.followBacking(r)
        #expect(!Self.unavailable(state), "the store is back")
    }
}
