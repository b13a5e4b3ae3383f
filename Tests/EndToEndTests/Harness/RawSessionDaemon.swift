// A `withTarget` overload that starts ringtgtd with extra daemon options (for example
// `--iscsi nop_interval=1,nop_count=2`), through a launcher when asked, on TestSupport's daemon fixture.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A ringtgtd started with extra options, serving one target (tid 1) bound to ALL.
struct OptionedTarget {
    let daemon: TargetDaemon
    let scratch: Scratch
    let iqn: String

    var process: ToolProcess { daemon.process }
    var admin: Admin { daemon.admin }
    var endpoint: Endpoint { daemon.endpoints[0] }
    var pid: Int32 { process.pid }

    /// `iscsi://HOST:PORT/IQN/LUN`.
    func url(lun: Int) -> String { "\(endpoint.portalURL)/\(iqn)/\(lun)" }

    func tool(_ name: String, _ args: [String], timeoutSeconds: Double = 60) throws -> ToolResult {
        try runTool(try Tools.require(name), args, logDir: scratch.url, timeoutSeconds: timeoutSeconds)
    }

    func requireAlive(_ when: String) throws {
        if !daemon.isAlive { throw E2EError("the daemon died \(when):\n\(tail(daemon.log))") }
    }
}

/// Starts ringtgtd with `daemonOptions` added to its command line, creates tid 1 with `luns` (null or
/// file LUNs, numbered from 1), runs `body` and stops the daemon (SIGTERM; it must exit 0). `launcher`
/// (e.g. `prlimit --nofile=64:64 --`) runs the daemon through a program that execs it, keeping the pid.
/// With `createsTarget` false the daemon's own options (e.g. `--config`) make every target.
func withTarget<R>(daemonOptions: [String], launcher: [String] = [], luns: [LUNSpec], createsTarget: Bool = true,
                   _ body: (OptionedTarget) throws -> R) throws -> R {
    guard Peer.current == .ringtgt else {
        throw E2EError("withTarget(daemonOptions:) starts ringtgtd only")
    }
    let scratch = try Scratch()
    defer { scratch.remove() }
    let programs = DaemonLauncher(daemon: try Paths.packageBinary("ringtgtd"), admin: try Paths.packageBinary("ringtgtadm"),
                                  daemonWrapper: launcher)
    let daemon = try TargetDaemon(peer: .ringtgt, cores: 1, extraArgs: daemonOptions, launcher: programs,
                                  logDir: scratch.url, reportProblem: { Issue.record(Comment(rawValue: $0)) })
    defer { daemon.stop() }

    let target = OptionedTarget(daemon: daemon, scratch: scratch, iqn: "\(RunningTarget.iqnPrefix):t1")
    if createsTarget { _ = try addTarget(target.iqn, luns: luns, admin: daemon.admin, scratch: scratch, peer: .ringtgt) }
    let result = try body(target)
    try target.requireAlive("during the test")
    return result
}

/// Sessions the daemon lists under `--op show --mode target`: the initiator names of its I_T nexuses.
func listedInitiators(_ admin: Admin) throws -> [String] {
    let r = try admin.must(["--lld", "iscsi", "--op", "show", "--mode", "target"])
    var names: [String] = []
    for line in r.stdout.split(whereSeparator: \.isNewline) {
        let t = line.trimmingCharacters(in: .whitespaces)
        guard t.hasPrefix("Initiator: ") else { continue }
        let rest = t.dropFirst("Initiator: ".count)
        names.append(String(rest.split(separator: " ").first ?? ""))
    }
    return names
}

/// Polls `--op show --mode target` until `condition` holds for the listed initiators, or the time is up.
/// Returns the last listing seen and whether the condition held.
func waitForListing(_ admin: Admin, timeoutSeconds: Double, _ condition: ([String]) -> Bool) throws
    -> (names: [String], ok: Bool) {
    let deadline = monotonicSeconds() + timeoutSeconds
    var backoff = 0.02
    while true {
        let names = try listedInitiators(admin)
        if condition(names) { return (names, true) }
        if monotonicSeconds() > deadline { return (names, false) }
        usleep(useconds_t(backoff * 1_000_000))   // polling interval of a bounded wait, not synchronisation
        backoff = min(backoff * 2, 0.25)
    }
}

/// The daemon's resident memory in KiB (VmRSS from /proc), or nil when it cannot be read.
func residentKiB(pid: Int32) -> Int? { ProcessStats.memoryKiB(pid)?.rss }
