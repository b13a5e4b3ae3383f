import Floor
import URing
import ISCSIWire
import Store
import SCSI
import ISCSI
import NBD
import CURing
import Glibc

/// What to do when a queued PDU has been fully handed to the kernel.
public enum SendToken: Equatable {
    case none
    /// A non-final Data-In piece of this task is out: its buffer may be refilled.
    case dataInSent(task: Int32)
    /// The task's final PDU is out: release the task and its buffer.
    case taskDone(task: Int32)
    /// A control PDU whose data lived in a buffer slot (NOP-In echo, long text): give the slot back.
    case freeSlot(Int32)
    /// Logout response is out: close the connection.
    case closeAfter
}

/// One PDU waiting to be sent: a header in the arena, an optional data segment elsewhere, and a trailer
/// (pad + data digest) in the arena.
public struct OutRecord {
    var headerLength: Int32      // 48, or 52 with a header digest
    var data: UnsafeRawPointer?
    var dataLength: Int32
    var trailerLength: Int32     // pad bytes + 4 when data digest is on
    var token: SendToken
}

/// The per-connection send queue: a bounded ring of PDUs plus their header arena. At most one SENDMSG is in
/// flight per socket (a second could overtake the first and reorder the stream); queued PDUs go out in
/// batches of up to `batchRecords`.
public struct OutQueue: ~Copyable {
    static let arenaEntryBytes = 192       // BHS 0..47, header digest 48..51, trailer 52..59, inline data 64..191
    /// Where an entry keeps the pad bytes and data digest sent after its data (after the BHS and its digest).
    static let trailerOffset = bhsBytes + Framing.digestBytes
    static let inlineDataOffset = 64
    static let inlineDataBytes = 128
    static let batchRecords = 64

    let capacity: Int
    let records: UnsafeMutablePointer<OutRecord>
    let arena: UnsafeMutableRawPointer
    let iov: UnsafeMutablePointer<iovec>
    let msg: UnsafeMutablePointer<msghdr>
    /// Tokens of the records a send completed, handed back after the queue is consistent again (firing them
    /// may queue more PDUs).
    let fired: UnsafeMutablePointer<SendToken>
    var head = 0           // oldest queued record
    var count = 0          // queued records (including those in flight)
    var inFlight = 0       // records covered by the SENDMSG in flight
    var sentInFirst = 0    // bytes of records[head] already sent by an earlier partial send

    /// Bytes `init(capacity:memory:)` lays the queue out in: bookkeeping first, the header arena last (its
    /// entries are touched only as the queue fills).
    static func memoryBytes(capacity: Int) -> Int { Parts(capacity: capacity).total }

    private struct Parts {
        let msg = 0
        let fired: Int
        let iov: Int
        let records: Int
        let arena: Int
        let total: Int
        init(capacity: Int) {
            func align(_ n: Int) -> Int { (n + 63) / 64 * 64 }
            fired = align(MemoryLayout<msghdr>.stride)
            iov = align(fired + OutQueue.batchRecords * MemoryLayout<SendToken>.stride)
            records = align(iov + OutQueue.batchRecords * 3 * MemoryLayout<iovec>.stride)
            arena = align(records + capacity * MemoryLayout<OutRecord>.stride)
            total = arena + capacity * OutQueue.arenaEntryBytes
        }
    }

    /// Lays the queue out in `memory` (`memoryBytes(capacity:)` bytes, 64-byte aligned), which the caller
    /// owns (the core's ConnectionMemory).
    init(capacity: Int, memory: UnsafeMutableRawPointer) {
        self.capacity = capacity
        let parts = Parts(capacity: capacity)
        msg = (memory + parts.msg).bindMemory(to: msghdr.self, capacity: 1)
        msg.initialize(to: msghdr())
        fired = (memory + parts.fired).bindMemory(to: SendToken.self, capacity: OutQueue.batchRecords)
        fired.initialize(repeating: .none, count: OutQueue.batchRecords)
        iov = (memory + parts.iov).bindMemory(to: iovec.self, capacity: OutQueue.batchRecords * 3)
        records = (memory + parts.records).bindMemory(to: OutRecord.self, capacity: capacity)
        arena = memory + parts.arena
    }

    var free: Int { capacity - count }

    /// Reserves the next record; returns its index. The caller fills the arena header and calls `commit`.
    @inline(__always)
    func nextIndex() -> Int { (head + count) % capacity }

    @inline(__always)
    func header(_ i: Int) -> UnsafeMutableRawPointer { arena + i * OutQueue.arenaEntryBytes }

    @inline(__always)
    func inlineData(_ i: Int) -> UnsafeMutableRawPointer { header(i) + OutQueue.inlineDataOffset }

    /// Finishes record `i` (must be `nextIndex()`): computes digests and appends it.
    @inline(__always)
    mutating func commit(_ i: Int, data: UnsafeRawPointer?, dataLength: Int, headerDigest: Bool, dataDigest: Bool,
                         token: SendToken) {
        let h = header(i)
        var hl = Int32(bhsBytes)
        if headerDigest {
            Framing.storeHeaderDigest(h)
            hl += Int32(Framing.digestBytes)
        }
        var tl: Int32 = 0
        if dataLength > 0 {
            let pad = Framing.padLength(dataLength)
            let t = h + OutQueue.trailerOffset
            for k in 0..<pad { t.storeBytes(of: 0, toByteOffset: k, as: UInt8.self) }
            tl = Int32(pad)
            if dataDigest, let data {
                var crc = CRC32C.update(CRC32C.initialState, data, count: dataLength)
                if pad > 0 { crc = CRC32C.update(crc, UnsafeRawPointer(t), count: pad) }
                crc = ~crc
                t.storeBytes(of: crc.littleEndian, toByteOffset: pad, as: UInt32.self)
                tl += Int32(Framing.digestBytes)
            }
        }
        records[i] = OutRecord(headerLength: hl, data: data, dataLength: Int32(dataLength), trailerLength: tl, token: token)
        count += 1
    }

    @inline(__always)
    func recordBytes(_ r: OutRecord) -> Int { Int(r.headerLength + r.dataLength + r.trailerLength) }

    /// Fills the msghdr for the next batch; returns false when nothing is queued or a send is in flight.
    mutating func prepareSend() -> Bool {
        if inFlight > 0 || count == 0 { return false }
        var n = 0
        var v = 0
        var skip = sentInFirst
        while n < count && n < OutQueue.batchRecords {
            let i = (head + n) % capacity
            let r = records[i]
            let h = header(i)
            v = addIov(v, h, Int(r.headerLength), &skip)
            if r.dataLength > 0, let d = r.data {
                v = addIov(v, UnsafeMutableRawPointer(mutating: d), Int(r.dataLength), &skip)
            }
            if r.trailerLength > 0 {
                v = addIov(v, h + OutQueue.trailerOffset, Int(r.trailerLength), &skip)
            }
            n += 1
        }
        inFlight = n
        msg.pointee.msg_iov = iov
        msg.pointee.msg_iovlen = v
        return true
    }

    @inline(__always)
    private func addIov(_ v: Int, _ p: UnsafeMutableRawPointer, _ len: Int, _ skip: inout Int) -> Int {
        appendIovec(iov, v, p, len, &skip)
    }

    /// Accounts `sent` bytes of the in-flight batch. The tokens of records fully sent, oldest first, are left in
    /// `fired[0..<n]`; returns n.
    mutating func completed(sent: Int) -> Int {
        var left = sent + sentInFirst
        sentInFirst = 0
        var done = 0
        var n = 0
        while done < inFlight {
            let r = records[head]
            let b = recordBytes(r)
            if left < b { sentInFirst = left; break }
            left -= b
            head = (head + 1) % capacity
            count -= 1
            done += 1
            if r.token != .none { fired[n] = r.token; n += 1 }
        }
        inFlight = 0
        // An empty queue starts again at record 0: an idle session's NOP-Ins then reuse the same record and
        // arena entry instead of walking all of them, so its resident memory stays at the pages it first used.
        if count == 0 && sentInFirst == 0 { head = 0 }
        return n
    }

    /// Drops everything (connection teardown); tokens are returned so buffers can be released.
    mutating func drainAll(fire: (SendToken) -> Void) {
        while count > 0 {
            let r = records[head]
            head = (head + 1) % capacity
            count -= 1
            if r.token != .none { fire(r.token) }
        }
        inFlight = 0
        sentInFirst = 0
    }
}
