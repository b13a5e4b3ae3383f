import SheepProtocol
import Testing
@testable import Target

/// The home core runs the shared SCSI record's conversation (Store/Sheep/SheepHomeRecord.swift): attribute
/// requests through the volume's channel without SD_FLAG_CMD_TGT, reads into the kept attribute buffer, one
/// operation at a time, the refresh interval and the refresh after an INODE_INVALIDATED reload.
@Suite struct SheepHomeRecordTests {
    typealias T = SheepHomeMachineTests

    static func attrKey(_ payload: [UInt8]) -> String? {
        guard payload.count == SheepVDIAttrLayout.objectSizeBytes else { return nil }
        return payload.withUnsafeBytes {
            SheepVDIName.decode($0.baseAddress! + SheepVDIAttrLayout.keyOffset, capacity: SheepVDIAttrLayout.keyBufferBytes)
        }
    }

    /// A fresh gateway's first refresh of a VDI with no record: head hint missing, version 1 missing.
    static func refreshEmpty(_ b: T.Bench, tick: UInt64? = nil) -> T.Out {
        b.machine.refreshRecord(b.volume, tick: tick)
        let head = b.drain()
        #expect(head.sends.count == 1 && Self.attrKey(head.sends[0].payload) == SheepSCSIRecordSync.headKey)
        let v1 = b.reply(head.sends[0].op, .noObj)
        #expect(v1.sends.count == 1 && Self.attrKey(v1.sends[0].payload) == "ringtgt.scsi.1")
        return b.reply(v1.sends[0].op, .noObj)
    }

    @Test func refreshGoesThroughTheChannelWithoutTheCoherenceFlag() {
        let b = T.Bench(locked: true, coherent: true)
        b.machine.refreshRecord(b.volume)
        let head = b.drain()
        #expect(head.sends.count == 1)
        let h = head.sends[0].header
        #expect(h.opcode == .getVDIAttr && h.protoVersion == SheepWire.internalProtoVersion)
        #expect(!h.flags.contains(.tgt))
        let find1 = b.reply(head.sends[0].op, .noObj)
        let done = b.reply(find1.sends[0].op, .noObj)
        #expect(done.records.count == 1 && done.records[0].outcome == .current && done.records[0].record.version == 0)
        #expect(b.machine.stepsInFlight == 0)
    }

    @Test func aVersionIsReadIntoTheAttributeBufferAndAdopted() {
        let b = T.Bench(locked: true, coherent: true)
        b.machine.refreshRecord(b.volume)
        let head = b.drain()
        let find1 = b.reply(head.sends[0].op, .noObj)
        // GET_VDI_ATTR found version 1: the ids in its reply name the object to read.
        b.machine.reply(find1.sends[0].op, result: .success, failure: nil, vdiID: 0xcb565a, attrID: 0x3251dff9)
        let read = b.drain()
        #expect(read.sends.count == 1)
        guard let s = read.sends.first, let dest = s.dest else { Issue.record("no read into a buffer"); return }
        #expect(s.header.opcode == .readObj && s.header.oid == SheepOID.attr(vid: 0xcb565a, attrID: 0x3251dff9))
        #expect(!s.header.flags.contains(.tgt) && Int(s.header.dataLength) == SheepVDIAttrLayout.objectSizeBytes)
        var rec = SheepSCSIRecord()
        rec.version = 1
        rec.reserved = true
        rec.prType = PRType.writeExclusive
        let object = SheepVDIAttr.encode(name: "vol", key: "ringtgt.scsi.1", value: rec.encoded())
        object.withUnsafeBytes { dest.copyMemory(from: $0.baseAddress!, byteCount: object.count) }
        let next = b.reply(s.op, .success)
        #expect(next.sends.count == 1 && Self.attrKey(next.sends[0].payload) == "ringtgt.scsi.2")
        let done = b.reply(next.sends[0].op, .noObj)
        #expect(done.records.count == 1 && done.records[0].record == rec && done.records[0].outcome == .current)
    }

    @Test func publishAppendsAndRefusesWhileBusyOrOutOfOrder() {
        let b = T.Bench(locked: true, coherent: true)
        _ = Self.refreshEmpty(b)
        var next = SheepSCSIRecord()
        next.version = 1
        next.writer = 9
        // Out of order: not the successor of version 0.
        var skip = next
        skip.version = 2
        b.machine.publishRecord(b.volume, skip)
        let refused = b.drain()
        #expect(refused.sends.isEmpty && refused.records.count == 1 && refused.records[0].outcome == .lostRace)
        b.machine.publishRecord(b.volume, next)
        let create = b.drain()
        #expect(create.sends.count == 1 && Self.attrKey(create.sends[0].payload) == "ringtgt.scsi.1")
        #expect(create.sends[0].header.flags.contains([.attrCreate, .attrExclusive]))
        // Busy: a second publish is refused at once, a refresh waits for the first to end.
        b.machine.publishRecord(b.volume, next)
        #expect(b.drain().records.first?.outcome == .lostRace)
        b.machine.refreshRecord(b.volume)
        #expect(b.drain().sends.isEmpty)
        let hint = b.reply(create.sends[0].op, .success)
        #expect(hint.sends.count == 1 && Self.attrKey(hint.sends[0].payload) == SheepSCSIRecordSync.headKey)
        // Then the announce: 0 into the last index slot of our inode, without SD_FLAG_CMD_TGT, so that sheep
        // invalidates the other gateways. The publish ends when it is acknowledged (here: even if it failed).
        let announce = b.reply(hint.sends[0].op, .success)
        #expect(announce.records.isEmpty && announce.sends.count == 1)
        let a = announce.sends[0].header
        #expect(a.opcode == .writeObj && a.oid == SheepOID.inode(vid: T.vid) && !a.flags.contains(.tgt))
        #expect(a.objOffset == SheepInodeLayout.slotOffset(UInt32(SheepInodeLayout.dataIndexSlots - 1)))
        #expect(announce.sends[0].payload == [0, 0, 0, 0])
        let done = b.reply(announce.sends[0].op, .eio)
        #expect(done.logs.contains { $0.contains("announcing") })
        #expect(done.records.count == 1 && done.records[0].outcome == .published && done.records[0].record == next)
        // The refresh asked for meanwhile starts now, from version 2.
        #expect(done.sends.count == 1 && Self.attrKey(done.sends[0].payload) == "ringtgt.scsi.2")
    }

    @Test func aVolumeWithoutCoherenceHasNoSharedRecord() {
        let b = T.Bench(locked: true, coherent: false)
        b.machine.refreshRecord(b.volume)
        let out = b.drain()
        #expect(out.sends.isEmpty && out.records.count == 1)
        guard case .failed = out.records[0].outcome else { Issue.record("not refused"); return }
    }

    @Test func recordsInUseAreReadAgainEveryRefreshInterval() {
        let b = T.Bench(locked: true, coherent: true)
        b.machine.refreshDueRecords(tick: 100)
        #expect(b.drain().sends.isEmpty, "a record nobody used is not read")
        _ = Self.refreshEmpty(b, tick: 100)
        b.machine.refreshDueRecords(tick: 100 + ClusterStateLimits.refreshIntervalSeconds - 1)
        #expect(b.drain().sends.isEmpty)
        b.machine.refreshDueRecords(tick: 100 + ClusterStateLimits.refreshIntervalSeconds)
        let again = b.drain()
        // Still no record: the head hint is read again first.
        #expect(again.sends.count == 1 && Self.attrKey(again.sends[0].payload) == SheepSCSIRecordSync.headKey)
    }

    /// Another gateway's index write may announce a new version: the reload after INODE_INVALIDATED reads
    /// the record too, once it is in use here (and only then).
    @Test func anInodeReloadAlsoReadsTheRecordInUse() {
        typealias C = SheepCoherenceMachineTests
        let unused = T.Bench(owners: [3: T.vid], locked: true, coherent: true)
        let r0 = C.answerRefresh(unused, C.invalidatedRead(unused, 3, tag: 7), vid: T.vid, slots: [3: T.vid])
        #expect(!r0.sends.contains { $0.header.opcode == .getVDIAttr })
        let b = T.Bench(owners: [3: T.vid], locked: true, coherent: true)
        _ = Self.refreshEmpty(b)
        let r1 = C.answerRefresh(b, C.invalidatedRead(b, 3, tag: 7), vid: T.vid, slots: [3: T.vid])
        #expect(r1.sends.contains { $0.header.opcode == .getVDIAttr && Self.attrKey($0.payload) == SheepSCSIRecordSync.headKey })
        #expect(r1.sends.contains { $0.header.opcode == .readObj }, "the read is redone as well")
    }

    @Test func aSheepFailureIsLoggedAndReported() {
        let b = T.Bench(locked: true, coherent: true)
        b.machine.refreshRecord(b.volume)
        let head = b.drain()
        let out = b.reply(head.sends[0].op, .eio, failure: .unavailable)
        #expect(out.records.count == 1 && !out.logs.isEmpty)
        guard case .failed = out.records[0].outcome else { Issue.record("failure not reported"); return }
        #expect(b.machine.stepsInFlight == 0)
    }
}
