// A connection's reply bytes waiting to be sent. Replies are built in place (header + data written straight
// into the buffer) so a READ_OBJ costs one memcpy from the object and no allocation.

#if canImport(Glibc)
import Glibc
#endif
import SheepProtocol

final class OutputBuffer {
    private(set) var base: UnsafeMutableRawPointer
    private(set) var capacity: Int
    /// Bytes [start, end) are waiting to be sent.
    private(set) var start = 0
    private(set) var end = 0

    init(initialCapacityBytes: Int = 1 << 20) {
        capacity = initialCapacityBytes
        base = .allocate(byteCount: capacity, alignment: 64)
    }

    deinit { base.deallocate() }

    var pendingBytes: Int { end - start }
    var isEmpty: Bool { end == start }

    /// Space for `count` bytes at the end; valid until the next call that may grow the buffer.
    func reserve(_ count: Int) -> UnsafeMutableRawPointer {
        if end + count > capacity {
            // Slide unsent bytes to the front before growing.
            if start > 0 {
                (base).copyMemory(from: base + start, byteCount: end - start)
                end -= start
                start = 0
            }
            if end + count > capacity {
                var newCapacity = capacity * 2
                while newCapacity < end + count { newCapacity *= 2 }
                let nb = UnsafeMutableRawPointer.allocate(byteCount: newCapacity, alignment: 64)
                nb.copyMemory(from: base, byteCount: end)
                base.deallocate()
                base = nb
                capacity = newCapacity
            }
        }
        return base + end
    }

    func commit(_ count: Int) { end += count }

    /// A reply with no payload.
    func appendReply(_ header: SheepResponseHeader) {
        let p = reserve(SheepWire.headerSizeBytes)
        header.encode(to: p)
        commit(SheepWire.headerSizeBytes)
    }

    /// A reply whose `dataLength` bytes are produced by `fill` straight into the buffer.
    func appendReply(_ header: SheepResponseHeader, fill: (UnsafeMutableRawPointer) -> Void) {
        let total = SheepWire.headerSizeBytes + Int(header.dataLength)
        let p = reserve(total)
        header.encode(to: p)
        fill(p + SheepWire.headerSizeBytes)
        commit(total)
    }

    /// Sends what the socket takes now. Returns false on a broken connection.
    func flush(to fd: Int32) -> Bool {
        while start < end {
            let n = send(fd, base + start, end - start, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { return true }
                return false
            }
            start += n
        }
        start = 0
        end = 0
        return true
    }

    func discardAll() { start = 0; end = 0 }
}
