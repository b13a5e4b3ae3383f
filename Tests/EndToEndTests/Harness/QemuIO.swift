// qemu-io scripts for queue-depth tests, and what their output means.
//
// How qemu-io keeps many commands in flight: every `-c` command runs in order in one loop without
// waiting for I/O. `aio_write`/`aio_read` submit their request and return at once (their completion
// callback prints "wrote N/N bytes at offset X" or "read ..." later), so a run of N aio_* commands
// puts N requests into the block layer back to back. QEMU's iscsi driver (libiscsi) queues each as a
// SCSI command PDU; they reach the socket as soon as the event loop runs, which is when `aio_flush`
// drains all outstanding requests. libiscsi only holds a command back when it is outside the target's
// CmdSN window (MaxCmdSN), so the queue depth the target sees is min(N, its window). `strace` of
// `qemu-io -c 'aio_write ...' x32 -c aio_flush` against tgt shows all 32 SCSI WRITE PDUs sent before
// the first response is read.
//
// Errors never change qemu-io's exit status for aio_* commands; they are printed: "aio_write failed:",
// "readv failed:" (aio_read) and "Pattern verification failed at offset X, N bytes".

import Foundation

/// One region a session writes and verifies.
struct PatternRegion {
    let offset: Int64
    let length: Int
    let pattern: UInt8
}

enum QemuIOScript {
    /// `-c` arguments: every write queued, one flush, every read queued with pattern check, one flush.
    static func writeThenVerify(_ regions: [PatternRegion]) -> [String] {
        var args: [String] = []
        for r in regions { args += ["-c", "aio_write -P \(r.pattern) \(r.offset) \(r.length)"] }
        args += ["-c", "aio_flush"]
        args += verify(regions)
        return args
    }

    /// `-c` arguments that only read back and check.
    static func verify(_ regions: [PatternRegion]) -> [String] {
        var args: [String] = []
        for r in regions { args += ["-c", "aio_read -P \(r.pattern) \(r.offset) \(r.length)"] }
        args += ["-c", "aio_flush"]
        return args
    }
}

/// What a qemu-io run reported.
struct QemuIOReport {
    /// Offsets of completed writes and reads ("wrote 4096/4096 bytes at offset 0").
    var wroteOffsets: [Int64] = []
    var readOffsets: [Int64] = []
    /// Any line that reports an error or a pattern mismatch.
    var errorLines: [String] = []

    init(_ text: String) {
        for raw in text.split(whereSeparator: \.isNewline) {
            let line = String(raw)
            if line.lowercased().contains("failed") || line.hasPrefix("qemu-io:") {
                errorLines.append(line)
            } else if line.hasPrefix("wrote "), let off = QemuIOReport.offset(line) {
                wroteOffsets.append(off)
            } else if line.hasPrefix("read "), let off = QemuIOReport.offset(line) {
                readOffsets.append(off)
            }
        }
    }

    private static func offset(_ line: String) -> Int64? {
        guard let r = line.range(of: " at offset ") else { return nil }
        return Int64(line[r.upperBound...].prefix { $0.isNumber })
    }
}

/// Checks a LUN's backing file directly: every region holds its pattern, everything else is zero.
/// Returns the problems found (empty when the file is exactly as expected).
func verifyBackingFile(_ file: URL, regions: [PatternRegion], fileBytes: Int64) throws -> [String] {
    let data = try Data(contentsOf: file, options: .alwaysMapped)
    var problems: [String] = []
    if Int64(data.count) != fileBytes { problems.append("backing file is \(data.count) bytes, not \(fileBytes)") }
    var covered: [(Int, Int)] = []
    for r in regions {
        let start = Int(r.offset), end = start + r.length
        guard end <= data.count else { problems.append("region at \(start) beyond end of file"); continue }
        if data[start..<end] != Data(repeating: r.pattern, count: r.length) {
            problems.append("region at offset \(start) (\(r.length) bytes) does not hold pattern \(r.pattern)")
        }
        covered.append((start, end))
    }
    covered.sort { $0.0 < $1.0 }
    var cursor = 0
    let zeros = Data(repeating: 0, count: 1 << 20)
    func checkZero(_ from: Int, _ to: Int) {
        var at = from
        while at < to {
            let n = min(zeros.count, to - at)
            if data[at..<(at + n)] != zeros[0..<n] {
                problems.append("bytes written outside every region, within [\(at), \(at + n))")
                return
            }
            at += n
        }
    }
    for (s, e) in covered {
        if s > cursor { checkZero(cursor, s) }
        cursor = max(cursor, e)
    }
    if cursor < data.count { checkZero(cursor, data.count) }
    return problems
}
