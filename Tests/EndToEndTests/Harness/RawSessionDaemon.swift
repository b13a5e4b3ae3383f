// A `withTarget` overload that starts ringtgtd with extra daemon options (for example
// `--iscsi nop_interval=1,nop_count=2`). `TargetDaemon` builds its command line itself and takes no
// extra options, so this starts the daemon on its own, reusing the harness's pieces (ToolProcess,
// Admin, Scratch, Endpoint), and always stops it afterwards.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A ringtgtd started with extra options, serving one target (tid 1) bound to ALL.
struct OptionedTarget {
    let process: ToolProcess
    let admin: Admin
    let scratch: Scratch
    let endpoint: Endpoint
    let iqn: String

    var pid: Int32 { process.pid }

    /// `iscsi://HOST:PORT/IQN/LUN`.
    func url(lun: Int) -> String { "\(endpoint.portalURL)/\(iqn)/\(lun)" }

    func tool(_ name: String, _ args: [String], timeoutSeconds: Double = 60) throws -> ToolResult {
        try runTool(try Tools.require(name), args, logDir: scratch.url, timeoutSeconds: timeoutSeconds)
    }

    func requireAlive(_ when: String) throws {
        if !process.isRunning {
            throw E2EError("the daemon died \(when):\n\(tail(process.stderrText + process.stdoutText))")
        }
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
    let socket = scratch.path("ctl").path
    let admin = Admin(executable: try Paths.packageBinary("ringtgtadm"), controlArgs: ["--control-socket", socket],
                      logDir: scratch.url)
    let args = ["-f", "--iscsi", PortalSpec.ipv4Loopback.option, "--control-socket", socket, "--cores", "1"]
        + daemonOptions
    let daemon = try Paths.packageBinary("ringtgtd")
    let process = launcher.isEmpty
        ? try ToolProcess(daemon, args, logDir: scratch.url, label: "daemon")
        : try ToolProcess(URL(fileURLWithPath: launcher[0]), Array(launcher.dropFirst()) + [daemon.path] + args,
                          logDir: scratch.url, label: "daemon")
    var stopped = false
    func stop() {
        if stopped { return }
        stopped = true
        let wasRunning = process.isRunning
        let clean = process.terminate(graceSeconds: DaemonLimits.stopGraceSeconds)
        let r = process.result(timedOut: false)
        if !wasRunning {
            Issue.record(Comment(rawValue: "ringtgtd was no longer running when the test ended: \(r)"))
        } else if !clean || r.killedBySignal || r.exitStatus != 0 {
            Issue.record(Comment(rawValue: "ringtgtd did not stop cleanly on SIGTERM: \(r)"))
        }
    }
    defer { stop() }

    // Readiness: the control socket lists the portal with the port the kernel chose.
    var endpoint: Endpoint? = nil
    var backoff = DaemonLimits.readinessFirstBackoffSeconds
    for _ in 0..<DaemonLimits.readinessAttempts {
        if !process.isRunning { break }
        let r = try admin.run(["--lld", "iscsi", "--op", "show", "--mode", "portal"])
        if r.succeeded, let e = Endpoint.parsePortals(r.stdout).first, e.port != 0 { endpoint = e; break }
        usleep(useconds_t(backoff * 1_000_000))
        backoff = min(backoff * 1.5, DaemonLimits.readinessMaxBackoffSeconds)
    }
    guard let endpoint else {
        throw E2EError("ringtgtd \(args.joined(separator: " ")) did not become ready:\n" +
                       tail(process.stderrText + process.stdoutText))
    }

    let iqn = "\(RunningTarget.iqnPrefix):t1"
    if createsTarget { try admin.newTarget(tid: 1, name: iqn) }
    for (i, spec) in luns.enumerated() where createsTarget {
        switch spec {
        case .file(let bytes):
            let f = try scratch.makeSparseFile("lun\(i + 1).img", bytes: bytes)
            try admin.newFileLUN(tid: 1, lun: i + 1, path: f)
        case .null(let bytes):
            try admin.newNullLUN(tid: 1, lun: i + 1, bytes: bytes, peer: .ringtgt)
        }
    }
    if createsTarget { try admin.bind(tid: 1) }
    let target = OptionedTarget(process: process, admin: admin, scratch: scratch, endpoint: endpoint, iqn: iqn)
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
func residentKiB(pid: Int32) -> Int? {
    guard let s = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    for line in s.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
    }
    return nil
}
