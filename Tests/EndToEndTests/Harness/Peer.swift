// Which daemon the end-to-end tests drive. Normally ringtgtd; RINGTGT_E2E_PEER=tgt runs the same
// tests against Debian's tgtd, which is how the tool invocations and parsers were validated before
// ringtgtd existed (and it shows where tgt falls short).

import Foundation

extension Peer {
    static var current: Peer {
        ProcessInfo.processInfo.environment["RINGTGT_E2E_PEER"] == "tgt" ? .tgt : .ringtgt
    }

    /// What the tests expect to see from this daemon where the two legitimately differ.
    var traits: PeerTraits {
        switch self {
        case .ringtgt:
            return PeerTraits(vendor: "RINGTGT", product: "VIRTUAL-DISK", thinProvisioned: true,
                              advertisesTargetPortDesignator: true, honoursAllPortals: true,
                              nullLUNFixedBytes: nil)
        case .tgt:
            // tgt: "IET" vendor, no thin provisioning on rdwr by default, only the last --iscsi
            // portal= option counts, and its null store is always 1 TiB.
            return PeerTraits(vendor: "IET", product: "VIRTUAL-DISK", thinProvisioned: false,
                              advertisesTargetPortDesignator: false, honoursAllPortals: false,
                              nullLUNFixedBytes: 1 << 40)
        }
    }
}

struct PeerTraits {
    /// INQUIRY T10 vendor and product identification, without the space padding.
    let vendor: String
    let product: String
    /// File LUNs advertise logical block provisioning (READ CAPACITY 16 LBPME, VPD 0xB2 LBPU).
    let thinProvisioned: Bool
    /// VPD 0x83 carries a designator with TARGET_PORT association besides the LU's NAA.
    let advertisesTargetPortDesignator: Bool
    /// Every `--iscsi portal=` option opens a listener.
    let honoursAllPortals: Bool
    /// A null LUN's size when the daemon ignores the size the test asked for.
    let nullLUNFixedBytes: Int64?
}
