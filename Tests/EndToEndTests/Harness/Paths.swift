// Where the harness finds the daemon, the admin tool, the package root and the place to leave results.
//
// The daemon and admin tool are products of this package. `swift build` (or `swift build -c release`)
// puts them beside the test bundle in `.build/<triple>/<config>`; RINGTGT_BIN_DIR overrides the search.

import Foundation

enum Paths {
    /// The package root: this file is Tests/EndToEndTests/Harness/Paths.swift.
    static let packageRoot: URL = {
        URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent()   // Harness
            .deletingLastPathComponent()   // EndToEndTests
            .deletingLastPathComponent()   // Tests
            .deletingLastPathComponent()
    }()

    /// The directory holding the running test executable (`ringtgtPackageTests.xctest` on Linux).
    static var testBundleDir: URL? {
        if let exe = Bundle.main.executableURL { return exe.deletingLastPathComponent() }
        return nil
    }

    /// Directories searched for ringtgtd/ringtgtadm, best first.
    static var binarySearchDirs: [URL] {
        var dirs: [URL] = []
        if let env = ProcessInfo.processInfo.environment["RINGTGT_BIN_DIR"], !env.isEmpty {
            return [URL(fileURLWithPath: env)]
        }
        if let bundle = testBundleDir { dirs.append(bundle) }
        let build = packageRoot.appendingPathComponent(".build")
        dirs.append(build.appendingPathComponent("debug"))
        dirs.append(build.appendingPathComponent("release"))
        return dirs
    }

    /// Finds a product of this package (ringtgtd, ringtgtadm).
    static func packageBinary(_ name: String) throws -> URL {
        let dirs = binarySearchDirs
        for dir in dirs {
            let candidate = dir.appendingPathComponent(name)
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        }
        throw E2EError("""
            \(name) was not found in \(dirs.map(\.path).joined(separator: ", ")). \
            Build it first with `swift build` (or `swift build -c release`), or point RINGTGT_BIN_DIR \
            at the directory that holds it.
            """)
    }

    /// Where tests leave results for people and CI to read (conformance counts, logs).
    static var resultsDir: URL {
        if let env = ProcessInfo.processInfo.environment["RINGTGT_E2E_RESULTS_DIR"], !env.isEmpty {
            return URL(fileURLWithPath: env)
        }
        return packageRoot.appendingPathComponent(".build/e2e-results")
    }
}

/// An external tool the tests drive (iscsi-ls, qemu-img, ...). A missing tool fails the test with the
/// package to install: CI installs them, so a silent pass would hide a broken CI image.
enum Tools {
    static let packageForTool: [String: String] = [
        "iscsi-ls": "libiscsi-bin", "iscsi-inq": "libiscsi-bin", "iscsi-readcapacity16": "libiscsi-bin",
        "iscsi-test-cu": "libiscsi-bin", "qemu-img": "qemu-utils", "qemu-io": "qemu-utils",
        "tgtd": "tgt", "tgtadm": "tgt", "nbdinfo": "libnbd-bin", "nbdcopy": "libnbd-bin", "fio": "fio",
    ]

    static func require(_ name: String) throws -> URL {
        if let found = findOnPath(name) { return found }
        let package = packageForTool[name].map { " (Debian package \($0))" } ?? ""
        throw E2EError("required tool \(name) is not on PATH\(package); install it: the end-to-end tests need it")
    }
}
