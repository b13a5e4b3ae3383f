// One sheep object: a zero-filled mapping of its full size. In memory it is anonymous and lazily committed
// (a 4 MiB object that saw one 4 KiB write costs one page). With --data-dir it is a sparse file mapped
// shared, so every write is in the page cache the moment it returns and survives the server being killed.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

final class StoredObject: @unchecked Sendable {
    let base: UnsafeMutableRawPointer
    let size: Int
    /// The file behind the mapping (data-dir mode), nil in memory.
    private(set) var path: String?

    private init(base: UnsafeMutableRawPointer, size: Int, path: String?) {
        self.base = base; self.size = size; self.path = path
    }

    deinit {
        munmap(base, size)
    }

    /// A fresh zero-filled object in memory.
    static func anonymous(size: Int) throws -> StoredObject {
        let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let p, p != MAP_FAILED else { throw SysError("mmap \(size) bytes") }
        return StoredObject(base: p, size: size, path: nil)
    }

    /// A fresh zero-filled (sparse) object file at `path`, which must not exist yet.
    static func createFile(path: String, size: Int) throws -> StoredObject {
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        if fd < 0 { throw SysError("create \(path)") }
        defer { close(fd) }
        if ftruncate(fd, off_t(size)) != 0 {
            unlink(path)
            throw SysError("ftruncate \(path)")
        }
        let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let p, p != MAP_FAILED else {
            unlink(path)
            throw SysError("mmap \(path)")
        }
        return StoredObject(base: p, size: size, path: path)
    }

    /// An existing object file (restart with --data-dir).
    static func openFile(path: String) throws -> StoredObject {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        if fd < 0 { throw SysError("open \(path)") }
        defer { close(fd) }
        var st = stat()
        if fstat(fd, &st) != 0 { throw SysError("stat \(path)") }
        let size = Int(st.st_size)
        guard size > 0 else { throw SysError("empty object file \(path)", EINVAL) }
        let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let p, p != MAP_FAILED else { throw SysError("mmap \(path)") }
        return StoredObject(base: p, size: size, path: path)
    }

    /// Makes a temp file the object's final file (create's rename).
    func rename(to final: String) throws {
        guard let path else { return }
        if Glibc.rename(path, final) != 0 { throw SysError("rename \(path)") }
        self.path = final
    }

    /// Deletes the backing file; the mapping stays valid for readers that still hold this object.
    func unlinkFile() {
        if let path { unlink(path) }
    }

    /// Copies `other`'s bytes into this object page by page, skipping all-zero pages so that sparse objects
    /// (an inode index, a barely written data object) stay sparse.
    func copySparse(from other: StoredObject, range: Range<Int>? = nil) {
        let pageBytes = 4096
        let n = min(size, other.size)
        var off = range?.lowerBound ?? 0
        let end = min(range?.upperBound ?? n, n)
        while off < end {
            let len = min(pageBytes, end - off)
            if !isAllZero(other.base + off, len) {
                (base + off).copyMemory(from: other.base + off, byteCount: len)
            }
            off += len
        }
    }
}

/// Whether `count` bytes at `p` are all zero, a word at a time.
func isAllZero(_ p: UnsafeRawPointer, _ count: Int) -> Bool {
    var i = 0
    while i + 8 <= count {
        if p.loadUnaligned(fromByteOffset: i, as: UInt64.self) != 0 { return false }
        i += 8
    }
    while i < count {
        if p.load(fromByteOffset: i, as: UInt8.self) != 0 { return false }
        i += 1
    }
    return true
}
