// Snapshots and clones of a VDI that a LUN keeps serving: `dog vdi snapshot` under the LUN (ringtgt gets
// READONLY from sheep, reloads the working VDI and carries on copy-on-write), read-only LUNs on the
// snapshot by tag and by id, and a writable clone of it.

import Foundation
import Testing

extension EndToEnd {
    @Suite("Sheepdog snapshots")
    struct SheepSnapshots {
        static let vdiBytes = 64 * mebibyte

        /// Written before the snapshot: two whole objects (0 and 1) and part of object 3.
        static let before = [
            PatternRegion(offset: 0, length: Int(8 * mebibyte), pattern: 0xA1),
            PatternRegion(offset: 12 * mebibyte, length: Int(mebibyte), pattern: 0xA2),
        ]
        /// Written after it through the same LUN: partial copy-on-write of objects 0 and 3, a whole-object
        /// overwrite of object 1 (no copy needed), and a new object 5.
        static let after = [
            PatternRegion(offset: mebibyte, length: 65536, pattern: 0xB1),
            PatternRegion(offset: 4 * mebibyte, length: Int(4 * mebibyte), pattern: 0xB4),
            PatternRegion(offset: 12 * mebibyte + 512 * 1024, length: 4096, pattern: 0xB3),
            PatternRegion(offset: 20 * mebibyte, length: 65536, pattern: 0xB2),
        ]
        /// Written to a clone of the snapshot.
        static let onClone = [
            PatternRegion(offset: 2 * mebibyte, length: 65536, pattern: 0xC1),
            PatternRegion(offset: 30 * mebibyte, length: 4096, pattern: 0xC2),
        ]
        /// The write commands iscsi-test-cu's ReadOnly.ReadOnlySBC sends that must fail with DATA PROTECT.
        static let writeCommands = ["WRITE10", "WRITE12", "WRITE16", "WRITESAME10", "WRITESAME16",
                                    "WRITEVERIFY10", "WRITEVERIFY12", "WRITEVERIFY16", "COMPAREANDWRITE", "ORWRITE"]

        /// Write A, snapshot while the LUN serves the VDI, write B through the same LUN: the working LUN shows
        /// B over A, LUNs on the snapshot (by tag and by id) show exactly A, they refuse writes with DATA
        /// PROTECT, and a clone of the snapshot starts from A and takes writes of its own. dog sees the same.
        @Test(arguments: SheepKind.allCases)
        func snapshotUnderALiveLUNKeepsItsData(kind: SheepKind) throws {
            let bytes = SheepSnapshots.vdiBytes
            try withSheepTarget(kind, vdis: [SheepVDI(name: "vol", bytes: bytes)]) { t in
                try write(t, lun: 1, SheepSnapshots.before)
                try t.sheep.snapshotVDI("vol", tag: "snap1")
                try write(t, lun: 1, SheepSnapshots.after)
                try t.requireAlive("after writing across a snapshot")

                let working = overlay(SheepSnapshots.before, with: SheepSnapshots.after)
                let snapshot = SheepSnapshots.before
                let listed = try t.sheep.listVDIs()
                let snap = try #require(listed.first { $0.isSnapshot && $0.name == "vol" && $0.tag == "snap1" },
                                        "dog vdi list shows no snapshot snap1: \(listed)")

                try t.addLUN(2, backingStore: t.sheep.backingStore("vol", snapshot: "snap1"))
                try t.addLUN(3, backingStore: t.sheep.backingStore("vol", snapshot: "\(snap.snapshotID)"))
                try expectLUN(t, lun: 1, working, bytes: bytes)
                try expectLUN(t, lun: 2, snapshot, bytes: bytes)
                try expectLUN(t, lun: 3, snapshot, bytes: bytes)
                let dogWorking = try t.verifyThroughDog("vol", working, bytes: bytes)
                #expect(dogWorking.isEmpty, "dog vdi read vol: \(dogWorking)")
                let dogSnap = try t.verifyThroughDog("vol", snapshot: "snap1", snapshot, bytes: bytes)
                #expect(dogSnap.isEmpty, "dog vdi read -s snap1 vol: \(dogSnap)")

                // qemu refuses to open a write-protected LUN read-write.
                let rw = try t.qemuIO(2, ["-c", "write -P 0xEE 0 4096"])
                #expect(!rw.succeeded && rw.output.lowercased().contains("write protected"),
                        "qemu-io opening the snapshot LUN read-write: \(rw)")
                // Every write command gets DATA PROTECT / WRITE PROTECTED.
                let wp = try t.target.tool("iscsi-test-cu", ["-V", "-d", "-t", "SCSI.ReadOnly.ReadOnlySBC", t.url(lun: 3)],
                                           timeoutSeconds: SheepE2ELimits.toolTimeoutSeconds)
                let refused = dataProtectedCommands(wp.stdout)
                let notRefused = SheepSnapshots.writeCommands.filter { !refused.contains($0) }
                #expect(notRefused.isEmpty, "not refused with DATA PROTECT on the snapshot LUN: \(notRefused)\n\(tail(wp.stdout))")
                let report = try CUnitReport(wp.stdout)
                #expect(report.failed.isEmpty && report.tests.count == 1, "ReadOnly.ReadOnlySBC:\n\(tail(wp.stdout))")

                // A clone of the snapshot is a writable VDI that starts with A.
                try t.sheep.dogMust(["vdi", "clone", "-s", "snap1", "vol", "vclone"])
                try t.addLUN(4, backingStore: t.sheep.backingStore("vclone"))
                try write(t, lun: 4, SheepSnapshots.onClone)
                let clone = overlay(SheepSnapshots.before, with: SheepSnapshots.onClone)
                try expectLUN(t, lun: 4, clone, bytes: bytes)
                let dogClone = try t.verifyThroughDog("vclone", clone, bytes: bytes)
                #expect(dogClone.isEmpty, "dog vdi read vclone: \(dogClone)")

                // Nothing of that reached the snapshot or the working VDI.
                try expectLUN(t, lun: 2, snapshot, bytes: bytes)
                let dogSnapAgain = try t.verifyThroughDog("vol", snapshot: "snap1", snapshot, bytes: bytes)
                #expect(dogSnapAgain.isEmpty, "dog vdi read -s snap1 vol at the end: \(dogSnapAgain)")
                let dogWorkingAgain = try t.verifyThroughDog("vol", working, bytes: bytes)
                #expect(dogWorkingAgain.isEmpty, "dog vdi read vol at the end: \(dogWorkingAgain)")
            }
        }

        /// Four sessions writing while `dog vdi snapshot` runs: eight batches of eight writes each, and every
        /// batch writes into eight objects nobody has written yet (1 MiB slots, four sessions per object), so
        /// objects are being created, and their index slots written, all through the load.
        static let loadDuringSnapshot = WriterLoad(sessions: 4, writesPerSession: 64, queueDepth: 8,
                                                   slotBytes: mebibyte, lengthsBytes: [65536, 4096, 131_072, 33280])
        static let loadVDIBytes = 256 * mebibyte
        /// Test server only: every request waits this long while the snapshot is taken, which stretches the
        /// load to a few hundred milliseconds.
        static let loadDelayFaults = "delay=1:10-40"

        /// A snapshot taken while four sessions write: every write qemu-io saw complete is in the working VDI,
        /// through the live LUN, through a LUN opened afresh (its index read back from sheep), and in
        /// `dog vdi read`. The snapshot holds, for each region, either nothing or the whole region.
        /// On the test server every request is delayed by a few milliseconds while the snapshot is taken, and
        /// the snapshot starts only once objects are being created, so writes are in flight across it.
        @Test(arguments: SheepKind.allCases)
        func snapshotDuringWritesLosesNothing(kind: SheepKind) throws {
            let load = SheepSnapshots.loadDuringSnapshot
            let bytes = SheepSnapshots.loadVDIBytes
            #expect(load.totalBytes <= bytes)
            try withSheepTarget(kind, vdis: [SheepVDI(name: "busy", bytes: bytes)]) { t in
                let onTestServer = t.sheep.kind == .testServer
                var objectsBefore = 0
                if onTestServer {
                    objectsBefore = try t.sheep.stats().objects
                    try t.sheep.admin("faults set \(SheepSnapshots.loadDelayFaults)")
                }
                let running = try load.launch(on: t, lun: 1)
                if onTestServer {
                    // Past the first batch: objects exist, more are being created.
                    try waitUntil("the writers to create objects") { try t.sheep.stats().objects > objectsBefore + 8 }
                }
                try t.sheep.snapshotVDI("busy", tag: "mid")
                if onTestServer { try t.sheep.admin("faults off") }
                let outcome = load.collect(running)
                #expect(outcome.problems.isEmpty && outcome.errorLines.isEmpty,
                        "writers: \(outcome.problems.prefix(4)) \(outcome.errorLines.prefix(10))")
                #expect(outcome.completed.count == load.allRegions.count,
                        "\(outcome.completed.count) of \(load.allRegions.count) writes completed")

                let live = try t.verifyThroughISCSI(lun: 1, outcome.completed)
                #expect(live.isEmpty, "the live LUN after the snapshot: \(live)")
                let fromDog = try t.verifyThroughDog("busy", outcome.completed, bytes: bytes)
                #expect(fromDog.isEmpty, "dog vdi read busy: \(fromDog)")
                try t.deleteLUN(1)
                try t.addLUN(1, backingStore: t.sheep.backingStore("busy"))
                let reopened = try t.verifyThroughISCSI(lun: 1, outcome.completed)
                #expect(reopened.isEmpty, "the LUN opened again (index read from sheep): \(reopened)")

                let snap = t.scratch.path("mid.img")
                try t.sheep.readVDI("busy", snapshot: "mid", to: snap)
                let torn = try allOrNothing(snap, load.allRegions, bytes: bytes)
                // Whether the snapshot really fell inside the load (timing; not a pass condition).
                let inSnapshot = try Data(contentsOf: snap, options: .alwaysMapped)
                let before = load.allRegions.filter { inSnapshot[Int($0.offset)] == $0.pattern }.count
                if before == 0 || before == load.allRegions.count {
                    print("note: the snapshot did not split the write load (\(before) of \(load.allRegions.count) regions in it)")
                }
                #expect(torn.isEmpty, "the snapshot: \(torn)")
            }
        }

        /// Writes `regions` through LUN `lun` (one qemu-io session, all queued at once); every one must complete.
        func write(_ t: SheepTarget, lun: Int, _ regions: [PatternRegion]) throws {
            var args: [String] = []
            for r in regions { args += ["-c", "aio_write -P \(r.pattern) \(r.offset) \(r.length)"] }
            let r = try t.qemuIO(lun, args + ["-c", "aio_flush"])
            let report = QemuIOReport(r.stdout + r.stderr)
            guard r.succeeded, report.errorLines.isEmpty, report.wroteOffsets.count == regions.count else {
                throw E2EError("writing \(regions.count) regions to LUN \(lun) failed: \(r)")
            }
        }

        /// Copies a LUN out through iSCSI and expects exactly `regions` in it (zeros elsewhere).
        func expectLUN(_ t: SheepTarget, lun: Int, _ regions: [PatternRegion], bytes: Int64,
                         sourceLocation: SourceLocation = #_sourceLocation) throws {
            let out = t.scratch.path("lun\(lun)-\(UUID().uuidString.prefix(6)).img")
            defer { try? FileManager.default.removeItem(at: out) }
            try t.copyOut(lun: lun, to: out)
            let problems = try verifyBackingFile(out, regions: regions, fileBytes: bytes)
            if !problems.isEmpty {
                Issue.record(Comment(rawValue: "LUN \(lun) read through iSCSI: \(problems)"), sourceLocation: sourceLocation)
            }
        }

        /// An EXTENDED COPY sent to LUN 1 writes into LUN 2's VDI, which was snapshotted after its object was
        /// allocated: sheep answers the copy's write READONLY, and the redo must go to LUN 2's new working VDI,
        /// not to the VDI of the LUN that received the command (which the reply's requester is).
        @Test func anExtendedCopyIntoASnapshottedVDILandsInItsNewWorkingVDI() throws {
            try withSheepTarget(.testServer, cores: 1, vdis: [SheepVDI(name: "src", bytes: 16 * mebibyte),
                                                             SheepVDI(name: "dst", bytes: 16 * mebibyte)]) { t in
                let s = try RawSession(t.target.endpoint, target: t.target.iqn,
                                       options: RawLoginOptions(initiatorName: RobustLifetime.initiator,
                                                                clearUnitAttentionLUNs: [1, 2]))
                let bytes = 1024 * 1024
                let blocks = bytes / RobustLifetime.blockBytes
                let source = patternBytes(bytes, seed: 41)
                let old = patternBytes(bytes, seed: 42)
                try #require(try s.run(RawCDB.write16(lba: 0, blocks: UInt32(blocks)), lun: 1, writeData: source).status
                             == RawCodes.good)
                try #require(try s.run(RawCDB.write16(lba: 0, blocks: UInt32(blocks)), lun: 2, writeData: old).status
                             == RawCodes.good)
                // The LUN still writes to the VID it knows; sheep now answers that VID READONLY.
                try t.sheep.snapshotVDI("dst", tag: "before-copy")
                let list = RobustLifetime.copyList(from: try RobustLifetime.naa(s, lun: 1),
                                                   to: try RobustLifetime.naa(s, lun: 2), blocks: blocks)
                let cdb: [UInt8] = [0x83, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, UInt8(list.count >> 8),
                                    UInt8(list.count & 0xFF), 0, 0]
                let copy = try s.run(cdb, lun: 1, writeData: list)
                #expect(copy.status == RawCodes.good, "\(copy)")
                let dst = try s.run(RawCDB.read16(lba: 0, blocks: UInt32(blocks)), lun: 2, read: true, edtl: bytes)
                #expect(dst.status == RawCodes.good && dst.data == source, "LUN 2 does not hold the copy")
                let src = try s.run(RawCDB.read16(lba: 0, blocks: UInt32(blocks)), lun: 1, read: true, edtl: bytes)
                #expect(src.status == RawCodes.good && src.data == source, "LUN 1 changed")
                for (vdi, snapshot, want) in [("dst", "before-copy", old), ("dst", nil, source), ("src", nil, source)] {
                    let dump = t.scratch.path("\(vdi)-\(snapshot ?? "working").img")
                    try t.sheep.readVDI(vdi, snapshot: snapshot, to: dump)
                    #expect(try Data(contentsOf: dump).prefix(bytes) == Data(want),
                            "dog vdi read \(vdi) \(snapshot ?? "") differs")
                }
            }
        }

    }
}

/// `base` with `top` written over it, as non-overlapping regions (what a disk holds after both writes).
func overlay(_ base: [PatternRegion], with top: [PatternRegion]) -> [PatternRegion] {
    var out: [PatternRegion] = []
    for b in base {
        var pieces = [(b.offset, b.offset + Int64(b.length))]
        for t in top {
            let ts = t.offset, te = t.offset + Int64(t.length)
            pieces = pieces.flatMap { (s, e) -> [(Int64, Int64)] in
                if te <= s || ts >= e { return [(s, e)] }
                return [(s, ts), (te, e)].filter { $0.0 < $0.1 }
            }
        }
        out += pieces.map { PatternRegion(offset: $0.0, length: Int($0.1 - $0.0), pattern: b.pattern) }
    }
    return out + top
}

/// The commands iscsi-test-cu -V reported as refused with DATA PROTECTION / WRITE_PROTECTED, from lines like
/// "[OK] WRITE10 returned CHECK_CONDITION DATA PROTECTION(0x07) WRITE_PROTECTED(0x2700)".
func dataProtectedCommands(_ text: String) -> Set<String> {
    var out = Set<String>()
    for raw in text.split(whereSeparator: \.isNewline) {
        let line = raw.trimmingCharacters(in: .whitespaces)
        guard line.hasPrefix("[OK] "), line.contains("returned CHECK_CONDITION DATA PROTECTION(0x07) WRITE_PROTECTED(0x2700)")
        else { continue }
        if let name = line.dropFirst("[OK] ".count).split(separator: " ").first { out.insert(String(name)) }
    }
    return out
}

/// Checks that each region of `file` holds either its whole pattern or only zeros, and that everything
/// outside the regions is zero. Returns the problems.
func allOrNothing(_ file: URL, _ regions: [PatternRegion], bytes: Int64) throws -> [String] {
    let data = try Data(contentsOf: file, options: .alwaysMapped)
    var problems: [String] = []
    if Int64(data.count) != bytes { problems.append("\(data.count) bytes, not \(bytes)") }
    var outside = regions
    for r in regions {
        let range = Int(r.offset)..<(Int(r.offset) + r.length)
        guard range.upperBound <= data.count else { problems.append("region at \(r.offset) past the end"); continue }
        let full = data[range] == Data(repeating: r.pattern, count: r.length)
        if !full && firstNonZero(data, range) != nil {
            problems.append("region at \(r.offset) (\(r.length) bytes) is neither pattern \(r.pattern) nor zeros")
        }
        if full { outside.removeAll { $0.offset == r.offset } }
    }
    // Outside the regions that hold their pattern, zeros only.
    let filled = regions.filter { r in !outside.contains { $0.offset == r.offset } }
    problems += try verifyBackingFile(file, regions: filled, fileBytes: Int64(data.count))
    return problems
}
