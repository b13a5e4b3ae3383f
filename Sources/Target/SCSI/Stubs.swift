// Temporary: commands not yet implemented answer INVALID COMMAND OPERATION CODE.
extension SCSITask {
    mutating func reportSupportedOperationCodes(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { invalidOpcode() }
    mutating func startExtendedCopy(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { invalidOpcode() }
    mutating func extendedCopyListReceived(_ list: UnsafeMutableRawBufferPointer, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { internalError() }
    mutating func extendedCopyReadCompleted(_ r: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { internalError() }
    mutating func extendedCopyWriteCompleted(_ r: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { internalError() }
    mutating func receiveCopyResults(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { invalidOpcode() }
}
