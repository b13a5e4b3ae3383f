// The hyper-volume index (store_policy != 0, SHEEPDOG-PROTOCOL.md §6.4): a two-level B-tree whose root lives
// in the inode's 4 MiB data_vdi_id area and whose leaves are 4 MiB B-tree objects. Built exactly as sheep's
// lib/sd_inode.c builds it (same node layout, lower-bound search, split points and btree_counter use), because
// dog, sheep and every other client read the tree we write and we read theirs.
//
// Node: {uint16 magic 0x6274, uint16 depth, uint32 entries} then entries. A leaf (depth 1) holds
// {uint32 idx, uint32 vdi_id}; the root at depth 2 holds {uint32 idx, 4 pad, uint64 leaf oid}, idx being the
// largest object index in that leaf.

/// Where the leaves live. The tree reads them and asks for new ones through this, and reports every leaf it
/// changes, so the caller knows what to write back (leaves first, then the inode root).
public protocol SheepBTreeNodes {
    /// The image of leaf `oid`, nil when it cannot be had (a failed read).
    mutating func leaf(_ oid: UInt64) -> UnsafeMutableRawPointer?
    /// A zeroed buffer for the new leaf `oid`, nil when the caller's bound on leaves is reached.
    mutating func newLeaf(_ oid: UInt64) -> UnsafeMutableRawPointer?
    /// Leaf `oid` changed and must be written (a leaf from `newLeaf` must be created).
    mutating func modified(_ oid: UInt64)
}

public enum SheepBTree {
    public static let magic: UInt16 = 0x6274
    public static let headerBytes = 8
    /// Every node, root included, is the size of the flat index area (`SD_INODE_DATA_INDEX_SIZE`).
    public static let nodeBytes = SheepInodeLayout.dataIndexSizeBytes
    public static let leafEntryBytes = 8
    public static let indirectEntryBytes = 16

    /// Entries a node holds. `sheep` is sd_inode.c's (MAX_INDEX 524,287 and EXT_IDX_MAX_ENTRIES 262,143);
    /// tests use small ones to reach the same split code paths with few entries.
    public struct Geometry: Sendable, Equatable {
        public var maxLeafEntries: Int
        public var maxIndirectEntries: Int
        public init(maxLeafEntries: Int, maxIndirectEntries: Int) {
            self.maxLeafEntries = maxLeafEntries
            self.maxIndirectEntries = maxIndirectEntries
        }
        public static let sheep = Geometry(maxLeafEntries: (nodeBytes - headerBytes) / leafEntryBytes,
                                           maxIndirectEntries: (nodeBytes - headerBytes) / indirectEntryBytes)
    }

    public enum SetResult: Equatable, Sendable {
        case ok
        /// Bad magic or a depth other than 1 and 2: sd_inode.c panics; we refuse.
        case corrupt
        /// A leaf could not be read.
        case nodeUnavailable
        /// The root is full, or the caller has no room for another leaf.
        case full
    }

    /// `vid_to_btree_oid`.
    @inline(__always)
    public static func nodeOID(vid: UInt32, number: UInt32) -> UInt64 {
        ((UInt64(vid) & SheepOID.vidMask) << SheepOID.vidShift) | SheepOID.vdiBTreeBit | UInt64(number)
    }

    // MARK: - Node fields

    @inline(__always) public static func nodeMagic(_ n: UnsafeRawPointer) -> UInt16 { sheepLoad(n, 0, as: UInt16.self) }
    @inline(__always) public static func depth(_ n: UnsafeRawPointer) -> UInt16 { sheepLoad(n, 2, as: UInt16.self) }
    @inline(__always) public static func entries(_ n: UnsafeRawPointer) -> Int { Int(sheepLoad(n, 4, as: UInt32.self)) }
    @inline(__always) static func setDepth(_ n: UnsafeMutableRawPointer, _ d: UInt16) { sheepStore(n, 2, d) }
    @inline(__always) static func setEntries(_ n: UnsafeMutableRawPointer, _ e: Int) { sheepStore(n, 4, UInt32(e)) }

    @inline(__always) public static func leafIdx(_ n: UnsafeRawPointer, _ i: Int) -> UInt32 {
        sheepLoad(n, headerBytes + i * leafEntryBytes, as: UInt32.self)
    }
    @inline(__always) public static func leafVID(_ n: UnsafeRawPointer, _ i: Int) -> UInt32 {
        sheepLoad(n, headerBytes + i * leafEntryBytes + 4, as: UInt32.self)
    }
    @inline(__always) public static func indirectIdx(_ n: UnsafeRawPointer, _ i: Int) -> UInt32 {
        sheepLoad(n, headerBytes + i * indirectEntryBytes, as: UInt32.self)
    }
    @inline(__always) public static func indirectOID(_ n: UnsafeRawPointer, _ i: Int) -> UInt64 {
        sheepLoad(n, headerBytes + i * indirectEntryBytes + 8, as: UInt64.self)
    }

    /// `sd_inode_init`.
    public static func initNode(_ n: UnsafeMutableRawPointer, depth: UInt16) {
        sheepStore(n, 0, magic)
        setDepth(n, depth)
        setEntries(n, 0)
    }

    /// A first word of 0 means the tree was never initialised: every index is unallocated.
    @inline(__always)
    public static func isInitialised(_ root: UnsafeRawPointer) -> Bool { sheepLoad(root, 0, as: UInt32.self) != 0 }

    /// Bytes of a node that carry information (`sd_inode_get_meta_size` for the root): header + entries.
    public static func usedBytes(_ n: UnsafeRawPointer) -> Int {
        guard isInitialised(n) else { return headerBytes }
        return headerBytes + entries(n) * (depth(n) == 2 ? indirectEntryBytes : leafEntryBytes)
    }

    // MARK: - Search

    /// `nbsearch`: binary search of entries sorted by idx; an exact match, or else the next greater position.
    /// Kept step for step (not a textbook lower bound), so that a tree with duplicate keys routes as sheep does.
    @inline(__always)
    static func nbsearch(_ key: UInt32, count: Int, _ keyAt: (Int) -> UInt32) -> Int {
        var l = 0, r = count - 1
        while l <= r && count > 0 {
            let m = l + (r - l) / 2
            let k = keyAt(m)
            if key < k { r = m - 1 } else if key > k { l = m + 1 } else { return m }
        }
        return l
    }

    @inline(__always)
    static func searchLeaf(_ n: UnsafeRawPointer, _ idx: UInt32) -> Int {
        nbsearch(idx, count: entries(n)) { leafIdx(n, $0) }
    }

    @inline(__always)
    static func searchIndirect(_ n: UnsafeRawPointer, _ idx: UInt32) -> Int {
        nbsearch(idx, count: entries(n)) { indirectIdx(n, $0) }
    }

    /// `sd_inode_get_vid` for a hyper volume: the owning VID of object `idx`, 0 when unallocated or when the
    /// leaf holding it cannot be read.
    public static func lookup(root: UnsafeRawPointer, idx: UInt32, leaf: (UInt64) -> UnsafeRawPointer?) -> UInt32 {
        guard isInitialised(root) else { return 0 }
        switch depth(root) {
        case 1:
            let p = searchLeaf(root, idx)
            return p < entries(root) && leafIdx(root, p) == idx ? leafVID(root, p) : 0
        case 2:
            let q = searchIndirect(root, idx)
            guard q < entries(root), let node = leaf(indirectOID(root, q)) else { return 0 }
            let p = searchLeaf(node, idx)
            return p < entries(node) && leafIdx(node, p) == idx ? leafVID(node, p) : 0
        default:
            return 0
        }
    }

    /// Every (idx, vid) pair `lookup` can reach, in index order, skipping unreadable leaves as sheep's traversal
    /// does. At depth 2 a leaf entry counts only if the root routes its idx to that leaf (idx above the previous
    /// root key, at most its own), so that this agrees with `lookup` even on a tree sheep mis-split.
    public static func forEach(root: UnsafeRawPointer, leaf: (UInt64) -> UnsafeRawPointer?,
                               _ body: (UInt32, UInt32) -> Void) {
        guard isInitialised(root) else { return }
        switch depth(root) {
        case 1:
            for i in 0..<entries(root) { body(leafIdx(root, i), leafVID(root, i)) }
        case 2:
            var floor: UInt32? = nil
            for q in 0..<entries(root) {
                let key = indirectIdx(root, q)
                defer { floor = max(floor ?? key, key) }
                guard let node = leaf(indirectOID(root, q)) else { continue }
                for i in 0..<entries(node) {
                    let idx = leafIdx(node, i)
                    if idx <= key, floor.map({ idx > $0 }) ?? true { body(idx, leafVID(node, i)) }
                }
            }
        default:
            return
        }
    }

    // MARK: - Update

    /// `sd_inode_set_vid`: points object `idx` at `vid`, inserting (and splitting) as sd_inode.c does.
    /// `vdiID` names new leaves (`vid_to_btree_oid(inode->vdi_id, inode->btree_counter++)`); `counter` is the
    /// inode's btree_counter. The root is changed in place; changed leaves are reported to `nodes`. On a
    /// failure nothing has been changed unless a split had already completed (as in sheep, which retries).
    public static func set<N: SheepBTreeNodes>(root: UnsafeMutableRawPointer, idx: UInt32, vid: UInt32,
                                               vdiID: UInt32, counter: inout UInt32, nodes: inout N,
                                               geometry: Geometry = .sheep) -> SetResult {
        if !isInitialised(root) { initNode(root, depth: 1) }
        guard nodeMagic(root) == magic else { return .corrupt }
        // Each pass either finishes or splits one node (sheep's SD_RES_AGAIN); a split always makes room, so
        // the second pass after a split finishes.
        while true {
            switch depth(root) {
            case 1:
                let p = searchLeaf(root, idx)
                if p < entries(root) && leafIdx(root, p) == idx {
                    setLeafVID(root, p, vid)
                    return .ok
                }
                if entries(root) >= geometry.maxLeafEntries {
                    let r = growRoot(root, vdiID: vdiID, counter: &counter, nodes: &nodes)
                    if r != .ok { return r }
                    continue
                }
                insertLeaf(root, at: p, idx: idx, vid: vid)
                return .ok
            case 2:
                let count = entries(root)
                guard count > 0 else { return .corrupt }
                let q = searchIndirect(root, idx)
                if q < count {
                    let oid = indirectOID(root, q)
                    guard let node = nodes.leaf(oid) else { return .nodeUnavailable }
                    let p = searchLeaf(node, idx)
                    if p < entries(node) && leafIdx(node, p) == idx {
                        setLeafVID(node, p, vid)
                        nodes.modified(oid)
                        return .ok
                    }
                    if entries(node) >= geometry.maxLeafEntries {
                        let r = splitLeaf(root, node, oid, vdiID: vdiID, counter: &counter, nodes: &nodes,
                                          geometry: geometry)
                        if r != .ok { return r }
                        continue
                    }
                    insertLeaf(node, at: p, idx: idx, vid: vid)
                    nodes.modified(oid)
                    return .ok
                }
                // Beyond every leaf's largest index: append to the last leaf while it has room, else start a
                // new leaf.
                let lastOID = indirectOID(root, count - 1)
                guard let last = nodes.leaf(lastOID) else { return .nodeUnavailable }
                if entries(last) < geometry.maxLeafEntries {
                    insertLeaf(last, at: searchLeaf(last, idx), idx: idx, vid: vid)
                    setIndirectIdx(root, count - 1, leafIdx(last, entries(last) - 1))
                    nodes.modified(lastOID)
                    return .ok
                }
                guard count < geometry.maxIndirectEntries else { return .full }
                let oid = nodeOID(vid: vdiID, number: counter)
                guard let node = nodes.newLeaf(oid) else { return .full }
                counter &+= 1
                initNode(node, depth: 1)
                insertLeaf(node, at: 0, idx: idx, vid: vid)
                nodes.modified(oid)
                insertIndirect(root, at: q, idx: idx, oid: oid)
                return .ok
            default:
                return .corrupt
            }
        }
    }

    /// `transfer_to_idx_root`: the full root leaf becomes two leaves (the lower entries/2 and the rest), and the
    /// root an index of them.
    private static func growRoot<N: SheepBTreeNodes>(_ root: UnsafeMutableRawPointer, vdiID: UInt32,
                                                     counter: inout UInt32, nodes: inout N) -> SetResult {
        let total = entries(root), num = total / 2
        let leftOID = nodeOID(vid: vdiID, number: counter)
        let rightOID = nodeOID(vid: vdiID, number: counter &+ 1)
        guard let left = nodes.newLeaf(leftOID) else { return .full }
        guard let right = nodes.newLeaf(rightOID) else { return .full }
        counter &+= 2
        copyEntries(from: root, first: 0, count: num, to: left)
        copyEntries(from: root, first: num, count: total - num, to: right)
        nodes.modified(leftOID)
        nodes.modified(rightOID)
        setEntries(root, 0)
        setDepth(root, 2)
        insertIndirect(root, at: 0, idx: leafIdx(left, num - 1), oid: leftOID)
        insertIndirect(root, at: 1, idx: leafIdx(right, total - num - 1), oid: rightOID)
        return .ok
    }

    /// `split_index_node`: the lower entries/2 of a full leaf move to a new leaf, the old leaf keeps the rest, and
    /// the root gains an entry for the new leaf.
    ///
    /// One deliberate difference: sd_inode.c keys the new root entry with `LAST_INDEX(new_ext)->idx`, the slot
    /// one past the new leaf's last entry, which is zero in the zero-filled buffer. That routes every index of
    /// the new leaf except 0 to the old leaf, where it is not found, so its objects read as unallocated. We key
    /// it with the new leaf's largest index, which sheep's lookup (and ours) routes correctly; the node layout,
    /// split point and btree_counter use are sheep's.
    private static func splitLeaf<N: SheepBTreeNodes>(_ root: UnsafeMutableRawPointer, _ old: UnsafeMutableRawPointer,
                                                      _ oldOID: UInt64, vdiID: UInt32, counter: inout UInt32,
                                                      nodes: inout N, geometry: Geometry) -> SetResult {
        guard entries(root) < geometry.maxIndirectEntries else { return .full }
        let total = entries(old), num = total / 2
        let newOID = nodeOID(vid: vdiID, number: counter)
        guard let new = nodes.newLeaf(newOID) else { return .full }
        counter &+= 1
        copyEntries(from: old, first: 0, count: num, to: new)
        (old + headerBytes).copyMemory(from: old + headerBytes + num * leafEntryBytes,
                                       byteCount: (total - num) * leafEntryBytes)
        setEntries(old, total - num)
        nodes.modified(newOID)
        nodes.modified(oldOID)
        let key = leafIdx(new, num - 1)
        insertIndirect(root, at: searchIndirect(root, key), idx: key, oid: newOID)
        return .ok
    }

    /// `split_to_nodes` for one side: header (magic, depth 1) and `count` entries starting at `first`.
    private static func copyEntries(from src: UnsafeRawPointer, first: Int, count: Int, to dst: UnsafeMutableRawPointer) {
        initNode(dst, depth: 1)
        (dst + headerBytes).copyMemory(from: src + headerBytes + first * leafEntryBytes, byteCount: count * leafEntryBytes)
        setEntries(dst, count)
    }

    private static func insertLeaf(_ n: UnsafeMutableRawPointer, at p: Int, idx: UInt32, vid: UInt32) {
        let count = entries(n)
        let at = n + headerBytes + p * leafEntryBytes
        (at + leafEntryBytes).copyMemory(from: at, byteCount: (count - p) * leafEntryBytes)
        sheepStore(at, 0, idx)
        sheepStore(at, 4, vid)
        setEntries(n, count + 1)
    }

    private static func insertIndirect(_ n: UnsafeMutableRawPointer, at p: Int, idx: UInt32, oid: UInt64) {
        let count = entries(n)
        let at = n + headerBytes + p * indirectEntryBytes
        (at + indirectEntryBytes).copyMemory(from: at, byteCount: (count - p) * indirectEntryBytes)
        sheepStore(at, 0, idx)
        sheepStore(at, 4, UInt32(0))
        sheepStore(at, 8, oid)
        setEntries(n, count + 1)
    }

    @inline(__always)
    private static func setLeafVID(_ n: UnsafeMutableRawPointer, _ i: Int, _ vid: UInt32) {
        sheepStore(n, headerBytes + i * leafEntryBytes + 4, vid)
    }

    @inline(__always)
    private static func setIndirectIdx(_ n: UnsafeMutableRawPointer, _ i: Int, _ idx: UInt32) {
        sheepStore(n, headerBytes + i * indirectEntryBytes, idx)
    }
}
