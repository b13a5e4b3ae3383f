import Testing
@testable import SheepProtocol
import TestSupport

/// Leaves kept in memory, as a dictionary of oid → image, recording what the tree created and changed.
struct MemoryBTreeNodes: SheepBTreeNodes {
    var leaves: [UInt64: UnsafeMutableRawPointer] = [:]
    var created: [UInt64] = []
    var changed: Set<UInt64> = []
    var nodeBytes = SheepBTree.nodeBytes
    var maxLeaves = Int.max

    mutating func leaf(_ oid: UInt64) -> UnsafeMutableRawPointer? { leaves[oid] }

    mutating func newLeaf(_ oid: UInt64) -> UnsafeMutableRawPointer? {
        guard leaves.count < maxLeaves else { return nil }
        let p = UnsafeMutableRawPointer.allocate(byteCount: nodeBytes, alignment: 16)
        p.initializeMemory(as: UInt8.self, repeating: 0, count: nodeBytes)
        leaves[oid] = p
        created.append(oid)
        return p
    }

    mutating func modified(_ oid: UInt64) { changed.insert(oid) }

    func release() { for p in leaves.values { p.deallocate() } }
}

/// A zeroed root (the inode's data_vdi_id area).
private func makeRoot(_ bytes: Int = SheepBTree.nodeBytes) -> UnsafeMutableRawPointer {
    let p = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 16)
    p.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
    return p
}

@Suite struct SheepBTreeTests {
    static let vdi: UInt32 = 0x7c2b25

    private func lookup(_ root: UnsafeRawPointer, _ nodes: MemoryBTreeNodes, _ idx: UInt32) -> UInt32 {
        SheepBTree.lookup(root: root, idx: idx) { nodes.leaves[$0].map { UnsafeRawPointer($0) } }
    }

    private func all(_ root: UnsafeRawPointer, _ nodes: MemoryBTreeNodes) -> [(UInt32, UInt32)] {
        var out: [(UInt32, UInt32)] = []
        SheepBTree.forEach(root: root, leaf: { nodes.leaves[$0].map { UnsafeRawPointer($0) } }) { out.append(($0, $1)) }
        return out
    }

    @Test func geometryAndOidsAreSheeps() {
        #expect(SheepBTree.Geometry.sheep.maxLeafEntries == 524_287)
        #expect(SheepBTree.Geometry.sheep.maxIndirectEntries == 262_143)
        #expect(SheepBTree.nodeOID(vid: 0x7c2b25, number: 3) == 0x107c_2b25_0000_0003)
        #expect(!SheepOID.isData(SheepBTree.nodeOID(vid: 1, number: 0)))
    }

    @Test func firstInsertInitialisesARootLeafInSheepsLayout() {
        let root = makeRoot()
        defer { root.deallocate() }
        var nodes = MemoryBTreeNodes()
        defer { nodes.release() }
        #expect(!SheepBTree.isInitialised(root))
        #expect(lookup(root, nodes, 5) == 0)
        var counter: UInt32 = 0
        #expect(SheepBTree.set(root: root, idx: 0x0010_0005, vid: 0xAB, vdiID: Self.vdi, counter: &counter, nodes: &nodes) == .ok)
        let bytes = Array(UnsafeRawBufferPointer(start: root, count: 16))
        #expect(bytes == [0x74, 0x62, 1, 0, 1, 0, 0, 0, 0x05, 0x00, 0x10, 0x00, 0xAB, 0, 0, 0])
        #expect(SheepBTree.usedBytes(root) == 16)
        #expect(lookup(root, nodes, 0x0010_0005) == 0xAB)
        #expect(lookup(root, nodes, 0x0010_0004) == 0)
        #expect(counter == 0 && nodes.created.isEmpty && nodes.changed.isEmpty)
    }

    @Test func corruptRootIsRefusedNotRewritten() {
        let root = makeRoot(64)
        defer { root.deallocate() }
        root.storeBytes(of: UInt32(0xDEAD_BEEF), as: UInt32.self)
        var nodes = MemoryBTreeNodes(nodeBytes: 64)
        var counter: UInt32 = 0
        #expect(SheepBTree.set(root: root, idx: 1, vid: 1, vdiID: 1, counter: &counter, nodes: &nodes,
                               geometry: .init(maxLeafEntries: 3, maxIndirectEntries: 3)) == .corrupt)
        #expect(root.load(as: UInt32.self) == 0xDEAD_BEEF)
    }

    /// Random inserts and overwrites against a dictionary, with small nodes so that root growth, appends to the
    /// last leaf, new leaves and mid-leaf splits all happen many times.
    @Test(arguments: [UInt64(1), 2, 3, 4])
    func randomizedAgainstADictionary(seed: UInt64) {
        let geometry = SheepBTree.Geometry(maxLeafEntries: 7, maxIndirectEntries: 400)
        let nodeBytes = SheepBTree.headerBytes + 400 * SheepBTree.indirectEntryBytes
        let root = makeRoot(nodeBytes)
        defer { root.deallocate() }
        var nodes = MemoryBTreeNodes(nodeBytes: nodeBytes)
        defer { nodes.release() }
        var rng = SeededRandom(seed: seed)   // deterministic, so a failure reproduces
        var model: [UInt32: UInt32] = [:]
        var counter: UInt32 = 0
        for step in 0..<600 {
            // Mostly a dense range (splits in the middle), sometimes far indices (appends, new leaves).
            let idx = rng.next() % 4 == 0 ? UInt32(truncatingIfNeeded: rng.next()) : UInt32(rng.next() % 500)
            let vid = UInt32(rng.next() % 3) + 1
            #expect(SheepBTree.set(root: root, idx: idx, vid: vid, vdiID: Self.vdi, counter: &counter, nodes: &nodes,
                                   geometry: geometry) == .ok)
            model[idx] = vid
            if step % 50 == 0 || step == 599 {
                for (k, v) in model { #expect(lookup(root, nodes, k) == v, "idx \(k) at step \(step)") }
                #expect(lookup(root, nodes, 501) == model[501, default: 0])
            }
        }
        let listed = all(root, nodes)
        #expect(listed.map(\.0) == model.keys.sorted())
        #expect(listed.map(\.1) == model.keys.sorted().map { model[$0]! })
        // Structure: counter names every leaf, root keys are each leaf's largest index, no leaf over capacity.
        #expect(SheepBTree.depth(root) == 2)
        #expect(Int(counter) == nodes.created.count)
        #expect(Set(nodes.created) == Set((0..<counter).map { SheepBTree.nodeOID(vid: Self.vdi, number: $0) }))
        var previous: UInt32? = nil
        for q in 0..<SheepBTree.entries(root) {
            let key = SheepBTree.indirectIdx(root, q)
            let leaf = nodes.leaves[SheepBTree.indirectOID(root, q)]!
            let n = SheepBTree.entries(leaf)
            #expect(n >= 1 && n <= geometry.maxLeafEntries)
            #expect(SheepBTree.leafIdx(leaf, n - 1) == key)
            if let previous { #expect(key > previous && SheepBTree.leafIdx(leaf, 0) > previous) }
            previous = key
        }
        #expect(Set(nodes.changed) == Set(nodes.created))
    }

    /// The split points with sheep's real node sizes: the root leaf fills at 524,287 entries, then splits into
    /// leaves 0 (lower 262,143) and 1 (the rest); appends fill the last leaf and then start leaf 2; an insert into
    /// a full leaf moves its lower half to a new leaf.
    @Test func splitBoundariesAtSheepsNodeSize() {
        let root = makeRoot()
        defer { root.deallocate() }
        var nodes = MemoryBTreeNodes()
        defer { nodes.release() }
        var counter: UInt32 = 0
        let maxLeaf = UInt32(SheepBTree.Geometry.sheep.maxLeafEntries)
        func put(_ idx: UInt32) -> SheepBTree.SetResult {
            SheepBTree.set(root: root, idx: idx, vid: Self.vdi, vdiID: Self.vdi, counter: &counter, nodes: &nodes)
        }
        // Even indices only, so odd ones can later land inside a full leaf.
        var n: UInt32 = 0
        while n < maxLeaf {
            #expect(put(2 * n) == .ok)
            n += 1
        }
        #expect(SheepBTree.depth(root) == 1 && SheepBTree.entries(root) == 524_287 && counter == 0)
        #expect(put(2 * n) == .ok)   // the 524,288th: the root grows
        n += 1
        #expect(SheepBTree.depth(root) == 2 && SheepBTree.entries(root) == 2 && counter == 2)
        let leaf0 = SheepBTree.nodeOID(vid: Self.vdi, number: 0), leaf1 = SheepBTree.nodeOID(vid: Self.vdi, number: 1)
        #expect(SheepBTree.indirectOID(root, 0) == leaf0 && SheepBTree.indirectOID(root, 1) == leaf1)
        #expect(SheepBTree.entries(nodes.leaves[leaf0]!) == 262_143)
        #expect(SheepBTree.indirectIdx(root, 0) == 2 * 262_142)
        #expect(SheepBTree.entries(nodes.leaves[leaf1]!) == 262_145)
        #expect(SheepBTree.indirectIdx(root, 1) == 2 * 524_287)
        // Appends go to leaf 1 until it is full, then to a new leaf 2.
        while SheepBTree.entries(nodes.leaves[leaf1]!) < Int(maxLeaf) {
            #expect(put(2 * n) == .ok)
            n += 1
        }
        #expect(counter == 2)
        let leaf1Max = SheepBTree.indirectIdx(root, 1)
        #expect(put(2 * n) == .ok)
        #expect(counter == 3 && SheepBTree.entries(root) == 3)
        let leaf2 = SheepBTree.nodeOID(vid: Self.vdi, number: 2)
        #expect(SheepBTree.indirectOID(root, 2) == leaf2 && SheepBTree.entries(nodes.leaves[leaf2]!) == 1)
        // An odd index inside full leaf 1: its lower 262,143 entries move to leaf 3, keyed by their largest index.
        let leaf1Min = SheepBTree.leafIdx(nodes.leaves[leaf1]!, 0)
        let odd = leaf1Min + 1
        #expect(put(odd) == .ok)
        #expect(counter == 4 && SheepBTree.entries(root) == 4)
        let leaf3 = SheepBTree.nodeOID(vid: Self.vdi, number: 3)
        #expect(SheepBTree.indirectOID(root, 1) == leaf3 && SheepBTree.indirectOID(root, 2) == leaf1)
        #expect(SheepBTree.entries(nodes.leaves[leaf3]!) == 262_143 + 1)
        #expect(SheepBTree.entries(nodes.leaves[leaf1]!) == 262_144)
        #expect(SheepBTree.indirectIdx(root, 1) == leaf1Min + 2 * 262_142)
        #expect(SheepBTree.indirectIdx(root, 2) == leaf1Max)
        // Everything is still found where it was put.
        for probe: UInt32 in [0, 2, odd, odd - 1, odd + 1, leaf1Min + 2 * 262_142, leaf1Min + 2 * 262_143, leaf1Max, 2 * n] {
            #expect(lookup(root, nodes, probe) == (probe % 2 == 0 || probe == odd ? Self.vdi : 0), "idx \(probe)")
        }
        #expect(lookup(root, nodes, odd + 2) == 0)
        #expect(all(root, nodes).count == Int(n) + 2)
    }

    @Test func boundOnLeavesIsReportedAsFull() {
        let geometry = SheepBTree.Geometry(maxLeafEntries: 3, maxIndirectEntries: 8)
        let root = makeRoot(256)
        defer { root.deallocate() }
        var nodes = MemoryBTreeNodes(nodeBytes: 256, maxLeaves: 2)
        defer { nodes.release() }
        var counter: UInt32 = 0
        // 0, 1, 2 fill the root leaf; 3 splits it into leaves of 1 and 2 entries and fills the second.
        for i: UInt32 in 0..<4 {
            #expect(SheepBTree.set(root: root, idx: i, vid: 1, vdiID: 1, counter: &counter, nodes: &nodes,
                                   geometry: geometry) == .ok)
        }
        // The last leaf is full and there is no room for a third.
        #expect(SheepBTree.set(root: root, idx: 4, vid: 1, vdiID: 1, counter: &counter, nodes: &nodes,
                               geometry: geometry) == .full)
        #expect(counter == 2 && lookup(root, nodes, 4) == 0 && lookup(root, nodes, 3) == 1)
    }

    /// A tree sheep mis-split (its new root entry keyed 0, §split_index_node) reads as sheep reads it: only what
    /// the root routes to a leaf is found, and forEach lists the same.
    @Test func sheepsZeroKeyedSplitReadsAsSheepReadsIt() {
        let root = makeRoot(256)
        defer { root.deallocate() }
        var nodes = MemoryBTreeNodes(nodeBytes: 256)
        defer { nodes.release() }
        let a = nodes.newLeaf(SheepBTree.nodeOID(vid: 1, number: 2))!, b = nodes.newLeaf(SheepBTree.nodeOID(vid: 1, number: 0))!
        SheepBTree.initNode(a, depth: 1)
        SheepBTree.initNode(b, depth: 1)
        var counter: UInt32 = 0
        let g = SheepBTree.Geometry(maxLeafEntries: 10, maxIndirectEntries: 10)
        var scratch = MemoryBTreeNodes(nodeBytes: 256)
        for i: UInt32 in [0, 1, 2] { _ = SheepBTree.set(root: a, idx: i, vid: 7, vdiID: 1, counter: &counter, nodes: &scratch, geometry: g) }
        for i: UInt32 in [3, 4] { _ = SheepBTree.set(root: b, idx: i, vid: 8, vdiID: 1, counter: &counter, nodes: &scratch, geometry: g) }
        SheepBTree.initNode(root, depth: 2)
        root.storeBytes(of: UInt32(2), toByteOffset: 4, as: UInt32.self)
        root.storeBytes(of: UInt32(0), toByteOffset: 8, as: UInt32.self)
        root.storeBytes(of: SheepBTree.nodeOID(vid: 1, number: 2), toByteOffset: 16, as: UInt64.self)
        root.storeBytes(of: UInt32(4), toByteOffset: 24, as: UInt32.self)
        root.storeBytes(of: SheepBTree.nodeOID(vid: 1, number: 0), toByteOffset: 32, as: UInt64.self)
        #expect([0, 1, 2, 3, 4, 5].map { lookup(root, nodes, $0) } == [7, 0, 0, 8, 8, 0])
        #expect(all(root, nodes).map(\.0) == [0, 3, 4])
    }
}
