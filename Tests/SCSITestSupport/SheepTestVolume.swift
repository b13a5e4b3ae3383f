// A sheep volume for tests that need one without sheep: the home core's machine tests (SCSITests) and the
// control layer's multipath tests (TargetTests). Debug only, as the harness beside it.
#if DEBUG
@testable import Store
import SheepProtocol

/// VDI "vol" at /nonexistent (nothing connects to it), 4 MiB objects, 2 copies, `slots` index slots in
/// `index`, home core 0; locked by `vid` when `locked` (the shared lock multipath takes).
public func makeTestSheepVolume(index: UnsafeMutablePointer<UInt32>, slots: Int, vid: UInt32, locked: Bool,
                                hyper: SheepHyperIndex? = nil, coherent: Bool) -> SheepVolume {
    SheepVolume(spec: SheepBackingSpec(endpoint: .unix(path: "/nonexistent"), vdi: "vol"), name: "vol",
                byteCount: UInt64(slots) << 22, objectShift: 22, copies: 2, readOnly: false,
                lockedVID: locked ? vid : 0, vid: vid, homeCore: 0, endpointIndex: 0, index: index,
                indexSlots: slots, hyper: hyper, coherent: coherent)
}
#endif
