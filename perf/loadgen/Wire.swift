// The SCSI side of what the load generator sends: the CDBs it writes into a SCSI Command's BHS. The iSCSI
// headers themselves come from ISCSIWire (`InitiatorPDUBuild`, `BHS`). Nothing here allocates.
import ISCSIWire

enum Wire {
    // SCSI opcodes used here.
    static let scsiRead16: UInt8 = 0x88
    static let scsiWrite16: UInt8 = 0x8a

    /// READ(16) / WRITE(16) CDB at BHS offset 32.
    @inline(__always)
    static func rw16CDB(_ h: UnsafeMutableRawPointer, write: Bool, lba: UInt64, blocks: UInt32) {
        h.storeBytes(of: write ? scsiWrite16 : scsiRead16, toByteOffset: 32, as: UInt8.self)
        put64(h, 34, lba)
        put32(h, 42, blocks)
    }
}
