// The iSCSI keys an admin may set on a target with `--op update --mode target --name K --value V`,
// validated as tgt validates them (usr/iscsi/param.c session_keys[] and iscsi_target_update), with
// ringtgt's own limits where it supports less than tgt (ErrorRecoveryLevel 0, MaxConnections 1, no markers).

/// How a key's value is written and checked.
public enum ISCSIKeyKind: Equatable, Sendable {
    /// A number in min...max (tgt's range keys; `zeroAllowed` is tgt's min_or_zero_ops).
    case number(min: UInt64, max: UInt64, zeroAllowed: Bool)
    /// "Yes" or "No", case-sensitive as in tgt's bool_str_to_val.
    case boolean
    /// A list of "None" and "CRC32C". Like tgt, None is always acceptable, so "CRC32C" offers CRC32C,None.
    case digest
    /// A value ringtgt shows but does not let the admin change (tgt's markers, which RFC 7143 dropped).
    case fixed
}

public struct ISCSITargetKey: Sendable {
    public let name: String
    public let kind: ISCSIKeyKind
    /// The value `--op show --mode target --tid N` prints when the admin has not set the key.
    public let defaultText: String

    public init(name: String, kind: ISCSIKeyKind, defaultText: String) {
        self.name = name
        self.kind = kind
        self.defaultText = defaultText
    }
}

public enum ISCSITargetKeys {
    /// Largest data segment length iSCSI can express (2^24 - 1 bytes), tgt's max for the length keys.
    public static let maxDataSegmentBytes: UInt64 = 16_777_215
    /// RFC 7143 §13.15 minimum for length keys.
    public static let minDataSegmentBytes: UInt64 = 512
    /// RFC 7143 §13.14 / §13.16: Time2Wait and Time2Retain are at most 3600 seconds.
    public static let maxTime2Seconds: UInt64 = 3600
    public static let maxNopIntervalSeconds: UInt64 = 3600
    public static let maxNopCount: UInt64 = 65535
    /// RFC 7143 §13.12: TargetAlias is a text value of at most 255 bytes.
    public static let maxAliasBytes = 255
    /// tgt's MAX_QUEUE_CMD_MIN / MAX_QUEUE_CMD_MAX / MAX_QUEUE_CMD_DEF.
    public static let maxQueueCommandsRange: ClosedRange<UInt64> = 1...512
    public static let defaultMaxQueueCommands: UInt64 = 128

    /// Key names ringtgt stores in `TargetRuntime.params` that are not iSCSI login keys: tgt's per-target
    /// NOP-In settings (`--name nop_interval`, `--name nop_count`).
    public static let nopIntervalKey = "nop_interval"
    public static let nopCountKey = "nop_count"
    /// Sets `TargetRuntime.alias`, not `params` (tgt itself does not accept TargetAlias here).
    public static let aliasKey = "TargetAlias"

    /// tgt's session_keys[] in tgt's order (show prints them in this order) with tgt's target defaults
    /// from iscsi_target_create.
    public static let table: [ISCSITargetKey] = [
        ISCSITargetKey(name: "MaxRecvDataSegmentLength",
                       kind: .number(min: minDataSegmentBytes, max: maxDataSegmentBytes, zeroAllowed: false), defaultText: "8192"),
        ISCSITargetKey(name: "HeaderDigest", kind: .digest, defaultText: "None"),
        ISCSITargetKey(name: "DataDigest", kind: .digest, defaultText: "None"),
        ISCSITargetKey(name: "InitialR2T", kind: .boolean, defaultText: "Yes"),
        ISCSITargetKey(name: "MaxOutstandingR2T", kind: .number(min: 1, max: 65535, zeroAllowed: false), defaultText: "1"),
        ISCSITargetKey(name: "ImmediateData", kind: .boolean, defaultText: "Yes"),
        ISCSITargetKey(name: "FirstBurstLength",
                       kind: .number(min: minDataSegmentBytes, max: maxDataSegmentBytes, zeroAllowed: false), defaultText: "65536"),
        ISCSITargetKey(name: "MaxBurstLength",
                       kind: .number(min: minDataSegmentBytes, max: maxDataSegmentBytes, zeroAllowed: false), defaultText: "262144"),
        ISCSITargetKey(name: "DataPDUInOrder", kind: .boolean, defaultText: "Yes"),
        ISCSITargetKey(name: "DataSequenceInOrder", kind: .boolean, defaultText: "Yes"),
        // ringtgt implements ErrorRecoveryLevel 0 only (tgt allows 0...2).
        ISCSITargetKey(name: "ErrorRecoveryLevel", kind: .number(min: 0, max: 0, zeroAllowed: true), defaultText: "0"),
        ISCSITargetKey(name: "IFMarker", kind: .fixed, defaultText: "No"),
        ISCSITargetKey(name: "OFMarker", kind: .fixed, defaultText: "No"),
        ISCSITargetKey(name: "DefaultTime2Wait", kind: .number(min: 0, max: maxTime2Seconds, zeroAllowed: true), defaultText: "2"),
        ISCSITargetKey(name: "DefaultTime2Retain", kind: .number(min: 0, max: maxTime2Seconds, zeroAllowed: true), defaultText: "20"),
        ISCSITargetKey(name: "OFMarkInt", kind: .fixed, defaultText: "Reject"),
        ISCSITargetKey(name: "IFMarkInt", kind: .fixed, defaultText: "Reject"),
        // ringtgt implements MaxConnections 1 only (tgt allows up to 65535).
        ISCSITargetKey(name: "MaxConnections", kind: .number(min: 1, max: 1, zeroAllowed: false), defaultText: "1"),
        ISCSITargetKey(name: "RDMAExtensions", kind: .fixed, defaultText: "Yes"),
        ISCSITargetKey(name: "TargetRecvDataSegmentLength",
                       kind: .number(min: minDataSegmentBytes, max: maxDataSegmentBytes, zeroAllowed: false), defaultText: "262144"),
        ISCSITargetKey(name: "InitiatorRecvDataSegmentLength",
                       kind: .number(min: minDataSegmentBytes, max: maxDataSegmentBytes, zeroAllowed: false), defaultText: "262144"),
        ISCSITargetKey(name: "MaxOutstandingUnexpectedPDUs",
                       kind: .number(min: 2, max: UInt64(UInt32.max), zeroAllowed: true), defaultText: "0"),
        ISCSITargetKey(name: "MaxXmitDataSegmentLength",
                       kind: .number(min: minDataSegmentBytes, max: maxDataSegmentBytes, zeroAllowed: false), defaultText: "8192"),
        ISCSITargetKey(name: "MaxQueueCmd",
                       kind: .number(min: maxQueueCommandsRange.lowerBound, max: maxQueueCommandsRange.upperBound, zeroAllowed: false),
                       defaultText: String(defaultMaxQueueCommands)),
    ]

    /// The key named `name`, matched case-insensitively as tgt's param_index_by_name does.
    public static func key(named name: String) -> ISCSITargetKey? {
        let lower = name.lowercased()
        return table.first { $0.name.lowercased() == lower }
    }

    /// Checks `value` for `key` and returns the text to store, or nil if tgt would answer "invalid request".
    public static func normalize(_ value: String, for key: ISCSITargetKey) -> String? {
        switch key.kind {
        case .number(let min, let max, let zeroAllowed):
            guard let n = parseUnsigned(value) else { return nil }
            if zeroAllowed && n == 0 { return "0" }
            guard n >= min && n <= max else { return nil }
            return String(n)
        case .boolean:
            return value == "Yes" || value == "No" ? value : nil
        case .digest:
            var crc = false
            for item in value.split(separator: ",", omittingEmptySubsequences: false) {
                switch item {
                case "None": break
                case "CRC32C": crc = true
                default: return nil
                }
            }
            return crc ? "CRC32C,None" : "None"
        case .fixed:
            return nil
        }
    }

    /// What `show` prints for a stored value: tgt prints one digest, preferring CRC32C.
    public static func displayText(_ stored: String, for key: ISCSITargetKey) -> String {
        if key.kind == .digest { return stored.contains("CRC32C") ? "CRC32C" : "None" }
        return stored
    }

    /// Decimal or 0x-prefixed hexadecimal, as tgt's strtol(..., 0) reads the common cases; anything else
    /// (tgt would silently read "abc" as 0) is rejected.
    public static func parseUnsigned(_ text: String) -> UInt64? {
        if text.hasPrefix("0x") || text.hasPrefix("0X") {
            let digits = text.dropFirst(2)
            guard !digits.isEmpty else { return nil }
            return UInt64(digits, radix: 16)
        }
        guard !text.isEmpty, text.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
        return UInt64(text)
    }
}
