// `-I/--initiator-address` values: "ALL", an IPv4 or IPv6 address, or a network in CIDR form, with
// IPv6 optionally in brackets ("[fe80::1]", "[fe80::]/64") as tgt's ip_match accepts.

#if canImport(Glibc)
import Glibc
#endif

public enum InitiatorAddressParser {
    /// Parses an address rule; nil for text that is not "ALL", an address or a network.
    /// A network with host bits set is refused: tgt's netmask_match would never match it.
    public static func parse(_ text: String) -> ACLRule? {
        if text.uppercased() == "ALL" { return .all }
        var body = Substring(text)
        var prefixText: Substring?
        if body.hasPrefix("[") {
            guard let close = body.firstIndex(of: "]") else { return nil }
            let inside = body[body.index(after: body.startIndex)..<close]
            let rest = body[body.index(after: close)...]
            if !rest.isEmpty {
                guard rest.hasPrefix("/") else { return nil }
                prefixText = rest.dropFirst()
            }
            body = inside
            guard body.contains(":") else { return nil }   // brackets are for IPv6 only
        } else if let slash = body.firstIndex(of: "/") {
            prefixText = body[body.index(after: slash)...]
            body = body[..<slash]
        }
        guard let (bytes, isV6) = parseAddress(String(body)) else { return nil }
        let canonical = format(bytes, isV6: isV6)
        guard let prefixText else { return .address(canonical) }
        guard !prefixText.isEmpty, prefixText.allSatisfy({ $0.isASCII && $0.isNumber }),
              let prefix = Int(prefixText) else { return nil }
        let bits = isV6 ? 128 : 32
        guard prefix >= 0 && prefix <= bits else { return nil }
        guard hostBitsClear(bytes, prefixLength: prefix) else { return nil }
        return .cidr(canonical, prefixLength: prefix)
    }

    /// The numeric address bytes (4 or 16) of an address literal, or nil.
    static func parseAddress(_ text: String) -> ([UInt8], Bool)? {
        guard !text.isEmpty else { return nil }
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            return (withUnsafeBytes(of: &v4) { Array($0) }, false)
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            return (withUnsafeBytes(of: &v6) { Array($0) }, true)
        }
        return nil
    }

    static func format(_ bytes: [UInt8], isV6: Bool) -> String {
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        let family = isV6 ? AF_INET6 : AF_INET
        let ok = bytes.withUnsafeBytes { raw in
            inet_ntop(family, raw.baseAddress, &buffer, socklen_t(buffer.count)) != nil
        }
        guard ok else { return "" }
        return String(cString: buffer)
    }

    static func hostBitsClear(_ bytes: [UInt8], prefixLength: Int) -> Bool {
        for (i, byte) in bytes.enumerated() {
            let firstBit = i * 8
            if firstBit >= prefixLength {
                if byte != 0 { return false }
            } else if firstBit + 8 > prefixLength {
                let keep = prefixLength - firstBit
                let hostMask = UInt8(0xFF) >> UInt8(keep)
                if byte & hostMask != 0 { return false }
            }
        }
        return true
    }
}

/// ACL evaluation for login and discovery (tgtadm `--op bind -I ...`).
public enum ACLCheck {
    public static func allows(_ acl: [ACLRule], address: String, initiatorName: String) -> Bool {
        // Like tgt: a target with no address rule admits nobody by address; name rules add to address rules.
        var addressOK = false
        var nameRules = false
        var nameOK = false
        for r in acl {
            switch r {
            case .all: addressOK = true
            case .address(let a): if sameAddress(a, address) { addressOK = true }
            case .cidr(let net, let prefix): if inNetwork(address, net, prefix) { addressOK = true }
            case .initiatorName(let n):
                nameRules = true
                if n.lowercased() == initiatorName.lowercased() { nameOK = true }
            }
        }
        if nameRules && !initiatorName.isEmpty { return nameOK || addressOK }
        return addressOK
    }

    static func bytes(_ s: String) -> [UInt8]? {
        guard let (b, isV6) = InitiatorAddressParser.parseAddress(s) else { return nil }
        // IPv4-mapped IPv6: compare as IPv4.
        if isV6 && b[0..<10].allSatisfy({ $0 == 0 }) && b[10] == 0xff && b[11] == 0xff { return Array(b[12..<16]) }
        return b
    }

    static func sameAddress(_ a: String, _ b: String) -> Bool {
        guard let x = bytes(a), let y = bytes(b) else { return a == b }
        return x == y
    }

    static func inNetwork(_ address: String, _ net: String, _ prefix: Int) -> Bool {
        guard let a = bytes(address), let n = bytes(net), a.count == n.count, prefix >= 0, prefix <= a.count * 8
        else { return false }
        var bits = prefix
        for i in 0..<a.count {
            if bits <= 0 { break }
            let mask: UInt8 = bits >= 8 ? 0xff : UInt8(0xff << (8 - bits))
            if a[i] & mask != n[i] & mask { return false }
            bits -= 8
        }
        return true
    }
}

/// Who may log in to a target (tgtadm `--op bind -I ...` / `--initiator-name`).
public enum ACLRule: Equatable, Sendable, CustomStringConvertible {
    case all
    case address(String)                    // exact IPv4 or IPv6 address as text
    case cidr(String, prefixLength: Int)    // network address text and prefix
    case initiatorName(String)              // iqn.... (case-insensitive per RFC 3722)

    public var description: String {
        switch self {
        case .all: return "ALL"
        case .address(let a): return a
        case .cidr(let n, let p): return "\(n)/\(p)"
        case .initiatorName(let n): return n
        }
    }
}
