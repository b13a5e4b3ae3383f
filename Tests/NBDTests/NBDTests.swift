// The NBD codec, the handshake state machine, the request checks and the export catalog: no sockets.

import Testing
@testable import Floor
@testable import URing
@testable import Store
@testable import SCSI
@testable import NBD

@Suite struct NBDTests {
    static let maxPayload = 262_144

    static func lun(_ n: UInt64, bytes: UInt64 = 1 << 20, readOnly: Bool = false) -> LogicalUnit {
        var naa = [UInt8](repeating: 0, count: 16); naa[0] = 0x60
        return LogicalUnit(number: n, blockSize: 512, blockCount: bytes / 512,
                           capabilities: StoreCapabilities(canDiscard: true, discardZeroes: true, readOnly: readOnly),
                           serial: "s\(n)", naa: naa, backing: .null, bstype: "null", path: "/dev/null")
    }

    /// tid 1 "a" (LUN 0 and 2, open to all), tid 2 "b" (LUN 1 read-only, alias "disk", open to 10.0.0.0/8 only),
    /// tid 3 "c" (no LUNs).
    static let snapshot = ConfigSnapshot(version: 1, targets: [
        TargetRuntime(tid: 2, name: "iqn.2026-01.org.ringtgt:b", alias: "disk", luns: [lun(1, readOnly: true)],
                      acl: [.cidr("10.0.0.0", prefixLength: 8)], params: [:], lunGeneration: 1),
        TargetRuntime(tid: 1, name: "iqn.2026-01.org.ringtgt:a", luns: [lun(2, bytes: 2 << 20), lun(0)], acl: [.all],
                      params: [:], lunGeneration: 1),
        TargetRuntime(tid: 3, name: "iqn.2026-01.org.ringtgt:c", luns: [], acl: [.all], params: [:], lunGeneration: 1),
    ])

    static func catalog(peer: String = "127.0.0.1") -> NBDExportCatalog {
        NBDExportCatalog(snapshot: snapshot, peerAddress: peer, maxPayloadBytes: maxPayload)
    }

    static func be32(_ v: Int) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (24 - 8 * $0)) } }
    static func be16(_ v: Int) -> [UInt8] { [UInt8(truncatingIfNeeded: v >> 8), UInt8(truncatingIfNeeded: v)] }

    /// NBD_OPT_INFO/GO data: name length, name, request count, requests.
    static func goData(_ name: String, _ requests: [Int] = []) -> [UInt8] {
        let n = Array(name.utf8)
        return be32(n.count) + n + be16(requests.count) + requests.flatMap { be16($0) }
    }

    /// Splits concatenated option replies into (option, type, data).
    static func replies(_ b: [UInt8]) -> [(option: UInt32, type: UInt32, data: [UInt8])] {
        var out: [(UInt32, UInt32, [UInt8])] = []
        var i = 0
        func u32(_ at: Int) -> UInt32 { b[at..<at + 4].reduce(0) { $0 << 8 | UInt32($1) } }
        while i + 20 <= b.count {
            let magic = b[i..<i + 8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            #expect(magic == NBDWire.optionReplyMagic)
            let len = Int(u32(i + 16))
            out.append((u32(i + 8), u32(i + 12), Array(b[(i + 20)..<(i + 20 + len)])))
            i += 20 + len
        }
        #expect(i == b.count)
        return out
    }

    static func haggling() -> NBDHandshake {
        var h = NBDHandshake()
        _ = h.clientFlags(NBDWire.clientFixedNewstyle | NBDWire.clientNoZeroes)
        return h
    }

    // MARK: Wire

    @Test func greetingIsMagicsAndFixedNewstyleNoZeroes() {
        #expect(NBDEncode.greeting() == Array("NBDMAGIC".utf8) + Array("IHAVEOPT".utf8) + [0, 3])
    }

    @Test func requestHeaderRoundTripsBigEndian() {
        let r = NBDRequestHeader(flags: 1, type: NBDWire.cmdWrite, cookie: 0x0102_0304_0506_0708, offset: 1 << 40,
                                 length: 4096)
        var bytes = [UInt8](repeating: 0, count: NBDWire.requestBytes)
        bytes.withUnsafeMutableBytes { r.encode(to: $0.baseAddress!) }
        #expect(Array(bytes[0..<4]) == [0x25, 0x60, 0x95, 0x13])
        #expect(Array(bytes[8..<16]) == [1, 2, 3, 4, 5, 6, 7, 8])
        let back = bytes.withUnsafeBytes { NBDRequestHeader(decoding: $0.baseAddress!) }
        #expect(back == r)
    }

    @Test func simpleReplyIsMagicErrorCookie() {
        var b = [UInt8](repeating: 0xFF, count: 16)
        b.withUnsafeMutableBytes { nbdSimpleReply($0.baseAddress!, error: 22, cookie: 9) }
        #expect(b == [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22, 0, 0, 0, 0, 0, 0, 0, 9])
    }

    // MARK: Request checks

    static let limits = NBDExportLimits(sizeBytes: 1 << 20, readOnly: false, maxPayloadBytes: maxPayload, minimumBlockBytes: 1)

    static func check(_ type: UInt16, _ offset: UInt64, _ length: UInt32, flags: UInt16 = 0,
                      limits: NBDExportLimits = limits) -> NBDRequestCheck {
        limits.check(NBDRequestHeader(flags: flags, type: type, cookie: 1, offset: offset, length: length))
    }

    @Test func inRangeRequestsAreAccepted() {
        #expect(Self.check(NBDWire.cmdRead, 0, 4096) == .accept)
        #expect(Self.check(NBDWire.cmdWrite, (1 << 20) - 1, 1, flags: NBDWire.cmdFlagFUA) == .accept)
        #expect(Self.check(NBDWire.cmdFlush, 0, 0) == .accept)
        #expect(Self.check(NBDWire.cmdWriteZeroes, 0, 1 << 20, flags: NBDWire.cmdFlagNoHole) == .accept)
        // TRIM and WRITE_ZEROES carry no payload: the payload limit does not apply to them.
        #expect(Self.check(NBDWire.cmdTrim, 0, 1 << 20) == .accept)
    }

    @Test func oversizedReadAndWriteAreEOVERFLOWAndHugeWritesDisconnect() {
        #expect(Self.check(NBDWire.cmdRead, 0, UInt32(Self.maxPayload + 1)) == .refuse(NBDWire.errOverflow))
        #expect(Self.check(NBDWire.cmdWrite, 0, UInt32(Self.maxPayload + 1)) == .refuse(NBDWire.errOverflow))
        #expect(Self.check(NBDWire.cmdWrite, 0, UInt32(NBDWire.maxSkippedPayloadBytes + 1)) == .disconnect)
    }

    @Test func beyondTheEndIsENOSPCForWritesAndEINVALOtherwise() {
        #expect(Self.check(NBDWire.cmdWrite, 1 << 20, 1) == .refuse(NBDWire.errNoSpace))
        #expect(Self.check(NBDWire.cmdWriteZeroes, (1 << 20) - 512, 1024) == .refuse(NBDWire.errNoSpace))
        #expect(Self.check(NBDWire.cmdRead, 1 << 20, 1) == .refuse(NBDWire.errInvalid))
        #expect(Self.check(NBDWire.cmdTrim, UInt64.max - 10, 100) == .refuse(NBDWire.errInvalid))
    }

    @Test func unknownCommandsAndFlagsAreEINVAL() {
        #expect(Self.check(9, 0, 0) == .refuse(NBDWire.errInvalid))
        #expect(Self.check(NBDWire.cmdRead, 0, 512, flags: NBDWire.cmdFlagNoHole) == .refuse(NBDWire.errInvalid))
        #expect(Self.check(NBDWire.cmdRead, 0, 512, flags: 1 << 2) == .refuse(NBDWire.errInvalid))
    }

    @Test func readOnlyExportsRefuseWritesWithEPERM() {
        var ro = Self.limits
        ro.readOnly = true
        #expect(Self.check(NBDWire.cmdWrite, 0, 512, limits: ro) == .refuse(NBDWire.errPerm))
        #expect(Self.check(NBDWire.cmdTrim, 0, 512, limits: ro) == .refuse(NBDWire.errPerm))
        #expect(Self.check(NBDWire.cmdWriteZeroes, 0, 512, limits: ro) == .refuse(NBDWire.errPerm))
        #expect(Self.check(NBDWire.cmdRead, 0, 512, limits: ro) == .accept)
        #expect(Self.check(NBDWire.cmdFlush, 0, 0, limits: ro) == .accept)
    }

    @Test func directIOExportsRefuseUnalignedRequests() {
        var direct = Self.limits
        direct.minimumBlockBytes = 512
        #expect(Self.check(NBDWire.cmdRead, 512, 1024, limits: direct) == .accept)
        #expect(Self.check(NBDWire.cmdRead, 100, 512, limits: direct) == .refuse(NBDWire.errInvalid))
        #expect(Self.check(NBDWire.cmdWrite, 0, 100, limits: direct) == .refuse(NBDWire.errInvalid))
    }

    // MARK: Export catalog

    @Test func namesAreIQNSlashLUNCaseInsensitiveOnTheIQN() {
        guard case .found(let e) = Self.catalog().lookup("IQN.2026-01.org.ringtgt:A/2") else {
            Issue.record("not found"); return
        }
        #expect(e.name == "iqn.2026-01.org.ringtgt:a/2")
        #expect(e.sizeBytes == 2 << 20)
        #expect(Self.catalog().lookup("iqn.2026-01.org.ringtgt:a/0") != .unknown)
        #expect(Self.catalog().lookup("iqn.2026-01.org.ringtgt:a/7") == .unknown)
        #expect(Self.catalog().lookup("nonsense") == .unknown)
    }

    @Test func emptyNameIsTheFirstAllowedTargetsFirstLUNFromOne() {
        // tid 1 comes first; its LUN 0 is skipped.
        guard case .found(let e) = Self.catalog().lookup("") else { Issue.record("no default export"); return }
        #expect(e.name == "iqn.2026-01.org.ringtgt:a/2")
        // From 10.1.2.3, tid 2 is allowed too but tid 1 still comes first.
        guard case .found(let f) = Self.catalog(peer: "10.1.2.3").lookup("") else { Issue.record("none"); return }
        #expect(f.tid == 1)
    }

    @Test func targetsThatRequireCHAPAreNotExported() {
        let chap = CHAPCredentials(incoming: [CHAPAccount(user: "alice", password: "secret123456")])
        let snap = ConfigSnapshot(version: 1, targets: [
            TargetRuntime(tid: 1, name: "iqn.2026-01.org.ringtgt:locked", luns: [Self.lun(1)], acl: [.all],
                          params: [:], lunGeneration: 1, chap: chap),
            TargetRuntime(tid: 2, name: "iqn.2026-01.org.ringtgt:open", luns: [Self.lun(1)], acl: [.all],
                          params: [:], lunGeneration: 1),
        ])
        let c = NBDExportCatalog(snapshot: snap, peerAddress: "127.0.0.1", maxPayloadBytes: Self.maxPayload)
        #expect(c.lookup("iqn.2026-01.org.ringtgt:locked/1") == .denied)
        guard case .found(let e) = c.lookup("") else { Issue.record("no default export"); return }
        #expect(e.name == "iqn.2026-01.org.ringtgt:open/1")
        #expect(c.visible.map(\.name) == ["iqn.2026-01.org.ringtgt:open/1"])
    }

    @Test func aclDeniesByPeerAddressAndListShowsOnlyAllowedExports() {
        #expect(Self.catalog().lookup("iqn.2026-01.org.ringtgt:b/1") == .denied)
        #expect(Self.catalog().lookup("disk") == .denied)
        guard case .found(let e) = Self.catalog(peer: "10.9.9.9").lookup("disk") else { Issue.record("alias"); return }
        #expect(e.name == "iqn.2026-01.org.ringtgt:b/1")
        #expect(e.readOnly)
        #expect(Self.catalog().visible.map(\.name) == ["iqn.2026-01.org.ringtgt:a/0", "iqn.2026-01.org.ringtgt:a/2"])
        #expect(Self.catalog(peer: "10.9.9.9").visible.count == 3)
    }

    @Test func transmissionFlagsFollowReadOnly() {
        guard case .found(let rw) = Self.catalog().lookup(""),
              case .found(let ro) = Self.catalog(peer: "10.0.0.1").lookup("disk") else { Issue.record("lookup"); return }
        let common = NBDWire.transHasFlags | NBDWire.transSendFlush | NBDWire.transSendFUA | NBDWire.transCanMultiConn
            | NBDWire.transSendCache
        #expect(rw.transmissionFlags
                == common | NBDWire.transSendTrim | NBDWire.transSendWriteZeroes | NBDWire.transSendFastZero)
        #expect(ro.transmissionFlags == common | NBDWire.transReadOnly)
    }

    // MARK: Handshake

    @Test func unknownClientFlagsClose() {
        var h = NBDHandshake()
        guard case .close = h.clientFlags(1 << 5).next else { Issue.record("not closed"); return }
    }

    @Test func exportNameAnswersSizeAndFlagsWithoutZeroesWhenAsked() {
        var h = Self.haggling()
        let step = h.option(NBDWire.optExportName, data: Array("iqn.2026-01.org.ringtgt:a/2".utf8), catalog: Self.catalog())
        guard case .transmission(let e) = step.next else { Issue.record("\(step.next)"); return }
        #expect(step.reply == [0, 0, 0, 0, 0, 0x20, 0, 0] + Self.be16(Int(e.transmissionFlags)))
        var old = NBDHandshake()
        _ = old.clientFlags(NBDWire.clientFixedNewstyle)
        let withZeroes = old.option(NBDWire.optExportName, data: [], catalog: Self.catalog())
        #expect(withZeroes.reply.count == 10 + 124)
    }

    @Test func exportNameOfAnUnknownOrDeniedExportCloses() {
        var h = Self.haggling()
        guard case .close = h.option(NBDWire.optExportName, data: Array("nope".utf8), catalog: Self.catalog()).next else {
            Issue.record("unknown export did not close"); return
        }
        var d = Self.haggling()
        guard case .close = d.option(NBDWire.optExportName, data: Array("disk".utf8), catalog: Self.catalog()).next else {
            Issue.record("denied export did not close"); return
        }
    }

    @Test func goAnswersExportInfoNameBlockSizesThenAck() {
        var h = Self.haggling()
        let step = h.option(NBDWire.optGo, data: Self.goData("", [Int(NBDWire.infoName), Int(NBDWire.infoBlockSize)]),
                            catalog: Self.catalog())
        guard case .transmission = step.next else { Issue.record("\(step.next)"); return }
        let r = Self.replies(step.reply)
        #expect(r.map(\.type) == [NBDWire.repInfo, NBDWire.repInfo, NBDWire.repInfo, NBDWire.repAck])
        #expect(r.allSatisfy { $0.option == NBDWire.optGo })
        #expect(Array(r[0].data[0..<2]) == [0, 0] && r[0].data.count == 12)          // NBD_INFO_EXPORT
        #expect(r[1].data == [0, 1] + Array("iqn.2026-01.org.ringtgt:a/2".utf8))     // NBD_INFO_NAME
        #expect(r[2].data == [0, 3] + Self.be32(1) + Self.be32(4096) + Self.be32(Self.maxPayload))
        #expect(h.isInTransmission)
    }

    @Test func infoKeepsHagglingAndErrorsAreTyped() {
        var h = Self.haggling()
        let info = h.option(NBDWire.optInfo, data: Self.goData("iqn.2026-01.org.ringtgt:a/0"), catalog: Self.catalog())
        #expect(info.next == .proceed)
        #expect(Self.replies(info.reply).last?.type == NBDWire.repAck)
        let unknown = h.option(NBDWire.optGo, data: Self.goData("nope"), catalog: Self.catalog())
        #expect(unknown.next == .proceed && Self.replies(unknown.reply).map(\.type) == [NBDWire.repErrUnknown])
        let denied = h.option(NBDWire.optGo, data: Self.goData("disk"), catalog: Self.catalog())
        #expect(Self.replies(denied.reply).map(\.type) == [NBDWire.repErrPolicy])
        let malformed = h.option(NBDWire.optGo, data: Self.be32(100) + [0, 0], catalog: Self.catalog())
        #expect(Self.replies(malformed.reply).map(\.type) == [NBDWire.repErrInvalid])
        let badCount = h.option(NBDWire.optGo, data: Self.goData("") + [0], catalog: Self.catalog())
        #expect(Self.replies(badCount.reply).map(\.type) == [NBDWire.repErrInvalid])
        #expect(!h.isInTransmission)
    }

    @Test func listNamesEveryAllowedExportThenAcks() {
        var h = Self.haggling()
        let r = Self.replies(h.option(NBDWire.optList, data: [], catalog: Self.catalog()).reply)
        #expect(r.map(\.type) == [NBDWire.repServer, NBDWire.repServer, NBDWire.repAck])
        let name = Array("iqn.2026-01.org.ringtgt:a/0".utf8)
        #expect(Array(r[0].data[0..<(4 + name.count)]) == Self.be32(name.count) + name)
        let withData = h.option(NBDWire.optList, data: [1], catalog: Self.catalog())
        #expect(Self.replies(withData.reply).map(\.type) == [NBDWire.repErrInvalid])
    }

    @Test func tlsAndUnknownOptionsAreUnsupported() {
        var h = Self.haggling()
        for option in [NBDWire.optStartTLS, 11, 0x1234] {
            let step = h.option(option, data: [], catalog: Self.catalog())
            #expect(step.next == .proceed)
            #expect(Self.replies(step.reply).map(\.type) == [NBDWire.repErrUnsup])
        }
    }

    /// NBD_OPT_{LIST,SET}_META_CONTEXT data: export name, query count, queries.
    static func metaData(_ name: String, _ queries: [String]) -> [UInt8] {
        let n = Array(name.utf8)
        return be32(n.count) + n + be32(queries.count) + queries.flatMap { be32($0.utf8.count) + Array($0.utf8) }
    }

    static let exportA2 = "iqn.2026-01.org.ringtgt:a/2"

    @Test func metaContextsNeedStructuredRepliesFirst() {
        var h = Self.haggling()
        for option in [NBDWire.optListMetaContext, NBDWire.optSetMetaContext] {
            let step = h.option(option, data: Self.metaData(Self.exportA2, []), catalog: Self.catalog())
            #expect(Self.replies(step.reply).map(\.type) == [NBDWire.repErrInvalid])
        }
        let withData = h.option(NBDWire.optStructuredReply, data: [0], catalog: Self.catalog())
        #expect(Self.replies(withData.reply).map(\.type) == [NBDWire.repErrInvalid])
        let ack = h.option(NBDWire.optStructuredReply, data: [], catalog: Self.catalog())
        #expect(Self.replies(ack.reply).map(\.type) == [NBDWire.repAck])
        #expect(h.structuredReplies)
    }

    @Test func listMetaContextOffersBaseAllocationByNamespaceOrName() {
        var h = Self.haggling()
        _ = h.option(NBDWire.optStructuredReply, data: [], catalog: Self.catalog())
        for queries in [["base:"], ["base:allocation"]] {
            let r = Self.replies(h.option(NBDWire.optListMetaContext, data: Self.metaData(Self.exportA2, queries),
                                          catalog: Self.catalog()).reply)
            #expect(r.map(\.type) == [NBDWire.repMetaContext, NBDWire.repAck], "\(queries)")
            // LIST's context ID is reserved: 0.
            #expect(r.first?.data == Self.be32(0) + Array("base:allocation".utf8))
        }
        // No query lists every context; "qemu:" and the name list qemu:allocation-depth.
        let all = Self.replies(h.option(NBDWire.optListMetaContext, data: Self.metaData(Self.exportA2, []),
                                        catalog: Self.catalog()).reply)
        #expect(all.map(\.type) == [NBDWire.repMetaContext, NBDWire.repMetaContext, NBDWire.repAck])
        #expect(all.dropLast().map(\.data) == [Self.be32(0) + Array("base:allocation".utf8),
                                               Self.be32(0) + Array("qemu:allocation-depth".utf8)])
        for queries in [["qemu:"], ["qemu:allocation-depth"]] {
            let r = Self.replies(h.option(NBDWire.optListMetaContext, data: Self.metaData(Self.exportA2, queries),
                                          catalog: Self.catalog()).reply)
            #expect(r.first?.data == Self.be32(0) + Array("qemu:allocation-depth".utf8), "\(queries)")
        }
        let none = h.option(NBDWire.optListMetaContext, data: Self.metaData(Self.exportA2, ["qemu:dirty-bitmap:x"]),
                            catalog: Self.catalog())
        #expect(Self.replies(none.reply).map(\.type) == [NBDWire.repAck])
        let unknown = h.option(NBDWire.optListMetaContext, data: Self.metaData("nope", []), catalog: Self.catalog())
        #expect(Self.replies(unknown.reply).map(\.type) == [NBDWire.repErrUnknown])
        let truncated = h.option(NBDWire.optListMetaContext, data: Array(Self.metaData(Self.exportA2, ["base:"]).dropLast()),
                                 catalog: Self.catalog())
        #expect(Self.replies(truncated.reply).map(\.type) == [NBDWire.repErrInvalid])
    }

    @Test func setMetaContextEnablesBlockStatusOnThatExportOnly() throws {
        var h = Self.haggling()
        _ = h.option(NBDWire.optStructuredReply, data: [], catalog: Self.catalog())
        let r = Self.replies(h.option(NBDWire.optSetMetaContext, data: Self.metaData(Self.exportA2, ["base:allocation"]),
                                      catalog: Self.catalog()).reply)
        #expect(r.map(\.type) == [NBDWire.repMetaContext, NBDWire.repAck])
        #expect(r.first?.data == Self.be32(Int(NBDWire.baseAllocationID)) + Array("base:allocation".utf8))
        let go = h.option(NBDWire.optGo, data: Self.goData(Self.exportA2), catalog: Self.catalog())
        guard case .transmission(let export) = go.next else { Issue.record("GO did not enter transmission"); return }
        let limits = h.limits(for: export)
        #expect(limits.structuredReplies && limits.blockStatus && limits.metaContexts == .baseAllocation)
        let info = try #require(Self.replies(go.reply).first { $0.type == NBDWire.repInfo })
        // NBD_INFO_EXPORT: type, size, then the transmission flags.
        let flags = UInt16(info.data[10]) << 8 | UInt16(info.data[11])
        #expect(flags & NBDWire.transSendDF != 0)
        // Selected for another export: not carried over.
        if case .found(let other) = Self.catalog().lookup("iqn.2026-01.org.ringtgt:a/0") {
            #expect(!h.limits(for: other).blockStatus)
        } else {
            Issue.record("no export a/0")
        }
    }

    @Test func setMetaContextSelectsBothContextsWithTheirIDs() throws {
        var h = Self.haggling()
        _ = h.option(NBDWire.optStructuredReply, data: [], catalog: Self.catalog())
        let r = Self.replies(h.option(NBDWire.optSetMetaContext,
                                      data: Self.metaData(Self.exportA2, ["qemu:allocation-depth", "base:allocation"]),
                                      catalog: Self.catalog()).reply)
        #expect(r.map(\.type) == [NBDWire.repMetaContext, NBDWire.repMetaContext, NBDWire.repAck])
        #expect(r.dropLast().map(\.data) == [Self.be32(Int(NBDWire.baseAllocationID)) + Array("base:allocation".utf8),
                                             Self.be32(Int(NBDWire.allocationDepthID)) + Array("qemu:allocation-depth".utf8)])
        guard case .found(let export) = Self.catalog().lookup(Self.exportA2) else { Issue.record("no export"); return }
        let contexts = h.limits(for: export).metaContexts
        #expect(contexts == [.baseAllocation, .allocationDepth])
        #expect(contexts.id(lane: 0) == NBDWire.baseAllocationID && contexts.id(lane: 1) == NBDWire.allocationDepthID)
        #expect(NBDMetaContexts.allocationDepth.id(lane: 0) == NBDWire.allocationDepthID)
    }

    @Test func setMetaContextWithoutAMatchClearsTheSelection() throws {
        var h = Self.haggling()
        _ = h.option(NBDWire.optStructuredReply, data: [], catalog: Self.catalog())
        _ = h.option(NBDWire.optSetMetaContext, data: Self.metaData(Self.exportA2, ["base:allocation"]), catalog: Self.catalog())
        let r = h.option(NBDWire.optSetMetaContext, data: Self.metaData(Self.exportA2, ["base:"]), catalog: Self.catalog())
        #expect(Self.replies(r.reply).map(\.type) == [NBDWire.repAck])
        guard case .found(let export) = Self.catalog().lookup(Self.exportA2) else { Issue.record("no export"); return }
        #expect(!h.limits(for: export).blockStatus)
    }

    @Test func cacheAndFastZeroAreChecked() {
        var limits = NBDExportLimits(sizeBytes: 1 << 20, readOnly: false, maxPayloadBytes: 65_536, minimumBlockBytes: 1)
        func check(_ type: UInt16, flags: UInt16 = 0, length: UInt32 = 4096) -> NBDRequestCheck {
            limits.check(NBDRequestHeader(flags: flags, type: type, cookie: 1, offset: 0, length: length))
        }
        // CACHE is not a payload: it may be longer than a buffer slot, but takes no flags.
        #expect(check(NBDWire.cmdCache, length: 1 << 20) == .accept)
        #expect(check(NBDWire.cmdCache, flags: NBDWire.cmdFlagFUA) == .refuse(NBDWire.errInvalid))
        #expect(check(NBDWire.cmdWriteZeroes, flags: NBDWire.cmdFlagFastZero | NBDWire.cmdFlagNoHole) == .accept)
        #expect(check(NBDWire.cmdWrite, flags: NBDWire.cmdFlagFastZero) == .refuse(NBDWire.errInvalid))
        limits.readOnly = true
        #expect(check(NBDWire.cmdCache) == .accept)
    }

    @Test func blockStatusAndDFAreCheckedAgainstWhatWasNegotiated() {
        var limits = NBDExportLimits(sizeBytes: 1 << 20, readOnly: true, maxPayloadBytes: 65_536, minimumBlockBytes: 1)
        func check(_ type: UInt16, flags: UInt16 = 0, offset: UInt64 = 0, length: UInt32 = 4096) -> NBDRequestCheck {
            limits.check(NBDRequestHeader(flags: flags, type: type, cookie: 1, offset: offset, length: length))
        }
        #expect(check(NBDWire.cmdBlockStatus) == .refuse(NBDWire.errInvalid))
        #expect(check(NBDWire.cmdRead, flags: NBDWire.cmdFlagDF) == .refuse(NBDWire.errInvalid))
        limits.structuredReplies = true
        limits.metaContexts = .baseAllocation
        #expect(check(NBDWire.cmdRead, flags: NBDWire.cmdFlagDF) == .accept)
        // Block status is a read: a read-only export answers it, and its length is not a payload.
        #expect(check(NBDWire.cmdBlockStatus, length: 1 << 20) == .accept)
        #expect(check(NBDWire.cmdBlockStatus, flags: NBDWire.cmdFlagReqOne) == .accept)
        #expect(check(NBDWire.cmdBlockStatus, flags: NBDWire.cmdFlagFUA) == .refuse(NBDWire.errInvalid))
        #expect(check(NBDWire.cmdBlockStatus, length: 0) == .refuse(NBDWire.errInvalid))
        #expect(check(NBDWire.cmdBlockStatus, offset: 1 << 20, length: 1) == .refuse(NBDWire.errInvalid))
    }

    @Test func abortAcksThenCloses() {
        var h = Self.haggling()
        let step = h.option(NBDWire.optAbort, data: [], catalog: Self.catalog())
        #expect(Self.replies(step.reply).map(\.type) == [NBDWire.repAck])
        guard case .close = step.next else { Issue.record("\(step.next)"); return }
    }

    @Test func oversizedOptionDataIsTooBigAndEndlessHagglingIsCutOff() {
        var h = Self.haggling()
        #expect(Self.replies(h.oversizedOption(NBDWire.optGo).reply).map(\.type) == [NBDWire.repErrTooBig])
        guard case .close = h.oversizedOption(NBDWire.optExportName).next else { Issue.record("export name"); return }
        var spam = Self.haggling()
        var closed = false
        for _ in 0...NBDHandshake.maxOptions {
            if case .close = spam.option(0x99, data: [], catalog: Self.catalog()).next { closed = true; break }
        }
        #expect(closed)
    }

}
