// The two 48-byte headers (`struct sd_req`, `struct sd_rsp`, §2). Each is held as six little-endian words so
// that encoding and decoding are six unaligned loads or stores with no allocation: the target builds them in
// place in registered buffers. The union part is exposed through named accessors for each shape.

/// What `struct sd_req` and `struct sd_rsp` have in common (§2): the same 48-byte size and the same first 16
/// bytes (0 proto_ver, 1 opcode, 2 flags, 4 epoch, 8 id, 12 data_length). Both headers get their codec and
/// those fields from here, so the two layouts cannot drift apart. Members are inlinable: the store's channels
/// encode and decode a header per I/O, and a generic call across the module boundary would not specialize.
public protocol SheepHeaderCore {
    var words: SheepHeaderWords { get set }
    /// All zero.
    init()
}

/// Either header's 48 bytes as six little-endian words.
public struct SheepHeaderWords: Equatable, Sendable {
    /// Bytes 0..7: proto_ver, opcode, flags, epoch.
    public var word0: UInt64 = 0
    /// Bytes 8..15: id, data_length.
    public var word1: UInt64 = 0
    /// Bytes 16..47: the opcode-specific part.
    public var word2: UInt64 = 0
    public var word3: UInt64 = 0
    public var word4: UInt64 = 0
    public var word5: UInt64 = 0

    @inlinable public init() {}
}

extension SheepHeaderCore {
    /// Decodes `SheepWire.headerSizeBytes` bytes at `base` (no alignment needed).
    @inlinable
    public init(from base: UnsafeRawPointer) {
        self.init()
        words.word0 = sheepLoad(base, 0, as: UInt64.self)
        words.word1 = sheepLoad(base, 8, as: UInt64.self)
        words.word2 = sheepLoad(base, 16, as: UInt64.self)
        words.word3 = sheepLoad(base, 24, as: UInt64.self)
        words.word4 = sheepLoad(base, 32, as: UInt64.self)
        words.word5 = sheepLoad(base, 40, as: UInt64.self)
    }

    /// Writes the `SheepWire.headerSizeBytes` bytes at `base` (no alignment needed).
    @inlinable
    public func encode(to base: UnsafeMutableRawPointer) {
        sheepStore(base, 0, words.word0)
        sheepStore(base, 8, words.word1)
        sheepStore(base, 16, words.word2)
        sheepStore(base, 24, words.word3)
        sheepStore(base, 32, words.word4)
        sheepStore(base, 40, words.word5)
    }

    public var bytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: SheepWire.headerSizeBytes)
        out.withUnsafeMutableBytes { encode(to: $0.baseAddress!) }
        return out
    }

    @inlinable
    public var protoVersion: UInt8 {
        get { sheepByte(words.word0, 0) }
        set { words.word0 = sheepSettingByte(words.word0, 0, newValue) }
    }
    @inlinable
    public var opcode: SheepOpcode {
        get { SheepOpcode(rawValue: sheepByte(words.word0, 1)) }
        set { words.word0 = sheepSettingByte(words.word0, 1, newValue.rawValue) }
    }
    @inlinable
    public var flags: SheepFlags {
        get { SheepFlags(rawValue: UInt16(truncatingIfNeeded: words.word0 >> 16)) }
        set { words.word0 = (words.word0 & ~0xFFFF_0000) | (UInt64(newValue.rawValue) << 16) }
    }
    @inlinable
    public var epoch: UInt32 {
        get { sheepHalf(words.word0, 1) }
        set { words.word0 = sheepSettingHalf(words.word0, 1, newValue) }
    }
    @inlinable
    public var id: UInt32 {
        get { sheepHalf(words.word1, 0) }
        set { words.word1 = sheepSettingHalf(words.word1, 0, newValue) }
    }
    /// Payload bytes that follow this header (a request's payload, or what a read asks for back).
    @inlinable
    public var dataLength: UInt32 {
        get { sheepHalf(words.word1, 1) }
        set { words.word1 = sheepSettingHalf(words.word1, 1, newValue) }
    }
}

/// `struct sd_req`. Offsets: 0 proto_ver, 1 opcode, 2 flags, 4 epoch, 8 id, 12 data_length, 16..47 union.
public struct SheepRequestHeader: SheepHeaderCore, Equatable, Sendable {
    public var words = SheepHeaderWords()

    @inlinable public init() {}

    public init(opcode: SheepOpcode, flags: SheepFlags = [], id: UInt32 = 0, dataLength: UInt32 = 0,
                protoVersion: UInt8 = SheepWire.clientProtoVersion) {
        self.init()
        self.protoVersion = protoVersion
        self.opcode = opcode
        self.flags = flags
        self.id = id
        self.dataLength = dataLength
    }

    // MARK: `obj` shape (object I/O, DISCARD, FLUSH)

    /// Offset 16.
    public var oid: UInt64 { get { words.word2 } set { words.word2 = newValue } }
    /// Offset 24: copy-on-write source, only with `SheepFlags.cow` on CREATE_AND_WRITE_OBJ.
    public var cowOid: UInt64 { get { words.word3 } set { words.word3 = newValue } }
    /// Offset 32: redundancy; 0 lets the sheep use the VDI's.
    public var objCopies: UInt8 {
        get { sheepByte(words.word4, 0) }
        set { words.word4 = sheepSettingByte(words.word4, 0, newValue) }
    }
    /// Offset 33.
    public var objCopyPolicy: UInt8 {
        get { sheepByte(words.word4, 1) }
        set { words.word4 = sheepSettingByte(words.word4, 1, newValue) }
    }
    /// Offset 34 (internal erasure strip index).
    public var objECIndex: UInt8 {
        get { sheepByte(words.word4, 2) }
        set { words.word4 = sheepSettingByte(words.word4, 2, newValue) }
    }
    /// Offset 36 (internal recovery epoch; tgt calls it rsvd).
    public var objTargetEpoch: UInt32 {
        get { sheepHalf(words.word4, 1) }
        set { words.word4 = sheepSettingHalf(words.word4, 1, newValue) }
    }
    /// Offset 40: byte offset within the object.
    public var objOffset: UInt32 {
        get { sheepHalf(words.word5, 0) }
        set { words.word5 = sheepSettingHalf(words.word5, 0, newValue) }
    }

    // MARK: `vdi` shape (NEW/LOCK/RELEASE/GET_VDI_INFO/DEL)

    /// Offset 16: bytes (NEW_VDI).
    public var vdiSize: UInt64 { get { words.word2 } set { words.word2 = newValue } }
    /// Offset 24: parent for clone/snapshot; the VID to unlock for RELEASE_VDI.
    public var baseVDIID: UInt32 {
        get { sheepHalf(words.word3, 0) }
        set { words.word3 = sheepSettingHalf(words.word3, 0, newValue) }
    }
    /// Offset 28.
    public var vdiCopies: UInt8 {
        get { sheepByte(words.word3, 4) }
        set { words.word3 = sheepSettingByte(words.word3, 4, newValue) }
    }
    /// Offset 29.
    public var vdiCopyPolicy: UInt8 {
        get { sheepByte(words.word3, 5) }
        set { words.word3 = sheepSettingByte(words.word3, 5, newValue) }
    }
    /// Offset 30: 1 = hyper volume.
    public var vdiStorePolicy: UInt8 {
        get { sheepByte(words.word3, 6) }
        set { words.word3 = sheepSettingByte(words.word3, 6, newValue) }
    }
    /// Offset 31: 0 = cluster default.
    public var vdiBlockSizeShift: UInt8 {
        get { sheepByte(words.word3, 7) }
        set { words.word3 = sheepSettingByte(words.word3, 7, newValue) }
    }
    /// Offset 32: lookup snapshot id (0 = working VDI); NEW_VDI: non-zero makes a snapshot.
    public var snapID: UInt32 {
        get { sheepHalf(words.word4, 0) }
        set { words.word4 = sheepSettingHalf(words.word4, 0, newValue) }
    }
    /// Offset 36.
    public var lockType: SheepLockType {
        get { SheepLockType(rawValue: sheepHalf(words.word4, 1)) }
        set { words.word4 = sheepSettingHalf(words.word4, 1, newValue.rawValue) }
    }
}

/// `struct sd_rsp`. Offsets: 0 proto_ver, 1 opcode, 2 flags, 4 epoch, 8 id, 12 data_length, 16 result,
/// 20..47 union.
public struct SheepResponseHeader: SheepHeaderCore, Equatable, Sendable {
    /// `words.word2` holds the result, then the first union word.
    public var words = SheepHeaderWords()

    @inlinable public init() {}

    /// A reply to `request`: opcode and id echoed as sheep's `tx_work` does. proto_ver and flags stay 0:
    /// sheep never sets them in a reply (its response struct starts zeroed).
    public init(replyingTo request: SheepRequestHeader, result: SheepResult, dataLength: UInt32 = 0,
                epoch: UInt32 = 1) {
        self.init()
        opcode = request.opcode
        id = request.id
        self.epoch = epoch
        self.dataLength = dataLength
        self.result = result
    }

    /// Offset 16, common to every response shape.
    public var result: SheepResult {
        get { SheepResult(rawValue: sheepHalf(words.word2, 0)) }
        set { words.word2 = sheepSettingHalf(words.word2, 0, newValue.rawValue) }
    }

    // MARK: `obj` shape

    /// Offset 20.
    public var objCopies: UInt8 {
        get { sheepByte(words.word2, 4) }
        set { words.word2 = sheepSettingByte(words.word2, 4, newValue) }
    }
    /// Offset 24: legacy zero-trim offset (v0.5.2–0.7 only).
    public var objOffset: UInt64 { get { words.word3 } set { words.word3 = newValue } }

    // MARK: `vdi` shape

    /// Offset 24: result VID of NEW_VDI / LOCK_VDI / GET_VDI_INFO / DEL_VDI.
    public var vdiID: UInt32 {
        get { sheepHalf(words.word3, 0) }
        set { words.word3 = sheepSettingHalf(words.word3, 0, newValue) }
    }
    /// Offset 28 (GET_VDI_ATTR only).
    public var attrID: UInt32 {
        get { sheepHalf(words.word3, 1) }
        set { words.word3 = sheepSettingHalf(words.word3, 1, newValue) }
    }
    /// Offset 32.
    public var vdiCopies: UInt8 {
        get { sheepByte(words.word4, 0) }
        set { words.word4 = sheepSettingByte(words.word4, 0, newValue) }
    }
    /// Offset 33 (v1.0+).
    public var vdiBlockSizeShift: UInt8 {
        get { sheepByte(words.word4, 1) }
        set { words.word4 = sheepSettingByte(words.word4, 1, newValue) }
    }

    // MARK: `cluster_default` shape (GET_CLUSTER_DEFAULT)

    /// Offset 20.
    public var defaultCopies: UInt8 {
        get { sheepByte(words.word2, 4) }
        set { words.word2 = sheepSettingByte(words.word2, 4, newValue) }
    }
    /// Offset 21.
    public var defaultCopyPolicy: UInt8 {
        get { sheepByte(words.word2, 5) }
        set { words.word2 = sheepSettingByte(words.word2, 5, newValue) }
    }
    /// Offset 22.
    public var defaultBlockSizeShift: UInt8 {
        get { sheepByte(words.word2, 6) }
        set { words.word2 = sheepSettingByte(words.word2, 6, newValue) }
    }
}

// MARK: - Request builders (the shapes real clients send)

extension SheepRequestHeader {
    /// READ_OBJ: no payload; `length` is what is wanted back.
    public static func readObject(id: UInt32, oid: UInt64, offset: UInt32, length: UInt32,
                                  flags: SheepFlags = []) -> SheepRequestHeader {
        var h = SheepRequestHeader(opcode: .readObj, flags: flags, id: id, dataLength: length)
        h.oid = oid
        h.objOffset = offset
        return h
    }

    /// WRITE_OBJ: `length` payload bytes follow.
    public static func writeObject(id: UInt32, oid: UInt64, offset: UInt32, length: UInt32,
                                   copies: UInt8 = 0, extraFlags: SheepFlags = []) -> SheepRequestHeader {
        var h = SheepRequestHeader(opcode: .writeObj, flags: extraFlags.union(.write), id: id, dataLength: length)
        h.oid = oid
        h.objOffset = offset
        h.objCopies = copies
        return h
    }

    /// READ_OBJ of index slot `index` of VDI `vid`'s inode (4 bytes: the VID that owns the object).
    public static func readIndexSlot(id: UInt32, vid: UInt32, index: UInt32,
                                     flags: SheepFlags = []) -> SheepRequestHeader {
        readObject(id: id, oid: SheepOID.inode(vid: vid), offset: SheepInodeLayout.slotOffset(index),
                   length: UInt32(SheepInodeLayout.slotBytes), flags: flags)
    }

    /// WRITE_OBJ of index slot `index` of VDI `vid`'s inode only (4 payload bytes), so that sheep resets no
    /// other slot's reference count.
    public static func writeIndexSlot(id: UInt32, vid: UInt32, index: UInt32, copies: UInt8 = 0) -> SheepRequestHeader {
        writeObject(id: id, oid: SheepOID.inode(vid: vid), offset: SheepInodeLayout.slotOffset(index),
                    length: UInt32(SheepInodeLayout.slotBytes), copies: copies)
    }

    /// CREATE_AND_WRITE_OBJ, with copy-on-write from `cowOid` when it is non-zero.
    public static func createAndWrite(id: UInt32, oid: UInt64, cowOid: UInt64 = 0, offset: UInt32,
                                      length: UInt32, copies: UInt8 = 0,
                                      extraFlags: SheepFlags = []) -> SheepRequestHeader {
        var flags = extraFlags.union(.write)
        if cowOid != 0 { flags.insert(.cow) }
        var h = SheepRequestHeader(opcode: .createAndWriteObj, flags: flags, id: id, dataLength: length)
        h.oid = oid
        h.cowOid = cowOid
        h.objOffset = offset
        h.objCopies = copies
        return h
    }

    public static func discardObject(id: UInt32, oid: UInt64) -> SheepRequestHeader {
        var h = SheepRequestHeader(opcode: .discardObj, id: id)
        h.oid = oid
        return h
    }

    public static func flushVDI(id: UInt32, vid: UInt32) -> SheepRequestHeader {
        var h = SheepRequestHeader(opcode: .flushVDI, id: id)
        h.oid = SheepOID.inode(vid: vid)
        return h
    }

    /// NEW_VDI: the payload is the 256-byte name buffer. `snapshot` turns the working VDI `baseVID` into a
    /// snapshot; otherwise a non-zero `baseVID` clones it.
    public static func newVDI(id: UInt32, size: UInt64, baseVID: UInt32 = 0, snapshot: Bool = false,
                              copies: UInt8 = 0, copyPolicy: UInt8 = 0, storePolicy: UInt8 = 0,
                              blockSizeShift: UInt8 = 0) -> SheepRequestHeader {
        var h = SheepRequestHeader(opcode: .newVDI, flags: .write, id: id,
                                   dataLength: UInt32(SheepWire.vdiNameBufferBytes))
        h.vdiSize = size
        h.baseVDIID = baseVID
        h.snapID = snapshot ? 1 : 0
        h.vdiCopies = copies
        h.vdiCopyPolicy = copyPolicy
        h.vdiStorePolicy = storePolicy
        h.vdiBlockSizeShift = blockSizeShift
        return h
    }

    /// LOCK_VDI / GET_VDI_INFO / DEL_VDI: payload = name[256] + tag[256].
    public static func vdiLookup(_ opcode: SheepOpcode, id: UInt32, snapID: UInt32 = 0,
                                 lockType: SheepLockType = .normal) -> SheepRequestHeader {
        var h = SheepRequestHeader(opcode: opcode, flags: .write, id: id,
                                   dataLength: UInt32(SheepWire.vdiNameBufferBytes + SheepWire.vdiTagBufferBytes))
        h.snapID = snapID
        h.lockType = lockType
        return h
    }

    /// RELEASE_VDI: the VID goes in `base_vdi_id`; no payload needed.
    public static func releaseVDI(id: UInt32, vid: UInt32, lockType: SheepLockType = .normal) -> SheepRequestHeader {
        var h = SheepRequestHeader(opcode: .releaseVDI, id: id)
        h.baseVDIID = vid
        h.lockType = lockType
        return h
    }

    /// READ_VDIS: must ask for exactly the 2 MiB bitmap.
    public static func readVDIs(id: UInt32) -> SheepRequestHeader {
        SheepRequestHeader(opcode: .readVDIs, id: id, dataLength: UInt32(SheepWire.vdiBitmapBytes))
    }

    public static func getClusterDefault(id: UInt32) -> SheepRequestHeader {
        SheepRequestHeader(opcode: .getClusterDefault, id: id)
    }

    /// Whether sheep's `rx_work` will read `dataLength` payload bytes after this header.
    public var carriesPayload: Bool { flags.contains(.write) && dataLength != 0 }
}
