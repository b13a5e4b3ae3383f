// RawSocket's peek and detach, and readPDU's recognition of digests a target put on a PDU that carries none
// (the final Login Response, as ringtgtd once sent it), against a loopback peer this test holds (LoopbackPeer, RawSocketTests.swift).

import ISCSIWire
import RawClients
import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite struct RawPeekAndDigestTests {
    static let answerSeconds = RawSocketTests.answerSeconds

    /// A Login Response BHS with `data` (unpadded length in the header) and what follows it on the wire.
    static func loginResponse(data: [UInt8], headerDigest: Bool, dataDigest: Bool) -> (bhs: [UInt8], wire: [UInt8]) {
        var bhs = [UInt8](repeating: 0, count: bhsBytes)
        bhs[0] = ISCSIOpcode.loginResponse
        bhs[1] = 0x87
        bhs.withUnsafeMutableBytes { put24($0.baseAddress!, 5, UInt32(data.count)) }
        let padded = data + [UInt8](repeating: 0, count: Framing.padLength(data.count))
        var wire = bhs
        if headerDigest { wire += withUnsafeBytes(of: CRC32C.checksum(bhs).littleEndian, Array.init) }
        wire += padded
        if dataDigest { wire += withUnsafeBytes(of: CRC32C.checksum(padded).littleEndian, Array.init) }
        return (bhs, wire)
    }

    @Test func peekDoesNotConsume() throws {
        let peer = try LoopbackPeer()
        let s = try RawSocket(peer.endpoint)
        peer.accept()
        peer.send([9, 8, 7])
        #expect(s.peek(2, deadline: monotonicSeconds() + Self.answerSeconds) == .bytes([9, 8]))
        #expect(s.read(3, deadline: monotonicSeconds() + Self.answerSeconds) == .bytes([9, 8, 7]))
        #expect(s.peek(1, deadline: monotonicSeconds() + RawSocketTests.shortWaitSeconds) == .timeout)
    }

    @Test func detachHandsOverTheDescriptorOnlyWhenNothingIsUnread() throws {
        let peer = try LoopbackPeer()
        let s = try RawSocket(peer.endpoint)
        peer.accept()
        peer.send([1, 2])
        #expect(s.read(2, deadline: monotonicSeconds() + Self.answerSeconds) == .bytes([1, 2]))
        let fd = try s.detach()
        #expect(s.fd == -1)
        // The descriptor is still connected and now the caller's: the peer's next bytes arrive on it.
        peer.send([3])
        var b: UInt8 = 0
        #expect(recv(fd, &b, 1, 0) == 1 && b == 3)
        close(fd)

        let peer2 = try LoopbackPeer()
        let s2 = try RawSocket(peer2.endpoint)
        peer2.accept()
        peer2.send([1, 2, 3])
        #expect(s2.peek(3, deadline: monotonicSeconds() + Self.answerSeconds) == .bytes([1, 2, 3]))
        #expect(throws: RawClientError.self) { _ = try s2.detach() }
        #expect(s2.fd == -1, "a socket that refused to hand over its descriptor has closed it")
    }

    @Test(arguments: [(true, true), (true, false), (false, false)])
    func strayLoginResponseDigestsAreRecognisedAndSkipped(sent: (header: Bool, data: Bool)) throws {
        let peer = try LoopbackPeer()
        let s = try RawSocket(peer.endpoint)
        peer.accept()
        let text = Array("HeaderDigest=CRC32C\0DataDigest=CRC32C\0".utf8)
        let (bhs, wire) = Self.loginResponse(data: text, headerDigest: sent.header, dataDigest: sent.data)
        // A NOP-In after it: it must be read as the next PDU, not as the rest of the Login Response.
        var nop = [UInt8](repeating: 0, count: bhsBytes)
        nop[0] = ISCSIOpcode.nopIn
        peer.send(wire + nop)
        guard case .pdu(let p) = try s.readPDU(deadline: monotonicSeconds() + Self.answerSeconds, strayDigests: (true, true)) else {
            Issue.record("no Login Response")
            return
        }
        #expect(p.header == bhs)
        #expect(p.data == text)
        #expect(p.hadStrayDigests == sent.header)
        guard case .pdu(let next) = try s.readPDU(deadline: monotonicSeconds() + Self.answerSeconds) else {
            Issue.record("no NOP-In after the Login Response")
            return
        }
        #expect(next.opcode == ISCSIOpcode.nopIn)
    }

    @Test func withoutToleranceAStrayDigestIsReadAsTheNextPDU() throws {
        let peer = try LoopbackPeer()
        let s = try RawSocket(peer.endpoint)
        peer.accept()
        let (_, wire) = Self.loginResponse(data: [], headerDigest: true, dataDigest: false)
        peer.send(wire)
        guard case .pdu(let p) = try s.readPDU(deadline: monotonicSeconds() + Self.answerSeconds) else {
            Issue.record("no Login Response")
            return
        }
        #expect(!p.hadStrayDigests)
        #expect(s.peek(Framing.digestBytes, deadline: monotonicSeconds() + Self.answerSeconds) != .timeout,
                "the digest is still unread")
    }
}
