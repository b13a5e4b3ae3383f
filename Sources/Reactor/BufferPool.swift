import Floor
import URing
import ISCSIWire
import Store
import SCSI
import ISCSI
import NBD
import Glibc

/// The per-core pool of I/O buffers, allocated and registered with the ring once at start.
/// Each slot is `headroomBytes` followed by `slotBytes` of data area; the headroom lets a 48-byte protocol
/// header (a sheep reply, an iSCSI Data-In BHS) sit directly in front of the data.
public struct BufferPool: ~Copyable {
    public static let headroomBytes = 64
    public let slotBytes: Int
    public let slotCount: Int
    let stride: Int
    public let base: UnsafeMutableRawPointer
    public let totalBytes: Int
    /// `slotBytes` of zeros that nothing can write (PROT_READ, so the kernel maps its one zero page): a null
    /// LUN's READ sends its Data-In from here instead of zeroing its slot.
    public let zeros: UnsafeRawPointer
    /// LIFO free list of slot indices: a recently freed slot is warm in cache.
    let freeList: UnsafeMutablePointer<Int32>
    public private(set) var freeCount: Int

    public init(slotBytes: Int, slotCount: Int) {
        precondition(slotBytes >= 65536 && slotBytes % 4096 == 0, "buffer slots are at least 64 KiB, page multiples")
        precondition(slotCount >= 2, "at least two buffer slots")
        self.slotBytes = slotBytes
        self.slotCount = slotCount
        self.stride = slotBytes + 4096  // headroom lives in the last bytes of the preceding page
        self.totalBytes = stride * slotCount
        let p = mmap(nil, totalBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        precondition(p != MAP_FAILED && p != nil, "mmap of the buffer pool failed")
        base = p!
        let z = mmap(nil, slotBytes, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        precondition(z != MAP_FAILED && z != nil, "mmap of the zero region failed")
        zeros = UnsafeRawPointer(z!)
        freeList = .allocate(capacity: slotCount)
        for i in 0..<slotCount { freeList[i] = Int32(slotCount - 1 - i) }
        freeCount = slotCount
    }

    deinit {
        munmap(base, totalBytes)
        munmap(UnsafeMutableRawPointer(mutating: zeros), slotBytes)
        freeList.deallocate()
    }

    /// Start of slot `i`'s data area (page aligned, so O_DIRECT works).
    @inline(__always)
    public func data(_ i: Int) -> UnsafeMutableRawPointer { base + i * stride + 4096 }

    @inline(__always)
    public func buffer(_ i: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: data(i), count: slotBytes)
    }

    /// -1 when the pool is empty.
    @inline(__always)
    public mutating func take() -> Int {
        if freeCount == 0 { return -1 }
        freeCount -= 1
        return Int(freeList[freeCount])
    }

    @inline(__always)
    public mutating func give(_ i: Int) {
        assert(i >= 0 && i < slotCount && freeCount < slotCount)
        freeList[freeCount] = Int32(i)
        freeCount += 1
    }
}
