// Gateway liveness for a multipath sheepdog LU (issue 14; docs/CLUSTER-STATE.md, "Liveness and power loss";
// docs/ALUA.md, "A dead gateway's groups"). Each gateway serving the VDI beats, every `beatIntervalSeconds`, in
// its own slots of a small companion VDI, `<vdi>.ringtgt-alive`: data object 0 holds `slotsMax` slots of 32
// bytes, slot p - 1 for relative target port p, overwritten in place (no object is created per beat). A beat
// reads every slot and then writes this gateway's. A reader judges a slot by its own monotonic clock only, as
// COMPARE AND WRITE's waiters judge the lease: a slot whose content it has seen unchanged for
// `deadAfterSeconds` is dead, a slot that changed is alive again. No clocks of two hosts are compared.
//
// What it is used for (SheepHomeLiveness.swift): the LU's power-on (a gateway that brings the LU up and finds no
// live serving peer treats it as power-on: APTPL decides what the record keeps), and the ALUA section (a group
// whose every port is dead is reported unavailable).
//
// Like SheepCompareSection it touches no socket: it says what to send and is told what came back, with the
// time passed in. Off the I/O path: one read and one write per beat and VDI.

import Floor
import URing
import SheepProtocol

public enum GatewayLivenessLimits {
    /// Appended to the VDI's name to name the companion VDI whose first object holds the heartbeat slots.
    static let companionSuffix = ".ringtgt-alive"
    static let companionBytes: UInt64 = 4 << 20
    /// Heartbeat slots per LU, one per relative target port id 1...slotsMax. A port with a higher id is neither
    /// beaten nor judged: its group is never reported dead.
    static let slotsMax = 64
    static let slotBytes = SheepWordRecord.bytes
    static let regionBytes = slotsMax * slotBytes
    /// A gateway beats this often.
    static let beatIntervalSeconds: UInt64 = 2
    /// A slot seen unchanged this long (by the reader's monotonic clock) is a dead gateway's. Five beats: a
    /// gateway whose sheep requests stall longer than this is taken for dead (docs/CLUSTER-STATE.md).
    static let deadAfterSeconds: UInt64 = 10
    static let deadAfterNanos: UInt64 = deadAfterSeconds * 1_000_000_000
    static let beatIntervalNanos: UInt64 = beatIntervalSeconds * 1_000_000_000
    /// A gateway that could not decide the LU's power-on this long (its beats keep failing) keeps the record as
    /// it is: clearing registrations on a guess would lose them for a live peer.
    static let decisionMaxNanos: UInt64 = 3 * deadAfterNanos
}

/// One slot's content: "RTHB", flags (bit 0: the gateway serves the LU, its power-on decision is made), 3
/// reserved, the gateway (`SheepVolume.gatewayID`, random per open), its beat count, 8 reserved. Little-endian.
public struct HeartbeatSlot: Equatable {
    static let magic: UInt32 = 0x4248_5452

    var serving: Bool
    var gateway: UInt64
    var beat: UInt64

    func encoded() -> [UInt8] {
        SheepWordRecord(magic: Self.magic, kind: serving ? 1 : 0, first: gateway, second: beat).encoded()
    }

    init(serving: Bool, gateway: UInt64, beat: UInt64) {
        self.serving = serving
        self.gateway = gateway
        self.beat = beat
    }

    /// nil for an empty slot (never beaten) or anything that is not a heartbeat.
    init?(decoding b: ArraySlice<UInt8>) {
        guard let r = SheepWordRecord(decoding: b), r.magic == Self.magic, r.kind <= 1 else { return nil }
        self.init(serving: r.kind == 1, gateway: r.first, beat: r.second)
    }
}

/// What a gateway makes of the slots it has read: the rule, without I/O.
public struct GatewayLiveness {
    /// A slot's content as last read, since when (this reader's clock), and whether it ever changed under
    /// this reader's eyes (a slot seen once and never again changing may be a dead gateway's).
    public struct Seen: Equatable {
        var slot: HeartbeatSlot
        var since: UInt64
        var changed: Bool
    }

    /// By relative target port id.
    private(set) var seen: [UInt16: Seen] = [:]
    /// When this reader first read the slots (nil: not yet).
    private(set) var firstReadAt: UInt64? = nil

    /// The content of port `port`'s slot read at `now` (nil: empty).
    mutating func observe(port: UInt16, _ slot: HeartbeatSlot?, nowNanos now: UInt64) {
        guard let slot else { seen[port] = nil; return }
        if let old = seen[port] {
            if old.slot != slot { seen[port] = Seen(slot: slot, since: now, changed: true) }
        } else {
            seen[port] = Seen(slot: slot, since: now, changed: false)
        }
    }

    /// Every slot of a read region (nil: the object does not exist yet, so every slot is empty).
    mutating func observe(region: [UInt8]?, nowNanos now: UInt64) {
        if firstReadAt == nil { firstReadAt = now }
        for i in 0 ..< GatewayLivenessLimits.slotsMax {
            let at = i * GatewayLivenessLimits.slotBytes
            var slot: HeartbeatSlot? = nil
            if let region, region.count >= at + GatewayLivenessLimits.slotBytes {
                slot = HeartbeatSlot(decoding: region[at ..< at + GatewayLivenessLimits.slotBytes])
            }
            observe(port: UInt16(i + 1), slot, nowNanos: now)
        }
    }

    func isDead(_ port: UInt16, nowNanos now: UInt64) -> Bool {
        guard let s = seen[port] else { return false }
        return now &- s.since >= GatewayLivenessLimits.deadAfterNanos
    }

    func isAlive(_ port: UInt16, nowNanos now: UInt64) -> Bool {
        guard let s = seen[port] else { return false }
        return s.changed && now &- s.since < GatewayLivenessLimits.deadAfterNanos
    }

    /// Ports of other gateways (not in `own`) whose slot is dead, in order.
    func deadPorts(own: [UInt16], nowNanos now: UInt64) -> [UInt16] {
        seen.keys.filter { !own.contains($0) && isDead($0, nowNanos: now) }.sorted()
    }

    public enum PowerOnDecision: Equatable {
        /// Another gateway is alive and serves the LU: joining it keeps the record as it is.
        case livePeer
        /// No gateway of the LU is alive (or only ones that are themselves deciding): the LU powers on.
        case noLivePeer
    }

    /// nil while undecided: a peer's slot was seen but neither changed nor stayed unchanged for the bound yet.
    /// A peer that is alive but not serving (it is deciding too) does not keep the record: of several gateways
    /// that power on together, the first one's power-on counts (SharedStateChange.powerOn) and the others join it.
    func powerOnDecision(own: [UInt16], nowNanos now: UInt64) -> PowerOnDecision? {
        guard let first = firstReadAt else { return nil }
        var waiting = false
        for (port, s) in seen where !own.contains(port) {
            if isAlive(port, nowNanos: now) {
                if s.slot.serving { return .livePeer }
            } else if !isDead(port, nowNanos: now) {
                waiting = true   // seen once, unchanged, not for the bound yet
            }
        }
        if waiting && now &- first < GatewayLivenessLimits.deadAfterNanos { return nil }
        return .noLivePeer
    }
}

/// One gateway's heartbeat on one VDI: finding (or creating) the companion, then per beat a read of every slot
/// and a write of this gateway's.
public struct SheepLiveness {
    public enum Step: Equatable {
        /// Send this request with this payload; a READ_OBJ's reply data comes back through `reply`.
        case send(SheepRequestHeader, [UInt8])
        case done(Outcome)
    }

    public enum Outcome: Equatable {
        /// The slots were read (`liveness` has them) and this gateway's written.
        case beaten
        /// Sheep refused something: the beat is over, the next one tries again. What was read is kept.
        case failed(SheepResult, String)
    }

    private enum Phase: Equatable {
        case idle
        /// GET_VDI_INFO of the companion, NEW_VDI when it does not exist, GET_VDI_INFO again when another
        /// gateway created it first.
        case lookup, create, lookupAgain
        case read
        /// Writing the slot of the port at this index of `writing`.
        case write(Int)
    }

    let vdiName: String
    let companionName: String
    let gateway: UInt64
    let copies: UInt8
    private(set) var companionVID: UInt32 = 0
    private(set) var liveness = GatewayLiveness()
    private var phase = Phase.idle
    /// The object exists (a read found it, or a write created it): writes go in place from then on.
    private var objectExists = false
    private var beats: UInt64 = 0
    private var writing: [UInt16] = []
    private var serving = false

    init(vdiName: String, gateway: UInt64, copies: UInt8) {
        self.vdiName = vdiName
        self.companionName = vdiName + GatewayLivenessLimits.companionSuffix
        self.gateway = gateway
        self.copies = copies
    }

    var isIdle: Bool { phase == .idle }

    /// Starts a beat for this gateway's ports `own` (those above `slotsMax` have no slot); `serving`: its
    /// power-on decision is made.
    mutating func beat(own: [UInt16], serving: Bool) -> Step {
        precondition(phase == .idle, "one beat at a time per VDI")
        writing = own.filter { $0 >= 1 && Int($0) <= GatewayLivenessLimits.slotsMax }
        self.serving = serving
        if companionVID == 0 {
            guard let payload = try? SheepVDIName.payload(name: companionName) else {
                return .done(.failed(.invalidParms, "sheep VDI '\(vdiName)': the name is too long for a liveness companion"))
            }
            phase = .lookup
            return .send(.vdiLookup(.getVDIInfo, id: 0), payload)
        }
        return read()
    }

    /// Sheep's answer to the last `.send`: `vdiID` from a VDI op, `data` from a READ_OBJ.
    mutating func reply(_ result: SheepResult, vdiID: UInt32 = 0, data: [UInt8] = [], nowNanos now: UInt64) -> Step {
        switch phase {
        case .idle:
            return .done(.failed(.unknown, "sheep VDI '\(vdiName)': a liveness reply with nothing outstanding"))
        case .lookup, .lookupAgain:
            if result == .success && vdiID != 0 {
                companionVID = vdiID
                return read()
            }
            if phase == .lookup && result == .noVDI {
                phase = .create
                let payload = (try? SheepVDIName.payload(name: companionName, includeTag: false)) ?? []
                return .send(.newVDI(id: 0, size: GatewayLivenessLimits.companionBytes, copies: copies), payload)
            }
            return failed(result, "looking up '\(companionName)'")
        case .create:
            if result == .success && vdiID != 0 {
                companionVID = vdiID
                return read()
            }
            guard result == .success || result == .vdiExist else { return failed(result, "creating '\(companionName)'") }
            phase = .lookupAgain
            return .send(.vdiLookup(.getVDIInfo, id: 0), (try? SheepVDIName.payload(name: companionName)) ?? [])
        case .read:
            switch result {
            case .success:
                objectExists = true
                liveness.observe(region: data, nowNanos: now)
            case .noObj:
                objectExists = false
                liveness.observe(region: nil, nowNanos: now)
            default:
                return failed(result, "reading the heartbeat slots")
            }
            beats &+= 1
            return write(0)
        case .write(let i):
            guard result == .success else { return failed(result, "writing its heartbeat") }
            objectExists = true
            return write(i + 1)
        }
    }

    private mutating func read() -> Step {
        phase = .read
        return .send(.readObject(id: 0, oid: SheepOID.data(vid: companionVID, index: 0), offset: 0,
                                 length: UInt32(GatewayLivenessLimits.regionBytes)), [])
    }

    /// This gateway's slot for `writing[i]`. The first write into an object that does not exist creates it (a
    /// gateway creating it at the same moment may zero this slot once; the next beat writes it again).
    private mutating func write(_ i: Int) -> Step {
        guard i < writing.count else {
            phase = .idle
            return .done(.beaten)
        }
        phase = .write(i)
        let bytes = HeartbeatSlot(serving: serving, gateway: gateway, beat: beats).encoded()
        let oid = SheepOID.data(vid: companionVID, index: 0)
        let offset = UInt32(Int(writing[i] - 1) * GatewayLivenessLimits.slotBytes)
        let n = UInt32(bytes.count)
        return .send(objectExists ? .writeObject(id: 0, oid: oid, offset: offset, length: n, copies: copies)
                                  : .createAndWrite(id: 0, oid: oid, offset: offset, length: n, copies: copies), bytes)
    }

    private mutating func failed(_ r: SheepResult, _ what: String) -> Step {
        phase = .idle
        return .done(.failed(r, "sheep VDI '\(vdiName)': liveness: \(what): \(r.name)"))
    }
}

/// The 32-byte little-endian value both small sheep attributes hold, a gateway's heartbeat slot
/// (`GatewayHeartbeat`) and the COMPARE AND WRITE section's lease (`CompareLeaseState`): a 4-byte magic that
/// names which it is, one byte of kind or flags, and two 64-bit words at bytes 8 and 16; the rest is zero.
struct SheepWordRecord: Equatable {
    static let bytes = 32
    var magic: UInt32
    var kind: UInt8
    var first: UInt64
    var second: UInt64

    init(magic: UInt32, kind: UInt8, first: UInt64, second: UInt64) {
        self.magic = magic
        self.kind = kind
        self.first = first
        self.second = second
    }

    func encoded() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Self.bytes)
        func put(_ v: UInt64, _ at: Int, _ n: Int) { for i in 0 ..< n { out[at + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) } }
        put(UInt64(magic), 0, 4)
        out[4] = kind
        put(first, 8, 8)
        put(second, 16, 8)
        return out
    }

    /// nil when `b` is shorter than a record; any magic decodes (the caller checks its own).
    init?(decoding b: ArraySlice<UInt8>) {
        guard b.count >= Self.bytes else { return nil }
        let s = b.startIndex
        func get(_ at: Int, _ n: Int) -> UInt64 { (0 ..< n).reduce(0) { $0 | UInt64(b[s + at + $1]) << (8 * $1) } }
        self.init(magic: UInt32(get(0, 4)), kind: b[s + 4], first: get(8, 8), second: get(16, 8))
    }
}
