// Sheep failing under a write load: the connection cut and restored, sheep killed and restarted, transient
// result codes and delays, connections dropped at random. Every write qemu-io saw complete must read back
// afterwards with its pattern (through iSCSI and through dog), and nothing may hang: every tool runs under a
// time limit and the daemon must still be alive.

import Foundation
import Testing

extension EndToEnd {
    @Suite("Sheepdog faults")
    struct SheepFaults {
        static let vdiBytes = 64 * mebibyte
        /// Four sessions, two batches of 32 aio_writes each (queue depth 32), interleaved into the same
        /// objects of a fresh VDI: creates, index updates and plain writes are all in flight at once.
        static let load = WriterLoad(sessions: 4, writesPerSession: 64, queueDepth: 32, slotBytes: 256 * 1024,
                                     lengthsBytes: [4096, 65536, 262_144, 33280, 512, 131_072])
        /// While the test server is cut or killed, every request waits this long first, so that the load is
        /// still running, with requests in flight, when the blow lands.
        static let slowFaults = "delay=1:40-80"
        /// Transient results on a tenth of object requests (retried by ringtgt a second later), and delays.
        static let transientFaults = "error=WAIT_FOR_JOIN:0.05,error=HALT:0.05,delay=0.3:1-30"
        /// A connection dropped at 1 in 200 requests, half of them after the request ran (its reply lost).
        static let dropFaults = "drop=0.005"

        enum Fault: String, CaseIterable, CustomStringConvertible {
            case cutAndRestore, transientErrorsAndDelays, droppedConnections
            var description: String { rawValue }
        }

        /// The connection cut (admin `cut`, then `restore`), transient WAIT_FOR_JOIN/HALT answers with delays,
        /// or connections dropped at random (replies lost after the request ran, or before it ran): no
        /// acknowledged write is lost. Test server only: these faults are its controls.
        @Test(arguments: Fault.allCases)
        func acknowledgedWritesSurvive(fault: Fault) throws {
            var options = SheepServerOptions()
            options.seed = 0xFA17
            switch fault {
            case .cutAndRestore: break
            case .transientErrorsAndDelays: options.faults = SheepFaults.transientFaults
            case .droppedConnections: options.faults = SheepFaults.dropFaults
            }
            try withSheepTarget(.testServer, options: options, vdis: [SheepVDI(name: "vol", bytes: SheepFaults.vdiBytes)]) { t in
                let outcome: WriterLoad.Outcome
                switch fault {
                case .cutAndRestore:
                    outcome = try SheepFaults.runLoad(t, slowedBy: SheepFaults.slowFaults) {
                        try t.sheep.admin("cut")
                        try SheepFaults.waitForConnectionLoss(t)
                        try t.sheep.admin("restore")
                        try t.sheep.admin("faults off")
                    }
                    SheepFaults.expectResends(t)
                case .transientErrorsAndDelays:
                    outcome = try SheepFaults.runLoad(t)
                case .droppedConnections:
                    outcome = try SheepFaults.runLoad(t)
                    #expect(t.target.daemon.log.contains("connection lost"),
                            "no connection was dropped: the test did not test anything")
                }
                try SheepFaults.verify(t, outcome, quiesce: { if fault != .cutAndRestore { try t.sheep.admin("faults off") } })
            }
        }

        /// Sheep killed (SIGKILL) under the load and started again: the test server on the same socket and
        /// data directory, or node 0 of a real cluster (whose socket the LUN uses). No acknowledged write is
        /// lost.
        @Test(arguments: SheepKind.allCases)
        func acknowledgedWritesSurviveASheepRestart(kind: SheepKind) throws {
            var options = SheepServerOptions()
            options.persistent = true
            try withSheepTarget(kind, options: options, vdis: [SheepVDI(name: "vol", bytes: SheepFaults.vdiBytes)]) { t in
                let outcome = try SheepFaults.runLoad(t, slowedBy: kind == .testServer ? SheepFaults.slowFaults : nil) {
                    try t.sheep.kill()
                    try SheepFaults.waitForConnectionLoss(t)
                    try t.sheep.restart()   // the restarted test server has no fault plan
                }
                if kind == .testServer { SheepFaults.expectResends(t) }
                try SheepFaults.verify(t, outcome, quiesce: {})
            }
        }

        /// SIGTERM while sheep is unreachable and a write waits for it: the daemon must still stop within the
        /// harness's grace period (as every test demands of it), failing the write rather than waiting for it.
        @Test func shutdownWhileSheepIsUnreachableDoesNotHang() throws {
            try withSheep(.testServer) { sheep in
                try sheep.createVDI("vol", bytes: 16 * mebibyte)
                let scratch = try Scratch()
                defer { scratch.remove() }
                let daemon = try TargetDaemon(peer: .ringtgt, cores: 2, portals: [.ipv4Loopback], scratch: scratch)
                defer { daemon.stop(recordProblems: false) }
                let iqn = "\(RunningTarget.iqnPrefix):t1"
                try daemon.admin.newTarget(tid: 1, name: iqn)
                try daemon.admin.must(["--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1",
                                       "--bstype", "sheepdog", "--backing-store", sheep.backingStore("vol")])
                try daemon.admin.bind(tid: 1)

                try sheep.admin("cut")
                let url = "\(daemon.endpoints[0].portalURL)/\(iqn)/1"
                let writer = try ToolProcess(try Tools.require("qemu-io"), ["-f", "raw", "-c", "write -P 1 0 4096", url],
                                             logDir: scratch.url, label: "stuck-writer")
                try waitUntil("the write to wait for sheep") { daemon.log.contains("connect failed") }
                daemon.stop()   // records an issue unless SIGTERM alone stops it within the grace period
                // QEMU's iscsi driver keeps trying to reconnect to a target that went away: stop it.
                writer.terminate(graceSeconds: 1)
                try sheep.admin("restore")
            }
        }

        // MARK: Steps

        /// Runs the load on LUN 1. With `disrupt`, it is called once the writers are creating objects (the test
        /// server's object count grew, or `dog vdi list` shows the VDI owning objects); `slowedBy` delays every
        /// request on the test server meanwhile.
        static func runLoad(_ t: SheepTarget, slowedBy faults: String? = nil,
                            disrupt: (() throws -> Void)? = nil) throws -> WriterLoad.Outcome {
            #expect(load.totalBytes <= vdiBytes)
            let onTestServer = t.sheep.kind == .testServer
            let objectsBefore = onTestServer ? try t.sheep.stats().objects : 0
            if let faults { try t.sheep.admin("faults set \(faults)") }
            let running = try load.launch(on: t, lun: 1)
            if let disrupt {
                try waitUntil("the writers to create objects") {
                    if onTestServer { return try t.sheep.stats().objects > objectsBefore }
                    return try t.sheep.listVDIs().contains { $0.name == "vol" && !$0.isSnapshot && $0.usedBytes > 0 }
                }
                try disrupt()
            }
            let outcome = load.collect(running)
            try t.requireAlive("after the write load")
            return outcome
        }

        /// Every completed write reads back with its pattern through a fresh iSCSI session; then (after
        /// `quiesce` turned faults off) `dog vdi read` shows every completed region and zeros elsewhere.
        static func verify(_ t: SheepTarget, _ outcome: WriterLoad.Outcome, quiesce: () throws -> Void) throws {
            #expect(outcome.problems.isEmpty, "writers: \(outcome.problems.prefix(4))")
            #expect(outcome.errorLines.isEmpty, "writes that failed: \(outcome.errorLines.prefix(10))")
            let all = load.allRegions.count
            #expect(outcome.completed.count == all, "\(outcome.completed.count) of \(all) writes completed")

            let viaISCSI = try t.verifyThroughISCSI(lun: 1, outcome.completed)
            #expect(viaISCSI.isEmpty, "completed writes read back through iSCSI: \(viaISCSI)")
            try quiesce()
            if outcome.completed.count == all {
                let viaDog = try t.verifyThroughDog("vol", outcome.completed, bytes: vdiBytes)
                #expect(viaDog.isEmpty, "dog vdi read: \(viaDog)")
            }
            try t.requireAlive("after verifying")
        }

        /// Waits until the daemon logged that a sheep connection broke (its cores notice on their own).
        static func waitForConnectionLoss(_ t: SheepTarget) throws {
            try waitUntil("ringtgtd to notice the sheep connection break") {
                t.target.daemon.log.contains("connection lost")
            }
        }

        /// The blow must have hit requests in flight, or the test proved nothing: ringtgtd logs
        /// "connection lost (...); resending N request(s)".
        static func expectResends(_ t: SheepTarget) {
            let resent = resendCounts(t.target.daemon.log)
            #expect(resent.contains { $0 > 0 }, "no request was in flight when sheep went away (resends: \(resent))")
        }
    }
}

/// The N of every "resending N request(s)" in a daemon log.
func resendCounts(_ log: String) -> [Int] {
    log.split(whereSeparator: \.isNewline).compactMap { line in
        guard let r = line.range(of: "resending ") else { return nil }
        return Int(line[r.upperBound...].prefix { $0.isNumber })
    }
}
