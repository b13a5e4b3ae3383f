// The connection's task table and its buffer slots, shared by both front ends: an iSCSI command and an NBD
// request are admitted the same way (a task entry, and a buffer slot within the connection's share of the
// core's), and given back the same way (`releaseTask`, FullFeature.swift).

extension Connection {
    /// Takes a task entry, reset: a free one, else the next one never used (entries are initialised on first use,
    /// so an idle connection touches only what it used); nil when the table is full.
    @inline(__always)
    func takeTaskEntry() -> Int? {
        let t: Int
        if freeTask >= 0 {
            t = Int(freeTask)
            freeTask = tasks[t].nextFree
        } else if tasksInitialized < taskCapacity {
            t = tasksInitialized
            (tasks + t).initialize(to: IOTask())
            tasksInitialized += 1
        } else {
            return nil
        }
        activeTasks += 1
        tasks[t] = IOTask()
        return t
    }

    /// Whether this connection may take a buffer slot now. If not, it is woken when it may: by the release of
    /// one of its own when it holds its share of the core's buffers, else by the core when one is given back.
    func maySlot() -> Bool {
        if slotsHeld >= reactor.config.maxSlotsPerConnection {
            stalledOnCap = true
            return false
        }
        if reactor.pool.freeCount == 0 {
            waitForPool()
            return false
        }
        return true
    }

    /// Call only after maySlot() said yes.
    func takeSlot(_ t: Int) {
        let slot = reactor.pool.take()
        slotsHeld += 1
        assert(slot >= 0 && slotsHeld <= reactor.config.maxSlotsPerConnection)
        tasks[t].slot = Int32(slot)
    }

    /// Gives a slot back to the core, queueing this connection first when it waits for one of its own.
    func returnSlot(_ slot: Int) {
        slotsHeld -= 1
        if stalledOnCap && phase != .closing {
            // Queue behind this slot before giving it back, so the release wakes this connection.
            stalledOnCap = false
            waitForPool()
        }
        reactor.releaseSlot(slot)
    }

    /// Asks the core for a wake-up when it has a buffer slot again.
    func waitForPool() {
        if !onSlotWaitList {
            onSlotWaitList = true
            reactor.slotWaiters.append(Int32(index))
        }
    }
}
