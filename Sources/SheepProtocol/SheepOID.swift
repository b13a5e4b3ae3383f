// Object ids (§6.1). Bits 0–31 data index, 32–55 VID, 59 ledger, 60 B-tree node, 61 VDI attribute,
// 62 VM state, 63 inode. A data object is named by the VID that owns it, which is how snapshots and
// clones share data.

public enum SheepOID {
    public static let vdiBit: UInt64 = 1 << 63
    public static let vmstateBit: UInt64 = 1 << 62
    public static let vdiAttrBit: UInt64 = 1 << 61
    public static let vdiBTreeBit: UInt64 = 1 << 60
    public static let ledgerBit: UInt64 = 1 << 59
    public static let vidShift: UInt64 = 32
    public static let vidMask: UInt64 = 0xFF_FFFF
    public static let dataIndexMask: UInt64 = 0xFFFF_FFFF

    /// Inode object of `vid`: `(1 << 63) | (vid << 32)`.
    @inline(__always)
    public static func inode(vid: UInt32) -> UInt64 {
        vdiBit | ((UInt64(vid) & vidMask) << vidShift)
    }

    /// Data object `index` owned by `vid`: `(vid << 32) | index`.
    @inline(__always)
    public static func data(vid: UInt32, index: UInt32) -> UInt64 {
        ((UInt64(vid) & vidMask) << vidShift) | UInt64(index)
    }

    @inline(__always)
    public static func vid(of oid: UInt64) -> UInt32 {
        UInt32(truncatingIfNeeded: (oid >> vidShift) & vidMask)
    }

    @inline(__always)
    public static func dataIndex(of oid: UInt64) -> UInt32 {
        UInt32(truncatingIfNeeded: oid & dataIndexMask)
    }

    @inline(__always)
    public static func isInode(_ oid: UInt64) -> Bool { oid & vdiBit != 0 }

    /// `is_data_obj`: none of the inode, VM state, attribute, B-tree or ledger bits.
    @inline(__always)
    public static func isData(_ oid: UInt64) -> Bool {
        oid & (vdiBit | vmstateBit | vdiAttrBit | vdiBTreeBit | ledgerBit) == 0
    }
}
