#if canImport(Glibc)
import Glibc
#endif
import Testing
import SheepProtocol

// The one endpoint-to-sockaddr builder that the blocking client and the store's io_uring channels share.

@Suite struct SheepSocketAddressTests {
    @Test func unixPathFillsSunPathAndTheWholeStructLength() throws {
        let a = try SheepSocketAddress.resolve(.unix(path: "/run/sheep/sock"))
        #expect(a.count == 1)
        #expect(a[0].family == AF_UNIX)
        #expect(Int(a[0].length) == MemoryLayout<sockaddr_un>.size)
        let path = withUnsafeBytes(of: a[0].storage) { raw in
            String(decoding: raw[MemoryLayout<sa_family_t>.size...].prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        #expect(path == "/run/sheep/sock")
    }

    @Test func unixPathThatDoesNotFitIsRefused() {
        #expect(throws: SheepClientError.self) {
            _ = try SheepSocketAddress.resolve(.unix(path: String(repeating: "p", count: 108)))
        }
    }

    @Test func tcpIPv4GivesTheAddressAndPortInNetworkOrder() throws {
        let a = try SheepSocketAddress.resolve(.tcp(host: "127.0.0.1", port: 7000))
        #expect(a.first?.family == AF_INET)
        let (port, addr) = withUnsafeBytes(of: a[0].storage) { raw in
            raw.baseAddress!.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                (UInt16(bigEndian: $0.pointee.sin_port), UInt32(bigEndian: $0.pointee.sin_addr.s_addr))
            }
        }
        #expect(port == 7000)
        #expect(addr == 0x7F00_0001)
        #expect(Int(a[0].length) == MemoryLayout<sockaddr_in>.size)
    }

    @Test func tcpIPv6GivesAnIPv6Address() throws {
        let a = try SheepSocketAddress.resolve(.tcp(host: "::1", port: 7001))
        #expect(a.first?.family == AF_INET6)
        let port = withUnsafeBytes(of: a[0].storage) { raw in
            raw.baseAddress!.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin6_port) }
        }
        #expect(port == 7001)
        #expect(Int(a[0].length) == MemoryLayout<sockaddr_in6>.size)
    }

    @Test func endpointPrintsAsTheSpecSpellsIt() {
        #expect(SheepBackingSpec.Endpoint.unix(path: "/s").description == "unix:/s")
        #expect(SheepBackingSpec.Endpoint.tcp(host: "::1", port: 7000).description == "tcp:[::1]:7000")
        #expect(SheepBackingSpec.Endpoint.tcp(host: "10.0.0.1", port: 7000).description == "tcp:10.0.0.1:7000")
    }
}

@Suite struct SheepHeaderCoreTests {
    /// Request and response share the first 16 bytes (§2): the same fields land at the same offsets.
    @Test func requestAndResponseShareTheCommonFields() {
        var q = SheepRequestHeader()
        var r = SheepResponseHeader()
        for h in [0, 1] {
            let (v, op, f, e, id, len): (UInt8, UInt8, UInt16, UInt32, UInt32, UInt32) =
                h == 0 ? (1, 0x02, 0x0007, 0xA1B2_C3D4, 0x1122_3344, 0x5566_7788) : (0xFF, 0x80, 0xFFFF, 1, 2, 3)
            q.protoVersion = v; r.protoVersion = v
            q.opcode = SheepOpcode(rawValue: op); r.opcode = SheepOpcode(rawValue: op)
            q.flags = SheepFlags(rawValue: f); r.flags = SheepFlags(rawValue: f)
            q.epoch = e; r.epoch = e
            q.id = id; r.id = id
            q.dataLength = len; r.dataLength = len
            #expect(Array(q.bytes[0..<16]) == Array(r.bytes[0..<16]))
            #expect(Array(q.bytes[16...]) == [UInt8](repeating: 0, count: SheepWire.headerSizeBytes - 16))
            let back = SheepResponseHeader(from: q.bytes)
            #expect(back.id == id && back.dataLength == len && back.epoch == e && back.flags.rawValue == f)
        }
    }
}
