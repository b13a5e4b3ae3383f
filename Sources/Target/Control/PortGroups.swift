// ALUA on the control plane: each target's relative target port identifier and target port group, and the
// groups' states, set with `ringtgtadm --op update --mode target --tid N --name K --value V` and by the same
// keys in a `<target>` block of targets.conf:
//
//   alua_group 2                  # the target port group of this target's port (default 1)
//   relative_target_port_id 2     # this target's port (default 1); give each gateway of one LU its own
//   alua_state standby            # the state of the target's group: active/optimized, active/non-optimized,
//                                 # standby, unavailable, offline, transitioning (or LIO's 0,1,2,3,14,15)
//
// tgt has no ALUA; the names follow LIO's configfs (alua_access_state, tg_pt_gp) where tgt has none.

/// The target keys of ALUA and their defaults.
public enum ALUAKeys {
    public static let group = "alua_group"
    public static let state = "alua_state"
    public static let relativePort = "relative_target_port_id"
    public static let all: Set<String> = [group, state, relativePort]
    /// Every target starts in group 1 with port 1, as tgt's one target port per target.
    public static let defaultGroupID: UInt16 = 1
    public static let defaultRelativePortID: UInt16 = 1

    /// A group id or relative target port identifier: 1...65535 (0 is reserved for both, SPC-4 §7.8.6).
    static func parseIdentifier(_ text: String, _ key: String) throws -> UInt16 {
        guard let n = ISCSITargetKeys.parseUnsigned(text), n >= 1, n <= UInt64(UInt16.max) else {
            throw AdminError(.invalidRequest, "\(key) must be 1...65535")
        }
        return UInt16(n)
    }

    static func parseState(_ text: String) throws -> ALUAState {
        guard let s = ALUAState.parse(text) else {
            throw AdminError(.invalidRequest, "\(state) must be one of "
                             + ALUAState.allCases.map(\.name).joined(separator: ", "))
        }
        return s
    }

    /// The `--dump` lines of a target whose ALUA settings differ from the defaults.
    static func dumpLines(groupID: UInt16, relativePortID: UInt16, state: ALUAState) -> String {
        var out = ""
        if groupID != defaultGroupID { out += "    \(group) \(groupID)\n" }
        if relativePortID != defaultRelativePortID { out += "    \(relativePort) \(relativePortID)\n" }
        if state != .activeOptimized { out += "    \(ALUAKeys.state) \(state.name)\n" }
        return out
    }

    /// `--op show --mode target --tid N` lines, after tgt's; none while all are defaults, so that the output
    /// stays tgt's own for those who parse it.
    static func showLines(groupID: UInt16, relativePortID: UInt16, state: ALUAState) -> String {
        if groupID == defaultGroupID && relativePortID == defaultRelativePortID && state == .activeOptimized { return "" }
        return "\(group)=\(groupID)\n\(ALUAKeys.state)=\(state.name)\n\(relativePort)=\(relativePortID)\n"
    }
}

/// The registry's target port groups: one object per group id named by some target, kept across snapshots
/// because it holds the state. Bounded by the targets: a group no target names is dropped at publish.
struct PortGroupDirectory {
    private var groups: [UInt16: TargetPortGroup] = [:]
    /// The table of the last published snapshot.
    private(set) var table = ALUATable(ports: [])

    mutating func group(_ id: UInt16) -> TargetPortGroup {
        if let g = groups[id] { return g }
        let g = TargetPortGroup(id: id)
        groups[id] = g
        return g
    }

    func state(_ id: UInt16) -> ALUAState { groups[id]?.state ?? .activeOptimized }

    /// Applies one ALUA key to `target`; the group whose state or membership changed, for `announce` once
    /// the new snapshot is out.
    mutating func update(_ target: inout Registry.TargetRecord, name: String, value: String) throws -> TargetPortGroup? {
        switch name {
        case ALUAKeys.group:
            let id = try ALUAKeys.parseIdentifier(value, name)
            if id == target.portGroupID { return nil }
            target.portGroupID = id
            return group(id)
        case ALUAKeys.relativePort:
            target.relativeTargetPortID = try ALUAKeys.parseIdentifier(value, name)
            return nil
        default:
            let s = try ALUAKeys.parseState(value)
            let g = group(target.portGroupID)
            return g.setState(s, explicit: false) ? g : nil
        }
    }

    /// The ports of `targets` as a new table; groups no target names are forgotten.
    mutating func publish(_ targets: [Registry.TargetRecord]) -> ALUATable {
        let named = Set(targets.map(\.portGroupID))
        groups = groups.filter { named.contains($0.key) }
        var ports: [ALUAPort] = []
        for t in targets.sorted(by: { $0.tid < $1.tid }) {
            ports.append(ALUAPort(relativeTargetPortID: t.relativeTargetPortID, group: group(t.portGroupID),
                                  luns: t.luns.keys.sorted().map { t.luns[$0]!.unit }))
        }
        table = ALUATable(ports: ports)
        table.refreshAll()
        return table
    }
}

extension ConfigFile {
    /// Two targets of one group that ask for different states: the group has one state.
    static func checkPortGroupStates(_ config: Configuration, _ errors: inout [Failure]) {
        var seen: [UInt16: (state: ALUAState, line: Int)] = [:]
        for t in config.targets {
            let groupText = t.keys.last { $0.name == ALUAKeys.group }?.item.value
            let id = groupText.flatMap { try? ALUAKeys.parseIdentifier($0, ALUAKeys.group) } ?? ALUAKeys.defaultGroupID
            guard let item = t.keys.last(where: { $0.name == ALUAKeys.state })?.item,
                  let state = ALUAState.parse(item.value) else { continue }
            if let first = seen[id], first.state != state {
                errors.append(item.source.failure("target port group \(id) is \(first.state.name) at line \(first.line)"))
            } else if seen[id] == nil {
                seen[id] = (state, item.source.line)
            }
        }
    }
}

extension ConfigFile.Target {
    /// The keys in the order they are sent: `alua_state` sets the state of the target's group, so it goes
    /// after `alua_group`, wherever the file has it.
    var keysInApplyOrder: [(name: String, item: ConfigFile.Item)] {
        keys.filter { $0.name != ALUAKeys.state } + keys.filter { $0.name == ALUAKeys.state }
    }
}
