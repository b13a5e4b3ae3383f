// The text data segment of Login and Text PDUs: "key=value\0key=value\0..." (RFC 7143 §6.1).
// Parsing is strict about what the RFC forbids (no '=', empty or overlong key, duplicate key, bad UTF-8)
// and lenient about what initiators really send (trailing NUL padding, a last pair without its NUL).

/// One key=value pair, in the order it appeared.
import Floor
import ISCSIWire
import SCSI
public struct TextKeyValue: Equatable, Sendable, CustomStringConvertible {
    public var key: String
    public var value: String
    public init(_ key: String, _ value: String) {
        self.key = key
        self.value = value
    }
    public var description: String { "\(key)=\(value)" }
}

/// Why a text segment was refused. Offsets are byte offsets into the segment.
public enum TextKeyError: Error, Equatable, Sendable, CustomStringConvertible {
    case missingEquals(offset: Int)
    case emptyKey(offset: Int)
    case keyTooLong(offset: Int, length: Int)
    case valueTooLong(key: String, length: Int)
    case invalidKeyCharacter(offset: Int)
    case invalidUTF8(offset: Int)
    case duplicateKey(String)
    case tooManyKeys(limit: Int)

    public var description: String {
        switch self {
        case .missingEquals(let o): return "text pair at byte \(o) has no '='"
        case .emptyKey(let o): return "text pair at byte \(o) has an empty key"
        case .keyTooLong(let o, let n): return "key at byte \(o) is \(n) bytes (max \(TextKeys.maxKeyBytes))"
        case .valueTooLong(let k, let n): return "value of \(k) is \(n) bytes (max \(TextKeys.maxValueBytes))"
        case .invalidKeyCharacter(let o): return "key at byte \(o) has a character outside the RFC 7143 key alphabet"
        case .invalidUTF8(let o): return "text pair at byte \(o) is not valid UTF-8"
        case .duplicateKey(let k): return "key \(k) appears more than once"
        case .tooManyKeys(let n): return "more than \(n) keys in one text segment"
        }
    }
}

public enum TextKeys {
    /// RFC 7143 §6.1: a key name is at most 63 bytes.
    public static let maxKeyBytes = 63
    /// RFC 7143 §6.1: text values are at most 8192 bytes unless a key says otherwise.
    public static let maxValueBytes = 8192
    /// Our bound on pairs per negotiation text; the RFC keys number about 30.
    public static let maxKeyCount = 256

    /// Parses a whole text segment (already reassembled across C-bit PDUs).
    public static func parse(_ bytes: UnsafeRawBufferPointer, maxKeys: Int = maxKeyCount) throws(TextKeyError) -> [TextKeyValue] {
        var out: [TextKeyValue] = []
        var start = 0
        let n = bytes.count
        while start < n {
            var end = start
            while end < n && bytes[end] != 0 { end += 1 }
            if end > start {
                let pair = try parsePair(bytes, start: start, end: end)
                for existing in out where existing.key == pair.key { throw .duplicateKey(pair.key) }
                if out.count >= maxKeys { throw .tooManyKeys(limit: maxKeys) }
                out.append(pair)
            }
            // Empty strings are NUL padding (some initiators count pad bytes in DataSegmentLength).
            start = end + 1
        }
        return out
    }

    public static func parse(_ bytes: [UInt8], maxKeys: Int = maxKeyCount) throws(TextKeyError) -> [TextKeyValue] {
        let result: Result<[TextKeyValue], TextKeyError> = bytes.withUnsafeBytes { buf in
            do throws(TextKeyError) { return .success(try parse(buf, maxKeys: maxKeys)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    private static func parsePair(_ b: UnsafeRawBufferPointer, start: Int, end: Int) throws(TextKeyError) -> TextKeyValue {
        var eq = start
        while eq < end && b[eq] != UInt8(ascii: "=") { eq += 1 }
        if eq == end { throw .missingEquals(offset: start) }
        if eq == start { throw .emptyKey(offset: start) }
        if eq - start > maxKeyBytes { throw .keyTooLong(offset: start, length: eq - start) }
        // RFC 7143 §6.1: key names are letters, digits, '.', '-', '+', '@', '_', and the X# / X- prefixes.
        for i in start..<eq where !isKeyByte(b[i]) { throw .invalidKeyCharacter(offset: i) }
        let key = String(decoding: UnsafeRawBufferPointer(rebasing: b[start..<eq]), as: UTF8.self)
        let valueLength = end - eq - 1
        if valueLength > maxValueBytes { throw .valueTooLong(key: key, length: valueLength) }
        let valueBytes = UnsafeRawBufferPointer(rebasing: b[(eq + 1)..<end])
        guard let value = String(validating: valueBytes, as: UTF8.self) else { throw .invalidUTF8(offset: eq + 1) }
        return TextKeyValue(key, value)
    }

    @inline(__always)
    private static func isKeyByte(_ c: UInt8) -> Bool {
        switch c {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "."), UInt8(ascii: "-"), UInt8(ascii: "+"), UInt8(ascii: "@"), UInt8(ascii: "_"),
             UInt8(ascii: "#"):
            return true
        default:
            return false
        }
    }

    /// Appends "key=value\0".
    public static func append(_ key: String, _ value: String, to out: inout [UInt8]) {
        out.append(contentsOf: key.utf8)
        out.append(UInt8(ascii: "="))
        out.append(contentsOf: value.utf8)
        out.append(0)
    }

    /// Whether the encoded text (pairs as `append` writes them) already holds `key`.
    public static func containsKey(_ key: String, in text: [UInt8]) -> Bool {
        let prefix = Array(key.utf8) + [UInt8(ascii: "=")]
        return text.split(separator: 0).contains { $0.starts(with: prefix) }
    }

    public static func encode(_ pairs: [TextKeyValue]) -> [UInt8] {
        var out: [UInt8] = []
        for p in pairs { append(p.key, p.value, to: &out) }
        return out
    }
}
