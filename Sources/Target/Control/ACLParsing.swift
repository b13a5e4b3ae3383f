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
