// What /proc says about a process a fixture started: its CPU time, memory and open descriptors, for the perf
// runner, perf/livefuzz and the end-to-end tests that bound what a daemon costs.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

public enum ProcessStats {
    /// utime + stime of every thread of `pid`, in seconds (/proc/PID/stat fields 14 and 15), or nil.
    public static func cpuSeconds(_ pid: Int32) -> Double? {
        guard pid > 0, let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // After the command: state is field 3, so utime (14) and stime (15) are at 11 and 12.
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
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

    /// Descriptors `pid` holds (entries of /proc/PID/fd), or nil.
    public static func openDescriptors(_ pid: Int32) -> Int? {
        guard pid > 0 else { return nil }
        return try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count
    }
}
