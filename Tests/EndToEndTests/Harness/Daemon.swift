// The target daemon as the tests start it (TestSupport's TargetDaemon, which the perf runner uses too: its
// admin tool, portals and stop), and the scoped `withTarget` that every test uses so that no daemon outlives
// its test.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// How the harness starts ringtgtd and ringtgtadm: the package's build, or the binaries in `binDir`, run
/// through `wrapper` (a command that execs the binary path and arguments appended to it).
struct RingtgtLauncher {
    var binDir: URL? = nil
    var wrapper: [String] = []

    func launcher(for peer: Peer) throws -> DaemonLauncher {
        switch peer {
        case .ringtgt:
            func binary(_ name: String) throws -> URL {
                try binDir.map { $0.appendingPathComponent(name) } ?? Paths.packageBinary(name)
            }
            return DaemonLauncher(daemon: try binary("ringtgtd"), admin: try binary("ringtgtadm"),
                                  daemonWrapper: wrapper, adminWrapper: wrapper)
        case .tgt:
            return DaemonLauncher(daemon: try Tools.require("tgtd"), admin: try Tools.require("tgtadm"))
        }
    }
}

extension TargetDaemon {
    /// TestSupport's daemon fixture in a test's scratch directory; what `stop()` finds wrong is recorded as
    /// a test issue.
    convenience init(peer: Peer, cores: Int, portals: [PortalSpec], nbdPortals: [PortalSpec] = [], extraArgs: [String] = [],
                     scratch: Scratch, launcher: RingtgtLauncher = RingtgtLauncher()) throws {
        try self.init(peer: peer, cores: cores, portals: portals, nbdPortals: nbdPortals, extraArgs: extraArgs,
                      launcher: try launcher.launcher(for: peer), logDir: scratch.url,
                      reportProblem: { Issue.record(Comment(rawValue: $0)) })
    }
}

/// A daemon serving one target (tid 1, `iqnPrefix:t1`) with LUNs 1...n, bound to ALL.
struct RunningTarget {
    static let iqnPrefix = "iqn.2026-01.org.ringtgt"

    let daemon: TargetDaemon
    let scratch: Scratch
    let iqn: String
    /// LUN number -> backing file (file LUNs only).
    let lunFiles: [Int: URL]
    /// LUN number -> size in bytes as configured.
    let lunBytes: [Int: Int64]

    var peer: Peer { daemon.peer }
    var admin: Admin { daemon.admin }
    var endpoints: [Endpoint] { daemon.endpoints }
    /// The first IPv4 listener (or the first listener of any kind).
    var endpoint: Endpoint { endpoints.first(where: { !$0.isIPv6 }) ?? endpoints[0] }
    var ipv6Endpoint: Endpoint? { endpoints.first(where: \.isIPv6) }
    var port: Int { endpoint.port }
    /// The first NBD listener (the target must have been started with `nbdPortals`).
    var nbdEndpoint: Endpoint { daemon.nbdEndpoints[0] }

    /// `nbd://HOST:PORT/IQN/LUN`; `export: ""` is the server's default export.
    func nbdURL(lun: Int = 1, export: String? = nil) -> String {
        "nbd://\(nbdEndpoint.host):\(nbdEndpoint.port)/\(export ?? "\(iqn)/\(lun)")"
    }

    /// `iscsi://HOST:PORT/IQN/LUN`.
    func url(lun: Int, via: Endpoint? = nil, target: String? = nil) -> String {
        "\((via ?? endpoint).portalURL)/\(target ?? iqn)/\(lun)"
    }

    /// Runs a tool that must be installed, in this target's scratch directory.
    func tool(_ name: String, _ args: [String], timeoutSeconds: Double = 60) throws -> ToolResult {
        try runTool(try Tools.require(name), args, logDir: scratch.url, timeoutSeconds: timeoutSeconds)
    }

    /// qemu-img convert of `source` onto the image at `url`, which exists already (-n), then of `url` into
    /// `back`; -f raw on both sides so nothing is probed or guessed.
    func qemuImgRoundTrip(_ source: URL, via url: String, into back: URL, timeoutSeconds: Double) throws {
        let put = try tool("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", source.path, url],
                           timeoutSeconds: timeoutSeconds)
        try #require(put.succeeded, "\(put)")
        let get = try tool("qemu-img", ["convert", "-f", "raw", "-O", "raw", url, back.path], timeoutSeconds: timeoutSeconds)
        try #require(get.succeeded, "\(get)")
    }

    /// Logs in a session for `initiator`, and beside it a bystander (another initiator name and ISID) whose
    /// session a test shows unharmed by what the first one suffers.
    func sessionWithBystander(_ initiator: String) throws -> (RawSession, bystander: RawSession) {
        let s = try RawSession(endpoint, target: iqn, options: RawLoginOptions(initiatorName: initiator))
        let bystander = try RawSession(endpoint, target: iqn,
                                       options: RawLoginOptions(initiatorName: "\(initiator)-bystander",
                                                                isid: 0x4000_0000_0002))
        return (s, bystander)
    }

    /// Starts a tool without waiting for it.
    func launch(_ name: String, _ args: [String], label: String? = nil) throws -> ToolProcess {
        try ToolProcess(try Tools.require(name), args, logDir: scratch.url, label: label ?? name)
    }

    /// Throws unless the daemon process is still running (a crash would otherwise pass unnoticed).
    func requireAlive(_ when: String) throws {
        if !daemon.isAlive {
            throw E2EError("the daemon died \(when):\n\(tail(daemon.log))")
        }
    }
}

/// What backs one LUN.
enum LUNSpec {
    /// A sparse regular file of this size, `--bstype rdwr`.
    case file(bytes: Int64)
    /// `--bstype null`: reads zeros, drops writes.
    case null(bytes: Int64)
}

/// Creates target tid 1 named `iqn` with `luns` as LUN 1, 2, ... (file LUNs in `scratch`) and binds it to
/// ALL initiators. Returns each file LUN's backing file and each LUN's size as the daemon serves it.
func addTarget(_ iqn: String, luns: [LUNSpec], admin: Admin, scratch: Scratch, peer: Peer) throws
    -> (files: [Int: URL], sizes: [Int: Int64]) {
    var files: [Int: URL] = [:]
    var sizes: [Int: Int64] = [:]
    try admin.newTarget(tid: 1, name: iqn)
    for (i, spec) in luns.enumerated() {
        let lun = i + 1
        switch spec {
        case .file(let bytes):
            let f = try scratch.makeSparseFile("lun\(lun).img", bytes: bytes)
            try admin.newFileLUN(tid: 1, lun: lun, path: f)
            files[lun] = f
            sizes[lun] = bytes
        case .null(let bytes):
            try admin.newNullLUN(tid: 1, lun: lun, bytes: bytes, peer: peer)
            sizes[lun] = peer.traits.nullLUNFixedBytes ?? bytes
        }
    }
    try admin.bind(tid: 1)
    return (files, sizes)
}

/// Starts a daemon with one target (tid 1) holding `luns` as LUN 1, 2, ..., bound to ALL initiators,
/// runs `body`, and always stops the daemon afterwards, also when `body` throws.
func withTarget<R>(cores: Int = 1, luns: [LUNSpec], portals: [PortalSpec] = [.ipv4Loopback],
                   nbdPortals: [PortalSpec] = [], _ body: (RunningTarget) throws -> R) throws -> R {
    let peer = Peer.current
    let scratch = try Scratch()
    defer { scratch.remove() }
    let daemon = try TargetDaemon(peer: peer, cores: cores, portals: portals, nbdPortals: nbdPortals, scratch: scratch)
    defer { daemon.stop() }

    let iqn = "\(RunningTarget.iqnPrefix):t1"
    let (files, sizes) = try addTarget(iqn, luns: luns, admin: daemon.admin, scratch: scratch, peer: peer)
    let target = RunningTarget(daemon: daemon, scratch: scratch, iqn: iqn, lunFiles: files, lunBytes: sizes)
    let result = try body(target)
    try target.requireAlive("during the test")
    return result
}
