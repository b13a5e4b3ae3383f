// A new session of an initiator port (and a new NBD connection to an export) starts only after the old one's
// commands at the store ended: otherwise a write of the dead session can land after a newer one (found by the
// ring simulation, sheep seeds 0x1 and 0x5eed; see Tests/SimulationTests).

import Logging
import Testing
@testable import Reactor

@Suite struct SessionDrain {
    let runtime = Runtime(config: ReactorConfig(), portals: [], logger: Logger(label: "drain-test"))

    @Test func aSessionWaitsForTheOldOneAndForItsCommandsStillRunning() {
        let i = "iqn.1994-05.com.redhat:host", t = "iqn.2026-12.org.ringtgt:disk"
        #expect(runtime.sessionMayStart(initiator: i, isid: 1, targetName: t, closeOld: false))
        runtime.registerSession(initiator: i, isid: 1, targetName: t, core: 0, tsih: 5)
        #expect(!runtime.sessionMayStart(initiator: i, isid: 1, targetName: t, closeOld: false), "the old session is still live")
        #expect(runtime.sessionMayStart(initiator: i, isid: 2, targetName: t, closeOld: false), "another initiator port is not held")
        runtime.unregisterSession(initiator: i, isid: 1, targetName: t, tsih: 5, stillRunning: true)
        #expect(!runtime.sessionMayStart(initiator: i.uppercased(), isid: 1, targetName: t, closeOld: false), "its commands still run")
        runtime.endDraining(initiator: i, isid: 1, targetName: t)
        #expect(runtime.sessionMayStart(initiator: i, isid: 1, targetName: t, closeOld: false))
    }

    @Test func anNBDConnectionWaitsForClosedConnectionsOnItsExport() {
        runtime.exportDraining(tid: 1, lun: 1, ended: false)
        runtime.exportDraining(tid: 1, lun: 1, ended: false)
        #expect(!runtime.exportMayStart(tid: 1, lun: 1))
        #expect(runtime.exportMayStart(tid: 1, lun: 2))
        runtime.exportDraining(tid: 1, lun: 1, ended: true)
        #expect(!runtime.exportMayStart(tid: 1, lun: 1), "one of two closed connections still has commands")
        runtime.exportDraining(tid: 1, lun: 1, ended: true)
        #expect(runtime.exportMayStart(tid: 1, lun: 1))
    }
}
