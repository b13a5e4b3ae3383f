// Big-endian loads and stores at byte offsets, the way every iSCSI (and SCSI) field is laid out.

@inlinable @inline(__always) public func be16(_ p: UnsafeRawPointer, _ o: Int) -> UInt16 {
    UInt16(p.load(fromByteOffset: o, as: UInt8.self)) << 8 | UInt16(p.load(fromByteOffset: o + 1, as: UInt8.self))
}
@inlinable @inline(__always) public func be24(_ p: UnsafeRawPointer, _ o: Int) -> UInt32 {
    UInt32(p.load(fromByteOffset: o, as: UInt8.self)) << 16 | UInt32(p.load(fromByteOffset: o + 1, as: UInt8.self)) << 8
        | UInt32(p.load(fromByteOffset: o + 2, as: UInt8.self))
}
@inlinable @inline(__always) public func be32(_ p: UnsafeRawPointer, _ o: Int) -> UInt32 {
    UInt32(bigEndian: p.loadUnaligned(fromByteOffset: o, as: UInt32.self))
}
@inlinable @inline(__always) public func be64(_ p: UnsafeRawPointer, _ o: Int) -> UInt64 {
    UInt64(bigEndian: p.loadUnaligned(fromByteOffset: o, as: UInt64.self))
}
@inlinable @inline(__always) public func put16(_ p: UnsafeMutableRawPointer, _ o: Int, _ v: UInt16) {
    p.storeBytes(of: v.bigEndian, toByteOffset: o, as: UInt16.self)
}
@inlinable @inline(__always) public func put24(_ p: UnsafeMutableRawPointer, _ o: Int, _ v: UInt32) {
    p.storeBytes(of: UInt8(truncatingIfNeeded: v >> 16), toByteOffset: o, as: UInt8.self)
    p.storeBytes(of: UInt8(truncatingIfNeeded: v >> 8), toByteOffset: o + 1, as: UInt8.self)
    p.storeBytes(of: UInt8(truncatingIfNeeded: v), toByteOffset: o + 2, as: UInt8.self)
}
@inlinable @inline(__always) public func put32(_ p: UnsafeMutableRawPointer, _ o: Int, _ v: UInt32) {
    p.storeBytes(of: v.bigEndian, toByteOffset: o, as: UInt32.self)
}
@inlinable @inline(__always) public func put64(_ p: UnsafeMutableRawPointer, _ o: Int, _ v: UInt64) {
    p.storeBytes(of: v.bigEndian, toByteOffset: o, as: UInt64.self)
}
