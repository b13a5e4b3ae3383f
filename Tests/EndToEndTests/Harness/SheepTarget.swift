// A ringtgtd serving sheepdog LUNs from a SheepService, and the small tools the sheepdog suites share:
// adding LUNs through ringtgtadm, writer sessions in qemu-io, reading a LUN or a VDI out into a file, and
// bounded waits for something the daemon or the sheep report.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Bounds, with their units.
enum SheepE2ELimits {
    /// qemu-io and qemu-img runs; generous because a fault test may stall a session for seconds.
    static let toolTimeoutSeconds = 180.0
    /// Waiting for the daemon's log or the sheep's state to show something.
    static let conditionTimeoutSeconds = 30.0
    static let conditionFirstBackoffSeconds = 0.002
    static let conditionMaxBackoffSeconds = 0.05
    /// ringtgtadm answers a refused sheepdog LUN with tgtadm's EINVAL.
    static let adminInvalidRequestStatus: Int32 = 22
}

/// A VDI created before the target starts, served as the next LUN (1, 2, ...) on its working VDI.
struct SheepVDI {
    let name: String
    let bytes: Int64
}

/// A running target (tid 1) and the sheep it serves from.
struct SheepTarget {
    let target: RunningTarget
    let sheep: SheepService

    var admin: Admin { target.admin }
    var scratch: Scratch { target.scratch }
    func url(lun: Int) -> String { target.url(lun: lun) }

    /// `--op new --mode logicalunit --bstype sheepdog --backing-store SPEC`, whatever happens.
    func tryAddLUN(_ lun: Int, backingStore spec: String) throws -> ToolResult {
        try admin.run(["--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "\(lun)",
                       "--bstype", "sheepdog", "--backing-store", spec])
    }

    /// Adds a LUN that must be accepted.
    func addLUN(_ lun: Int, backingStore spec: String) throws {
        let r = try tryAddLUN(lun, backingStore: spec)
        if !r.succeeded { throw E2EError("adding sheepdog LUN \(lun) on \(spec) failed: \(r)\n\(tail(target.daemon.log))") }
    }

    func deleteLUN(_ lun: Int) throws {
        try admin.must(["--lld", "iscsi", "--op", "delete", "--mode", "logicalunit", "--tid", "1", "--lun", "\(lun)"])
    }

    /// Runs qemu-io on a LUN (read-only with `readOnly`), bounded.
    func qemuIO(_ lun: Int, _ commands: [String], readOnly: Bool = false) throws -> ToolResult {
        try target.tool("qemu-io", ["-f", "raw"] + (readOnly ? ["-r"] : []) + commands + [url(lun: lun)],
                        timeoutSeconds: SheepE2ELimits.toolTimeoutSeconds)
    }

    /// Starts qemu-io on a LUN without waiting for it.
    func launchQemuIO(_ lun: Int, _ commands: [String], label: String) throws -> ToolProcess {
        try target.launch("qemu-io", ["-f", "raw"] + commands + [url(lun: lun)], label: label)
    }

    /// Copies a whole LUN into a file through iSCSI.
    func copyOut(lun: Int, to file: URL) throws {
        let r = try target.tool("qemu-img", ["convert", "-f", "raw", "-O", "raw", url(lun: lun), file.path],
                                timeoutSeconds: SheepE2ELimits.toolTimeoutSeconds)
        if !r.succeeded { throw E2EError("copying LUN \(lun) out failed: \(r)") }
    }

    /// Copies a file onto a LUN through iSCSI.
    func copyIn(_ file: URL, lun: Int) throws {
        let r = try target.tool("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", file.path, url(lun: lun)],
                                timeoutSeconds: SheepE2ELimits.toolTimeoutSeconds)
        if !r.succeeded { throw E2EError("copying \(file.lastPathComponent) onto LUN \(lun) failed: \(r)") }
    }

    /// Reads every region back through a fresh session, `aio_read -P` at full queue depth. Returns the
    /// problems (errors, pattern mismatches, reads that never completed).
    func verifyThroughISCSI(lun: Int, _ regions: [PatternRegion]) throws -> [String] {
        let r = try qemuIO(lun, QemuIOScript.verify(regions), readOnly: true)
        var problems: [String] = []
        if !r.succeeded { problems.append("qemu-io: \(r)") }
        let report = QemuIOReport(r.stdout + r.stderr)
        problems += report.errorLines.prefix(10)
        if report.readOffsets.count != regions.count {
            problems.append("\(report.readOffsets.count) of \(regions.count) reads completed")
        }
        return problems
    }

    /// Dumps the VDI with `dog vdi read` and checks that every region holds its pattern and every other
    /// byte is zero. Returns the problems.
    func verifyThroughDog(_ vdi: String, snapshot: String? = nil, _ regions: [PatternRegion], bytes: Int64) throws -> [String] {
        let dump = scratch.path("dog-\(vdi)-\(snapshot ?? "working")-\(UUID().uuidString.prefix(6)).img")
        defer { try? FileManager.default.removeItem(at: dump) }
        try sheep.readVDI(vdi, snapshot: snapshot, to: dump)
        return try verifyBackingFile(dump, regions: regions, fileBytes: bytes)
    }

    func requireAlive(_ when: String) throws { try target.requireAlive(when) }
}

/// Runs `body` with a started sheep service of `kind`, always stopped afterwards. Cancels the test case
/// (with a printed note) when the kind cannot run here or the peer is not ringtgtd.
func withSheep<R>(_ kind: SheepKind, options: SheepServerOptions = SheepServerOptions(),
                  _ body: (SheepService) throws -> R) throws -> R {
    try cancelUnlessSheepRuns(kind)
    let sheep = try SheepService.start(kind, options: options)
    defer { sheep.stop() }
    return try body(sheep)
}

/// Cancels the test case (with a printed note) when `kind` cannot run here or the peer is not ringtgtd.
func cancelUnlessSheepRuns(_ kind: SheepKind) throws {
    if Peer.current != .ringtgt {
        let why = "the sheepdog suites drive ringtgtd only (RINGTGT_E2E_PEER=\(Peer.current.rawValue))"
        print("note: \(why)")
        try Test.cancel(Comment(rawValue: why))
    }
    if let why = kind.unavailableReason {
        print("note: \(why)")
        try Test.cancel(Comment(rawValue: why))
    }
}

/// Starts a daemon (tid 1, no LUNs yet) against an already running sheep, creates `vdis` and serves each
/// as LUN 1, 2, ... (unix socket, working VDI). The daemon is always stopped afterwards.
func withSheepTarget<R>(_ sheep: SheepService, cores: Int = 2, vdis: [SheepVDI] = [], nbdPortals: [PortalSpec] = [],
                        _ body: (SheepTarget) throws -> R) throws -> R {
    for v in vdis { try sheep.createVDI(v.name, bytes: v.bytes) }
    return try withTarget(cores: cores, luns: [], nbdPortals: nbdPortals) { t in
        let st = SheepTarget(target: t, sheep: sheep)
        for (i, v) in vdis.enumerated() { try st.addLUN(i + 1, backingStore: sheep.backingStore(v.name)) }
        let result = try body(st)
        try st.requireAlive("during the test")
        return result
    }
}

/// Both at once: a sheep of `kind` and a daemon serving `vdis` from it.
func withSheepTarget<R>(_ kind: SheepKind, cores: Int = 2, options: SheepServerOptions = SheepServerOptions(),
                        vdis: [SheepVDI] = [], nbdPortals: [PortalSpec] = [],
                        _ body: (SheepTarget) throws -> R) throws -> R {
    try withSheep(kind, options: options) { sheep in
        try withSheepTarget(sheep, cores: cores, vdis: vdis, nbdPortals: nbdPortals, body)
    }
}

/// Polls `condition` with a short backoff until it holds or `timeoutSeconds` pass. For states another
/// process reports (a daemon log line, a server counter) that have no event to wait on.
func waitUntil(_ what: String, timeoutSeconds: Double = SheepE2ELimits.conditionTimeoutSeconds,
               _ condition: () throws -> Bool) throws {
    let deadline = Date().addingTimeInterval(timeoutSeconds)
    var backoff = SheepE2ELimits.conditionFirstBackoffSeconds
    while true {
        if try condition() { return }
        if Date() >= deadline { throw E2EError("timed out after \(timeoutSeconds) s waiting for \(what)") }
        usleep(useconds_t(backoff * 1_000_000))
        backoff = min(backoff * 2, SheepE2ELimits.conditionMaxBackoffSeconds)
    }
}

/// Writer sessions: `sessions` qemu-io processes, each writing its regions in batches of `queueDepth`
/// aio_writes followed by an aio_flush. Region k of session s lives in slot (k * sessions + s) of
/// `slotBytes`, so every session writes into the same objects as the others.
struct WriterLoad {
    let sessions: Int
    let writesPerSession: Int
    let queueDepth: Int
    let slotBytes: Int64
    /// Lengths cycle through these (each at most slotBytes): immediate data, R2T bursts, partial blocks.
    let lengthsBytes: [Int]
    /// Added to every offset, e.g. to start in the middle of an object.
    var baseOffset: Int64 = 0

    var totalBytes: Int64 { baseOffset + Int64(sessions * writesPerSession) * slotBytes }

    func regions(session s: Int) -> [PatternRegion] {
        (0..<writesPerSession).map { k in
            let slot = k * sessions + s
            // Patterns 1...254, never 0, so an unwritten region cannot pass.
            return PatternRegion(offset: baseOffset + Int64(slot) * slotBytes,
                                 length: lengthsBytes[slot % lengthsBytes.count], pattern: UInt8(1 + slot % 254))
        }
    }

    var allRegions: [PatternRegion] { (0..<sessions).flatMap { regions(session: $0) } }

    func script(session s: Int) -> [String] {
        var args: [String] = []
        let rs = regions(session: s)
        var i = 0
        while i < rs.count {
            for r in rs[i..<min(rs.count, i + queueDepth)] { args += ["-c", "aio_write -P \(r.pattern) \(r.offset) \(r.length)"] }
            args += ["-c", "aio_flush"]
            i += queueDepth
        }
        return args
    }

    /// Starts every session before waiting for any, so they overlap.
    func launch(on t: SheepTarget, lun: Int) throws -> [ToolProcess] {
        try (0..<sessions).map { s in try t.launchQemuIO(lun, script(session: s), label: "writer-s\(s)") }
    }

    struct Outcome {
        /// Regions whose write qemu-io reported complete ("wrote N/N bytes at offset X").
        var completed: [PatternRegion] = []
        var errorLines: [String] = []
        var problems: [String] = []
    }

    /// Waits for every session, all within one time limit (a stuck target costs it once, not per session),
    /// and collects what each reported.
    func collect(_ running: [ToolProcess]) -> Outcome {
        var out = Outcome()
        let deadline = Date().addingTimeInterval(SheepE2ELimits.toolTimeoutSeconds)
        for (s, p) in running.enumerated() {
            let r = p.wait(timeoutSeconds: max(1, deadline.timeIntervalSinceNow))
            if !r.succeeded { out.problems.append("session \(s): \(r)") }
            let report = QemuIOReport(r.stdout + r.stderr)
            out.errorLines += report.errorLines.map { "session \(s): \($0)" }
            let wrote = Set(report.wroteOffsets)
            out.completed += regions(session: s).filter { wrote.contains($0.offset) }
        }
        return out
    }
}
