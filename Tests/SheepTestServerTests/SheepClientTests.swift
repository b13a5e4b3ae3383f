#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import SheepTestServer
import SheepProtocol

// The one blocking sheep client (SheepProtocol) as the store's control plane uses it: replies into a
// caller's buffer, the stream kept in step, and connection failures as errors.

@Suite struct SheepClientCalls {
    @Test func replyIntoAShortBufferDropsTheRestAndKeepsTheStreamInStep() throws {
        let data = pattern(9, 200_000)
        let dst = UnsafeMutableRawBufferPointer.allocate(byteCount: 100, alignment: 8)
        defer { dst.deallocate() }
        try withServer { server in
            let c = try server.client()
            let oid = SheepOID.data(vid: try c.newVDI(name: "vol", size: 1 << 30).header.vdiID, index: 0)
            #expect(try c.writeObject(oid, offset: 0, data: data, create: true).result == .success)
            let (h, got) = try c.call(.readObject(id: 0, oid: oid, offset: 0, length: UInt32(data.count)), replyInto: dst)
            #expect(h.result == .success && h.dataLength == UInt32(data.count))
            #expect(got == 100 && Array(dst) == Array(data[0..<100]))
            // The dropped 199,900 bytes did not stay in the socket: the next reply is read as a reply.
            let next = try c.readObject(oid, offset: 4096, length: 512)
            #expect(next.result == .success && next.data == Array(data[4096..<4608]))
        }
    }

    @Test func aClosedPortIsAConnectError() throws {
        // Bound but not listening: the kernel refuses a connection to it for as long as this test holds it.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &a) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        #expect(bound)
        let port = UInt16(bigEndian: a.sin_port)
        #expect {
            _ = try SheepClient(endpoint: .tcp(host: "127.0.0.1", port: port), connectTimeoutSeconds: 1)
        } throws: { error in
            guard case SheepClientError.connect(let why) = error else { return false }
            return why.contains("tcp:127.0.0.1:\(port)")
        }
    }
}
