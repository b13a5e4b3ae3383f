// VDI names and tags: 256-byte NUL padded buffers compared with strncmp, and the FNV-1a hash that places a
// name in the VID space.

public enum SheepVDINameError: Error, Equatable, CustomStringConvertible {
    case empty(what: String)
    case tooLong(what: String, bytes: Int)
    case containsNUL(what: String)

    public var description: String {
        switch self {
        case .empty(let what): return "\(what) is empty"
        case .tooLong(let what, let bytes):
            return "\(what) is \(bytes) bytes long; sheepdog allows at most \(SheepWire.maxVDINameBytes)"
        case .containsNUL(let what): return "\(what) contains a NUL byte"
        }
    }
}

public enum SheepVDIName {
    static let fnvOffsetBasis: UInt64 = 0xcbf2_9ce4_8422_2325
    static let fnvPrime: UInt64 = 0x100_0000_01b3

    /// `sd_hash_vdi`: FNV-1a 64 over the name bytes, masked to 24 bits. ("test" → 0x7c2b25.)
    /// VID allocation additionally maps 0 to 1 (`get_vdi_bitmap_range`); see `firstCandidateVID`.
    public static func hash<S: Sequence>(_ nameBytes: S) -> UInt32 where S.Element == UInt8 {
        var h = fnvOffsetBasis
        for byte in nameBytes {
            h ^= UInt64(byte)
            h = h &* fnvPrime
        }
        return UInt32(truncatingIfNeeded: h & UInt64(SheepWire.vidCount - 1))
    }

    public static func hash(_ name: String) -> UInt32 { hash(name.utf8) }

    /// Where the linear probe for `name` starts: the hash, with VID 0 skipped.
    public static func firstCandidateVID(_ name: String) -> UInt32 {
        let h = hash(name)
        return h == 0 ? 1 : h
    }

    /// Checks a name or tag is storable: at most 255 bytes, no NUL. Tags may be empty; names may not.
    public static func validate(_ value: String, what: String, allowEmpty: Bool) throws -> Void {
        let n = value.utf8.count
        if n == 0 && !allowEmpty { throw SheepVDINameError.empty(what: what) }
        if n > SheepWire.maxVDINameBytes { throw SheepVDINameError.tooLong(what: what, bytes: n) }
        if value.utf8.contains(0) { throw SheepVDINameError.containsNUL(what: what) }
    }

    /// Writes `value` NUL padded into a `capacity`-byte buffer, truncated so that a NUL always remains.
    public static func encodeTruncating(_ value: String, to base: UnsafeMutableRawPointer, capacity: Int) {
        base.initializeMemory(as: UInt8.self, repeating: 0, count: capacity)
        var i = 0
        for byte in value.utf8 {
            if i >= capacity - 1 || byte == 0 { break }
            base.storeBytes(of: byte, toByteOffset: i, as: UInt8.self)
            i += 1
        }
    }

    /// The 512-byte name + tag payload of LOCK_VDI / GET_VDI_INFO / DEL_VDI (or 256 bytes when
    /// `includeTag` is false, the NEW_VDI form).
    public static func payload(name: String, tag: String = "", includeTag: Bool = true) throws -> [UInt8] {
        try validate(name, what: "VDI name", allowEmpty: false)
        try validate(tag, what: "snapshot tag", allowEmpty: true)
        let size = SheepWire.vdiNameBufferBytes + (includeTag ? SheepWire.vdiTagBufferBytes : 0)
        var out = [UInt8](repeating: 0, count: size)
        out.withUnsafeMutableBytes { raw in
            encodeTruncating(name, to: raw.baseAddress!, capacity: SheepWire.vdiNameBufferBytes)
            if includeTag {
                encodeTruncating(tag, to: raw.baseAddress! + SheepWire.vdiNameBufferBytes,
                                 capacity: SheepWire.vdiTagBufferBytes)
            }
        }
        return out
    }

    /// Reads a NUL-terminated (or `capacity`-long) name from a buffer.
    public static func decode(_ base: UnsafeRawPointer, capacity: Int) -> String {
        let bytes = UnsafeRawBufferPointer(start: base, count: capacity)
        let end = bytes.firstIndex(of: 0) ?? capacity
        return String(decoding: bytes[0..<end], as: UTF8.self)
    }

    /// The raw bytes up to the first NUL, as strncmp compares them.
    public static func rawBytes(_ base: UnsafeRawPointer, capacity: Int) -> [UInt8] {
        let bytes = UnsafeRawBufferPointer(start: base, count: capacity)
        let end = bytes.firstIndex(of: 0) ?? capacity
        return Array(bytes[0..<end])
    }
}
