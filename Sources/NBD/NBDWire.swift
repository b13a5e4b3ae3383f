// The NBD wire format (NetworkBlockDevice/nbd doc/proto.md): fixed newstyle handshake, option haggling and
// simple replies. Every number is big-endian. Pure: no sockets, no rings.

import Floor
import ISCSIWire
import SCSI
public enum NBDWire {
    // MARK: Magics
    /// "NBDMAGIC", then "IHAVEOPT": the server's greeting; the client repeats IHAVEOPT before every option.
    public static let initMagic: UInt64 = 0x4E42_444D_4147_4943
    public static let optionMagic: UInt64 = 0x4948_4156_454F_5054
    public static let optionReplyMagic: UInt64 = 0x0003_E889_0455_65A9
    public static let requestMagic: UInt32 = 0x2560_9513
    public static let simpleReplyMagic: UInt32 = 0x6744_6698
    public static let structuredReplyMagic: UInt32 = 0x668E_33EF

    // MARK: Sizes
    public static let greetingBytes = 18          // init magic, option magic, 16-bit handshake flags
    public static let clientFlagsBytes = 4
    public static let optionHeaderBytes = 16      // magic, option, length
    public static let optionReplyHeaderBytes = 20 // magic, option, reply type, length
    public static let requestBytes = 28           // magic, flags, type, cookie, offset, length
    public static let simpleReplyBytes = 16       // magic, error, cookie
    /// A structured reply chunk's header: magic, flags, type, cookie, payload length.
    public static let structuredReplyHeaderBytes = 20
    /// NBD_REPLY_TYPE_OFFSET_DATA's payload before the data: the offset.
    public static let offsetDataPrefixBytes = 8
    /// NBD_REPLY_TYPE_ERROR's payload with an empty message: error, message length.
    public static let errorChunkPayloadBytes = 6
    /// NBD_REPLY_TYPE_BLOCK_STATUS: the context ID, then one descriptor (length, status flags) per extent.
    public static let blockStatusContextBytes = 4
    public static let blockDescriptorBytes = 8
    /// The answer to NBD_OPT_EXPORT_NAME: size, transmission flags, and 124 zeros unless NO_ZEROES.
    public static let exportNameReplyBytes = 10
    public static let exportNameReplyZeroBytes = 124
    /// Export names and other strings (proto.md: "MUST be no longer than 4096 bytes").
    public static let maxStringBytes = 4096

    // MARK: Handshake flags (server) and client flags
    public static let flagFixedNewstyle: UInt16 = 1 << 0
    public static let flagNoZeroes: UInt16 = 1 << 1
    public static let clientFixedNewstyle: UInt32 = 1 << 0
    public static let clientNoZeroes: UInt32 = 1 << 1

    // MARK: Transmission flags
    public static let transHasFlags: UInt16 = 1 << 0
    public static let transReadOnly: UInt16 = 1 << 1
    public static let transSendFlush: UInt16 = 1 << 2
    public static let transSendFUA: UInt16 = 1 << 3
    public static let transRotational: UInt16 = 1 << 4
    public static let transSendTrim: UInt16 = 1 << 5
    public static let transSendWriteZeroes: UInt16 = 1 << 6
    /// READ takes NBD_CMD_FLAG_DF: only with structured replies (a read is always one chunk here).
    public static let transSendDF: UInt16 = 1 << 7
    public static let transCanMultiConn: UInt16 = 1 << 8
    public static let transSendCache: UInt16 = 1 << 10
    public static let transSendFastZero: UInt16 = 1 << 11

    // MARK: Options
    public static let optExportName: UInt32 = 1
    public static let optAbort: UInt32 = 2
    public static let optList: UInt32 = 3
    public static let optStartTLS: UInt32 = 5
    public static let optInfo: UInt32 = 6
    public static let optGo: UInt32 = 7
    public static let optStructuredReply: UInt32 = 8
    public static let optListMetaContext: UInt32 = 9
    public static let optSetMetaContext: UInt32 = 10

    // MARK: Option replies
    public static let repAck: UInt32 = 1
    public static let repServer: UInt32 = 2
    public static let repInfo: UInt32 = 3
    public static let repMetaContext: UInt32 = 4
    public static let repErrUnsup: UInt32 = 0x8000_0001
    public static let repErrPolicy: UInt32 = 0x8000_0002
    public static let repErrInvalid: UInt32 = 0x8000_0003
    public static let repErrUnknown: UInt32 = 0x8000_0006
    public static let repErrTooBig: UInt32 = 0x8000_0009

    // MARK: NBD_REP_INFO types
    public static let infoExport: UInt16 = 0
    public static let infoName: UInt16 = 1
    public static let infoDescription: UInt16 = 2
    public static let infoBlockSize: UInt16 = 3

    // MARK: Commands and command flags
    public static let cmdRead: UInt16 = 0
    public static let cmdWrite: UInt16 = 1
    public static let cmdDisc: UInt16 = 2
    public static let cmdFlush: UInt16 = 3
    public static let cmdTrim: UInt16 = 4
    public static let cmdCache: UInt16 = 5
    public static let cmdWriteZeroes: UInt16 = 6
    public static let cmdBlockStatus: UInt16 = 7
    public static let cmdFlagFUA: UInt16 = 1 << 0
    public static let cmdFlagNoHole: UInt16 = 1 << 1
    public static let cmdFlagDF: UInt16 = 1 << 2
    public static let cmdFlagReqOne: UInt16 = 1 << 3
    public static let cmdFlagFastZero: UInt16 = 1 << 4
    // MARK: Structured replies
    public static let replyFlagDone: UInt16 = 1 << 0
    public static let replyTypeNone: UInt16 = 0
    public static let replyTypeOffsetData: UInt16 = 1
    public static let replyTypeBlockStatus: UInt16 = 5
    public static let replyTypeError: UInt16 = 1 << 15 | 1
    // MARK: Metadata contexts
    /// The contexts served, and the IDs their block status replies carry.
    public static let baseAllocation = "base:allocation"
    public static let baseAllocationID: UInt32 = 1
    /// QEMU's (docs/interop/nbd.rst): the status is the layer the data lives in, 0 = none, 1 = this image,
    /// n = the (n-1)th backing layer: on sheepdog, how far down the snapshot chain an object's owner is.
    public static let allocationDepth = "qemu:allocation-depth"
    public static let allocationDepthID: UInt32 = 2
    /// base:allocation's status flags: not allocated, and reads as zeros.
    public static let stateHole: UInt32 = 1 << 0
    public static let stateZero: UInt32 = 1 << 1

    // MARK: Errors (proto.md "Error values")
    public static let errPerm: UInt32 = 1
    public static let errIO: UInt32 = 5
    public static let errInvalid: UInt32 = 22
    public static let errNoSpace: UInt32 = 28
    public static let errOverflow: UInt32 = 75
    /// FAST_ZERO refused: zeroing would be as slow as writing.
    public static let errNotSup: UInt32 = 95
    public static let errShutdown: UInt32 = 108

    /// A write payload larger than this is not skipped to answer EOVERFLOW: the connection is dropped instead
    /// (proto.md lets a server disconnect on a payload beyond 32 MiB, which it cannot be expected to swallow).
    public static let maxSkippedPayloadBytes = 32 << 20
}

/// One transmission-phase request header, decoded.
public struct NBDRequestHeader: Equatable, Sendable {
    public var magic: UInt32
    public var flags: UInt16
    public var type: UInt16
    public var cookie: UInt64
    public var offset: UInt64
    public var length: UInt32

    public init(magic: UInt32 = NBDWire.requestMagic, flags: UInt16, type: UInt16, cookie: UInt64, offset: UInt64,
                length: UInt32) {
        self.magic = magic
        self.flags = flags
        self.type = type
        self.cookie = cookie
        self.offset = offset
        self.length = length
    }

    /// Reads the 28 bytes at `p`.
    @inline(__always)
    public init(decoding p: UnsafeRawPointer) {
        magic = be32(p, 0)
        flags = be16(p, 4)
        type = be16(p, 6)
        cookie = be64(p, 8)
        offset = be64(p, 16)
        length = be32(p, 24)
    }

    public func encode(to p: UnsafeMutableRawPointer) {
        put32(p, 0, magic)
        put16(p, 4, flags)
        put16(p, 6, type)
        put64(p, 8, cookie)
        put64(p, 16, offset)
        put32(p, 24, length)
    }
}

/// How the server checks one request before touching a store. Pure, so the rules are unit-tested.
public enum NBDRequestCheck: Equatable, Sendable {
    /// Go ahead.
    case accept
    /// Answer this error without touching the store (a write's payload is skipped first).
    case refuse(UInt32)
    /// A write payload too large to skip: drop the connection.
    case disconnect
}

/// What the server knows about the export a connection is attached to.
public struct NBDExportLimits: Equatable, Sendable {
    public var sizeBytes: UInt64
    public var readOnly: Bool
    /// Largest READ or WRITE payload (one buffer slot).
    public var maxPayloadBytes: Int
    /// Offsets and lengths must be multiples of this (1, or the LUN's block size with O_DIRECT).
    public var minimumBlockBytes: Int
    /// NBD_OPT_STRUCTURED_REPLY was acknowledged: READ may carry NBD_CMD_FLAG_DF.
    public var structuredReplies = false
    /// The metadata contexts selected for this export; with any, BLOCK_STATUS is allowed.
    public var metaContexts: NBDMetaContexts = []
    public var blockStatus: Bool { !metaContexts.isEmpty }

    public init(sizeBytes: UInt64, readOnly: Bool, maxPayloadBytes: Int, minimumBlockBytes: Int) {
        self.sizeBytes = sizeBytes
        self.readOnly = readOnly
        self.maxPayloadBytes = maxPayloadBytes
        self.minimumBlockBytes = minimumBlockBytes
    }

    /// proto.md: unknown commands and flags not documented for a command are EINVAL; a READ or WRITE beyond
    /// the maximum payload is EOVERFLOW (a WRITE's payload is skipped first, or the connection dropped when it
    /// is beyond 32 MiB); writes and trims on a read-only export are EPERM; a write beyond the end is ENOSPC,
    /// any other request beyond the end EINVAL.
    public func check(_ r: NBDRequestHeader) -> NBDRequestCheck {
        let error = self.error(r)
        if error == 0 { return .accept }
        // A refused write's payload must still be read past to stay in step with the stream.
        if r.type == NBDWire.cmdWrite && Int(r.length) > NBDWire.maxSkippedPayloadBytes { return .disconnect }
        return .refuse(error)
    }

    /// 0 when the request may go to the store.
    func error(_ r: NBDRequestHeader) -> UInt32 {
        if r.type == NBDWire.cmdWrite && Int(r.length) > maxPayloadBytes { return NBDWire.errOverflow }
        var allowed: UInt16 = NBDWire.cmdFlagFUA
        switch r.type {
        case NBDWire.cmdWrite, NBDWire.cmdTrim, NBDWire.cmdFlush: break
        case NBDWire.cmdRead: if structuredReplies { allowed |= NBDWire.cmdFlagDF }
        case NBDWire.cmdWriteZeroes: allowed |= NBDWire.cmdFlagNoHole | NBDWire.cmdFlagFastZero
        case NBDWire.cmdCache: allowed = 0
        case NBDWire.cmdBlockStatus:
            // proto.md: a client that selected no metadata context SHOULD get EINVAL; a zero length is invalid.
            guard blockStatus, r.length > 0 else { return NBDWire.errInvalid }
            allowed = NBDWire.cmdFlagReqOne
        default: return NBDWire.errInvalid
        }
        if r.flags & ~allowed != 0 { return NBDWire.errInvalid }
        if r.type == NBDWire.cmdFlush { return 0 }
        if r.type == NBDWire.cmdRead && Int(r.length) > maxPayloadBytes { return NBDWire.errOverflow }
        let reads = r.type == NBDWire.cmdRead || r.type == NBDWire.cmdBlockStatus || r.type == NBDWire.cmdCache
        if !reads && readOnly { return NBDWire.errPerm }
        let (end, overflow) = r.offset.addingReportingOverflow(UInt64(r.length))
        if overflow || end > sizeBytes {
            return r.type == NBDWire.cmdWrite || r.type == NBDWire.cmdWriteZeroes ? NBDWire.errNoSpace : NBDWire.errInvalid
        }
        if minimumBlockBytes > 1 {
            let mask = UInt64(minimumBlockBytes - 1)
            if r.offset & mask != 0 || UInt64(r.length) & mask != 0 { return NBDWire.errInvalid }
        }
        return 0
    }
}

/// Encoders for the handshake's messages. They build byte arrays: the handshake is not the I/O path.
public enum NBDEncode {
    public static func greeting() -> [UInt8] {
        var b = [UInt8]()
        b.reserveCapacity(NBDWire.greetingBytes)
        append64(&b, NBDWire.initMagic)
        append64(&b, NBDWire.optionMagic)
        append16(&b, NBDWire.flagFixedNewstyle | NBDWire.flagNoZeroes)
        return b
    }

    public static func optionReply(option: UInt32, type: UInt32, data: [UInt8] = []) -> [UInt8] {
        var b = [UInt8]()
        b.reserveCapacity(NBDWire.optionReplyHeaderBytes + data.count)
        append64(&b, NBDWire.optionReplyMagic)
        append32(&b, option)
        append32(&b, type)
        append32(&b, UInt32(data.count))
        b += data
        return b
    }

    /// An error reply carrying a message for the user (proto.md: error replies MAY carry a string).
    public static func optionError(option: UInt32, type: UInt32, message: String) -> [UInt8] {
        optionReply(option: option, type: type, data: Array(message.utf8.prefix(NBDWire.maxStringBytes)))
    }

    public static func server(option: UInt32, name: String, description: String) -> [UInt8] {
        var d = [UInt8]()
        let n = Array(name.utf8)
        append32(&d, UInt32(n.count))
        d += n
        d += Array(description.utf8.prefix(NBDWire.maxStringBytes))
        return optionReply(option: option, type: NBDWire.repServer, data: d)
    }

    public static func infoExport(option: UInt32, size: UInt64, flags: UInt16) -> [UInt8] {
        var d = [UInt8]()
        append16(&d, NBDWire.infoExport)
        append64(&d, size)
        append16(&d, flags)
        return optionReply(option: option, type: NBDWire.repInfo, data: d)
    }

    public static func infoString(option: UInt32, type: UInt16, _ text: String) -> [UInt8] {
        var d = [UInt8]()
        append16(&d, type)
        d += Array(text.utf8.prefix(NBDWire.maxStringBytes))
        return optionReply(option: option, type: NBDWire.repInfo, data: d)
    }

    public static func infoBlockSize(option: UInt32, minimum: UInt32, preferred: UInt32, maximum: UInt32) -> [UInt8] {
        var d = [UInt8]()
        append16(&d, NBDWire.infoBlockSize)
        append32(&d, minimum)
        append32(&d, preferred)
        append32(&d, maximum)
        return optionReply(option: option, type: NBDWire.repInfo, data: d)
    }

    /// The answer to NBD_OPT_EXPORT_NAME.
    public static func exportNameReply(size: UInt64, flags: UInt16, noZeroes: Bool) -> [UInt8] {
        var b = [UInt8]()
        append64(&b, size)
        append16(&b, flags)
        if !noZeroes { b += [UInt8](repeating: 0, count: NBDWire.exportNameReplyZeroBytes) }
        return b
    }

    static func append16(_ b: inout [UInt8], _ v: UInt16) { b.append(UInt8(v >> 8)); b.append(UInt8(v & 0xFF)) }
    static func append32(_ b: inout [UInt8], _ v: UInt32) { append16(&b, UInt16(v >> 16)); append16(&b, UInt16(v & 0xFFFF)) }
    static func append64(_ b: inout [UInt8], _ v: UInt64) { append32(&b, UInt32(v >> 32)); append32(&b, UInt32(v & 0xFFFF_FFFF)) }
}

/// Writes a structured reply chunk's header at `p`: 20 bytes, then `length` bytes of payload follow.
@inline(__always)
public func nbdStructuredReplyHeader(_ p: UnsafeMutableRawPointer, flags: UInt16, type: UInt16, cookie: UInt64,
                                     length: UInt32) {
    put32(p, 0, NBDWire.structuredReplyMagic)
    put16(p, 4, flags)
    put16(p, 6, type)
    put64(p, 8, cookie)
    put32(p, 16, length)
}

/// Writes a simple reply (magic, error, cookie) at `p`: 16 bytes.
@inline(__always)
public func nbdSimpleReply(_ p: UnsafeMutableRawPointer, error: UInt32, cookie: UInt64) {
    put32(p, 0, NBDWire.simpleReplyMagic)
    put32(p, 4, error)
    put64(p, 8, cookie)
}


/// The metadata contexts a client selected with NBD_OPT_SET_META_CONTEXT. A BLOCK_STATUS reply carries one
/// chunk per selected context, in the order of their IDs.
public struct NBDMetaContexts: OptionSet, Equatable, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let baseAllocation = NBDMetaContexts(rawValue: 1 << 0)
    public static let allocationDepth = NBDMetaContexts(rawValue: 1 << 1)

    /// Every context served, in ID order, with its name and ID.
    public static let served: [(context: NBDMetaContexts, name: String, id: UInt32)] = [
        (.baseAllocation, NBDWire.baseAllocation, NBDWire.baseAllocationID),
        (.allocationDepth, NBDWire.allocationDepth, NBDWire.allocationDepthID),
    ]

    /// How many chunks a BLOCK_STATUS reply carries.
    public var count: Int { rawValue.nonzeroBitCount }

    /// The ID of the `lane`th selected context (0-based, ID order).
    public func id(lane: Int) -> UInt32 {
        var k = 0
        for s in NBDMetaContexts.served where contains(s.context) {
            if k == lane { return s.id }
            k += 1
        }
        preconditionFailure("no metadata context lane \(lane) in \(rawValue)")
    }

    /// A BLOCK_STATUS reply is built in its buffer slot, one region per selected context: the chunk header, the
    /// context ID, then the descriptors. Where region `lane` starts (8-byte aligned).
    public func laneOffset(_ lane: Int, slotBytes: Int) -> Int { lane * laneBytes(slotBytes: slotBytes) }

    public func laneBytes(slotBytes: Int) -> Int { slotBytes / Swift.max(1, count) & ~7 }

    /// Where a region's descriptors start within it: after the chunk header and the context ID.
    public static let descriptorsStartBytes = NBDWire.structuredReplyHeaderBytes + NBDWire.blockStatusContextBytes

    /// Where descriptor `index` of region `lane` sits in the slot.
    public func descriptorOffset(lane: Int, index: Int, slotBytes: Int) -> Int {
        laneOffset(lane, slotBytes: slotBytes) + NBDMetaContexts.descriptorsStartBytes + index * NBDWire.blockDescriptorBytes
    }

    /// Descriptors one region holds.
    public func laneCapacity(slotBytes: Int) -> Int {
        (laneBytes(slotBytes: slotBytes) - NBDMetaContexts.descriptorsStartBytes) / NBDWire.blockDescriptorBytes
    }
}
