import Floor
import URing
import CURing
import Glibc
import SheepProtocol
import Synchronization

/// One sheepdog VDI served as a LUN. Shared by every core: the object index (which VID owns each data
/// object) is read from any core with acquire loads and written only by the LUN's home core with release
/// stores, so reads and writes to allocated objects go straight to sheep from any core, while allocation,
/// copy-on-write and snapshot reloads are decided in one place (SHEEPDOG-PROTOCOL.md §7.6).
public final class SheepVolume: @unchecked Sendable {
    public let spec: SheepBackingSpec
    public let name: String
    public let byteCount: UInt64
    public let objectShift: Int
    public let copies: UInt8
    /// A snapshot LUN: writes are refused, the snapshot is never modified.
    public let readOnly: Bool
    /// The VID LOCK_VDI locked at open (released at close); 0 when nothing was locked.
    public let lockedVID: UInt32
    /// The lock is sheep's shared (multipath) lock and object requests carry SD_FLAG_CMD_TGT, so another
    /// gateway's index writes reach us as INODE_INVALIDATED (SHEEPDOG-PROTOCOL.md §7.10). Flat writable VDIs.
    public let coherent: Bool
    /// False when the cluster was formatted without locking (`dog cluster format` without -l): LOCK_VDI locks
    /// nothing, so sheep neither keeps a second gateway out nor keeps gateways coherent.
    public let clusterLocks: Bool
    /// Served as tgt does, open to other gateways (`--bsopts multipath=on`, the default): the shared lock, and
    /// coherence on a flat writable VDI. Off: the normal (exclusive) lock, as QEMU takes it, and no coherence
    /// checks, so one gateway pays nothing for paths it does not have.
    public let multipath: Bool
    /// Multipath: the state of the LU this volume backs, which the shared SCSI record is loaded into (SCSI's
    /// LUNState). Set once when the LU is made, before any reactor sees it; weak, as the LU owns the volume.
    public weak var lunState: (any SharedSCSIStateHolder)? = nil
    /// Names this gateway as the writer of record versions (random per open: a version written through this
    /// open is never adopted back into its own LU).
    let gatewayID = UInt64.random(in: 1 ... UInt64.max)
    /// Newest record version loaded into `lunState` (home core only).
    var adoptedVersion: UInt64 = 0
    /// The core that decides allocation and copy-on-write for this VDI.
    public let homeCore: Int
    /// Index of the sheep endpoint among the runtime's endpoints: each core keeps one channel per endpoint.
    public let endpointIndex: Int
    /// VID of the working VDI; changes when a snapshot is taken under us (READONLY, then reload).
    private let currentVID: Atomic<UInt32>
    /// This host's record that we hold the shared lock (multipath working VDI), dropped after RELEASE_VDI.
    private let claim: SheepLockClaim?
    /// Open found this node's shared lock left by a gateway that died, released it and locked again.
    public let reclaimedStaleLock: Bool
    /// Whether this volume's sheep node answers (its channels say; the LU reads it).
    public let reachability: BackingReachability
    /// Working VDIs locked after a snapshot moved the working VDI (released at close with `lockedVID`).
    private let laterLocks = Locked<[UInt32]>([])
    /// data_vdi_id[]: owner VID per object index, 0 = unallocated. For a hyper volume, the B-tree's content
    /// flattened (one slot per object of the volume, calloc'd), so that reads look up owners the same way.
    let index: UnsafeMutablePointer<UInt32>
    let indexSlots: Int
    /// The VID opened, then its snapshot or clone ancestors, nearest first (parent_vdi_id, read at open):
    /// the layers `allocationDepth` counts. Never changed after open.
    private(set) var layers: [UInt32] = []
    /// The parent chain is read this far at open (sheep keeps no bound on it; a deeper owner counts as
    /// the deepest layer).
    static let maxLayers = 255
    /// A hyper volume's B-tree (home core only); nil for a flat index.
    let hyper: SheepHyperIndex?

    init(spec: SheepBackingSpec, name: String, byteCount: UInt64, objectShift: Int, copies: UInt8, readOnly: Bool,
         lockedVID: UInt32, vid: UInt32, homeCore: Int, endpointIndex: Int, index: UnsafeMutablePointer<UInt32>,
         indexSlots: Int, hyper: SheepHyperIndex? = nil, coherent: Bool = false, clusterLocks: Bool = true,
         multipath: Bool = true, claim: SheepLockClaim? = nil, reclaimedStaleLock: Bool = false) {
        self.spec = spec
        self.claim = claim
        self.reclaimedStaleLock = reclaimedStaleLock
        reachability = SheepReachability.of(endpointIndex: endpointIndex)
        self.name = name
        self.byteCount = byteCount
        self.objectShift = objectShift
        self.copies = copies
        self.readOnly = readOnly
        self.lockedVID = lockedVID
        self.coherent = coherent && multipath && clusterLocks && lockedVID != 0 && hyper == nil
        self.clusterLocks = clusterLocks
        self.multipath = multipath
        self.homeCore = homeCore
        self.endpointIndex = endpointIndex
        self.currentVID = Atomic(vid)
        self.index = index
        self.indexSlots = indexSlots
        self.hyper = hyper
    }

    deinit {
        if hyper != nil { free(index) } else { index.deallocate() }
    }

    public var objectBytes: Int { 1 << objectShift }

    /// Records a lock the home core took on a new working VDI (reload after a snapshot).
    func addLock(_ vid: UInt32) { laterLocks.withLock { $0.append(vid) } }

    /// SD_FLAG_CMD_TGT when coherent: sheep then answers INODE_INVALIDATED while our index is stale.
    @inline(__always) var objectFlags: SheepFlags { coherent ? .tgt : [] }

    @inline(__always) public var vid: UInt32 { currentVID.load(ordering: .acquiring) }
    func setVID(_ v: UInt32) { currentVID.store(v, ordering: .releasing) }

    @inline(__always)
    func owner(_ idx: Int) -> UInt32 {
        guard idx >= 0 && idx < indexSlots else { return 0 }
        return rt_load_acquire_u32(index + idx)
    }

    /// Home core only.
    @inline(__always)
    func setOwner(_ idx: Int, _ v: UInt32) {
        guard idx >= 0 && idx < indexSlots else { return }
        rt_store_release_u32(index + idx, v)
    }

    /// qemu:allocation-depth of an object that `owner` owns: 0 unallocated, 1 this VDI's own, n the
    /// (n-1)th layer below. A snapshot taken while the VDI is served makes the opened VID the working VDI's
    /// parent (one layer down); an owner outside the layers read at open (a snapshot in between) is counted
    /// one layer below the working VDI.
    func allocationDepth(ofOwner owner: UInt32) -> UInt8 {
        if owner == 0 { return 0 }
        let current = vid
        if owner == current { return 1 }
        let opened = layers.first ?? current
        let base = opened == current ? 1 : 2
        guard let i = layers.firstIndex(of: owner) else { return 2 }
        return UInt8(min(Self.maxLayers, base + i))
    }

    /// Reads the parent chain of `header` (control plane, at open); a failed read ends it where it got to.
    fileprivate func readLayers(_ client: SheepClient, opened: UInt32, parent: UInt32) {
        var chain = [opened]
        var next = parent
        while next != 0 && chain.count < Self.maxLayers && !chain.contains(next) {
            guard let r = try? client.readInode(vid: next, withIndex: false), r.result == .success,
                  r.data.count >= SheepInodeHeader.encodedSizeBytes else { break }
            chain.append(next)
            next = r.data.withUnsafeBytes { SheepInodeHeader(from: $0.baseAddress!).parentVDIID }
        }
        layers = chain
    }
    public var isHyper: Bool { hyper != nil }

    public var capabilities: StoreCapabilities {
        StoreCapabilities(canDiscard: !readOnly, discardZeroes: true, canReportMapping: true, readOnly: readOnly,
                          hasVolatileCache: false, optimalTransferBytes: 0, unmapGranularityBytes: objectBytes)
    }

    // MARK: - Open and close (control plane, blocking)

    public enum OpenError: Error, CustomStringConvertible {
        case spec(String)
        case sheep(String)
        public var description: String {
            switch self {
            case .spec(let s), .sheep(let s): return s
            }
        }
    }

    /// Resolves, locks (working VDI) and reads the inode of `specText` (tgt's `unix:PATH:VDI[:TAG|:SNAPID]` or
    /// `tcp:HOST:PORT:VDI[...]`).
    /// `claimDirectory`: where this host's gateways record the shared locks they hold (SheepLockClaim); nil
    /// takes no claim, so a node's stale lock is never taken back.
    public static func open(_ specText: String, homeCore: Int, multipath: Bool = true, claimDirectory: String? = nil,
                            endpointIndex: (SheepBackingSpec.Endpoint) -> Int) throws(OpenError) -> SheepVolume
    {
        let lockType = Self.lockType(multipath: multipath)
        let spec: SheepBackingSpec
        do { spec = try SheepBackingSpec.parse(specText) } catch { throw .spec("invalid sheepdog backing store '\(specText)': \(error)") }
        let client: SheepClient
        do { client = try controlClient(spec.endpoint) } catch { throw .sheep("VDI '\(spec.vdi)': \(error)") }
        let payload: [UInt8]
        do { payload = try SheepVDIName.payload(name: spec.vdi, tag: spec.lookupTag) } catch {
            throw .spec("invalid VDI name or tag in '\(specText)': \(error)")
        }
        // The working VDI is locked with sheep's shared lock, as tgt does: a second gateway through another
        // sheep node can serve it too (multipath), and sheep keeps the gateways' inodes coherent. A snapshot
        // is only looked up, since nothing is ever written to it.
        let opcode: SheepOpcode = spec.isSnapshot ? .getVDIInfo : .lockVDI
        let locked = "VDI '\(spec.vdi)' is locked by another client (dog vdi lock unlock \(spec.vdi) releases a stale lock)"
        let claim: SheepLockClaim.Outcome
        if let claimDirectory, !spec.isSnapshot && multipath {
            claim = SheepLockClaim.take(directory: claimDirectory, endpoint: spec.endpoint, vdi: spec.vdi)
        } else {
            claim = .unavailable
        }
        if case .busy = claim { throw .sheep(locked) }
        let held: SheepLockClaim?
        if case .held(let c) = claim { held = c } else { held = nil }
        let lookup: SheepResponseHeader
        var reclaimed = false
        do {
            func lock() throws(SheepClientError) -> SheepResponseHeader {
                try client.call(.vdiLookup(opcode, id: 0, snapID: spec.lookupSnapID, lockType: lockType), payload: payload).header
            }
            var first = try lock()
            if first.result == .vdiLocked, held != nil, let stale = try? staleParticipation(client, payload: payload) {
                // No live gateway here holds it (SheepLockClaim): our node's participation outlived a killed
                // gateway. Releasing it is what `dog vdi lock unlock` would do for this node only.
                _ = try? client.release(vid: stale, lockType: .shared)
                first = try lock()
                reclaimed = first.result == .success
            }
            lookup = first
        } catch { held?.release(); throw .sheep("\(error)") }
        if lookup.result != .success { held?.release() }
        switch lookup.result {
        case .success: break
        case .vdiLocked: throw .sheep(locked)
        case .noVDI: throw .sheep("no VDI named '\(spec.vdi)'")
        case .noTag:
            let which: String
            switch spec.snapshot {
            case .tag(let tag): which = "tagged '\(tag)'"
            case .id(let id): which = "with id \(id)"
            case .working: which = "of that name"
            }
            throw .sheep("VDI '\(spec.vdi)' has no snapshot \(which)")
        default: throw .sheep("looking up VDI '\(spec.vdi)' failed: \(lookup.result.name)")
        }
        let vid = lookup.vdiID
        let lockedVID = spec.isSnapshot ? 0 : vid
        func release() {
            if lockedVID != 0 { _ = try? client.release(vid: lockedVID, lockType: lockType) }
            held?.release()
        }
        let clusterLocks = lockedVID == 0 || Self.clusterHasLocks(client, payload: payload)
        let inodeBytes = SheepInodeLayout.clientInodeSizeBytes
        let raw = UnsafeMutableRawBufferPointer.allocate(byteCount: inodeBytes, alignment: 64)
        defer { raw.deallocate() }
        // Exactly sheep's refresh read (offset 0, header + flat index): it also validates this node's copy.
        let read: SheepResponseHeader
        let got: Int
        do {
            (read, got) = try client.call(.readObject(id: 0, oid: SheepOID.inode(vid: vid), offset: 0,
                                                      length: UInt32(inodeBytes)), replyInto: raw)
        } catch { release(); throw .sheep("\(error)") }
        guard read.result == .success, got >= SheepInodeHeader.encodedSizeBytes else {
            release()
            throw .sheep("reading the inode of '\(spec.vdi)' failed: \(read.result.name)")
        }
        if got < inodeBytes { memset(raw.baseAddress! + got, 0, inodeBytes - got) }
        let header = SheepInodeHeader(from: raw.baseAddress!)
        guard header.blockSizeShift >= SheepWire.minBlockSizeShift && header.blockSizeShift <= SheepWire.maxBlockSizeShift
        else {
            release()
            throw .sheep("VDI '\(spec.vdi)' has an unsupported object size shift \(header.blockSizeShift)")
        }
        let readOnly = spec.isSnapshot || header.snapCTime != 0
        if header.storePolicy != 0 {
            let hyper: (SheepHyperIndex, UnsafeMutablePointer<UInt32>, Int)
            do { hyper = try openHyper(client, spec: spec, header: header, inode: UnsafeRawBufferPointer(raw)) } catch {
                release()
                throw .sheep("\(error)")
            }
            let volume = SheepVolume(spec: spec, name: spec.vdi, byteCount: header.vdiSize,
                                     objectShift: Int(header.blockSizeShift), copies: header.nrCopies,
                                     readOnly: readOnly, lockedVID: lockedVID, vid: vid, homeCore: homeCore,
                                     endpointIndex: endpointIndex(spec.endpoint), index: hyper.1,
                                     indexSlots: hyper.2, hyper: hyper.0, clusterLocks: clusterLocks,
                                     multipath: multipath, claim: held, reclaimedStaleLock: reclaimed)
            volume.readLayers(client, opened: vid, parent: header.parentVDIID)
            if lockedVID != 0 && multipath && clusterLocks { SheepRejoin.add(volume, payload: payload) }
            return volume
        }
        let slots = SheepInodeLayout.dataIndexSlots
        let index = UnsafeMutablePointer<UInt32>.allocate(capacity: slots)
        memcpy(index, raw.baseAddress! + SheepInodeLayout.headerSizeBytes, slots * 4)
        // The wire is little-endian; so is every host we run on, but do not assume it.
        for i in 0..<slots { index[i] = UInt32(littleEndian: index[i]) }
        let volume = SheepVolume(spec: spec, name: spec.vdi, byteCount: header.vdiSize,
                                 objectShift: Int(header.blockSizeShift), copies: header.nrCopies, readOnly: readOnly,
                                 lockedVID: lockedVID, vid: vid, homeCore: homeCore,
                                 endpointIndex: endpointIndex(spec.endpoint), index: index, indexSlots: slots,
                                 coherent: !readOnly, clusterLocks: clusterLocks, multipath: multipath,
                                 claim: held, reclaimedStaleLock: reclaimed)
        volume.readLayers(client, opened: vid, parent: header.parentVDIID)
        if lockedVID != 0 && multipath && clusterLocks { SheepRejoin.add(volume, payload: payload) }
        return volume
    }

    /// Whether LOCK_VDI takes locks in this cluster, asked right after our shared lock on the VDI was granted:
    /// a normal lock on it must then be refused (VDI_LOCKED), and is granted only by a cluster without
    /// locking, where LOCK_VDI is GET_VDI_INFO and changes nothing (ops.c `cluster_lock_vdi_work`). Client
    /// protocol only; sheep's cluster flags (SD_CLUSTER_FLAG_USE_LOCK) are reachable only through internal ops.
    private static func clusterHasLocks(_ client: SheepClient, payload: [UInt8]) -> Bool {
        guard let r = try? client.call(.vdiLookup(.lockVDI, id: 0, snapID: 0, lockType: .normal), payload: payload)
        else { return true }
        return r.header.result != .success
    }

    /// The working VDI's VID, to release this node's stale participation: a refused LOCK_VDI need not carry
    /// it. (When a normal lock is what refused us, sheep ignores the shared release and we stay refused.)
    private static func staleParticipation(_ client: SheepClient, payload: [UInt8]) throws(SheepClientError) -> UInt32? {
        let r = try client.call(.vdiLookup(.getVDIInfo, id: 0, snapID: 0, lockType: .shared), payload: payload).header
        return r.result == .success ? r.vdiID : nil
    }

    /// A hyper volume's B-tree: the root from the inode just read, then every leaf it names (header first, then
    /// only the entries, so untouched leaf pages stay uncommitted), flattened into an owner array.
    private static func openHyper(_ client: SheepClient, spec: SheepBackingSpec, header: SheepInodeHeader,
                                  inode: UnsafeRawBufferPointer) throws(OpenError)
        -> (SheepHyperIndex, UnsafeMutablePointer<UInt32>, Int)
    {
        let objects = (header.vdiSize + (UInt64(1) << UInt64(header.blockSizeShift)) - 1) >> UInt64(header.blockSizeShift)
        guard objects <= UInt64(SheepHyperIndex.objectsMax) else {
            throw .sheep("VDI '\(spec.vdi)' is a hyper volume of \(objects) objects; ringtgt serves hyper volumes of up to \(SheepHyperIndex.objectsMax) objects")
        }
        guard let tree = SheepHyperIndex() else { throw .sheep("VDI '\(spec.vdi)': no memory for its B-tree") }
        tree.image.copyMemory(from: inode.baseAddress!, byteCount: min(inode.count, SheepHyperIndex.imageBytes))
        let root = tree.root
        if SheepBTree.isInitialised(root) {
            guard SheepBTree.nodeMagic(root) == SheepBTree.magic, SheepBTree.depth(root) == 1 || SheepBTree.depth(root) == 2
            else { throw .sheep("VDI '\(spec.vdi)' is a hyper volume whose B-tree root is corrupt") }
        }
        if SheepBTree.isInitialised(root) && SheepBTree.depth(root) == 2 {
            for q in 0..<SheepBTree.entries(root) {
                let oid = SheepBTree.indirectOID(root, q)
                guard let leaf = tree.adopt(oid) else {
                    throw .sheep("VDI '\(spec.vdi)' is a hyper volume with more than \(SheepHyperIndex.leafNodesMax) B-tree leaves")
                }
                try readNode(client, spec: spec, oid: oid, into: leaf, length: SheepBTree.headerBytes)
                let used = SheepBTree.usedBytes(leaf)
                guard SheepBTree.nodeMagic(leaf) == SheepBTree.magic, used <= SheepBTree.nodeBytes else {
                    throw .sheep("VDI '\(spec.vdi)': B-tree leaf \(String(oid, radix: 16)) is corrupt")
                }
                try readNode(client, spec: spec, oid: oid, into: leaf, length: used)
            }
        }
        guard let owners = calloc(Int(objects), 4)?.bindMemory(to: UInt32.self, capacity: Int(objects)) else {
            throw .sheep("VDI '\(spec.vdi)': no memory for its object index")
        }
        tree.forEach { idx, v in if UInt64(idx) < objects { owners[Int(idx)] = v } }
        return (tree, owners, Int(objects))
    }

    private static func readNode(_ client: SheepClient, spec: SheepBackingSpec, oid: UInt64,
                                 into buffer: UnsafeMutableRawPointer, length: Int) throws(OpenError) {
        let read: SheepResponseHeader
        let got: Int
        do {
            (read, got) = try client.call(.readObject(id: 0, oid: oid, offset: 0, length: UInt32(length)),
                                          replyInto: UnsafeMutableRawBufferPointer(start: buffer, count: length))
        } catch { throw .sheep("\(error)") }
        guard read.result == .success, got == length else {
            throw .sheep("reading B-tree leaf \(String(oid, radix: 16)) of '\(spec.vdi)' failed: \(read.result.name)")
        }
    }

    /// RELEASE_VDI for the lock taken at open (control plane). Errors are ignored: sheep answers SUCCESS on
    /// HEAD, and VDI_NOT_LOCKED on old versions means there is nothing to release.
    public func releaseLock() {
        defer { claim?.release() }
        SheepRejoin.remove(self)
        guard lockedVID != 0, let client = try? Self.controlClient(spec.endpoint) else { return }
        _ = try? client.release(vid: lockedVID, lockType: lockType)
        for v in laterLocks.withLock({ l -> [UInt32] in let all = l; l.removeAll(); return all }) {
            _ = try? client.release(vid: v, lockType: lockType)
        }
    }

    /// Logged at open and shown by `--op show` for a writable VDI of a cluster without locking.
    public static let unlockedClusterWarning = "sheep cluster formatted without locking (dog cluster format without -l): no shared lock and no inode coherence; a second gateway serving this VDI reads stale data and corrupts it"

    /// The lock taken at open and after a snapshot moved the working VDI: tgt's shared one for multipath.
    static func lockType(multipath: Bool) -> SheepLockType { multipath ? .shared : .normal }
    var lockType: SheepLockType { Self.lockType(multipath: multipath) }

    /// The control plane's blocking calls to sheep (never on a reactor core) give up after these, so a sheep
    /// that stops answering fails a LUN open or release instead of hanging the control thread.
    static let controlConnectTimeoutSeconds = 5
    static let controlIOTimeoutSeconds = 10

    private static func controlClient(_ endpoint: SheepBackingSpec.Endpoint) throws(SheepClientError) -> SheepClient {
        try SheepClient(endpoint: endpoint, connectTimeoutSeconds: controlConnectTimeoutSeconds,
                        ioTimeoutSeconds: controlIOTimeoutSeconds)
    }
}

/// What the store asks of the LU whose shared SCSI state a coherent volume carries (SCSI's `LUNState`
/// implements it): the records the home core loads go in, the version to publish comes out. The store sits
/// below SCSI, so it knows the LU only through this. Record and STPG paths only, never per I/O.
public protocol SharedSCSIStateHolder: AnyObject {
    /// A version another gateway wrote: its reservations replace the LU's, with the unit attentions they raise.
    func adoptShared(_ r: SheepSCSIRecord)
    /// A version this gateway wrote, already applied here: only its counts are noted.
    func adoptOwn(_ r: SheepSCSIRecord)
    /// The record's port groups, except those with a state this gateway posted and sheep does not have yet.
    func adoptPortGroups(_ groups: [SharedPortGroup], pending: [UInt16])
    /// The relative target ports whose gateways stopped beating.
    func setDeadPorts(_ dead: [UInt16])
    /// An STPG through this gateway posted `group`'s state for the record; until it arrives the record's
    /// older state is not adopted for it.
    func portGroupStatePosted(_ group: UInt16)
    func portGroupStateArrived(_ group: UInt16)
    /// The version after `base`, written by `writer`, carrying the LU's reservations now.
    func successorRecord(of base: SheepSCSIRecord, writer: UInt64) -> SheepSCSIRecord
    /// The other coherent volumes whose LUs have port group `group` (a group's state is one for all of them).
    func coherentVolumes(inGroup group: UInt16, except: SheepVolume) -> [SheepVolume]
}
