// The daemon under attack: ringtgtd started by TestSupport's daemon fixture on ephemeral ports (its admin tool
// names the iSCSI and NBD ports, its ready line the metrics port), with one null LUN and one file LUN (also the
// NBD exports), and always stopped at the end.
import Foundation
import RawClients
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

enum FuzzLimits {
    /// How long ringtgtd gets to list its portals.
    static let readySeconds = 30.0
    static let iqn = "iqn.2026-01.org.ringtgt.fuzz:t1"
    static let initiator = "iqn.2026-01.org.ringtgt.fuzz:initiator"
    /// The file LUN (LUN 2) on tmpfs: small, the fuzzer needs addresses, not capacity.
    static let fileLUNBytes: Int64 = 64 << 20
    static let blockBytes = 512
    /// The metrics page is read up to this size, within this time.
    static let maxMetricsPageBytes = 16 << 20
    static let metricsSeconds = 5.0
}

struct FuzzError: Error, CustomStringConvertible {
    let description: String
    init(_ s: String) { description = s }
}

final class LiveDaemon {
    let daemon: TargetDaemon
    let dir: URL
    let iscsiPort: Int
    let nbdPort: Int
    let metricsPort: Int

    /// `descriptorLimit`: start ringtgtd with both RLIMIT_NOFILE limits lowered to this (the EMFILE runs; the
    /// daemon raises its soft limit only up to the hard one). The admin tool is the ringtgtadm beside ringtgtd.
    init(ringtgtd: String, cores: Int, extraArgs: [String] = [], descriptorLimit: Int? = nil) throws {
        let dir = URL(fileURLWithPath: "/dev/shm/ringtgt-livefuzz-\(getpid())")
        self.dir = dir
        try? FileManager.default.removeItem(at: dir)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let img = dir.appendingPathComponent("lun2.img").path
        guard FileManager.default.createFile(atPath: img, contents: nil), truncate(img, off_t(FuzzLimits.fileLUNBytes)) == 0 else {
            throw FuzzError("cannot create \(img)")
        }
        let conf = dir.appendingPathComponent("targets.conf")
        try """
        <target \(FuzzLimits.iqn)>
            <backing-store /dev/null>
                bs-type null
                bsopts size=1G
                lun 1
            </backing-store>
            <backing-store \(img)>
                lun 2
            </backing-store>
        </target>

        """.write(to: conf, atomically: true, encoding: .utf8)
        let exe = URL(fileURLWithPath: ringtgtd)
        let launcher = DaemonLauncher(
            daemon: exe, admin: exe.deletingLastPathComponent().appendingPathComponent("ringtgtadm"),
            daemonWrapper: descriptorLimit.map {
                ["/bin/sh", "-c", "ulimit -Sn \($0) && ulimit -Hn \($0) && exec \"$0\" \"$@\""]
            } ?? [])
        do {
            let d = try TargetDaemon(peer: .ringtgt, cores: cores, portals: [.ipv4Loopback], nbdPortals: [.ipv4Loopback],
                                     extraArgs: ["--metrics", "portal=127.0.0.1:0", "--config", conf.path] + extraArgs,
                                     launcher: launcher, logDir: dir, label: "ringtgtd", uniqueLogNames: false,
                                     readinessSeconds: FuzzLimits.readySeconds)
            daemon = d
            iscsiPort = d.endpoints[0].port
            nbdPort = d.nbdEndpoints[0].port
            do { metricsPort = try d.readyLinePort("metrics") } catch {
                d.stop(recordProblems: false)
                throw error
            }
        } catch {
            try? FileManager.default.removeItem(at: dir)
            throw error
        }
    }

    var pid: Int32 { daemon.process.pid }
    var log: String { daemon.log }

    /// VmRSS, KiB (0 once the daemon is gone).
    var rssKiB: Int { ProcessStats.memoryKiB(pid)?.rss ?? 0 }

    /// Descriptors the daemon holds: every accepted connection is one.
    var openDescriptors: Int { ProcessStats.openDescriptors(pid) ?? 0 }

    /// utime + stime of all threads, seconds.
    var cpuSeconds: Double { ProcessStats.cpuSeconds(pid) ?? 0 }

    /// Logged-in connections, from the metrics page (one received-bytes line per connection), or nil.
    func loggedInConnections() -> Int? {
        guard let page = try? httpGet(loopback(metricsPort), path: "/metrics", timeoutSeconds: FuzzLimits.metricsSeconds,
                                      maxBytes: FuzzLimits.maxMetricsPageBytes).body else { return nil }
        return page.split(separator: "\n").filter { $0.hasPrefix("ringtgt_connection_received_bytes_total{") }.count
    }

    /// SIGTERM, SIGKILL after the fixture's grace period, then the scratch directory goes.
    func stop() {
        daemon.stop(recordProblems: false)
        try? FileManager.default.removeItem(at: dir)
    }

    /// How the daemon ended, when it has.
    var death: String? {
        guard !daemon.isAlive else { return nil }
        let r = daemon.process.result(timedOut: false)
        let how = r.killedBySignal ? "signal \(r.exitStatus)" : "exit \(r.exitStatus)"
        let tail = log.split(separator: "\n").suffix(15).joined(separator: "\n")
        return "ringtgtd died (\(how)); log tail:\n\(tail)"
    }
}

/// Raise this process's descriptor limit to its hard limit (10,000 hostile connections need it).
func raiseOwnDescriptorLimit() -> Int {
    var lim = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim) == 0 else { return 0 }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim)
    }
    return Int(lim.rlim_cur)
}
