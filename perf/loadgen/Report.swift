// The run's figures as text or one JSON object, with the target's samples from /proc (TestSupport's ProcessStats).
import Glibc
import Histogram
import TestSupport

struct RunResult {
    var url: String
    var rw: String
    var readPercent: Int
    var ioBytes: Int
    var queueDepth: Int
    var sessions: Int
    var idleSessions: Int
    var threads: Int
    var seconds: Double
    var stats: WorkerStats
    var histogram: Histogram<UInt64>
    var headerDigest: Bool
    var dataDigest: Bool
    var verify: Bool
    var targetPid: Int32?
    var targetStart: ProcessStats.Sample?
    var targetEnd: ProcessStats.Sample?
    var backendPids: [Int32] = []
    var backendCPUSeconds: Double = 0
    var loadgenCPUSeconds: Double
    var hostStart: (busy: Double, steal: Double)?
    var hostEnd: (busy: Double, steal: Double)?
    var regionBytes: UInt64
    var lunBlockBytes: Int
    var countMode: Bool

    var ios: Int { stats.reads + stats.writes }
    var iops: Double { seconds > 0 ? Double(ios) / seconds : 0 }
    var megabytesPerSecond: Double { seconds > 0 ? Double(stats.readBytes + stats.writeBytes) / seconds / 1e6 : 0 }
    func us(_ nanos: UInt64) -> Double { Double(nanos) / 1000 }
    func percentileUs(_ p: Double) -> Double { ios > 0 ? us(histogram.valueAtPercentile(p)) : 0 }
    var targetCPUSeconds: Double? {
        guard let a = targetStart, let b = targetEnd else { return nil }
        return b.cpuSeconds - a.cpuSeconds
    }
    var targetCPUMicrosPerIO: Double? { targetCPUSeconds.map { ios > 0 ? $0 * 1e6 / Double(ios) : 0 } }

    func text() -> String {
        var out = "\(url) \(rw) bs=\(ioBytes) qd=\(queueDepth) sessions=\(sessions) threads=\(threads)"
        if headerDigest || dataDigest { out += " digests=\(headerDigest ? "H" : "")\(dataDigest ? "D" : "")" }
        if idleSessions > 0 { out += " idle=\(idleSessions)" }
        out += "\n"
        out += "  \(fmt(iops, 0)) IOPS, \(fmt(megabytesPerSecond, 1)) MB/s over \(fmt(seconds, 2)) s (\(ios) I/Os: \(stats.reads) reads, \(stats.writes) writes)\n"
        out += "  latency us: p50 \(fmt(percentileUs(50), 1))  p99 \(fmt(percentileUs(99), 1))  p99.9 \(fmt(percentileUs(99.9), 1))  max \(fmt(us(histogram.max), 1))  mean \(fmt(histogram.mean / 1000, 1))\n"
        out += "  errors \(stats.errors)"
        if verify { out += ", verified reads \(stats.verifiedReads), reads of unwritten units \(stats.unverifiedReads), verify failures \(stats.verifyFailures)" }
        out += "\n"
        if let c = targetCPUSeconds, let per = targetCPUMicrosPerIO {
            out += "  target pid \(targetPid ?? 0): \(fmt(c, 2)) CPU s (\(fmt(c / max(seconds, 1e-9) * 100, 0))% of a core), \(fmt(per, 2)) us CPU per I/O, VmHWM \(targetEnd?.hwmKiB ?? 0) KiB\n"
        }
        out += "  load generator: \(fmt(loadgenCPUSeconds / max(seconds, 1e-9) * 100, 0))% of a core\n"
        for m in stats.messages { out += "  ! \(m)\n" }
        return out
    }

    func json() -> String {
        var o = JSONObject()
        o.add("url", url)
        o.add("rw", rw)
        o.add("readPercent", readPercent)
        o.add("blockBytes", ioBytes)
        o.add("queueDepth", queueDepth)
        o.add("sessions", sessions)
        o.add("idleSessions", idleSessions)
        o.add("threads", threads)
        o.add("headerDigest", headerDigest)
        o.add("dataDigest", dataDigest)
        o.add("verify", verify)
        o.add("countMode", countMode)
        o.add("regionBytes", Int(regionBytes))
        o.add("lunBlockBytes", lunBlockBytes)
        o.add("seconds", seconds)
        o.add("ios", ios)
        o.add("reads", stats.reads)
        o.add("writes", stats.writes)
        o.add("iops", iops)
        o.add("mbps", megabytesPerSecond)
        var lat = JSONObject()
        lat.add("p50", percentileUs(50))
        lat.add("p90", percentileUs(90))
        lat.add("p99", percentileUs(99))
        lat.add("p999", percentileUs(99.9))
        lat.add("max", ios > 0 ? us(histogram.max) : 0)
        lat.add("min", ios > 0 ? us(histogram.min) : 0)
        lat.add("mean", ios > 0 ? histogram.mean / 1000 : 0)
        o.addRaw("latencyUs", lat.text)
        // The distribution for plots: (latency us, percentile) pairs at log-spaced percentile steps.
        var points: [String] = []
        if ios > 0 {
            for v in histogram.percentiles(ticksPerHalfDistance: 4) {
                points.append("[\(jsonNumber(us(v.value))),\(jsonNumber(v.percentile))]")
                if v.percentile >= 100 { break }
            }
        }
        o.addRaw("latencyDistribution", "[" + points.joined(separator: ",") + "]")
        o.add("errors", stats.errors)
        o.add("verifyFailures", stats.verifyFailures)
        o.add("verifiedReads", stats.verifiedReads)
        o.add("unverifiedReads", stats.unverifiedReads)
        o.add("nopPingsAnswered", stats.nopPingsAnswered)
        o.addRaw("messages", "[" + stats.messages.map { jsonString($0) }.joined(separator: ",") + "]")
        o.add("loadgenCPUSeconds", loadgenCPUSeconds)
        if let a = hostStart, let b = hostEnd {
            var h = JSONObject()
            h.add("busyCPUSeconds", b.busy - a.busy)
            h.add("stealCPUSeconds", b.steal - a.steal)
            o.addRaw("host", h.text)
        }
        if let pid = targetPid {
            var t = JSONObject()
            t.add("pid", Int(pid))
            if let c = targetCPUSeconds { t.add("cpuSeconds", c) }
            if let per = targetCPUMicrosPerIO { t.add("cpuMicrosPerIO", per) }
            if let e = targetEnd {
                t.add("vmHWMKiB", e.hwmKiB)
                t.add("vmRSSKiB", e.rssKiB)
                t.add("threads", e.threads)
            }
            if let s = targetStart { t.add("vmRSSKiBAtStart", s.rssKiB) }
            o.addRaw("target", t.text)
        }
        if !backendPids.isEmpty {
            var b = JSONObject()
            b.addRaw("pids", "[" + backendPids.map { String($0) }.joined(separator: ",") + "]")
            b.add("cpuSeconds", backendCPUSeconds)
            b.add("cpuMicrosPerIO", ios > 0 ? backendCPUSeconds * 1e6 / Double(ios) : 0)
            o.addRaw("backend", b.text)
        }
        return o.text
    }
}

func fmt(_ v: Double, _ decimals: Int) -> String {
    if !v.isFinite { return "0" }
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    let r = (v * scale).rounded() / scale
    if decimals == 0 { return String(Int(r)) }
    let whole = Int(r.rounded(.towardZero))
    var frac = Int(((abs(r) - Double(abs(whole))) * scale).rounded())
    var w = whole
    if frac >= Int(scale) { frac -= Int(scale); w += r < 0 ? -1 : 1 }
    var f = String(frac)
    while f.count < decimals { f = "0" + f }
    return (r < 0 && w == 0 ? "-" : "") + String(w) + "." + f
}

func jsonNumber(_ v: Double) -> String {
    if !v.isFinite { return "null" }
    if v == v.rounded() && abs(v) < 1e15 { return String(Int(v)) }
    return fmt(v, 3)
}

func jsonString(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\t": out += "\\t"
        default:
            if u.value < 0x20 { out += "\\u00" + (u.value < 16 ? "0" : "") + String(u.value, radix: 16) } else { out.unicodeScalars.append(u) }
        }
    }
    return out + "\""
}

/// A JSON object built in insertion order, without Foundation.
struct JSONObject {
    var parts: [String] = []
    mutating func add(_ k: String, _ v: String) { parts.append("\(jsonString(k)):\(jsonString(v))") }
    mutating func add(_ k: String, _ v: Int) { parts.append("\(jsonString(k)):\(v)") }
    mutating func add(_ k: String, _ v: Double) { parts.append("\(jsonString(k)):\(jsonNumber(v))") }
    mutating func add(_ k: String, _ v: Bool) { parts.append("\(jsonString(k)):\(v)") }
    mutating func addRaw(_ k: String, _ raw: String) { parts.append("\(jsonString(k)):\(raw)") }
    var text: String { "{" + parts.joined(separator: ",") + "}" }
}
