// The SCSI layer driven without a transport, for SCSITests and the control tests that check what a knob does
// to a command (TargetTests). A library, not a test target, so both can use it; it reaches the machines
// internals, so it exists only where they are built for testing (debug).
#if DEBUG
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
// A fake store executor and a driver loop for SCSITask: the tests send real CDB bytes and data-out, the
// harness carries out every StoreOp against byte arrays (one per LUN, with a set of discarded ranges for
// mapStatus), and collects data-in, status, sense and residual.


/// One in-memory LUN: its bytes and which byte ranges are deallocated.
final class FakeDisk {
    var bytes: [UInt8]
    /// Deallocated byte ranges (sorted, non-overlapping after normalize()).
    var unmapped: [Range<UInt64>] = []
    var flushes = 0
    var fuaWrites = 0
    var ops: [StoreOp] = []
    /// When set, the next op of this kind fails with the error.
    var failNextRead: StoreError? = nil
    var failNextWrite: StoreError? = nil

    init(bytes: Int) { self.bytes = [UInt8](repeating: 0, count: bytes) }

    func isUnmapped(_ off: UInt64) -> Bool { unmapped.contains { $0.contains(off) } }

    func unmap(_ r: Range<UInt64>) {
        var all = unmapped + [r]
        all.sort { $0.lowerBound < $1.lowerBound }
        var merged: [Range<UInt64>] = []
        for x in all {
            if let last = merged.last, x.lowerBound <= last.upperBound {
                merged[merged.count - 1] = last.lowerBound ..< max(last.upperBound, x.upperBound)
            } else { merged.append(x) }
        }
        unmapped = merged
    }

    func map(_ r: Range<UInt64>) {
        var out: [Range<UInt64>] = []
        for x in unmapped {
            if x.upperBound <= r.lowerBound || x.lowerBound >= r.upperBound { out.append(x); continue }
            if x.lowerBound < r.lowerBound { out.append(x.lowerBound ..< r.lowerBound) }
            if x.upperBound > r.upperBound { out.append(r.upperBound ..< x.upperBound) }
        }
        unmapped = out
    }
}

struct Outcome {
    var status: UInt8
    var dataIn: [UInt8]
    var residual: Residual
    var sense: [UInt8]
    var dataOutRequested: Int
    var dataInPieces: Int

    var senseKey: UInt8 { sense.count > 2 ? sense[2] & 0x0F : 0 }
    var asc: UInt8 { sense.count > 12 ? sense[12] : 0 }
    var ascq: UInt8 { sense.count > 13 ? sense[13] : 0 }
    var isGood: Bool { status == SCSIStatus.good }
    func hasSense(_ key: UInt8, _ asc: UInt8, _ ascq: UInt8) -> Bool {
        status == SCSIStatus.checkCondition && senseKey == key && self.asc == asc && self.ascq == ascq
    }
    var information: UInt32 { sense.count >= 7 ? UInt32(sense[3]) << 24 | UInt32(sense[4]) << 16 | UInt32(sense[5]) << 8 | UInt32(sense[6]) : 0 }
}

final class Harness {
    var target: TargetRuntime
    var disks: [UInt64: FakeDisk] = [:]
    var bufferBytes: Int
    let buffer: UnsafeMutableRawBufferPointer
    /// Bound on driver steps, so a task that never completes fails the test instead of hanging it.
    let maxSteps = 1_000_000

    init(luns: [(number: UInt64, blockSize: Int, blocks: UInt64, caps: StoreCapabilities)] = [(0, 512, 2048, StoreCapabilities(canDiscard: true, discardZeroes: true, canReportMapping: true))],
         bufferBytes: Int = 65536, targetName: String = "iqn.2026-01.test:disk") {
        var list: [LogicalUnit] = []
        for l in luns {
            var naa = [UInt8](repeating: 0, count: 16)
            naa[0] = 0x60; naa[15] = UInt8(truncatingIfNeeded: l.number + 1)
            let lu = LogicalUnit(number: l.number, blockSize: l.blockSize, blockCount: l.blocks, capabilities: l.caps,
                                 serial: "SER\(l.number)", naa: naa, backing: .null, bstype: "rdwr", path: "/dev/null")
            list.append(lu)
            disks[l.number] = FakeDisk(bytes: l.blockSize * Int(l.blocks))
        }
        target = TargetRuntime(tid: 1, name: targetName, luns: list, acl: [.all], params: [:], lunGeneration: 1)
        self.bufferBytes = bufferBytes
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bufferBytes, alignment: 4096)
        buffer.initializeMemory(as: UInt8.self, repeating: 0xEE)
    }

    deinit { buffer.deallocate() }

    func nexus(_ name: String = "iqn.2026-01.test:init", isid: UInt64 = 1) -> Nexus {
        Nexus(initiatorName: name, isid: isid, targetName: target.name, portalGroupTag: 1, relativeTargetPortID: 1)
    }

    func lun(_ n: UInt64 = 0) -> LogicalUnit { target.lun(n)! }
    func disk(_ n: UInt64 = 0) -> FakeDisk { disks[n]! }

    /// Publish a new LUN list (as the control plane would) keeping the existing LogicalUnits.
    func replaceTarget(luns: [LogicalUnit], generation: UInt64) {
        target = TargetRuntime(tid: 1, name: target.name, luns: luns, acl: [.all], params: [:], lunGeneration: generation)
        for l in luns where disks[l.number] == nil { disks[l.number] = FakeDisk(bytes: l.blockSize * Int(l.blockCount)) }
    }

    /// Run one command to completion.
    func run(_ cdb: [UInt8], lun lunNumber: UInt64 = 0, nexus: Nexus, edtl: Int? = nil, read: Bool = false,
             write: Bool = false, dataOut: [UInt8] = [], task: inout SCSITask) -> Outcome {
        let edtlValue = edtl ?? (write ? dataOut.count : 0)
        var collected: [UInt8] = []
        var requested = 0
        var pieces = 0
        var action = cdb.withUnsafeBytes { raw in
            task.start(cdb: raw, expectedLength: UInt32(edtlValue), readBit: read, writeBit: write,
                       lunNumber: lunNumber, lun: target.lun(lunNumber), session: SessionBinding(target: target, nexus: nexus), buffer: buffer)
        }
        for _ in 0 ..< maxSteps {
            switch action {
            case .dataOut(let offset, let length):
                precondition(length <= buffer.count, "dataOut longer than the buffer")
                precondition(offset + length <= dataOut.count, "task asked for data-out the initiator never sends")
                requested += length
                for i in 0 ..< length { buffer[i] = dataOut[offset + i] }
                action = task.dataOutReceived(buffer: buffer)
            case .store(let op):
                let result = execute(op, own: lunNumber)
                action = task.storeCompleted(result, buffer: buffer)
            case .dataIn(let length):
                collected += Array(buffer[0 ..< length])
                pieces += 1
                // Scribble over the buffer: the task must not rely on what it sent.
                for i in 0 ..< min(length, 64) { buffer[i] = 0xCD }
                action = task.dataInSent(buffer: buffer)
            case .startJob:
                action = runJob(&task, own: lunNumber)
            case .complete(let status, let n, let residual):
                collected += Array(buffer[0 ..< n])
                var sense = [UInt8](repeating: 0, count: task.senseLength)
                if !sense.isEmpty { sense.withUnsafeMutableBytes { task.copySense(to: $0.baseAddress!) } }
                return Outcome(status: status, dataIn: collected, residual: residual, sense: sense,
                               dataOutRequested: requested, dataInPieces: pieces)
            }
        }
        preconditionFailure("task did not complete")
    }

    /// `.startJob` as the reactor carries it out, with the job run to its end at once: its own buffer, one
    /// operation at a time. Tests that look at a job while it runs drive it with `JobDriver`.
    func runJob(_ task: inout SCSITask, own: UInt64) -> SCSIAction {
        guard let job = task.beginSanitizeJob() else { return task.sanitizeNotStarted(busy: false) }
        let started = task.sanitizeJobStarted()
        var driver = JobDriver(job, harness: self, own: own)
        let end = driver.runToEnd()
        if let started { return started }
        return task.storeCompleted(end, buffer: buffer)
    }

    func run(_ cdb: [UInt8], lun: UInt64 = 0, nexus: Nexus, edtl: Int? = nil, read: Bool = false, write: Bool = false,
             dataOut: [UInt8] = []) -> Outcome {
        var t = SCSITask()
        return run(cdb, lun: lun, nexus: nexus, edtl: edtl, read: read, write: write, dataOut: dataOut, task: &t)
    }

    /// Send TEST UNIT READY until no unit attention is left (as libiscsi does after login).
    func clearUAs(_ n: Nexus, lun: UInt64 = 0) {
        for _ in 0 ..< 8 {
            let o = run([0, 0, 0, 0, 0, 0], lun: lun, nexus: n)
            if o.senseKey != SenseKey.unitAttention { return }
        }
    }

    /// A nexus whose unit attentions are already cleared, as a test that is not about them wants it.
    func ready(_ name: String = "iqn.2026-01.test:init", isid: UInt64 = 1) -> Nexus {
        let n = nexus(name, isid: isid)
        clearUAs(n)
        return n
    }

    func execute(_ op: StoreOp, own: UInt64) -> StoreResult {
        func disk(_ t: StoreTarget) -> FakeDisk? {
            switch t { case .own: return disks[own]; case .other(let n): return disks[n] }
        }
        switch op {
        case .read(let t, let offset, let length, let bo):
            guard let d = disk(t) else { return .failed(.unavailable) }
            d.ops.append(op)
            if let e = d.failNextRead { d.failNextRead = nil; return .failed(e) }
            precondition(bo + length <= buffer.count)
            guard offset + UInt64(length) <= UInt64(d.bytes.count) else { return .failed(.outOfRange) }
            for i in 0 ..< length {
                let o = offset + UInt64(i)
                buffer[bo + i] = d.isUnmapped(o) ? 0 : d.bytes[Int(o)]
            }
            return .ok(length)
        case .write(let t, let offset, let length, let bo, let fua):
            guard let d = disk(t) else { return .failed(.unavailable) }
            d.ops.append(op)
            if let e = d.failNextWrite { d.failNextWrite = nil; return .failed(e) }
            precondition(bo + length <= buffer.count)
            guard offset + UInt64(length) <= UInt64(d.bytes.count) else { return .failed(.outOfRange) }
            for i in 0 ..< length { d.bytes[Int(offset) + i] = buffer[bo + i] }
            d.map(offset ..< offset + UInt64(length))
            if fua { d.fuaWrites += 1 }
            return .ok(length)
        case .flush(let t):
            guard let d = disk(t) else { return .failed(.unavailable) }
            d.ops.append(op)
            d.flushes += 1
            return .ok(0)
        case .shareState(let t, _), .compareSection(let t, _), .sharePortGroupState(let t, _, _):
            // Harness LUs are not multipath sheep LUs: recorded so that a test sees one was asked for.
            guard let d = disk(t) else { return .failed(.unavailable) }
            d.ops.append(op)
            return .ok(0)
        case .discard(let t, let offset, let length):
            guard let d = disk(t) else { return .failed(.unavailable) }
            d.ops.append(op)
            guard offset + length <= UInt64(d.bytes.count) else { return .failed(.outOfRange) }
            for i in 0 ..< Int(length) { d.bytes[Int(offset) + i] = 0 }
            d.unmap(offset ..< offset + length)
            return .ok(0)
        case .mapStatus(let t, let offset, let maxLength):
            guard let d = disk(t) else { return .failed(.unavailable) }
            d.ops.append(op)
            let end = min(UInt64(d.bytes.count), offset + maxLength)
            guard offset < end else { return .failed(.outOfRange) }
            if let r = d.unmapped.first(where: { $0.contains(offset) }) {
                return .extent(mapped: false, length: min(r.upperBound, end) - offset)
            }
            let next = d.unmapped.map(\.lowerBound).filter { $0 > offset }.min() ?? end
            return .extent(mapped: true, length: min(next, end) - offset)
        case .prefetch(let t, _, _):
            guard let d = disk(t) else { return .failed(.unavailable) }
            d.ops.append(op)
            return .ok(0)
        }
    }
}

// CDB builders.
enum CDB {
    static func be16(_ v: Int) -> [UInt8] { [UInt8(truncatingIfNeeded: v >> 8), UInt8(truncatingIfNeeded: v)] }
    static func be32(_ v: UInt64) -> [UInt8] { (0 ..< 4).map { UInt8(truncatingIfNeeded: v >> (24 - 8 * UInt64($0))) } }
    static func be64(_ v: UInt64) -> [UInt8] { (0 ..< 8).map { UInt8(truncatingIfNeeded: v >> (56 - 8 * UInt64($0))) } }

    static func read6(lba: UInt32, blocks: UInt8) -> [UInt8] {
        [0x08, UInt8((lba >> 16) & 0x1F), UInt8((lba >> 8) & 0xFF), UInt8(lba & 0xFF), blocks, 0]
    }
    static func write6(lba: UInt32, blocks: UInt8) -> [UInt8] {
        [0x0A, UInt8((lba >> 16) & 0x1F), UInt8((lba >> 8) & 0xFF), UInt8(lba & 0xFF), blocks, 0]
    }
    static func rw10(_ op: UInt8, lba: UInt32, blocks: Int, flags: UInt8 = 0) -> [UInt8] {
        [op, flags] + be32(UInt64(lba)) + [0] + be16(blocks) + [0]
    }
    static func rw12(_ op: UInt8, lba: UInt32, blocks: UInt32, flags: UInt8 = 0) -> [UInt8] {
        [op, flags] + be32(UInt64(lba)) + be32(UInt64(blocks)) + [0, 0]
    }
    static func rw16(_ op: UInt8, lba: UInt64, blocks: UInt32, flags: UInt8 = 0) -> [UInt8] {
        [op, flags] + be64(lba) + be32(UInt64(blocks)) + [0, 0]
    }
    static func inquiry(evpd: Bool = false, page: UInt8 = 0, alloc: Int = 255) -> [UInt8] {
        [0x12, evpd ? 1 : 0, page] + be16(alloc) + [0]
    }
    static func readCapacity16(alloc: Int = 32) -> [UInt8] {
        [0x9E, 0x10] + be64(0) + be32(UInt64(alloc)) + [0, 0]
    }
    static func modeSense6(page: UInt8, pc: UInt8 = 0, dbd: Bool = false, alloc: UInt8 = 255) -> [UInt8] {
        [0x1A, dbd ? 0x08 : 0, pc << 6 | page, 0, alloc, 0]
    }
    static func modeSense10(page: UInt8, pc: UInt8 = 0, llbaa: Bool = false, alloc: Int = 1024) -> [UInt8] {
        [0x5A, llbaa ? 0x10 : 0, pc << 6 | page, 0, 0, 0, 0] + be16(alloc) + [0]
    }
    static func reportLUNs(select: UInt8 = 0, alloc: UInt64 = 4096) -> [UInt8] {
        [0xA0, 0, select, 0, 0, 0] + be32(alloc) + [0, 0]
    }
}

func pattern(_ n: Int, seed: UInt8) -> [UInt8] { (0 ..< n).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ Int(seed)) } }

/// Runs a sanitize job against the harness's disks as the reactor would: its own buffer (with the pattern the
/// command left in the harness's buffer), one operation at a time.
struct JobDriver {
    var job: SanitizeJob
    let harness: Harness
    let own: UInt64
    var jobBuffer: [UInt8]

    init(_ job: SanitizeJob, harness: Harness, own: UInt64) {
        self.job = job
        self.harness = harness
        self.own = own
        jobBuffer = Array(harness.buffer)
    }

    /// Carries out the next operation: nil while the job goes on, its outcome once it ended.
    mutating func step() -> StoreResult? {
        let step = jobBuffer.withUnsafeMutableBytes { job.next(buffer: $0) }
        guard case .store(let op) = step else { return outcome(step) }
        // `execute` works on the harness's buffer: lend it the job's for one operation.
        let saved = Array(harness.buffer)
        jobBuffer.withUnsafeBytes { harness.buffer.copyMemory(from: $0) }
        let r = harness.execute(op, own: own)
        jobBuffer = Array(harness.buffer)
        saved.withUnsafeBytes { harness.buffer.copyMemory(from: $0) }
        if let end = job.completed(r) { return outcome(end) }
        return nil
    }

    mutating func runToEnd() -> StoreResult {
        while true { if let r = step() { return r } }
    }

    private func outcome(_ s: SanitizeStep) -> StoreResult {
        if case .finished(let failed) = s, !failed { return .ok(0) }
        return .failed(.mediumError)
    }
}
#endif
