import SheepProtocol
import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import SCSITestSupport

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
        #expect(r1.sends.count == 1 && r1.sends[0].header.opcode == .getVDIAttr
                 && Self.attrKey(r1.sends[0].payload) == SheepSCSIRecordSync.headKey, "the read waits for the record")
        let v1 = b.reply(r1.sends[0].op, .noObj)
        let done = b.reply(v1.sends[0].op, .noObj)
        #expect(done.sends.count == 1 && done.sends[0].header.opcode == .readObj
                && done.sends[0].header.oid == SheepOID.data(vid: T.vid, index: 3), "the read is redone after it")
    }

    /// Reads version `version` (written by `writer`) in answer to the GET_VDI_ATTR `find`, then finds no newer one.
    static func answerVersion(_ b: T.Bench, _ find: T.Out, version: UInt64, writer: UInt64, reserved: Bool = true) -> T.Out {
        var rec = SheepSCSIRecord()
        rec.version = version
        rec.writer = writer
        rec.reserved = reserved
        rec.prType = PRType.writeExclusive
        #expect(find.sends.count == 1 && Self.attrKey(find.sends[0].payload) == "ringtgt.scsi.\(version)")
        b.machine.reply(find.sends[0].op, result: .success, failure: nil, vdiID: 0xcb565a, attrID: 0x3251dff9)
        let read = b.drain()
        guard let r = read.sends.first, let dest = r.dest else { Issue.record("no read of the version"); return T.Out() }
        let object = SheepVDIAttr.encode(name: "vol", key: "ringtgt.scsi.\(version)", value: rec.encoded())
        object.withUnsafeBytes { dest.copyMemory(from: $0.baseAddress!, byteCount: object.count) }
        let next = b.reply(r.op, .success)
        return b.reply(next.sends[0].op, .noObj)
    }

    /// Issue 14, step 2: I/O that met INODE_INVALIDATED is held after the reload until the record is read;
    /// when another gateway wrote a newer version with a reservation it fails `.stateChanged` (the SCSI layer
    /// checks the reservation, then does it again); without a reservation it is redone at once.
    @Test(arguments: [true, false])
    func heldIOFailsStateChangedWhenAnotherGatewayReserved(reserved: Bool) {
        typealias C = SheepCoherenceMachineTests
        let b = T.Bench(owners: [3: T.vid, 4: T.vid], locked: true, coherent: true)
        _ = Self.refreshEmpty(b)
        let w = SheepHomeRequest(volume: b.volume, kind: .write(index: 3, objectOffset: 512, length: 4096,
                                                                  data: SheepHomeMachineTests.data),
                                 originCore: 0, waiter: .request(tag: 5))
        w.invalidated = true
        b.machine.request(w)
        let reload = b.drain()
        let r = C.invalidatedRead(b, 4, tag: 6)
        #expect(r.sends.isEmpty, "parked behind the reload")
        let find = C.answerRefresh(b, reload, vid: T.vid, slots: [3: T.vid, 4: T.vid])
        #expect(find.answers.isEmpty && find.sends.count == 1, "held until the record is read")
        // No record known yet: the head hint is asked first.
        #expect(Self.attrKey(find.sends[0].payload) == SheepSCSIRecordSync.headKey)
        let done = Self.answerVersion(b, b.reply(find.sends[0].op, .noObj), version: 1, writer: b.volume.gatewayID &+ 1,
                                      reserved: reserved)
        #expect(done.records.count == 1 && done.records[0].record.version == 1)
        if reserved {
            #expect(done.answers.map(\.tag).sorted() == [5, 6] && done.answers.allSatisfy { $0.failure == .stateChanged })
            #expect(done.sends.isEmpty)
        } else {
            #expect(done.answers.isEmpty)
            let ops = Set(done.sends.map { $0.header.opcode.rawValue })
            let want: Set<UInt8> = [SheepOpcode.readObj.rawValue, SheepOpcode.writeObj.rawValue]
            #expect(done.sends.count == 2 && ops == want, "both redone")
        }
    }

    /// Issue 14, step 4: a reservation command's sync waits for the refresh; its publish appends the LU's
    /// state as the next version and is answered once the announce is acknowledged, `.stateChanged` when
    /// another gateway wrote that version first.
    @Test func reservationCommandsSyncThenPublishTheLUState() {
        let b = T.Bench(locked: true, coherent: true)
        let state = LUNState(blockSize: 512, blockCount: 8, capabilities: StoreCapabilities(), removable: false, online: true)
        b.volume.lunState = state
        func ask(_ publish: Bool, tag: UInt64) -> T.Out {
            b.machine.request(SheepHomeRequest(volume: b.volume, kind: .record(publish: publish), originCore: 0,
                                               waiter: .request(tag: tag)))
            return b.drain()
        }
        let head = ask(false, tag: 1)
        #expect(head.answers.isEmpty && head.sends.count == 1)
        let v1 = b.reply(head.sends[0].op, .noObj)
        let synced = b.reply(v1.sends[0].op, .noObj)
        #expect(synced.answers.count == 1 && synced.answers[0].tag == 1 && synced.answers[0].failure == nil)

        state.shared.withLock { $0.pr.generation = 1 }
        let create = ask(true, tag: 2)
        #expect(create.sends.count == 1 && Self.attrKey(create.sends[0].payload) == "ringtgt.scsi.1")
        let hint = b.reply(create.sends[0].op, .success)
        let announce = b.reply(hint.sends[0].op, .success)
        #expect(announce.answers.isEmpty, "GOOD only once the other gateways are invalidated")
        let published = b.reply(announce.sends[0].op, .success)
        #expect(published.answers.count == 1 && published.answers[0].tag == 2 && published.answers[0].failure == nil)
        #expect(published.records.first?.record.writer == b.volume.gatewayID)
        #expect(published.records.first?.record.prGeneration == 1)

        let lost = ask(true, tag: 3)
        #expect(Self.attrKey(lost.sends[0].payload) == "ringtgt.scsi.2")
        let reread = b.reply(lost.sends[0].op, .vdiExist)
        // The winner's version is read (and loaded into the LU) before the command is told to apply again.
        #expect(reread.answers.isEmpty && reread.sends.count == 1 && Self.attrKey(reread.sends[0].payload) == "ringtgt.scsi.2")
        var out = reread
        while out.answers.isEmpty, let s = out.sends.first { out = b.reply(s.op, .noObj) }
        #expect(out.answers.count == 1 && out.answers[0].tag == 3 && out.answers[0].failure == .stateChanged)
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

    static let holder = PortIdentity(initiatorName: "iqn.2026-01.test:a", isid: 1, relativeTargetPortID: 1)

    /// Answers the GET_VDI_ATTR `find` with `rec` and its READ_OBJ with the attribute; returns what follows
    /// (the find of the next version).
    static func answerRecord(_ b: T.Bench, _ find: T.Out, _ rec: SheepSCSIRecord) -> T.Out {
        #expect(find.sends.count == 1 && Self.attrKey(find.sends[0].payload) == "ringtgt.scsi.\(rec.version)")
        guard let f = find.sends.first else { return T.Out() }
        b.machine.reply(f.op, result: .success, failure: nil, vdiID: 0xcb565a, attrID: 0x3251dff9)
        let read = b.drain()
        guard let r = read.sends.first, let dest = r.dest else { Issue.record("no read of the version"); return T.Out() }
        let object = SheepVDIAttr.encode(name: "vol", key: "ringtgt.scsi.\(rec.version)", value: rec.encoded())
        object.withUnsafeBytes { dest.copyMemory(from: $0.baseAddress!, byteCount: object.count) }
        return b.reply(r.op, .success)
    }

    /// The record a create (CREAT | EXCL) carries.
    static func created(_ out: T.Out, version: UInt64) -> SheepSCSIRecord? {
        guard out.sends.count == 1, Self.attrKey(out.sends[0].payload) == "ringtgt.scsi.\(version)",
              out.sends[0].header.flags.contains([.attrCreate, .attrExclusive]),
              let value = SheepVDIAttr.value(of: out.sends[0].payload) else { return nil }
        return SheepSCSIRecord(decoding: value)
    }

    /// Answers NO_OBJ to finds (the head hint, the next version) until something else is sent or answered.
    static func noNewer(_ b: T.Bench, _ first: T.Out) -> T.Out {
        var out = first
        while out.answers.isEmpty, out.sends.count == 1, out.sends[0].header.opcode == .getVDIAttr,
              !out.sends[0].header.flags.contains(.attrCreate) {
            out = b.reply(out.sends[0].op, .noObj)
        }
        return out
    }

    func change(_ b: T.Bench, _ c: SharedStateChange, tag: UInt64) -> T.Out {
        b.machine.request(SheepHomeRequest(volume: b.volume, kind: .change(c), originCore: 0, waiter: .request(tag: tag)))
        return b.drain()
    }

    /// Issue 14: a change made outside a command (here the SPC-2 release of a session that ended) is appended by
    /// the home core on its own: the newest version is read, the change applied to it, the next version created
    /// and announced, and then the connection waiting for it is answered.
    @Test func aChangeOutsideACommandIsAppendedToTheNewestVersion() {
        let b = T.Bench(locked: true, coherent: true)
        let head = change(b, .releaseSPC2(Self.holder), tag: 4)
        #expect(head.sends.count == 1 && Self.attrKey(head.sends[0].payload) == SheepSCSIRecordSync.headKey)
        var v1 = SheepSCSIRecord()
        v1.version = 1
        v1.writer = b.volume.gatewayID &+ 1
        v1.spc2Holder = Self.holder
        let find2 = Self.answerRecord(b, b.reply(head.sends[0].op, .noObj), v1)
        let create = b.reply(find2.sends[0].op, .noObj)
        guard let v2 = Self.created(create, version: 2) else { Issue.record("no version 2 created"); return }
        #expect(v2.spc2Holder == nil && v2.writer == b.volume.gatewayID && v2.resets == 0)
        let hint = b.reply(create.sends[0].op, .success)
        let announce = b.reply(hint.sends[0].op, .success)
        #expect(announce.answers.isEmpty && announce.sends.first?.header.opcode == .writeObj)
        let done = b.reply(announce.sends[0].op, .success)
        #expect(done.answers.count == 1 && done.answers[0].tag == 4 && done.answers[0].failure == nil)
        #expect(done.records.last?.record == v2 && done.records.last?.outcome == .published)
        #expect(b.machine.stepsInFlight == 0)
    }

    /// Issue 14, ALUA across gateways: a group's state set on this gateway is appended by the home core like a
    /// reset, on top of another gateway's newer version (whose ALUA section it keeps), and until it is in
    /// sheep the group counts as pending, so that a version loaded meanwhile does not undo it.
    @Test func aPortGroupStateIsAppendedOnTopOfTheNewestVersionAndPendingUntilThen() {
        let b = T.Bench(locked: true, coherent: true)
        #expect(b.machine.pendingPortGroupStates(b.volume).isEmpty)
        let head = change(b, .portGroups(.state(group: 1, .standby)), tag: 4)
        #expect(head.sends.count == 1 && Self.attrKey(head.sends[0].payload) == SheepSCSIRecordSync.headKey)
        #expect(b.machine.pendingPortGroupStates(b.volume) == [1])
        var other = SheepSCSIRecord()
        other.version = 1
        other.writer = b.volume.gatewayID &+ 1
        other.portGroups = [SharedPortGroup(id: 1, state: .activeOptimized, ports: [1]),
                            SharedPortGroup(id: 2, state: .activeOptimized, ports: [2])]
        let find2 = Self.answerRecord(b, b.reply(head.sends[0].op, .noObj), other)
        let create = b.reply(find2.sends[0].op, .noObj)
        #expect(create.records.last?.record == other, "the other gateway's version is loaded first")
        guard let v2 = Self.created(create, version: 2) else { Issue.record("no version 2 created"); return }
        #expect(v2.portGroups == [SharedPortGroup(id: 1, state: .standby, ports: [1]),
                                  SharedPortGroup(id: 2, state: .activeOptimized, ports: [2])])
        #expect(b.machine.pendingPortGroupStates(b.volume) == [1], "still pending while it is created")
        let hint = b.reply(create.sends[0].op, .success)
        let announce = b.reply(hint.sends[0].op, .success)
        let done = b.reply(announce.sends[0].op, .success)
        #expect(done.answers.count == 1 && done.answers[0].tag == 4 && done.answers[0].failure == nil)
        #expect(done.records.last?.record == v2 && done.records.last?.outcome == .published)
        #expect(b.machine.pendingPortGroupStates(b.volume).isEmpty)
    }

    /// A release the newest version no longer needs (someone else's reservation now) writes nothing.
    @Test func aChangeThatChangesNothingWritesNoVersion() {
        let b = T.Bench(locked: true, coherent: true)
        _ = Self.refreshEmpty(b)
        let done = Self.noNewer(b, change(b, .releaseSPC2(Self.holder), tag: 4))
        #expect(done.sends.isEmpty && done.answers.count == 1 && done.answers[0].tag == 4 && done.answers[0].failure == nil)
        #expect(b.machine.stepsInFlight == 0)
    }

    /// Another gateway wrote the version first: the change is applied again to the winner's version (the reset
    /// counts on top of its count), not given up and not written over it.
    @Test func aChangeThatLostTheRaceIsAppliedToTheWinner() {
        let b = T.Bench(locked: true, coherent: true)
        _ = Self.refreshEmpty(b)
        let create1 = Self.noNewer(b, change(b, .reset, tag: 4))
        #expect(Self.created(create1, version: 1)?.resets == 1)
        let reread = b.reply(create1.sends[0].op, .vdiExist)
        // Version 0 known: the refresh starts from the head hint, which lags.
        #expect(reread.answers.isEmpty && Self.attrKey(reread.sends[0].payload) == SheepSCSIRecordSync.headKey)
        var winner = SheepSCSIRecord()
        winner.version = 1
        winner.writer = b.volume.gatewayID &+ 1
        winner.resets = 7
        let find2 = Self.answerRecord(b, b.reply(reread.sends[0].op, .noObj), winner)
        let create2 = b.reply(find2.sends[0].op, .noObj)
        #expect(Self.created(create2, version: 2)?.resets == 8)
        let hint = b.reply(create2.sends[0].op, .success)
        let announce = b.reply(hint.sends[0].op, .success)
        let done = b.reply(announce.sends[0].op, .success)
        #expect(done.answers.count == 1 && done.answers[0].tag == 4 && done.answers[0].failure == nil)
    }

    /// A reservation command that asks for the record while a change is being appended is answered after it,
    /// so a RESERVE through this gateway after a logout sees the release.
    @Test func reservationCommandsWaitForChangesInFlight() {
        let b = T.Bench(locked: true, coherent: true)
        _ = Self.refreshEmpty(b)
        let find = change(b, .reset, tag: 4)
        b.machine.request(SheepHomeRequest(volume: b.volume, kind: .record(publish: false), originCore: 0,
                                           waiter: .request(tag: 5)))
        #expect(b.drain().sends.isEmpty, "one record operation at a time")
        let create = Self.noNewer(b, find)
        let hint = b.reply(create.sends[0].op, .success)
        let announce = b.reply(hint.sends[0].op, .success)
        let done = b.reply(announce.sends[0].op, .success)
        #expect(done.answers.map(\.tag) == [4])
        #expect(done.sends.count == 1 && Self.attrKey(done.sends[0].payload) == "ringtgt.scsi.2", "then the command's refresh")
        let synced = b.reply(done.sends[0].op, .noObj)
        #expect(synced.answers.map(\.tag) == [5])
    }

    /// Sheep refuses: the change is logged and its waiter answered with the failure (the response goes), and
    /// the home core goes on with the next operation.
    @Test func aChangeSheepRefusesIsReportedAndLetGo() {
        let b = T.Bench(locked: true, coherent: true)
        _ = Self.refreshEmpty(b)
        let create = Self.noNewer(b, change(b, .reset, tag: 4))
        let failed = b.reply(create.sends[0].op, .eio, failure: .unavailable)
        #expect(failed.answers.count == 1 && failed.answers[0].tag == 4 && failed.answers[0].failure == .unavailable)
        #expect(failed.logs.contains { $0.contains("not in the record") })
        #expect(b.machine.stepsInFlight == 0)
    }

    @Test func aVolumeWithoutCoherenceHasNoChangeToAppend() {
        let b = T.Bench(locked: true, coherent: false)
        let out = change(b, .reset, tag: 4)
        #expect(out.sends.isEmpty && out.answers.count == 1 && out.answers[0].failure == nil)
    }

    /// A command waiting for the record while its sheep node is away (the channel holds the read until the
    /// node returns) is answered `.unavailable` after SharedStateLimits.syncWaitSecondsMax ticks, and only
    /// once: TEST UNIT READY then answers from what the gateway knows instead of hanging.
    @Test func aCommandWaitingTooLongForTheRecordGoesOn() {
        let b = T.Bench(locked: true, coherent: true)
        b.machine.refreshDueRecords(tick: 10)
        b.machine.request(SheepHomeRequest(volume: b.volume, kind: .record(publish: false), originCore: 0,
                                           waiter: .request(tag: 5)))
        let head = b.drain()
        #expect(head.sends.count == 1 && head.answers.isEmpty)
        b.machine.refreshDueRecords(tick: 10 + SharedStateLimits.syncWaitSecondsMax - 1)
        #expect(b.drain().answers.isEmpty)
        b.machine.refreshDueRecords(tick: 10 + SharedStateLimits.syncWaitSecondsMax)
        let late = b.drain()
        #expect(late.answers.count == 1 && late.answers[0].tag == 5 && late.answers[0].failure == .unavailable)
        let done = Self.noNewer(b, b.reply(head.sends[0].op, .noObj))
        #expect(done.answers.isEmpty && done.records.last?.outcome == .current, "the read ends without a second answer")
    }

    /// A Logout or TMF Response held for a change is let go after the same bound when sheep does not answer;
    /// the change itself stays in flight and is appended when sheep does.
    @Test func aResponseHeldForAChangeIsLetGoWhenSheepIsAway() {
        let b = T.Bench(locked: true, coherent: true)
        _ = Self.refreshEmpty(b, tick: 20)
        b.machine.refreshDueRecords(tick: 20)
        let find = change(b, .reset, tag: 4)
        #expect(find.sends.count == 1 && find.answers.isEmpty)
        b.machine.refreshDueRecords(tick: 20 + SharedStateLimits.syncWaitSecondsMax)
        let late = b.drain()
        #expect(late.answers.count == 1 && late.answers[0].tag == 4 && late.answers[0].failure == .unavailable)
        let create = Self.noNewer(b, b.reply(find.sends[0].op, .noObj))
        #expect(Self.created(create, version: 1)?.resets == 1, "the reset is still appended")
        let hint = b.reply(create.sends[0].op, .success)
        let announce = b.reply(hint.sends[0].op, .success)
        let done = b.reply(announce.sends[0].op, .success)
        #expect(done.answers.isEmpty && done.records.last?.outcome == .published)
    }
}
