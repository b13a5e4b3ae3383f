// Sense data as the SCSI layer reports it: fixed format (response code 0x70, SPC-4 §4.5.3) or, for a
// LU with tgt's `sense_format=1`, descriptor format (0x72, SPC-4 §4.5.2). The task keeps the few fields
// that vary and renders the bytes only when the transport asks, so failing a command costs a handful of
// stores and no buffer.

/// Sense keys (SPC-4 table 49).
import Floor
import Store
public enum SenseKey {
    static let noSense: UInt8 = 0x0
    static let notReady: UInt8 = 0x2
    static let mediumError: UInt8 = 0x3
    static let hardwareError: UInt8 = 0x4
    @usableFromInline static let illegalRequest: UInt8 = 0x5
    static let unitAttention: UInt8 = 0x6
    static let dataProtect: UInt8 = 0x7
    static let copyAborted: UInt8 = 0xA
    public static let abortedCommand: UInt8 = 0xB
    static let miscompare: UInt8 = 0xE
}

/// An additional sense code and qualifier pair.
public struct ASC: Equatable {
    let code: UInt8
    let qualifier: UInt8
    public init(_ code: UInt8, _ qualifier: UInt8) { self.code = code; self.qualifier = qualifier }

    public static let none = ASC(0x00, 0x00)
    /// LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE: the backing store is unreachable.
    static let logicalUnitNotReady = ASC(0x04, 0x00)
    /// LOGICAL UNIT IS IN PROCESS OF BECOMING READY: tgt's answer to TEST UNIT READY on an offline,
    /// non-removable LU.
    static let becomingReady = ASC(0x04, 0x01)
    static let sanitizeInProgress = ASC(0x04, 0x1B)
    static let writeError = ASC(0x0C, 0x00)
    static let unrecoveredReadError = ASC(0x11, 0x00)
    static let miscompareDuringVerify = ASC(0x1D, 0x00)
    static let parameterListLengthError = ASC(0x1A, 0x00)
    static let invalidOperationCode = ASC(0x20, 0x00)
    static let lbaOutOfRange = ASC(0x21, 0x00)
    @usableFromInline static let invalidFieldInCDB = ASC(0x24, 0x00)
    static let logicalUnitNotSupported = ASC(0x25, 0x00)
    static let invalidFieldInParameterList = ASC(0x26, 0x00)
    static let tooManyTargetDescriptors = ASC(0x26, 0x06)
    static let unsupportedTargetDescriptorType = ASC(0x26, 0x07)
    static let tooManySegmentDescriptors = ASC(0x26, 0x08)
    static let unsupportedSegmentDescriptorType = ASC(0x26, 0x09)
    static let writeProtected = ASC(0x27, 0x00)
    static let spaceAllocationFailedWriteProtect = ASC(0x27, 0x07)
    static let powerOnResetOccurred = ASC(0x29, 0x00)
    static let busDeviceResetOccurred = ASC(0x29, 0x03)
    static let modeParametersChanged = ASC(0x2A, 0x01)
    static let reservationsPreempted = ASC(0x2A, 0x03)
    static let reservationsReleased = ASC(0x2A, 0x04)
    static let registrationsPreempted = ASC(0x2A, 0x05)
    static let savingParametersNotSupported = ASC(0x39, 0x00)
    static let reportedLUNsDataChanged = ASC(0x3F, 0x0E)
    static let internalTargetFailure = ASC(0x44, 0x00)
    static let mediumNotPresent = ASC(0x3A, 0x00)
    static let sanitizeCommandFailed = ASC(0x31, 0x03)
    static let mediumRemovalPrevented = ASC(0x53, 0x02)
    static let copyTargetDeviceNotReachable = ASC(0x0D, 0x02)
    static let insufficientRegistrationResources = ASC(0x55, 0x04)
    /// COMMAND TIMEOUT DURING PROCESSING: a COMPARE AND WRITE whose section lease ran out before its write.
    static let commandTimeoutDuringProcessing = ASC(0x2E, 0x02)
    /// DATA PHASE ERROR: the transport gave up on the command's data (a Data-Out that stopped coming).
    public static let dataPhaseError = ASC(0x4B, 0x00)
}

/// The variable part of one sense buffer.
public struct SenseData: Equatable {
    /// Bytes of fixed-format sense with additional length 10 (SPC-4 §4.5.3).
    public static let fixedLengthBytes = 18
    /// Descriptor-format header (SPC-4 §4.5.2.1).
    static let descriptorHeaderBytes = 8
    /// Information descriptor (type 00h, SPC-4 §4.5.2.2): 64-bit INFORMATION.
    static let informationDescriptorBytes = 12
    /// Sense key specific descriptor (type 02h, SPC-4 §4.5.2.3).
    static let senseKeySpecificDescriptorBytes = 8
    /// The longest sense this device server renders: a descriptor header with both descriptors.
    static let maxLengthBytes = descriptorHeaderBytes + informationDescriptorBytes + senseKeySpecificDescriptorBytes

    var key: UInt8 = 0
    var asc: ASC = .none
    /// INFORMATION field (byte 3..6); valid only when it fits in 32 bits.
    var information: UInt64? = nil
    /// Sense-key-specific bytes 15..17 with SKSV set, or nil.
    var senseKeySpecific: (UInt8, UInt8, UInt8)? = nil
    /// Descriptor format (response code 72h) instead of fixed (70h).
    var descriptorFormat = false

    public init(key: UInt8 = 0, asc: ASC = .none, information: UInt64? = nil,
                senseKeySpecific: (UInt8, UInt8, UInt8)? = nil, descriptorFormat: Bool = false) {
        self.key = key
        self.asc = asc
        self.information = information
        self.senseKeySpecific = senseKeySpecific
        self.descriptorFormat = descriptorFormat
    }

    public static func == (a: SenseData, b: SenseData) -> Bool {
        a.key == b.key && a.asc == b.asc && a.information == b.information && a.descriptorFormat == b.descriptorFormat
            && a.senseKeySpecific?.0 == b.senseKeySpecific?.0 && a.senseKeySpecific?.1 == b.senseKeySpecific?.1
            && a.senseKeySpecific?.2 == b.senseKeySpecific?.2
    }

    /// Field pointer for ILLEGAL REQUEST: `inCDB` sets C/D; `bit` (0...7) sets BPV.
    @usableFromInline static func fieldPointer(byte: Int, bit: Int? = nil, inCDB: Bool = true) -> (UInt8, UInt8, UInt8) {
        var b0: UInt8 = 0x80
        if inCDB { b0 |= 0x40 }
        if let bit { b0 |= 0x08 | UInt8(bit & 7) }
        let p = UInt16(truncatingIfNeeded: byte)
        return (b0, UInt8(p >> 8), UInt8(p & 0xFF))
    }

    /// Bytes `render(to:)` writes.
    var length: Int {
        guard descriptorFormat else { return SenseData.fixedLengthBytes }
        var n = SenseData.descriptorHeaderBytes
        if information != nil { n += SenseData.informationDescriptorBytes }
        if senseKeySpecific != nil { n += SenseData.senseKeySpecificDescriptorBytes }
        return n
    }

    /// Writes `length` sense bytes at `to`.
    public func render(to p: UnsafeMutableRawPointer) {
        if descriptorFormat { return renderDescriptor(to: p) }
        let b = p.assumingMemoryBound(to: UInt8.self)
        for i in 0..<SenseData.fixedLengthBytes { b[i] = 0 }
        b[0] = 0x70
        b[2] = key & 0x0F
        if let info = information, info <= UInt64(UInt32.max) {
            b[0] |= 0x80
            b[3] = UInt8(truncatingIfNeeded: info >> 24)
            b[4] = UInt8(truncatingIfNeeded: info >> 16)
            b[5] = UInt8(truncatingIfNeeded: info >> 8)
            b[6] = UInt8(truncatingIfNeeded: info)
        }
        b[7] = UInt8(SenseData.fixedLengthBytes - 8)
        b[12] = asc.code
        b[13] = asc.qualifier
        if let s = senseKeySpecific {
            b[15] = s.0 | 0x80
            b[16] = s.1
            b[17] = s.2
        }
    }

    /// Descriptor format: the header, then an information descriptor (the full 64 bits, unlike the fixed
    /// format's 32) and a sense key specific descriptor when those fields are set.
    private func renderDescriptor(to p: UnsafeMutableRawPointer) {
        let b = p.assumingMemoryBound(to: UInt8.self)
        let n = length
        for i in 0..<n { b[i] = 0 }
        b[0] = 0x72
        b[1] = key & 0x0F
        b[2] = asc.code
        b[3] = asc.qualifier
        b[7] = UInt8(n - SenseData.descriptorHeaderBytes)
        var d = SenseData.descriptorHeaderBytes
        if let info = information {
            b[d] = 0x00
            b[d + 1] = UInt8(SenseData.informationDescriptorBytes - 2)
            b[d + 2] = 0x80                                          // VALID
            for i in 0..<8 { b[d + 4 + i] = UInt8(truncatingIfNeeded: info >> (56 - 8 * UInt64(i))) }
            d += SenseData.informationDescriptorBytes
        }
        if let s = senseKeySpecific {
            b[d] = 0x02
            b[d + 1] = UInt8(SenseData.senseKeySpecificDescriptorBytes - 2)
            b[d + 4] = s.0 | 0x80
            b[d + 5] = s.1
            b[d + 6] = s.2
        }
    }
}
