// `--op stat` in tgt's layout (usr/target.c tgt_stat_header/tgt_stat_line, usr/iscsi/target.c
// _stat_iscsi_conn_hdr/_stat_iscsi_conn), and the same numbers in the Prometheus text format (0.0.4).
// tgt keeps one line per I_T_L nexus that lives as long as its session; ringtgt keeps one line per LUN for
// the LUN's whole life (sid 0 = all sessions), so totals survive sessions and a script that sums tgt's lines
// per LUN gets the same answer.

/// One LUN's numbers, with where it sits.
public struct LUNStatLine: Equatable, Sendable {
    public var tid: Int
    public var targetName: String
    public var lun: UInt64
    public var statistics: LUNStatistics
}

public enum StatFormatter {
    /// The quantiles the latency table and the metrics report.
    public static let latencyQuantiles: [(label: String, q: Double)] = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99),
                                                                         ("p999", 0.999)]

    /// tgt's printf("%Nd"): right-aligned in at least `width` columns.
    static func pad(_ value: CustomStringConvertible, _ width: Int) -> String {
        let s = value.description
        return s.count >= width ? s : String(repeating: " ", count: width - s.count) + s
    }

    /// tgt_stat_header.
    public static let lunHeader = "tgt lun sid rd_subm(bytes,cmds) rd_done(bytes,cmds) wr_subm(bytes,cmds) "
        + "wr_done(bytes,cmds) errs\n"

    /// tgt_stat_line: "%3d %3d %3d %12d %6d %12d %6d %12d %6d %12d %6d %4d".
    static func lunLine(_ l: LUNStatLine) -> String {
        let c = l.statistics.counters
        return [pad(l.tid, 3), pad(l.lun, 3), pad(0, 3),
                pad(c.read.submittedBytes, 12), pad(c.read.submittedCommands, 6),
                pad(c.read.doneBytes, 12), pad(c.read.doneCommands, 6),
                pad(c.write.submittedBytes, 12), pad(c.write.submittedCommands, 6),
                pad(c.write.doneBytes, 12), pad(c.write.doneCommands, 6),
                pad(c.errors, 4)].joined(separator: " ") + "\n"
    }

    /// ringtgt's second table: every command (not only reads and writes), aborts, and latency in microseconds.
    public static let latencyHeader = "tgt lun cmds aborts lat_avg(us) "
        + latencyQuantiles.map { "lat_\($0.label)(us)" }.joined(separator: " ") + " lat_max(us)\n"

    static func micros(_ nanos: UInt64?) -> String {
        guard let nanos else { return "-" }
        let tenths = (nanos + 50) / 100
        return "\(tenths / 10).\(tenths % 10)"
    }

    static func latencyLine(_ l: LUNStatLine) -> String {
        let c = l.statistics.counters
        let avg = c.doneCommands == 0 ? nil : c.latencySumNanos / c.doneCommands
        var cols = [pad(l.tid, 3), pad(l.lun, 3), pad(c.doneCommands, 4), pad(c.aborts, 6), pad(micros(avg), 11)]
        for (label, q) in latencyQuantiles {
            cols.append(pad(micros(l.statistics.latencyQuantileNanos(q)), label.count + 8))
        }
        cols.append(pad(micros(c.doneCommands == 0 ? nil : c.latencyMaxNanos), 11))
        return cols.joined(separator: " ") + "\n"
    }

    /// `--op stat` of the system, a target or a LUN: tgt's table, then the latency table after a blank line.
    public static func luns(_ lines: [LUNStatLine]) -> String {
        var out = lunHeader
        for l in lines { out += lunLine(l) }
        out += "\n" + latencyHeader
        for l in lines { out += latencyLine(l) }
        return out
    }

    /// _stat_iscsi_conn_hdr, then ringtgt's columns.
    public static let connectionHeader = "sid cid rxdata_octets txdata_octets dataout_pdus datain_pdus cmd_pdus "
        + "rsp_pdus rd_cmds rd_bytes wr_cmds wr_bytes errs aborts\n"

    /// _stat_iscsi_conn: "%3d %3d %13d %13d %12d %11d %8d %8d", then ringtgt's columns.
    static func connectionLine(_ s: ConnectionStatistics) -> String {
        let c = s.counters
        return [pad(s.sid, 3), pad(s.cid, 3), pad(c.rxBytes, 13), pad(c.txBytes, 13), pad(c.dataOutPDUs, 12),
                pad(c.dataInPDUs, 11), pad(c.commandPDUs, 8), pad(c.responsePDUs, 8),
                pad(c.readCommands, 7), pad(c.readBytes, 8), pad(c.writeCommands, 7), pad(c.writeBytes, 8),
                pad(c.errors, 4), pad(c.aborts, 6)].joined(separator: " ") + "\n"
    }

    /// `--op stat --mode session|connection`.
    public static func connections(_ list: [ConnectionStatistics]) -> String {
        connectionHeader + list.sorted { ($0.sid, $0.cid) < ($1.sid, $1.cid) }.map(connectionLine).joined()
    }

    // MARK: - Prometheus

    /// Latency histogram bounds for the metrics: powers of two of nanoseconds, which are bucket boundaries of
    /// LatencyHistogram, so each is exact (a bound counts latencies below it; Prometheus' `le` means up to and
    /// including, a nanosecond's difference). 1.024 µs to 17.2 s, by factors of 4.
    public static let metricsLatencyExponents = Array(stride(from: 10, through: 34, by: 2))

    /// A label value with Prometheus' escapes (backslash, double quote, newline).
    static func escape(_ value: String) -> String {
        var out = ""
        for ch in value {
            switch ch {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(ch)
            }
        }
        return out
    }

    static func labels(_ pairs: [(String, String)]) -> String {
        "{" + pairs.map { "\($0.0)=\"\(escape($0.1))\"" }.joined(separator: ",") + "}"
    }

    static func seconds(_ nanos: UInt64) -> String { "\(Double(nanos) / 1e9)" }

    /// The metrics page: every LUN's and every connection's counters, and each LUN's latency histogram.
    public static func prometheus(luns: [LUNStatLine], connections: [ConnectionStatistics]) -> String {
        var out = ""
        func family(_ name: String, _ type: String, _ help: String) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
        }
        func lunLabels(_ l: LUNStatLine) -> [(String, String)] {
            [("target", l.targetName), ("tid", "\(l.tid)"), ("lun", "\(l.lun)")]
        }
        let lunCounters: [(String, String, (LUNCounters) -> UInt64)] = [
            ("ringtgt_lun_read_commands_total", "READ-direction commands completed (tgt rd_done cmds).",
             { $0.read.doneCommands }),
            ("ringtgt_lun_read_bytes_total", "Bytes read by completed commands (tgt rd_done bytes).",
             { $0.read.doneBytes }),
            ("ringtgt_lun_write_commands_total", "WRITE-direction commands completed (tgt wr_done cmds).",
             { $0.write.doneCommands }),
            ("ringtgt_lun_write_bytes_total", "Bytes written by completed commands (tgt wr_done bytes).",
             { $0.write.doneBytes }),
            ("ringtgt_lun_commands_total", "SCSI commands of any kind completed.", { $0.doneCommands }),
            ("ringtgt_lun_errors_total", "Commands that ended with a status other than GOOD (tgt errs).",
             { $0.errors }),
            ("ringtgt_lun_aborts_total", "Commands ended by task management.", { $0.aborts }),
        ]
        for (name, help, value) in lunCounters {
            family(name, "counter", help)
            for l in luns { out += "\(name)\(labels(lunLabels(l))) \(value(l.statistics.counters))\n" }
        }
        let h = "ringtgt_lun_latency_seconds"
        family(h, "histogram", "Time from a command's start to its status, per LUN.")
        for l in luns {
            let base = lunLabels(l)
            var cumulative: UInt64 = 0
            var next = 0
            for e in metricsLatencyExponents {
                let end = LatencyHistogram.bucket(nanos: 1 << UInt64(e))
                while next < end { cumulative &+= l.statistics.latencyBuckets[next]; next += 1 }
                out += "\(h)_bucket\(labels(base + [("le", seconds(1 << UInt64(e)))])) \(cumulative)\n"
            }
            out += "\(h)_bucket\(labels(base + [("le", "+Inf")])) \(l.statistics.counters.doneCommands)\n"
            out += "\(h)_sum\(labels(base)) \(seconds(l.statistics.counters.latencySumNanos))\n"
            out += "\(h)_count\(labels(base)) \(l.statistics.counters.doneCommands)\n"
        }
        let sorted = connections.sorted { ($0.tid, $0.sid, $0.cid) < ($1.tid, $1.sid, $1.cid) }
        let connectionCounters: [(String, String, (ConnectionCounters) -> UInt64)] = [
            ("ringtgt_connection_received_bytes_total", "Bytes received (tgt rxdata_octets).", { $0.rxBytes }),
            ("ringtgt_connection_sent_bytes_total", "Bytes sent (tgt txdata_octets).", { $0.txBytes }),
            ("ringtgt_connection_command_pdus_total", "SCSI Command PDUs received (tgt cmd_pdus).",
             { $0.commandPDUs }),
            ("ringtgt_connection_response_pdus_total", "SCSI Response PDUs sent (tgt rsp_pdus).",
             { $0.responsePDUs }),
            ("ringtgt_connection_data_out_pdus_total", "Data-Out PDUs received (tgt dataout_pdus).",
             { $0.dataOutPDUs }),
            ("ringtgt_connection_data_in_pdus_total", "Data-In PDUs sent (tgt datain_pdus).", { $0.dataInPDUs }),
            ("ringtgt_connection_read_commands_total", "READ-direction commands started.", { $0.readCommands }),
            ("ringtgt_connection_write_commands_total", "WRITE-direction commands started.", { $0.writeCommands }),
            ("ringtgt_connection_errors_total", "Commands answered with a status other than GOOD.", { $0.errors }),
            ("ringtgt_connection_aborts_total", "Commands ended by task management.", { $0.aborts }),
        ]
        for (name, help, value) in connectionCounters {
            family(name, "counter", help)
            for s in sorted {
                let l = labels([("target", s.targetName), ("tid", "\(s.tid)"), ("sid", "\(s.sid)"), ("cid", "\(s.cid)"),
                                ("iqn", s.initiatorName), ("address", s.peerAddress)])
                out += "\(name)\(l) \(value(s.counters))\n"
            }
        }
        return out
    }
}
