// Statistics end to end: `ringtgtadm --op stat` counts exactly the commands an initiator sent, per LUN and per
// connection, and the Prometheus endpoint (`--metrics portal=`) answers the same numbers in the text format.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Limits of the statistics tests.
enum StatisticsLimits {
    /// How long one HTTP exchange with the metrics endpoint may take.
    static let httpTimeoutSeconds = 10
    /// Largest metrics page the test reads.
    static let maxPageBytes = 4 << 20
}

/// `tgt lun sid rd_subm(bytes,cmds) rd_done(bytes,cmds) wr_subm(bytes,cmds) wr_done(bytes,cmds) errs` of a LUN.
struct StatLUNLine: Equatable {
    var readSubmittedBytes = 0, readSubmittedCommands = 0, readDoneBytes = 0, readDoneCommands = 0
    var writeSubmittedBytes = 0, writeSubmittedCommands = 0, writeDoneBytes = 0, writeDoneCommands = 0
    var errors = 0

    /// The line of `lun` in an `--op stat` answer (the first table).
    static func parse(_ text: String, tid: Int, lun: Int) throws -> StatLUNLine {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        guard lines.first?.hasPrefix("tgt lun sid rd_subm(bytes,cmds)") == true else {
            throw E2EError("not tgt's stat header:\n\(text)")
        }
        for line in lines.dropFirst() {
            if line.isEmpty { break }
            let f = line.split(separator: " ").compactMap { Int($0) }
            guard f.count == 12 else { throw E2EError("stat line with \(f.count) numbers: \(line)") }
            if f[0] == tid && f[1] == lun {
                return StatLUNLine(readSubmittedBytes: f[3], readSubmittedCommands: f[4], readDoneBytes: f[5],
                                   readDoneCommands: f[6], writeSubmittedBytes: f[7], writeSubmittedCommands: f[8],
                                   writeDoneBytes: f[9], writeDoneCommands: f[10], errors: f[11])
            }
        }
        throw E2EError("no stat line for tid \(tid) LUN \(lun):\n\(text)")
    }
}

/// The one connection line of `--op stat --mode conn`, by column name.
func statConnectionLine(_ text: String) throws -> [String: Int] {
    let lines = text.split(separator: "\n")
    guard lines.count == 2, lines[0].hasPrefix("sid cid rxdata_octets txdata_octets dataout_pdus datain_pdus") else {
        throw E2EError("expected a header and one connection:\n\(text)")
    }
    let names = lines[0].split(separator: " ").map(String.init)
    let values = lines[1].split(separator: " ").compactMap { Int($0) }
    guard names.count == values.count else { throw E2EError("columns do not match the header:\n\(text)") }
    return Dictionary(uniqueKeysWithValues: zip(names, values))
}

/// GET `path` from 127.0.0.1:`port` over HTTP/1.1; the status line and the body.
func httpGet(port: Int, path: String) throws -> (status: String, head: String, body: String) {
    try httpGet(Endpoint(host: "127.0.0.1", port: port, portalGroupTag: 1), path: path,
                timeoutSeconds: Double(StatisticsLimits.httpTimeoutSeconds), maxBytes: StatisticsLimits.maxPageBytes)
}

/// The samples of a Prometheus text page, keyed by `name{labels}`; records an issue for every line that is
/// neither a `# HELP`/`# TYPE` comment nor a valid sample.
func prometheusSamples(_ page: String) -> [String: Double] {
    let sample = try! NSRegularExpression(pattern:
        #"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*"(,[a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*")*\})? (\S+)$"#)
    var out: [String: Double] = [:]
    for line in page.split(separator: "\n").map(String.init) {
        if line.hasPrefix("# HELP ") || line.hasPrefix("# TYPE ") { continue }
        guard sample.firstMatch(in: line, range: NSRange(line.startIndex..., in: line)) != nil,
              let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else {
            Issue.record("not a Prometheus sample line: \(line)")
            continue
        }
        out[String(line[..<space])] = value
    }
    return out
}

extension EndToEnd {
    @Suite("Statistics")
    struct Statistics {
        static let reads = 37
        static let readBytes = 4096
        static let writes = 23
        static let writeBytes = 16384

        @Test func statCountsWhatTheInitiatorSentAndTheMetricsEndpointAgrees() throws {
            try withTarget(daemonOptions: ["--metrics", "portal=127.0.0.1:0"],
                           luns: [.file(bytes: 16 * mebibyte)]) { t in
                // The ready line names the port the kernel chose for the metrics endpoint.
                let metricsPort = try t.daemon.readyLinePort("metrics")

                let s = try RawSession(t.endpoint, target: t.iqn, options: RawLoginOptions(
                    initiatorName: "\(RunningTarget.iqnPrefix):stats"))
                // Login cleared the power-on unit attention with TEST UNIT READY: no reads or writes so far.
                let lunBefore = try StatLUNLine.parse(
                    try t.admin.must(["--lld", "iscsi", "--op", "stat", "--mode", "target", "--tid", "1"]).stdout, tid: 1, lun: 1)
                #expect(lunBefore.readSubmittedCommands == 0 && lunBefore.writeSubmittedCommands == 0)
                let connBefore = try statConnectionLine(
                    try t.admin.must(["--lld", "iscsi", "--op", "stat", "--mode", "conn", "--tid", "1"]).stdout)

                for i in 0..<Self.writes {
                    let r = try s.run(RawCDB.write10(lba: UInt32(i * 32), blocks: UInt16(Self.writeBytes / 512)),
                                      writeData: patternBytes(Self.writeBytes, seed: UInt64(i)))
                    #expect(r.status == RawCodes.good, "write \(i): \(r)")
                }
                for i in 0..<Self.reads {
                    let r = try s.run(RawCDB.read10(lba: UInt32(i * 8), blocks: UInt16(Self.readBytes / 512)),
                                      read: true, edtl: Self.readBytes)
                    #expect(r.status == RawCodes.good, "read \(i): \(r)")
                }
                // An opcode no SCSI disk has: CHECK CONDITION, INVALID COMMAND OPERATION CODE, counted as an error.
                let bad = try s.run([0xFF] + [UInt8](repeating: 0, count: 9))
                #expect(bad.status == RawCodes.checkCondition, "\(bad)")

                let target = try t.admin.must(["--lld", "iscsi", "--op", "stat", "--mode", "target", "--tid", "1"]).stdout
                let lun = try StatLUNLine.parse(target, tid: 1, lun: 1)
                #expect(lun == StatLUNLine(
                    readSubmittedBytes: Self.reads * Self.readBytes, readSubmittedCommands: Self.reads,
                    readDoneBytes: Self.reads * Self.readBytes, readDoneCommands: Self.reads,
                    writeSubmittedBytes: Self.writes * Self.writeBytes, writeSubmittedCommands: Self.writes,
                    writeDoneBytes: Self.writes * Self.writeBytes, writeDoneCommands: Self.writes,
                    errors: lunBefore.errors + 1), "\(target)")
                // The same line for the system and for the LUN alone; and latency for every command.
                let system = try t.admin.must(["--lld", "iscsi", "--op", "stat", "--mode", "system"]).stdout
                #expect(try StatLUNLine.parse(system, tid: 1, lun: 1) == lun)
                let one = try t.admin.must(["--lld", "iscsi", "--op", "stat", "--mode", "logicalunit", "--tid", "1", "--lun", "1"])
                #expect(try StatLUNLine.parse(one.stdout, tid: 1, lun: 1) == lun)
                let latency = target.split(separator: "\n").drop { !$0.hasPrefix("tgt lun cmds aborts") }.dropFirst().first
                let lat = latency.map { $0.split(separator: " ").map(String.init) } ?? []
                #expect(lat.count == 10 && lat[0] == "1" && lat[1] == "1", "\(target)")
                if lat.count == 10 {
                    #expect(Int(lat[2])! >= Self.reads + Self.writes + 1 && lat[3] == "0")
                    #expect(lat[4...].allSatisfy { Double($0) != nil }, "every latency column is a number: \(lat)")
                }

                let conn = try statConnectionLine(
                    try t.admin.must(["--lld", "iscsi", "--op", "stat", "--mode", "conn", "--tid", "1"]).stdout)
                func delta(_ name: String) -> Int { (conn[name] ?? -1) - (connBefore[name] ?? 0) }
                #expect(delta("cmd_pdus") == Self.reads + Self.writes + 1)
                #expect(delta("rd_cmds") == Self.reads && delta("rd_bytes") == Self.reads * Self.readBytes)
                #expect(delta("wr_cmds") == Self.writes && delta("wr_bytes") == Self.writes * Self.writeBytes)
                #expect(delta("errs") == 1 && delta("aborts") == 0)
                #expect(delta("datain_pdus") >= Self.reads)
                #expect(delta("rxdata_octets") >= Self.writes * Self.writeBytes)
                #expect(delta("txdata_octets") >= Self.reads * Self.readBytes)
                // The session by its TSIH, as tgt selects it; an unknown one is tgt's error.
                let sid = conn["sid"]!
                let bySession = try t.admin.must(["--lld", "iscsi", "--op", "stat", "--mode", "session", "--tid", "1",
                                                  "--sid", "\(sid)"]).stdout
                #expect(try statConnectionLine(bySession)["cmd_pdus"] == conn["cmd_pdus"])
                let missing = try t.admin.run(["--lld", "iscsi", "--op", "stat", "--mode", "session", "--tid", "1",
                                               "--sid", "\(sid + 1)"])
                #expect(!missing.succeeded && missing.stderr.contains("can't find the session"), "\(missing)")

                // The metrics endpoint: the standard text format, the same counters.
                let (status, head, page) = try httpGet(port: metricsPort, path: "/metrics")
                #expect(status == "HTTP/1.1 200 OK")
                #expect(head.contains("Content-Type: text/plain; version=0.0.4"))
                let m = prometheusSamples(page)
                let l = "{target=\"\(t.iqn)\",tid=\"1\",lun=\"1\"}"
                #expect(m["ringtgt_lun_read_commands_total\(l)"] == Double(lun.readDoneCommands))
                #expect(m["ringtgt_lun_read_bytes_total\(l)"] == Double(lun.readDoneBytes))
                #expect(m["ringtgt_lun_write_commands_total\(l)"] == Double(lun.writeDoneCommands))
                #expect(m["ringtgt_lun_write_bytes_total\(l)"] == Double(lun.writeDoneBytes))
                #expect(m["ringtgt_lun_errors_total\(l)"] == Double(lun.errors))
                #expect(m["ringtgt_lun_latency_seconds_count\(l)"] == Double(lat.count == 10 ? Int(lat[2])! : -1))
                #expect(m["ringtgt_lun_latency_seconds_bucket{target=\"\(t.iqn)\",tid=\"1\",lun=\"1\",le=\"+Inf\"}"]
                        == m["ringtgt_lun_latency_seconds_count\(l)"])
                let c = m.first { $0.key.hasPrefix("ringtgt_connection_command_pdus_total{") && $0.key.contains("sid=\"\(sid)\"") }
                #expect(c?.value == Double(conn["cmd_pdus"]!), "\(page)")
                #expect(c?.key.contains("iqn=\"\(RunningTarget.iqnPrefix):stats\"") == true)
                #expect(try httpGet(port: metricsPort, path: "/other").status == "HTTP/1.1 404 Not Found")
                try t.requireAlive("after the stat and metrics requests")
            }
        }
    }
}
