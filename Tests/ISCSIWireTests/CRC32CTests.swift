import Testing
@testable import ISCSIWire

@Suite struct CRC32CTests {
    // RFC 3720 Appendix B.4 / RFC 7143 test vectors.
    @Test func zerosVector() {
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
    }

    @Test func onesVector() {
        #expect(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)) == 0x62A8_AB43)
    }

    @Test func incrementingVector() {
        #expect(CRC32C.checksum((0..<32).map { UInt8($0) }) == 0x46DD_794E)
    }

    @Test func decrementingVector() {
        #expect(CRC32C.checksum((0..<32).map { UInt8(31 - $0) }) == 0x113F_DB5C)
    }

    /// The RFC's SCSI Read(10) command PDU example.
    @Test func iscsiReadCommandVector() {
        var pdu = [UInt8](repeating: 0, count: 48)
        pdu[0] = 0x01; pdu[1] = 0xC0
        pdu[16] = 0x14; pdu[22] = 0x04
        pdu[24] = 0x00; pdu[25] = 0x00; pdu[26] = 0x00; pdu[27] = 0x14
        pdu[28] = 0x00; pdu[29] = 0x00; pdu[30] = 0x00; pdu[31] = 0x18
        pdu[32] = 0x28; pdu[40] = 0x02
        #expect(CRC32C.checksum(pdu) == 0xD9963A56)
    }

    /// Little-endian store of the value gives the wire bytes the RFC lists (aa 36 91 8a for 32 zeros).
    @Test func wireByteOrderIsLittleEndian() {
        let v = CRC32C.checksum([UInt8](repeating: 0, count: 32))
        let bytes = withUnsafeBytes(of: v.littleEndian) { Array($0) }
        #expect(bytes == [0xAA, 0x36, 0x91, 0x8A])
    }

    @Test func softwareAndHardwareAgreeOnEveryLengthAndAlignment() {
        let buf = pseudoRandomBytes(1200, seed: 7)
        buf.withUnsafeBytes { raw in
            guard let base = raw.baseAddress else { return }
            for offset in 0..<8 {
                for length in [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 64, 65, 511, 1024, 1191] where offset + length <= raw.count {
                    let sw = CRC32C.updateSoftware(CRC32C.initialState, base + offset, count: length)
                    let ref = bitwise(CRC32C.initialState, base + offset, count: length)
                    #expect(sw == ref, "software offset \(offset) length \(length)")
                    if CRC32C.hardwareAvailable {
                        let hw = CRC32C.updateHardware(CRC32C.initialState, base + offset, count: length)
                        #expect(hw == sw, "hardware offset \(offset) length \(length)")
                    }
                }
            }
        }
    }

    @Test func accumulatorOverPiecesEqualsOneShot() {
        let data = pseudoRandomBytes(777, seed: 99)
        let padded = data + [0, 0, 0]   // 777 + 3 pad bytes = 780, a multiple of 4
        var acc = CRC32C.Accumulator()
        data.withUnsafeBytes { raw in
            guard let base = raw.baseAddress else { return }
            acc.update(base, count: 100)
            acc.update(base + 100, count: 0)
            acc.update(base + 100, count: 677)
        }
        acc.updateZeros(count: 3)
        #expect(acc.value == CRC32C.checksum(padded))
        #expect(acc.value != CRC32C.checksum(data))
    }

    /// Bytes no table lines up with, the same on every run (a multiplicative hash of the index).
    private func pseudoRandomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
        (0..<UInt64(count)).map { UInt8(truncatingIfNeeded: ($0 &+ seed) &* 0x9E37_79B9_7F4A_7C15 >> 56) }
    }

    /// Bit-at-a-time reference, independent of the tables.
    private func bitwise(_ state: UInt32, _ p: UnsafeRawPointer, count: Int) -> UInt32 {
        var c = state
        for i in 0..<count {
            c ^= UInt32(p.load(fromByteOffset: i, as: UInt8.self))
            for _ in 0..<8 { c = (c & 1) != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
        }
        return c
    }
}
