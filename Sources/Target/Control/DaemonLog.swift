// Where ringtgtd's log lines go, and in what form. In the foreground on a terminal or in a file: a
// timestamped line on stderr. Under journald (a systemd unit's stderr is the journal): no timestamp of our
// own (the journal stamps each line) and the sd-daemon "<N>" prefix, so `journalctl -p warning` sees our
// priorities. Detached, like tgtd: syslog(3), facility daemon.
// None of this is on the I/O path: the cores log connection events and faults, never per command.

#if canImport(Glibc)
import Glibc
#endif
import Logging

public enum LogSink: Equatable, Sendable {
    case stderr
    case journal
    case syslog
}

public enum DaemonLogFormat {
    /// systemd sets JOURNAL_STREAM to "DEVICE:INODE" of the stream it connected stdout/stderr to; stderr
    /// is the journal only when its fstat() matches (a child may inherit the variable with stderr
    /// redirected elsewhere; systemd.exec(5), "$JOURNAL_STREAM").
    public static func stderrIsJournal(journalStream: String?, stderrDevice: UInt64, stderrInode: UInt64) -> Bool {
        guard let value = journalStream else { return false }
        let parts = value.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let dev = UInt64(parts[0]), let ino = UInt64(parts[1]) else { return false }
        return dev == stderrDevice && ino == stderrInode
    }

    /// The sink for this process's stderr: the journal when JOURNAL_STREAM names it, else plain stderr.
    public static func foregroundSink() -> LogSink {
        var st = stat()
        guard fstat(STDERR_FILENO, &st) == 0 else { return .stderr }
        let env = getenv("JOURNAL_STREAM").map { String(cString: $0) }
        return stderrIsJournal(journalStream: env, stderrDevice: UInt64(st.st_dev), stderrInode: UInt64(st.st_ino))
            ? .journal : .stderr
    }

    /// syslog(3) priorities, which are also sd-daemon(3)'s "<N>" prefixes.
    public static func priority(_ level: Logger.Level) -> Int32 {
        switch level {
        case .critical: return LOG_CRIT
        case .error: return LOG_ERR
        case .warning: return LOG_WARNING
        case .notice: return LOG_NOTICE
        case .info: return LOG_INFO
        case .debug, .trace: return LOG_DEBUG
        }
    }

    /// " k=v k2=v2", sorted so that lines compare; "" without metadata.
    static func metadataText(_ metadata: Logger.Metadata) -> String {
        metadata.isEmpty ? "" : " " + metadata.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
    }

    /// One line for `sink` (syslog stamps and prefixes lines itself, so it gets the bare text).
    public static func line(_ sink: LogSink, level: Logger.Level, message: String, metadata: Logger.Metadata = [:],
                            timestamp: () -> String = DaemonLogFormat.timestamp) -> String {
        let text = message + metadataText(metadata)
        switch sink {
        case .journal: return "<\(priority(level))>\(text)\n"
        case .syslog: return text
        case .stderr: return "\(timestamp()) \(level) ringtgtd: \(text)\n"
        }
    }

    /// Local time to the second, ISO 8601, as StreamLogHandler writes it.
    public static func timestamp() -> String {
        var now = time(nil)
        var parts = tm()
        localtime_r(&now, &parts)
        var buffer = [Int8](repeating: 0, count: 32)
        let n = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%S%z", &parts)
        return String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// swift-log's handler for ringtgtd: one write(2) per line, so lines from several cores never interleave.
public struct DaemonLogHandler: LogHandler {
    public let sink: LogSink
    public var logLevel: Logger.Level = .info
    public var metadata = Logger.Metadata()
    public var metadataProvider: Logger.MetadataProvider?

    public init(sink: LogSink) { self.sink = sink }

    /// openlog(3) keeps the pointer, so the identity must outlive every call.
    private static let syslogIdentity = strdup("ringtgtd")

    /// Syslog identity, as tgtd's log_init(program_name, ...) opens it.
    public static func openSyslog() { openlog(syslogIdentity, LOG_PID | LOG_NDELAY, LOG_DAEMON) }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var all = metadata
        if let extra = event.metadata { all.merge(extra) { $1 } }
        let text = DaemonLogFormat.line(sink, level: event.level, message: "\(event.message)", metadata: all)
        switch sink {
        case .syslog:
            text.withCString { c in withVaList([c]) { vsyslog(DaemonLogFormat.priority(event.level), "%s", $0) } }
        case .stderr, .journal:
            let bytes = Array(text.utf8)
            var offset = 0
            while offset < bytes.count {
                let n = bytes.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress! + offset, $0.count - offset) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return }   // nowhere to log to: never block or crash over it
                offset += n
            }
        }
    }
}
