// A test hook that widens a window real sheep has: `gateway_write_obj` (sheep/gateway.c) invalidates the
// other participants of a shared lock (`invalidate_other_nodes`, a synchronous cluster op) *before* it
// forwards the index write (`gateway_forward_request`). A participant's refresh read that runs in between
// reads the old index and is then marked valid again (`gateway_read_obj` → `validate_myself`), so nothing
// tells it later that its index lacks the write. Armed for one index slot, the next index write covering that
// slot waits after its invalidation, before the index changes, until released; tests use it to place a
// refresh read in the window deterministically.

#if canImport(Glibc)
import Glibc
#endif

final class IndexWriteHold: @unchecked Sendable {
    /// The longest `waitHeld` waits for a write to reach the hold.
    static let waitMaxSeconds = 30

    private let gate = PosixCondition()
    // Guarded by `gate`.
    private var armedSlot: UInt32? = nil
    private var held = false
    private var released = false

    /// The next index write covering `slot` will wait (a hold not yet released is released first).
    func arm(slot: UInt32) {
        gate.withLock {
            armedSlot = slot
            held = false
            released = false
            gate.broadcast()
        }
    }

    /// Called by a write into an inode's index (`slots`) after it invalidated the others: waits while armed
    /// for one of them, until `release`.
    func pass(slots: Range<UInt32>) {
        gate.withLock {
            guard let s = armedSlot, slots.contains(s) else { return }
            armedSlot = nil
            held = true
            gate.broadcast()
            gate.wait(while: { !released })
            held = false
        }
    }

    /// Waits until an index write waits at the hold; false after `waitMaxSeconds`.
    func waitHeld() -> Bool {
        gate.withLock { gate.wait(while: { !held && !released }, timeoutSeconds: Self.waitMaxSeconds) }
    }

    /// Lets a held write go on and disarms the hook.
    func release() {
        gate.withLock {
            armedSlot = nil
            released = true
            gate.broadcast()
        }
    }
}
