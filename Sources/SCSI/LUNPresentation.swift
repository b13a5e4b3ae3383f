// What a logical unit shows an initiator beyond its identity strings: tgt's LUN parameters lbppbe,
// la_lba, optimal_xfer_gran, removable, online and sense_format (usr/spc.c lu_config). They exist so a
// LUN moved from tgt can look to its initiators exactly as it did there. Also ringtgt's own sanitize_rate.

import Floor
import Store
public struct LUNPresentation: Equatable, Sendable {
    /// The READ CAPACITY(16) field widths: LBPPBE is 4 bits, LOWEST ALIGNED LBA 14.
    public static let maxLBPPBE: UInt8 = 0x0F
    public static let maxLowestAlignedLBA: UInt16 = 0x3FFF

    /// READ CAPACITY(16) LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (tgt's lbppbe).
    public var lbppbe: UInt8 = BlockLimits.logicalBlocksPerPhysicalBlockExponent
    /// READ CAPACITY(16) LOWEST ALIGNED LOGICAL BLOCK ADDRESS (tgt's la_lba).
    public var lowestAlignedLBA: UInt16 = 0
    /// VPD B0 OPTIMAL TRANSFER LENGTH GRANULARITY, in blocks (tgt's optimal_xfer_gran). nil: one
    /// physical block, which is what ringtgt reports unless told otherwise.
    public var optimalTransferGranularityBlocks: UInt16? = nil
    /// INQUIRY RMB; a removable LU can be ejected (START STOP UNIT LOEJ) unless removal is prevented.
    public var removable = false
    /// Whether the medium is present when the LU is created (tgt's online). Offline, TEST UNIT READY
    /// answers NOT READY, and a removable LU refuses medium access with MEDIUM NOT PRESENT.
    public var online = true
    /// Sense data in descriptor format (tgt's sense_format=1).
    public var descriptorSense = false
    /// ringtgt's sanitize_rate: a SANITIZE moves at most this many MiB per second through the store, so that
    /// overwriting a whole LU leaves the store (a shared sheepdog cluster, a disk with other LUs) room for
    /// other work. 0, the default: as fast as the store takes it.
    public var sanitizeRateMiB: UInt32 = 0
    public static let maxSanitizeRateMiB: UInt32 = 1 << 20

    /// `sanitizeRateMiB` in bytes per second (0: unpaced).
    public var sanitizeRateBytes: UInt64 { UInt64(sanitizeRateMiB) << 20 }

    public init() {}
}
