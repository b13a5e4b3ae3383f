// Fakes of the runtime and the store layer for the control-plane tests.

import Foundation
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor

final class FakeFabric: ControlFabric, @unchecked Sendable {
    private let lock = NSLock()
    private var _published: [ConfigSnapshot] = []
    var sessionList: [SessionInfo] = []
    var portalList: [PortalInfo] = []

    var published: [ConfigSnapshot] { lock.lock(); defer { lock.unlock() }; return _published }
    var latest: ConfigSnapshot? { published.last }

    func publish(_ snapshot: ConfigSnapshot) {
        lock.lock(); defer { lock.unlock() }
        _published.append(snapshot)
    }
    func sessions() -> [SessionInfo] { sessionList }
    func portals() -> [PortalInfo] { portalList }
    /// What `commandsInFlight` answers (the same count for any units).
    var inFlight = 0
    func commandsInFlight(on units: [LogicalUnit]) -> Int { inFlight }
    /// What the control plane asked to append to multipath sheep LUs' shared records, in order.
    private var _shared: [PortGroupChange] = []
    var shared: [PortGroupChange] { lock.lock(); defer { lock.unlock() }; return _shared }
    func sharePortGroups(_ unit: LogicalUnit, _ change: PortGroupChange) {
        lock.lock(); defer { lock.unlock() }
        _shared.append(change)
    }
}

final class FakeOpener: BackingOpener, @unchecked Sendable {
    var opened: [BackingSpec] = []
    var releasedCount = 0
    /// How many snapshots the fabric had published when each release happened.
    var publishedCountAtRelease: [Int] = []
    var sizes: [String: UInt64] = [:]
    var missingPaths: Set<String> = []
    var capabilities = StoreCapabilities(canDiscard: false)
    weak var fabric: FakeFabric?
    let knownTypes = ["rdwr", "null", "sheepdog"]
    /// Given, a sheepdog LUN opens as this volume (a multipath one, for the ALUA publication tests).
    var sheepVolume: SheepVolume? = nil

    func open(_ spec: BackingSpec) throws -> OpenedBacking {
        guard knownTypes.contains(spec.bstype) else {
            throw AdminError(.invalidRequest, "unknown backing store type \(spec.bstype)")
        }
        if missingPaths.contains(spec.path) {
            throw AdminError(.invalidRequest, "open \(spec.path): No such file or directory")
        }
        opened.append(spec)
        var caps = capabilities
        caps.readOnly = spec.readOnly
        if spec.bstype == "sheepdog", let vol = sheepVolume {
            return OpenedBacking(backing: .sheep(vol), byteCount: vol.byteCount, capabilities: caps)
        }
        return OpenedBacking(backing: .null, byteCount: sizes[spec.path] ?? 100 * 1024 * 1024, capabilities: caps)
    }

    func release(_ backing: Backing) {
        releasedCount += 1
        publishedCountAtRelease.append(fabric?.published.count ?? -1)
    }

    var backingStoreDescriptions: [String] { ["rdwr (bsoflags sync:direct)", "null", "sheepdog"] }
}

struct ControlHarness {
    let fabric = FakeFabric()
    let opener = FakeOpener()
    let registry: Registry

    init(controllerLUN0: Bool = false, lunDefaults: LUNDefaults = .ringtgt) {
        opener.fabric = fabric
        var options = Registry.Options(controllerLUN0: controllerLUN0)
        options.lunDefaults = lunDefaults
        registry = Registry(fabric: fabric, opener: opener, options: options)
    }

    /// Runs a tgtadm command line (split on spaces) through the real parser and the registry.
    @discardableResult
    func run(_ line: String) -> AdminResponse {
        run(line.split(separator: " ").map(String.init))
    }

    @discardableResult
    func run(_ arguments: [String]) -> AdminResponse {
        switch TgtadmCommandLine.parse(arguments) {
        case .send(let request, _): return registry.execute(request)
        case .print(let text): return AdminResponse(exitCode: 0, stdout: text)
        case .usageError(let text, let code): return AdminResponse(exitCode: code, stderr: text)
        }
    }
}

/// A fresh directory under /tmp, removed by the caller.
func makeTemporaryDirectory() -> String {
    var template = Array("/tmp/ringtgt-control-XXXXXX".utf8CString)
    let path = template.withUnsafeMutableBufferPointer { buf -> String in
        guard let p = mkdtemp(buf.baseAddress!) else { return "" }
        return String(cString: p)
    }
    return path
}
