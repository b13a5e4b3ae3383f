import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import ISCSI

@Suite struct TextKeysTests {
    private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

    @Test func parsesPairsInOrderWithPaddingAndUnterminatedLast() throws {
        let b = bytes("InitiatorName=iqn.a\0SessionType=Normal\0\0\0") + bytes("X-Vendor=a=b")
        let pairs = try TextKeys.parse(b)
        #expect(pairs == [TextKeyValue("InitiatorName", "iqn.a"), TextKeyValue("SessionType", "Normal"),
                          TextKeyValue("X-Vendor", "a=b")])
    }

    @Test func emptySegmentIsNoPairs() throws {
        #expect(try TextKeys.parse([]) == [])
        #expect(try TextKeys.parse([0, 0, 0, 0]) == [])
    }

    @Test func emptyValueIsAllowed() throws {
        #expect(try TextKeys.parse(bytes("SendTargets=\0")) == [TextKeyValue("SendTargets", "")])
    }

    @Test func missingEqualsNamesOffset() {
        #expect(throws: TextKeyError.missingEquals(offset: 4)) { try TextKeys.parse(self.bytes("a=b\0novalue\0")) }
    }

    @Test func emptyKey() {
        #expect(throws: TextKeyError.emptyKey(offset: 0)) { try TextKeys.parse(self.bytes("=x\0")) }
    }

    @Test func duplicateKey() {
        #expect(throws: TextKeyError.duplicateKey("A")) { try TextKeys.parse(self.bytes("A=1\0B=2\0A=1\0")) }
    }

    @Test func keyLengthBound() throws {
        let k63 = String(repeating: "k", count: 63)
        #expect(try TextKeys.parse(bytes("\(k63)=v\0")).count == 1)
        #expect(throws: TextKeyError.keyTooLong(offset: 0, length: 64)) {
            try TextKeys.parse(self.bytes("\(k63)k=v\0"))
        }
    }

    @Test func valueLengthBound() throws {
        let v = String(repeating: "v", count: 8192)
        #expect(try TextKeys.parse(bytes("K=\(v)\0")).first?.value.utf8.count == 8192)
        #expect(throws: TextKeyError.valueTooLong(key: "K", length: 8193)) {
            try TextKeys.parse(self.bytes("K=\(v)v\0"))
        }
    }

    @Test func badUTF8InValue() {
        let b: [UInt8] = Array("K=".utf8) + [0xC3, 0x28, 0]
        #expect(throws: TextKeyError.invalidUTF8(offset: 2)) { try TextKeys.parse(b) }
    }

    @Test func badKeyCharacter() {
        #expect(throws: TextKeyError.invalidKeyCharacter(offset: 1)) { try TextKeys.parse(self.bytes("a b=1\0")) }
    }

    @Test func keyCountBound() throws {
        var b: [UInt8] = []
        for i in 0..<5 { TextKeys.append("K\(i)", "v", to: &b) }
        #expect(try TextKeys.parse(b, maxKeys: 5).count == 5)
        #expect(throws: TextKeyError.tooManyKeys(limit: 4)) { try TextKeys.parse(b, maxKeys: 4) }
    }

    @Test func encodeRoundTrips() throws {
        let pairs = [TextKeyValue("HeaderDigest", "None,CRC32C"), TextKeyValue("TargetAlias", "disk ü")]
        let b = TextKeys.encode(pairs)
        #expect(b.last == 0)
        #expect(b.filter { $0 == 0 }.count == 2)
        #expect(try TextKeys.parse(b) == pairs)
    }
}
