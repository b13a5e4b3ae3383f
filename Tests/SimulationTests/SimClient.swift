// The test-side initiators of the ring simulation (issue 8): what the driver steps, single-threaded and
// interleaved with reactor turns. A client is deterministic given the PRNG it is stepped with and what its
// socket delivers: no clocks, no threads, no blocking calls, no randomness of its own.

import DeterministicRandom
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor

/// An initiator the simulation steps. Never blocks: every socket call is non-blocking (MSG_DONTWAIT) and
/// EAGAIN means "nothing now".
protocol SimClient: AnyObject {
    var name: String { get }
    /// Makes what progress the socket allows now (send queued bytes, read what arrived, handle PDUs/replies,
    /// issue new commands while fewer than its queue depth are outstanding and the plan is not done).
    /// Returns true if it did anything (sent, received, or changed state).
    func step(_ rng: inout SeededRandom) -> Bool
    /// Planned commands all ended (answered, or lost with a connection the target closed) and the final
    /// read-back verification (below) is done.
    var isFinished: Bool { get }
    /// Commands sent and not yet ended.
    var inFlight: Int { get }
    /// Invariant violations seen: a read that does not match an acknowledged write, an unexpected status,
    /// a protocol error from the target, a response to an unknown tag... Empty = fine.
    var failures: [String] { get }
    /// One line of counters for the test log: commands, writes, reads, bytes, reconnects, check conditions.
    var summary: String { get }
}
