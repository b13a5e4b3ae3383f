// What the control plane sees of the runtime: the sessions and portals it lists, and the `ControlFabric`
// the runtime (Runtime.swift) implements for it. Here, below Control, so that the control plane depends on
// the reactor layer and not the other way round (issue 9). Called only from the control thread.

/// One iSCSI session as `--op show --mode target` lists it under "I_T nexus information".
import Floor
import URing
import ISCSIWire
import Store
import SCSI
import ISCSI
import NBD
public struct SessionInfo: Equatable, Sendable {
    public struct Connection: Equatable, Sendable {
        public var cid: UInt32
        /// The peer's numeric address without port, e.g. "127.0.0.1" or "::1" (tgt prints
        /// getnameinfo(NI_NUMERICHOST) of the peer).
        public var peerAddress: String

        public init(cid: UInt32, peerAddress: String) {
            self.cid = cid
            self.peerAddress = peerAddress
        }
    }

    public var tid: Int
    /// The I_T nexus id tgt prints ("I_T nexus: N"); tgt uses the session's TSIH.
    public var sid: UInt64
    public var initiatorName: String
    public var initiatorAlias: String?
    /// "<name>,i,0x<isid>" (Nexus.initiatorPortName).
    public var initiatorPortName: String
    public var tsih: UInt16
    public var connections: [Connection]

    public init(tid: Int, sid: UInt64, initiatorName: String, initiatorAlias: String? = nil,
                initiatorPortName: String, tsih: UInt16, connections: [Connection]) {
        self.tid = tid
        self.sid = sid
        self.initiatorName = initiatorName
        self.initiatorAlias = initiatorAlias
        self.initiatorPortName = initiatorPortName
        self.tsih = tsih
        self.connections = connections
    }
}

/// A listening portal as `--op show --mode portal` prints it ("Portal: host:port,tpgt").
public struct PortalInfo: Equatable, Sendable {
    public var host: String
    /// The bound port (the real one when the daemon was asked for port 0).
    public var port: Int
    public var portalGroupTag: UInt16
    /// A unix-domain listener's path (`--nbd unix=PATH`), shown as `unix:PATH`.
    public var unixPath: String?

    public init(host: String, port: Int, portalGroupTag: UInt16, unixPath: String? = nil) {
        self.host = host
        self.port = port
        self.portalGroupTag = portalGroupTag
        self.unixPath = unixPath
    }
}

/// The daemon's runtime, as the control plane sees it.
public protocol ControlFabric: AnyObject {
    /// Hands a new configuration to every core. Returns once every core has switched to it, so that
    /// the caller may then release what the old snapshot alone referenced (a deleted LUN's backing).
    func publish(_ snapshot: ConfigSnapshot)
    /// Sessions that are logged in now (full-feature phase), on every core.
    func sessions() -> [SessionInfo]
    /// Commands in flight on any of these logical units, on every core. tgt refuses to delete a LUN that has
    /// commands queued; after a forced delete the control plane waits for this to reach 0 before it closes
    /// what the store holds outside the process (a sheepdog VDI lock).
    func commandsInFlight(on units: [LogicalUnit]) -> Int
    /// The portals the daemon listens on.
    func portals() -> [PortalInfo]
    /// The NBD listeners (`--nbd portal=`), shown by `--lld nbd --op show --mode portal`.
    func nbdPortals() -> [PortalInfo]
    /// Every core's counters for `units` (summed per LUN, in that order) and for each logged-in connection.
    func statistics(of units: [LogicalUnit]) -> StatisticsSample
    /// A multipath sheep LU's target port groups changed on this daemon (its ports and groups, or a group's
    /// state): the change goes into the record the gateways share (docs/ALUA.md). Returns at once.
    func sharePortGroups(_ unit: LogicalUnit, _ change: PortGroupChange)
}

extension ControlFabric {
    public func sharePortGroups(_ unit: LogicalUnit, _ change: PortGroupChange) {}
    public func nbdPortals() -> [PortalInfo] { [] }
    public func statistics(of units: [LogicalUnit]) -> StatisticsSample {
        StatisticsSample(luns: units.map { _ in LUNStatistics() }, connections: [])
    }
}
