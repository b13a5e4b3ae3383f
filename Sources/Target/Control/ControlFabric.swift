// What the control plane needs from the rest of the daemon. The runtime (reactors) implements
// ControlFabric; the Store layer implements BackingOpener. Both are called only from the control
// thread, never from a reactor, so they may block and allocate.

/// One iSCSI session as `--op show --mode target` lists it under "I_T nexus information".
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

/// tgt's `--bsoflags`: "sync", "direct" or "sync:direct".
public struct BackingOpenFlags: OptionSet, Codable, Hashable, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let sync = BackingOpenFlags(rawValue: 1)
    public static let direct = BackingOpenFlags(rawValue: 2)

    /// str_to_open_flags in tgt's util.c: a colon-separated list of "sync" and "direct".
    public static func parse(_ text: String) -> BackingOpenFlags? {
        var flags: BackingOpenFlags = []
        for item in text.split(separator: ":", omittingEmptySubsequences: false) {
            switch item {
            case "sync": flags.insert(.sync)
            case "direct": flags.insert(.direct)
            default: return nil
            }
        }
        return flags
    }

    /// open_flags_to_str: "" when empty, as `show` prints it ("Backing store flags: ").
    public var text: String {
        var parts: [String] = []
        if contains(.sync) { parts.append("sync") }
        if contains(.direct) { parts.append("direct") }
        return parts.joined(separator: ":")
    }
}

/// Everything the admin said about a LUN's backing store. The store layer interprets `bstype`, `path`
/// and `options`; the control plane only checks the generic fields.
public struct BackingSpec: Equatable, Sendable {
    public var tid: Int
    public var lun: UInt64
    /// `--bstype`; "rdwr" when the admin gave none (tgt's iSCSI default backing store).
    public var bstype: String
    /// `--backing-store`: a file or device path, "/dev/null" for null, or a sheepdog spec
    /// ("unix:PATH:VDI[:TAG|:SNAPID]", "tcp:HOST:PORT:VDI[...]").
    public var path: String
    /// `--bsopts` exactly as given (nil when absent).
    public var rawOptions: String?
    /// `--bsopts` split into key=value pairs on ';' (tgt's separator inside bsopts, since ',' already
    /// separates request fields), e.g. `--bsopts "size=1G"` for null.
    public var options: [String: String]
    public var openFlags: BackingOpenFlags
    /// 512 or 4096.
    public var blockSize: Int
    /// `--params readonly=1`: open read-only and refuse writes.
    public var readOnly: Bool

    public init(tid: Int, lun: UInt64, bstype: String, path: String, rawOptions: String? = nil,
                options: [String: String] = [:], openFlags: BackingOpenFlags = [], blockSize: Int = 512,
                readOnly: Bool = false) {
        self.tid = tid
        self.lun = lun
        self.bstype = bstype
        self.path = path
        self.rawOptions = rawOptions
        self.options = options
        self.openFlags = openFlags
        self.blockSize = blockSize
        self.readOnly = readOnly
    }
}

/// An opened backing store, before the control plane wraps it in a LogicalUnit.
public struct OpenedBacking: Sendable {
    public var backing: Backing
    /// Bytes the store exposes; the LUN has byteCount / blockSize blocks.
    public var byteCount: UInt64
    public var capabilities: StoreCapabilities

    public init(backing: Backing, byteCount: UInt64, capabilities: StoreCapabilities) {
        self.backing = backing
        self.byteCount = byteCount
        self.capabilities = capabilities
    }
}

/// Opens and releases backing stores; implemented by the Store layer.
public protocol BackingOpener: AnyObject {
    /// Opens the store `spec` names. Throws AdminError (e.g. `AdminError(.invalidRequest, "open /x: No such
    /// file or directory")`) so ringtgtadm can print why; any other error is reported as "invalid request"
    /// followed by its description.
    func open(_ spec: BackingSpec) throws -> OpenedBacking
    /// Called after a snapshot without this backing was published (the LUN or its target was deleted):
    /// no core will start new I/O on it. Commands already in flight may still hold it.
    func release(_ backing: Backing)
    /// `--op show --mode sys` "Backing stores:" lines, e.g. ["rdwr (bsoflags sync:direct)", "null"].
    var backingStoreDescriptions: [String] { get }
}
