// What the control plane needs to open backing stores: `BackingSpec` in, `OpenedBacking` out, through a
// `BackingOpener` (StoreOpener.swift). What it needs from the runtime, `ControlFabric`, is in
// Reactor/FabricInterface.swift. Both are called only from the control thread, never from a reactor, so they
// may block and allocate.

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
