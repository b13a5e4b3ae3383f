import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import SCSITestSupport

@Test func nexusPortNamesFollowRFC7143() {
    let n = Nexus(initiatorName: "iqn.2026-01.test:init", isid: 0x23D000000001, targetName: "iqn.t", portalGroupTag: 1, relativeTargetPortID: 1)
    #expect(n.initiatorPortName == "iqn.2026-01.test:init,i,0x23d000000001")
    #expect(n.targetPortName == "iqn.t,t,0x0001")
}
