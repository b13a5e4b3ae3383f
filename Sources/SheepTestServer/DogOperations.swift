// What `dog vdi …` does for the subset the tests use, step by step as dog/vdi.c does it, over the public
// protocol only. Works against this server and against a real sheep.

import SheepProtocol

/// dog's `-s` argument: all digits is a snapshot id, anything else a tag.
func parseDogSnapshot(_ s: String?) -> SheepBackingSpec.Snapshot {
    guard let s, !s.isEmpty else { return .working }
    if s.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let n = UInt32(s), n != 0 { return .id(n) }
    return .tag(s)
}

/// dog's `option_parse_size`: a number (fractions allowed) with an optional B, K, M, G, T or P suffix
/// (powers of 1024).
func parseDogSize(_ s: String) -> UInt64? {
    var digits = Substring(s)
    var multiplier: Double = 1
    if let last = digits.last, !last.isNumber && last != "." {
        switch last {
        case "b", "B": multiplier = 1
        case "k", "K": multiplier = 1024
        case "m", "M": multiplier = 1024 * 1024
        case "g", "G": multiplier = 1024 * 1024 * 1024
        case "t", "T": multiplier = 1024 * 1024 * 1024 * 1024
        case "p", "P": multiplier = 1024 * 1024 * 1024 * 1024 * 1024
        default: return nil
        }
        digits.removeLast()
    }
    guard let v = Double(digits), v >= 0, v.isFinite else { return nil }
    let bytes = v * multiplier
    guard bytes < 18_446_744_073_709_551_616.0 else { return nil }
    return UInt64(bytes)
}

struct VDIListEntry: Equatable {
    var isSnapshot: Bool
    var isClone: Bool
    var name: String
    /// 0 for the working VDI, as dog prints it.
    var snapID: UInt32
    var size: UInt64
    var usedBytes: UInt64
    var sharedBytes: UInt64
    var createSeconds: UInt64
    var vid: UInt32
    var copies: UInt8
    var copyPolicy: UInt8
    var tag: String
    var blockSizeShift: UInt8

    /// `dog vdi list -r`.
    var rawLine: String {
        let kind = isSnapshot ? "s" : (isClone ? "c" : "=")
        var escaped = ""
        for ch in name {
            if ch == " " || ch == "\t" || ch == "\\" { escaped.append("\\") }
            escaped.append(ch)
        }
        let redundancy = copyPolicy == 0 ? "\(copies)" : "\((copyPolicy >> 4) * 2):\(copyPolicy & 0x0F)"
        return "\(kind) \(escaped) \(snapID) \(size) \(usedBytes) \(sharedBytes) \(createSeconds) \(hex(vid)) \(redundancy) \(tag) \(blockSizeShift)"
    }
}

struct DogOperations {
    let client: SheepClient

    /// NR_BATCHED_RECLAMATION_DEFAULT: index slots cleared per inode write when deleting.
    static let slotsPerReclaimBatch = 128

    @discardableResult
    func create(name: String, size: UInt64, copies: UInt8 = 0, blockSizeShift: UInt8 = 0,
                hyperVolume: Bool = false) throws -> UInt32 {
        let r = try client.newVDI(name: name, size: size, copies: copies, storePolicy: hyperVolume ? 1 : 0,
                                  blockSizeShift: blockSizeShift)
        guard r.result == .success else { throw SheepClientError.failed(r.result, "Failed to create VDI \(name)") }
        return r.header.vdiID
    }

    private func vid(_ name: String, _ snap: SheepBackingSpec.Snapshot) throws -> UInt32 {
        switch snap {
        case .working: return try client.findVDI(name: name)
        case .tag(let t): return try client.findVDI(name: name, tag: t)
        case .id(let n): return try client.findVDI(name: name, snapID: n)
        }
    }

    private func inode(_ vid: UInt32, withIndex: Bool) throws -> (SheepInodeHeader, [UInt8]) {
        let r = try client.readInode(vid: vid, withIndex: withIndex)
        guard r.result == .success, let h = SheepInodeHeader(bytes: r.data) else {
            throw SheepClientError.failed(r.result, "Failed to read inode of VDI \(hex(vid))")
        }
        return (h, r.data)
    }

    private func index(_ vid: UInt32) throws -> DogIndex {
        let (h, image) = try inode(vid, withIndex: true)
        return DogIndex(client: client, vid: vid, header: h, image: image)
    }

    /// `dog vdi object map [-i INDEX] [-s SNAP] NAME`: (index, owning VID) of every allocated object, or of one.
    func objectMap(name: String, snapshot: SheepBackingSpec.Snapshot = .working, index only: UInt32?) throws
        -> [(UInt32, UInt32)]
    {
        let index = try self.index(try vid(name, snapshot))
        if let only { return [(only, index.owner(only))] }
        guard let objSize = index.header.objectSizeBytes else { return [] }
        var out: [(UInt32, UInt32)] = []
        index.forEachAllocated(count: dataObjectCount(index.header.vdiSize, objSize)) { out.append(($0, $1)) }
        return out
    }

    private static func slot(_ image: [UInt8], _ idx: UInt32) -> UInt32 {
        image.withUnsafeBytes { SheepInodeLayout.loadSlot($0.baseAddress!, idx) }
    }

    /// `dog vdi snapshot -s TAG NAME`: write the tag into the working inode, then NEW_VDI with snapid 1.
    /// Returns (new working VID, VID that became the snapshot).
    @discardableResult
    func snapshot(name: String, tag: String) throws -> (working: UInt32, snapshot: UInt32) {
        if !tag.isEmpty {
            let r = try client.lookup(.getVDIInfo, name: name, tag: tag)
            switch r.result {
            case .noTag: break
            case .success:
                throw SheepClientError.failed(.vdiExist, "Failed to create snapshot for \(name), tag \(tag) exists")
            default: throw SheepClientError.failed(r.result, "Failed to create snapshot for \(name)")
            }
        }
        let cur = try client.findVDI(name: name)
        let (h, _) = try inode(cur, withIndex: false)
        guard h.storePolicy == 0 else {
            throw SheepClientError.failed(.invalidParms, "creating a snapshot of hypervolume is not supported")
        }
        try SheepVDIName.validate(tag, what: "snapshot tag", allowEmpty: true)
        var tagBuffer = [UInt8](repeating: 0, count: SheepWire.vdiTagBufferBytes)
        for (i, b) in tag.utf8.enumerated() { tagBuffer[i] = b }
        let w = try client.writeObject(SheepOID.inode(vid: cur), offset: UInt32(SheepInodeLayout.tagOffset),
                                       data: tagBuffer)
        guard w.result == .success else { throw SheepClientError.failed(w.result, "Failed to write the snapshot tag") }
        let r = try client.newVDI(name: name, size: h.vdiSize, baseVID: cur, snapshot: true, copies: h.nrCopies,
                                  copyPolicy: h.copyPolicy, storePolicy: h.storePolicy,
                                  blockSizeShift: h.blockSizeShift)
        guard r.result == .success else { throw SheepClientError.failed(r.result, "Failed to create snapshot for \(name)") }
        return (r.header.vdiID, cur)
    }

    /// `dog vdi clone -s SNAP SRC DST`.
    @discardableResult
    func clone(source: String, snapshot: SheepBackingSpec.Snapshot, destination: String) throws -> UInt32 {
        guard snapshot != .working else {
            throw SheepClientError.failed(.invalidParms, "Only snapshot VDIs can be cloned; specify -s")
        }
        let base = try vid(source, snapshot)
        let (h, _) = try inode(base, withIndex: false)
        let r = try client.newVDI(name: destination, size: h.vdiSize, baseVID: base, copies: h.nrCopies,
                                  copyPolicy: h.copyPolicy, storePolicy: h.storePolicy, blockSizeShift: h.blockSizeShift)
        guard r.result == .success else { throw SheepClientError.failed(r.result, "Failed to create VDI \(destination)") }
        return r.header.vdiID
    }

    /// `dog vdi delete [-s SNAP] NAME`: clear the index in batches (the sheep drops the references), then
    /// DEL_VDI.
    func delete(name: String, snapshot: SheepBackingSpec.Snapshot = .working) throws {
        let v = try vid(name, snapshot)
        let (h, image) = try inode(v, withIndex: true)
        if h.storePolicy == 0, let objSize = h.objectSizeBytes {
            let count = Int(min(UInt64(SheepInodeLayout.dataIndexSlots), dataObjectCount(h.vdiSize, objSize)))
            var i = 0
            while i < count {
                while i < count && Self.slot(image, UInt32(i)) == 0 { i += 1 }
                let start = i
                var filled = 0
                while i < count && filled < Self.slotsPerReclaimBatch {
                    if Self.slot(image, UInt32(i)) != 0 { filled += 1 }
                    i += 1
                }
                if filled == 0 { break }
                let zeros = [UInt8](repeating: 0, count: (i - start) * SheepInodeLayout.slotSizeBytes)
                let w = try client.writeObject(SheepOID.inode(vid: v), offset: SheepInodeLayout.slotOffset(UInt32(start)),
                                               data: zeros)
                guard w.result == .success else {
                    throw SheepClientError.failed(w.result, "failed to update inode for discarding objects")
                }
            }
        }
        var tag = "", snapID: UInt32 = 0
        switch snapshot {
        case .working: break
        case .tag(let t): tag = t
        case .id(let n): snapID = n
        }
        let r = try client.lookup(.delVDI, name: name, tag: tag, snapID: snapID)
        guard r.result == .success else { throw SheepClientError.failed(r.result, "Failed to delete \(name)") }
    }

    /// `dog vdi list`: every in-use VID whose inode has a name.
    func list() throws -> [VDIListEntry] {
        let bitmap = try client.readVDIBitmap()
        var out: [VDIListEntry] = []
        for (byteIndex, byte) in bitmap.enumerated() where byte != 0 {
            for bit in 0..<8 where byte & (1 << bit) != 0 {
                let vid = UInt32(byteIndex * 8 + bit)
                let r = try client.readInode(vid: vid, withIndex: true)
                guard r.result == .success, let h = SheepInodeHeader(bytes: r.data), !h.isDeleted else { continue }
                var mine: UInt64 = 0, shared: UInt64 = 0
                if let objSize = h.objectSizeBytes {
                    // sd_inode_stat: the flat index or, for a hyper volume, a walk of the B-tree.
                    DogIndex(client: client, vid: vid, header: h, image: r.data)
                        .forEachAllocated(count: dataObjectCount(h.vdiSize, objSize)) { _, owner in
                            if owner == h.vdiID { mine += objSize } else { shared += objSize }
                        }
                }
                out.append(VDIListEntry(isSnapshot: h.isSnapshot, isClone: h.snapID == 1 && h.parentVDIID != 0,
                                        name: h.name, snapID: h.isSnapshot ? h.snapID : 0, size: h.vdiSize,
                                        usedBytes: mine, sharedBytes: shared, createSeconds: h.createTime >> 32,
                                        vid: vid, copies: h.nrCopies, copyPolicy: h.copyPolicy, tag: h.tag,
                                        blockSizeShift: h.blockSizeShift))
            }
        }
        return out
    }

    /// `dog vdi read [-s SNAP] NAME [OFFSET [LEN]]`: unallocated objects read as zeros. `sink` gets the bytes
    /// in order, one object piece at a time.
    func read(name: String, snapshot: SheepBackingSpec.Snapshot = .working, offset: UInt64, length: UInt64?,
              sink: ([UInt8]) throws -> Void) throws {
        let index = try self.index(try vid(name, snapshot))
        try Self.forEachPiece(index.header, name, "read", offset: offset, length: length) { idx, objOff, len, _ in
            let owner = index.owner(idx)
            if owner == 0 {
                try sink([UInt8](repeating: 0, count: Int(len)))
                return
            }
            let r = try client.readObject(SheepOID.data(vid: owner, index: idx), offset: UInt32(objOff),
                                          length: UInt32(len))
            guard r.result == .success else { throw SheepClientError.failed(r.result, "Failed to read VDI") }
            try sink(r.data)
        }
    }

    /// `dog vdi write NAME [OFFSET [LEN]]`: per object, create (copy-on-write when a parent owns it) or
    /// write, and after a create point the index slot at this VDI.
    func write(name: String, offset: UInt64, data: [UInt8]) throws {
        let v = try client.findVDI(name: name)
        let index = try self.index(v)
        try Self.forEachPiece(index.header, name, "write", offset: offset, length: UInt64(data.count)) { idx, objOff, len, done in
            let owner = index.owner(idx)
            let create = owner != v
            let cow = (owner != 0 && owner != v) ? SheepOID.data(vid: owner, index: idx) : 0
            let piece = Array(data[Int(done)..<Int(done + len)])
            let r = try client.writeObject(SheepOID.data(vid: v, index: idx), offset: UInt32(objOff), data: piece,
                                           create: create, cowOid: cow)
            guard r.result == .success else { throw SheepClientError.failed(r.result, "Failed to write VDI") }
            if create { try index.setOwner(idx, to: v) }
        }
    }

    /// Walks `length` bytes from `offset` (cut at the end of the VDI; nil: to the end) one object piece at a
    /// time: the object's index, the offset in it, the piece's length and the bytes before it.
    private static func forEachPiece(_ h: SheepInodeHeader, _ name: String, _ verb: String, offset: UInt64,
                                     length: UInt64?,
                                     _ body: (UInt32, UInt64, UInt64, UInt64) throws -> Void) throws {
        guard let objSize = h.objectSizeBytes else {
            throw SheepClientError.failed(.invalidParms, "VDI \(name) has an object size this tool cannot \(verb)")
        }
        guard offset <= h.vdiSize else {
            throw SheepClientError.failed(.invalidParms, "\(verb.prefix(1).uppercased() + verb.dropFirst()) offset is beyond the end of the VDI")
        }
        let total = min(length ?? (h.vdiSize - offset), h.vdiSize - offset)
        var done: UInt64 = 0
        while done < total {
            let pos = offset + done
            let idx = UInt32(pos / objSize), objOff = pos % objSize
            let len = min(total - done, objSize - objOff)
            try body(idx, objOff, len, done)
            done += len
        }
    }

    /// `dog vdi lock unlock [-s SNAP] NAME`, over the public RELEASE_VDI (normal, then shared).
    func unlock(name: String, snapshot: SheepBackingSpec.Snapshot = .working) throws {
        let v = try vid(name, snapshot)
        for type in [SheepLockType.normal, .shared] {
            let r = try client.release(vid: v, lockType: type)
            guard r.result == .success || r.result == .vdiNotLocked else {
                throw SheepClientError.failed(r.result, "Failed to unlock \(name)")
            }
        }
    }
}
