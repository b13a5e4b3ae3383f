// swift-tools-version:6.0
import PackageDescription

// Target's settings, shared by the modules below it that its I/O path runs through.
let ioPathSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v5),
    // Exclusivity is checked at run time in debug builds (the tests); release builds of the I/O
    // path skip the per-access runtime check.
    // Cross-module optimization: the layers below Target (Store) are separate modules (issue 9), and the
    // I/O path runs through them; their bodies are serialized so the optimizer inlines and specializes them
    // across the boundary as it did inside one module (the instruction gate judges it).
    .unsafeFlags(["-enforce-exclusivity=unchecked", "-cross-module-optimization"], .when(configuration: .release)),
]

let package = Package(
    name: "ringtgt",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "ringtgtd", targets: ["ringtgtd"]),
        .executable(name: "ringtgtadm", targets: ["ringtgtadm"]),
        .executable(name: "ringtgt-admin", targets: ["ringtgt-admin"]),
        .library(name: "Target", targets: ["Target"]),
        .library(name: "SheepProtocol", targets: ["SheepProtocol"]),
        .library(name: "ISCSIWire", targets: ["ISCSIWire"]),
        .executable(name: "ringtgt-sheep-testserver", targets: ["SheepTestServer"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        // MD5 for CHAP (login only).
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
    ],
    targets: [
        // liburing through a module map and a header-only shim (pkg-config liburing, Debian liburing-dev).
        .systemLibrary(name: "CURing", pkgConfig: "liburing", providers: [.apt(["liburing-dev"])]),
        // The SSE4.2 CRC32C instruction, header-only (links nothing): ISCSIWire's one C piece.
        .systemLibrary(name: "CCRC32C"),
        // The iSCSI wire vocabulary (RFC 7143 §11): BHS view, codes, serial numbers, CRC32C, framing and PDU
        // builders for both directions, for the target, the load generator and the test initiators. No package
        // dependencies. Everything a PDU goes through is @inlinable, so it inlines across this boundary.
        .target(name: "ISCSIWire", dependencies: ["CCRC32C"], swiftSettings: [.swiftLanguageMode(.v5)]),
        // The one seeded PRNG (SplitMix64), below URing (the simulated ring) and TestSupport. No dependencies.
        .target(name: "DeterministicRandom", swiftSettings: [.swiftLanguageMode(.v5)]),
        // The floor below the layers (issue 9): the value types and primitives every layer shares: store operations
        // and results, user_data layouts, errno tables, the lock, the clock, the rate-limited log line, iovecs, ACLs,
        // CHAP accounts, statistics. No dependencies; what the I/O path calls is @inlinable. Target re-exports it
        // (Sources/Target/Exports.swift).
        .target(name: "Floor", swiftSettings: ioPathSettings),
        // io_uring for the reactor, the file store and the load generator: `Ring` over liburing, and the seeded
        // simulated ring it can stand on (tests). Submission and completion are @inlinable. Target re-exports it.
        .target(name: "URing", dependencies: ["CURing", "DeterministicRandom"], swiftSettings: ioPathSettings),
        // The store layer (issue 9), below SCSI: `Backing`, the null, file and sheepdog stores, and the SCSI values
        // the sheep record carries. It knows the LU only through `SharedSCSIStateHolder`. Target re-exports it.
        // Its API is public, not package, so that -cross-module-optimization serializes it and Target specializes
        // SheepStore<Reactor> (docs/DESIGN.md, Modules); it is no product.
        .target(
            name: "Store",
            dependencies: [
                "CURing",
                "Floor",
                "SheepProtocol",
                "URing",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: ioPathSettings
        ),
        // The SCSI layer (issue 9), above the store: the model (LogicalUnit, TargetRuntime, Nexus), SCSITask and
        // the commands, reservations and ALUA. Public API with cross-module optimization, as Store. Target
        // re-exports it.
        .target(name: "SCSI", dependencies: ["Floor", "ISCSIWire", "Store", "URing"], swiftSettings: ioPathSettings),
        // The pure protocol machines (issue 9), above SCSI: iSCSI login, negotiation, CHAP, Text, discovery and the
        // full-feature session's parts; the NBD handshake, requests and export limits. Nothing here drives a
        // socket. Public API with cross-module optimization, as Store. Target re-exports both.
        .target(name: "ISCSI", dependencies: ["Floor", "ISCSIWire", "SCSI", .product(name: "Crypto", package: "swift-crypto")],
                swiftSettings: ioPathSettings),
        .target(name: "NBD", dependencies: ["Floor", "SCSI"], swiftSettings: ioPathSettings),
        // The reactor and the transport shell (issue 9): one ring per core, the connections that carry out what
        // the ISCSI and NBD machines decide, the buffer pool, the runtime the control plane drives. Target (the
        // control layer) re-exports it.
        .target(
            name: "Reactor",
            dependencies: [
                "CURing", "Floor", "ISCSI", "ISCSIWire", "NBD", "SCSI", "SheepProtocol", "Store", "URing",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: ioPathSettings
        ),
        .target(
            name: "Target",
            dependencies: [
                "CURing",
                "Floor",
                "ISCSI",
                "Reactor",
                "NBD",
                "SCSI",
                "Store",
                "ISCSIWire",
                "SheepProtocol",
                "URing",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: ioPathSettings
        ),
        .executableTarget(
            name: "ringtgtd",
            dependencies: ["Target", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                           .product(name: "Logging", package: "swift-log")],
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
        .executableTarget(
            name: "ringtgtadm",
            dependencies: ["Target", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
        .executableTarget(
            name: "ringtgt-admin",
            dependencies: ["Target"],
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
        // Sheepdog wire codec, shared by the sheepdog store and the sheep-protocol test server. No dependencies.
        .target(name: "SheepProtocol", swiftSettings: [.swiftLanguageMode(.v5)]),
        // Test support shared by the end-to-end harness, the perf runner, the load generator and the sheep test
        // server: the seeded PRNG, bounded child processes, free ports, the /proc reader (ProcessStats), and the
        // sheep fixtures (test server, local cluster). A target, not a product: nothing outside this package links it.
        .target(name: "TestSupport", dependencies: ["DeterministicRandom", "Floor"], swiftSettings: [.swiftLanguageMode(.v5)]),
        // The one raw iSCSI initiator and the one raw NBD client, on ISCSIWire's vocabulary (Target only for the
        // login's text keys, CHAP and NBDWire), for the end-to-end tests, perf/livefuzz and perf/loadgen's setup. Apart from
        // TestSupport, which stays free of Target.
        .target(name: "RawClients", dependencies: ["Floor", "ISCSIWire", "Target", "TestSupport"],
                swiftSettings: [.swiftLanguageMode(.v5)]),
        // Test support: a sheep-protocol server that behaves like a small sheep cluster, plus a dog-like CLI.
        .executableTarget(
            name: "SheepTestServer",
            dependencies: ["Floor", "SheepProtocol", "TestSupport", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                           .product(name: "Logging", package: "swift-log")],
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
        // perf/: the perf regression suite. An iSCSI load generator on io_uring, the loopback echo limit,
        // and the scenario runner (ringtgt beside Debian's tgt, reports, regression gates).
        .executableTarget(
            name: "ringtgt-loadgen",
            dependencies: ["Target", "ISCSIWire", "RawClients", "CURing", "TestSupport",
                           .product(name: "ArgumentParser", package: "swift-argument-parser"),
                           .product(name: "Histogram", package: "hdrhistogram-swift")],
            path: "perf/loadgen",
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
        .executableTarget(
            name: "ringtgt-echo",
            dependencies: ["CURing", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "perf/echo",
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
        .executableTarget(
            name: "ringtgt-perf",
            dependencies: ["TestSupport", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "perf/runner",
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
        // perf/livefuzz: the live-daemon fuzzer and hostile-load tool (issue 11); starts its own ringtgtd with
        // TestSupport's daemon fixture and speaks to it through RawClients. Target only for the NBD wire constants.
        .executableTarget(
            name: "ringtgt-livefuzz",
            dependencies: ["Target", "ISCSIWire", "RawClients", "TestSupport",
                           .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "perf/livefuzz",
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
        .testTarget(name: "SheepProtocolTests", dependencies: ["SheepProtocol", "TestSupport"],
                    swiftSettings: [.swiftLanguageMode(.v5)]),
        .testTarget(name: "SheepTestServerTests", dependencies: ["Floor", "SheepTestServer", "SheepProtocol", "TestSupport"],
                    swiftSettings: [.swiftLanguageMode(.v5)]),
        .testTarget(name: "ISCSIWireTests", dependencies: ["ISCSIWire"], swiftSettings: [.swiftLanguageMode(.v5)]),
        .testTarget(name: "RawClientsTests", dependencies: ["RawClients", "TestSupport"],
                    swiftSettings: [.swiftLanguageMode(.v5)]),
        .testTarget(name: "DeterministicRandomTests", dependencies: ["DeterministicRandom"],
                    swiftSettings: [.swiftLanguageMode(.v5)]),
        .testTarget(name: "FloorTests", dependencies: ["Floor", "URing", "CURing"],
                    swiftSettings: [.swiftLanguageMode(.v5)]),
        // Unit tests mirror the layer modules (issue 9): each target depends on its module and those below it.
        .testTarget(name: "StoreTests", dependencies: ["Store", "Floor", "URing", "CURing", "SheepProtocol", "DeterministicRandom"],
                    swiftSettings: [.swiftLanguageMode(.v5)]),
        .target(name: "SCSITestSupport", dependencies: ["SCSI", "Store", "Floor", "URing", "ISCSIWire", "SheepProtocol"], path: "Tests/SCSITestSupport",
                swiftSettings: [.swiftLanguageMode(.v5)]),
        .testTarget(name: "SCSITests", dependencies: ["SCSITestSupport", "SCSI", "Store", "Floor", "URing", "ISCSIWire", "SheepProtocol", "DeterministicRandom"],
                    swiftSettings: [.swiftLanguageMode(.v5)]),
        .testTarget(name: "ISCSITests", dependencies: ["ISCSI", "SCSI", "Store", "Floor", "URing", "ISCSIWire", "DeterministicRandom"],
                    swiftSettings: [.swiftLanguageMode(.v5)]),
        .testTarget(name: "NBDTests", dependencies: ["NBD", "SCSI", "Store", "Floor", "URing", "DeterministicRandom"],
                    swiftSettings: [.swiftLanguageMode(.v5)]),
        .testTarget(name: "ReactorTests", dependencies: ["Reactor", "ISCSI", "NBD", "SCSI", "Store", "Floor", "URing", "CURing",
                                                         "ISCSIWire", "SheepProtocol", "DeterministicRandom",
                                                         .product(name: "Logging", package: "swift-log")],
                    swiftSettings: [.swiftLanguageMode(.v5)]),
        .testTarget(name: "TargetTests", dependencies: ["Target", "SCSITestSupport", "ISCSI", "Reactor", "NBD", "SCSI", "Store", "DeterministicRandom"], swiftSettings: [.swiftLanguageMode(.v5)]),
        .testTarget(name: "EndToEndTests", dependencies: ["Target", "ISCSI", "Reactor", "NBD", "SCSI", "Store", "ISCSIWire", "RawClients", "SheepProtocol", "TestSupport"], swiftSettings: [.swiftLanguageMode(.v5)]),
        .testTarget(name: "SimulationTests", dependencies: ["Target", "ISCSI", "Reactor", "NBD", "SCSI", "Store", "DeterministicRandom", "SheepTestServer", "SheepProtocol"], swiftSettings: [.swiftLanguageMode(.v5)]),
    ]
)

// fuzz/: coverage-guided fuzz targets over the pure machines. `fuzz/run` builds ringtgt-fuzz with
// -sanitize=fuzzer (libFuzzer); the plain build replays corpus files, and FuzzTests replays the committed corpus.
package.products.append(.executable(name: "ringtgt-fuzz", targets: ["ringtgt-fuzz"]))
package.targets += [
    .target(name: "FuzzTargets", dependencies: ["Floor", "ISCSI", "Reactor", "NBD", "SCSI", "Store", "Target", "ISCSIWire", "SheepProtocol"], path: "fuzz/Targets",
            swiftSettings: [.swiftLanguageMode(.v5)]),
    .executableTarget(name: "ringtgt-fuzz", dependencies: ["FuzzTargets"], path: "fuzz/Main",
                      swiftSettings: [.swiftLanguageMode(.v5)]),
    .testTarget(name: "FuzzTests", dependencies: ["FuzzTargets"], swiftSettings: [.swiftLanguageMode(.v5)]),
]
