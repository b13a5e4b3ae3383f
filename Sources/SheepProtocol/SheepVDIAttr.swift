// VDI attributes (`struct sheepdog_vdi_attr`, sheep/vdi.c `get_vdi_attr`, dog/vdi.c `vdi_setattr`). An attribute
// is one object, `(hash(name) << 32) | VDI_ATTR_BIT | attr_id`, holding a header and the value. GET_VDI_ATTR
// is a cluster op, so creating one with SD_FLAG_CMD_EXCL is atomic cluster-wide: exactly one creator wins.
// Once the object exists its value is read and written with READ_OBJ / WRITE_OBJ like any object.

/// Byte layout of `struct sheepdog_vdi_attr` (natural alignment, no holes).
public enum SheepVDIAttrLayout {
    public static let nameOffset = 0
    public static let tagOffset = 256
    public static let ctimeOffset = 512
    public static let snapIDOffset = 520
    public static let valueLengthOffset = 524
    public static let keyOffset = 528
    public static let valueOffset = 784
    /// `SD_MAX_VDI_ATTR_KEY_LEN`.
    public static let keyBufferBytes = 256
    /// `SD_MAX_VDI_ATTR_VALUE_LEN`.
    public static let maxValueBytes = 65_536
    /// `SD_ATTR_OBJ_SIZE`: what `get_objsize` gives every attribute object.
    public static let objectSizeBytes = valueOffset + maxValueBytes
}

extension SheepOpcode {
    /// Internal op: needs `SheepWire.internalProtoVersion`.
    public static let getVDIAttr = SheepOpcode(rawValue: 0x89)
}

extension SheepFlags {
    /// GET_VDI_ATTR: create the attribute when it is missing (or, without `exclusive`, overwrite its slot).
    public static let attrCreate = SheepFlags(rawValue: 0x0100)
    /// GET_VDI_ATTR: VDI_EXIST when it already exists.
    public static let attrExclusive = SheepFlags(rawValue: 0x0200)
    /// GET_VDI_ATTR: delete it (its name is cleared, the object stays).
    public static let attrDelete = SheepFlags(rawValue: 0x0400)
}

extension SheepWire {
    /// `SD_SHEEP_PROTO_VER` of sheepdog v1.0+: internal ops (≥ 0x80) with another version get VER_MISMATCH.
    public static let internalProtoVersion: UInt8 = 0x0A
}

extension SheepOID {
    /// `vid_to_attr_oid`: `vid` is the hash of the VDI's name (stable across snapshots), not its VID.
    @inline(__always)
    public static func attr(vid: UInt32, attrID: UInt32) -> UInt64 {
        ((UInt64(vid) & vidMask) << vidShift) | vdiAttrBit | UInt64(attrID)
    }

    @inline(__always)
    public static func isAttr(_ oid: UInt64) -> Bool { oid & vdiAttrBit != 0 && oid & vdiBit == 0 }
}

public enum SheepVDIAttr {
    /// `hash_vdi_attr`: FNV-1a 64 over name[256], tag[256], snap_id (4 bytes LE) and key[256] of an encoded
    /// attribute (whole buffers, padding included), cut to 32 bits (`VDI_SPACE_SHIFT`, not the 24-bit VID
    /// space). The first slot `get_vdi_attr` probes.
    public static func hash(_ base: UnsafeRawPointer) -> UInt32 {
        var h = SheepVDIName.fnvOffsetBasis
        func mix(_ offset: Int, _ count: Int) {
            for i in 0..<count {
                h ^= UInt64(base.load(fromByteOffset: offset + i, as: UInt8.self))
                h = h &* SheepVDIName.fnvPrime
            }
        }
        mix(SheepVDIAttrLayout.nameOffset, SheepWire.vdiNameBufferBytes)
        mix(SheepVDIAttrLayout.tagOffset, SheepWire.vdiTagBufferBytes)
        mix(SheepVDIAttrLayout.snapIDOffset, 4)
        mix(SheepVDIAttrLayout.keyOffset, SheepVDIAttrLayout.keyBufferBytes)
        return UInt32(truncatingIfNeeded: h)
    }

    /// A whole attribute object as dog builds it: zeroed, then name, tag, snap_id, key, value_len and value.
    /// `value` longer than `maxValueBytes` is cut.
    public static func encode(name: String, tag: String = "", snapID: UInt32 = 0, key: String,
                              value: [UInt8] = []) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: SheepVDIAttrLayout.objectSizeBytes)
        let n = min(value.count, SheepVDIAttrLayout.maxValueBytes)
        out.withUnsafeMutableBytes { raw in
            let b = raw.baseAddress!
            SheepVDIName.encodeTruncating(name, to: b + SheepVDIAttrLayout.nameOffset, capacity: SheepWire.vdiNameBufferBytes)
            SheepVDIName.encodeTruncating(tag, to: b + SheepVDIAttrLayout.tagOffset, capacity: SheepWire.vdiTagBufferBytes)
            b.storeBytes(of: snapID.littleEndian, toByteOffset: SheepVDIAttrLayout.snapIDOffset, as: UInt32.self)
            b.storeBytes(of: UInt32(n).littleEndian, toByteOffset: SheepVDIAttrLayout.valueLengthOffset, as: UInt32.self)
            SheepVDIName.encodeTruncating(key, to: b + SheepVDIAttrLayout.keyOffset, capacity: SheepVDIAttrLayout.keyBufferBytes)
            value.withUnsafeBytes { v in
                if n > 0 { (b + SheepVDIAttrLayout.valueOffset).copyMemory(from: v.baseAddress!, byteCount: n) }
            }
        }
        return out
    }

    /// The value of an attribute object read back whole (or at least its header and value).
    public static func value(of object: [UInt8]) -> [UInt8]? {
        guard object.count >= SheepVDIAttrLayout.valueOffset else { return nil }
        let n = object.withUnsafeBytes {
            Int(UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: SheepVDIAttrLayout.valueLengthOffset, as: UInt32.self)))
        }
        guard n <= SheepVDIAttrLayout.maxValueBytes, SheepVDIAttrLayout.valueOffset + n <= object.count else { return nil }
        return Array(object[SheepVDIAttrLayout.valueOffset..<(SheepVDIAttrLayout.valueOffset + n)])
    }
}

extension SheepRequestHeader {
    /// GET_VDI_ATTR as dog sends it: the whole attribute object as payload, the snapshot id in `vdi.snapid`.
    public static func getVDIAttr(id: UInt32, flags: SheepFlags, snapID: UInt32 = 0) -> SheepRequestHeader {
        var h = SheepRequestHeader(opcode: .getVDIAttr, flags: flags.union(.write), id: id,
                                   dataLength: UInt32(SheepVDIAttrLayout.objectSizeBytes),
                                   protoVersion: SheepWire.internalProtoVersion)
        h.snapID = snapID
        return h
    }
}

extension SheepClient {
    /// GET_VDI_ATTR for `key` of a VDI. On success the reply's `vdiID` and `attrID` name the attribute object
    /// (`SheepOID.attr`). `flags`: none to find it, `.attrCreate` (+ `.attrExclusive`) to create, `.attrDelete`.
    public func vdiAttr(name: String, tag: String = "", snapID: UInt32 = 0, key: String, value: [UInt8] = [],
                        flags: SheepFlags = []) throws(SheepClientError) -> SheepReply {
        let payload = SheepVDIAttr.encode(name: name, tag: tag, snapID: snapID, key: key, value: value)
        return try call(.getVDIAttr(id: 0, flags: flags, snapID: snapID), payload: payload)
    }
}
