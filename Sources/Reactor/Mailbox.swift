import Floor
import URing
import ISCSIWire
import Store
import SCSI
import ISCSI
import NBD
import CURing
import Glibc

/// Messages to a core. They cross threads, so they travel through a mailbox drained when the core's eventfd
/// fires; the I/O path never touches it.
public enum CoreMessage: @unchecked Sendable {
    /// A new configuration: swap the snapshot, re-point sessions at their target's new runtime.
    case config(ConfigSnapshot, CoreReply)
    /// Close the session with this TSIH (reinstatement from another core, or an admin delete).
    case closeSession(tsih: UInt16)
    /// Report the sessions this core serves.
    case sessions(SessionQuery)
    /// Count this core's commands in flight on some logical units.
    case commandsInFlight(InFlightQuery)
    /// Report this core's statistics: some LUNs' counters and every logged-in connection's.
    case statistics(StatisticsQuery)
    /// The portals listen now (Runtime.startAccepting): arm the accepts.
    case startAccepting
    /// Stop the loop.
    case shutdown
    /// Home-core work for a sheepdog VDI (allocation, copy-on-write, deallocation, reload).
    case sheepHome(SheepHomeRequest)
    /// The home core's answer for a piece of a task on this core.
    case sheepHomeDone(SheepWaiter, StoreError?)
}

/// A one-shot reply that a non-reactor thread blocks on (control plane only).
public final class CoreReply: @unchecked Sendable {
    private var sem = sem_t()
    public init() { sem_init(&sem, 0, 0) }
    deinit { sem_destroy(&sem) }
    public func signal() { sem_post(&sem) }
    public func wait() { while sem_wait(&sem) != 0 && errno == EINTR {} }
    /// True (and consumed) when signalled already.
    public func tryWait() -> Bool { sem_trywait(&sem) == 0 }
}

public final class SessionQuery: @unchecked Sendable {
    public let reply = CoreReply()
    public var result: [SessionInfo] = []
    public init() {}
}

public final class InFlightQuery: @unchecked Sendable {
    public let reply = CoreReply()
    public let units: [ObjectIdentifier]
    public var result = 0
    public init(units: [ObjectIdentifier]) { self.units = units }
}

public final class StatisticsQuery: @unchecked Sendable {
    public let reply = CoreReply()
    /// (LogicalUnit.statisticsSlot, statisticsID) of each LUN asked about.
    public let units: [(slot: Int32, id: UInt64)]
    public var luns: [LUNStatistics] = []
    public var connections: [ConnectionStatistics] = []
    public init(units: [(slot: Int32, id: UInt64)]) { self.units = units }
}

/// Multi-producer mailbox, single consumer (the owning core).
public final class Mailbox: @unchecked Sendable {
    let eventFD: Int32
    private let queue = Locked<[CoreMessage]>([])

    init() {
        eventFD = eventfd(0, Int32(EFD_CLOEXEC))
        precondition(eventFD >= 0, "eventfd failed")
    }

    deinit { close(eventFD) }

    func post(_ m: CoreMessage) {
        queue.withLock { $0.append(m) }
        var one: UInt64 = 1
        _ = write(eventFD, &one, 8)
    }

    func drain() -> [CoreMessage] {
        queue.withLock { q in
            let all = q
            q.removeAll(keepingCapacity: true)
            return all
        }
    }
}
