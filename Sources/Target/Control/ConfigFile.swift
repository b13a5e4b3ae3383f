// A modest subset of tgt's /etc/tgt/targets.conf (the format tgt-admin reads), applied through the same
// admin requests ringtgtadm sends, so a configuration behaves exactly like the equivalent commands.
//
//   default-driver iscsi
//   <target iqn.2026-01.example:disk1>
//       backing-store /var/lib/ringtgt/disk1.img      # LUN 1 (next free number from 1)
//       <backing-store /dev/null>                      # a LUN with its own settings
//           bs-type null
//           bsopts size=1G
//           lun 5
//       </backing-store>
//       bs-type rdwr                  # default for this target's LUNs (also bsopts, bsoflags, block-size)
//       initiator-address 10.0.0.0/24 # repeatable; with none, ALL may log in (as tgt-admin does)
//       initiator-name iqn.2026-01.example:host1
//       MaxRecvDataSegmentLength 65536  # any key `--op update --mode target` takes
//       vendor_id ACME                # LUN parameters apply to every LUN of the target unless a LUN sets them
//       incominguser alice alicesecret1 # CHAP: the account is created unless it exists, then bound (tgt-admin)
//       outgoinguser tgt0 tgt0secret12  # mutual CHAP: the target's own account
//   </target>
//
// Differences from tgt-admin: `lun N` may also stand at target level, numbering the next backing-store
// line; `tid N` (or tgt's controller_tid) fixes the tid, otherwise it is the largest tid so far plus one;
// direct-store and include are refused. Targets applied before an error stay configured.

import Foundation

public enum ConfigFile {
    public struct Failure: Error, Equatable, CustomStringConvertible {
        public var line: Int
        public var content: String
        public var message: String

        public var description: String { "line \(line): \(message): \(content)" }
    }

    /// Largest configuration file read (tgt configurations are small; this bounds a mistake).
    public static let maxFileBytes = 4 * 1024 * 1024

    /// LUN parameters, applied through `--op update --mode logicalunit --params` (tgt-admin's add_params).
    static let lunParameterKeys: Set<String> = ["vendor_id", "product_id", "product_rev", "scsi_id", "scsi_sn",
                                                "readonly", "thin_provisioning", "optimal_xfer_len", "mode_page",
                                                "lbppbe", "la_lba", "optimal_xfer_gran", "removable", "online", "sense_format"]
    /// Store settings that may stand at target level or inside a <backing-store> block.
    static let storeKeys: Set<String> = ["bs-type", "bsopts", "bsoflags", "block-size"]

    struct Setting {
        var key: String
        var value: String
        var line: Int
        var content: String
    }

    struct LUNBlock {
        var path: String
        var line: Int
        var content: String
        var explicitNumber: UInt64?
        var settings: [Setting] = []
    }

    struct TargetBlock {
        var name: String
        var line: Int
        var content: String
        var settings: [Setting] = []
        var luns: [LUNBlock] = []
    }

    /// Reads the file at `path` and applies it.
    public static func load(path: String, into registry: Registry) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw Failure(line: 0, content: path, message: "cannot read the configuration file")
        }
        guard data.count <= maxFileBytes else {
            throw Failure(line: 0, content: path, message: "configuration file is larger than \(maxFileBytes) bytes")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw Failure(line: 0, content: path, message: "configuration file is not UTF-8 text")
        }
        try apply(text, to: registry)
    }

    /// Parses `text` whole (so a syntax error changes nothing), then applies each target in order.
    public static func apply(_ text: String, to registry: Registry) throws {
        let targets = try parse(text)
        var nextTid = (registry.currentSnapshot.targets.map(\.tid).max() ?? 0) + 1
        for target in targets {
            let tid = try applyTarget(target, defaultTid: nextTid, registry: registry)
            nextTid = max(nextTid, tid + 1)
        }
    }

    static func parse(_ text: String) throws -> [TargetBlock] {
        var targets: [TargetBlock] = []
        var target: TargetBlock?
        var lun: LUNBlock?
        var pendingLUNNumber: (UInt64, Int)?
        var lineNumber = 0
        for rawLine in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline) {
            lineNumber += 1
            let content = rawLine.trimmingCharacters(in: .whitespacesAndNewlines)   // tolerates CRLF files
            func fail(_ message: String) -> Failure { Failure(line: lineNumber, content: content, message: message) }
            let line = stripComment(content)
            if line.isEmpty { continue }

            if line.hasPrefix("</") {
                guard line.hasSuffix(">") else { throw fail("unterminated closing tag") }
                let tag = line.dropFirst(2).dropLast().trimmingCharacters(in: .whitespaces).lowercased()
                switch tag {
                case "backing-store":
                    guard let block = lun, target != nil else { throw fail("</backing-store> without <backing-store>") }
                    target!.luns.append(block)
                    lun = nil
                case "target":
                    guard lun == nil else { throw fail("</target> inside an open <backing-store> block") }
                    guard let block = target else { throw fail("</target> without <target>") }
                    if let (_, pendingLine) = pendingLUNNumber {
                        throw Failure(line: pendingLine, content: "", message: "'lun' is not followed by a backing-store")
                    }
                    targets.append(block)
                    target = nil
                default:
                    throw fail("unknown closing tag")
                }
                continue
            }
            if line.hasPrefix("<") {
                guard line.hasSuffix(">") else { throw fail("unterminated tag") }
                let inner = line.dropFirst().dropLast().trimmingCharacters(in: .whitespaces)
                let (tag, value) = splitKeyValue(inner)
                switch tag.lowercased() {
                case "target":
                    guard target == nil else { throw fail("<target> inside another <target>") }
                    guard !value.isEmpty else { throw fail("<target> needs a target name") }
                    target = TargetBlock(name: value, line: lineNumber, content: content)
                case "backing-store":
                    guard target != nil else { throw fail("<backing-store> outside <target>") }
                    guard lun == nil else { throw fail("<backing-store> inside another <backing-store>") }
                    guard !value.isEmpty else { throw fail("<backing-store> needs a path") }
                    lun = LUNBlock(path: value, line: lineNumber, content: content)
                case "direct-store":
                    throw fail("direct-store is not supported; use backing-store")
                default:
                    throw fail("unknown block")
                }
                continue
            }

            let (key, value) = splitKeyValue(line)
            guard !value.isEmpty else { throw fail("'\(key)' needs a value") }
            let setting = Setting(key: key, value: value, line: lineNumber, content: content)
            if var block = lun {
                switch key {
                case "lun":
                    guard let n = ISCSITargetKeys.parseUnsigned(value) else { throw fail("lun must be a number") }
                    block.explicitNumber = n
                case _ where storeKeys.contains(key) || lunParameterKeys.contains(key) || key == "write-cache" || key == "params":
                    block.settings.append(setting)
                default:
                    throw fail("'\(key)' is not a backing-store setting")
                }
                lun = block
                continue
            }
            guard target != nil else {
                switch key {
                case "default-driver":
                    guard value == Registry.driverName else { throw fail("only the iscsi driver is supported") }
                    continue
                case "include":
                    throw fail("include is not supported")
                default:
                    throw fail("'\(key)' outside <target>")
                }
            }
            switch key {
            case "backing-store":
                var block = LUNBlock(path: value, line: lineNumber, content: content)
                if let (n, _) = pendingLUNNumber { block.explicitNumber = n }
                pendingLUNNumber = nil
                target!.luns.append(block)
            case "lun":
                guard let n = ISCSITargetKeys.parseUnsigned(value) else { throw fail("lun must be a number") }
                pendingLUNNumber = (n, lineNumber)
            case "direct-store":
                throw fail("direct-store is not supported; use backing-store")
            case "incominguser", "outgoinguser":
                let parts = value.split(whereSeparator: { $0 == " " || $0 == "\t" })
                guard parts.count == 2 else { throw fail("\(key) takes a user and a password") }
                target!.settings.append(setting)
            case "driver":
                guard value == Registry.driverName else { throw fail("only the iscsi driver is supported") }
            case "tid", "controller_tid", "initiator-address", "initiator-name", "write-cache", "params":
                target!.settings.append(setting)
            case _ where storeKeys.contains(key) || lunParameterKeys.contains(key):
                target!.settings.append(setting)
            case _ where ISCSITargetKeys.key(named: key) != nil || key == ISCSITargetKeys.aliasKey
                || key == ISCSITargetKeys.nopIntervalKey || key == ISCSITargetKeys.nopCountKey:
                target!.settings.append(setting)
            default:
                throw fail("unknown setting '\(key)'")
            }
        }
        if let block = lun { throw Failure(line: block.line, content: block.content, message: "<backing-store> is never closed") }
        if let block = target { throw Failure(line: block.line, content: block.content, message: "<target> is never closed") }
        return targets
    }

    static func stripComment(_ line: String) -> String {
        guard let hash = line.firstIndex(of: "#") else { return line }
        return line[..<hash].trimmingCharacters(in: .whitespaces)
    }

    /// "key value with spaces" -> ("key", "value with spaces"); surrounding double quotes are removed.
    static func splitKeyValue<S: StringProtocol>(_ text: S) -> (String, String) {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard let space = trimmed.firstIndex(where: { $0 == " " || $0 == "\t" }) else { return (trimmed, "") }
        let key = String(trimmed[..<space])
        var value = trimmed[space...].trimmingCharacters(in: .whitespaces)
        if value.count >= 2 && value.hasPrefix("\"") && value.hasSuffix("\"") { value = String(value.dropFirst().dropLast()) }
        return (key, value)
    }

    /// Runs one admin request; a failure names the line that caused it.
    static func run(_ request: AdminRequest, _ registry: Registry, line: Int, content: String) throws {
        let response = registry.execute(request)
        guard response.exitCode == 0 else {
            var message = response.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
            if message.hasPrefix("\(AdminProgram.name): ") { message.removeFirst(AdminProgram.name.count + 2) }
            throw Failure(line: line, content: content, message: message)
        }
    }

    static func applyTarget(_ t: TargetBlock, defaultTid: Int, registry: Registry) throws -> Int {
        var tid = defaultTid
        for s in t.settings where s.key == "tid" || s.key == "controller_tid" {
            guard let n = ISCSITargetKeys.parseUnsigned(s.value), n > 0, n <= UInt64(Int32.max) else {
                throw Failure(line: s.line, content: s.content, message: "tid must be a positive number")
            }
            tid = Int(n)
        }
        try run(AdminRequest(mode: .target, op: .new, tid: tid, targetName: t.name), registry, line: t.line, content: t.content)

        // Target-level store defaults and LUN parameters; a LUN block's own settings override them.
        let targetStore = t.settings.filter { storeKeys.contains($0.key) }
        let targetParams = t.settings.filter { lunParameterKeys.contains($0.key) || $0.key == "write-cache" || $0.key == "params" }

        var used = Set(t.luns.compactMap(\.explicitNumber))
        var next: UInt64 = 1
        for lun in t.luns {
            let number: UInt64
            if let n = lun.explicitNumber {
                number = n
            } else {
                while used.contains(next) { next += 1 }
                number = next
                used.insert(next)
            }
            var store: [String: Setting] = [:]
            for s in targetStore + lun.settings.filter({ storeKeys.contains($0.key) }) { store[s.key] = s }
            var request = AdminRequest(mode: .logicalUnit, op: .new, tid: tid, lun: number, backingStore: lun.path,
                                       bstype: store["bs-type"]?.value, bsopts: store["bsopts"]?.value,
                                       bsoflags: store["bsoflags"]?.value, blockSize: store["block-size"]?.value)
            // LUN parameters go with creation (readonly must be known when the store is opened).
            var params: [String] = []
            var scratch = LUNIdentity.tgtDefaults(tid: tid, lun: number)
            for s in targetParams + lun.settings.filter({ !storeKeys.contains($0.key) }) {
                // Check each parameter on its own first, so an error names the line that holds it.
                do {
                    switch s.key {
                    case "params": try scratch.apply(params: s.value)
                    case "write-cache": break
                    default: try scratch.apply(key: s.key, value: s.value)
                    }
                } catch let error as AdminError {
                    throw Failure(line: s.line, content: s.content, message: error.description)
                }
                switch s.key {
                case "params": params.append(s.value)
                case "write-cache":
                    // tgt-admin's caching mode pages for write-cache off / on.
                    switch s.value {
                    case "off": params.append("mode_page=8:0:18:0x10:0:0xff:0xff:0:0:0xff:0xff:0xff:0xff:0x80:0x14:0:0:0:0:0:0")
                    case "on": params.append("mode_page=8:0:18:0x14:0:0xff:0xff:0:0:0xff:0xff:0xff:0xff:0x80:0x14:0:0:0:0:0:0")
                    default: throw Failure(line: s.line, content: s.content, message: "write-cache must be on or off")
                    }
                default: params.append("\(s.key)=\(s.value)")
                }
            }
            if !params.isEmpty { request.params = params.joined(separator: ",") }
            try run(request, registry, line: lun.line, content: lun.content)
        }

        for s in t.settings {
            switch s.key {
            case "initiator-address":
                try run(AdminRequest(mode: .target, op: .bind, tid: tid, initiatorAddress: s.value), registry, line: s.line, content: s.content)
            case "initiator-name":
                try run(AdminRequest(mode: .target, op: .bind, tid: tid, initiatorName: s.value), registry, line: s.line, content: s.content)
            case "incominguser", "outgoinguser":
                // tgt-admin: create the account unless it exists, then bind it.
                let parts = s.value.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
                let (user, password) = (parts[0], parts[1])
                if !registry.hasAccount(user: user, password: password) {
                    // Fails, naming this line, when the user exists with another password.
                    try run(AdminRequest(mode: .account, op: .new, user: user, password: password), registry,
                            line: s.line, content: s.content)
                }
                try run(AdminRequest(mode: .account, op: .bind, tid: tid, user: user, outgoing: s.key == "outgoinguser"),
                        registry, line: s.line, content: s.content)
            case _ where ISCSITargetKeys.key(named: s.key) != nil || s.key == ISCSITargetKeys.aliasKey
                || s.key == ISCSITargetKeys.nopIntervalKey || s.key == ISCSITargetKeys.nopCountKey:
                try run(AdminRequest(mode: .target, op: .update, tid: tid, name: s.key, value: s.value), registry,
                        line: s.line, content: s.content)
            default:
                break
            }
        }
        // tgt-admin: "If there was no option called initiator-address, ... allow ALL initiators".
        if !t.settings.contains(where: { $0.key == "initiator-address" }) {
            try run(AdminRequest(mode: .target, op: .bind, tid: tid, initiatorAddress: "ALL"), registry, line: t.line, content: t.content)
        }
        return tid
    }
}
