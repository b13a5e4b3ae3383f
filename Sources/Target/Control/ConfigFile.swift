// tgt's /etc/tgt/targets.conf, read as tgt-admin reads it (Config::General with Apache-style `include`,
// globs and directories), into a Configuration. Every problem is collected with its file and line, so one
// run reports them all; ConfigUpdate then validates the whole change against a scratch registry and
// applies the difference only when nothing failed.
//
//   default-driver iscsi
//   include /etc/tgt/conf.d/*.conf
//   incomingdiscoveryuser disc discsecret12 # discovery sessions need CHAP (outgoingdiscoveryuser: mutual)
//   <target iqn.2026-01.example:disk1>
//       backing-store /var/lib/ringtgt/disk1.img      # LUN 1 (next free number from 1)
//       <backing-store /dev/null>                      # a LUN with its own settings
//           bs-type null
//           bsopts size=1G
//           lun 5
//       </backing-store>
//       bs-type rdwr                  # default for this target's LUNs (also bsopts, bsoflags, block-size)
//       initiator-address 10.0.0.0/24 # repeatable; with none, ALL may log in (as tgt-admin does);
//                                     # "initiator-address none" (written by --dump) admits no address
//       initiator-name iqn.2026-01.example:host1
//       MaxRecvDataSegmentLength 65536  # any key `--op update --mode target` takes
//       vendor_id ACME                # LUN parameters apply to every LUN of the target unless a LUN sets them
//       incominguser alice alicesecret1 # CHAP: the account is created unless it exists, then bound (tgt-admin)
//       outgoinguser tgt0 tgt0secret12  # mutual CHAP: the target's own account
//   </target>
//
// Differences from tgt-admin: `lun N` may also stand at target level, numbering the next backing-store
// line; `tid N` (or tgt's controller_tid) fixes the tid, otherwise it is the largest tid so far plus one;
// direct-store is served like backing-store (ringtgt does not copy the device's INQUIRY data with sg_inq).

import Foundation
#if canImport(Glibc)
import Glibc
#endif

public enum ConfigFile {
    public struct Failure: Error, Equatable, CustomStringConvertible {
        /// The file that holds the line ("" for text given directly).
        public var file: String
        public var line: Int
        public var content: String
        public var message: String

        public init(file: String = "", line: Int, content: String, message: String) {
            self.file = file
            self.line = line
            self.content = content
            self.message = message
        }

        public var description: String {
            // Line 0: about the whole file, or about no line at all (the running configuration).
            let place = line == 0 ? file : file.isEmpty ? "line \(line)" : "\(file) line \(line)"
            let text = place.isEmpty ? message : "\(place): \(message)"
            return content.isEmpty ? text : "\(text): \(content)"
        }
    }

    /// Every error of one configuration, in file order: nothing was changed.
    public struct Failures: Error, Equatable, CustomStringConvertible {
        public var errors: [Failure]
        public init(_ errors: [Failure]) { self.errors = errors }
        public var description: String { errors.map(\.description).joined(separator: "\n") }
    }

    /// Where a directive came from.
    public struct Source: Equatable, Sendable {
        public var file: String
        public var line: Int
        public var content: String

        func failure(_ message: String) -> Failure { Failure(file: file, line: line, content: content, message: message) }
    }

    /// A value with the line that gave it.
    public struct Item: Equatable, Sendable {
        public var value: String
        public var source: Source
    }

    public struct LUN: Equatable, Sendable {
        public var number: UInt64
        public var path: String
        public var source: Source
        public var bstype: Item?
        public var bsopts: Item?
        public var bsoflags: Item?
        public var blockSize: Item?
        /// `--params` items ("key=value" or a whole params text), applied in order; the LUN's own after its target's.
        public var params: [Item] = []
    }

    public struct Account: Equatable, Sendable {
        public var user: String
        public var password: String
        public var source: Source
    }

    public struct Target: Equatable, Sendable {
        public var name: String
        public var source: Source
        public var tid: Int?
        public var luns: [LUN] = []
        public var addresses: [Item] = []
        public var initiatorNames: [Item] = []
        /// iSCSI keys, TargetAlias, nop_interval / nop_count and state, as `--op update --mode target` names them.
        public var keys: [(name: String, item: Item)] = []
        public var incoming: [Account] = []
        public var outgoing: Account?

        public static func == (a: Target, b: Target) -> Bool {
            a.name == b.name && a.source == b.source && a.tid == b.tid && a.luns == b.luns && a.addresses == b.addresses
                && a.initiatorNames == b.initiatorNames && a.incoming == b.incoming && a.outgoing == b.outgoing
                && a.keys.map(\.name) == b.keys.map(\.name) && a.keys.map(\.item) == b.keys.map(\.item)
        }
    }

    public struct Configuration: Equatable, Sendable {
        public var targets: [Target] = []
        /// tgt-admin's `ignore-errors yes`: apply what works, report the rest.
        public var ignoreErrors = false
        /// tgt-admin's `control-port N` (ringtgt-admin talks to that daemon unless -C says otherwise).
        public var controlPort: Int?
        /// tgt-admin's top-level `incomingdiscoveryuser` / `outgoingdiscoveryuser`: accounts bound without a
        /// target, which discovery sessions must authenticate with.
        public var discoveryIncoming: [Account] = []
        public var discoveryOutgoing: Account?
        /// ringtgt's own `lun-defaults tgt`, written by `--dump` of a daemon started with --tgt-defaults: what a
        /// LUN without parameters looks like there, so an update compares against that and not ringtgt's own.
        public var lunDefaults: LUNDefaults = .ringtgt
        public init() {}
    }

    /// A parse: the configuration, and what is wrong or ignored in it.
    public struct Parsed {
        public var configuration: Configuration
        public var errors: [Failure]
        public var warnings: [Failure]
    }

    /// Largest configuration file read (tgt configurations are small; this bounds a mistake).
    public static let maxFileBytes = 4 * 1024 * 1024
    /// Includes nest at most this deep, and one configuration reads at most this many files.
    public static let maxIncludeDepth = 8
    public static let maxIncludedFiles = 1024
    /// ringtgt-admin's file when -c is not given: the one ringtgt.service gives ringtgtd (--config), so that
    /// ringtgt-admin --update and `systemctl reload` apply the same file (tgt-admin's is /etc/tgt/targets.conf).
    public static let defaultPath = "/etc/ringtgt/targets.conf"

    /// LUN parameters, applied through `--op update --mode logicalunit --params` (tgt-admin's add_params).
    static let lunParameterKeys: Set<String> = ["vendor_id", "product_id", "product_rev", "scsi_id", "scsi_sn",
                                                "readonly", "thin_provisioning", "optimal_xfer_len", "mode_page",
                                                "lbppbe", "la_lba", "optimal_xfer_gran", "online", "removable",
                                                "sense_format", "sanitize_rate"]
    /// Store settings that may stand at target level or inside a <backing-store> block.
    static let storeKeys: Set<String> = ["bs-type", "bsopts", "bsoflags", "block-size"]
    /// tgt-admin directives that ringtgt reads and refuses, with the reason.
    static let unsupported: [String: String] = [
        "path": "the 'path' LUN parameter (moving a LUN to another file) is not supported",
        "iSNS": "iSNS is not supported", "iSNSServerIP": "iSNS is not supported",
        "iSNSServerPort": "iSNS is not supported", "iSNSAccessControl": "iSNS is not supported",
    ]

    // MARK: - Reading

    /// One line of the configuration after includes were expanded.
    struct SourceLine {
        var file: String
        var number: Int
        var text: String
    }

    /// Reads the file at `path` and its includes. Throws only when `path` itself cannot be read
    /// (`missing` tells whether it does not exist, which callers may take as an empty configuration).
    public static func parse(path: String) throws -> Parsed {
        var errors: [Failure] = []
        var lines: [SourceLine] = []
        var files = 0
        guard FileManager.default.fileExists(atPath: path) else { throw Missing(path: path) }
        read(path, depth: 0, stack: [], into: &lines, files: &files, errors: &errors, from: nil)
        if lines.isEmpty && !errors.isEmpty && errors[0].line == 0 { throw Failures(errors) }
        var parsed = parse(lines: lines)
        parsed.errors = errors + parsed.errors
        return parsed
    }

    /// `--config FILE` or `-c FILE` names a file that does not exist.
    public struct Missing: Error, CustomStringConvertible {
        public var path: String
        public var description: String { "\(path): no such configuration file" }
    }

    /// Parses `text`; `include` patterns are relative to `directory`.
    public static func parse(_ text: String, file: String = "", directory: String = ".") -> Parsed {
        var lines: [SourceLine] = []
        var errors: [Failure] = []
        var files = 0
        split(text, file: file, directory: directory, depth: 0, stack: [], into: &lines, files: &files, errors: &errors)
        var parsed = parse(lines: lines)
        parsed.errors = errors + parsed.errors
        return parsed
    }

    static func read(_ path: String, depth: Int, stack: [String], into lines: inout [SourceLine], files: inout Int,
                     errors: inout [Failure], from: Source?) {
        func fail(_ message: String) {
            errors.append(from?.failure(message) ?? Failure(file: path, line: 0, content: "", message: message))
        }
        files += 1
        guard files <= maxIncludedFiles else { return fail("more than \(maxIncludedFiles) configuration files") }
        let real = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
        guard !stack.contains(real) else { return fail("\(path) includes itself") }
        // FileHandle, not FileManager.contents: that reads nothing from /dev/null (tgt's `-c /dev/null`).
        guard let handle = FileHandle(forReadingAtPath: path) else { return fail("cannot read \(path)") }
        defer { try? handle.close() }
        guard let data = try? handle.read(upToCount: maxFileBytes + 1) ?? Data() else { return fail("cannot read \(path)") }
        guard data.count <= maxFileBytes else { return fail("\(path) is larger than \(maxFileBytes) bytes") }
        guard let text = String(data: data, encoding: .utf8) else { return fail("\(path) is not UTF-8 text") }
        split(text, file: path, directory: (path as NSString).deletingLastPathComponent, depth: depth,
              stack: stack + [real], into: &lines, files: &files, errors: &errors)
    }

    /// Splits `text` into lines and expands `include` lines in place (Config::General's -UseApacheInclude,
    /// -IncludeGlob, -IncludeDirectories): a glob that matches nothing includes nothing, as in tgt's default
    /// `include /etc/tgt/conf.d/*.conf`.
    static func split(_ text: String, file: String, directory: String, depth: Int, stack: [String],
                      into lines: inout [SourceLine], files: inout Int, errors: inout [Failure]) {
        var number = 0
        for raw in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline) {
            number += 1
            let content = raw.trimmingCharacters(in: .whitespacesAndNewlines)   // tolerates CRLF files
            let (key, value) = splitKeyValue(stripComment(content))
            guard key.lowercased() == "include" else {
                lines.append(SourceLine(file: file, number: number, text: content))
                continue
            }
            let source = Source(file: file, line: number, content: content)
            guard !value.isEmpty else { errors.append(source.failure("'include' needs a file, directory or glob")); continue }
            guard depth < maxIncludeDepth else {
                errors.append(source.failure("includes nest deeper than \(maxIncludeDepth)")); continue
            }
            let pattern = value.hasPrefix("/") ? value : (directory as NSString).appendingPathComponent(value)
            let isGlob = pattern.contains(where: { "*?[".contains($0) })
            var paths = isGlob ? glob(pattern) : [pattern]
            if !isGlob && !FileManager.default.fileExists(atPath: pattern) {
                errors.append(source.failure("no such file or directory")); continue
            }
            paths = paths.flatMap { p -> [String] in
                var isDirectory: ObjCBool = false
                guard FileManager.default.fileExists(atPath: p, isDirectory: &isDirectory), isDirectory.boolValue else { return [p] }
                let names = (try? FileManager.default.contentsOfDirectory(atPath: p)) ?? []
                return names.filter { !$0.hasPrefix(".") }.sorted().map { (p as NSString).appendingPathComponent($0) }
            }
            for p in paths {
                read(p, depth: depth + 1, stack: stack, into: &lines, files: &files, errors: &errors, from: source)
            }
        }
    }

    static func glob(_ pattern: String) -> [String] {
        var g = glob_t()
        defer { globfree(&g) }
        guard Glibc.glob(pattern, 0, nil, &g) == 0 else { return [] }
        return (0..<Int(g.gl_pathc)).compactMap { g.gl_pathv[$0].map { String(cString: $0) } }.sorted()
    }

    // MARK: - Parsing

    /// A block being read: target-level settings stay raw until </target>, when each LUN takes them.
    struct OpenTarget {
        var target: Target
        var settings: [(key: String, item: Item)] = []
        var pendingLUN: Item?
        var lunBlocks: [LUNBlock] = []
    }

    struct LUNBlock {
        var lun: LUN
        var explicit = false
        var direct = false
        var settings: [(key: String, item: Item)] = []
    }

    /// Config::General's -MergeDuplicateBlocks: a second <target> block of the same name adds to the first.
    static func merge(_ open: OpenTarget, into blocks: inout [OpenTarget], errors: inout [Failure]) {
        guard let i = blocks.firstIndex(where: { $0.target.name.lowercased() == open.target.name.lowercased() }) else {
            blocks.append(open)
            return
        }
        let t = open.target
        blocks[i].settings += open.settings
        blocks[i].lunBlocks += open.lunBlocks
        blocks[i].target.addresses += t.addresses
        blocks[i].target.initiatorNames += t.initiatorNames
        blocks[i].target.incoming += t.incoming
        blocks[i].target.keys += t.keys.filter { k in !blocks[i].target.keys.contains { $0.name.lowercased() == k.name.lowercased() } }
        if let out = t.outgoing {
            if blocks[i].target.outgoing != nil { errors.append(out.source.failure("only one outgoinguser is allowed")) }
            else { blocks[i].target.outgoing = out }
        }
        if let tid = t.tid {
            if let first = blocks[i].target.tid, first != tid { errors.append(t.source.failure("this target's tid is also given as \(first)")) }
            blocks[i].target.tid = tid
        }
    }

    static func parse(lines: [SourceLine]) -> Parsed {
        var config = Configuration()
        var errors: [Failure] = []
        var warnings: [Failure] = []
        var target: OpenTarget?
        var blocks: [OpenTarget] = []
        var lun: LUNBlock?
        var seenTopLevel: Set<String> = []
        for l in lines {
            let source = Source(file: l.file, line: l.number, content: l.text)
            func fail(_ message: String) { errors.append(source.failure(message)) }
            let line = stripComment(l.text)
            if line.isEmpty { continue }

            if line.hasPrefix("</") {
                guard line.hasSuffix(">") else { fail("unterminated closing tag"); continue }
                let tag = line.dropFirst(2).dropLast().trimmingCharacters(in: .whitespaces).lowercased()
                switch tag {
                case "backing-store", "direct-store":
                    guard let block = lun, target != nil else { fail("</\(tag)> without <\(tag)>"); continue }
                    target!.lunBlocks.append(block)
                    lun = nil
                case "target":
                    if let block = lun {
                        errors.append(block.lun.source.failure("<backing-store> is never closed"))
                        target?.lunBlocks.append(block)
                        lun = nil
                    }
                    guard var open = target else { fail("</target> without <target>"); continue }
                    if let pending = open.pendingLUN {
                        // tgt-admin: a target-level lun numbers the target's (one) backing store.
                        let auto = open.lunBlocks.indices.filter { !open.lunBlocks[$0].explicit }
                        if auto.count == 1, let n = ISCSITargetKeys.parseUnsigned(pending.value) {
                            open.lunBlocks[auto[0]].lun.number = n
                            open.lunBlocks[auto[0]].explicit = true
                        } else {
                            errors.append(pending.source.failure("'lun' is not followed by a backing-store"))
                        }
                    }
                    merge(open, into: &blocks, errors: &errors)
                    target = nil
                default:
                    fail("unknown closing tag")
                }
                continue
            }
            if line.hasPrefix("<") {
                guard line.hasSuffix(">") else { fail("unterminated tag"); continue }
                let (tag, value) = splitKeyValue(line.dropFirst().dropLast())
                switch tag.lowercased() {
                case "target":
                    if let open = target {
                        errors.append(open.target.source.failure("<target> is never closed"))
                        merge(open, into: &blocks, errors: &errors)
                        target = nil
                    }
                    guard !value.isEmpty else { fail("<target> needs a target name"); continue }
                    target = OpenTarget(target: Target(name: value, source: source))
                case "backing-store", "direct-store":
                    guard target != nil else { fail("<\(tag)> outside <target>"); continue }
                    guard lun == nil else { fail("<\(tag)> inside another <backing-store>"); continue }
                    guard !value.isEmpty else { fail("<\(tag)> needs a path"); continue }
                    lun = LUNBlock(lun: LUN(number: 0, path: value, source: source), direct: tag.lowercased() == "direct-store")
                default:
                    fail("unknown block")
                }
                continue
            }

            let (key, value) = splitKeyValue(line)
            guard !value.isEmpty else { fail("'\(key)' needs a value"); continue }
            let item = Item(value: value, source: source)
            if let reason = unsupported[key] { fail(reason); continue }
            if lun != nil {
                switch key {
                case "lun":
                    guard let n = ISCSITargetKeys.parseUnsigned(value) else { fail("lun must be a number"); continue }
                    lun!.lun.number = n
                    lun!.explicit = true
                case "allow-in-use":
                    checkYesNo(item, &errors)
                case _ where storeKeys.contains(key) || lunParameterKeys.contains(key)
                    || ["write-cache", "params", "device-type"].contains(key):
                    lun!.settings.append((key, item))
                default:
                    fail("'\(key)' is not a backing-store setting")
                }
                continue
            }
            guard target != nil else {
                switch key {
                case "default-driver", "ignore-errors", "control-port", "lun-defaults":
                    guard seenTopLevel.insert(key).inserted else { fail("multiple \(key) definitions are not allowed"); continue }
                    switch key {
                    case "default-driver":
                        if value != Registry.driverName { fail("only the iscsi driver is supported") }
                    case "lun-defaults":
                        guard let d = LUNDefaults(rawValue: value) else { fail("lun-defaults is tgt or ringtgt"); continue }
                        config.lunDefaults = d
                    case "ignore-errors":
                        if checkYesNo(item, &errors) { config.ignoreErrors = value == "yes" }
                    default:
                        guard let port = Int(value), port >= 0 else { fail("control-port must be a number"); continue }
                        config.controlPort = port
                    }
                case "incomingdiscoveryuser", "outgoingdiscoveryuser":
                    guard let account = account(key, value, source, &errors) else { continue }
                    if key == "incomingdiscoveryuser" {
                        config.discoveryIncoming.append(account)
                    } else if config.discoveryOutgoing != nil {
                        fail("only one outgoingdiscoveryuser is allowed")
                    } else {
                        config.discoveryOutgoing = account
                    }
                default:
                    fail(key == "lun" || storeKeys.contains(key) || lunParameterKeys.contains(key)
                         || key == "backing-store" || key == "direct-store" || key == "initiator-address"
                         ? "'\(key)' outside <target>" : "unknown setting '\(key)'")
                }
                continue
            }
            switch key {
            case "backing-store", "direct-store":
                var block = LUN(number: 0, path: value, source: source)
                var explicit = false
                if let pending = target!.pendingLUN, let n = ISCSITargetKeys.parseUnsigned(pending.value) {
                    block.number = n
                    explicit = true
                }
                target!.pendingLUN = nil
                target!.lunBlocks.append(LUNBlock(lun: block, explicit: explicit, direct: key == "direct-store"))
            case "lun":
                guard ISCSITargetKeys.parseUnsigned(value) != nil else { fail("lun must be a number"); continue }
                target!.pendingLUN = item
            case "incominguser", "outgoinguser":
                guard let account = account(key, value, source, &errors) else { continue }
                if key == "incominguser" {
                    target!.target.incoming.append(account)
                } else if target!.target.outgoing != nil {
                    fail("only one outgoinguser is allowed")
                } else {
                    target!.target.outgoing = account
                }
            case "driver":
                if value != Registry.driverName { fail("only the iscsi driver is supported") }
            case "allow-in-use":
                checkYesNo(item, &errors)
            case "tid", "controller_tid":
                guard let n = ISCSITargetKeys.parseUnsigned(value), n > 0, n <= UInt64(Int32.max) else {
                    fail("tid must be a positive number"); continue
                }
                target!.target.tid = Int(n)
            case "initiator-address":
                target!.target.addresses.append(item)
            case "initiator-name":
                target!.target.initiatorNames.append(item)
            case _ where storeKeys.contains(key) || lunParameterKeys.contains(key)
                || ["write-cache", "params", "device-type"].contains(key):
                target!.settings.append((key, item))
            case _ where ISCSITargetKeys.key(named: key) != nil || key == ISCSITargetKeys.aliasKey || key == "state"
                || key == ISCSITargetKeys.nopIntervalKey || key == ISCSITargetKeys.nopCountKey || ALUAKeys.all.contains(key):
                if let first = target!.target.keys.first(where: { $0.name.lowercased() == key.lowercased() }) {
                    // tgt-admin: "only one $option is allowed. Will only use the first one."
                    warnings.append(source.failure("only one \(key) is allowed; line \(first.item.source.line) is used"))
                    continue
                }
                target!.target.keys.append((key, item))
            default:
                fail("unknown setting '\(key)'")
            }
        }
        if let block = lun { errors.append(block.lun.source.failure("<backing-store> is never closed")) }
        if let open = target {
            errors.append(open.target.source.failure("<target> is never closed"))
            _ = finish(open, errors: &errors)
        }
        config.targets = blocks.map { finish($0, errors: &errors) }
        checkUnique(config, &errors)
        checkPortGroupStates(config, &errors)
        errors.sort { ($0.file, $0.line) < ($1.file, $1.line) }
        return Parsed(configuration: config, errors: errors, warnings: warnings)
    }

    /// `incominguser USER PASSWORD` and the like.
    static func account(_ key: String, _ value: String, _ source: Source, _ errors: inout [Failure]) -> Account? {
        let parts = value.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard parts.count == 2 else {
            errors.append(source.failure("\(key) takes a user and a password"))
            return nil
        }
        return Account(user: parts[0], password: parts[1], source: source)
    }

    @discardableResult
    static func checkYesNo(_ item: Item, _ errors: inout [Failure]) -> Bool {
        guard item.value == "yes" || item.value == "no" else {
            errors.append(item.source.failure("the value must be yes or no"))
            return false
        }
        return true
    }

    /// Numbers the LUNs, gives each its target's store settings and parameters, and checks what can be
    /// checked without a registry.
    static func finish(_ open: OpenTarget, errors: inout [Failure]) -> Target {
        var t = open.target
        var used = Set(open.lunBlocks.filter(\.explicit).map(\.lun.number))
        var next: UInt64 = 1
        // tgt-admin numbers the backing stores in the order of their paths, then the direct stores.
        let ordered = open.lunBlocks.enumerated().sorted { a, b in
            (a.element.direct ? 1 : 0, a.element.lun.path, a.offset) < (b.element.direct ? 1 : 0, b.element.lun.path, b.offset)
        }.map(\.element)
        for block in ordered {
            var lun = block.lun
            let lunSettings = block.settings
            if !block.explicit {
                while used.contains(next) { next += 1 }
                lun.number = next
                used.insert(next)
            }
            if t.luns.contains(where: { $0.number == lun.number }) {
                errors.append(lun.source.failure("LUN \(lun.number) is given twice"))
                continue
            }
            var scratch = LUNIdentity.tgtDefaults(tid: t.tid ?? 1, lun: lun.number)
            for (key, item) in open.settings + lunSettings {
                switch key {
                case "bs-type": lun.bstype = item
                case "bsopts": lun.bsopts = item
                case "bsoflags": lun.bsoflags = item
                case "block-size": lun.blockSize = item
                case "device-type":
                    if item.value != "disk" {
                        errors.append(item.source.failure("device type \(item.value) is not supported; ringtgt serves disks"))
                    }
                case "write-cache":
                    // tgt-admin's caching mode pages for write-cache off / on.
                    switch item.value {
                    case "off": lun.params.append(Item(value: "mode_page=" + writeCacheOffPage, source: item.source))
                    case "on": lun.params.append(Item(value: "mode_page=" + writeCacheOnPage, source: item.source))
                    default: errors.append(item.source.failure("write-cache must be on or off"))
                    }
                case "params":
                    do { try scratch.apply(params: item.value); lun.params.append(item) }
                    catch let error as AdminError { errors.append(item.source.failure(error.description)) }
                    catch { errors.append(item.source.failure("\(error)")) }
                default:
                    do { try scratch.apply(key: key, value: item.value); lun.params.append(Item(value: "\(key)=\(item.value)", source: item.source)) }
                    catch let error as AdminError { errors.append(item.source.failure(error.description)) }
                    catch { errors.append(item.source.failure("\(error)")) }
                }
            }
            t.luns.append(lun)
        }
        t.luns.sort { $0.number < $1.number }
        return t
    }

    static let writeCacheOffPage = "8:0:18:0x10:0:0xff:0xff:0:0:0xff:0xff:0xff:0xff:0x80:0x14:0:0:0:0:0:0"
    static let writeCacheOnPage = "8:0:18:0x14:0:0xff:0xff:0:0:0xff:0xff:0xff:0xff:0x80:0x14:0:0:0:0:0:0"

    /// Two targets with one tid (target names are unique: their blocks merge).
    static func checkUnique(_ config: Configuration, _ errors: inout [Failure]) {
        var tids: [Int: Int] = [:]
        for t in config.targets {
            if let tid = t.tid, let line = tids.updateValue(t.source.line, forKey: tid) {
                errors.append(t.source.failure("tid \(tid) is also used by the target at line \(line)"))
            }
        }
    }

    static func stripComment(_ line: String) -> String {
        guard let hash = line.firstIndex(of: "#") else { return line }
        return line[..<hash].trimmingCharacters(in: .whitespaces)
    }

    /// "key value with spaces" -> ("key", "value with spaces"); Config::General's "key = value" too;
    /// surrounding double quotes are removed.
    static func splitKeyValue<S: StringProtocol>(_ text: S) -> (String, String) {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard let space = trimmed.firstIndex(where: { $0 == " " || $0 == "\t" || $0 == "=" }) else { return (trimmed, "") }
        let key = String(trimmed[..<space])
        var value = trimmed[space...].trimmingCharacters(in: .whitespaces)
        if value.hasPrefix("=") { value = value.dropFirst().trimmingCharacters(in: .whitespaces) }
        if value.count >= 2 && value.hasPrefix("\"") && value.hasSuffix("\"") { value = String(value.dropFirst().dropLast()) }
        return (key, value)
    }

    // MARK: - Applying

    /// Reads the file at `path` and adds its targets to `registry` (tgt-admin -e). Throws Failures (every
    /// error) and changes nothing when anything is wrong, unless the file says `ignore-errors yes`.
    @discardableResult
    public static func load(path: String, into registry: Registry) throws -> ConfigUpdate.Report {
        try apply(parse(path: path), to: registry, checkStores: true)
    }

    /// Parses `text` and adds its targets (tgt-admin -e).
    @discardableResult
    public static func apply(_ text: String, to registry: Registry) throws -> ConfigUpdate.Report {
        try apply(parse(text), to: registry)
    }

    static func apply(_ parsed: Parsed, to registry: Registry, checkStores: Bool = false) throws -> ConfigUpdate.Report {
        let report = ConfigUpdate.run(parsed, mode: .execute, force: false, checkStores: checkStores, executor: registry.execute)
        if !report.errors.isEmpty && !parsed.configuration.ignoreErrors { throw Failures(report.errors) }
        return report
    }
}
