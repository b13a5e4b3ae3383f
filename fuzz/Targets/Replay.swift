// Corpus files for the plain (non-libFuzzer) build and the replay tests.

#if canImport(Glibc)
import Glibc
#endif
import Floor

public enum Replay {
    /// `path` itself when it is a file; the regular files directly in it, sorted, when it is a directory.
    public static func files(_ path: String) -> [String] {
        guard let entries = directoryEntries(path) else { return [path] }
        var names: [String] = []
        for (name, _) in entries where !name.hasPrefix(".") {
            var st = stat()
            if stat(path + "/" + name, &st) == 0 && st.st_mode & 0o170000 == 0o100000 { names.append(name) }
        }
        return names.sorted().map { path + "/" + $0 }
    }

    public static func read(_ path: String) -> [UInt8]? {
        guard let f = fopen(path, "rb") else { return nil }
        defer { fclose(f) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, f) }
            if n == 0 { break }
            out += chunk[0 ..< n]
        }
        return ferror(f) == 0 ? out : nil
    }
}
