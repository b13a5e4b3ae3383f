// What a simulation client does to its blocks and what it expects back: the plan of random commands, the
// shadow of every block (what an acknowledged write put there), and the final read-back. Shared by the iSCSI
// and NBD clients, which only carry the commands over their protocol.

import DeterministicRandom
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor

enum SimOp: Equatable { case read, write, flush }

struct SimCommand {
    var op: SimOp
    /// First block, absolute on the LUN or export.
    var lba: UInt64
    var blocks: Int
    /// The write's data pattern (SimPattern); 0 for reads and flushes.
    var seed: UInt64
    /// A chunk of the final read-back rather than a planned command.
    var isReadBack: Bool
}

enum SimOutcome {
    case good
    /// The target answered, and not with success: an invariant violation (recorded by the workload).
    case failed(String)
    /// The connection died with the command unanswered.
    case lost
}

/// A block's content as a function of (seed, LBA), so the shadow holds 8 bytes per block whatever its size.
/// The LBA is mixed in so that data landing at the wrong block is caught, not only stale data.
enum SimPattern {
    /// What a block nobody wrote holds: the driver creates zeroed stores.
    static let zeros: UInt64 = 0
    /// A block whose content is not known: a write to it was lost with its connection, or failed.
    static let unknown: UInt64 = .max

    @inline(__always)
    static func word(_ seed: UInt64, lba: UInt64, index: Int) -> UInt64 {
        if seed == zeros { return 0 }
        return SeededRandom.mix(seed &+ lba &* 0xD6E8_FEB8_6659_FD93 &+ UInt64(index) &* 0xA076_1D64_78BD_642F)
    }
}

final class SimWorkload {
    /// Random ranges tried per turn before leaving the slot empty until a command in flight ends.
    static let pickAttempts = 4
    static let flushPerMille = 50
    /// Failure messages kept: past this only the count grows, so a broken run stays bounded in memory.
    static let maxFailuresKept = 32

    let name: String
    let range: Range<UInt64>
    let blockSize: Int
    private(set) var maxBlocksPerCommand: Int
    let commands: Int
    let verify: Bool

    /// Per block: SimPattern.zeros, SimPattern.unknown, or the seed of the last acknowledged write.
    private var shadow: [UInt64]
    /// Per block: writes and reads in flight. A write is issued only to blocks nothing is in flight to and a
    /// read only to blocks no write is in flight to, so every read has exactly one right answer.
    private var writers: [UInt8]
    private var readers: [UInt16]
    private var readBackNext: UInt64
    /// Read-back chunks lost with a connection, to be read again.
    private var readBackAgain: [SimCommand] = []
    private var readBackBlocksDone: UInt64 = 0

    private(set) var issued = 0
    private(set) var ended = 0
    private(set) var failures: [String] = []
    private(set) var failureCount = 0
    var writes = 0, reads = 0, flushes = 0, bytesWritten = 0, bytesRead = 0
    var lost = 0, checkConditions = 0, retries = 0, reconnects = 0, readBackChunks = 0

    init(name: String, range: Range<UInt64>, blockSize: Int, maxBlocksPerCommand: Int, commands: Int,
         queueDepth: Int, verify: Bool) {
        precondition(!range.isEmpty && blockSize >= 512 && blockSize % 8 == 0, "\(name): bad block range or size")
        precondition(maxBlocksPerCommand >= 1 && commands >= 0 && queueDepth >= 1, "\(name): bad plan")
        self.name = name
        self.range = range
        self.blockSize = blockSize
        self.maxBlocksPerCommand = maxBlocksPerCommand
        self.commands = commands
        self.verify = verify
        let count = Int(range.count)
        shadow = [UInt64](repeating: SimPattern.zeros, count: count)
        writers = [UInt8](repeating: 0, count: count)
        readers = [UInt16](repeating: 0, count: count)
        readBackNext = range.lowerBound
        readBackAgain.reserveCapacity(queueDepth)
    }

    /// A protocol's own limit (an NBD server's maximum payload) lowers the command size of the plan.
    func limitBlocksPerCommand(_ n: Int) {
        precondition(n >= 1)
        maxBlocksPerCommand = min(maxBlocksPerCommand, n)
    }

    /// Planned commands all ended and, with verification, every block was read back.
    var isDone: Bool { ended == commands && (!verify || readBackBlocksDone == UInt64(range.count)) }

    func fail(_ message: String) {
        failureCount += 1
        if failures.count < SimWorkload.maxFailuresKept { failures.append("\(name): \(message)") }
    }

    /// The next command to send, or nil when none may start now (the plan is issued, a read-back waits for the
    /// plan to end, or the picked ranges collide with commands in flight). `flushAllowed` is false for an NBD
    /// export without NBD_FLAG_SEND_FLUSH.
    func next(_ rng: inout SeededRandom, flushAllowed: Bool) -> SimCommand? {
        if issued < commands {
            if flushAllowed && rng.chance(SimWorkload.flushPerMille) {
                issued += 1
                return SimCommand(op: .flush, lba: range.lowerBound, blocks: 0, seed: 0, isReadBack: false)
            }
            let write = rng.below(2) == 0
            let count = Int(range.count)
            for _ in 0..<SimWorkload.pickAttempts {
                let n = 1 + rng.below(min(maxBlocksPerCommand, count))
                let first = range.lowerBound + UInt64(rng.below(count - n + 1))
                guard isFree(first, n, forWrite: write) else { continue }
                var seed: UInt64 = 0
                if write {
                    seed = rng.next() | 1
                    if seed == SimPattern.unknown { seed = 1 }
                }
                let c = SimCommand(op: write ? .write : .read, lba: first, blocks: n, seed: seed, isReadBack: false)
                begin(c)
                issued += 1
                return c
            }
            return nil
        }
        guard verify && ended == commands else { return nil }
        if let again = readBackAgain.popLast() {
            begin(again)
            return again
        }
        guard readBackNext < range.upperBound else { return nil }
        let n = Int(min(UInt64(maxBlocksPerCommand), range.upperBound - readBackNext))
        let c = SimCommand(op: .read, lba: readBackNext, blocks: n, seed: 0, isReadBack: true)
        readBackNext += UInt64(n)
        readBackChunks += 1
        begin(c)
        return c
    }

    /// The last writes lost with a connection, to name the culprit when stale data turns up.
    static let lostWritesKept = 64
    private var lostWrites: [SimCommand] = []

    /// " = the data of a write lost with its connection..." when `got` is what such a write put at `lba`.
    private func staleWrite(_ got: UInt64, lba: UInt64, index: Int, mask: UInt64) -> String {
        for w in lostWrites.reversed() where lba >= w.lba && lba < w.lba + UInt64(w.blocks) {
            if SimPattern.word(w.seed, lba: lba, index: index) & mask == got {
                return " = the data of the write of seed \(hex(w.seed)) lost with its connection, landing after a newer acknowledged write"
            }
        }
        return ""
    }

    private func isFree(_ first: UInt64, _ n: Int, forWrite: Bool) -> Bool {
        let i0 = Int(first - range.lowerBound)
        for i in i0..<(i0 + n) where writers[i] != 0 || (forWrite && readers[i] != 0) { return false }
        return true
    }

    private func begin(_ c: SimCommand) {
        let i0 = Int(c.lba - range.lowerBound)
        for i in i0..<(i0 + c.blocks) {
            switch c.op {
            case .write: precondition(writers[i] == 0 && readers[i] == 0); writers[i] = 1
            case .read: precondition(writers[i] == 0); readers[i] += 1
            case .flush: break
            }
        }
    }

    /// The command ended; what its blocks hold now follows from how.
    func end(_ c: SimCommand, _ outcome: SimOutcome) {
        let i0 = Int(c.lba - range.lowerBound)
        for i in i0..<(i0 + c.blocks) {
            switch c.op {
            case .write:
                precondition(writers[i] == 1, "\(name): write ended twice")
                writers[i] = 0
                if case .good = outcome { shadow[i] = c.seed } else { shadow[i] = SimPattern.unknown }
                if case .lost = outcome, i == i0 {
                    if lostWrites.count == SimWorkload.lostWritesKept { lostWrites.removeFirst() }
                    lostWrites.append(c)
                }
            case .read:
                precondition(readers[i] > 0, "\(name): read ended twice")
                readers[i] -= 1
            case .flush: break
            }
        }
        switch outcome {
        case .good:
            let bytes = c.blocks * blockSize
            switch c.op {
            case .write: writes += 1; bytesWritten += bytes
            case .read: reads += 1; bytesRead += bytes
            case .flush: flushes += 1
            }
        case .failed(let why): fail(why)
        case .lost: lost += 1
        }
        if c.isReadBack {
            if case .lost = outcome { readBackAgain.append(c) } else { readBackBlocksDone += UInt64(c.blocks) }
        } else {
            ended += 1
            assert(ended <= issued)
        }
    }

    /// Writes bytes [offset, offset+count) of write `c`'s data to `dst`.
    func fill(_ c: SimCommand, offset: Int, count: Int, into dst: UnsafeMutableRawPointer) {
        precondition(c.op == .write && offset >= 0 && offset + count <= c.blocks * blockSize)
        _ = forEachWord(c, seedOf: { _ in c.seed }, offset: offset, count: count) { at, word, width in
            if width == 8 {
                dst.storeBytes(of: word.littleEndian, toByteOffset: at, as: UInt64.self)
            } else {
                for k in 0..<width { dst.storeBytes(of: UInt8(truncatingIfNeeded: word >> (8 * k)), toByteOffset: at + k, as: UInt8.self) }
            }
            return true
        }
    }

    /// Compares bytes [offset, offset+count) that read `c` returned with the shadow; records the first
    /// difference. Blocks whose content is unknown are skipped. Without verification only lengths matter.
    @discardableResult
    func check(_ c: SimCommand, offset: Int, count: Int, from src: UnsafeRawPointer) -> Bool {
        precondition(c.op == .read && offset >= 0 && offset + count <= c.blocks * blockSize)
        guard verify else { return true }
        let i0 = Int(c.lba - range.lowerBound)
        return forEachWord(c, seedOf: { shadow[i0 + $0] }, offset: offset, count: count) { at, word, width in
            var got: UInt64 = 0
            for k in 0..<width { got |= UInt64(src.load(fromByteOffset: at + k, as: UInt8.self)) << (8 * k) }
            let mask: UInt64 = width == 8 ? .max : (1 << (8 * width)) - 1
            if got == word & mask { return true }
            let byte = offset + at + ((got ^ word) & mask).trailingZeroBitCount / 8
            let block = c.lba + UInt64(byte / blockSize)
            let seed = shadow[i0 + byte / blockSize]
            let what = seed == SimPattern.zeros ? "zeros (never written)" : "the acknowledged write of seed \(hex(seed))"
            fail("READ of \(c.blocks) block(s) at LBA \(c.lba)\(c.isReadBack ? " (read-back)" : ""): block \(block) "
                 + "byte \(byte % blockSize): the word there reads \(hex(got)), expected \(hex(word & mask)) from \(what)"
                 + staleWrite(got, lba: block, index: (byte % blockSize) >> 3, mask: mask))
            return false
        }
    }

    /// Walks the 8-byte pattern words covering [offset, offset+count) of `c`, block by block, skipping blocks
    /// whose seed is unknown. `body(at, word, width)` gets the position relative to `offset`; false stops.
    @inline(__always)
    private func forEachWord(_ c: SimCommand, seedOf: (Int) -> UInt64, offset: Int, count: Int,
                             _ body: (Int, UInt64, Int) -> Bool) -> Bool {
        var pos = offset
        let end = offset + count
        while pos < end {
            let block = pos / blockSize
            let blockEnd = min(end, (block + 1) * blockSize)
            let seed = seedOf(block)
            if seed == SimPattern.unknown { pos = blockEnd; continue }
            let lba = c.lba + UInt64(block)
            while pos < blockEnd {
                let inBlock = pos - block * blockSize
                let word = SimPattern.word(seed, lba: lba, index: inBlock >> 3)
                let skip = inBlock & 7
                let width = min(8 - skip, blockEnd - pos)
                if !body(pos - offset, word >> (8 * skip), width) { return false }
                pos += width
            }
        }
        return true
    }

    var summary: String {
        "\(name): \(ended)/\(commands) commands, \(writes) writes, \(reads) reads, \(flushes) flushes, "
            + "\(bytesWritten) B written, \(bytesRead) B read, \(lost) lost, \(reconnects) reconnects, "
            + "\(checkConditions) check conditions (\(retries) retried), \(readBackChunks) read-back chunks, "
            + "\(failureCount) failures"
    }
}

func hex<T: BinaryInteger>(_ v: T) -> String { "0x" + String(v, radix: 16) }
