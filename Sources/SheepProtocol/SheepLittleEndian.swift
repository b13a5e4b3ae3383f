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

/// Part `index` (0 = least significant) of a little-endian word cut into parts of `T`'s width: a byte, or a
/// 32-bit half.
@inlinable @inline(__always)
func sheepPart<T: FixedWidthInteger & UnsignedInteger>(_ word: UInt64, _ index: Int, as: T.Type) -> T {
    T(truncatingIfNeeded: word >> UInt64(index * T.bitWidth))
}

/// `word` with part `index` (of `value`'s width) replaced.
@inlinable @inline(__always)
func sheepSettingPart<T: FixedWidthInteger & UnsignedInteger>(_ word: UInt64, _ index: Int, _ value: T) -> UInt64 {
    let shift = UInt64(index * T.bitWidth)
    let mask = UInt64(T.max) << shift
    return (word & ~mask) | (UInt64(value) << shift)
}

@inlinable @inline(__always)
func sheepByte(_ word: UInt64, _ index: Int) -> UInt8 { sheepPart(word, index, as: UInt8.self) }
@inlinable @inline(__always)
func sheepSettingByte(_ word: UInt64, _ index: Int, _ value: UInt8) -> UInt64 { sheepSettingPart(word, index, value) }
@inlinable @inline(__always)
func sheepHalf(_ word: UInt64, _ index: Int) -> UInt32 { sheepPart(word, index, as: UInt32.self) }
@inlinable @inline(__always)
func sheepSettingHalf(_ word: UInt64, _ index: Int, _ value: UInt32) -> UInt64 { sheepSettingPart(word, index, value) }
