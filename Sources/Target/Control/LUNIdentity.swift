// The identity of a logical unit that the admin may set with `--params` (tgt's lu_config tokens in
// usr/spc.c), and the defaults tgt gives a new LUN, so that a LUN moved from tgt to ringtgt keeps its
// SCSI ID, serial number and NAA designator (multipath and udev key on them).

/// The defaults a new LUN starts with: ringtgt's own, or tgt's (`ringtgtd --tgt-defaults`), so that
/// LUNs moved from tgt look the same to initiators without a `--params` on each.
public enum LUNDefaults: String, Sendable {
    case ringtgt
    case tgt
}

public struct LUNIdentity: Equatable, Sendable {
    /// INQUIRY field widths (SPC-4 §6.6.2) and tgt's SCSI_ID_LEN / SCSI_SN_LEN.
    public static let vendorBytes = 8
    public static let productBytes = 16
    public static let revisionBytes = 4
    public static let scsiIDBytes = 36
    public static let serialBytes = 36

    public var vendor: String
    public var product: String
    public var revision: String
    /// tgt's scsi_id: the T10 vendor designator text of VPD 0x83, and the source of the NAA designator.
    public var scsiID: String
    public var serial: String
    public var readOnly: Bool
    /// nil: what the store offers. false: never advertise UNMAP/GET LBA STATUS. true: require the store's support.
    public var thinProvisioning: Bool?
    /// nil: the store's default. From tgt-admin's `write-cache off` (mode_page=8:0:18:0x10:...).
    public var writeCacheEnabled: Bool?
    /// tgt's optimal_xfer_len, in blocks (VPD B0 OPTIMAL TRANSFER LENGTH).
    public var optimalTransferBlocks: Int?
    /// tgt's lbppbe, la_lba, optimal_xfer_gran, removable, online and sense_format.
    public var presentation = LUNPresentation()
    /// tgt's !no_auto_lbppbe: take LBPPBE from the backing file's preferred I/O size when the LUN is
    /// created (tgt's update_lbppbe), unless `lbppbe` is given.
    public var lbppbeFromBacking = false

    /// tgt's spc_lu_init defaults: scsi_id "IET     %04x%04x" (tid, lun), scsi_sn "beaf%d%d" (tid, lun).
    /// With `.ringtgt` defaults, vendor, product and revision stay LogicalUnit's defaults (ringtgt's own
    /// INQUIRY identity); with `.tgt`, the rest of what tgt's sbc_lu_init gives a disk too: vendor
    /// "IET", no thin provisioning, LBPPBE from the backing file and no optimal transfer granularity.
    public static func tgtDefaults(tid: Int, lun: UInt64, defaults: LUNDefaults = .ringtgt) -> LUNIdentity {
        let tidHex = hex(UInt64(UInt32(truncatingIfNeeded: tid)), width: 4)
        let lunHex = hex(lun, width: 4)
        var identity = LUNIdentity(vendor: "RINGTGT", product: "VIRTUAL-DISK", revision: "0001",
                                   scsiID: "IET     \(tidHex)\(lunHex)", serial: "beaf\(tid)\(lun)", readOnly: false,
                                   thinProvisioning: nil, writeCacheEnabled: nil, optimalTransferBlocks: nil)
        if defaults == .tgt {
            identity.vendor = "IET"
            identity.thinProvisioning = false
            identity.lbppbeFromBacking = true
            identity.presentation.optimalTransferGranularityBlocks = 0
        }
        return identity
    }

    /// tgt's update_lbppbe: the exponent that makes a physical block the backing file's preferred I/O
    /// size (st_blksize; tgt leaves it 0 for a block device).
    public static func lbppbe(preferredIOBytes: Int, blockSize: Int) -> UInt8 {
        var exponent: UInt8 = 0
        var size = preferredIOBytes
        while size > blockSize && exponent < LUNPresentation.maxLBPPBE {
            exponent += 1
            size >>= 1
        }
        return exponent
    }

    /// Applies tgt's `--params` text ("key=value,key=value"). Unknown keys are "invalid request" as in
    /// tgt's lu_config; so are keys ringtgt does not implement, with the key named in the detail.
    public mutating func apply(params: String) throws {
        for item in params.split(separator: ",", omittingEmptySubsequences: true) {
            guard let eq = item.firstIndex(of: "=") else {
                throw AdminError(.invalidRequest, "parameter '\(item)' has no value")
            }
            let key = String(item[..<eq])
            let value = String(item[item.index(after: eq)...])
            try apply(key: key, value: value)
        }
    }

    public mutating func apply(key: String, value: String) throws {
        switch key {
        case "vendor_id": vendor = try Self.inquiryText(value, key: key, width: Self.vendorBytes)
        case "product_id": product = try Self.inquiryText(value, key: key, width: Self.productBytes)
        case "product_rev": revision = try Self.inquiryText(value, key: key, width: Self.revisionBytes)
        case "scsi_id": scsiID = try Self.inquiryText(value, key: key, width: Self.scsiIDBytes)
        case "scsi_sn": serial = try Self.inquiryText(value, key: key, width: Self.serialBytes)
        case "readonly": readOnly = try Self.flag(value, key: key)
        case "thin_provisioning": thinProvisioning = try Self.flag(value, key: key)
        case "optimal_xfer_len":
            guard let n = ISCSITargetKeys.parseUnsigned(value), n <= UInt64(UInt32.max) else {
                throw AdminError(.invalidRequest, "optimal_xfer_len must be a number of blocks")
            }
            optimalTransferBlocks = Int(n)
        case "mode_page":
            writeCacheEnabled = try Self.cachingPageWCE(value)
        case "lbppbe":
            presentation.lbppbe = UInt8(try Self.number(value, key: key, max: UInt64(LUNPresentation.maxLBPPBE)))
            lbppbeFromBacking = false
        case "la_lba":
            presentation.lowestAlignedLBA = UInt16(try Self.number(value, key: key, max: UInt64(LUNPresentation.maxLowestAlignedLBA)))
        case "optimal_xfer_gran":
            presentation.optimalTransferGranularityBlocks = UInt16(try Self.number(value, key: key, max: UInt64(UInt16.max)))
        case "removable": presentation.removable = try Self.flag(value, key: key)
        case "online": presentation.online = try Self.flag(value, key: key)
        case "sense_format": presentation.descriptorSense = try Self.flag(value, key: key)
        case "sanitize_rate":
            presentation.sanitizeRateMiB = UInt32(try Self.number(value, key: key,
                                                                  max: UInt64(LUNPresentation.maxSanitizeRateMiB)))
        default:
            throw AdminError(.invalidRequest, "unsupported logical unit parameter '\(key)'")
        }
    }

    /// tgt truncates INQUIRY text to its field (match_strncpy); it must be printable ASCII (SPC-4 §4.4.1).
    static func inquiryText(_ value: String, key: String, width: Int) throws -> String {
        guard value.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else {
            throw AdminError(.invalidRequest, "\(key) must be printable ASCII")
        }
        return String(decoding: value.utf8.prefix(width), as: UTF8.self)
    }

    /// A number that must fit its SCSI field (tgt's atoi would silently truncate it).
    static func number(_ value: String, key: String, max: UInt64) throws -> UInt64 {
        guard let n = ISCSITargetKeys.parseUnsigned(value), n <= max else {
            throw AdminError(.invalidRequest, "\(key) must be a number from 0 to \(max)")
        }
        return n
    }

    /// tgt reads these with atoi: "0" is off, any other number on.
    static func flag(_ value: String, key: String) throws -> Bool {
        guard let n = ISCSITargetKeys.parseUnsigned(value) else {
            throw AdminError(.invalidRequest, "\(key) must be 0 or 1")
        }
        return n != 0
    }

    /// ringtgt honours one mode page from the admin: the caching page (8) that tgt-admin's
    /// `write-cache on|off` sends, e.g. "8:0:18:0x10:0:0xff:...". Its first data byte holds WCE (bit 2).
    static func cachingPageWCE(_ value: String) throws -> Bool {
        let fields = value.split(separator: ":", omittingEmptySubsequences: false).map { ISCSITargetKeys.parseUnsigned(String($0)) }
        guard fields.count >= 4, fields.allSatisfy({ $0 != nil && $0! <= 0xFF }) else {
            throw AdminError(.invalidRequest, "mode_page must be page:subpage:length:bytes...")
        }
        guard fields[0] == 8, fields[1] == 0 else {
            throw AdminError(.invalidRequest, "only the caching mode page (8) can be set")
        }
        let wceBit: UInt64 = 0x04
        return (fields[3]! & wceBit) != 0
    }

    /// tgt's update_vpd_83: the 16-byte NAA IEEE Registered Extended designator is the scsi_id read as
    /// hexadecimal digits (each non-hex character reads as 0), right-aligned in 128 bits, with the top
    /// nibble replaced by NAA 6. Same scsi_id, same designator as tgt.
    public static func naaDesignator(scsiID: String) -> [UInt8] {
        var high: UInt64 = 0
        var low: UInt64 = 0
        for byte in scsiID.utf8 {
            let digit: UInt64
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt64(byte - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = UInt64(byte - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = UInt64(byte - UInt8(ascii: "A") + 10)
            default: digit = 0
            }
            high = (high << 4) | (low >> 60)
            low = (low << 4) | digit
        }
        var bytes = [UInt8](repeating: 0, count: 16)
        for i in 0..<8 {
            bytes[i] = UInt8(truncatingIfNeeded: high >> (56 - 8 * UInt64(i)))
            bytes[8 + i] = UInt8(truncatingIfNeeded: low >> (56 - 8 * UInt64(i)))
        }
        let naaIEEERegisteredExtended: UInt8 = 0x6
        bytes[0] = (bytes[0] & 0x0F) | (naaIEEERegisteredExtended << 4)
        return bytes
    }

    static func hex(_ value: UInt64, width: Int) -> String {
        let digits = String(value, radix: 16)
        return digits.count >= width ? digits : String(repeating: "0", count: width - digits.count) + digits
    }
}
