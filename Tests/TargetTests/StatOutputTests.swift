// `--op stat` and the metrics: the tgt-layout and Prometheus formatters, the control plane's stat requests and
// the metrics endpoint's HTTP answers.

import Foundation
import Testing
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor

@Suite struct StatFormatterTests {
    static func line(tid: Int = 1, lun: UInt64 = 1, _ fill: (inout LUNStatistics) -> Void) -> LUNStatLine {
        var s = LUNStatistics()
        fill(&s)
        return LUNStatLine(tid: tid, targetName: "iqn.2026-01.test:t\(tid)", lun: lun, statistics: s)
    }

    @Test func lunTableUsesTgtsHeaderAndColumnWidths() {
        let l = Self.line { s in
            s.counters.read.submittedBytes = 40960; s.counters.read.submittedCommands = 10
            s.counters.read.doneBytes = 40960; s.counters.read.doneCommands = 10
            s.counters.write.submittedBytes = 16384; s.counters.write.submittedCommands = 4
            s.counters.write.doneBytes = 16384; s.counters.write.doneCommands = 4
            s.counters.errors = 1; s.counters.doneCommands = 15; s.counters.aborts = 2
            s.counters.latencySumNanos = 15 * 25_000; s.counters.latencyMaxNanos = 30_000
            s.latencyBuckets[LatencyHistogram.bucket(nanos: 25_000)] = 14
            s.latencyBuckets[LatencyHistogram.bucket(nanos: 30_000)] = 1
        }
        let text = StatFormatter.luns([l])
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        // tgt_stat_header and tgt_stat_line's printf widths ("%3d %3d %3d %12d %6d ... %4d").
        #expect(lines[0] == "tgt lun sid rd_subm(bytes,cmds) rd_done(bytes,cmds) wr_subm(bytes,cmds) wr_done(bytes,cmds) errs")
        #expect(lines[1] == "  1   1   0        40960     10        40960     10        16384      4        16384      4    1")
        #expect(lines[2] == "")
        #expect(lines[3] == "tgt lun cmds aborts lat_avg(us) lat_p50(us) lat_p90(us) lat_p99(us) lat_p999(us) lat_max(us)")
        let cols = lines[4].split(separator: " ").map(String.init)
        #expect(cols[0] == "1" && cols[1] == "1" && cols[2] == "15" && cols[3] == "2" && cols[4] == "25.0")
        #expect(cols[9] == "30.0")
        // p50 is the end of 25 µs's bucket, which is at most 25 % wider.
        let p50 = Double(cols[5])!
        #expect(p50 >= 25 && p50 <= 25 * 1.25)
    }

    @Test func anIdleLUNShowsZerosAndNoLatency() {
        let text = StatFormatter.luns([Self.line { _ in }])
        #expect(text.contains("  1   1   0            0      0            0      0            0      0            0      0    0\n"))
        #expect(text.hasSuffix("  1   1    0      0           -           -           -           -            -           -\n"))
    }

    @Test func connectionTableStartsWithTgtsColumns() {
        var c = ConnectionCounters()
        c.rxBytes = 1000; c.txBytes = 2000; c.dataOutPDUs = 3; c.dataInPDUs = 4; c.commandPDUs = 5
        c.responsePDUs = 6; c.readCommands = 2; c.readBytes = 8192; c.writeCommands = 3; c.writeBytes = 12288
        c.errors = 1
        let s = ConnectionStatistics(tid: 1, targetName: "t", sid: 2, cid: 0, initiatorName: "i", peerAddress: "::1",
                                     counters: c)
        let lines = StatFormatter.connections([s]).split(separator: "\n").map(String.init)
        #expect(lines[0].hasPrefix("sid cid rxdata_octets txdata_octets dataout_pdus datain_pdus cmd_pdus rsp_pdus "))
        // _stat_iscsi_conn: "%3d %3d %13d %13d %12d %11d %8d %8d".
        #expect(lines[1].hasPrefix("  2   0          1000          2000            3           4        5        6 "))
        #expect(lines[1].split(separator: " ") == ["2", "0", "1000", "2000", "3", "4", "5", "6", "2", "8192", "3",
                                                   "12288", "1", "0"])
    }

    /// Prometheus text format 0.0.4: every line a comment or `name{labels} value`.
    static func checkExposition(_ text: String) -> [String: Double] {
        var values: [String: Double] = [:]
        let sample = try! NSRegularExpression(
            pattern: #"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*"(,[a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*")*)?\})? (\S+)$"#)
        #expect(text.hasSuffix("\n"))
        for line in text.split(separator: "\n").map(String.init) {
            if line.hasPrefix("# HELP ") || line.hasPrefix("# TYPE ") { continue }
            guard sample.firstMatch(in: line, range: NSRange(line.startIndex..., in: line)) != nil else {
                Issue.record("not a sample line: \(line)")
                continue
            }
            let space = line.lastIndex(of: " ")!
            let value = Double(line[line.index(after: space)...])
            #expect(value != nil, "bad value in \(line)")
            values[String(line[..<space])] = value
        }
        return values
    }

    @Test func prometheusPageIsValidAndHistogramsAreCumulative() {
        let l = Self.line { s in
            s.counters.read.doneCommands = 3; s.counters.read.doneBytes = 12288; s.counters.doneCommands = 3
            s.counters.latencySumNanos = 3_000_000
            for n: UInt64 in [5_000, 100_000, 2_895_000] { s.latencyBuckets[LatencyHistogram.bucket(nanos: n)] += 1 }
        }
        var c = ConnectionCounters()
        c.rxBytes = 77
        let conn = ConnectionStatistics(tid: 1, targetName: "iqn.2026-01.test:t1", sid: 9, cid: 0,
                                        initiatorName: "iqn.\"odd\\name", peerAddress: "127.0.0.1", counters: c)
        let text = StatFormatter.prometheus(luns: [l], connections: [conn])
        let v = Self.checkExposition(text)
        let lun = #"{target="iqn.2026-01.test:t1",tid="1",lun="1"}"#
        #expect(v["ringtgt_lun_read_commands_total\(lun)"] == 3)
        #expect(v["ringtgt_lun_read_bytes_total\(lun)"] == 12288)
        #expect(v["ringtgt_lun_latency_seconds_count\(lun)"] == 3)
        #expect(v["ringtgt_lun_latency_seconds_sum\(lun)"] == 0.003)
        #expect(text.contains("# TYPE ringtgt_lun_latency_seconds histogram\n"))
        #expect(text.contains("# TYPE ringtgt_lun_read_commands_total counter\n"))
        // Buckets: non-decreasing, ending with +Inf = count; 4.096 µs holds none, 16.384 µs one, 262 µs two.
        let buckets = text.split(separator: "\n").filter { $0.hasPrefix("ringtgt_lun_latency_seconds_bucket") }
        let counts = buckets.map { Double($0.split(separator: " ").last!)! }
        #expect(counts == counts.sorted())
        #expect(buckets.last!.contains(#"le="+Inf""#) && counts.last == 3)
        #expect(v[#"ringtgt_lun_latency_seconds_bucket{target="iqn.2026-01.test:t1",tid="1",lun="1",le="4.096e-06"}"#] == 0)
        #expect(v[#"ringtgt_lun_latency_seconds_bucket{target="iqn.2026-01.test:t1",tid="1",lun="1",le="1.6384e-05"}"#] == 1)
        #expect(v[#"ringtgt_lun_latency_seconds_bucket{target="iqn.2026-01.test:t1",tid="1",lun="1",le="0.000262144"}"#] == 2)
        // Label values are escaped.
        #expect(text.contains(#"iqn="iqn.\"odd\\name""#))
        #expect(text.contains("ringtgt_connection_received_bytes_total{target=\"iqn.2026-01.test:t1\",tid=\"1\",sid=\"9\",cid=\"0\","))
    }
}

@Suite struct ControlStatTests {
    @Test func statAnswersPerModeWithTgtsErrors() {
        let h = ControlHarness()
        h.run("--lld iscsi --op new --mode target --tid 1 --targetname iqn.2026-01.test:t1")
        h.run("--lld iscsi --op new --mode logicalunit --tid 1 --lun 1 --backing-store /tmp/a.img")
        h.run("--lld iscsi --op new --mode logicalunit --tid 1 --lun 2 --backing-store /tmp/b.img")
        let system = h.run("--lld iscsi --op stat --mode system")
        #expect(system.exitCode == 0)
        #expect(system.stdout.hasPrefix(StatFormatter.lunHeader + "  1   1   0 "))
        #expect(system.stdout.contains("\n  1   2   0 "))
        let target = h.run("--lld iscsi --op stat --mode target --tid 1")
        #expect(target.stdout == system.stdout)
        let lun = h.run("--lld iscsi --op stat --mode logicalunit --tid 1 --lun 2")
        #expect(lun.exitCode == 0 && lun.stdout.contains("\n  1   2   0 ") && !lun.stdout.contains("\n  1   1   0 "))
        #expect(h.run("--lld iscsi --op stat --mode target --tid 5").stderr == "ringtgtadm: can't find the target\n")
        #expect(h.run("--lld iscsi --op stat --mode logicalunit --tid 1 --lun 3").stderr
                == "ringtgtadm: can't find the logical unit\n")
        #expect(h.run("--lld iscsi --op stat --mode session --tid 1 --sid 4").stderr == "ringtgtadm: can't find the session\n")
        let conns = h.run("--lld iscsi --op stat --mode connection --tid 1")
        #expect(conns.exitCode == 0 && conns.stdout == StatFormatter.connectionHeader)
        #expect(h.registry.metricsText().contains("ringtgt_lun_read_commands_total{target=\"iqn.2026-01.test:t1\",tid=\"1\",lun=\"2\"} 0\n"))
    }

    @Test func aLUNKeepsItsStatisticsSlotAcrossUpdatesAndGivesItBackWhenDeleted() throws {
        let h = ControlHarness()
        h.run("--lld iscsi --op new --mode target --tid 1 --targetname iqn.2026-01.test:t1")
        h.run("--lld iscsi --op new --mode logicalunit --tid 1 --lun 1 --backing-store /tmp/a.img")
        h.run("--lld iscsi --op new --mode logicalunit --tid 1 --lun 2 --backing-store /tmp/b.img")
        let before = try #require(h.fabric.latest?.targets.first?.luns)
        #expect(before[0].statisticsSlot >= 0 && before[1].statisticsSlot >= 0)
        #expect(before[0].statisticsSlot != before[1].statisticsSlot && before[0].statisticsID != before[1].statisticsID)
        #expect(h.run("--lld iscsi --op update --mode logicalunit --tid 1 --lun 1 --params vendor_id=ACME").exitCode == 0)
        let updated = try #require(h.fabric.latest?.targets.first?.lun(1))
        #expect(updated !== before[0])
        #expect(updated.statisticsSlot == before[0].statisticsSlot && updated.statisticsID == before[0].statisticsID)
        #expect(h.run("--lld iscsi --op delete --mode logicalunit --tid 1 --lun 2").exitCode == 0)
        h.run("--lld iscsi --op new --mode logicalunit --tid 1 --lun 3 --backing-store /tmp/c.img")
        let reused = try #require(h.fabric.latest?.targets.first?.lun(3))
        // The freed slot may be handed out again, but never with the old id.
        #expect(reused.statisticsID != before[1].statisticsID && reused.statisticsID != before[0].statisticsID)
    }

    @Test func slotsRunOutWithAPreciseError() {
        let slots = StatisticsSlots(capacity: 2)
        let a = slots.take(), b = slots.take()
        #expect(a != nil && b != nil && slots.take() == nil)
        slots.give(a!.slot)
        let c = slots.take()
        #expect(c?.slot == a!.slot && c!.id > b!.id)
    }
}

@Suite struct MetricsHTTPTests {
    static func answer(_ request: String) -> (status: String, head: String, body: String) {
        let bytes = MetricsHTTP.respond(to: Array(request.utf8), limit: 8192) { "ringtgt_x_total 1\n" }
        let text = String(decoding: bytes, as: UTF8.self)
        let parts = text.components(separatedBy: "\r\n\r\n")
        let status = String(parts[0].split(separator: "\r\n")[0])
        return (status, parts[0], parts.dropFirst().joined(separator: "\r\n\r\n"))
    }

    @Test func getMetricsAnswersThePageInPrometheusTextFormat() {
        let r = Self.answer("GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
        #expect(r.status == "HTTP/1.1 200 OK")
        #expect(r.head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"))
        #expect(r.head.contains("Content-Length: 18"))
        #expect(r.body == "ringtgt_x_total 1\n")
        #expect(Self.answer("GET /metrics?x=1 HTTP/1.0\n\n").status == "HTTP/1.1 200 OK")
        let head = Self.answer("HEAD /metrics HTTP/1.1\r\n\r\n")
        #expect(head.status == "HTTP/1.1 200 OK" && head.body == "")
    }

    @Test func anythingElseGetsTheStatusThatSaysWhy() {
        #expect(Self.answer("GET / HTTP/1.1\r\n\r\n").status == "HTTP/1.1 404 Not Found")
        let post = Self.answer("POST /metrics HTTP/1.1\r\n\r\n")
        #expect(post.status == "HTTP/1.1 405 Method Not Allowed" && post.head.contains("Allow: GET, HEAD"))
        #expect(Self.answer("hello\r\n\r\n").status == "HTTP/1.1 400 Bad Request")
        #expect(Self.answer("GET /metrics HTTP/1.1\r\n").status == "HTTP/1.1 400 Bad Request")
        let huge = "GET /metrics HTTP/1.1\r\nX: " + String(repeating: "a", count: 9000)
        #expect(Self.answer(huge).status == "HTTP/1.1 431 Request Header Fields Too Large")
    }
}
