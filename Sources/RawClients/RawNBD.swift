// A raw NBD client over RawConnection: the fixed newstyle handshake by NBD_OPT_EXPORT_NAME, then
// requests with simple replies. For bytes no real client sends (bad magic, garbage, oversized requests).

import Foundation

final class RawNBDClient {
    let connection: RawConnection
    private(set) var exportSize: UInt64 = 0
    private(set) var transmissionFlags: UInt16 = 0

    static let requestMagic: [UInt8] = [0x25, 0x60, 0x95, 0x13]

    /// Connects and reads the server's 18-byte greeting.
    init(_ endpoint: Endpoint) throws {
        connection = try RawConnection(endpoint)
        guard let greeting = connection.receive(exactly: 18), Array(greeting[0..<8]) == Array("NBDMAGIC".utf8) else {
            throw E2EError("no NBD greeting from \(endpoint)")
        }
    }

    /// Client flags FIXED_NEWSTYLE|NO_ZEROES, then NBD_OPT_EXPORT_NAME.
    func attach(export: String) throws {
        let name = Array(export.utf8)
        connection.send(be32(3) + Array("IHAVEOPT".utf8) + be32(1) + be32(name.count) + name)
        guard let r = connection.receive(exactly: 10) else { throw E2EError("export \(export) refused") }
        exportSize = r[0..<8].reduce(0) { $0 << 8 | UInt64($1) }
        transmissionFlags = UInt16(r[8]) << 8 | UInt16(r[9])
    }

    func request(type: UInt16, flags: UInt16 = 0, cookie: UInt64, offset: UInt64, length: UInt32,
                 payload: [UInt8] = []) {
        connection.send(RawNBDClient.requestMagic + be16(flags) + be16(type) + be64(cookie) + be64(offset)
                        + be32(Int(length)) + payload)
    }

    /// A simple reply: (error, cookie), then `dataBytes` of data on success. nil when the server closed.
    func reply(dataBytes: Int = 0) -> (error: UInt32, cookie: UInt64, data: [UInt8])? {
        guard let h = connection.receive(exactly: 16), Array(h[0..<4]) == [0x67, 0x44, 0x66, 0x98] else { return nil }
        let error = h[4..<8].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        let cookie = h[8..<16].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        if error != 0 || dataBytes == 0 { return (error, cookie, []) }
        guard let d = connection.receive(exactly: dataBytes) else { return nil }
        return (error, cookie, d)
    }

    private func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xFF)] }
    private func be32(_ v: Int) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (24 - 8 * $0)) } }
    private func be64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (56 - 8 * UInt64($0))) } }
}
