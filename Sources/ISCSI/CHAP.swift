// CHAP authentication, target side (RFC 7143 §12.1.3, RFC 1994), with tgt's account model: a target has
// incoming accounts (initiators prove they know one of them) and at most one outgoing account (the target
// proves itself when the initiator asks for mutual CHAP). MD5 (CHAP_A=5) is the algorithm every initiator
// we serve offers; it comes from swift-crypto. Login path only, never the I/O path.

import Floor
import ISCSIWire
import SCSI
import Crypto

public enum CHAP {
    /// CHAP_A value for MD5 (RFC 1994 / IANA PPP authentication algorithms).
    public static let md5Algorithm = "5"
    /// Challenge length we send. RFC 7143 §12.1.3 needs the challenge to be unique and unpredictable;
    /// 16 bytes is what open-iscsi and tgt use.
    public static let challengeBytes = 16
    /// The longest challenge we accept from an initiator (RFC 7143 §12.1.3: at most 1024 bytes).
    public static let maxChallengeBytes = 1024
    public static let maxNameBytes = 255
    /// RFC 7143 §12.1.3: CHAP secrets of at least 96 bits, or a recorded exchange lets an offline search
    /// find them. Shorter secrets are refused when the account is made.
    public static let minSecretBytes = 12

    /// MD5(id || secret || challenge), RFC 1994 §4.1.
    public static func response(identifier: UInt8, secret: [UInt8], challenge: [UInt8]) -> [UInt8] {
        var md5 = Insecure.MD5()
        md5.update(data: [identifier])
        md5.update(data: secret)
        md5.update(data: challenge)
        return Array(md5.finalize())
    }

    /// Decodes an iSCSI binary value: `0x` hex or `0b` base64 (RFC 7143 §6.1). Nil when malformed.
    public static func decodeBinary(_ text: String) -> [UInt8]? {
        let u = Array(text.utf8)
        guard u.count > 2, u[0] == UInt8(ascii: "0") else { return nil }
        let body = u[2...]
        switch u[1] {
        case UInt8(ascii: "x"), UInt8(ascii: "X"): return decodeHex(body)
        case UInt8(ascii: "b"), UInt8(ascii: "B"): return decodeBase64(body)
        default: return nil
        }
    }

    public static func encodeHex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = [UInt8(ascii: "0"), UInt8(ascii: "x")]
        out.reserveCapacity(2 + bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func decodeHex(_ body: ArraySlice<UInt8>) -> [UInt8]? {
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
            default: return nil
            }
        }
        var digits = Array(body)
        // An odd number of hex digits has an implied leading zero (RFC 7143 §6.1 allows it).
        if digits.count % 2 == 1 { digits.insert(UInt8(ascii: "0"), at: 0) }
        var out: [UInt8] = []
        out.reserveCapacity(digits.count / 2)
        var i = 0
        while i < digits.count {
            guard let hi = nibble(digits[i]), let lo = nibble(digits[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }

    private static func decodeBase64(_ body: ArraySlice<UInt8>) -> [UInt8]? {
        func value(_ c: UInt8) -> UInt32? {
            switch c {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): return UInt32(c - UInt8(ascii: "A"))
            case UInt8(ascii: "a")...UInt8(ascii: "z"): return UInt32(c - UInt8(ascii: "a") + 26)
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return UInt32(c - UInt8(ascii: "0") + 52)
            case UInt8(ascii: "+"): return 62
            case UInt8(ascii: "/"): return 63
            default: return nil
            }
        }
        var chars = Array(body)
        guard chars.count % 4 == 0 else { return nil }
        var pad = 0
        while pad < 2, let last = chars.last, last == UInt8(ascii: "=") { chars.removeLast(); pad += 1 }
        var out: [UInt8] = []
        var acc: UInt32 = 0
        var bits = 0
        for c in chars {
            guard let v = value(c) else { return nil }
            acc = acc << 6 | v
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8((acc >> UInt32(bits)) & 0xFF))
            }
        }
        return out
    }
}

/// Why a CHAP exchange failed: the login ends with the given status.
public struct CHAPFailure: Error, Equatable {
    /// True: Authentication failure (0x0201); false: Initiator error (0x0200), a protocol violation.
    public var authentication: Bool
    public var reason: String
}

/// The target's side of one CHAP exchange in the security stage.
///
/// `.idle` -> (initiator sends CHAP_A with 5) -> `.challenged`: we answered CHAP_A=5, CHAP_I, CHAP_C ->
/// (initiator sends CHAP_N, CHAP_R, and for mutual CHAP also CHAP_I, CHAP_C) -> `.done`: for mutual CHAP we
/// answered CHAP_N, CHAP_R.
public struct CHAPExchange {
    public enum State: Equatable { case idle, challenged, done }
    public private(set) var state: State = .idle
    public private(set) var authenticatedUser: String?
    /// The incoming account the initiator proved it knows (a session keeps it, to be re-checked when the
    /// target's accounts change).
    public private(set) var authenticatedAccount: CHAPAccount?
    /// The CHAP_N of a response that was checked against the accounts (right or wrong): the login throttle
    /// counts guesses per account with it.
    public private(set) var attemptedUser: String?
    private var identifier: UInt8 = 0
    private var challenge: [UInt8] = []
    private let credentials: CHAPCredentials
    private var random: () -> [UInt8]

    /// `random(n)` gives n unpredictable bytes (the system generator by default; tests pass their own).
    public init(credentials: CHAPCredentials, random: (() -> [UInt8])? = nil) {
        self.credentials = credentials
        self.random = random ?? {
            var g = SystemRandomNumberGenerator()
            return (0..<(1 + CHAP.challengeBytes)).map { _ in UInt8.random(in: 0...255, using: &g) }
        }
    }

    public static let keys: Set<String> = ["CHAP_A", "CHAP_I", "CHAP_C", "CHAP_N", "CHAP_R"]

    /// Takes the CHAP keys of one login text; returns the keys to answer.
    public mutating func receive(_ keys: [String: String]) throws(CHAPFailure) -> [TextKeyValue] {
        switch state {
        case .idle:
            guard let list = keys["CHAP_A"] else {
                if keys.isEmpty { return [] }
                throw CHAPFailure(authentication: false, reason: "CHAP keys before CHAP_A: \(keys.keys.sorted())")
            }
            guard keys.count == 1 else {
                throw CHAPFailure(authentication: false, reason: "CHAP_A with other CHAP keys")
            }
            guard list.split(separator: ",", omittingEmptySubsequences: false).contains(where: { $0 == CHAP.md5Algorithm }) else {
                // RFC 7143 §12.1.3: the target answers Reject, then fails the login.
                throw CHAPFailure(authentication: true, reason: "CHAP_A=\(list): no algorithm we support (MD5 = 5)")
            }
            let r = random()
            identifier = r[0]
            challenge = Array(r.dropFirst())
            state = .challenged
            return [TextKeyValue("CHAP_A", CHAP.md5Algorithm), TextKeyValue("CHAP_I", String(identifier)),
                    TextKeyValue("CHAP_C", CHAP.encodeHex(challenge))]
        case .challenged:
            guard let name = keys["CHAP_N"], let responseText = keys["CHAP_R"] else {
                throw CHAPFailure(authentication: false, reason: "expected CHAP_N and CHAP_R")
            }
            guard name.utf8.count <= CHAP.maxNameBytes else {
                throw CHAPFailure(authentication: false, reason: "CHAP_N longer than \(CHAP.maxNameBytes) bytes")
            }
            guard let response = CHAP.decodeBinary(responseText) else {
                throw CHAPFailure(authentication: false, reason: "CHAP_R is not a binary value")
            }
            let mutualID = keys["CHAP_I"], mutualChallenge = keys["CHAP_C"]
            if (mutualID == nil) != (mutualChallenge == nil) {
                throw CHAPFailure(authentication: false, reason: "CHAP_I and CHAP_C must come together")
            }
            attemptedUser = name
            guard let account = credentials.incoming.first(where: { $0.user == name }),
                  constantTimeEqual(response, CHAP.response(identifier: identifier, secret: account.secret,
                                                            challenge: challenge)) else {
                throw CHAPFailure(authentication: true, reason: "CHAP: wrong name or response for '\(name)'")
            }
            authenticatedUser = name
            authenticatedAccount = account
            state = .done
            guard let idText = mutualID, let cText = mutualChallenge else { return [] }
            guard let id = UInt8(idText) else {
                throw CHAPFailure(authentication: false, reason: "CHAP_I=\(idText) is not 0...255")
            }
            guard let c = CHAP.decodeBinary(cText), !c.isEmpty, c.count <= CHAP.maxChallengeBytes else {
                throw CHAPFailure(authentication: false, reason: "initiator's CHAP_C is not a valid challenge")
            }
            // A challenge reflected back would let a peer use us as an oracle for our own secret.
            if c == challenge {
                throw CHAPFailure(authentication: true, reason: "initiator's CHAP_C repeats the target's challenge")
            }
            guard let out = credentials.outgoing else {
                throw CHAPFailure(authentication: true, reason: "mutual CHAP asked for, but the target has no outgoing account")
            }
            // RFC 7143 §12.1.3: a secret must not authenticate both ends. Binding refuses this; a check here
            // too, because answering would prove to anyone who knows the initiator's secret that it is ours.
            if out.secret == account.secret {
                throw CHAPFailure(authentication: true, reason: "mutual CHAP: the target's secret equals the initiator's")
            }
            return [TextKeyValue("CHAP_N", out.user),
                    TextKeyValue("CHAP_R", CHAP.encodeHex(CHAP.response(identifier: id, secret: out.secret, challenge: c)))]
        case .done:
            if keys.isEmpty { return [] }
            throw CHAPFailure(authentication: false, reason: "CHAP keys after the exchange ended")
        }
    }

    private func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var d: UInt8 = 0
        for i in 0..<a.count { d |= a[i] ^ b[i] }
        return d == 0
    }
}
