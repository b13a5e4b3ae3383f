// `--op show` output in tgt's layout (usr/target.c tgt_target_show_all and system_show, usr/iscsi/target.c
// iscsi_target_show, usr/iscsi/session.c's I_T nexus info), so scripts that parse tgtadm's output work.

enum ShowFormatter {
    static let tab1 = "    "
    static let tab2 = tab1 + tab1
    static let tab3 = tab2 + tab1
    static let tab4 = tab2 + tab2

    static func targets(_ targets: [Registry.TargetRecord], sessions: [SessionInfo], controllerLUN0: Bool) -> String {
        var out = ""
        for t in targets {
            out += "Target \(t.tid): \(t.name)\n"
            out += "\(tab1)System information:\n"
            out += "\(tab2)Driver: \(Registry.driverName)\n"
            out += "\(tab2)State: \(t.state.rawValue)\n"
            if let interval = t.params[ISCSITargetKeys.nopIntervalKey], interval != "0" {
                out += "\(tab2)Nop interval: \(interval)\n"
                out += "\(tab2)Nop count: \(t.params[ISCSITargetKeys.nopCountKey] ?? "0")\n"
            }
            out += "\(tab1)I_T nexus information:\n"
            for s in sessions where s.tid == t.tid {
                out += "\(tab2)I_T nexus: \(s.sid)\n"
                out += "\(tab3)Initiator: \(s.initiatorName) alias: \(s.initiatorAlias ?? "none")\n"
                for c in s.connections {
                    out += "\(tab3)Connection: \(c.cid)\n"
                    out += "\(tab4)IP Address: \(c.peerAddress)\n"
                }
            }
            out += "\(tab1)LUN information:\n"
            if controllerLUN0 && t.luns[0] == nil {
                out += controllerLUN(tid: t.tid)
            }
            for number in t.luns.keys.sorted() {
                out += lun(t.luns[number]!)
            }
            out += "\(tab1)Account information:\n"
            for user in t.incomingUsers { out += "\(tab2)\(user)\n" }
            if let user = t.outgoingUser { out += "\(tab2)\(user) (outgoing)\n" }
            out += "\(tab1)ACL information:\n"
            for rule in t.addressACL + t.nameACL {
                out += "\(tab2)\(rule)\n"
            }
        }
        return out
    }

    /// tgt's print_disksize, arithmetic and all: it reports "MB" as bytes/512 scaled by 1/1950 with a
    /// correction, in unsigned 64-bit wrapping arithmetic.
    static func diskSize(_ bytes: UInt64) -> String {
        let sectors = bytes / 512
        let mb = (sectors &- ((sectors / 625) &- 974)) / 1950
        return "\(mb) MB"
    }

    private static func lunBlock(number: UInt64, type: String, scsiID: String, serial: String, size: String, blockSize: Int,
                                 readOnly: Bool, thin: Bool, bstype: String, path: String, flags: String,
                                 medium: (online: Bool, removable: Bool, prevented: Bool) = (true, false, false)) -> String {
        "\(tab2)LUN: \(number)\n"
            + "\(tab3)Type: \(type)\n"
            + "\(tab3)SCSI ID: \(scsiID)\n"
            + "\(tab3)SCSI SN: \(serial)\n"
            + "\(tab3)Size: \(size), Block size: \(blockSize)\n"
            + "\(tab3)Online: \(medium.online ? "Yes" : "No")\n"
            + "\(tab3)Removable media: \(medium.removable ? "Yes" : "No")\n"
            + "\(tab3)Prevent removal: \(medium.prevented ? "Yes" : "No")\n"
            + "\(tab3)Readonly: \(readOnly ? "Yes" : "No")\n"
            + "\(tab3)SWP: No\n"
            + "\(tab3)Thin-provisioning: \(thin ? "Yes" : "No")\n"
            + "\(tab3)Backing store type: \(bstype)\n"
            + "\(tab3)Backing store path: \(path)\n"
            + "\(tab3)Backing store flags: \(flags)\n"
    }

    static func lun(_ r: Registry.LUNRecord) -> String {
        let u = r.unit
        var out = lunBlock(number: u.number, type: "disk", scsiID: r.identity.scsiID, serial: r.identity.serial,
                           size: diskSize(u.byteCount), blockSize: u.blockSize, readOnly: u.capabilities.readOnly,
                           thin: u.capabilities.canDiscard, bstype: u.bstype, path: u.path, flags: r.openFlags.text,
                           medium: (u.state.isOnline, u.presentation.removable, u.state.isRemovalPrevented))
        // Only for the unsafe case, so tools parsing tgt's output see tgt's output otherwise.
        if case .sheep(let vol) = u.backing, !vol.clusterLocks, !vol.readOnly {
            out += "\(tab3)WARNING: \(SheepVolume.unlockedClusterWarning)\n"
        }
        return out
    }

    /// The LUN 0 tgt creates with every target (tgt_device_create(tid, TYPE_RAID, 0, NULL, 0)).
    static func controllerLUN(tid: Int) -> String {
        let id = LUNIdentity.tgtDefaults(tid: tid, lun: 0)
        return lunBlock(number: 0, type: "controller", scsiID: id.scsiID, serial: id.serial, size: diskSize(0),
                        blockSize: 1, readOnly: false, thin: false, bstype: "null", path: "None", flags: "")
    }

    /// `--op show --mode target --tid N`: tgt's show_nop_info then show_iscsi_param.
    static func targetParameters(_ t: Registry.TargetRecord) -> String {
        var out = ""
        out += "nop_interval=\(t.params[ISCSITargetKeys.nopIntervalKey] ?? "0")\n"
        out += "nop_count=\(t.params[ISCSITargetKeys.nopCountKey] ?? "0")\n"
        for key in ISCSITargetKeys.table {
            let stored = t.params[key.name] ?? key.defaultText
            out += "\(key.name)=\(ISCSITargetKeys.displayText(stored, for: key))\n"
        }
        if let alias = t.alias { out += "\(ISCSITargetKeys.aliasKey)=\(alias)\n" }
        return out
    }

    /// iscsi_target_show_portals: IPv6 hosts in brackets.
    static func portals(_ portals: [PortalInfo]) -> String {
        var out = ""
        for p in portals {
            if let path = p.unixPath { out += "Portal: unix:\(path),\(p.portalGroupTag)\n"; continue }
            let host = p.host.contains(":") ? "[\(p.host)]" : p.host
            out += "Portal: \(host):\(p.port),\(p.portalGroupTag)\n"
        }
        return out
    }

    /// iscsi_target_show_connections.
    static func connections(_ sessions: [SessionInfo]) -> String {
        var out = ""
        for s in sessions {
            for c in s.connections {
                out += "Session: \(s.sid)\n"
                out += "\(tab1)Connection: \(c.cid)\n"
                out += "\(tab2)Initiator: \(s.initiatorName)\n"
                out += "\(tab2)IP Address: \(c.peerAddress)\n"
            }
        }
        return out
    }

    static func system(state: Registry.State, debug: Bool, driverState: String, backingStores: [String],
                       discovery: Registry.AccountBindings = Registry.AccountBindings()) -> String {
        var out = "System:\n"
        out += "\(tab1)State: \(state.rawValue)\n"
        out += "\(tab1)debug: \(debug ? "on" : "off")\n"
        out += "LLDs:\n"
        out += "\(tab1)\(Registry.driverName): \(driverState)\n"
        out += "Backing stores:\n"
        for b in backingStores { out += "\(tab1)\(b)\n" }
        out += "Device types:\n"
        out += "\(tab1)disk\n"
        // tgt's system_show lists the discovery accounts here, in these words, its blank line included. It
        // shows the outgoing one only while an incoming one is bound too; ringtgt shows it whenever it is bound.
        if !discovery.incoming.isEmpty || discovery.outgoing != nil {
            out += "\(tab1)Account information:\n\n"
            for user in discovery.incoming { out += "\(tab1)\(user)\n" }
            if let user = discovery.outgoing { out += "\(tab1)\(user) (outgoing)\n" }
        }
        return out
    }

    static func llds(_ targets: [Registry.TargetRecord]) -> String {
        var out = "LLDs:\n"
        out += "\(tab1)\(Registry.driverName): ready\n"
        for t in targets { out += "\(tab2)Target \(t.tid): \(t.name)\n" }
        return out
    }
}
