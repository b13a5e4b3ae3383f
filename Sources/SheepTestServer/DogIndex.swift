// A VDI's object index as dog holds it while it works: the inode image (header + data_vdi_id), read flat or,
// for a hyper volume, as the B-tree root with its leaves read on demand (sd_inode_get_vid / sd_inode_set_vid
// with dog's object reader and writer).

import SheepProtocol

final class DogIndex: SheepBTreeNodes {
    let client: SheepClient
    let vid: UInt32
    let header: SheepInodeHeader
    /// Header + data_vdi_id, as read at offset 0 of the inode (`SheepInodeLayout.clientInodeSizeBytes`).
    private var image: [UInt8]
    private var leaves: [UInt64: UnsafeMutableRawPointer] = [:]
    private var created: Set<UInt64> = []
    private var changed: Set<UInt64> = []
    private var counter: UInt32

    init(client: SheepClient, vid: UInt32, header: SheepInodeHeader, image: [UInt8]) {
        self.client = client
        self.vid = vid
        self.header = header
        self.image = image
        if self.image.count < SheepInodeLayout.clientInodeSizeBytes {
            self.image += [UInt8](repeating: 0, count: SheepInodeLayout.clientInodeSizeBytes - self.image.count)
        }
        counter = header.btreeCounter
    }

    deinit { for p in leaves.values { p.deallocate() } }

    var isHyper: Bool { header.storePolicy != 0 }

    /// `sd_inode_get_vid`: the VID owning object `idx`, 0 when unallocated.
    func owner(_ idx: UInt32) -> UInt32 {
        if !isHyper {
            guard idx < UInt32(SheepInodeLayout.dataIndexSlots) else { return 0 }
            return image.withUnsafeBytes { SheepInodeLayout.loadSlot($0.baseAddress!, idx) }
        }
        return image.withUnsafeBytes { raw in
            SheepBTree.lookup(root: raw.baseAddress! + SheepInodeLayout.headerSizeBytes, idx: idx) { self.readLeaf($0) }
        }
    }

    /// Every allocated (idx, vid) in index order, of a flat index up to `count` objects.
    func forEachAllocated(count: UInt64, _ body: (UInt32, UInt32) -> Void) {
        if isHyper {
            image.withUnsafeBytes { raw in
                SheepBTree.forEach(root: raw.baseAddress! + SheepInodeLayout.headerSizeBytes,
                                   leaf: { self.readLeaf($0) }) { idx, v in if v != 0 { body(idx, v) } }
            }
            return
        }
        let n = min(UInt64(SheepInodeLayout.dataIndexSlots), count)
        image.withUnsafeBytes { raw in
            var i: UInt32 = 0
            while UInt64(i) < n {
                let v = SheepInodeLayout.loadSlot(raw.baseAddress!, i)
                if v != 0 { body(i, v) }
                i += 1
            }
        }
    }

    /// After a create: point slot `idx` at this VDI and persist it. Flat: one 4-byte slot write. Hyper: as
    /// sd_inode_set_vid + sd_inode_write_vid: new leaves are created and changed leaves rewritten whole, then the
    /// inode header and root (offset 0, up to the root's last entry) and btree_counter.
    func setOwner(_ idx: UInt32, to value: UInt32) throws {
        let inodeOID = SheepOID.inode(vid: vid)
        if !isHyper {
            image.withUnsafeMutableBytes { SheepInodeLayout.storeSlot($0.baseAddress!, idx, value) }
            let bytes = withUnsafeBytes(of: value.littleEndian) { Array($0) }
            try mustWrite(inodeOID, offset: SheepInodeLayout.slotOffset(idx), bytes, "Failed to update the inode")
            return
        }
        var nodes = self
        var count = counter
        let result = image.withUnsafeMutableBytes { raw in
            SheepBTree.set(root: raw.baseAddress! + SheepInodeLayout.headerSizeBytes, idx: idx, vid: value,
                           vdiID: vid, counter: &count, nodes: &nodes)
        }
        counter = count
        guard result == .ok else {
            throw SheepClientError.failed(.invalidParms, "B-tree of VDI \(hex(vid)) cannot take index \(idx): \(result)")
        }
        for oid in changed.sorted() {
            let leaf = [UInt8](UnsafeRawBufferPointer(start: leaves[oid]!, count: SheepBTree.nodeBytes))
            let r = try client.writeObject(oid, offset: 0, data: leaf, create: created.contains(oid))
            guard r.result == .success else { throw SheepClientError.failed(r.result, "Failed to write B-tree node \(hex(oid))") }
        }
        created.removeAll()
        changed.removeAll()
        let rootEnd = image.withUnsafeBytes { SheepBTree.usedBytes($0.baseAddress! + SheepInodeLayout.headerSizeBytes) }
        try mustWrite(inodeOID, offset: 0, Array(image[0..<(SheepInodeLayout.headerSizeBytes + rootEnd)]),
                      "Failed to update the inode")
        let c = withUnsafeBytes(of: counter.littleEndian) { Array($0) }
        try mustWrite(inodeOID, offset: UInt32(SheepInodeLayout.btreeCounterOffset), c, "Failed to update the inode")
    }

    private func mustWrite(_ oid: UInt64, offset: UInt32, _ data: [UInt8], _ what: String) throws {
        let w = try client.writeObject(oid, offset: offset, data: data)
        guard w.result == .success else { throw SheepClientError.failed(w.result, what) }
    }

    private func readLeaf(_ oid: UInt64) -> UnsafeRawPointer? { leaf(oid).map { UnsafeRawPointer($0) } }

    // MARK: - SheepBTreeNodes

    func leaf(_ oid: UInt64) -> UnsafeMutableRawPointer? {
        if let p = leaves[oid] { return p }
        guard let r = try? client.readObject(oid, offset: 0, length: UInt32(SheepBTree.nodeBytes)), r.result == .success
        else { return nil }
        let p = newBuffer(oid)
        r.data.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: min($0.count, SheepBTree.nodeBytes)) }
        return p
    }

    func newLeaf(_ oid: UInt64) -> UnsafeMutableRawPointer? {
        created.insert(oid)
        return newBuffer(oid)
    }

    func modified(_ oid: UInt64) { changed.insert(oid) }

    private func newBuffer(_ oid: UInt64) -> UnsafeMutableRawPointer {
        let p = UnsafeMutableRawPointer.allocate(byteCount: SheepBTree.nodeBytes, alignment: 16)
        p.initializeMemory(as: UInt8.self, repeating: 0, count: SheepBTree.nodeBytes)
        leaves[oid] = p
        return p
    }
}
