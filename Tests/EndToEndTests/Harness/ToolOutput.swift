// Parsers for what libiscsi's utilities print (libiscsi 1.19, Debian 12). Each was checked against
// real output; the formats are quoted above each parser.

import Foundation

/// `iscsi-ls -s iscsi://HOST:PORT` prints, per target:
///     Target:iqn.2026-01.org.ringtgt:t1 Portal:127.0.0.1:21824,1
///     Lun:0    Type:STORAGE_ARRAY_CONTROLLER
///     Lun:1    Type:DIRECT_ACCESS (Size:63M)
struct ISCSILsListing {
    struct Target {
        let name: String
        let portal: String
        var luns: [Int: (type: String, size: String?)] = [:]
    }
    var targets: [Target] = []

    func target(_ name: String) -> Target? { targets.first { $0.name == name } }

    init(_ text: String) {
        for rawLine in text.split(whereSeparator: \.isNewline) {
            let line = String(rawLine)
            if line.hasPrefix("Target:") {
                let fields = line.split(separator: " ", omittingEmptySubsequences: true)
                let name = String(fields[0].dropFirst("Target:".count))
                let portal = fields.first { $0.hasPrefix("Portal:") }.map { String($0.dropFirst("Portal:".count)) }
                targets.append(Target(name: name, portal: portal ?? ""))
            } else if line.hasPrefix("Lun:"), !targets.isEmpty {
                let fields = line.split(separator: " ", omittingEmptySubsequences: true)
                guard let lun = Int(fields[0].dropFirst("Lun:".count)),
                      fields.count >= 2, fields[1].hasPrefix("Type:") else { continue }
                let type = String(fields[1].dropFirst("Type:".count))
                var size: String? = nil
                if let r = line.range(of: "(Size:"), let close = line[r.upperBound...].firstIndex(of: ")") {
                    size = String(line[r.upperBound..<close])
                }
                targets[targets.count - 1].luns[lun] = (type, size)
            }
        }
    }

    /// The size string iscsi-ls prints for a disk. It multiplies READ CAPACITY(10)'s *last* LBA (not
    /// the block count) by the block length, then divides by 1024 while the value exceeds 1024, and
    /// appends ' ', k, M, G or T. A 64 MiB LUN of 512-byte blocks therefore shows as "63M".
    static func expectedSize(blockCount: Int64, blockBytes: Int64) -> String {
        var size = blockBytes * (blockCount - 1)
        let suffixes: [Character] = [" ", "k", "M", "G", "T"]
        var i = 0
        while i < 4 && size > 1024 { size /= 1024; i += 1 }
        return "\(size)\(suffixes[i])"
    }
}

/// `iscsi-readcapacity16 URL` prints, among others:
///     RETURNED LOGICAL BLOCK ADDRESS:131071
///     LOGICAL BLOCK LENGTH IN BYTES:512
///     LBPME:0 LBPRZ:0
///     Total size:67108864
struct ReadCapacity16 {
    let lastLBA: Int64
    let blockBytes: Int64
    let totalBytes: Int64
    let lbpme: Int

    var blockCount: Int64 { lastLBA + 1 }

    init(_ text: String) throws {
        let fields = keyValueFields(text)
        guard let lba = fields["RETURNED LOGICAL BLOCK ADDRESS"].flatMap({ Int64($0) }),
              let bl = fields["LOGICAL BLOCK LENGTH IN BYTES"].flatMap({ Int64($0) }),
              let total = fields["Total size"].flatMap({ Int64($0) }),
              let lbpme = fields["LBPME"].flatMap({ Int($0) }) else {
            throw E2EError("cannot parse iscsi-readcapacity16 output:\n\(text)")
        }
        lastLBA = lba; blockBytes = bl; totalBytes = total; self.lbpme = lbpme
    }
}

/// Splits `KEY:VALUE` pairs; a line may hold several separated by spaces ("LBPME:0 LBPRZ:0").
/// Only keys made of letters, digits, spaces and '_' are kept, so "Vendor:IET     " gives "IET".
func keyValueFields(_ text: String) -> [String: String] {
    var out: [String: String] = [:]
    for rawLine in text.split(whereSeparator: \.isNewline) {
        let line = String(rawLine)
        // Lines like "LBPME:0 LBPRZ:0" and "P_TYPE:0 PROT_EN:0" carry several short pairs.
        let pieces = line.split(separator: " ").allSatisfy { $0.contains(":") } && line.split(separator: " ").count > 1
            ? line.split(separator: " ").map(String.init) : [line]
        for piece in pieces {
            guard let colon = piece.firstIndex(of: ":") else { continue }
            let key = piece[..<colon].trimmingCharacters(in: .whitespaces)
            let value = piece[piece.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            if out[key] == nil { out[key] = value }
        }
    }
    return out
}

/// The pages `iscsi-inq -e 1 -c 0` lists:  "Page:0x80 UNIT_SERIAL_NUMBER".
func supportedVPDPages(_ text: String) -> Set<Int> {
    var pages = Set<Int>()
    for line in text.split(whereSeparator: \.isNewline) where line.hasPrefix("Page:0x") {
        let hex = line.dropFirst("Page:0x".count).prefix { $0.isHexDigit }
        if let v = Int(hex, radix: 16) { pages.insert(v) }
    }
    return pages
}
