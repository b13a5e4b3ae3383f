// TEMPORARY: a minimal SCSITask so the transport can be exercised before the SCSI layer lands. Deleted at merge.
import Glibc

public struct SCSITask {
    var remaining = 0
    var pos = 0
    var offset: UInt64 = 0
    var isWrite = false
    var sense: (UInt8, UInt8, UInt8) = (0, 0, 0)
    var hasSense = false
    unowned(unsafe) var lun: LogicalUnit? = nil
    public init() {}
    public var senseLength: Int { hasSense ? 18 : 0 }
    public func copySense(to p: UnsafeMutableRawPointer) { writeFixedSense(p, key: sense.0, asc: sense.1, ascq: sense.2) }
    public static func logicalUnitReset(_ lun: LogicalUnit, by nexus: Nexus) {}
    public static func targetReset(_ target: TargetRuntime, by nexus: Nexus) {}
    public static func nexusLost(_ nexus: Nexus, target: TargetRuntime) {}

    mutating func fail(_ k: UInt8, _ a: UInt8, _ q: UInt8) -> SCSIAction {
        hasSense = true; sense = (k, a, q)
        return .complete(status: SCSIStatus.checkCondition, dataInLength: 0, residual: .none)
    }

    public mutating func start(cdb: UnsafeRawBufferPointer, expectedLength: UInt32, readBit: Bool, writeBit: Bool,
                               lunNumber: UInt64, lun: LogicalUnit?, target: TargetRuntime, nexus: Nexus,
                               buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        hasSense = false
        self.lun = lun
        let op = cdb[0]
        let b = buffer.baseAddress!
        func done(_ n: Int) -> SCSIAction {
            let len = min(n, Int(expectedLength))
            return .complete(status: 0, dataInLength: len, residual: n < Int(expectedLength) ? .underflow(UInt32(Int(expectedLength) - n)) : .none)
        }
        if op == 0xA0 { // REPORT LUNS
            memset(b, 0, 8 + 8 * target.luns.count)
            put32(b, 0, UInt32(8 * target.luns.count))
            for (i, l) in target.luns.enumerated() { put64(b, 8 + 8 * i, encodeLUN(l.number)) }
            return done(8 + 8 * target.luns.count)
        }
        guard let lun else {
            if op == 0x12 { memset(b, 0, 36); b.storeBytes(of: 0x7F, as: UInt8.self); return done(36) }
            return fail(5, 0x25, 0)
        }
        switch op {
        case 0x00: return done(0)
        case 0x12:
            memset(b, 0, 96)
            b.storeBytes(of: 5, toByteOffset: 2, as: UInt8.self)
            b.storeBytes(of: 2, toByteOffset: 3, as: UInt8.self)
            b.storeBytes(of: 91, toByteOffset: 4, as: UInt8.self)
            let v = Array((String((lun.vendor + "        ").prefix(8)) + String((lun.product + "                ").prefix(16)) + "0001").utf8)
            for (i, c) in v.enumerated() { b.storeBytes(of: c, toByteOffset: 8 + i, as: UInt8.self) }
            return done(96)
        case 0x25:
            put32(b, 0, UInt32(min(lun.blockCount - 1, 0xFFFF_FFFF))); put32(b, 4, UInt32(lun.blockSize)); return done(8)
        case 0x9E:
            memset(b, 0, 32); put64(b, 0, lun.blockCount - 1); put32(b, 8, UInt32(lun.blockSize)); return done(32)
        case 0x28, 0x88, 0x2A, 0x8A:
            let lba = op == 0x28 || op == 0x2A ? UInt64(be32(cdb.baseAddress!, 2)) : be64(cdb.baseAddress!, 2)
            let n = op == 0x28 || op == 0x2A ? Int(be16(cdb.baseAddress!, 7)) : Int(be32(cdb.baseAddress!, 10))
            if lba + UInt64(n) > lun.blockCount { return fail(5, 0x21, 0) }
            remaining = n * lun.blockSize; pos = 0; offset = lba * UInt64(lun.blockSize)
            isWrite = op == 0x2A || op == 0x8A
            if remaining == 0 { return done(0) }
            return next(buffer)
        case 0x35, 0x91: return .store(.flush(target: .own))
        default: return fail(5, 0x20, 0)
        }
    }
    mutating func next(_ buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        let n = min(remaining - pos, buffer.count)
        if isWrite { return .dataOut(offset: pos, length: n) }
        return .store(.read(target: .own, offset: offset + UInt64(pos), length: n, bufferOffset: 0))
    }
    public mutating func dataOutReceived(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        let n = min(remaining - pos, buffer.count)
        return .store(.write(target: .own, offset: offset + UInt64(pos), length: n, bufferOffset: 0, fua: false))
    }
    public mutating func storeCompleted(_ result: StoreResult, buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        guard case .ok(let n) = result else { return fail(3, 0x11, 0) }
        if remaining == 0 { return .complete(status: 0, dataInLength: 0, residual: .none) }
        pos += n
        if isWrite { return pos < remaining ? next(buffer) : .complete(status: 0, dataInLength: 0, residual: .none) }
        if pos < remaining { return .dataIn(length: n) }
        return .complete(status: 0, dataInLength: n, residual: .none)
    }
    public mutating func dataInSent(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction { next(buffer) }
}
