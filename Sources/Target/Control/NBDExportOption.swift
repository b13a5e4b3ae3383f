import SheepProtocol

// `ringtgtd --export [NAME=]SPEC`: serve one backing store over NBD without a configuration, the way
// `qemu-nbd [-x NAME] sheepdog:image` does. Each --export becomes a target of its own (bound to ALL) with
// the store as LUN 1; NAME becomes the target's alias, which is also an NBD export name.
//
// SPEC is one of
//   qemu's sheepdog forms:   sheepdog:VDI[:SNAP]   sheepdog:HOST:PORT:VDI[:SNAP]
//                            sheepdog[+tcp]://[HOST[:PORT]]/VDI[#SNAP]   sheepdog+unix:///VDI?socket=PATH[#SNAP]
//                            (host and port default to qemu's 127.0.0.1 and 7000; SNAP all digits = snapshot id,
//                            otherwise a tag)
//   a tgt backing store:     PATH (rdwr), or tgt's sheepdog form with --bstype sheepdog

public struct NBDExportOption: Equatable, Sendable {
    public var name: String?
    public var bstype: String
    public var backingStore: String
    /// `ringtgtd --read-only` (qemu-nbd's -r): the LUN is made read-only, exported READ_ONLY, writes get EPERM.
    public var readOnly = false

    public static let sheepdogDefaultHost = "127.0.0.1"
    public static let sheepdogDefaultPort: UInt16 = 7000

    public init(name: String?, bstype: String, backingStore: String) {
        self.name = name
        self.bstype = bstype
        self.backingStore = backingStore
    }

    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case invalid(String)
        public var description: String {
            switch self { case .invalid(let s): return s }
        }
    }

    /// `defaultBSType` is `--bstype` (rdwr when absent); a sheepdog URI is sheepdog whatever it says.
    public static func parse(_ text: String, defaultBSType: String = "rdwr") throws(ParseError) -> NBDExportOption {
        var name: String? = nil
        var spec = Substring(text)
        // NAME=SPEC: the first '=' before any ':' or '/' (a path or URI may hold '=' later, e.g. ?socket=).
        if let eq = text.firstIndex(of: "="),
           !text[..<eq].contains(":"), !text[..<eq].contains("/") {
            name = String(text[..<eq])
            spec = text[text.index(after: eq)...]
            if name!.isEmpty { throw .invalid("--export: empty export name in '\(text)'") }
        }
        if spec.isEmpty { throw .invalid("--export: no backing store in '\(text)'") }
        if spec.hasPrefix("sheepdog:") || spec.hasPrefix("sheepdog+") {
            let s = try sheepdogSpec(String(spec))
            return NBDExportOption(name: name, bstype: "sheepdog", backingStore: s.description)
        }
        return NBDExportOption(name: name, bstype: defaultBSType, backingStore: String(spec))
    }

    /// qemu's sheepdog filename or URI as the tgt-style spec the sheepdog store opens.
    public static func sheepdogSpec(_ text: String) throws(ParseError) -> SheepBackingSpec {
        func snapshot(_ s: Substring?) -> SheepBackingSpec.Snapshot {
            guard let s, !s.isEmpty else { return .working }
            if s.allSatisfy(\.isNumber), let n = UInt32(s) { return .id(n) }
            return .tag(String(s))
        }
        func port(_ s: Substring) throws(ParseError) -> UInt16 {
            guard let p = UInt16(s), p > 0 else { throw .invalid("bad sheepdog port '\(s)' in '\(text)'") }
            return p
        }
        func checked(_ vdi: Substring) throws(ParseError) -> String {
            guard !vdi.isEmpty, !vdi.contains(":"), !vdi.contains("/") else {
                throw .invalid("bad sheepdog VDI name in '\(text)'")
            }
            return String(vdi)
        }
        if let schemeEnd = text.range(of: "://") {
            let scheme = text[..<schemeEnd.lowerBound]
            var rest = text[schemeEnd.upperBound...]
            var snap: Substring? = nil
            if let hash = rest.firstIndex(of: "#") { snap = rest[rest.index(after: hash)...]; rest = rest[..<hash] }
            var query: Substring? = nil
            if let q = rest.firstIndex(of: "?") { query = rest[rest.index(after: q)...]; rest = rest[..<q] }
            guard let slash = rest.firstIndex(of: "/") else { throw .invalid("no VDI in '\(text)'") }
            let authority = rest[..<slash]
            let vdi = try checked(rest[rest.index(after: slash)...])
            switch scheme {
            case "sheepdog", "sheepdog+tcp":
                if query != nil { throw .invalid("a query is only for sheepdog+unix: '\(text)'") }
                var host = Substring(sheepdogDefaultHost)
                var p = sheepdogDefaultPort
                if !authority.isEmpty {
                    if authority.hasPrefix("["), let close = authority.firstIndex(of: "]") {
                        host = authority[authority.index(after: authority.startIndex)..<close]
                        let after = authority[authority.index(after: close)...]
                        if after.hasPrefix(":") { p = try port(after.dropFirst()) }
                        else if !after.isEmpty { throw .invalid("bad host in '\(text)'") }
                    } else if let colon = authority.lastIndex(of: ":") {
                        host = authority[..<colon]
                        p = try port(authority[authority.index(after: colon)...])
                    } else {
                        host = authority
                    }
                }
                return SheepBackingSpec(endpoint: .tcp(host: String(host), port: p), vdi: vdi, snapshot: snapshot(snap))
            case "sheepdog+unix":
                guard authority.isEmpty else { throw .invalid("sheepdog+unix takes no host: '\(text)'") }
                guard let query, query.hasPrefix("socket="), query.count > "socket=".count else {
                    throw .invalid("sheepdog+unix needs ?socket=PATH: '\(text)'")
                }
                let path = String(query.dropFirst("socket=".count))
                return SheepBackingSpec(endpoint: .unix(path: path), vdi: vdi, snapshot: snapshot(snap))
            default:
                throw .invalid("unknown sheepdog scheme '\(scheme)'")
            }
        }
        guard text.hasPrefix("sheepdog:") else { throw .invalid("not a sheepdog filename: '\(text)'") }
        let parts = text.dropFirst("sheepdog:".count).split(separator: ":", omittingEmptySubsequences: false)
        switch parts.count {
        case 1, 2:
            return SheepBackingSpec(endpoint: .tcp(host: sheepdogDefaultHost, port: sheepdogDefaultPort),
                                    vdi: try checked(parts[0]), snapshot: snapshot(parts.count == 2 ? parts[1] : nil))
        case 3, 4:
            guard !parts[0].isEmpty else { throw .invalid("empty sheepdog host in '\(text)'") }
            return SheepBackingSpec(endpoint: .tcp(host: String(parts[0]), port: try port(parts[1])),
                                    vdi: try checked(parts[2]), snapshot: snapshot(parts.count == 4 ? parts[3] : nil))
        default:
            throw .invalid("bad sheepdog filename '\(text)'")
        }
    }
}

/// Turns `--export` options into targets through the registry (as a config file would): each gets the next
/// free tid, the name `iqn.2026-01.org.ringtgt:export-N`, its NAME as alias, the store as LUN 1, bound to ALL.
public enum NBDExports {
    public static let targetNamePrefix = "iqn.2026-01.org.ringtgt:export-"

    public static func add(_ options: [NBDExportOption], to registry: Registry) throws {
        var tid = (registry.currentSnapshot.targets.map(\.tid).max() ?? 0) + 1
        for (i, o) in options.enumerated() {
            let name = "\(targetNamePrefix)\(i + 1)"
            var requests = [
                AdminRequest(mode: .target, op: .new, tid: tid, targetName: name),
                AdminRequest(mode: .logicalUnit, op: .new, tid: tid, lun: 1, backingStore: o.backingStore, bstype: o.bstype,
                             params: o.readOnly ? "readonly=1" : nil),
                AdminRequest(mode: .target, op: .bind, tid: tid, initiatorAddress: "ALL"),
            ]
            if let alias = o.name {
                requests.append(AdminRequest(mode: .target, op: .update, tid: tid, name: ISCSITargetKeys.aliasKey, value: alias))
            }
            for r in requests {
                let response = registry.execute(r)
                if response.exitCode != 0 {
                    let message = response.stderr.split(separator: "\n").first.map(String.init) ?? "exit \(response.exitCode)"
                    throw NBDExportOption.ParseError.invalid("\(o.backingStore): \(message)")
                }
            }
            tid += 1
        }
    }
}
