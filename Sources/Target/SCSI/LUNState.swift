// Placeholder: the SCSI layer defines reservations, persistent reservations, unit attentions and mode
// page state here.
public final class LUNState: @unchecked Sendable {
    public init(blockSize: Int, blockCount: UInt64, capabilities: StoreCapabilities) {}
}
