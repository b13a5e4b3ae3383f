/// The LUN lifetime rule, on one connection: a task in flight keeps alive the target it started under, and
/// that target keeps its LUNs (and so their stores' file descriptors) alive.
///
/// A configuration change hands each connection a new `TargetRuntime`; a deleted LUN is simply absent from
/// it. Tasks hold their LUN and target without reference counting (no atomics per I/O), so the target they
/// started under must outlive them: it is parked here, with the number of tasks that pinned it, until the
/// last of them is released. Only then can the LUN's file descriptor close, so a command never touches a
/// closed (or reused) descriptor, nor a freed `TargetRuntime` between EXTENDED COPY segments.
///
/// Epochs number the connection's successive targets. Pinning and unpinning under the current epoch is two
/// integer operations; the retired list is searched only for tasks older than the last change, and holds at
/// most one entry per epoch that still has tasks, so it is bounded by the connection's task entries.
struct TargetPins {
    private struct Retired {
        let epoch: UInt32
        let target: TargetRuntime?
        var tasks: Int
    }

    /// The target new tasks start under.
    private(set) var current: TargetRuntime?
    private(set) var epoch: UInt32 = 0
    private var tasksInEpoch = 0
    private var retired: [Retired] = []

    /// Tasks pinned under any epoch.
    var pinnedTasks: Int { retired.reduce(tasksInEpoch) { $0 + $1.tasks } }
    /// Targets kept alive only for tasks still in flight.
    var retiredTargets: Int { retired.count }

    /// A task takes references to `current` (and its LUNs): returns the epoch to hand back to `unpin`.
    @inline(__always)
    mutating func pin() -> UInt32 {
        tasksInEpoch += 1
        return epoch
    }

    @inline(__always)
    mutating func unpin(_ e: UInt32) {
        if e == epoch {
            precondition(tasksInEpoch > 0, "target unpinned more often than pinned")
            tasksInEpoch -= 1
            return
        }
        guard let i = retired.firstIndex(where: { $0.epoch == e }) else {
            preconditionFailure("task pinned an epoch (\(e)) that is neither current (\(epoch)) nor retired")
        }
        precondition(retired[i].tasks > 0)
        retired[i].tasks -= 1
        if retired[i].tasks == 0 { retired.remove(at: i) }
    }

    /// A new configuration (or the login) gives the connection another target. The old one stays alive while
    /// tasks that started under it are in flight.
    mutating func replace(_ new: TargetRuntime?) {
        if tasksInEpoch > 0 { retired.append(Retired(epoch: epoch, target: current, tasks: tasksInEpoch)) }
        current = new
        epoch &+= 1
        tasksInEpoch = 0
    }
}
