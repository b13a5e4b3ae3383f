// The fixed newstyle handshake as a value: it takes the client's flags and options and returns what to
// send and what happens next. The connection (NBDConnection.swift) carries the steps out.

import Floor
import ISCSIWire
import SCSI
public struct NBDHandshake: Sendable {
    /// States:
    public enum State: Sendable {
        /// The greeting is out; the client's 32-bit flags come next.
        case awaitingClientFlags
        /// Options are exchanged until one ends the handshake.
        case haggling
        /// An export was chosen: transmission phase (the handshake is done with).
        case transmission
        /// The handshake failed or was aborted; the connection closes.
        case closed
    }

    /// What follows a step.
    public enum Next: Equatable, Sendable {
        /// Send the reply and read the next option.
        case proceed
        /// Send the reply, then enter the transmission phase on this export.
        case transmission(NBDExport)
        /// Send the reply (if any), then close (NBD_OPT_ABORT, or an export NBD_OPT_EXPORT_NAME cannot refuse).
        case close(reason: String)
    }

    public struct Step: Equatable, Sendable {
        public var reply: [UInt8]
        public var next: Next
    }

    /// Option data larger than this is skipped and answered NBD_REP_ERR_TOO_BIG (names are at most 4 KiB).
    public static let maxOptionDataBytes = 8192
    /// A client that keeps haggling past this many options is cut off (proto.md allows a hard disconnect on
    /// what looks like denial of service); the handshake timeout bounds the time as well.
    public static let maxOptions = 1024

    var state: State = .awaitingClientFlags
    public private(set) var noZeroes = false
    var optionsSeen = 0
    /// NBD_OPT_STRUCTURED_REPLY was acknowledged.
    public private(set) var structuredReplies = false
    /// The export the last NBD_OPT_SET_META_CONTEXT selected `selectedContexts` on (nil: none selected).
    var metaContextExport: NBDExport? = nil
    var selectedContexts: NBDMetaContexts = []

    public init() {}

    public var isInTransmission: Bool { state == .transmission }

    /// What the transmission phase on `export` allows, given what was negotiated.
    public func limits(for export: NBDExport) -> NBDExportLimits {
        var l = export.limits
        l.structuredReplies = structuredReplies
        // A context selected for another export does not carry over (proto.md: the client selects contexts
        // for the export it then goes to).
        l.metaContexts = metaContextExport == export ? selectedContexts : []
        return l
    }

    private func transmissionFlags(_ export: NBDExport) -> UInt16 {
        structuredReplies ? export.transmissionFlags | NBDWire.transSendDF : export.transmissionFlags
    }

    /// The client's flags. Unknown bits mean a client we do not understand: proto.md says drop the connection.
    public mutating func clientFlags(_ flags: UInt32) -> Step {
        precondition(state == .awaitingClientFlags)
        let known = NBDWire.clientFixedNewstyle | NBDWire.clientNoZeroes
        if flags & ~known != 0 {
            state = .closed
            return Step(reply: [], next: .close(reason: "unknown NBD client flags 0x\(String(flags, radix: 16))"))
        }
        noZeroes = flags & NBDWire.clientNoZeroes != 0
        state = .haggling
        return Step(reply: [], next: .proceed)
    }

    /// Option data that was too large to keep (skipped by the connection).
    public mutating func oversizedOption(_ option: UInt32) -> Step {
        if let stop = countOption() { return stop }
        if option == NBDWire.optExportName {
            state = .closed
            return Step(reply: [], next: .close(reason: "NBD_OPT_EXPORT_NAME with an oversized name"))
        }
        return Step(reply: NBDEncode.optionError(option: option, type: NBDWire.repErrTooBig,
                                                 message: "option data is larger than \(NBDHandshake.maxOptionDataBytes) bytes"),
                    next: .proceed)
    }

    public mutating func option(_ option: UInt32, data: [UInt8], catalog: NBDExportCatalog) -> Step {
        precondition(state == .haggling)
        if let stop = countOption() { return stop }
        switch option {
        case NBDWire.optExportName:
            // No error can be returned here: an unknown or refused export ends the session.
            let name = String(decoding: data, as: UTF8.self)
            switch catalog.lookup(name) {
            case .found(let e):
                state = .transmission
                return Step(reply: NBDEncode.exportNameReply(size: e.sizeBytes, flags: transmissionFlags(e),
                                                             noZeroes: noZeroes),
                            next: .transmission(e))
            case .denied:
                state = .closed
                return Step(reply: [], next: .close(reason: "NBD export '\(name)' refused by the target's ACL"))
            case .unknown:
                state = .closed
                return Step(reply: [], next: .close(reason: "no NBD export '\(name)'"))
            }
        case NBDWire.optAbort:
            state = .closed
            return Step(reply: NBDEncode.optionReply(option: option, type: NBDWire.repAck), next: .close(reason: "NBD_OPT_ABORT"))
        case NBDWire.optList:
            if !data.isEmpty {
                return Step(reply: NBDEncode.optionError(option: option, type: NBDWire.repErrInvalid,
                                                         message: "NBD_OPT_LIST takes no data"), next: .proceed)
            }
            var reply: [UInt8] = []
            for e in catalog.visible { reply += NBDEncode.server(option: option, name: e.name, description: e.description) }
            reply += NBDEncode.optionReply(option: option, type: NBDWire.repAck)
            return Step(reply: reply, next: .proceed)
        case NBDWire.optInfo, NBDWire.optGo:
            return infoOrGo(option, data, catalog)
        case NBDWire.optStartTLS:
            return Step(reply: NBDEncode.optionError(option: option, type: NBDWire.repErrUnsup,
                                                     message: "TLS is not supported by this server"), next: .proceed)
        case NBDWire.optStructuredReply:
            if !data.isEmpty {
                return Step(reply: NBDEncode.optionError(option: option, type: NBDWire.repErrInvalid,
                                                         message: "NBD_OPT_STRUCTURED_REPLY takes no data"), next: .proceed)
            }
            structuredReplies = true
            return Step(reply: NBDEncode.optionReply(option: option, type: NBDWire.repAck), next: .proceed)
        case NBDWire.optListMetaContext, NBDWire.optSetMetaContext:
            return metaContext(option, data, catalog)
        default:
            return Step(reply: NBDEncode.optionReply(option: option, type: NBDWire.repErrUnsup), next: .proceed)
        }
    }

    /// NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT: 32-bit name length, name, 32-bit query count,
    /// then each query as a 32-bit length and a string. The contexts are base:allocation and
    /// qemu:allocation-depth: LIST matches each by its namespace ("base:", "qemu:") or its name (no query lists
    /// both), SET selects them by their names only.
    private mutating func metaContext(_ option: UInt32, _ data: [UInt8], _ catalog: NBDExportCatalog) -> Step {
        func reply(_ type: UInt32, _ why: String) -> Step {
            Step(reply: NBDEncode.optionError(option: option, type: type, message: why), next: .proceed)
        }
        let set = option == NBDWire.optSetMetaContext
        // SET replaces the selection even when it fails.
        if set { metaContextExport = nil; selectedContexts = [] }
        guard structuredReplies else { return reply(NBDWire.repErrInvalid, "negotiate structured replies first") }
        func u32(_ at: Int) -> Int? {
            guard at >= 0, at + 4 <= data.count else { return nil }
            return Int(data[at]) << 24 | Int(data[at + 1]) << 16 | Int(data[at + 2]) << 8 | Int(data[at + 3])
        }
        guard let nameLength = u32(0), nameLength <= NBDWire.maxStringBytes, 4 + nameLength <= data.count,
              let count = u32(4 + nameLength) else { return reply(NBDWire.repErrInvalid, "bad option data") }
        let name = String(decoding: data[4..<(4 + nameLength)], as: UTF8.self)
        var at = 8 + nameLength
        var queries: [String] = []
        for _ in 0..<min(count, data.count) {
            guard let length = u32(at), length <= NBDWire.maxStringBytes, at + 4 + length <= data.count else {
                return reply(NBDWire.repErrInvalid, "bad query")
            }
            queries.append(String(decoding: data[(at + 4)..<(at + 4 + length)], as: UTF8.self))
            at += 4 + length
        }
        guard queries.count == count, at == data.count else { return reply(NBDWire.repErrInvalid, "bad query count") }
        let export: NBDExport
        switch catalog.lookup(name) {
        case .found(let e): export = e
        case .denied: return reply(NBDWire.repErrPolicy, "export '\(name)' is not available to this client")
        case .unknown: return reply(NBDWire.repErrUnknown, "no export '\(name)'")
        }
        var out: [UInt8] = []
        var selected: NBDMetaContexts = []
        for s in NBDMetaContexts.served {
            let namespace = s.name.prefix { $0 != ":" } + ":"
            let matches = set
                ? queries.contains(s.name)
                : queries.isEmpty || queries.contains { $0 == namespace || $0 == s.name }
            guard matches else { continue }
            // LIST's context IDs are reserved (0); SET's are the IDs block status replies carry.
            var d: [UInt8] = []
            NBDEncode.append32(&d, set ? s.id : 0)
            d += Array(s.name.utf8)
            out += NBDEncode.optionReply(option: option, type: NBDWire.repMetaContext, data: d)
            selected.insert(s.context)
        }
        if set && !selected.isEmpty {
            metaContextExport = export
            selectedContexts = selected
        }
        out += NBDEncode.optionReply(option: option, type: NBDWire.repAck)
        return Step(reply: out, next: .proceed)
    }

    private mutating func countOption() -> Step? {
        optionsSeen += 1
        if optionsSeen > NBDHandshake.maxOptions {
            state = .closed
            return Step(reply: [], next: .close(reason: "more than \(NBDHandshake.maxOptions) NBD options"))
        }
        return nil
    }

    /// NBD_OPT_INFO and NBD_OPT_GO: 32-bit name length, name, 16-bit count of information requests, requests.
    private mutating func infoOrGo(_ option: UInt32, _ data: [UInt8], _ catalog: NBDExportCatalog) -> Step {
        func invalid(_ why: String) -> Step {
            Step(reply: NBDEncode.optionError(option: option, type: NBDWire.repErrInvalid, message: why), next: .proceed)
        }
        guard data.count >= 6 else { return invalid("option data too short") }
        let nameLength = Int(data[0]) << 24 | Int(data[1]) << 16 | Int(data[2]) << 8 | Int(data[3])
        guard nameLength <= data.count - 6, nameLength <= NBDWire.maxStringBytes else { return invalid("bad name length") }
        let name = String(decoding: data[4..<(4 + nameLength)], as: UTF8.self)
        let countAt = 4 + nameLength
        let count = Int(data[countAt]) << 8 | Int(data[countAt + 1])
        guard data.count == countAt + 2 + 2 * count else { return invalid("bad information request count") }
        var requested: Set<UInt16> = []
        for i in 0..<count {
            let at = countAt + 2 + 2 * i
            requested.insert(UInt16(data[at]) << 8 | UInt16(data[at + 1]))
        }
        let export: NBDExport
        switch catalog.lookup(name) {
        case .found(let e): export = e
        case .denied:
            return Step(reply: NBDEncode.optionError(option: option, type: NBDWire.repErrPolicy,
                                                     message: "export '\(name)' is not available to this client"),
                        next: .proceed)
        case .unknown:
            return Step(reply: NBDEncode.optionError(option: option, type: NBDWire.repErrUnknown,
                                                     message: "no export '\(name)'"), next: .proceed)
        }
        var reply = NBDEncode.infoExport(option: option, size: export.sizeBytes, flags: transmissionFlags(export))
        if requested.contains(NBDWire.infoName) {
            reply += NBDEncode.infoString(option: option, type: NBDWire.infoName, export.name)
        }
        if requested.contains(NBDWire.infoDescription) {
            reply += NBDEncode.infoString(option: option, type: NBDWire.infoDescription, export.description)
        }
        // Always sent: the limits are enforced, so the client should know them.
        reply += NBDEncode.infoBlockSize(option: option, minimum: UInt32(export.minimumBlockBytes),
                                         preferred: UInt32(export.preferredBlockBytes),
                                         maximum: UInt32(export.maxPayloadBytes))
        reply += NBDEncode.optionReply(option: option, type: NBDWire.repAck)
        if option == NBDWire.optGo {
            state = .transmission
            return Step(reply: reply, next: .transmission(export))
        }
        return Step(reply: reply, next: .proceed)
    }
}
