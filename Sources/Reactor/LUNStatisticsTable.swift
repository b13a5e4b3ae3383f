import Floor
import URing
import ISCSIWire
import Store
import SCSI
import ISCSI
import NBD
import Glibc

/// One core's LUN counters: a fixed array of entries indexed by LogicalUnit.statisticsSlot, each a
/// LUNCounters followed by its latency histogram. Only the owning core writes it, so plain adds suffice; the
/// control plane reads sums through the mailbox. Reserved once at start with MAP_NORESERVE: a slot costs
/// memory only once a LUN in it saw a command on this core.
/// Where a LUN's counters live on every core (`LogicalUnit.statisticsSlot` and `statisticsID`). A command
/// copies it when it starts, so counting its end reads no field of the LUN and takes no reference to it.
public struct LUNStatisticsKey {
    var slot: Int32 = -1
    var id: UInt64 = 0

    init() {}

    @inline(__always)
    init(_ lun: LogicalUnit) {
        slot = lun.statisticsSlot
        id = lun.statisticsID
    }
}

public struct LUNStatisticsTable: ~Copyable {
    static let slotCount = StatisticsSlots.capacity
    static let countersBytes = (MemoryLayout<LUNCounters>.stride + 63) / 64 * 64
    static let entryBytes = countersBytes + LatencyHistogram.bucketCount * MemoryLayout<UInt64>.stride

    let base: UnsafeMutableRawPointer
    let totalBytes: Int

    init() {
        totalBytes = LUNStatisticsTable.slotCount * LUNStatisticsTable.entryBytes
        let p = mmap(nil, totalBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        precondition(p != MAP_FAILED && p != nil, "mmap of the LUN statistics table failed")
        base = p!
    }

    deinit { munmap(base, totalBytes) }

    @inline(__always)
    private func counters(_ slot: Int32) -> UnsafeMutablePointer<LUNCounters> {
        (base + Int(slot) * LUNStatisticsTable.entryBytes).assumingMemoryBound(to: LUNCounters.self)
    }

    @inline(__always)
    private func buckets(_ slot: Int32) -> UnsafeMutablePointer<UInt64> {
        (base + Int(slot) * LUNStatisticsTable.entryBytes + LUNStatisticsTable.countersBytes)
            .assumingMemoryBound(to: UInt64.self)
    }

    /// The entry of `lun`, started afresh if the slot last counted another LUN; nil for a LUN without a slot.
    @inline(__always)
    private func entry(_ lun: LUNStatisticsKey) -> UnsafeMutablePointer<LUNCounters>? {
        let slot = lun.slot
        guard slot >= 0 && Int(slot) < LUNStatisticsTable.slotCount else { return nil }
        let c = counters(slot)
        if c.pointee.owner != lun.id {
            // Zeroed memory is a valid LUNCounters (all words 0), so a fresh page needs no initialisation.
            c.pointee = LUNCounters()
            c.pointee.owner = lun.id
            buckets(slot).update(repeating: 0, count: LatencyHistogram.bucketCount)
        }
        return c
    }

    /// A command starts on `lun`: `bytes` is what it expects to transfer (tgt counts the submitted length).
    @inline(__always)
    func started(_ lun: LUNStatisticsKey, read: Bool, write: Bool, bytes: UInt64) {
        guard let c = entry(lun) else { return }
        c.pointee.commands &+= 1
        if write { c.pointee.write.submitted(bytes) } else if read { c.pointee.read.submitted(bytes) }
    }

    /// A command on `lun` ended with `good` (or not) after `nanos`, having moved `bytes`.
    @inline(__always)
    func done(_ lun: LUNStatisticsKey, read: Bool, write: Bool, bytes: UInt64, good: Bool, nanos: UInt64) {
        guard let c = entry(lun) else { return }
        c.pointee.doneCommands &+= 1
        if write { c.pointee.write.done(bytes) } else if read { c.pointee.read.done(bytes) }
        assert(c.pointee.doneCommands <= c.pointee.commands, "a command ended on slot \(lun.slot) that never started")
        if !good { c.pointee.errors &+= 1 }
        c.pointee.latencySumNanos &+= nanos
        if nanos > c.pointee.latencyMaxNanos { c.pointee.latencyMaxNanos = nanos }
        buckets(lun.slot)[LatencyHistogram.bucket(nanos: nanos)] &+= 1
    }

    func aborted(_ lun: LUNStatisticsKey) {
        guard let c = entry(lun) else { return }
        c.pointee.aborts &+= 1
    }

    /// This core's numbers for a LUN (control plane, through the mailbox): zeros when the slot holds another's.
    func read(slot: Int32, id: UInt64) -> LUNStatistics {
        var s = LUNStatistics()
        guard slot >= 0 && Int(slot) < LUNStatisticsTable.slotCount else { return s }
        let c = counters(slot)
        guard c.pointee.owner == id else { return s }
        assert(id != 0, "statistics id 0 means no owner")
        s.counters = c.pointee
        s.counters.owner = 0
        let b = buckets(slot)
        for i in 0..<LatencyHistogram.bucketCount { s.latencyBuckets[i] = b[i] }
        return s
    }
}
