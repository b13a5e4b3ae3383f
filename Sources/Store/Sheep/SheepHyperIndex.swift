import Floor
import URing
import Glibc
import SheepProtocol

/// The B-tree of a hyper volume (store_policy 1, SHEEPDOG-PROTOCOL.md §6.4) as the LUN's home core keeps it:
/// the inode image (header + root) and the leaves, all in buffers allocated at open. Readers never touch it:
/// at open, and after each change is persisted, the home core copies owners into the volume's flat owner array,
/// which every core reads as for a flat VDI. Home core only.
public final class SheepHyperIndex: SheepBTreeNodes {
    /// Objects a served hyper volume may have (64 TiB at 4 MiB objects). Bounds the flat owner array
    /// (4 bytes per object, committed by the kernel only where objects are allocated) and, through the next
    /// constant, the leaves.
    static let objectsMax = 1 << 24
    /// Leaves held in memory. sd_inode.c only ever splits a full leaf in two and starts a new leaf when the
    /// last one is full, so every leaf but the last holds at least half of a leaf's 524,287 entries:
    /// `objectsMax` objects need at most objectsMax / 262,143 + 2 leaves.
    static let leafNodesMax = objectsMax / (SheepBTree.Geometry.sheep.maxLeafEntries / 2) + 2

    /// Header + data_vdi_id, as at offset 0 of the inode object; the root starts at `headerSizeBytes`.
    let image: UnsafeMutableRawPointer
    /// `leafNodesMax` leaf buffers of `SheepBTree.nodeBytes`, calloc'd: pages are committed as leaves fill.
    private let leafRegion: UnsafeMutableRawPointer
    private let leafOIDs: UnsafeMutablePointer<UInt64>
    /// Per leaf: created since the last persist (CREATE_AND_WRITE), changed since the last persist.
    private let leafCreated: UnsafeMutablePointer<Bool>
    private let leafChanged: UnsafeMutablePointer<Bool>
    private(set) var leafCount = 0

    static let imageBytes = SheepInodeLayout.clientInodeSizeBytes

    init?() {
        guard let image = calloc(1, Self.imageBytes) else { return nil }
        guard let region = calloc(Self.leafNodesMax, SheepBTree.nodeBytes) else {
            free(image)
            return nil
        }
        self.image = image
        leafRegion = region
        leafOIDs = .allocate(capacity: Self.leafNodesMax)
        leafCreated = .allocate(capacity: Self.leafNodesMax)
        leafCreated.initialize(repeating: false, count: Self.leafNodesMax)
        leafChanged = .allocate(capacity: Self.leafNodesMax)
        leafChanged.initialize(repeating: false, count: Self.leafNodesMax)
    }

    deinit {
        free(image)
        free(leafRegion)
        leafOIDs.deallocate()
        leafCreated.deallocate()
        leafChanged.deallocate()
    }

    var root: UnsafeMutableRawPointer { image + SheepInodeLayout.headerSizeBytes }

    var btreeCounter: UInt32 {
        get { UInt32(littleEndian: image.loadUnaligned(fromByteOffset: SheepInodeLayout.btreeCounterOffset, as: UInt32.self)) }
        set { image.storeBytes(of: newValue.littleEndian, toByteOffset: SheepInodeLayout.btreeCounterOffset, as: UInt32.self) }
    }

    private func slot(_ oid: UInt64) -> Int? {
        for i in 0..<leafCount where leafOIDs[i] == oid { return i }
        return nil
    }

    func leafBuffer(_ i: Int) -> UnsafeMutableRawPointer { leafRegion + i * SheepBTree.nodeBytes }

    /// Adds a leaf read at open; nil when the bound is reached.
    func adopt(_ oid: UInt64) -> UnsafeMutableRawPointer? {
        guard leafCount < Self.leafNodesMax else { return nil }
        leafOIDs[leafCount] = oid
        leafCount += 1
        return leafBuffer(leafCount - 1)
    }

    /// `sd_inode_set_vid` on the in-memory tree; changed leaves are remembered until `takeChanges`.
    func set(_ idx: UInt32, to value: UInt32, vdiID: UInt32) -> SheepBTree.SetResult {
        var counter = btreeCounter
        var nodes = self
        let r = SheepBTree.set(root: root, idx: idx, vid: value, vdiID: vdiID, counter: &counter, nodes: &nodes)
        btreeCounter = counter
        return r
    }

    func lookup(_ idx: UInt32) -> UInt32 {
        SheepBTree.lookup(root: root, idx: idx) { oid in self.slot(oid).map { UnsafeRawPointer(self.leafBuffer($0)) } }
    }

    /// Every (idx, vid) the tree holds.
    func forEach(_ body: (UInt32, UInt32) -> Void) {
        SheepBTree.forEach(root: root, leaf: { oid in self.slot(oid).map { UnsafeRawPointer(self.leafBuffer($0)) } }, body)
    }

    /// The next leaf changed since it was last taken (and whether it is new, so must be created), clearing its
    /// marks; nil when none is left.
    func takeChange() -> (leaf: Int, created: Bool)? {
        for i in 0..<leafCount where leafChanged[i] {
            let created = leafCreated[i]
            leafChanged[i] = false
            leafCreated[i] = false
            return (i, created)
        }
        return nil
    }

    /// Marks a taken leaf again after its write failed, so the next change writes (or creates) it.
    func retake(_ leaf: Int, created: Bool) {
        leafChanged[leaf] = true
        leafCreated[leaf] = leafCreated[leaf] || created
    }

    func oid(ofLeaf i: Int) -> UInt64 { leafOIDs[i] }

    /// The inode bytes that persist a change: from btree_counter to the root's last entry. Starting before
    /// data_vdi_id matters: sheep's gateway treats a write that starts inside it as flat index slots and
    /// would reset and drop references by them (`is_data_vid_update`), as dog's sd_inode_write avoids by
    /// writing from offset 0.
    var rootWrite: (offset: Int, length: Int) {
        let from = SheepInodeLayout.btreeCounterOffset
        return (from, SheepInodeLayout.headerSizeBytes + SheepBTree.usedBytes(root) - from)
    }

    // MARK: - SheepBTreeNodes

    public func leaf(_ oid: UInt64) -> UnsafeMutableRawPointer? { slot(oid).map { leafBuffer($0) } }

    public func newLeaf(_ oid: UInt64) -> UnsafeMutableRawPointer? {
        guard let p = adopt(oid) else { return nil }
        leafCreated[leafCount - 1] = true
        return p
    }

    public func modified(_ oid: UInt64) {
        if let i = slot(oid) { leafChanged[i] = true }
    }
}
