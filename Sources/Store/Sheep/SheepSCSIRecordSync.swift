// The sheep side of the shared SCSI record (SheepSCSIRecord.swift, docs/CLUSTER-STATE.md): bringing a
// gateway's copy up to date with the chain of `ringtgt.scsi.<version>` attributes, and appending the next
// version. Like SheepHomeMachine it touches no socket: it says what to send and is told what came back, so
// it is tested with tables of replies and, through a plain SheepClient, against the test server and real
// sheep. Every request is a GET_VDI_ATTR (a cluster op, serialised cluster-wide) or a READ_OBJ of an
// attribute object; nothing here is on the I/O path.

import Floor
import URing
import SheepProtocol

public struct SheepSCSIRecordSync {
    /// The attribute that names the newest version a gateway wrote, so that a gateway that starts does not
    /// probe the whole chain. A hint only: it may lag (two writers' hints can land in either order); the
    /// chain itself is the truth, and probing goes on past the hint.
    static let headKey = "ringtgt.scsi.head"

    public enum Outcome: Equatable {
        /// `known` is the newest version in sheep (version 0: no record was ever written).
        case current
        /// Our version was written; `known` is it.
        case published
        /// Another gateway wrote that version first: refresh, recompute the change, try again.
        case lostRace
        /// Sheep refused (or the chain holds something we cannot read): keep the state we have and report.
        case failed(SheepResult, String)
    }

    public enum Step: Equatable {
        /// Send this request with this payload; a READ_OBJ's reply data comes back through `reply`.
        case send(SheepRequestHeader, [UInt8])
        case done(Outcome)
    }

    private enum Phase: Equatable {
        case idle
        case findHead
        case readHead
        /// GET_VDI_ATTR (find) of version `v`, then its READ_OBJ.
        case find(UInt64)
        case read(UInt64)
        case create(SheepSCSIRecord)
        case writeHead
    }

    let vdiName: String
    /// The newest record this gateway has adopted.
    private(set) var known = SheepSCSIRecord()
    private var phase = Phase.idle
    private var probed = 0

    init(vdiName: String) { self.vdiName = vdiName }

    var isBusy: Bool { phase != .idle }

    /// Starts bringing `known` up to date: from the head hint the first time, then from the next version.
    mutating func refresh() -> Step {
        precondition(phase == .idle, "one record operation at a time per VDI")
        probed = 0
        if known.version == 0 {
            phase = .findHead
            return .send(.getVDIAttr(id: 0, flags: []), SheepVDIAttr.encode(name: vdiName, key: Self.headKey))
        }
        return find(known.version + 1)
    }

    /// Starts appending `next`, which must follow `known` (built with `known.successor`).
    mutating func publish(_ next: SheepSCSIRecord) -> Step {
        precondition(phase == .idle, "one record operation at a time per VDI")
        precondition(next.version == known.version + 1, "a record follows the newest one known")
        phase = .create(next)
        return .send(.getVDIAttr(id: 0, flags: [.attrCreate, .attrExclusive]),
                     SheepVDIAttr.encode(name: vdiName, key: SheepSCSIRecord.attributeKey(version: next.version),
                                         value: next.encoded()))
    }

    /// Sheep's answer to the last `.send`: `vdiID`/`attrID` from a GET_VDI_ATTR reply, `data` from a READ_OBJ.
    mutating func reply(_ result: SheepResult, vdiID: UInt32 = 0, attrID: UInt32 = 0, data: [UInt8] = []) -> Step {
        let at = phase
        phase = .idle
        switch at {
        case .idle:
            return .done(.failed(.unknown, "a reply with nothing outstanding"))
        case .findHead:
            if result == .noObj { return find(1) }
            guard result == .success else { return failed(result, "finding \(Self.headKey)") }
            phase = .readHead
            return readAttr(vdiID, attrID)
        case .readHead:
            guard result == .success else { return failed(result, "reading \(Self.headKey)") }
            var head: UInt64 = 1
            if let v = SheepVDIAttr.value(of: data), v.count == 8 {
                head = max(1, v.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) })
            }
            return find(head)
        case .find(let v):
            if result == .noObj { return .done(.current) }
            guard result == .success else { return failed(result, "finding record version \(v)") }
            phase = .read(v)
            return readAttr(vdiID, attrID)
        case .read(let v):
            guard result == .success else { return failed(result, "reading record version \(v)") }
            guard let value = SheepVDIAttr.value(of: data), let rec = SheepSCSIRecord(decoding: value),
                  rec.version == v else {
                return failed(.unknown, "record version \(v) is damaged or not ours")
            }
            if known.isSuperseded(by: rec) { known = rec }
            probed += 1
            guard probed < ClusterStateLimits.chainProbeMax else { return .done(.current) }
            return find(v + 1)
        case .create(let rec):
            if result == .vdiExist { return .done(.lostRace) }
            guard result == .success else { return failed(result, "writing record version \(rec.version)") }
            known = rec
            phase = .writeHead
            var v = rec.version.littleEndian
            let bytes = withUnsafeBytes(of: &v) { Array($0) }
            return .send(.getVDIAttr(id: 0, flags: [.attrCreate]),
                         SheepVDIAttr.encode(name: vdiName, key: Self.headKey, value: bytes))
        case .writeHead:
            // The record is written whatever happens to the hint; a lost hint only makes starts probe longer.
            return .done(.published)
        }
    }

    private mutating func find(_ v: UInt64) -> Step {
        phase = .find(v)
        return .send(.getVDIAttr(id: 0, flags: []),
                     SheepVDIAttr.encode(name: vdiName, key: SheepSCSIRecord.attributeKey(version: v)))
    }

    private func readAttr(_ vid: UInt32, _ attrID: UInt32) -> Step {
        .send(.readObject(id: 0, oid: SheepOID.attr(vid: vid, attrID: attrID), offset: 0,
                          length: UInt32(SheepVDIAttrLayout.objectSizeBytes)), [])
    }

    private func failed(_ r: SheepResult, _ what: String) -> Step {
        .done(.failed(r, "sheep VDI '\(vdiName)': \(what): \(r.name)"))
    }
}
