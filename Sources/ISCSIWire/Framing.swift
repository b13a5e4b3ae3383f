// How a PDU is framed after its BHS (RFC 7143 §11.1): AHS, header digest, data segment padded to 4 bytes,
// data digest. Digests are CRC32C, stored little-endian (see CRC32C.swift).

public enum Framing {
    /// A header or data digest.
    @inlinable public static var digestBytes: Int { 4 }
    /// The AHS length field (byte 4) counts 4-byte words.
    @inlinable public static var ahsWordBytes: Int { 4 }

    /// A data segment rounded up to its 4-byte boundary.
    @inlinable @inline(__always)
    public static func padded(_ n: Int) -> Int { (n &+ 3) & ~3 }

    /// The 0-3 pad bytes after a data segment of `n` bytes.
    @inlinable @inline(__always)
    public static func padLength(_ n: Int) -> Int { (4 - n & 3) & 3 }

    /// Writes the header digest of the `bhsBytes + ahsBytes` bytes at `h` right after them; returns it.
    @inlinable @inline(__always) @discardableResult
    public static func storeHeaderDigest(_ h: UnsafeMutableRawPointer, ahsBytes: Int = 0) -> UInt32 {
        let d = CRC32C.checksum(UnsafeRawPointer(h), count: bhsBytes + ahsBytes)
        h.storeBytes(of: d.littleEndian, toByteOffset: bhsBytes + ahsBytes, as: UInt32.self)
        return d
    }
}

/// The extended CDB AHS (RFC 7143 §11.2.1.3), for CDBs longer than the BHS's 16 bytes: AHSLength (2 bytes,
/// counting the reserved byte and the CDB bytes past the first 16), AHSType 1, a reserved byte, then those
/// CDB bytes.
public enum ExtendedCDB {
    /// CDB bytes the BHS holds (bytes 32..47).
    @inlinable public static var bhsCDBBytes: Int { 16 }
    @inlinable public static var ahsType: UInt8 { 1 }
    @inlinable public static var typeOffset: Int { 2 }
    /// AHSLength, AHSType and the reserved byte.
    @inlinable public static var ahsHeaderBytes: Int { 4 }
    /// The reserved byte AHSLength counts.
    @inlinable public static var reservedBytes: Int { 1 }
}
