// Unaligned little-endian loads and stores. Sheepdog has no byte-order conversion anywhere: the de-facto
// wire format is x86 little-endian with natural C alignment (SHEEPDOG-PROTOCOL.md §1). Buffers handed to us
// (registered I/O slots with a sheep header of headroom, socket buffers) carry no alignment promise, so every
// access goes through these helpers.

@inlinable @inline(__always)
func sheepLoad<T: FixedWidthInteger>(_ base: UnsafeRawPointer, _ offset: Int, as: T.Type) -> T {
    T(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: T.self))
}

@inlinable @inline(__always)
func sheepStore<T: FixedWidthInteger>(_ base: UnsafeMutableRawPointer, _ offset: Int, _ value: T) {
    base.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
}

/// Byte `index` (0 = least significant) of a little-endian word.
@inlinable @inline(__always)
func sheepByte(_ word: UInt64, _ index: Int) -> UInt8 {
    UInt8(truncatingIfNeeded: word >> UInt64(index * 8))
}

/// `word` with byte `index` replaced.
@inlinable @inline(__always)
func sheepSettingByte(_ word: UInt64, _ index: Int, _ value: UInt8) -> UInt64 {
    let shift = UInt64(index * 8)
    return (word & ~(0xFF << shift)) | (UInt64(value) << shift)
}

/// 32-bit half `index` (0 = low) of a little-endian word.
@inlinable @inline(__always)
func sheepHalf(_ word: UInt64, _ index: Int) -> UInt32 {
    UInt32(truncatingIfNeeded: word >> UInt64(index * 32))
}

@inlinable @inline(__always)
func sheepSettingHalf(_ word: UInt64, _ index: Int, _ value: UInt32) -> UInt64 {
    let shift = UInt64(index * 32)
    return (word & ~(0xFFFF_FFFF << shift)) | (UInt64(value) << shift)
}
