// The fixtures this harness shares with the perf runner (child processes, ports, sheep) come from the
// TestSupport library; every harness file sees them as its own.
@_exported import TestSupport
