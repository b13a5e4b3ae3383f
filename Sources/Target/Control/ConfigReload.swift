// The daemon's side of targets.conf: at start-up it adds the file's targets (tgt-admin -e); on SIGHUP
// (`systemctl reload`, ExecReload=) it applies the difference (tgt-admin --update ALL). Both log every
// change, or every error with its line and change nothing.

import Logging

public enum ConfigReload {
    /// Start-up. A missing file is not fatal: the daemon starts with no targets and says so.
    public static func start(path: String, registry: Registry, logger: Logger) throws {
        let parsed: ConfigFile.Parsed
        do {
            parsed = try ConfigFile.parse(path: path)
        } catch is ConfigFile.Missing {
            logger.warning("\(path) does not exist: starting with no targets")
            return
        }
        let report = ConfigUpdate.run(parsed, mode: .execute, force: false, executor: registry.execute)
        log(report, path: path, logger: logger)
        if !report.errors.isEmpty && !parsed.configuration.ignoreErrors { throw NotApplied(errorCount: report.errors.count) }
    }

    /// The start-up file had errors; each was logged with its line.
    public struct NotApplied: Error, CustomStringConvertible {
        public var errorCount: Int
        public var description: String { "\(errorCount) error(s), each logged above with its line" }
    }

    /// SIGHUP. Never throws: a file with errors, or a missing one, changes nothing.
    /// `notify`: the service manager (sd_notify(3)), told RELOADING=1 while the file is applied and READY=1
    /// once it is, whatever the outcome: the daemon serves on either way.
    public static func reload(path: String?, registry: Registry, logger: Logger,
                              notify: (String) -> Void = { SystemdNotify.send($0) }) {
        guard let path else {
            logger.warning("reload: ringtgtd was started without --config; nothing to reload")
            return
        }
        notify("RELOADING=1")
        defer { notify("READY=1\nSTATUS=serving") }
        let parsed: ConfigFile.Parsed
        do {
            parsed = try ConfigFile.parse(path: path)
        } catch {
            logger.error("reload: \(error); nothing was changed")
            return
        }
        let report = ConfigUpdate.run(parsed, mode: .update(.all), force: false, executor: registry.execute)
        log(report, path: path, logger: logger)
    }

    static func log(_ report: ConfigUpdate.Report, path: String, logger: Logger) {
        for w in report.warnings { logger.warning("\(w)") }
        for e in report.errors { logger.error("\(e)") }
        for n in report.notes { logger.notice("\(path): \(n)") }
        for c in report.changes { logger.info("\(path): \(c)") }
        if !report.errors.isEmpty && !report.applied {
            logger.error("\(path): \(report.errors.count) error(s): nothing was changed")
        } else if report.changes.isEmpty {
            logger.info("\(path): no change")
        }
    }
}
