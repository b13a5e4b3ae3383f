import Floor
import URing
import SheepProtocol

/// The VDIs this daemon holds sheep's shared lock on, by endpoint, for a channel that reconnects.
///
/// Sheep drops a node's shared-lock participations when the node leaves the cluster (vdi.c
/// `remove_node_from_participants`), and a node that comes back knows nothing of them. A gateway that
/// carried on through that node without locking again would no longer be told when another gateway changes
/// the index (nor tell it), and would serve a stale index: reads of zeros, and creates that overwrite the
/// other gateway's objects. So a channel that reconnects takes the shared lock of each of these VDIs again
/// before it sends anything else: SUCCESS if the node had forgotten us (sheep then marks us INVALIDATED
/// when another participant modified the index, and the usual refresh follows), VDI_LOCKED if the node
/// still knows us (only the connection was lost). Written by the control plane at open and release, read
/// only on reconnect; never on the I/O path.
public enum SheepRejoin {
    public struct Entry {
        let volume: ObjectIdentifier
        let endpointIndex: Int
        /// LOCK_VDI's payload: the working VDI's name (its VID may have moved with a snapshot).
        let payload: [UInt8]
    }

    private static let entries = Locked<[Entry]>([])

    static func add(_ volume: SheepVolume, payload: [UInt8]) {
        let e = Entry(volume: ObjectIdentifier(volume), endpointIndex: volume.endpointIndex, payload: payload)
        entries.withLock { $0.append(e) }
    }

    static func remove(_ volume: SheepVolume) {
        let id = ObjectIdentifier(volume)
        entries.withLock { $0.removeAll { $0.volume == id } }
    }

    /// The LOCK_VDI payloads of the VDIs locked through endpoint `endpointIndex`.
    static func payloads(endpointIndex: Int) -> [[UInt8]] {
        entries.withLock { $0.filter { $0.endpointIndex == endpointIndex }.map(\.payload) }
    }
}
