import Glibc
import Logging
import SheepProtocol

/// Opens file, null and sheepdog stores for the control plane.
public final class StoreOpener: BackingOpener {
    /// Cores a VDI's home may be placed on (asked at each open: the opener may exist before the cores start).
    let coreCount: @Sendable () -> Int
    private var nextHome = 0
    private let endpoints = Locked<[SheepBackingSpec.Endpoint]>([])

    /// Where the sheep LUNs' shared-lock claims go (SheepLockClaim); nil (in-process tests) takes none.
    public var sheepClaimDirectory: String? = nil
    /// The packaged daemon's: host-wide, so every ringtgtd on the host sees the others' claims.
    public static var defaultSheepClaimDirectory: String { SheepLockClaim.defaultDirectory }

    public init(coreCount: @escaping @Sendable () -> Int) { self.coreCount = coreCount }

    /// Each distinct sheep endpoint gets a number; every core keeps one channel per number.
    func endpointIndex(_ e: SheepBackingSpec.Endpoint) -> Int {
        endpoints.withLock { list in
            if let i = list.firstIndex(of: e) { return i }
            list.append(e)
            return list.count - 1
        }
    }

    public func open(_ spec: BackingSpec) throws -> OpenedBacking {
        if spec.bstype == "sheepdog" {
            // Home cores are dealt out round-robin, so several VDIs spread their metadata work.
            let home = nextHome % max(1, coreCount())
            nextHome += 1
            do {
                guard let multipath = Self.multipathOption(spec.options["multipath"]) else {
                    throw AdminError(.invalidRequest, "bsopts multipath must be on or off")
                }
                let vol = try SheepVolume.open(spec.path, homeCore: home, multipath: multipath,
                                               claimDirectory: sheepClaimDirectory,
                                               endpointIndex: endpointIndex)
                if vol.reclaimedStaleLock {
                    Logger(label: "ringtgtd").warning("sheep VDI '\(vol.name)': this node's shared lock was left by a gateway that died; released and taken again (LUN \(spec.lun) of target \(spec.tid))")
                }
                if !vol.clusterLocks && !vol.readOnly {
                    Logger(label: "ringtgtd").warning("\(SheepVolume.unlockedClusterWarning) (VDI '\(vol.name)', LUN \(spec.lun) of target \(spec.tid))")
                }
                let bytes = vol.byteCount - vol.byteCount % UInt64(spec.blockSize)
                guard bytes > 0 else {
                    vol.releaseLock()
                    throw AdminError(.invalidRequest, "VDI '\(vol.name)' is smaller than one block")
                }
                return OpenedBacking(backing: .sheep(vol), byteCount: bytes, capabilities: vol.capabilities)
            } catch let e as SheepVolume.OpenError {
                throw AdminError(.invalidRequest, e.description)
            }
        }
        var options = spec.options
        if spec.readOnly { options["readonly"] = "1" }
        if spec.openFlags.contains(.direct) { options["direct"] = "1" }
        do {
            let (backing, bytes, caps) = try BackingFactory.open(bstype: spec.bstype, path: spec.path,
                                                                 options: options, blockSize: spec.blockSize)
            return OpenedBacking(backing: backing, byteCount: bytes, capabilities: caps)
        } catch {
            throw AdminError(.invalidRequest, error.description)
        }
    }

    /// `--bsopts multipath=on|off` of a sheepdog LUN; absent is on (tgt's behaviour).
    static func multipathOption(_ text: String?) -> Bool? {
        switch text {
        case nil, "on": return true
        case "off": return false
        default: return nil
        }
    }

    /// File descriptors close when the last LogicalUnit referring to them goes away (FileBacking.deinit);
    /// a sheepdog VDI's lock is released now.
    public func release(_ backing: Backing) {
        if case .sheep(let vol) = backing { vol.releaseLock() }
    }

    public var backingStoreDescriptions: [String] { ["rdwr (bsoflags sync:direct)", "null", "sheepdog"] }
}

extension StoreOpener {
    /// Sheepdog home cores are dealt out over the runtime's cores.
    public convenience init(runtime: Runtime) { self.init(coreCount: { [unowned runtime] in runtime.coreCount }) }
}
