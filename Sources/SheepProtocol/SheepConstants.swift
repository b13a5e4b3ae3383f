// Protocol constants of the public sheepdog client protocol (include/sheepdog_proto.h, SHEEPDOG-PROTOCOL.md).

/// Sizes and limits that are part of the wire contract.
public enum SheepWire {
    /// Both headers are exactly 48 bytes (`SD_REQ_SIZE`, `SD_RSP_SIZE`).
    public static let headerSizeBytes = 48
    /// TCP port a sheep listens on by default (`SD_LISTEN_PORT`).
    public static let defaultPort: UInt16 = 7000
    /// `SD_PROTO_VER` of sheepdog itself. A request with a larger non-zero version gets VER_MISMATCH.
    public static let serverProtoVersion: UInt8 = 0x02
    /// What a client should send: valid on every sheep and never zero-trimmed (§1).
    public static let clientProtoVersion: UInt8 = 0x01
    /// Opcodes at or above this are sheep-internal and need the release-specific internal version.
    public static let firstInternalOpcode: UInt8 = 0x80
    /// VDI name and tag buffers are NUL padded to 256 bytes each (`SD_MAX_VDI_LEN`, `SD_MAX_VDI_TAG_LEN`).
    public static let vdiNameBufferBytes = 256
    public static let vdiTagBufferBytes = 256
    /// Longest usable name or tag: the buffers are compared with strncmp(…, 256) and must hold a NUL.
    public static let maxVDINameBytes = 255
    /// VIDs are 24 bits (`SD_NR_VDIS`).
    public static let vidCount = 1 << 24
    /// READ_VDIS must ask for exactly the in-use bitmap: one bit per VID.
    public static let vdiBitmapBytes = (1 << 24) / 8
    /// Default object size shift (4 MiB objects) and the range dog and QEMU accept.
    public static let defaultBlockSizeShift: UInt8 = 22
    public static let minBlockSizeShift: UInt8 = 20
    public static let maxBlockSizeShift: UInt8 = 31
    /// Default replica count of a freshly formatted cluster (`SD_DEFAULT_COPIES`).
    public static let defaultCopies: UInt8 = 3
    /// Most replicas or shared-lock participants (`SD_MAX_COPIES`).
    public static let maxCopies = 31
}

/// Request opcodes a client uses (§3). A struct, not an enum: the wire can carry any byte.
public struct SheepOpcode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let createAndWriteObj = SheepOpcode(rawValue: 0x01)
    public static let readObj = SheepOpcode(rawValue: 0x02)
    public static let writeObj = SheepOpcode(rawValue: 0x03)
    /// Internal use by sheep; a block client must never send it (it bypasses inode and refcounts).
    public static let removeObj = SheepOpcode(rawValue: 0x04)
    public static let discardObj = SheepOpcode(rawValue: 0x05)
    public static let newVDI = SheepOpcode(rawValue: 0x11)
    public static let lockVDI = SheepOpcode(rawValue: 0x12)
    public static let releaseVDI = SheepOpcode(rawValue: 0x13)
    public static let getVDIInfo = SheepOpcode(rawValue: 0x14)
    public static let readVDIs = SheepOpcode(rawValue: 0x15)
    public static let flushVDI = SheepOpcode(rawValue: 0x16)
    public static let delVDI = SheepOpcode(rawValue: 0x17)
    public static let getClusterDefault = SheepOpcode(rawValue: 0x18)

    public var name: String {
        switch self {
        case .createAndWriteObj: return "CREATE_AND_WRITE_OBJ"
        case .readObj: return "READ_OBJ"
        case .writeObj: return "WRITE_OBJ"
        case .removeObj: return "REMOVE_OBJ"
        case .discardObj: return "DISCARD_OBJ"
        case .newVDI: return "NEW_VDI"
        case .lockVDI: return "LOCK_VDI"
        case .releaseVDI: return "RELEASE_VDI"
        case .getVDIInfo: return "GET_VDI_INFO"
        case .readVDIs: return "READ_VDIS"
        case .flushVDI: return "FLUSH_VDI"
        case .delVDI: return "DEL_VDI"
        case .getClusterDefault: return "GET_CLUSTER_DEFAULT"
        case .getVDIAttr: return "GET_VDI_ATTR"
        default: return "OP_0x" + String(rawValue, radix: 16, uppercase: true)
        }
    }
    public var description: String { name }
}

/// `sd_req.flags` bits (§4).
public struct SheepFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// The request carries `data_length` payload bytes. Mandatory for every data-carrying request.
    public static let write = SheepFlags(rawValue: 0x0001)
    /// CREATE_AND_WRITE_OBJ builds the new object from `cow_oid`.
    public static let cow = SheepFlags(rawValue: 0x0002)
    /// v0.9 object cache write-back; ignored on v1.0+.
    public static let cache = SheepFlags(rawValue: 0x0004)
    /// v0.9 object cache bypass; ignored on v1.0+.
    public static let direct = SheepFlags(rawValue: 0x0008)
    public static let piggyback = SheepFlags(rawValue: 0x0010)
    /// "Request from tgt": enables the multipath inode-coherence check.
    public static let tgt = SheepFlags(rawValue: 0x0020)
    /// Internal: forwarded by another gateway.
    public static let forwarded = SheepFlags(rawValue: 0x0040)
}

/// `vdi.type` of LOCK_VDI / RELEASE_VDI.
public struct SheepLockType: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let normal = SheepLockType(rawValue: 0)
    /// iSCSI multipath: several sheep nodes participate.
    public static let shared = SheepLockType(rawValue: 1)
}
