import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import SCSITestSupport

/// Several sessions on different threads share one LU while another changes reservations and mode
/// parameters: every command completes with a status its situation allows, and LUNState stays coherent.
@Suite struct SCSIConcurrencyTests {
    /// Drive one command against a store that reads zeros and accepts writes.
    static func run(_ cdb: [UInt8], lun: LogicalUnit, target: TargetRuntime, nexus: Nexus, edtl: Int, read: Bool,
                    write: Bool, buffer: UnsafeMutableRawBufferPointer) -> (status: UInt8, senseKey: UInt8) {
        var task = SCSITask()
        var action = cdb.withUnsafeBytes {
            task.start(cdb: $0, expectedLength: UInt32(edtl), readBit: read, writeBit: write, lunNumber: lun.number,
                       lun: lun, session: SessionBinding(target: target, nexus: nexus), buffer: buffer)
        }
        for _ in 0 ..< 10_000 {
            switch action {
            case .dataOut: action = task.dataOutReceived(buffer: buffer)
            case .store(let op):
                switch op {
                case .read(_, _, let length, let bo): buffer.zero(bo, length); action = task.storeCompleted(.ok(length), buffer: buffer)
                case .write(_, _, let length, _, _): action = task.storeCompleted(.ok(length), buffer: buffer)
                default: action = task.storeCompleted(.ok(0), buffer: buffer)
                }
            case .dataIn: action = task.dataInSent(buffer: buffer)
            case .startJob: return (0xFF, 0)     // SANITIZE: not offered on this LU, which cannot deallocate
            case .complete(let status, _, _):
                var sense = [UInt8](repeating: 0, count: 18)
                if task.senseLength > 0 { sense.withUnsafeMutableBytes { task.copySense(to: $0.baseAddress!) } }
                return (status, sense[2] & 0x0F)
            }
        }
        return (0xFF, 0)
    }

    @Test func sessionsOnManyThreadsWhileReservationsChange() async {
        var naa = [UInt8](repeating: 0, count: 16); naa[0] = 0x60
        let lun = LogicalUnit(number: 0, blockSize: 512, blockCount: 4096, capabilities: StoreCapabilities(),
                              serial: "c", naa: naa, backing: .null, bstype: "null", path: "")
        let target = TargetRuntime(tid: 1, name: "iqn.2026-01.test:c", luns: [lun], acl: [.all], params: [:], lunGeneration: 1)
        let results = await withTaskGroup(of: Int.self) { group -> [Int] in
            for worker in 0 ..< 4 {
                group.addTask {
                    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 4096)
                    defer { buffer.deallocate() }
                    let nexus = Nexus(initiatorName: "iqn.2026-01.test:w\(worker)", isid: UInt64(worker + 1),
                                      targetName: target.name, portalGroupTag: 1, relativeTargetPortID: 1)
                    var unexpected = 0
                    for i in 0 ..< 3_000 {
                        let write = i % 2 == 0
                        let cdb: [UInt8] = [write ? 0x2A : 0x28, 0, 0, 0, UInt8(i % 16), 0, 0, 0, 8, 0]
                        let r = Self.run(cdb, lun: lun, target: target, nexus: nexus, edtl: 4096, read: !write, write: write, buffer: buffer)
                        let ok = r.status == SCSIStatus.good || r.status == SCSIStatus.reservationConflict
                            || (r.status == SCSIStatus.checkCondition && r.senseKey == SenseKey.unitAttention)
                        if !ok { unexpected += 1 }
                    }
                    return unexpected
                }
            }
            group.addTask {
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 4096)
                defer { buffer.deallocate() }
                let owner = Nexus(initiatorName: "iqn.2026-01.test:owner", isid: 9, targetName: target.name,
                                  portalGroupTag: 1, relativeTargetPortID: 1)
                var unexpected = 0
                for _ in 0 ..< 300 {
                    for cdb: [UInt8] in [[0x16, 0, 0, 0, 0, 0], [0x17, 0, 0, 0, 0, 0]] {
                        let r = Self.run(cdb, lun: lun, target: target, nexus: owner, edtl: 0, read: false, write: false, buffer: buffer)
                        if r.status == 0xFF { unexpected += 1 }
                    }
                    SCSITask.logicalUnitReset(lun, by: owner)
                }
                return unexpected
            }
            var all: [Int] = []
            for await r in group { all.append(r) }
            return all
        }
        #expect(results.count == 5 && results.allSatisfy { $0 == 0 })
        // Afterwards a fresh nexus sees a quiet LU: power-on UA once, then GOOD.
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 4096)
        defer { buffer.deallocate() }
        let late = Nexus(initiatorName: "iqn.2026-01.test:late", isid: 1, targetName: target.name, portalGroupTag: 1, relativeTargetPortID: 1)
        let tur: [UInt8] = [0, 0, 0, 0, 0, 0]
        #expect(Self.run(tur, lun: lun, target: target, nexus: late, edtl: 0, read: false, write: false, buffer: buffer).senseKey == SenseKey.unitAttention)
        #expect(Self.run(tur, lun: lun, target: target, nexus: late, edtl: 0, read: false, write: false, buffer: buffer).status == SCSIStatus.good)
    }
}
