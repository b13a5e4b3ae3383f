// Temporary: commands not yet implemented answer INVALID COMMAND OPERATION CODE.
extension SCSITask {
    mutating func startVerify(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { invalidOpcode() }
    mutating func verifyDataReceived(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { internalError() }
    mutating func verifyReadCompleted(_ r: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { internalError() }
    mutating func startOrWrite(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { invalidOpcode() }
    mutating func orWriteDataReceived(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { internalError() }
    mutating func orWriteReadCompleted(_ r: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { internalError() }
    mutating func orWriteWriteCompleted(_ r: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { internalError() }
    mutating func startCompareAndWrite(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { invalidOpcode() }
    mutating func compareAndWriteDataReceived(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { internalError() }
    mutating func compareAndWriteReadCompleted(_ r: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { internalError() }
    mutating func compareAndWriteWriteCompleted(_ r: StoreResult) -> SCSIAction { internalError() }
    mutating func startWriteSame(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { invalidOpcode() }
    mutating func writeSameDataReceived(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { internalError() }
    mutating func writeSameWriteCompleted(_ r: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { internalError() }
    mutating func writeSameDiscardCompleted(_ r: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { internalError() }
    mutating func startUnmap(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { invalidOpcode() }
    mutating func unmapListReceived(_ list: UnsafeMutableRawBufferPointer, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { internalError() }
    mutating func unmapDiscardCompleted(_ r: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { internalError() }
    mutating func startGetLBAStatus(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { invalidOpcode() }
    mutating func lbaStatusCompleted(_ r: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { internalError() }
    mutating func startPrefetch() -> SCSIAction { invalidOpcode() }
    mutating func reportSupportedOperationCodes(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { invalidOpcode() }
    mutating func reserve() -> SCSIAction { invalidOpcode() }
    mutating func release() -> SCSIAction { invalidOpcode() }
    mutating func persistentReserveIn(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { invalidOpcode() }
    mutating func startPersistentReserveOut(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { invalidOpcode() }
    mutating func persistentReserveOut(_ list: UnsafeMutableRawBufferPointer) -> SCSIAction { internalError() }
    mutating func startExtendedCopy(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { invalidOpcode() }
    mutating func extendedCopyListReceived(_ list: UnsafeMutableRawBufferPointer, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { internalError() }
    mutating func extendedCopyReadCompleted(_ r: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { internalError() }
    mutating func extendedCopyWriteCompleted(_ r: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { internalError() }
    mutating func receiveCopyResults(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { invalidOpcode() }
    func reservationConflicts(state: LUNState, nexus: Nexus) -> Bool {
        state.shared.withLock { s in
            if let h = s.spc2Holder, h != nexus.id {
                switch opcode {
                case Opcode.inquiry, Opcode.reportLUNs, Opcode.requestSense, Opcode.release6, Opcode.release10: return false
                default: return true
                }
            }
            return false
        }
    }
}
