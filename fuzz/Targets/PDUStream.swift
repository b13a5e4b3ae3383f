// Splits a byte stream into iSCSI PDUs the way the receiver frames them (RFC 7143 §11.1): 48-byte BHS, AHS,
// optional header digest, data segment padded to 4 bytes, optional data digest. Inputs are raw wire bytes,
// so traffic captured from real initiators seeds the login, text and scsi targets as it is.

import ISCSIWire
import Target

struct PDU {
    var bhs: [UInt8]
    var ahs: [UInt8]
    var data: [UInt8]
    /// The digests as they were on the wire (when the stream carries them).
    var headerDigest: [UInt8] = []
    var dataDigest: [UInt8] = []
    /// Bytes of the stream this PDU took.
    var wireBytes = 0

    var opcode: UInt8 { bhs[0] & 0x3F }
    var flags: UInt8 { bhs[1] }
    func u16(_ o: Int) -> UInt16 { UInt16(bhs[o]) << 8 | UInt16(bhs[o + 1]) }
    func u32(_ o: Int) -> UInt32 { UInt32(u16(o)) << 16 | UInt32(u16(o + 2)) }
    var itt: UInt32 { u32(16) }
}

struct PDUStream {
    /// The largest data segment a fuzz input may declare and have read (the target's MaxRecvDataSegmentLength
    /// bound is far smaller; anything larger is the end of the stream).
    static let maxDataSegmentBytes = 1 << 20

    var input: FuzzInput
    let headerDigest: Bool
    let dataDigest: Bool

    init(_ input: FuzzInput, headerDigest: Bool = false, dataDigest: Bool = false) {
        self.input = input
        self.headerDigest = headerDigest
        self.dataDigest = dataDigest
    }

    /// The next whole PDU, or nil when the stream ends (a short PDU ends it too, as a closed socket would).
    mutating func next() -> PDU? {
        guard input.remaining >= bhsBytes else { return nil }
        let start = input.offset
        let bhs = input.bytes(bhsBytes)
        let ahsLength = Int(bhs[4]) * Framing.ahsWordBytes
        let dataLength = Int(bhs[5]) << 16 | Int(bhs[6]) << 8 | Int(bhs[7])
        let ahs = input.bytes(ahsLength)
        let hd = headerDigest ? input.bytes(Framing.digestBytes) : []
        guard ahs.count == ahsLength, hd.count == (headerDigest ? Framing.digestBytes : 0),
              dataLength <= PDUStream.maxDataSegmentBytes else { return nil }
        let padded = input.bytes(Framing.padded(dataLength))
        guard padded.count == Framing.padded(dataLength) else { return nil }
        let dd = dataDigest && dataLength > 0 ? input.bytes(Framing.digestBytes) : []
        guard dd.count == (dataDigest && dataLength > 0 ? Framing.digestBytes : 0) else { return nil }
        return PDU(bhs: bhs, ahs: ahs, data: Array(padded[0 ..< dataLength]), headerDigest: hd, dataDigest: dd,
                   wireBytes: input.offset - start)
    }
}

enum TextKeyCheck {
    /// Keys of its own a target may add to one response: declarations (TargetPortalGroupTag, TargetAlias,
    /// MaxRecvDataSegmentLength), offers (the digests, ImmediateData, the burst lengths) and the CHAP keys.
    static let targetOwnKeysMax = 16
    /// A negotiation response answers each key of its request at most once (a request holds at most
    /// `TextKeys.maxKeyCount`, every one of which may be unknown and answered NotUnderstood), plus its own.
    static let responseKeysMax = TextKeys.maxKeyCount + targetOwnKeysMax

    /// A response text is a sequence of "key=value" strings, each NUL-terminated; with `unique` (negotiation,
    /// not a SendTargets list of records) no key appears twice.
    static func wellFormed(_ text: [UInt8], _ what: String, unique: Bool = true) {
        if text.isEmpty { return }
        FuzzCheck.expect(text.last == 0, "\(what): text does not end with NUL")
        if unique {
            let parsed = Result { () throws(TextKeyError) in try TextKeys.parse(text, maxKeys: responseKeysMax) }
            FuzzCheck.expect((try? parsed.get()) != nil,
                             "\(what): text does not parse (\(parsed)): \(text.prefix(200))")
            return
        }
        for pair in text.split(separator: 0) {
            let one = Array(pair) + [0]
            FuzzCheck.expect((try? TextKeys.parse(one)) != nil, "\(what): '\(String(decoding: pair, as: UTF8.self))' is no key=value")
        }
    }
}
