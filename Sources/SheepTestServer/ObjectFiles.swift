// --data-dir layout: one sparse file per object under objects/ (named by the 16-hex-digit oid), and the VDI
// table (cluster settings, in-use and deleted VIDs) in a small text file written atomically. A restart maps
// the files back and rebuilds the VDI states from the inodes, as sheep does at start-up.

#if canImport(Glibc)
import Glibc
#endif
import Floor
import SheepProtocol

struct VDITableFile: Equatable {
    var config: ClusterConfig
    var inUse: [UInt32]
    var deleted: [UInt32]

    func render() -> String {
        var s = "# ringtgt-sheep-testserver VDI table\n"
        s += "copies \(config.copies)\ncopy_policy \(config.copyPolicy)\nblock_size_shift \(config.blockSizeShift)\n"
        s += "use_lock \(config.useLock ? 1 : 0)\nepoch \(config.epoch)\n"
        for v in inUse { s += "inuse \(hex(v))\n" }
        for v in deleted { s += "deleted \(hex(v))\n" }
        return s
    }

    static func parse(_ text: String) -> VDITableFile? {
        var t = VDITableFile(config: ClusterConfig(), inUse: [], deleted: [])
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            let parts = line.split(separator: " ")
            guard parts.count == 2 else { return nil }
            let key = parts[0], value = String(parts[1])
            switch key {
            case "copies": guard let v = UInt8(value) else { return nil }; t.config.copies = v
            case "copy_policy": guard let v = UInt8(value) else { return nil }; t.config.copyPolicy = v
            case "block_size_shift": guard let v = UInt8(value) else { return nil }; t.config.blockSizeShift = v
            case "use_lock": t.config.useLock = value == "1"
            case "epoch": guard let v = UInt32(value) else { return nil }; t.config.epoch = v
            case "inuse": guard let v = UInt32(value, radix: 16) else { return nil }; t.inUse.append(v)
            case "deleted": guard let v = UInt32(value, radix: 16) else { return nil }; t.deleted.append(v)
            default: return nil
            }
        }
        return t
    }
}

final class ObjectFiles: @unchecked Sendable {
    let directory: String
    let objectsDirectory: String
    let tablePath: String
    private var tempCounter: UInt64 = 0
    private let counterLock = PosixLock()

    init(directory: String) throws {
        self.directory = directory
        objectsDirectory = directory + "/objects"
        tablePath = directory + "/vdis"
        for d in [directory, objectsDirectory] {
            if mkdir(d, 0o755) != 0 && errno != EEXIST { throw SysError("mkdir \(d)") }
        }
    }

    func path(for oid: UInt64) -> String {
        let h = String(oid, radix: 16)
        return objectsDirectory + "/" + String(repeating: "0", count: 16 - h.count) + h
    }

    /// A create's temp file (plain_store's tmp path), unique per attempt.
    func tempPath(for oid: UInt64) -> String {
        let n = counterLock.withLock { () -> UInt64 in tempCounter += 1; return tempCounter }
        return path(for: oid) + ".tmp\(n)"
    }

    /// Maps every object file back; leftover temp files (a create cut short by a kill) are removed.
    func load() throws -> (objects: [UInt64: StoredObject], table: VDITableFile?) {
        var objects: [UInt64: StoredObject] = [:]
        guard let entries = directoryEntries(objectsDirectory) else { throw SysError("opendir \(objectsDirectory)") }
        for (name, _) in entries {
            let full = objectsDirectory + "/" + name
            if name.contains(".tmp") { unlink(full); continue }
            guard name.count == 16, let oid = UInt64(name, radix: 16) else { continue }
            objects[oid] = try StoredObject.openFile(path: full)
        }
        var table: VDITableFile?
        if let bytes = readWholeFile(tablePath) {
            guard let t = VDITableFile.parse(String(decoding: bytes, as: UTF8.self)) else {
                throw SysError("corrupt VDI table \(tablePath)", EINVAL)
            }
            table = t
        }
        return (objects, table)
    }

    func saveTable(_ t: VDITableFile) throws {
        try writeFileAtomically(tablePath, t.render())
    }
}
