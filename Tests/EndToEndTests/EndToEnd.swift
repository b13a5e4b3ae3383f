// The end-to-end suite drives a real ringtgtd only through real user-space initiators (libiscsi's
// utilities, qemu-img, qemu-io, iscsi-test-cu) and raw sockets.
//
// Run:   swift build && swift test --filter EndToEndTests
// Env:   RINGTGT_BIN_DIR=dir        where ringtgtd/ringtgtadm are (default: beside the test bundle)
//        RINGTGT_E2E_PEER=tgt       drive Debian's tgtd instead (for validating the suite itself)
//        RINGTGT_E2E_KEEP=1         keep each test's /tmp/rtgt-e2e.* directory (logs, LUN images)
//        RINGTGT_E2E_RESULTS_DIR    where the conformance counts go (default .build/e2e-results)
//
// The suites run one at a time: each starts its own daemon, and on a two-core machine parallel
// daemons plus initiators would turn time limits into noise.

import Testing

@Suite("End to end", .serialized)
struct EndToEnd {}
