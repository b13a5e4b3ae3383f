// iSCSI framing (ISCSIWire: Framing.swift, BHS.swift, CRC32C.swift, Serial.swift) over a byte stream, PDU by
// PDU. Input: one byte (bit 0 header digests, bit 1 data digests, the rest a split point), then the stream.
// The BHS view agrees with the bytes, framing lengths add up, the digest a sender stores is the CRC32C the
// receiver computes (hardware, table and split computations agree), and LUN and serial arithmetic are consistent.

import ISCSIWire

enum FramingFuzz {
    static let maxPDUs = 256

    static func run(_ raw: UnsafeRawBufferPointer) {
        var input = FuzzInput(raw)
        let choice = input.byte()
        var stream = PDUStream(input, headerDigest: choice & 1 != 0, dataDigest: choice & 2 != 0)
        for _ in 0 ..< maxPDUs {
            guard let pdu = stream.next() else { return }
            let n = pdu.data.count
            FuzzCheck.expect(Framing.padded(n) % 4 == 0 && Framing.padded(n) - n == Framing.padLength(n)
                             && (0 ... 3).contains(Framing.padLength(n)), "padding of \(n)")
            let expected = bhsBytes + pdu.ahs.count + pdu.headerDigest.count + Framing.padded(n) + pdu.dataDigest.count
            FuzzCheck.expect(pdu.wireBytes == expected, "PDU took \(pdu.wireBytes) bytes, framing says \(expected)")
            var header = pdu.bhs + pdu.ahs + [0, 0, 0, 0]
            header.withUnsafeMutableBytes { h in
                let view = BHS(UnsafeRawPointer(h.baseAddress!))
                FuzzCheck.expect(view.opcode == pdu.opcode && view.ahsBytes == pdu.ahs.count && view.dataSegmentLength == n
                                 && view.itt == pdu.itt, "the BHS view disagrees with the bytes")
                let d = Framing.storeHeaderDigest(h.baseAddress!, ahsBytes: pdu.ahs.count)
                let stored = h.load(fromByteOffset: bhsBytes + pdu.ahs.count, as: UInt32.self)
                FuzzCheck.expect(UInt32(littleEndian: stored) == d, "header digest stored in another byte order")
                FuzzCheck.expect(d == CRC32C.checksum(Array(pdu.bhs + pdu.ahs)), "header digest differs from CRC32C")
            }
            checkCRC(pdu.data, split: Int(choice >> 2))
            let lun = decodeLUN(UInt64(pdu.u32(8)) << 32 | UInt64(pdu.u32(12)))
            if lun != UInt64.max {
                FuzzCheck.expect(lun < 1 << 14 && decodeLUN(encodeLUN(lun)) == lun, "LUN \(lun) does not round-trip")
            }
            let a = pdu.u32(24), b = pdu.u32(28), c = pdu.u32(32)
            // Exactly 2^31 apart is undefined in RFC 1982; Serial lets the signed distance decide (see Serial.swift).
            if a &- b != 0x8000_0000 {
                FuzzCheck.expect(Serial.lessThan(a, b) == Serial.greaterThan(b, a) && !(Serial.lessThan(a, b) && Serial.lessThan(b, a)),
                                 "serial order of \(a), \(b)")
            }
            FuzzCheck.expect(Serial.atLeast(a, a) && Serial.inWindow(a, low: a, high: a), "serial \(a) against itself")
            if Serial.inWindow(c, low: a, high: b) {
                FuzzCheck.expect(Serial.atLeast(c, a) && Serial.distance(from: a, to: c) <= Serial.distance(from: a, to: b),
                                 "\(c) in the window [\(a), \(b)] but not after its start")
            }
        }
    }

    /// One digest three ways: table, SSE4.2 when the CPU has it, and two updates split anywhere.
    static func checkCRC(_ bytes: [UInt8], split: Int) {
        bytes.withUnsafeBytes { buf in
            guard let p = buf.baseAddress else { return }
            let whole = CRC32C.checksum(p, count: buf.count)
            FuzzCheck.expect(~CRC32C.updateSoftware(CRC32C.initialState, p, count: buf.count) == whole, "table CRC32C differs")
            if CRC32C.hardwareAvailable {
                FuzzCheck.expect(~CRC32C.updateHardware(CRC32C.initialState, p, count: buf.count) == whole, "SSE4.2 CRC32C differs")
            }
            let k = min(split, buf.count)
            let first = CRC32C.update(CRC32C.initialState, p, count: k)
            FuzzCheck.expect(~CRC32C.update(first, p + k, count: buf.count - k) == whole, "CRC32C split at \(k) differs")
        }
    }
}
