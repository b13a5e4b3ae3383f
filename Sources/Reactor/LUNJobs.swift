// Background jobs of logical units: today the sanitize (SCSI/Sanitize.swift). A job belongs to its LU, not to
// the command that started it, so it is kept here, on the core that started it, beside the connections and
// not in one: aborting its command, a reset, or the end of the session leaves it running. Each job has its
// own buffer slot and store record (taken when it starts, given back when it ends) and one operation in
// flight; its operations carry a `JobOp` tag, so completions and sheep lookups find the job, not a task.

/// A command waiting for its job to end (SANITIZE without IMMED). It is looked up again by index, generation
/// and ITT when the job ends: the command may have been aborted or its connection closed since.
import Floor
import URing
import ISCSIWire
import Store
import SCSI
import ISCSI
import NBD
public struct JobWaiter {
    var connection: Int32
    var generation: UInt32
    var task: Int32
    var itt: UInt32
}

public struct LUNJob {
    var sanitize: SanitizeJob? = nil
    /// The store's progress record for the job's operation in flight (FileStore, SheepStore).
    var store = StoreRequest()
    var slot: Int32 = -1
    /// Told apart from an earlier job in the same entry, for completions that arrive after it ended.
    var generation: UInt32 = 0
    var waiter: JobWaiter? = nil
    var inFlight = false
    /// Bytes the job may still move before the next tick (`sanitize_rate`); .max when unpaced.
    var budgetBytes: UInt64 = .max
    /// Out of budget: the next tick goes on.
    var paced = false
}

/// The core's job entries, in fixed storage: the stores keep pointers to `store` while an operation is in
/// flight.
public final class LUNJobTable {
    let capacity = SanitizeLimits.jobsPerCore
    let entries: UnsafeMutablePointer<LUNJob>
    private(set) var generationCounter: UInt32 = 0

    init() {
        entries = .allocate(capacity: capacity)
        entries.initialize(repeating: LUNJob(), count: capacity)
    }

    deinit {
        entries.deinitialize(count: capacity)
        entries.deallocate()
    }

    /// A free entry, nil when the core runs `capacity` jobs.
    func free() -> Int? {
        for j in 0 ..< capacity where entries[j].sanitize == nil { return j }
        return nil
    }

    func nextGeneration() -> UInt32 {
        generationCounter &+= 1
        return generationCounter
    }

    var inFlight: Int { (0 ..< capacity).reduce(0) { $0 + (entries[$1].inFlight ? 1 : 0) } }

    func entry(_ op: JobOp) -> Int? {
        guard op.job < capacity, entries[op.job].sanitize != nil, entries[op.job].generation == op.generation else {
            return nil
        }
        return op.job
    }

    /// Jobs on these units (the control plane counts them as commands in flight: a LU is busy while one runs).
    func count(on units: [ObjectIdentifier]) -> Int {
        (0 ..< capacity).reduce(0) { n, j in
            guard let s = entries[j].sanitize, units.contains(ObjectIdentifier(s.lun)) else { return n }
            return n + 1
        }
    }
}

extension Reactor {
    /// The transport's side of `SCSIAction.startJob`: starts task `t`'s sanitize as a job of its LU. Returns
    /// the command's next action, or nil when it waits for the job (then `Connection.storeDone` ends it).
    func startSanitizeJob(_ c: Connection, _ t: Int) -> SCSIAction? {
        guard let j = lunJobs.free() else { return c.tasks[t].scsi.sanitizeNotStarted(busy: true) }
        let slot = pool.take()
        if slot < 0 { return c.tasks[t].scsi.sanitizeNotStarted(busy: true) }
        guard let job = c.tasks[t].scsi.beginSanitizeJob() else {
            releaseSlot(slot)
            return c.tasks[t].scsi.sanitizeNotStarted(busy: false)
        }
        // The pattern the command prepared in its buffer; the command's slot goes back with the command.
        if job.overwrite { pool.data(slot).copyMemory(from: pool.data(Int(c.tasks[t].slot)), byteCount: job.patternBytes) }
        let rate = job.lun.presentation.sanitizeRateBytes
        lunJobs.entries[j] = LUNJob(sanitize: job, slot: Int32(slot), generation: lunJobs.nextGeneration(),
                                    budgetBytes: rate == 0 ? .max : rate)
        let next = c.tasks[t].scsi.sanitizeJobStarted()
        if next == nil {
            c.tasks[t].state = .waitingJob
            lunJobs.entries[j].waiter = JobWaiter(connection: Int32(c.index), generation: c.generation, task: Int32(t),
                                                  itt: c.tasks[t].itt)
        }
        runJob(j)
        return next
    }

    /// Issues the job's operations until one is in flight, the pace holds it back or it ends.
    func runJob(_ j: Int) {
        while true {
            if lunJobs.entries[j].budgetBytes == 0 {
                lunJobs.entries[j].paced = true
                return
            }
            let slot = Int(lunJobs.entries[j].slot)
            let step = lunJobs.entries[j].sanitize!.next(buffer: pool.buffer(slot))
            guard case .store(let op) = step else { endJob(j, step); return }
            guard let result = submitJobStore(j, op) else {
                lunJobs.entries[j].inFlight = true
                return
            }
            if let end = jobStepDone(j, result) { endJob(j, end); return }
        }
    }

    /// Records a result; the job's end, or nil when it goes on.
    private func jobStepDone(_ j: Int, _ result: StoreResult) -> SanitizeStep? {
        if !running { return lunJobs.entries[j].sanitize!.abandon() }
        let step = lunJobs.entries[j].sanitize!.completed(result)
        let moved = lunJobs.entries[j].sanitize!.lastPieceBytes
        lunJobs.entries[j].budgetBytes -= min(lunJobs.entries[j].budgetBytes, moved)
        return step
    }

    private func submitJobStore(_ j: Int, _ op: StoreOp) -> StoreResult? {
        let lun = lunJobs.entries[j].sanitize!.lun
        let buffer = jobBuffer(j)
        switch lun.backing {
        case .null:
            return NullStore.run(op, data: buffer.data, byteCount: lun.byteCount)
        case .sheep(let vol):
            return sheep.start(op, on: vol, &lunJobs.entries[j].store, buffer)
        case .file(let f):
            return FileStore.start(op, on: f, &lunJobs.entries[j].store, buffer, ring: ring)
        }
    }

    @inline(__always)
    private func jobBuffer(_ j: Int) -> StoreBuffer {
        StoreBuffer(data: pool.data(Int(lunJobs.entries[j].slot)),
                    tag: JobOp(job: j, generation: lunJobs.entries[j].generation).encode())
    }

    /// A ring completion of a job's file operation.
    func jobCompletion(_ op: JobOp, _ res: Int32) {
        guard let j = lunJobs.entry(op) else { return }
        guard let result = FileStore.complete(&lunJobs.entries[j].store, result: res, jobBuffer(j), ring: ring) else { return }
        jobStoreFinished(j, result)
    }

    /// A job's operation ended (file or sheepdog).
    func jobStoreFinished(_ j: Int, _ result: StoreResult) {
        lunJobs.entries[j].inFlight = false
        if let end = jobStepDone(j, result) { endJob(j, end); return }
        runJob(j)
    }

    /// Gives the job's slot back and tells a waiting command, if it is still there.
    private func endJob(_ j: Int, _ step: SanitizeStep) {
        let failed: Bool
        if case .finished(let f) = step { failed = f } else { failed = true }
        let waiter = lunJobs.entries[j].waiter
        releaseSlot(Int(lunJobs.entries[j].slot))
        lunJobs.entries[j] = LUNJob()
        guard let w = waiter, let c = connection(Int(w.connection), w.generation), c.phase != .closing,
              c.tasks[Int(w.task)].state == .waitingJob, c.tasks[Int(w.task)].itt == w.itt else { return }
        c.storeDone(Int(w.task), failed ? .failed(.mediumError) : .ok(0))
    }

    /// Once a second: paced jobs get their next second's budget.
    func tickJobs() {
        for j in 0 ..< lunJobs.capacity where lunJobs.entries[j].sanitize != nil {
            let rate = lunJobs.entries[j].sanitize!.lun.presentation.sanitizeRateBytes
            lunJobs.entries[j].budgetBytes = rate == 0 ? .max : rate
            if lunJobs.entries[j].paced && !lunJobs.entries[j].inFlight {
                lunJobs.entries[j].paced = false
                runJob(j)
            }
        }
    }

    /// Stopping: jobs without an operation in flight end now (the LU is left in sanitize failure mode); the
    /// others end when their operation completes, which `shutdownAll` waits for.
    func abandonJobs() {
        for j in 0 ..< lunJobs.capacity where lunJobs.entries[j].sanitize != nil && !lunJobs.entries[j].inFlight {
            endJob(j, lunJobs.entries[j].sanitize!.abandon())
        }
    }

    /// During shutdown, a job's completion only ends it.
    func jobCompletionStopping(_ op: JobOp) {
        guard let j = lunJobs.entry(op) else { return }
        lunJobs.entries[j].inFlight = false
        endJob(j, lunJobs.entries[j].sanitize!.abandon())
    }
}
