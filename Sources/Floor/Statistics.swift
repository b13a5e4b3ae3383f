// Statistics: what `--op stat` prints and the metrics endpoint exposes. Each core counts in its own memory
// without locks (a LUN's counters in the core's LUNStatisticsTable, a connection's on the Connection); the
// control plane asks every core for its numbers through the mailbox and adds them up here, off the I/O path.


/// Command latency in buckets: exact below 8 ns, then four buckets per power of two (at most 25 % wide), up to
/// 2^42 ns (about 73 minutes); longer ones land in the last bucket. Pure arithmetic, no state.
public enum LatencyHistogram {
    /// Values below this are counted exactly (one bucket per nanosecond).
    @usableFromInline static let exactNanos: UInt64 = 8
    /// Sub-buckets per power of two: 2^2.
    @usableFromInline static let subBucketBits = 2
    /// The largest power of two with buckets of its own.
    @usableFromInline static let maxExponent = 42
    public static let bucketCount = Int(exactNanos) + (maxExponent - 2) * (1 << subBucketBits)

    /// The bucket counting a latency of `nanos`.
    @inline(__always)
    @inlinable public static func bucket(nanos: UInt64) -> Int {
        if nanos < exactNanos { return Int(nanos) }
        let exponent = 63 - nanos.leadingZeroBitCount   // >= 3
        if exponent > maxExponent { return bucketCount - 1 }
        let sub = Int(truncatingIfNeeded: nanos >> UInt64(exponent - subBucketBits)) & ((1 << subBucketBits) - 1)
        return Int(exactNanos) + (exponent - 3) * (1 << subBucketBits) + sub
    }

    /// The smallest latency bucket `index` counts.
    public static func lowerBoundNanos(_ index: Int) -> UInt64 {
        if index < Int(exactNanos) { return UInt64(index) }
        let i = index - Int(exactNanos)
        let exponent = i >> subBucketBits + 3
        let sub = UInt64(i & ((1 << subBucketBits) - 1))
        return (1 << UInt64(exponent)) + sub << UInt64(exponent - subBucketBits)
    }

    /// The first latency past bucket `index` (UInt64.max for the last bucket, which has no end).
    public static func upperBoundNanos(_ index: Int) -> UInt64 {
        index + 1 >= bucketCount ? UInt64.max : lowerBoundNanos(index + 1)
    }

    /// The latency at quantile `q` (0...1) of the counts in `buckets`: the end of the bucket that holds the
    /// rank ceil(q * total), capped at `maxNanos` (the largest latency seen), so it never overstates by more
    /// than a bucket's width. nil when nothing was counted.
    public static func quantileNanos(_ q: Double, buckets: [UInt64], maxNanos: UInt64) -> UInt64? {
        let total = buckets.reduce(0, &+)
        guard total > 0 else { return nil }
        let rank = max(1, UInt64((q * Double(total)).rounded(.up)))
        var seen: UInt64 = 0
        for (i, n) in buckets.enumerated() {
            seen &+= n
            if seen >= rank { return min(upperBoundNanos(i) &- 1, maxNanos) }
        }
        return maxNanos
    }
}

/// One LUN's counters, on one core or summed over all. tgt's `struct lu_stat` (usr/tgtd.h): commands and bytes
/// submitted and done per direction, commands that ended in anything but GOOD; plus aborts and latency.
/// Plain words: a core adds to them in place, in its own memory.
public struct LUNCounters: Equatable, Sendable {
    /// One data direction: tgt's rd_subm/rd_done or wr_subm/wr_done, bytes and commands.
    public struct Direction: Equatable, Sendable {
        public var submittedBytes: UInt64 = 0
        public var submittedCommands: UInt64 = 0
        public var doneBytes: UInt64 = 0
        public var doneCommands: UInt64 = 0

        @inline(__always)
        public mutating func submitted(_ bytes: UInt64) {
            submittedCommands &+= 1
            submittedBytes &+= bytes
        }

        @inline(__always)
        public mutating func done(_ bytes: UInt64) {
            doneCommands &+= 1
            doneBytes &+= bytes
        }

        mutating func add(_ o: Direction) {
            submittedBytes &+= o.submittedBytes
            submittedCommands &+= o.submittedCommands
            doneBytes &+= o.doneBytes
            doneCommands &+= o.doneCommands
        }
    }

    /// Which LUN the words belong to (LogicalUnit.statisticsID); 0 = none yet. A core finding another owner
    /// in a slot starts it afresh, so a slot given to a new LUN never shows its predecessor's counts.
    public var owner: UInt64 = 0
    public var read = Direction()
    public var write = Direction()
    /// Commands of any kind that started on the LUN, and those that ended.
    public var commands: UInt64 = 0
    public var doneCommands: UInt64 = 0
    /// Commands that ended with a status other than GOOD (tgt's err_num).
    public var errors: UInt64 = 0
    /// Commands ended by task management (ABORT TASK, ABORT/CLEAR TASK SET, resets).
    public var aborts: UInt64 = 0
    public var latencySumNanos: UInt64 = 0
    public var latencyMaxNanos: UInt64 = 0

    public init() {}

    mutating func add(_ o: LUNCounters) {
        read.add(o.read)
        write.add(o.write)
        commands &+= o.commands
        doneCommands &+= o.doneCommands
        errors &+= o.errors
        aborts &+= o.aborts
        latencySumNanos &+= o.latencySumNanos
        latencyMaxNanos = max(latencyMaxNanos, o.latencyMaxNanos)
    }
}

/// A LUN's counters and latency histogram, summed over the cores.
public struct LUNStatistics: Equatable, Sendable {
    public var counters = LUNCounters()
    /// Completed commands per LatencyHistogram bucket.
    public var latencyBuckets = [UInt64](repeating: 0, count: LatencyHistogram.bucketCount)

    public init() {}

    public mutating func add(_ o: LUNStatistics) {
        counters.add(o.counters)
        for i in latencyBuckets.indices { latencyBuckets[i] &+= o.latencyBuckets[i] }
    }

    public func latencyQuantileNanos(_ q: Double) -> UInt64? {
        LatencyHistogram.quantileNanos(q, buckets: latencyBuckets, maxNanos: counters.latencyMaxNanos)
    }
}

/// One connection's counters. The first six are tgt's `struct iscsi_stats` of a connection (usr/iscsi/conn.c:
/// every byte received and sent, and PDUs by opcode); the rest are ringtgt's: SCSI commands by direction,
/// with the bytes they asked for, errors and aborts, over all LUNs.
public struct ConnectionCounters: Equatable, Sendable {
    public var rxBytes: UInt64 = 0
    public var txBytes: UInt64 = 0
    public var dataOutPDUs: UInt64 = 0
    public var dataInPDUs: UInt64 = 0
    public var commandPDUs: UInt64 = 0
    public var responsePDUs: UInt64 = 0
    public var readCommands: UInt64 = 0
    public var readBytes: UInt64 = 0
    public var writeCommands: UInt64 = 0
    public var writeBytes: UInt64 = 0
    public var errors: UInt64 = 0
    public var aborts: UInt64 = 0

    public init() {}
}

/// One logged-in connection and its counters.
public struct ConnectionStatistics: Equatable, Sendable {
    public var tid: Int
    public var targetName: String
    /// The session's TSIH (what `--op show` calls the I_T nexus and `--sid` selects).
    public var sid: UInt64
    public var cid: UInt32
    public var initiatorName: String
    public var peerAddress: String
    public var counters: ConnectionCounters

    public init(tid: Int, targetName: String, sid: UInt64, cid: UInt32, initiatorName: String, peerAddress: String,
                counters: ConnectionCounters) {
        self.tid = tid
        self.targetName = targetName
        self.sid = sid
        self.cid = cid
        self.initiatorName = initiatorName
        self.peerAddress = peerAddress
        self.counters = counters
    }
}

/// What the cores reported for one `statistics` call.
public struct StatisticsSample: Sendable {
    /// In the order of the units asked about.
    public var luns: [LUNStatistics]
    public var connections: [ConnectionStatistics]

    public init(luns: [LUNStatistics], connections: [ConnectionStatistics]) {
        self.luns = luns
        self.connections = connections
    }
}

/// Hands out the slots of the cores' LUN statistics tables. A LUN keeps its slot while it exists (an
/// `--op update` that builds a new LogicalUnit keeps it too); the control plane gives it back only once no
/// command on the deleted LUN is left, so nothing counts into a slot after it changed hands. Control plane only.
public final class StatisticsSlots: Sendable {
    private struct State {
        var free: [Int32]
        var nextID: UInt64 = 0
    }
    private let state: Locked<State>

    /// LUNs the daemon can count at once (all targets together); a LUN beyond this is refused at creation.
    public static let capacity = 16_384

    public init(capacity: Int = StatisticsSlots.capacity) {
        state = Locked(State(free: (0..<Int32(capacity)).reversed()))
    }

    /// A free slot and a statistics id never used before; nil when every slot is taken.
    public func take() -> (slot: Int32, id: UInt64)? {
        state.withLock { s in
            guard let slot = s.free.popLast() else { return nil }
            s.nextID &+= 1
            return (slot, s.nextID)
        }
    }

    public func give(_ slot: Int32) {
        guard slot >= 0 else { return }
        state.withLock { $0.free.append(slot) }
    }

    public var freeCount: Int { state.withLock { $0.free.count } }
}
