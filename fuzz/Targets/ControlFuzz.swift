// The control plane's text inputs: targets.conf (Control/ConfigFile.swift) and the tgtadm command line
// (Control/TgtadmCommandLine.swift), each carried out against a dry-run registry (no cores, no stores). What
// the registry then holds is dumped as targets.conf; loading the dump elsewhere and dumping again gives the
// same text, so a configuration survives `ringtgt-admin --dump` and a reload.

// The machines' internals are reachable only where Target is built for testing: debug, and fuzz/run's build.
#if DEBUG || FUZZING
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor
import Foundation

enum ControlRoundTrip {
    /// The dry-run opener refuses the store types the daemon's opener refuses (paths are not checked): with
    /// `ignore-errors yes` a configuration goes on past a LUN the daemon could not open, and that LUN must not
    /// exist afterwards here either.
    static func registry() -> Registry {
        let opener = DryRunOpener()
        opener.checksStores = true
        return Registry(fabric: DryRunFabric(), opener: opener)
    }

    static func dump(_ r: Registry) -> String {
        r.execute(AdminRequest(mode: .system, op: .show, name: Registry.configDumpName)).stdout
    }

    /// The registry's state, dumped, loads without an error into a fresh registry that dumps the same text.
    static func check(_ r: Registry, _ what: String) {
        let first = dump(r)
        let parsed = ConfigFile.parse(first)
        FuzzCheck.expect(parsed.errors.isEmpty, "\(what): the dump does not parse: \(parsed.errors)\n\(first)")
        let again = registry()
        do { _ = try ConfigFile.apply(parsed, to: again) } catch {
            FuzzCheck.expect(false, "\(what): the dump does not load: \(error)\n\(first)")
            return
        }
        let second = dump(again)
        FuzzCheck.expect(first == second, "\(what): dump, load, dump differs:\n\(first)\n---\n\(second)")
    }

    /// `include` lines would read this machine's files; the fuzzer's text never names one.
    static func withoutIncludes(_ bytes: [UInt8]) -> String {
        var b = bytes
        let word = Array("include".utf8)
        if b.count >= word.count {
            for i in 0 ... b.count - word.count where (0 ..< word.count).allSatisfy({ b[i + $0] | 0x20 == word[$0] }) {
                b[i] = UInt8(ascii: "x")
            }
        }
        return String(decoding: b, as: UTF8.self)
    }
}

enum ConfigFuzz {
    static func run(_ raw: UnsafeRawBufferPointer) {
        var input = FuzzInput(raw)
        let text = ControlRoundTrip.withoutIncludes(input.rest())
        let parsed = ConfigFile.parse(text, file: "fuzz.conf", directory: "/nonexistent")
        for line in text.split(separator: "\n").prefix(64) {
            // The --nbd-export option and the sheepdog backing spec are text parsers of their own.
            _ = try? NBDExportOption.parse(String(line))
            _ = try? NBDExportOption.sheepdogSpec(String(line))
        }
        let r = ControlRoundTrip.registry()
        do { _ = try ConfigFile.apply(parsed, to: r) } catch { return }
        ControlRoundTrip.check(r, "config")
    }
}

enum TgtadmFuzz {
    static let maxCommands = 32

    /// Input: command lines separated by newlines, arguments by spaces (tgtadm's argv, as a shell splits it).
    static func run(_ raw: UnsafeRawBufferPointer) {
        var input = FuzzInput(raw)
        let text = String(decoding: input.rest(), as: UTF8.self)
        let r = ControlRoundTrip.registry()
        var executed = 0
        for line in text.split(separator: "\n", omittingEmptySubsequences: true).prefix(maxCommands) {
            let args = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            switch TgtadmCommandLine.parse(args, environment: [:]) {
            case .send(let request, socketPath: let socket):
                FuzzCheck.expect(!socket.isEmpty, "no control socket for \(args)")
                let response = r.execute(request)
                FuzzCheck.expect(response.exitCode == 0 || !response.stderr.isEmpty,
                                 "\(args) failed with \(response.exitCode) and said nothing")
                executed += 1
            case .print(let out):
                FuzzCheck.expect(!out.isEmpty, "\(args) printed nothing")
            case .usageError(let message, exitCode: let code):
                FuzzCheck.expect(code != 0 && !message.isEmpty, "usage error \(code) '\(message)' for \(args)")
            }
        }
        if executed > 0 { ControlRoundTrip.check(r, "tgtadm") }
    }
}
#endif
