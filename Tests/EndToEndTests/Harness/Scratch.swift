// A scratch directory per test, and the files tests put in it (LUN images, random data).

import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A fresh directory under /tmp. Short on purpose: the daemon's unix control socket lives in it and
/// sun_path holds 108 bytes. Removed by `remove()` unless RINGTGT_E2E_KEEP=1.
final class Scratch {
    let url: URL

    init() throws {
        var template = Array("/tmp/rtgt-e2e.XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        guard let made else { throw E2EError("mkdtemp failed: errno \(errno)") }
        url = URL(fileURLWithPath: String(cString: made))
    }

    func path(_ name: String) -> URL { url.appendingPathComponent(name) }

    func remove() {
        if ProcessInfo.processInfo.environment["RINGTGT_E2E_KEEP"] == "1" { return }
        try? FileManager.default.removeItem(at: url)
    }

    /// A sparse file of exactly `bytes` bytes (reads as zeros), the usual file LUN.
    @discardableResult
    func makeSparseFile(_ name: String, bytes: Int64) throws -> URL {
        let u = path(name)
        guard FileManager.default.createFile(atPath: u.path, contents: nil) else {
            throw E2EError("cannot create \(u.path)")
        }
        let h = try FileHandle(forWritingTo: u)
        defer { try? h.close() }
        try h.truncate(atOffset: UInt64(bytes))
        return u
    }

    /// A file of `bytes` pseudo-random bytes from a seeded generator, so a failure can be reproduced.
    @discardableResult
    func makeRandomFile(_ name: String, bytes: Int, seed: UInt64) throws -> URL {
        let u = path(name)
        var gen = SeededRandom(seed: seed)
        let chunkBytes = 1 << 20
        guard FileManager.default.createFile(atPath: u.path, contents: nil) else {
            throw E2EError("cannot create \(u.path)")
        }
        let h = try FileHandle(forWritingTo: u)
        defer { try? h.close() }
        var remaining = bytes
        var chunk = [UInt8](repeating: 0, count: chunkBytes)
        while remaining > 0 {
            let n = min(chunkBytes, remaining)
            chunk.withUnsafeMutableBytes { raw in
                let words = raw.bindMemory(to: UInt64.self)
                for i in 0..<(n / 8) { words[i] = gen.next() }
            }
            // n is a multiple of 8 for every size the tests use; a tail would stay zero.
            try h.write(contentsOf: chunk[0..<n])
            remaining -= n
        }
        return u
    }
}

/// Runs `body` with a scratch directory that is removed afterwards, also when `body` throws.
func withScratch<R>(_ body: (Scratch) throws -> R) throws -> R {
    let s = try Scratch()
    defer { s.remove() }
    return try body(s)
}

/// Compares two files chunk by chunk. Returns nil when they are byte-identical, else a sentence that
/// names the first differing offset and a digest of each.
func firstDifference(_ a: URL, _ b: URL) throws -> String? {
    let ha = try FileHandle(forReadingFrom: a)
    let hb = try FileHandle(forReadingFrom: b)
    defer { try? ha.close(); try? hb.close() }
    let chunkBytes = 4 << 20
    var offset = 0
    while true {
        let ca = try ha.read(upToCount: chunkBytes) ?? Data()
        let cb = try hb.read(upToCount: chunkBytes) ?? Data()
        if ca.isEmpty && cb.isEmpty { return nil }
        if ca != cb {
            let n = min(ca.count, cb.count)
            var i = 0
            ca.withUnsafeBytes { (pa: UnsafeRawBufferPointer) in
                cb.withUnsafeBytes { (pb: UnsafeRawBufferPointer) in
                    while i < n && pa[i] == pb[i] { i += 1 }
                }
            }
            let sizes = "\(fileSize(a)) vs \(fileSize(b)) bytes"
            return "\(a.lastPathComponent) and \(b.lastPathComponent) differ first at byte \(offset + i) " +
                "(\(sizes); FNV-1a64 \(try digest(a)) vs \(try digest(b)))"
        }
        offset += ca.count
    }
}

func fileSize(_ u: URL) -> Int64 {
    ((try? FileManager.default.attributesOfItem(atPath: u.path)[.size]) as? NSNumber)?.int64Value ?? -1
}

/// Hex FNV-1a64 of a whole file; only used to label files in failure messages (slow in debug builds).
func digest(_ u: URL) throws -> String {
    let h = try FileHandle(forReadingFrom: u)
    defer { try? h.close() }
    var d = FNV1a64()
    while let c = try h.read(upToCount: 4 << 20), !c.isEmpty { d.add(c) }
    return String(d.value, radix: 16)
}

/// A 64-bit FNV-1a digest: enough to name file contents in a log line; equality is checked bytewise.
struct FNV1a64 {
    var value: UInt64 = 0xcbf2_9ce4_8422_2325
    mutating func add(_ d: Data) {
        d.withUnsafeBytes { p in
            for b in p { value = (value ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
        }
    }
}
