// The fixtures this harness shares with the perf runner (child processes, ports, sheep) come from the
// TestSupport library, and the raw iSCSI and NBD clients it shares with perf/livefuzz from RawClients; every
// harness file sees them as its own.
@_exported import RawClients
@_exported import TestSupport
