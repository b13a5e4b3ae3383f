// Initiator-side iSCSI PDU builders (RFC 7143 §11) and big-endian field access. The target library
// has the target-side builders; these are the mirror images a load generator needs. Every builder writes
// a 48-byte BHS in place into caller-owned memory: nothing here allocates.
import Target

enum Wire {
    /// The BHS is 48 bytes; a header digest adds 4.
    static let bhsBytes = 48
    static let digestBytes = 4
    static let reservedTag: UInt32 = 0xFFFF_FFFF

    // Initiator opcodes (RFC 7143 §11.1.1).
    static let opNopOut: UInt8 = 0x00
    static let opSCSICommand: UInt8 = 0x01
    static let opLoginRequest: UInt8 = 0x03
    static let opDataOut: UInt8 = 0x05
    static let opLogoutRequest: UInt8 = 0x06
    // Target opcodes.
    static let opNopIn: UInt8 = 0x20
    static let opSCSIResponse: UInt8 = 0x21
    static let opLoginResponse: UInt8 = 0x23
    static let opDataIn: UInt8 = 0x25
    static let opLogoutResponse: UInt8 = 0x26
    static let opR2T: UInt8 = 0x31
    static let opAsyncMessage: UInt8 = 0x32
    static let opReject: UInt8 = 0x3f

    // SCSI opcodes used here.
    static let scsiRead16: UInt8 = 0x88
    static let scsiWrite16: UInt8 = 0x8a
    static let scsiServiceActionIn16: UInt8 = 0x9e
    static let readCapacity16ServiceAction: UInt8 = 0x10

    @inline(__always) static func u8(_ p: UnsafeRawPointer, _ o: Int) -> UInt8 { p.load(fromByteOffset: o, as: UInt8.self) }
    @inline(__always) static func be16(_ p: UnsafeRawPointer, _ o: Int) -> UInt16 {
        UInt16(bigEndian: p.loadUnaligned(fromByteOffset: o, as: UInt16.self))
    }
    @inline(__always) static func be24(_ p: UnsafeRawPointer, _ o: Int) -> Int {
        Int(u8(p, o)) << 16 | Int(u8(p, o + 1)) << 8 | Int(u8(p, o + 2))
    }
    @inline(__always) static func be32(_ p: UnsafeRawPointer, _ o: Int) -> UInt32 {
        UInt32(bigEndian: p.loadUnaligned(fromByteOffset: o, as: UInt32.self))
    }
    @inline(__always) static func be64(_ p: UnsafeRawPointer, _ o: Int) -> UInt64 {
        UInt64(bigEndian: p.loadUnaligned(fromByteOffset: o, as: UInt64.self))
    }
    @inline(__always) static func put8(_ p: UnsafeMutableRawPointer, _ o: Int, _ v: UInt8) {
        p.storeBytes(of: v, toByteOffset: o, as: UInt8.self)
    }
    @inline(__always) static func put16(_ p: UnsafeMutableRawPointer, _ o: Int, _ v: UInt16) {
        p.storeBytes(of: v.bigEndian, toByteOffset: o, as: UInt16.self)
    }
    @inline(__always) static func put24(_ p: UnsafeMutableRawPointer, _ o: Int, _ v: Int) {
        put8(p, o, UInt8(truncatingIfNeeded: v >> 16))
        put8(p, o + 1, UInt8(truncatingIfNeeded: v >> 8))
        put8(p, o + 2, UInt8(truncatingIfNeeded: v))
    }
    @inline(__always) static func put32(_ p: UnsafeMutableRawPointer, _ o: Int, _ v: UInt32) {
        p.storeBytes(of: v.bigEndian, toByteOffset: o, as: UInt32.self)
    }
    @inline(__always) static func put64(_ p: UnsafeMutableRawPointer, _ o: Int, _ v: UInt64) {
        p.storeBytes(of: v.bigEndian, toByteOffset: o, as: UInt64.self)
    }
    @inline(__always) static func zero(_ h: UnsafeMutableRawPointer) {
        h.initializeMemory(as: UInt64.self, repeating: 0, count: 6)
    }
    /// Data segments are padded to a multiple of 4 bytes (RFC 7143 §11.1).
    @inline(__always) static func padded(_ n: Int) -> Int { (n &+ 3) & ~3 }

    /// Sequence numbers compare in serial-number arithmetic (RFC 1982, RFC 7143 §4.2.2.1): a >= b.
    @inline(__always) static func serialAtLeast(_ a: UInt32, _ b: UInt32) -> Bool { Int32(bitPattern: a &- b) >= 0 }

    /// SCSI Command (§11.3). `final` is false only when unsolicited Data-Out PDUs follow (InitialR2T=No).
    @inline(__always)
    static func scsiCommand(_ h: UnsafeMutableRawPointer, read: Bool, write: Bool, final: Bool, lunField: UInt64,
                            itt: UInt32, expectedBytes: UInt32, cmdSN: UInt32, expStatSN: UInt32,
                            immediateBytes: Int) {
        zero(h)
        put8(h, 0, opSCSICommand)
        // Task attribute 1 = SIMPLE.
        put8(h, 1, (final ? 0x80 : 0) | (read ? 0x40 : 0) | (write ? 0x20 : 0) | 0x01)
        put24(h, 5, immediateBytes)
        put64(h, 8, lunField)
        put32(h, 16, itt)
        put32(h, 20, expectedBytes)
        put32(h, 24, cmdSN)
        put32(h, 28, expStatSN)
    }

    /// READ(16) / WRITE(16) CDB at BHS offset 32.
    @inline(__always)
    static func rw16CDB(_ h: UnsafeMutableRawPointer, write: Bool, lba: UInt64, blocks: UInt32) {
        put8(h, 32, write ? scsiWrite16 : scsiRead16)
        put64(h, 34, lba)
        put32(h, 42, blocks)
    }

    /// SCSI Data-Out (§11.7). TTT is 0xFFFFFFFF for unsolicited data.
    @inline(__always)
    static func dataOut(_ h: UnsafeMutableRawPointer, final: Bool, lunField: UInt64, itt: UInt32, ttt: UInt32,
                        expStatSN: UInt32, dataSN: UInt32, bufferOffset: UInt32, length: Int) {
        zero(h)
        put8(h, 0, opDataOut)
        put8(h, 1, final ? 0x80 : 0)
        put24(h, 5, length)
        put64(h, 8, lunField)
        put32(h, 16, itt)
        put32(h, 20, ttt)
        put32(h, 28, expStatSN)
        put32(h, 36, dataSN)
        put32(h, 40, bufferOffset)
    }

    /// NOP-Out (§11.18) answering a target's NOP-In ping: immediate, ITT reserved, TTT and LUN echoed.
    @inline(__always)
    static func nopOutReply(_ h: UnsafeMutableRawPointer, lunField: UInt64, ttt: UInt32, cmdSN: UInt32,
                            expStatSN: UInt32, length: Int) {
        zero(h)
        put8(h, 0, 0x40 | opNopOut)
        put8(h, 1, 0x80)
        put24(h, 5, length)
        put64(h, 8, lunField)
        put32(h, 16, reservedTag)
        put32(h, 20, ttt)
        put32(h, 24, cmdSN)
        put32(h, 28, expStatSN)
    }

    /// Login Request (§11.12). ISID in bytes 8..13, TSIH 0 for a new session.
    static func loginRequest(_ h: UnsafeMutableRawPointer, transit: Bool, csg: UInt8, nsg: UInt8, isid: UInt64,
                             itt: UInt32, cmdSN: UInt32, expStatSN: UInt32, length: Int) {
        zero(h)
        put8(h, 0, 0x40 | opLoginRequest)
        put8(h, 1, (transit ? 0x80 : 0) | (csg & 3) << 2 | (transit ? nsg & 3 : 0))
        put24(h, 5, length)
        put16(h, 8, UInt16(truncatingIfNeeded: isid >> 32))
        put32(h, 10, UInt32(truncatingIfNeeded: isid))
        put32(h, 16, itt)
        put32(h, 24, cmdSN)
        put32(h, 28, expStatSN)
    }

    /// Logout Request (§11.14), reason 0: close the session.
    static func logoutRequest(_ h: UnsafeMutableRawPointer, itt: UInt32, cmdSN: UInt32, expStatSN: UInt32) {
        zero(h)
        put8(h, 0, 0x40 | opLogoutRequest)
        put8(h, 1, 0x80)
        put32(h, 16, itt)
        put32(h, 24, cmdSN)
        put32(h, 28, expStatSN)
    }

    /// The header digest of a 48-byte BHS (no AHS is ever sent), stored little-endian after it (RFC 7143 §11.1).
    @inline(__always)
    static func storeHeaderDigest(_ h: UnsafeMutableRawPointer) {
        let d = CRC32C.checksum(UnsafeRawPointer(h), count: bhsBytes)
        h.storeBytes(of: d.littleEndian, toByteOffset: bhsBytes, as: UInt32.self)
    }
}
