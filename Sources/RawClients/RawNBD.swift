// The one raw NBD client, over RawConnection: the fixed newstyle handshake by NBD_OPT_EXPORT_NAME, then
// requests with simple replies, in the target's own NBD vocabulary (Target's NBDWire). For bytes no real
// client sends (bad magic, garbage, oversized requests) in the end-to-end tests, and for perf/livefuzz's
// openings, streams and probes.

import ISCSIWire
import Target
import TestSupport

public final class RawNBDClient {
    public let connection: RawConnection
    public private(set) var exportSize: UInt64 = 0
    public private(set) var transmissionFlags: UInt16 = 0

    /// NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES, as the client sends them after the greeting.
    public static let clientFlags = bigEndian(UInt64(NBDWire.clientFixedNewstyle | NBDWire.clientNoZeroes),
                                              NBDWire.clientFlagsBytes)

    /// NBD_OPT_EXPORT_NAME for `export` (the empty name: the first LUN).
    public static func exportNameOption(_ export: String) -> [UInt8] {
        let name = Array(export.utf8)
        return bigEndian(NBDWire.optionMagic, 8) + bigEndian(UInt64(NBDWire.optExportName), 4)
            + bigEndian(UInt64(name.count), 4) + name
    }

    /// What a client sends after the greeting to attach `export`: its flags, then NBD_OPT_EXPORT_NAME.
    public static func opening(export: String) -> [UInt8] { clientFlags + exportNameOption(export) }

    /// One request header (28 bytes), through NBDWire's encoder.
    public static func requestHeader(type: UInt16, flags: UInt16 = 0, cookie: UInt64, offset: UInt64,
                                     length: UInt32) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: NBDWire.requestBytes)
        b.withUnsafeMutableBytes {
            NBDRequestHeader(flags: flags, type: type, cookie: cookie, offset: offset, length: length).encode(to: $0.baseAddress!)
        }
        return b
    }

    /// `value`'s low `bytes` bytes, most significant first.
    static func bigEndian(_ value: UInt64, _ bytes: Int) -> [UInt8] {
        (0..<bytes).map { UInt8(truncatingIfNeeded: value >> UInt64(8 * (bytes - 1 - $0))) }
    }

    /// Connects (from `sourceAddress` when given) and reads the server's greeting; each wait is bounded by
    /// `timeoutSeconds`.
    public init(_ endpoint: Endpoint, timeoutSeconds: Double = Double(RawConnection.answerTimeoutSeconds),
                sourceAddress: String? = nil) throws {
        connection = try RawConnection(endpoint, timeoutSeconds: timeoutSeconds, sourceAddress: sourceAddress)
        guard let greeting = connection.receive(exactly: NBDWire.greetingBytes),
              greeting.withUnsafeBytes({ be64($0.baseAddress!, 0) }) == NBDWire.initMagic else {
            throw RawClientError("no NBD greeting from \(endpoint)")
        }
    }

    /// Client flags FIXED_NEWSTYLE|NO_ZEROES, then NBD_OPT_EXPORT_NAME; reads the export's size and flags.
    public func attach(export: String) throws {
        connection.send(RawNBDClient.opening(export: export))
        guard let r = connection.receive(exactly: NBDWire.exportNameReplyBytes) else {
            throw RawClientError("export \(export) refused")
        }
        exportSize = r.withUnsafeBytes { be64($0.baseAddress!, 0) }
        transmissionFlags = r.withUnsafeBytes { be16($0.baseAddress!, 8) }
    }

    public func request(type: UInt16, flags: UInt16 = 0, cookie: UInt64, offset: UInt64, length: UInt32,
                        payload: [UInt8] = []) {
        connection.send(RawNBDClient.requestHeader(type: type, flags: flags, cookie: cookie, offset: offset,
                                                   length: length) + payload)
    }

    /// A simple reply: (error, cookie), then `dataBytes` of data on success. nil when the server closed.
    public func reply(dataBytes: Int = 0) -> (error: UInt32, cookie: UInt64, data: [UInt8])? {
        guard let h = connection.receive(exactly: NBDWire.simpleReplyBytes) else { return nil }
        let (magic, error, cookie) = h.withUnsafeBytes { (be32($0.baseAddress!, 0), be32($0.baseAddress!, 4), be64($0.baseAddress!, 8)) }
        guard magic == NBDWire.simpleReplyMagic else { return nil }
        if error != 0 || dataBytes == 0 { return (error, cookie, []) }
        guard let d = connection.receive(exactly: dataBytes) else { return nil }
        return (error, cookie, d)
    }
}
