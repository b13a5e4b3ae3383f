// What /proc says about a process a fixture or a tool started: its CPU time, memory, threads and open
// descriptors, and how busy the whole machine was, for the perf runner, the load generator, perf/livefuzz and
// the end-to-end tests that bound what a daemon costs. The one /proc reader of the package.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

public enum ProcessStats {
    /// One reading of a process.
    public struct Sample: Sendable {
        /// utime + stime of every thread, seconds.
        public var cpuSeconds: Double
        public var rssKiB: Int
        public var hwmKiB: Int
        public var threads: Int
    }

    /// The fields of /proc/PID/stat after the command (`state` first, so field N of proc(5) is at N - 3), or nil.
    static func statFields(_ pid: Int32) -> [Substring]? {
        guard pid > 0, let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        return stat[stat.index(after: close)...].split(separator: " ")
    }

    static var ticksPerSecond: Double { Double(sysconf(Int32(_SC_CLK_TCK))) }

    /// utime + stime of every thread of `pid`, in seconds (/proc/PID/stat fields 14 and 15), or nil.
    public static func cpuSeconds(_ pid: Int32) -> Double? {
        guard let fields = statFields(pid), fields.count > 12, let user = Double(fields[11]),
              let system = Double(fields[12]) else { return nil }
        return (user + system) / ticksPerSecond
    }

    /// VmRSS and VmHWM of `pid`, KiB, or nil.
    public static func memoryKiB(_ pid: Int32) -> (rss: Int, hwm: Int)? {
        guard pid > 0, let s = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        var rss: Int? = nil, hwm = 0
        for line in s.split(separator: "\n") {
            let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard parts.count >= 2 else { continue }
            if parts[0] == "VmRSS:" { rss = Int(parts[1]) }
            if parts[0] == "VmHWM:" { hwm = Int(parts[1]) ?? 0 }
        }
        return rss.map { ($0, hwm) }
    }

    /// CPU time, memory and threads (/proc/PID/stat field 20) of `pid`, or nil.
    public static func sample(_ pid: Int32) -> Sample? {
        guard let fields = statFields(pid), fields.count > 17, let user = Double(fields[11]),
              let system = Double(fields[12]), let threads = Int(fields[17]) else { return nil }
        let memory = memoryKiB(pid) ?? (0, 0)
        return Sample(cpuSeconds: (user + system) / ticksPerSecond, rssKiB: memory.rss, hwmKiB: memory.hwm,
                      threads: threads)
    }

    /// Descriptors `pid` holds (entries of /proc/PID/fd), or nil.
    public static func openDescriptors(_ pid: Int32) -> Int? {
        guard pid > 0 else { return nil }
        return try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count
    }

    /// Whole-machine CPU time from /proc/stat, to tell how much of the box something else used during a run:
    /// busy = user + nice + system + steal over all CPUs (interrupt and softirq time is left out: on loopback
    /// it is the run's own network work), and steal alone. Seconds, or nil.
    public static func hostCPUSeconds() -> (busy: Double, steal: Double)? {
        guard let stat = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
              let line = stat.split(separator: "\n").first(where: { $0.hasPrefix("cpu ") }) else { return nil }
        let f = line.split(separator: " ").dropFirst().compactMap { Double($0) }
        guard f.count >= 8 else { return nil }
        return ((f[0] + f[1] + f[2] + f[7]) / ticksPerSecond, f[7] / ticksPerSecond)
    }
}
