// tgt's `--backing-store` forms for a sheepdog LUN (usr/bs_sheepdog.c `sd_open`, doc/README.sheepdog):
//
//   unix:PATH:VDI            tcp:HOST:PORT:VDI
//   unix:PATH:VDI:TAG        tcp:HOST:PORT:VDI:TAG
//   unix:PATH:VDI:SNAPID     tcp:HOST:PORT:VDI:SNAPID
//
// Fields are separated by ':'. Unlike tgt's strtok_r, which silently collapses empty fields, an empty field
// is an error: it is always a typo or an unbracketed IPv6 address. The optional fifth field follows tgt 1.0.41–1.0.68: all digits ⇒ snapshot id, anything else
// ⇒ tag. An IPv6 literal host is written in brackets, `tcp:[::1]:7000:vdi` or `tcp:[fe80::1%eth0]:7000:vdi`
// (tgt itself cannot take one: its tokeniser splits on the colons); a bracketed host may hold any
// characters but ']'. Neither a socket path nor a VDI name nor a tag can contain ':'.

public struct SheepBackingSpec: Equatable, Sendable, CustomStringConvertible {
    public enum Endpoint: Equatable, Sendable, CustomStringConvertible {
        case unix(path: String)
        case tcp(host: String, port: UInt16)

        /// The spec's own spelling: `unix:PATH`, `tcp:HOST:PORT`, `tcp:[V6]:PORT`.
        public var description: String {
            switch self {
            case .unix(let path): return "unix:\(path)"
            case .tcp(let host, let port): return host.contains(":") ? "tcp:[\(host)]:\(port)" : "tcp:\(host):\(port)"
            }
        }
    }

    public enum Snapshot: Equatable, Sendable {
        /// The working VDI (read-write).
        case working
        /// A snapshot named by tag (read-only).
        case tag(String)
        /// A snapshot named by id (read-only).
        case id(UInt32)
    }

    public var endpoint: Endpoint
    public var vdi: String
    public var snapshot: Snapshot

    public init(endpoint: Endpoint, vdi: String, snapshot: Snapshot = .working) {
        self.endpoint = endpoint; self.vdi = vdi; self.snapshot = snapshot
    }

    /// `sun_path` is 108 bytes including the terminating NUL.
    public static let maxUnixPathBytes = 107
    /// A DNS name is at most 253 characters; allow the full 255 of a hostname buffer.
    public static let maxHostBytes = 255

    /// The LOCK_VDI / GET_VDI_INFO arguments this spec asks for: tag bytes and snapid.
    public var lookupTag: String {
        if case .tag(let t) = snapshot { return t }
        return ""
    }
    public var lookupSnapID: UInt32 {
        if case .id(let n) = snapshot { return n }
        return 0
    }
    public var isSnapshot: Bool { snapshot != .working }

    public var description: String {
        var s = endpoint.description + ":" + vdi
        switch snapshot {
        case .working: break
        case .tag(let t): s += ":" + t
        case .id(let n): s += ":\(n)"
        }
        return s
    }

    public static func parse(_ spec: String) throws(SheepBackingSpecError) -> SheepBackingSpec {
        if spec.isEmpty { throw .empty }
        guard let colon = spec.firstIndex(of: ":") else {
            if spec == "unix" { throw .missingSocketPath }
            if spec == "tcp" { throw .missingHost }
            throw .unknownScheme(spec)
        }
        let scheme = spec[spec.startIndex..<colon]
        var rest = spec[spec.index(after: colon)...]

        // Fields after the scheme, in order. A bracketed IPv6 host is taken out before splitting on ':'.
        var bracketHost: Substring?
        if scheme == "tcp", rest.first == "[" {
            guard let close = rest.firstIndex(of: "]") else { throw .unterminatedBracket }
            let host = rest[rest.index(after: rest.startIndex)..<close]
            if host.isEmpty { throw .emptyHost }
            rest = rest[rest.index(after: close)...]
            if rest.isEmpty { throw .missingPort }
            guard rest.first == ":" else { throw .unexpectedAfterBracket(String(rest.prefix(while: { $0 != ":" }))) }
            rest = rest.dropFirst()
            bracketHost = host
        }
        var fields = rest.split(separator: ":", omittingEmptySubsequences: false)[...]
        // "unix:" or "tcp:" with nothing after it reads as one empty field: report the missing field instead.
        if fields.count == 1, fields.first?.isEmpty == true, bracketHost == nil { fields = [] }

        func take(_ what: String, missing: SheepBackingSpecError) throws(SheepBackingSpecError) -> Substring {
            guard let f = fields.popFirst() else { throw missing }
            if f.isEmpty { throw .emptyField(what) }
            return f
        }

        let endpoint: Endpoint
        switch scheme {
        case "unix":
            let path = try take("socket path", missing: .missingSocketPath)
            if path.utf8.count > maxUnixPathBytes {
                throw .socketPathTooLong(bytes: path.utf8.count, max: maxUnixPathBytes)
            }
            endpoint = .unix(path: String(path))
        case "tcp":
            let host: Substring
            if let b = bracketHost {
                host = b
            } else {
                host = try take("host", missing: .missingHost)
                if host.contains("[") || host.contains("]") { throw .unexpectedAfterBracket(String(host)) }
                // "tcp:fe80::1:7000:v": an unbracketed IPv6 literal leaves an empty port field.
                if fields.first?.isEmpty == true { throw .unbracketedIPv6(String(rest)) }
            }
            if host.utf8.count > maxHostBytes { throw .hostTooLong(bytes: host.utf8.count, max: maxHostBytes) }
            let portToken = try take("port", missing: .missingPort)
            guard portToken.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else {
                throw .invalidPort(String(portToken))
            }
            guard let port = UInt16(portToken), port != 0 else { throw .portOutOfRange(String(portToken)) }
            endpoint = .tcp(host: String(host), port: port)
        default:
            throw .unknownScheme(String(scheme))
        }

        let vdiToken = try take("VDI name", missing: .missingVDI)
        if vdiToken.utf8.count > SheepWire.maxVDINameBytes {
            throw .vdiNameTooLong(bytes: vdiToken.utf8.count, max: SheepWire.maxVDINameBytes)
        }

        var snapshot = Snapshot.working
        if !fields.isEmpty {
            let snap = try take("snapshot tag or id", missing: .missingVDI)
            if snap.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) {
                guard let id = UInt32(snap) else { throw .snapshotIDOutOfRange(String(snap)) }
                // Snapshot id 0 means "the working VDI" to sheep's lookup; as a LUN spec it is a mistake.
                guard id != 0 else { throw .snapshotIDZero }
                snapshot = .id(id)
            } else {
                if snap.utf8.count > SheepWire.maxVDINameBytes {
                    throw .tagTooLong(bytes: snap.utf8.count, max: SheepWire.maxVDINameBytes)
                }
                snapshot = .tag(String(snap))
            }
        }
        if let extra = fields.first { throw .unexpectedToken(String(extra)) }
        return SheepBackingSpec(endpoint: endpoint, vdi: String(vdiToken), snapshot: snapshot)
    }
}

public enum SheepBackingSpecError: Error, Equatable, Sendable, CustomStringConvertible {
    case empty
    case unknownScheme(String)
    case missingSocketPath
    case socketPathTooLong(bytes: Int, max: Int)
    case missingHost
    case emptyHost
    case unterminatedBracket
    case unexpectedAfterBracket(String)
    case hostTooLong(bytes: Int, max: Int)
    case missingPort
    case invalidPort(String)
    case portOutOfRange(String)
    case missingVDI
    case vdiNameTooLong(bytes: Int, max: Int)
    case tagTooLong(bytes: Int, max: Int)
    case snapshotIDOutOfRange(String)
    case snapshotIDZero
    case unexpectedToken(String)
    case emptyField(String)
    case unbracketedIPv6(String)

    static let forms = "expected unix:PATH:VDI[:TAG|:SNAPID] or tcp:HOST:PORT:VDI[:TAG|:SNAPID]"

    public var description: String {
        switch self {
        case .empty: return "empty sheepdog backing store; \(Self.forms)"
        case .unknownScheme(let s): return "unknown sheepdog transport '\(s)'; \(Self.forms)"
        case .missingSocketPath: return "missing unix socket path; \(Self.forms)"
        case .socketPathTooLong(let n, let max): return "unix socket path is \(n) bytes, the limit is \(max)"
        case .missingHost: return "missing sheep host; \(Self.forms)"
        case .emptyHost: return "empty host between '[' and ']'"
        case .unterminatedBracket: return "IPv6 host starts with '[' but has no ']' (write tcp:[::1]:7000:VDI)"
        case .unexpectedAfterBracket(let s): return "unexpected '\(s)' around the bracketed IPv6 host; write tcp:[ADDR]:PORT:VDI"
        case .hostTooLong(let n, let max): return "sheep host is \(n) bytes, the limit is \(max)"
        case .missingPort: return "missing sheep port; \(Self.forms)"
        case .invalidPort(let s): return "invalid tcp port number '\(s)': digits only (IPv6 hosts go in brackets: tcp:[::1]:7000:VDI)"
        case .portOutOfRange(let s): return "tcp port \(s) is out of range 1-65535"
        case .missingVDI: return "missing VDI name; \(Self.forms)"
        case .vdiNameTooLong(let n, let max): return "VDI name is \(n) bytes, sheepdog allows at most \(max)"
        case .tagTooLong(let n, let max): return "snapshot tag is \(n) bytes, sheepdog allows at most \(max)"
        case .snapshotIDOutOfRange(let s): return "snapshot id \(s) does not fit in 32 bits"
        case .snapshotIDZero: return "snapshot id 0 is not a snapshot; omit it to use the working VDI"
        case .emptyField(let what): return "empty \(what) field (two ':' in a row?); \(Self.forms)"
        case .unbracketedIPv6(let s): return "'\(s)' looks like an IPv6 address without brackets; write tcp:[ADDR]:PORT:VDI"
        case .unexpectedToken(let s): return "unexpected field '\(s)' after the snapshot; \(Self.forms)"
        }
    }
}
