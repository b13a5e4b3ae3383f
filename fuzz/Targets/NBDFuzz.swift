// The NBD fixed newstyle handshake (NBDHandshake.swift, the export catalog, NBDExportOption.swift) and then the
// transmission-phase request checks (NBDWire.swift). Input: one byte choosing the client's address and the
// export limits, then the client's side of the connection as raw wire bytes (a captured nbdinfo or qemu-img
// session works as it is): 32-bit client flags, options, then 28-byte requests with write payloads.

import ISCSIWire
// The machines' internals are reachable only where Target is built for testing: debug, and fuzz/run's build.
#if DEBUG || FUZZING
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor

enum NBDFuzz {
    static let maxPayload = 262_144
    static let maxRequests = 512

    static func lun(_ n: UInt64, bytes: UInt64, readOnly: Bool = false) -> LogicalUnit {
        var naa = [UInt8](repeating: 0, count: 16); naa[0] = 0x60
        return LogicalUnit(number: n, blockSize: 512, blockCount: bytes / 512,
                           capabilities: StoreCapabilities(canDiscard: true, discardZeroes: true, readOnly: readOnly),
                           serial: "s\(n)", naa: naa, backing: .null, bstype: "null", path: "/dev/null")
    }

    /// As NBDTests: tid 1 open to all (LUN 0 and 2), tid 2 read-only with an alias and a 10/8 ACL, tid 3 without
    /// LUNs, tid 4 requiring CHAP (never exported).
    static let snapshot = ConfigSnapshot(version: 1, targets: [
        TargetRuntime(tid: 2, name: "iqn.2026-01.org.ringtgt:b", alias: "disk", luns: [lun(1, bytes: 1 << 20, readOnly: true)],
                      acl: [.cidr("10.0.0.0", prefixLength: 8)], params: [:], lunGeneration: 1),
        TargetRuntime(tid: 1, name: "iqn.2026-01.org.ringtgt:a", luns: [lun(2, bytes: 2 << 20), lun(0, bytes: 1 << 20)],
                      acl: [.all], params: [:], lunGeneration: 1),
        TargetRuntime(tid: 3, name: "iqn.2026-01.org.ringtgt:c", luns: [], acl: [.all], params: [:], lunGeneration: 1),
        TargetRuntime(tid: 4, name: "iqn.2026-01.org.ringtgt:d", luns: [lun(1, bytes: 1 << 20)], acl: [.all], params: [:],
                      lunGeneration: 1, chap: CHAPCredentials(incoming: [CHAPAccount(user: "u", password: "secret123456")])),
    ])

    static func run(_ raw: UnsafeRawBufferPointer) {
        var input = FuzzInput(raw)
        let choice = input.byte()
        let catalog = NBDExportCatalog(snapshot: snapshot, peerAddress: choice & 1 != 0 ? "10.1.2.3" : "127.0.0.1",
                                       maxPayloadBytes: maxPayload)
        var hs = NBDHandshake()
        let first = hs.clientFlags(input.u32())
        FuzzCheck.expect(first.reply.isEmpty, "a reply to the client flags")
        if case .close = first.next { return }
        var export: NBDExport? = nil
        while export == nil {
            guard input.remaining >= NBDWire.optionHeaderBytes else { return }
            // The connection closes on a bad magic before the handshake sees the option.
            guard input.u64() == NBDWire.optionMagic else { return }
            let option = input.u32()
            let length = Int(input.u32())
            let step: NBDHandshake.Step
            if length > NBDHandshake.maxOptionDataBytes {
                input.skip(length)
                step = hs.oversizedOption(option)
            } else {
                let data = input.bytes(length)
                guard data.count == length else { return }
                step = hs.option(option, data: data, catalog: catalog)
            }
            checkReplies(step.reply, option: option, noZeroes: hs.noZeroes)
            switch step.next {
            case .proceed: continue
            case .close: return
            case .transmission(let e):
                FuzzCheck.expect(hs.isInTransmission, "transmission without the handshake in transmission")
                if case .found(let again) = catalog.lookup(e.name) {
                    FuzzCheck.expect(again == e, "export \(e.name) looks up as another export")
                } else {
                    FuzzCheck.expect(false, "export \(e.name) chosen but not found by its own name")
                }
                export = e
            }
        }
        var limits = export!.limits
        if choice & 2 != 0 { limits.minimumBlockBytes = 512 }
        for _ in 0 ..< maxRequests {
            guard input.remaining >= NBDWire.requestBytes else { return }
            let header = input.bytes(NBDWire.requestBytes)
            let r = header.withUnsafeBytes { NBDRequestHeader(decoding: $0.baseAddress!) }
            guard r.magic == NBDWire.requestMagic, r.type != NBDWire.cmdDisc else { return }
            let check = limits.check(r)
            switch check {
            case .accept:
                var known: Set<UInt16> = [NBDWire.cmdRead, NBDWire.cmdWrite, NBDWire.cmdFlush, NBDWire.cmdTrim,
                                          NBDWire.cmdWriteZeroes, NBDWire.cmdCache]
                if limits.blockStatus { known.insert(NBDWire.cmdBlockStatus) }
                FuzzCheck.expect(known.contains(r.type), "command \(r.type) accepted")
                if r.type != NBDWire.cmdFlush {
                    let (end, overflow) = r.offset.addingReportingOverflow(UInt64(r.length))
                    FuzzCheck.expect(!overflow && end <= limits.sizeBytes, "request [\(r.offset), +\(r.length)) beyond \(limits.sizeBytes)")
                    FuzzCheck.expect(r.offset % UInt64(limits.minimumBlockBytes) == 0
                                     && UInt64(r.length) % UInt64(limits.minimumBlockBytes) == 0, "unaligned request accepted")
                }
                if r.type == NBDWire.cmdRead || r.type == NBDWire.cmdWrite {
                    FuzzCheck.expect(Int(r.length) <= limits.maxPayloadBytes, "payload \(r.length) beyond one slot")
                }
                if limits.readOnly {
                    let reads: Set<UInt16> = [NBDWire.cmdRead, NBDWire.cmdFlush, NBDWire.cmdCache, NBDWire.cmdBlockStatus]
                    FuzzCheck.expect(reads.contains(r.type), "command \(r.type) on a read-only export")
                }
                if r.type == NBDWire.cmdWrite { input.skip(Int(r.length)) }
            case .refuse(let e):
                FuzzCheck.expect(e != 0, "refused with error 0")
                if r.type == NBDWire.cmdWrite { input.skip(Int(r.length)) }
            case .disconnect:
                FuzzCheck.expect(r.type == NBDWire.cmdWrite && Int(r.length) > NBDWire.maxSkippedPayloadBytes,
                                 "disconnect for \(r)")
                return
            }
        }
    }

    /// Every option reply is whole and names the option it answers; NBD_OPT_EXPORT_NAME has its fixed reply.
    static func checkReplies(_ reply: [UInt8], option: UInt32, noZeroes: Bool) {
        if option == NBDWire.optExportName {
            FuzzCheck.expect(reply.isEmpty || reply.count == NBDWire.exportNameReplyBytes + (noZeroes ? 0 : NBDWire.exportNameReplyZeroBytes),
                             "NBD_OPT_EXPORT_NAME reply of \(reply.count) bytes")
            return
        }
        let input = reply
        var at = 0
        func be(_ n: Int) -> UInt64 { var v: UInt64 = 0; for i in 0 ..< n { v = v << 8 | UInt64(input[at + i]) }; at += n; return v }
        var last: UInt64 = 0
        while at < input.count {
            guard input.count - at >= NBDWire.optionReplyHeaderBytes else {
                FuzzCheck.expect(false, "a cut option reply"); return
            }
            FuzzCheck.expect(be(8) == NBDWire.optionReplyMagic, "option reply magic")
            FuzzCheck.expect(be(4) == UInt64(option), "a reply to another option")
            last = be(4)
            let length = Int(be(4))
            guard input.count - at >= length else { FuzzCheck.expect(false, "option reply data cut"); return }
            at += length
        }
        FuzzCheck.expect(reply.isEmpty || last == UInt64(NBDWire.repAck) || last & 0x8000_0000 != 0 || option == NBDWire.optList,
                         "option \(option) answered without an ACK or an error")
    }
}
#endif
