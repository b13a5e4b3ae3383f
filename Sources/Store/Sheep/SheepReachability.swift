/// One BackingReachability per sheep endpoint, shared by its channels (one per core) and its volumes: a
/// node lost is lost for every VDI served through it. Looked up when a channel or volume is made, never on
/// the I/O path.
import Floor
import URing
public enum SheepReachability {
    private static let byEndpoint = Locked<[Int: BackingReachability]>([:])

    static func of(endpointIndex: Int) -> BackingReachability {
        byEndpoint.withLock { all in
            if let r = all[endpointIndex] { return r }
            let r = BackingReachability()
            all[endpointIndex] = r
            return r
        }
    }
}
