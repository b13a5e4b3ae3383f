// Listing a directory with readdir(3).

#if canImport(Glibc)
import Glibc
#endif

/// The entries of the directory at `path`, without "." and "..", in readdir order: each name and its d_type
/// (`DT_DIR`, `DT_REG`, ...). Nil when it cannot be opened.
///
/// A `dirent` record is only as long as its name (`d_reclen`), so the name is read through a pointer up to its
/// NUL. Copying `d_name`, a 256-byte field, out of the record reads past the end of a short record at the end
/// of readdir's buffer (AddressSanitizer found it in the corpus replay).
package func directoryEntries(_ path: String) -> [(name: String, type: UInt8)]? {
    guard let dir = opendir(path) else { return nil }
    defer { closedir(dir) }
    let nameOffset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
    var out: [(name: String, type: UInt8)] = []
    while let entry = readdir(dir) {
        let name = String(cString: UnsafeRawPointer(entry).advanced(by: nameOffset).assumingMemoryBound(to: CChar.self))
        if name == "." || name == ".." { continue }
        out.append((name, entry.pointee.d_type))
    }
    return out
}
