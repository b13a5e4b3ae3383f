// Packaging: -V/--version and shell completion of both programs, and the release binaries of
// scripts/build-release (static Swift runtime, stripped) serving where no Swift toolchain is: a mount
// namespace with the toolchain's folder covered by an empty tmpfs.

import Foundation
import Target
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension EndToEnd {
    @Suite("packaging")
    struct Packaging {
        /// Any one run of a program that prints and exits (version, completion script).
        static let toolTimeoutSeconds = 30.0

        @Test func versionIsJustTheVersion() throws {
            try withScratch { scratch in
                for program in ["ringtgtd", "ringtgtadm", "ringtgt-admin"] {
                    for flag in ["-V", "--version"] {
                        let r = try runTool(try Paths.packageBinary(program), [flag], logDir: scratch.url,
                                            timeoutSeconds: Self.toolTimeoutSeconds)
                        #expect(r.succeeded && r.stdout == "\(RingtgtVersion.string)\n" && r.stderr.isEmpty, "\(r)")
                    }
                }
            }
        }

        @Test(arguments: ["bash", "zsh", "fish"])
        func completionScriptsForBothPrograms(shell: String) throws {
            try withScratch { scratch in
                // Options only that program has (fish names them without dashes), and (ringtgtadm) a value
                // offered for --mode.
                let expected = ["ringtgtd": ["control-socket", "max-connections"],
                                "ringtgtadm": ["backing-store", "logicalunit"],
                                "ringtgt-admin": ["ignore-errors", "control-socket"]]
                for (program, words) in expected {
                    let r = try runTool(try Paths.packageBinary(program), ["--generate-completion-script", shell],
                                        logDir: scratch.url, timeoutSeconds: Self.toolTimeoutSeconds)
                    #expect(r.succeeded, "\(r)")
                    for word in words + [program] {
                        #expect(r.stdout.contains(word), "\(program)'s \(shell) completion lacks \(word)")
                    }
                    guard shell == "bash" else { continue }
                    let script = scratch.path("\(program).bash")
                    try r.stdout.write(to: script, atomically: true, encoding: .utf8)
                    let syntax = try runTool(try Tools.require("bash"), ["-n", script.path], logDir: scratch.url,
                                             timeoutSeconds: Self.toolTimeoutSeconds)
                    #expect(syntax.succeeded, "\(syntax)")
                }
            }
        }

        /// Every option in a program's --help is in its man page (dist/man), so the pages keep up.
        @Test func manPagesNameEveryOption() throws {
            let option = try Regex("--[a-z][a-z-]+")
            try withScratch { scratch in
                for program in ["ringtgtd", "ringtgtadm", "ringtgt-admin"] {
                    let help = try runTool(try Paths.packageBinary(program), ["--help"], logDir: scratch.url,
                                           timeoutSeconds: Self.toolTimeoutSeconds)
                    #expect(help.succeeded, "\(help)")
                    let names = Set(help.stdout.matches(of: option).map { String(help.stdout[$0.range]) })
                    #expect(names.count > 5, "\(program) --help: \(help.stdout)")
                    let page = try String(contentsOf: Paths.packageRoot.appendingPathComponent("dist/man/\(program).8"),
                                          encoding: .utf8).replacingOccurrences(of: "\\-", with: "-")
                    for name in names.sorted() {
                        #expect(page.contains(name), "\(program).8 does not mention \(name)")
                    }
                }
            }
        }

        /// seccomp-allow-io_uring adds one unconditional rule for the three io_uring calls to a Docker-format
        /// profile, takes them out of a rule that denied them, and changes nothing else.
        @Test func seccompProfileGainsIoUringAndNothingElse() throws {
            let ioUring = ["io_uring_setup", "io_uring_enter", "io_uring_register"]
            let sample: [String: Any] = [
                "defaultAction": "SCMP_ACT_ERRNO",
                "archMap": [["architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]]],
                "syscalls": [["names": ["read", "write", "socket"], "action": "SCMP_ACT_ALLOW"],
                             ["names": ["io_uring_setup", "kexec_load"], "action": "SCMP_ACT_ERRNO"]],
            ]
            let scratch = try Scratch()
            defer { scratch.remove() }
            let input = scratch.path("default.json")
            try JSONSerialization.data(withJSONObject: sample).write(to: input)
            let script = Paths.packageRoot.appendingPathComponent("dist/container/seccomp-allow-io_uring")
            let r = try runTool(script, [input.path], logDir: scratch.url, timeoutSeconds: Self.toolTimeoutSeconds)
            try #require(r.succeeded, "\(r)")
            let out = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
            #expect(out["defaultAction"] as? String == "SCMP_ACT_ERRNO")
            let rules = out["syscalls"] as? [[String: Any]] ?? []
            let names = rules.map { ($0["names"] as? [String] ?? [], $0["action"] as? String ?? "") }
            #expect(names.count == 3, "\(names)")
            #expect(names.first?.0 == ["read", "write", "socket"] && names.first?.1 == "SCMP_ACT_ALLOW")
            #expect(names.dropFirst().first?.0 == ["kexec_load"], "a denied call other than io_uring changed: \(names)")
            #expect(names.last?.0 == ioUring && names.last?.1 == "SCMP_ACT_ALLOW" && rules.last?["args"] == nil)
            // The kernel's x86_64 table (linux-libc-dev), where installed: the names are real system calls.
            let table = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"
            if let header = try? String(contentsOfFile: table, encoding: .utf8) {
                for name in ioUring { #expect(header.contains("#define __NR_\(name) "), "\(name) is not in \(table)") }
            }
            let bad = try runTool(script, [scratch.path("missing.json").path], logDir: scratch.url,
                                  timeoutSeconds: Self.toolTimeoutSeconds)
            #expect(!bad.succeeded)
        }

        /// Where scripts/build-release leaves the stripped binaries (RINGTGT_RELEASE_DIR overrides).
        static var releaseDir: URL {
            if let env = ProcessInfo.processInfo.environment["RINGTGT_RELEASE_DIR"], !env.isEmpty {
                return URL(fileURLWithPath: env)
            }
            return Paths.packageRoot.appendingPathComponent(".build/dist")
        }

        static var releaseBuilt: Bool {
            ["ringtgtd", "ringtgtadm"].allSatisfy {
                FileManager.default.isExecutableFile(atPath: releaseDir.appendingPathComponent($0).path)
            }
        }

        /// The toolchain the debug build runs from: the folder above usr/bin/swift (/opt/swift on Debian
        /// installs from swift.org). nil when swift is not found there, or sits in /usr itself.
        static var toolchainDir: String? {
            let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
            for dir in path.split(separator: ":").map(String.init) + ["/opt/swift/usr/bin"] {
                // The folder, not the file: usr/bin/swift is a link to swift-driver.
                let bin = URL(fileURLWithPath: dir).resolvingSymlinksInPath().path
                guard FileManager.default.isExecutableFile(atPath: bin + "/swift"), bin.hasSuffix("/usr/bin") else {
                    continue
                }
                let root = String(bin.dropLast("/usr/bin".count))
                return root.isEmpty ? nil : root
            }
            return nil
        }

        @Test(.enabled(if: releaseBuilt, "no release binaries in .build/dist: run scripts/build-release first"),
              .enabled(if: getuid() == 0, "a mount namespace (unshare -m) needs root"),
              .enabled(if: toolchainDir != nil, "no Swift toolchain folder found to hide"))
        func releaseBinariesServeWithTheToolchainHidden() throws {
            let hidden = try #require(Self.toolchainDir)
            let unshare = try Tools.require("unshare")
            // A private mount namespace (unshare's default propagation), so the host never sees the tmpfs.
            let wrapper = [unshare.path, "-m", "sh", "-c", "mount -t tmpfs none \"$0\" && exec \"$@\"", hidden]
            try withScratch { scratch in
                func hiddenRun(_ binary: URL, _ args: [String]) throws -> ToolResult {
                    try runTool(unshare, Array(wrapper.dropFirst()) + [binary.path] + args, logDir: scratch.url,
                                timeoutSeconds: Self.toolTimeoutSeconds)
                }
                // The control: the debug build loads libswiftCore.so from the toolchain, so it must not start
                // here; if it did, the mount hid nothing and the rest would prove nothing.
                let debug = try hiddenRun(try Paths.packageBinary("ringtgtd"), ["--version"])
                #expect(!debug.succeeded && debug.stderr.contains("libswift"), "\(debug)")

                for program in ["ringtgtd", "ringtgtadm"] {
                    let r = try hiddenRun(Self.releaseDir.appendingPathComponent(program), ["--version"])
                    #expect(r.succeeded && r.stdout == "\(RingtgtVersion.string)\n", "\(r)")
                }
            }
            // A real start: both programs in such namespaces, the initiator outside.
            let scratch = try Scratch()
            defer { scratch.remove() }
            let daemon = try TargetDaemon(peer: .ringtgt, cores: 1, portals: [.ipv4Loopback], scratch: scratch,
                                          launcher: RingtgtLauncher(binDir: Self.releaseDir, wrapper: wrapper))
            defer { daemon.stop() }
            let iqn = "\(RunningTarget.iqnPrefix):release"
            try daemon.admin.newTarget(tid: 1, name: iqn)
            try daemon.admin.newNullLUN(tid: 1, lun: 1, bytes: 64 * mebibyte, peer: .ringtgt)
            try daemon.admin.bind(tid: 1)
            let inq = try runTool(try Tools.require("iscsi-inq"), ["\(daemon.endpoints[0].portalURL)/\(iqn)/1"],
                                  logDir: scratch.url, timeoutSeconds: Self.toolTimeoutSeconds)
            #expect(inq.succeeded && inq.stdout.contains("Peripheral Device Type:DIRECT_ACCESS"), "\(inq)")
        }
    }
}
