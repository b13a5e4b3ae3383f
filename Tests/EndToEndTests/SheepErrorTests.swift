// Sheepdog LUNs ringtgtadm must refuse, with tgtadm's EINVAL exit and a message that says what is wrong,
// while the daemon carries on serving; and the VDI lock's life: taken at open, released at LUN delete and
// clean shutdown, kept by the sheep after a crash and taken back by the gateway that restarts on this host.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension EndToEnd {
    @Suite("Sheepdog admin errors")
    struct SheepErrors {
        static let vdiBytes = 16 * mebibyte

        struct Refusal {
            let what: String
            let spec: String
            /// Words the message must contain (the VDI, the socket, the bad field).
            let mentions: [String]
        }

        /// Each refused spec: exit 22 with a message naming the VDI (or the field at fault), no LUN appears,
        /// LUN 1 keeps serving reads and writes, and a failed open leaves no lock behind.
        @Test(arguments: SheepKind.allCases)
        func refusedLUNsSayWhyAndTheDaemonKeepsServing(kind: SheepKind) throws {
            try withSheepTarget(kind, vdis: [SheepVDI(name: "good", bytes: SheepErrors.vdiBytes)]) { t in
                let sock = t.sheep.socketPath
                let absent = t.scratch.path("absent.sock").path
                let closedPort = try freeTCPPorts(1)[0]
                // Hyper volumes are served, up to SheepHyperIndex.objectsMax objects (64 TiB at 4 MiB objects).
                try t.sheep.dogMust(["vdi", "create", "-y", "hyper", "128T"])
                let refusals = [
                    Refusal(what: "unknown VDI", spec: "unix:\(sock):nosuch", mentions: ["nosuch"]),
                    Refusal(what: "VDI locked by LUN 1", spec: "unix:\(sock):good", mentions: ["good", "locked"]),
                    Refusal(what: "unknown snapshot tag", spec: "unix:\(sock):good:nosnap", mentions: ["good", "nosnap"]),
                    Refusal(what: "unknown snapshot id", spec: "unix:\(sock):good:77", mentions: ["good", "77"]),
                    Refusal(what: "hyper volume too large", spec: "unix:\(sock):hyper", mentions: ["hyper"]),
                    // Again: the first refusal released the lock it had taken, so this is not "locked".
                    Refusal(what: "hyper volume too large, again", spec: "unix:\(sock):hyper", mentions: ["hyper", "hyper volume"]),
                    Refusal(what: "missing VDI", spec: "unix:\(sock)", mentions: ["VDI"]),
                    Refusal(what: "port not a number", spec: "tcp:127.0.0.1:notaport:good", mentions: ["notaport"]),
                    Refusal(what: "unknown transport", spec: "nfs:/srv:good", mentions: ["nfs"]),
                    Refusal(what: "unbracketed IPv6 host", spec: "tcp:fe80::1:7000:good", mentions: ["IPv6"]),
                    Refusal(what: "no sheep on the socket", spec: "unix:\(absent):good", mentions: ["good", absent]),
                    Refusal(what: "no sheep on the port", spec: "tcp:127.0.0.1:\(closedPort):good", mentions: ["good", "\(closedPort)"]),
                ]
                for r in refusals {
                    let out = try t.tryAddLUN(2, backingStore: r.spec)
                    #expect(out.exitStatus == SheepE2ELimits.adminInvalidRequestStatus && !out.timedOut && !out.killedBySignal,
                            "\(r.what): \(out)")
                    let missing = r.mentions.filter { !out.output.contains($0) }
                    #expect(missing.isEmpty, "\(r.what): the message does not mention \(missing): \(out.output)")
                    try t.requireAlive("after refusing \(r.what)")
                }

                let show = try t.admin.must(["--lld", "iscsi", "--op", "show", "--mode", "target"])
                let luns = show.stdout.split(whereSeparator: \.isNewline)
                    .map { $0.trimmingCharacters(in: .whitespaces) }.filter { $0.hasPrefix("LUN: ") }
                #expect(luns == ["LUN: 1"], "only LUN 1 exists:\n\(show.stdout)")
                let io = try t.qemuIO(1, ["-c", "write -P 0x5C 4096 65536", "-c", "read -P 0x5C 4096 65536"])
                let report = QemuIOReport(io.stdout + io.stderr)
                #expect(io.succeeded && report.errorLines.isEmpty && report.wroteOffsets == [4096] && report.readOffsets == [4096],
                        "LUN 1 after the refusals: \(io)")
            }
        }

        /// A daemon that dies holding a VDI leaves it locked (the lock is the sheep node's, as with real
        /// sheep): an exclusive (`multipath=off`) opener is refused. The gateway restarted on this host takes
        /// the node's stale shared lock back without `dog vdi lock unlock`, and says so in its log; a second
        /// LUN of the same VDI in that live daemon is still refused. Deleting the LUN releases the lock, and
        /// so does a clean shutdown.
        @Test(arguments: SheepKind.allCases)
        func aKilledGatewaysLockIsTakenBackOnRestartAndReleasedOnDeleteAndShutdown(kind: SheepKind) throws {
            try withSheep(kind) { sheep in
                try sheep.createVDI("held", bytes: SheepErrors.vdiBytes)

                // A first daemon takes the lock, then is killed.
                let crashScratch = try Scratch()
                defer { crashScratch.remove() }
                let crashed = try TargetDaemon(peer: .ringtgt, cores: 1, portals: [.ipv4Loopback], scratch: crashScratch)
                try crashed.admin.newTarget(tid: 1, name: "\(RunningTarget.iqnPrefix):crash")
                try crashed.admin.must(["--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1",
                                        "--bstype", "sheepdog", "--backing-store", sheep.backingStore("held")])
                kill(crashed.process.pid, SIGKILL)
                let died = crashed.process.wait(timeoutSeconds: SheepLimits.stopGraceSeconds)
                #expect(died.killedBySignal, "\(died)")
                crashed.stop(recordProblems: false)

                try withSheepTarget(sheep) { t in
                    let exclusive = try t.admin.run(["--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "1",
                                                     "--lun", "1", "--bstype", "sheepdog", "--bsopts", "multipath=off",
                                                     "--backing-store", sheep.backingStore("held")])
                    #expect(exclusive.exitStatus == SheepE2ELimits.adminInvalidRequestStatus
                            && exclusive.output.contains("locked") && exclusive.output.contains("held"),
                            "a VDI whose daemon was killed stays locked: \(exclusive)")
                    try t.addLUN(1, backingStore: sheep.backingStore("held"))
                    try waitUntil("the daemon to log that it took the stale lock back") {
                        t.target.daemon.log.contains("left by a gateway that died")
                    }
                    let second = try t.tryAddLUN(3, backingStore: sheep.backingStore("held"))
                    #expect(second.exitStatus == SheepE2ELimits.adminInvalidRequestStatus && second.output.contains("locked"),
                            "a live gateway's lock is not taken back: \(second)")
                    let io = try t.qemuIO(1, ["-c", "write -P 0x6D 0 4096", "-c", "read -P 0x6D 0 4096"])
                    #expect(io.succeeded && QemuIOReport(io.stdout + io.stderr).errorLines.isEmpty, "\(io)")

                    // Deleting the LUN releases the lock: the VDI can be served again at once.
                    try t.deleteLUN(1)
                    try t.addLUN(2, backingStore: sheep.backingStore("held"))
                }
                // The daemon above stopped cleanly with LUN 2 open: its lock went with it.
                try withSheepTarget(sheep) { t in
                    try t.addLUN(1, backingStore: sheep.backingStore("held"))
                    let io = try t.qemuIO(1, ["-c", "read -P 0x6D 0 4096"], readOnly: true)
                    #expect(io.succeeded && QemuIOReport(io.stdout + io.stderr).errorLines.isEmpty,
                            "the data written before survives: \(io)")
                }
            }
        }
    }
}
