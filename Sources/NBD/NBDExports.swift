// Which LUNs an NBD client may see, and under what names. Built per connection from the published
// configuration and the client's address during the handshake (not the I/O path).
//
// Names: "IQN/LUN" selects that LUN of that target (the IQN is matched without regard to case, as for
// iSCSI logins). The empty name (qemu-nbd's default, `nbd://host`) selects the first LUN numbered 1 or more
// of the first target, by tid, that this client may use. A name that is a target's alias (TargetAlias, which
// `ringtgtd --export NAME=...` sets) selects that target's first such LUN. The target's initiator-address
// ACL applies, matched against the client's address, as for an iSCSI login; a LUN's read-only state makes the
// export read-only.

/// One LUN as an NBD export.
import Floor
import ISCSIWire
import SCSI
public struct NBDExport: Equatable, Sendable {
    /// The canonical name, "IQN/LUN".
    public var name: String
    public var tid: Int
    public var lunNumber: UInt64
    public var sizeBytes: UInt64
    public var readOnly: Bool
    /// Shown by NBD_OPT_LIST and NBD_INFO_DESCRIPTION: the store type and the LUN, never a path on the server
    /// (a client learns nothing of the server's file system or sheep endpoints).
    public var description: String
    /// 1, or the LUN's block size when the store is opened with O_DIRECT (unaligned I/O would fail there).
    public var minimumBlockBytes: Int
    public var preferredBlockBytes: Int
    public var maxPayloadBytes: Int

    public var limits: NBDExportLimits {
        NBDExportLimits(sizeBytes: sizeBytes, readOnly: readOnly, maxPayloadBytes: maxPayloadBytes,
                        minimumBlockBytes: minimumBlockBytes)
    }

    /// Transmission flags. FLUSH and FUA reach the store's flush (fdatasync, RWF_DSYNC, FLUSH_VDI). Every
    /// connection of the daemon writes through to the same store (no per-connection cache), so a flush on
    /// one covers writes acknowledged on another: CAN_MULTI_CONN holds.
    public var transmissionFlags: UInt16 {
        var f = NBDWire.transHasFlags | NBDWire.transSendFlush | NBDWire.transSendFUA | NBDWire.transCanMultiConn
            | NBDWire.transSendCache
        if readOnly {
            f |= NBDWire.transReadOnly
        } else {
            f |= NBDWire.transSendTrim | NBDWire.transSendWriteZeroes | NBDWire.transSendFastZero
        }
        return f
    }
}

public struct NBDExportCatalog: Sendable {
    public enum Lookup: Equatable, Sendable {
        case found(NBDExport)
        /// The target exists but its ACL does not admit this client.
        case denied
        case unknown
    }

    public static let preferredBlockBytes = 4096

    let snapshot: ConfigSnapshot
    let peerAddress: String
    let maxPayloadBytes: Int

    public init(snapshot: ConfigSnapshot, peerAddress: String, maxPayloadBytes: Int) {
        self.snapshot = snapshot
        self.peerAddress = peerAddress
        self.maxPayloadBytes = maxPayloadBytes
    }

    /// The target's address ACL admits the client, and the target does not require CHAP: NBD has no
    /// authentication of its own (and no TLS here), so a target that requires CHAP is never exported.
    func allowed(_ t: TargetRuntime) -> Bool {
        !t.chap.required && ACLCheck.allows(t.acl, address: peerAddress, initiatorName: "")
    }

    public func export(_ t: TargetRuntime, _ lun: LogicalUnit) -> NBDExport {
        var direct = false
        if case .file(let f) = lun.backing { direct = f.directIO }
        return NBDExport(name: "\(t.name)/\(lun.number)", tid: t.tid, lunNumber: lun.number, sizeBytes: lun.byteCount,
                         readOnly: lun.capabilities.readOnly, description: "\(lun.bstype) LUN \(lun.number) of \(t.alias ?? t.name)",
                         minimumBlockBytes: direct ? lun.blockSize : 1,
                         preferredBlockBytes: max(NBDExportCatalog.preferredBlockBytes, lun.blockSize),
                         maxPayloadBytes: maxPayloadBytes)
    }

    /// Every export this client may use, in tid and LUN order (NBD_OPT_LIST).
    public var visible: [NBDExport] {
        var out: [NBDExport] = []
        for t in snapshot.targets where allowed(t) {
            for lun in t.luns { out.append(export(t, lun)) }
        }
        return out
    }

    public func lookup(_ name: String) -> Lookup {
        if name.isEmpty {
            // The first target (by tid) this client may use that has a LUN numbered 1 or more.
            var sawDenied = false
            for t in snapshot.targets {
                guard let lun = t.luns.first(where: { $0.number >= 1 }) else { continue }
                if allowed(t) { return .found(export(t, lun)) }
                sawDenied = true
            }
            return sawDenied ? .denied : .unknown
        }
        if let slash = name.lastIndex(of: "/"), let n = UInt64(name[name.index(after: slash)...]),
           let t = snapshot.target(named: String(name[..<slash])) {
            guard let lun = t.lun(n) else { return .unknown }
            return allowed(t) ? .found(export(t, lun)) : .denied
        }
        if let t = snapshot.targets.first(where: { $0.alias == name }),
           let lun = t.luns.first(where: { $0.number >= 1 }) ?? t.luns.first {
            return allowed(t) ? .found(export(t, lun)) : .denied
        }
        return .unknown
    }
}
