import SheepProtocol
import Testing
@testable import Floor
@testable import URing
@testable import Store

/// The record of SCSI state gateways share through sheep (Store/Sheep/SheepSCSIRecord.swift): its encoding,
/// the chain's version rule and the COMPARE AND WRITE lease.
@Suite struct ClusterStateRecordTests {
    static let a = PortIdentity(initiatorName: "IQN.2026-01.test:host-a", isid: 0x0002_3d00_0001, relativeTargetPortID: 1)
    static let b = PortIdentity(initiatorName: "iqn.2026-01.test:host-b", isid: 0x0002_3d00_0002, relativeTargetPortID: 2)

    static func sample() -> SheepSCSIRecord {
        var r = SheepSCSIRecord()
        r.version = 7
        r.writer = 0xABCD
        r.spc2Holder = b
        r.prGeneration = 3
        r.registrations = [PRRegistration(port: a, key: 0x1111), PRRegistration(port: b, key: 0x2222)]
        r.reserved = true
        r.prType = PRType.writeExclusive
        r.prHolder = a
        r.compareLease = ClusterLease(gateway: 0xABCD, expiresAtSeconds: 1_000)
        r.resets = 3
        r.portGroups = [SharedPortGroup(id: 1, state: .standby, ports: [1, 3]),
                        SharedPortGroup(id: 2, state: .activeOptimized, ports: [2])]
        return r
    }

    @Test func roundTripsEveryField() {
        let r = Self.sample()
        #expect(SheepSCSIRecord(decoding: r.encoded()) == r)
        #expect(SheepSCSIRecord(decoding: SheepSCSIRecord().encoded()) == SheepSCSIRecord())
        // Initiator names compare case-insensitively, as PortIdentity does for a local nexus.
        #expect(r.prHolder?.initiatorName == "iqn.2026-01.test:host-a")
    }

    @Test func theLargestRecordFitsInOneAttributeValue() {
        var r = Self.sample()
        let longName = "iqn.2026-01.test:" + String(repeating: "x", count: 300)
        r.registrations = (0..<PersistentReservationState.maxRegistrations).map {
            PRRegistration(port: PortIdentity(initiatorName: longName, isid: UInt64($0), relativeTargetPortID: 9), key: 1)
        }
        let bytes = r.encoded()
        #expect(bytes.count <= SheepVDIAttrLayout.maxValueBytes)
        let back = SheepSCSIRecord(decoding: bytes)
        #expect(back?.registrations.count == PersistentReservationState.maxRegistrations)
        #expect(back?.registrations.first?.port.initiatorName.utf8.count == ClusterStateLimits.initiatorNameBytesMax)
    }

    @Test func refusesDamagedOrForeignBytes() {
        let good = Self.sample().encoded()
        #expect(SheepSCSIRecord(decoding: []) == nil)
        #expect(SheepSCSIRecord(decoding: Array(good.dropLast())) == nil)
        #expect(SheepSCSIRecord(decoding: good + [0]) == nil)
        var wrongMagic = good
        wrongMagic[0] ^= 0xFF
        #expect(SheepSCSIRecord(decoding: wrongMagic) == nil)
        var wrongFormat = good
        wrongFormat[4] = 5
        #expect(SheepSCSIRecord(decoding: wrongFormat) == nil, "a newer format is foreign")
        // Every truncation is refused, never read past the end.
        for n in 0..<good.count { #expect(SheepSCSIRecord(decoding: Array(good.prefix(n))) == nil) }
    }

    @Test func tooManyRegistrationsIsRefused() {
        var r = Self.sample()
        r.registrations = Array(repeating: PRRegistration(port: Self.a, key: 1),
                                count: PersistentReservationState.maxRegistrations + 1)
        #expect(SheepSCSIRecord(decoding: r.encoded()) == nil)
    }

    @Test func successorsFormAChainAndOnlyNewerVersionsAreAdopted() {
        let r = Self.sample()
        let next = r.successor(writer: 0x42)
        #expect(next.version == 8 && next.writer == 0x42 && next.persistentReservation.holder == Self.a)
        #expect(r.isSuperseded(by: next))
        #expect(!next.isSuperseded(by: r))
        #expect(!r.isSuperseded(by: r))
        #expect(SheepSCSIRecord.attributeKey(version: 8) == "ringtgt.scsi.8")
    }

    @Test func persistentReservationStateRoundTrips() {
        var pr = PersistentReservationState()
        pr.generation = 9
        pr.registrations = [PRRegistration(port: Self.b, key: 5)]
        pr.reserved = true
        pr.type = PRType.exclusiveAccessAllRegistrants
        var r = SheepSCSIRecord()
        r.setPersistentReservation(pr)
        let back = r.persistentReservation
        #expect(back.generation == 9 && back.registrations == pr.registrations && back.reserved
                && back.type == PRType.exclusiveAccessAllRegistrants && back.holder == nil)
    }

    @Test func leaseBindsOthersUntilExpiryAndItsHolderStopsEarly() {
        let l = ClusterLease.granted(to: 1, nowSeconds: 100)
        #expect(l.expiresAtSeconds == 100 + ClusterStateLimits.leaseSeconds)
        #expect(l.isHeld(nowSeconds: 100))
        #expect(l.isHeld(nowSeconds: l.expiresAtSeconds - 1))
        #expect(!l.isHeld(nowSeconds: l.expiresAtSeconds))
        #expect(l.holderMayUse(1, nowSeconds: 100))
        #expect(!l.holderMayUse(2, nowSeconds: 100))
        // The holder gives up before anyone else may take over, by the skew bound.
        #expect(!l.holderMayUse(1, nowSeconds: l.expiresAtSeconds - ClusterStateLimits.leaseSkewSeconds))
        #expect(l.holderMayUse(1, nowSeconds: l.expiresAtSeconds - ClusterStateLimits.leaseSkewSeconds - 1))
    }

    /// Format 2 adds the reset count at the end, format 3 the ALUA section after it, format 4 the APTPL flags and
    /// the power-on count after that; format 1, 2 and 3 records (what gateways wrote before) are still read, as no
    /// reset, no groups, APTPL 0 and no power-on yet, and an older format with anything after it is refused.
    @Test func olderFormatsAreReadWithoutResetsOrGroups() {
        var r = Self.sample()
        r.portGroups = []
        let four = r.encoded()
        #expect(four[4] == 4 && four[5] == 0)
        var three = Array(four.dropLast(9))   // the flags byte and the power-on count
        three[4] = 3
        #expect(SheepSCSIRecord(decoding: three) == r)
        var threeWithMore = four
        threeWithMore[4] = 3
        #expect(SheepSCSIRecord(decoding: threeWithMore) == nil)
        var two = Array(three.dropLast(2))   // the empty ALUA section: its count
        two[4] = 2
        #expect(SheepSCSIRecord(decoding: two) == r)
        var one = Array(two.dropLast(8))
        one[4] = 1
        r.resets = 0
        #expect(SheepSCSIRecord(decoding: one) == r)
        var oneWithMore = two
        oneWithMore[4] = 1
        #expect(SheepSCSIRecord(decoding: oneWithMore) == nil)
        var twoWithMore = three
        twoWithMore[4] = 2
        #expect(SheepSCSIRecord(decoding: twoWithMore) == nil)
    }

    /// Format 3's ALUA section: every group and port round trips; more groups or ports than the bounds, a
    /// state SPC-4 does not define, or one group id twice is a damaged record.
    @Test func theALUASectionRoundTripsWithinItsBounds() {
        var r = Self.sample()
        r.portGroups = (1 ... UInt16(ClusterStateLimits.portGroupsMax)).map { id in
            SharedPortGroup(id: id, state: .activeNonOptimized, ports: (1 ... UInt16(ClusterStateLimits.portsPerGroupMax)).map { id * 100 + $0 })
        }
        let bytes = r.encoded()
        #expect(SheepSCSIRecord(decoding: bytes) == r)
        #expect(bytes.count <= SheepVDIAttrLayout.maxValueBytes)
        // The encoder never writes past the bounds; a record that says more is refused.
        var tooMany = r
        tooMany.portGroups.append(SharedPortGroup(id: 999, state: .standby, ports: [1]))
        #expect(SheepSCSIRecord(decoding: tooMany.encoded())?.portGroups.count == ClusterStateLimits.portGroupsMax)
        var groupCount = Self.sample().encoded()
        // The section (its count, group 1, group 2), before format 4's flags byte and power-on count.
        let at = groupCount.count - 9 - (2 + (4 + 2 * 2) + (4 + 2))
        #expect(groupCount[at] == 2 && groupCount[at + 1] == 0)
        groupCount[at] = UInt8(ClusterStateLimits.portGroupsMax + 1)
        #expect(SheepSCSIRecord(decoding: groupCount) == nil)
        var portCount = Self.sample().encoded()
        #expect(portCount[at + 5] == 2)          // group 1's port count
        portCount[at + 5] = UInt8(ClusterStateLimits.portsPerGroupMax + 1)
        #expect(SheepSCSIRecord(decoding: portCount) == nil)
        var badState = Self.sample().encoded()
        #expect(badState[at + 4] == ALUAState.standby.rawValue)
        badState[at + 4] = 0x07
        #expect(SheepSCSIRecord(decoding: badState) == nil)
        var twice = Self.sample()
        twice.portGroups[1].id = 1
        #expect(SheepSCSIRecord(decoding: twice.encoded()) == nil)
    }

    /// A gateway's publication replaces the ports it had (moved or gone) and joins its groups now; a group the
    /// record has keeps the record's state (the record decides), a new one takes the publisher's, a group left
    /// without ports goes. A state change sets the group's state; one of an unknown group, or the state it
    /// has, writes no version.
    @Test func portGroupChangesApplyToTheNewestVersion() {
        var r = SheepSCSIRecord()
        let a = PortGroupChange.publish(previous: [], groups: [SharedPortGroup(id: 1, state: .activeOptimized, ports: [1])])
        let b = PortGroupChange.publish(previous: [], groups: [SharedPortGroup(id: 2, state: .standby, ports: [2])])
        r = r.applying([.portGroups(a)], writer: 1)!
        r = r.applying([.portGroups(b)], writer: 2)!
        #expect(r.version == 2 && r.portGroups == [SharedPortGroup(id: 1, state: .activeOptimized, ports: [1]),
                                                  SharedPortGroup(id: 2, state: .standby, ports: [2])])
        #expect(r.applying([.portGroups(a)], writer: 1) == nil, "the same publication again changes nothing")
        // Gateway A restarts configured active/non-optimized: the record keeps group 1 optimized.
        let again = PortGroupChange.publish(previous: [], groups: [SharedPortGroup(id: 1, state: .activeNonOptimized, ports: [1])])
        #expect(r.applying([.portGroups(again)], writer: 1) == nil)
        // B also joins group 1 with a second port (the same id is the same group) and moves port 2 there.
        let joined = r.applying([.portGroups(.publish(previous: [2], groups: [SharedPortGroup(id: 1, state: .standby, ports: [2, 4])]))], writer: 2)!
        #expect(joined.portGroups == [SharedPortGroup(id: 1, state: .activeOptimized, ports: [1, 2, 4])], "group 2 has no port left")
        // States.
        let standby = r.applying([.portGroups(.state(group: 1, .standby))], writer: 2)!
        #expect(standby.portGroups.map(\.state) == [.standby, .standby] && standby.portGroups.map(\.ports) == [[1], [2]])
        #expect(r.applying([.portGroups(.state(group: 1, .activeOptimized))], writer: 2) == nil)
        #expect(r.applying([.portGroups(.state(group: 9, .standby))], writer: 2) == nil)
        // Resets and releases leave the groups as they are.
        #expect(r.applying([.reset], writer: 1)?.portGroups == r.portGroups)
    }

    /// The home core's queue: a newer state of a group replaces the queued one, a newer publication replaces
    /// the queued one and still removes the ports that one would have, and a reset keeps both (it only
    /// replaces SPC-2 releases and an earlier reset).
    @Test func queuedPortGroupChangesMerge() {
        var q: [SharedStateChange] = []
        SharedStateChange.enqueue(.portGroups(.state(group: 1, .standby)), into: &q)
        SharedStateChange.enqueue(.portGroups(.state(group: 2, .standby)), into: &q)
        SharedStateChange.enqueue(.portGroups(.state(group: 1, .activeOptimized)), into: &q)
        #expect(q == [.portGroups(.state(group: 2, .standby)), .portGroups(.state(group: 1, .activeOptimized))])
        SharedStateChange.enqueue(.portGroups(.publish(previous: [], groups: [SharedPortGroup(id: 3, state: .standby, ports: [7])])), into: &q)
        SharedStateChange.enqueue(.portGroups(.publish(previous: [7], groups: [SharedPortGroup(id: 3, state: .standby, ports: [8])])), into: &q)
        SharedStateChange.enqueue(.releaseSPC2(Self.a), into: &q)
        SharedStateChange.enqueue(.reset, into: &q)
        #expect(q == [.portGroups(.state(group: 2, .standby)), .portGroups(.state(group: 1, .activeOptimized)),
                      .portGroups(.publish(previous: [7], groups: [SharedPortGroup(id: 3, state: .standby, ports: [8])])),
                      .reset])
    }

    /// Changes made outside a command, applied to the newest version: a release frees only the holder it
    /// names, a reset frees any and counts one more, and a change that changes nothing writes no version.
    @Test func changesApplyToTheNewestVersion() {
        let r = Self.sample()   // SPC-2 held by b, 3 resets
        #expect(r.applying([.releaseSPC2(Self.a)], writer: 1) == nil, "a holds no SPC-2 reservation")
        guard let released = r.applying([.releaseSPC2(Self.b)], writer: 1) else { Issue.record("b's release"); return }
        #expect(released.version == 8 && released.writer == 1 && released.spc2Holder == nil && released.resets == 3)
        #expect(released.persistentReservation.holder == Self.a, "persistent reservations are not touched")
        #expect(released.applying([.releaseSPC2(Self.b)], writer: 1) == nil)
        let reset = released.applying([.reset], writer: 2)
        #expect(reset?.version == 9 && reset?.resets == 4 && reset?.spc2Holder == nil)
        #expect(r.applying([.releaseSPC2(Self.b), .reset], writer: 1)?.resets == 4)
        var free = r
        free.spc2Holder = nil
        #expect(free.applying([.reset], writer: 1)?.resets == 4, "a reset is counted even with nothing held")
    }

    /// The home core's queue of changes stays bounded: a reset takes the place of what was queued before it
    /// (it releases every SPC-2 reservation anyway), a release is queued once, and past the bound the oldest
    /// release goes, never the reset.
    @Test func queuedChangesMergeAndStayBounded() {
        var q: [SharedStateChange] = []
        SharedStateChange.enqueue(.releaseSPC2(Self.a), into: &q)
        SharedStateChange.enqueue(.releaseSPC2(Self.a), into: &q)
        #expect(q == [.releaseSPC2(Self.a)])
        SharedStateChange.enqueue(.reset, into: &q)
        SharedStateChange.enqueue(.reset, into: &q)
        #expect(q == [.reset])
        func port(_ i: Int) -> PortIdentity { PortIdentity(initiatorName: "iqn.x:\(i)", isid: UInt64(i), relativeTargetPortID: 1) }
        for i in 0 ..< SharedStateLimits.changesQueuedMax - 1 { #expect(SharedStateChange.enqueue(.releaseSPC2(port(i)), into: &q)) }
        #expect(q.count == SharedStateLimits.changesQueuedMax)
        #expect(!SharedStateChange.enqueue(.releaseSPC2(port(99)), into: &q))
        #expect(q.count == SharedStateLimits.changesQueuedMax && q.first == .reset && !q.contains(.releaseSPC2(port(0))))
        #expect(q.last == .releaseSPC2(port(99)))
    }
}

/// SheepSCSIRecordSync's conversation with sheep, reply by reply.
@Suite struct ClusterStateSyncMachineTests {
    typealias Sync = SheepSCSIRecordSync

    /// The key a GET_VDI_ATTR step asks for, and its flags.
    static func attrRequest(_ s: Sync.Step) -> (key: String, flags: SheepFlags, value: [UInt8])? {
        guard case .send(let h, let payload) = s, h.opcode == .getVDIAttr,
              payload.count == SheepVDIAttrLayout.objectSizeBytes else { return nil }
        let key = payload.withUnsafeBytes {
            SheepVDIName.decode($0.baseAddress! + SheepVDIAttrLayout.keyOffset, capacity: SheepVDIAttrLayout.keyBufferBytes)
        }
        return (key, h.flags.subtracting(.write), SheepVDIAttr.value(of: payload) ?? [])
    }

    static func isRead(_ s: Sync.Step, vid: UInt32, attrID: UInt32) -> Bool {
        guard case .send(let h, _) = s else { return false }
        return h.opcode == .readObj && h.oid == SheepOID.attr(vid: vid, attrID: attrID)
            && Int(h.dataLength) == SheepVDIAttrLayout.objectSizeBytes
    }

    static func object(_ r: SheepSCSIRecord) -> [UInt8] {
        SheepVDIAttr.encode(name: "vol", key: SheepSCSIRecord.attributeKey(version: r.version), value: r.encoded())
    }

    static func record(_ v: UInt64, writer: UInt64 = 1) -> SheepSCSIRecord {
        var r = SheepSCSIRecord()
        r.version = v
        r.writer = writer
        r.prGeneration = UInt32(v)
        return r
    }

    @Test func aFirstRefreshWithNoRecordEndsAtVersionZero() {
        var s = Sync(vdiName: "vol")
        let first = s.refresh()
        #expect(Self.attrRequest(first)?.key == Sync.headKey && Self.attrRequest(first)?.flags == [])
        let probe = s.reply(.noObj)
        #expect(Self.attrRequest(probe)?.key == "ringtgt.scsi.1")
        #expect(s.reply(.noObj) == .done(.current))
        #expect(s.known.version == 0 && !s.isBusy)
    }

    @Test func aRefreshStartsAtTheHeadHintAndProbesPastIt() {
        var s = Sync(vdiName: "vol")
        _ = s.refresh()
        var three = UInt64(3).littleEndian
        let headValue = withUnsafeBytes(of: &three) { Array($0) }
        #expect(Self.isRead(s.reply(.success, vdiID: 0xcb565a, attrID: 10), vid: 0xcb565a, attrID: 10))
        let find3 = s.reply(.success, data: SheepVDIAttr.encode(name: "vol", key: Sync.headKey, value: headValue))
        #expect(Self.attrRequest(find3)?.key == "ringtgt.scsi.3")
        #expect(Self.isRead(s.reply(.success, vdiID: 0xcb565a, attrID: 30), vid: 0xcb565a, attrID: 30))
        // The hint lags: version 4 exists too.
        #expect(Self.attrRequest(s.reply(.success, data: Self.object(Self.record(3))))?.key == "ringtgt.scsi.4")
        _ = s.reply(.success, vdiID: 0xcb565a, attrID: 40)
        #expect(Self.attrRequest(s.reply(.success, data: Self.object(Self.record(4))))?.key == "ringtgt.scsi.5")
        #expect(s.reply(.noObj) == .done(.current))
        #expect(s.known == Self.record(4))
        // The next refresh asks only for what follows.
        #expect(Self.attrRequest(s.refresh())?.key == "ringtgt.scsi.5")
    }

    @Test func publishingCreatesTheNextVersionExclusivelyThenMovesTheHint() {
        var s = Sync(vdiName: "vol")
        _ = s.refresh(); _ = s.reply(.noObj); _ = s.reply(.noObj)
        let next = s.known.successor(writer: 7)
        let create = s.publish(next)
        #expect(Self.attrRequest(create)?.key == "ringtgt.scsi.1")
        #expect(Self.attrRequest(create)?.flags == [.attrCreate, .attrExclusive])
        #expect(Self.attrRequest(create)?.value == next.encoded())
        let hint = s.reply(.success)
        #expect(Self.attrRequest(hint)?.key == Sync.headKey && Self.attrRequest(hint)?.flags == [.attrCreate])
        #expect(Self.attrRequest(hint)?.value == [1, 0, 0, 0, 0, 0, 0, 0])
        #expect(s.known == next)   // adopted as soon as sheep took it, whatever happens to the hint
        #expect(s.reply(.eio) == .done(.published))
    }

    @Test func losingTheRaceChangesNothing() {
        var s = Sync(vdiName: "vol")
        _ = s.refresh(); _ = s.reply(.noObj); _ = s.reply(.noObj)
        _ = s.publish(s.known.successor(writer: 7))
        #expect(s.reply(.vdiExist) == .done(.lostRace))
        #expect(s.known.version == 0 && !s.isBusy)
    }

    @Test func damagedVersionsAndSheepErrorsFailWithoutAdopting() {
        var s = Sync(vdiName: "vol")
        _ = s.refresh(); _ = s.reply(.noObj)
        _ = s.reply(.success, vdiID: 1, attrID: 2)
        // Version 1 holds someone else's value.
        guard case .done(.failed) = s.reply(.success, data: SheepVDIAttr.encode(name: "vol", key: "ringtgt.scsi.1",
                                                                                value: [1, 2, 3])) else {
            Issue.record("a damaged record was not refused"); return
        }
        #expect(s.known.version == 0)
        // A record that says another version than the key it is stored under is not adopted either.
        _ = s.refresh(); _ = s.reply(.noObj); _ = s.reply(.success, vdiID: 1, attrID: 2)
        guard case .done(.failed) = s.reply(.success, data: Self.object(Self.record(2))) else {
            Issue.record("a misplaced record was adopted"); return
        }
        _ = s.refresh(); _ = s.reply(.noObj)
        guard case .done(.failed(let r, _)) = s.reply(.noVDI) else { Issue.record("NO_VDI not reported"); return }
        #expect(r == .noVDI)
    }

}
