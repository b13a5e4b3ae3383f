// The end-to-end suite drives a real ringtgtd only through real user-space initiators (libiscsi's
// utilities, qemu-img, qemu-io, iscsi-test-cu) and raw sockets.
//
// Run:   swift build && swift test --filter EndToEndTests            (everything, ~2 min on tgt)
//        swift test --filter EndToEndTests.EndToEnd.Conformance       (one suite)
//        swift test --filter EndToEndTests.HarnessParserTests         (parsers only, no daemon)
// Env:   RINGTGT_BIN_DIR=dir        where ringtgtd/ringtgtadm are (default: beside the test bundle)
//        RINGTGT_E2E_PEER=tgt       drive Debian's tgtd instead (for validating the suite itself)
//        RINGTGT_E2E_KEEP=1         keep each test's /tmp/rtgt-e2e.* directory (logs, LUN images)
//        RINGTGT_E2E_RESULTS_DIR    where the conformance counts go (default .build/e2e-results)
//
// Tool quirks this suite relies on (Debian 12: libiscsi-bin 1.19.0, qemu-utils 7.2):
// - iscsi-inq parses -c with atoi(): VPD page codes must be decimal (`-e 1 -c 131` for 0x83).
// - iscsi-ls prints Size from READ CAPACITY(10) as last-LBA x block length (not block count), divided
//   by 1024 while > 1024: a 64 MiB LUN shows "63M" (ISCSILsListing.expectedSize).
// - qemu-img needs `-n` to write into an existing iscsi:// LUN and `-f raw` to skip probing.
// - qemu-io reports aio_* failures only in its output, never in its exit status (QemuIO.swift).
// - iscsi-test-cu exits 0 even when tests fail, and counts [SKIPPED] tests as passed (CUnitReport).
// - tgtd ignores SIGTERM, takes only the last --iscsi portal=, and its -C must be < 32768.
//
// The suites run one at a time: each starts its own daemon, and on a two-core machine parallel
// daemons plus initiators would turn time limits into noise.

import Testing

@Suite("End to end", .serialized)
struct EndToEnd {}
