// The inode object (`struct sd_inode`, v0.9+ layout, §6.3) and its header fields.

public enum SheepInodeLayout {
    public static let nameOffset = 0
    public static let tagOffset = 256
    public static let createTimeOffset = 512
    public static let snapCTimeOffset = 520
    public static let vmClockNsecOffset = 528
    public static let vdiSizeOffset = 536
    public static let vmStateSizeOffset = 544
    public static let copyPolicyOffset = 552
    public static let storePolicyOffset = 553
    public static let nrCopiesOffset = 554
    public static let blockSizeShiftOffset = 555
    public static let snapIDOffset = 556
    public static let vdiIDOffset = 560
    public static let parentVDIIDOffset = 564
    public static let btreeCounterOffset = 568
    /// `SD_INODE_HEADER_SIZE` = offsetof(data_vdi_id): the index starts here.
    public static let headerSizeBytes = 4664
    /// `SD_INODE_DATA_INDEX`: slots in the flat index.
    public static let dataIndexSlots = 1 << 20
    public static let slotSizeBytes = 4
    public static let dataIndexSizeBytes = dataIndexSlots * slotSizeBytes
    /// Header + flat index: what tgt and QEMU read at open (their struct has no gref). Also the length the
    /// sheep treats as an "inode refresh" read.
    public static let clientInodeSizeBytes = headerSizeBytes + dataIndexSizeBytes  // 4,198,968
    /// gref[2^20] of {int32 generation, int32 count} after the index (v0.9+).
    public static let grefOffset = clientInodeSizeBytes
    public static let grefSizeBytes = dataIndexSlots * 8
    /// Full `SD_INODE_SIZE` on v0.9+: the object size of every inode object.
    public static let fullInodeSizeBytes = clientInodeSizeBytes + grefSizeBytes  // 12,587,576
    /// Largest flat (store_policy 0) VDI at 4 MiB objects (`SD_OLD_MAX_VDI_SIZE`).
    public static let maxFlatVDISizeBytesAtDefaultShift: UInt64 = UInt64(dataIndexSlots) << 22

    /// One index slot (`data_vdi_id[i]`, a little-endian VID) is 4 bytes.
    public static let slotBytes = 4

    /// Byte offset of slot `index` inside the inode object: `4664 + 4 * index`.
    @inline(__always)
    public static func slotOffset(_ index: UInt32) -> UInt32 {
        UInt32(headerSizeBytes) &+ UInt32(slotBytes) &* index
    }

    /// The index slot a byte range of an inode object covers exactly, if it is whole, aligned slots.
    public static func slotRange(offset: UInt32, length: UInt32) -> Range<UInt32>? {
        let start = UInt64(offset), end = UInt64(offset) + UInt64(length)
        guard length > 0, start >= UInt64(headerSizeBytes), end <= UInt64(clientInodeSizeBytes) else { return nil }
        let rel = start - UInt64(headerSizeBytes)
        guard rel % 4 == 0, length % 4 == 0 else { return nil }
        let first = UInt32(rel / 4)
        return first..<(first + length / 4)
    }
}

/// The fixed inode header (bytes 0..<572, everything before the unused area and the index).
public struct SheepInodeHeader: Equatable, Sendable {
    public var name: String
    public var tag: String
    /// seconds << 32 | nanoseconds.
    public var createTime: UInt64
    /// Non-zero ⇒ this VDI is a snapshot.
    public var snapCTime: UInt64
    public var vmClockNsec: UInt64
    public var vdiSize: UInt64
    public var vmStateSize: UInt64
    public var copyPolicy: UInt8
    /// 0 = flat index, 1 = hyper volume (B-tree).
    public var storePolicy: UInt8
    public var nrCopies: UInt8
    public var blockSizeShift: UInt8
    public var snapID: UInt32
    public var vdiID: UInt32
    public var parentVDIID: UInt32
    public var btreeCounter: UInt32

    /// Bytes a parse needs: everything up to and including `btree_counter`.
    public static let encodedSizeBytes = SheepInodeLayout.btreeCounterOffset + 4

    public init(name: String = "", tag: String = "", createTime: UInt64 = 0, snapCTime: UInt64 = 0,
                vmClockNsec: UInt64 = 0, vdiSize: UInt64 = 0, vmStateSize: UInt64 = 0,
                copyPolicy: UInt8 = 0, storePolicy: UInt8 = 0, nrCopies: UInt8 = 0,
                blockSizeShift: UInt8 = SheepWire.defaultBlockSizeShift, snapID: UInt32 = 0,
                vdiID: UInt32 = 0, parentVDIID: UInt32 = 0, btreeCounter: UInt32 = 0) {
        self.name = name; self.tag = tag; self.createTime = createTime; self.snapCTime = snapCTime
        self.vmClockNsec = vmClockNsec; self.vdiSize = vdiSize; self.vmStateSize = vmStateSize
        self.copyPolicy = copyPolicy; self.storePolicy = storePolicy; self.nrCopies = nrCopies
        self.blockSizeShift = blockSizeShift; self.snapID = snapID; self.vdiID = vdiID
        self.parentVDIID = parentVDIID; self.btreeCounter = btreeCounter
    }

    /// Parses the header from at least `encodedSizeBytes` bytes at `base`. Names are read up to the first NUL
    /// (as strncmp sees them); invalid UTF-8 is repaired, never trapped on.
    public init(from base: UnsafeRawPointer) {
        name = SheepVDIName.decode(base + SheepInodeLayout.nameOffset, capacity: SheepWire.vdiNameBufferBytes)
        tag = SheepVDIName.decode(base + SheepInodeLayout.tagOffset, capacity: SheepWire.vdiTagBufferBytes)
        createTime = sheepLoad(base, SheepInodeLayout.createTimeOffset, as: UInt64.self)
        snapCTime = sheepLoad(base, SheepInodeLayout.snapCTimeOffset, as: UInt64.self)
        vmClockNsec = sheepLoad(base, SheepInodeLayout.vmClockNsecOffset, as: UInt64.self)
        vdiSize = sheepLoad(base, SheepInodeLayout.vdiSizeOffset, as: UInt64.self)
        vmStateSize = sheepLoad(base, SheepInodeLayout.vmStateSizeOffset, as: UInt64.self)
        copyPolicy = sheepLoad(base, SheepInodeLayout.copyPolicyOffset, as: UInt8.self)
        storePolicy = sheepLoad(base, SheepInodeLayout.storePolicyOffset, as: UInt8.self)
        nrCopies = sheepLoad(base, SheepInodeLayout.nrCopiesOffset, as: UInt8.self)
        blockSizeShift = sheepLoad(base, SheepInodeLayout.blockSizeShiftOffset, as: UInt8.self)
        snapID = sheepLoad(base, SheepInodeLayout.snapIDOffset, as: UInt32.self)
        vdiID = sheepLoad(base, SheepInodeLayout.vdiIDOffset, as: UInt32.self)
        parentVDIID = sheepLoad(base, SheepInodeLayout.parentVDIIDOffset, as: UInt32.self)
        btreeCounter = sheepLoad(base, SheepInodeLayout.btreeCounterOffset, as: UInt32.self)
    }

    /// Parses from a byte array; nil if it is shorter than the header.
    public init?(bytes: [UInt8]) {
        guard bytes.count >= SheepInodeHeader.encodedSizeBytes else { return nil }
        self = bytes.withUnsafeBytes { SheepInodeHeader(from: $0.baseAddress!) }
    }

    /// Writes the header fields at `base` (`encodedSizeBytes` bytes); names are truncated to 255 bytes and
    /// NUL padded. Bytes after the header (unused area, index) are not touched.
    public func encode(to base: UnsafeMutableRawPointer) {
        SheepVDIName.encodeTruncating(name, to: base + SheepInodeLayout.nameOffset,
                                      capacity: SheepWire.vdiNameBufferBytes)
        SheepVDIName.encodeTruncating(tag, to: base + SheepInodeLayout.tagOffset,
                                      capacity: SheepWire.vdiTagBufferBytes)
        sheepStore(base, SheepInodeLayout.createTimeOffset, createTime)
        sheepStore(base, SheepInodeLayout.snapCTimeOffset, snapCTime)
        sheepStore(base, SheepInodeLayout.vmClockNsecOffset, vmClockNsec)
        sheepStore(base, SheepInodeLayout.vdiSizeOffset, vdiSize)
        sheepStore(base, SheepInodeLayout.vmStateSizeOffset, vmStateSize)
        sheepStore(base, SheepInodeLayout.copyPolicyOffset, copyPolicy)
        sheepStore(base, SheepInodeLayout.storePolicyOffset, storePolicy)
        sheepStore(base, SheepInodeLayout.nrCopiesOffset, nrCopies)
        sheepStore(base, SheepInodeLayout.blockSizeShiftOffset, blockSizeShift)
        sheepStore(base, SheepInodeLayout.snapIDOffset, snapID)
        sheepStore(base, SheepInodeLayout.vdiIDOffset, vdiID)
        sheepStore(base, SheepInodeLayout.parentVDIIDOffset, parentVDIID)
        sheepStore(base, SheepInodeLayout.btreeCounterOffset, btreeCounter)
    }

    public var bytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: SheepInodeHeader.encodedSizeBytes)
        out.withUnsafeMutableBytes { encode(to: $0.baseAddress!) }
        return out
    }

    /// `vdi_is_snapshot`.
    public var isSnapshot: Bool { snapCTime != 0 }
    /// An empty name marks a deleted VDI.
    public var isDeleted: Bool { name.isEmpty }
    /// Object size in bytes, nil if the shift is outside 20...31.
    public var objectSizeBytes: UInt64? {
        guard blockSizeShift >= SheepWire.minBlockSizeShift, blockSizeShift <= SheepWire.maxBlockSizeShift
        else { return nil }
        return UInt64(1) << UInt64(blockSizeShift)
    }
}

extension SheepInodeLayout {
    /// Reads index slot `index` from an inode image starting at `inodeBase`.
    @inline(__always)
    public static func loadSlot(_ inodeBase: UnsafeRawPointer, _ index: UInt32) -> UInt32 {
        sheepLoad(inodeBase, Int(slotOffset(index)), as: UInt32.self)
    }

    @inline(__always)
    public static func storeSlot(_ inodeBase: UnsafeMutableRawPointer, _ index: UInt32, _ vid: UInt32) {
        sheepStore(inodeBase, Int(slotOffset(index)), vid)
    }
}
