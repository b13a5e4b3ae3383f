import CURing
import Glibc
import Testing
@testable import Floor
@testable import URing
@testable import Store

/// The file store on a real ring, with the completions the kernel gives rewritten on their way back: a transfer
/// reported short, EAGAIN or EINTR after the kernel did the work, a write that makes no progress. The store must
/// submit exactly the rest each time, and the data must come out as if nothing had happened.
@Suite struct FileStoreTests {
    /// What the test does to the n-th completion of a request.
    enum Fault {
        /// Pass the kernel's result on.
        case none
        /// Report at most this many bytes (the kernel did more; the store must submit the rest again).
        case short(Int32)
        /// Report -errno instead.
        case errno(Int32)
    }

    static let bufferBytes = 1 << 20

    /// A temporary file of `bytes` bytes, byte i = i % 251, and a ring with one registered buffer.
    final class Bench {
        let path: String
        let file: FileBacking
        let ring: Ring
        let data: UnsafeMutableRawPointer

        init(bytes: Int) throws {
            var template = Array("/tmp/ringtgt-filestore-XXXXXX".utf8CString)
            let fd = mkstemp(&template)
            #expect(fd >= 0)
            path = String(cString: template)
            var pattern = [UInt8](repeating: 0, count: bytes)
            for i in 0..<bytes { pattern[i] = UInt8(i % 251) }
            #expect(pattern.withUnsafeBytes { write(fd, $0.baseAddress, bytes) } == bytes)
            close(fd)
            let opened = try BackingFactory.open(bstype: "rdwr", path: path, options: [:], blockSize: 512)
            guard case .file(let f) = opened.backing else { throw CancellationError() }
            file = f
            ring = try Ring(entries: 8)
            data = .allocate(byteCount: FileStoreTests.bufferBytes, alignment: 4096)
            memset(data, 0xEE, FileStoreTests.bufferBytes)
            try ring.registerBuffer(data, bytes: FileStoreTests.bufferBytes)
        }

        deinit {
            unlink(path)
            data.deallocate()
        }

        /// Runs `op` to its result, rewriting completion n with `faults[n]`. Also returns how many operations the
        /// store put on the ring.
        func run(_ op: StoreOp, faults: [Fault]) -> (result: StoreResult, submissions: Int) {
            var request = StoreRequest()
            let buffer = StoreBuffer(data: data, tag: 0x5157)
            if let now = FileStore.start(op, on: file, &request, buffer, ring: ring) { return (now, 0) }
            var submissions = 1
            var n = 0
            while true {
                #expect(ring.submitAndWait(timeoutNanos: 5_000_000_000) >= 0)
                let ready = ring.peekBatch()
                guard ready == 1 else {
                    Issue.record("expected exactly one completion, got \(ready)")
                    return (.failed(.unavailable), submissions)
                }
                let cqe = ring.cqe(0)
                #expect(cqe.pointee.user_data == 0x5157)
                var res = cqe.pointee.res
                ring.advance(1)
                switch n < faults.count ? faults[n] : .none {
                case .none: break
                case .short(let most): if res > most { res = most }
                case .errno(let e): res = -e
                }
                n += 1
                if let result = FileStore.complete(&request, result: res, buffer, ring: ring) {
                    return (result, submissions)
                }
                submissions += 1
            }
        }

        func expectPattern(at offset: Int, count: Int, bufferOffset: Int = 0) {
            let bytes = data.advanced(by: bufferOffset).assumingMemoryBound(to: UInt8.self)
            for i in 0..<count where bytes[i] != UInt8((offset + i) % 251) {
                Issue.record("byte \(i) is \(bytes[i]), want \((offset + i) % 251)")
                return
            }
        }
    }

    @Test func aShortReadIsCompletedFromWhereItStopped() throws {
        let bench = try Bench(bytes: 1 << 20)
        let (result, submissions) = bench.run(.read(target: .own, offset: 4096, length: 65536, bufferOffset: 512),
                                              faults: [.short(1000), .short(7), .none])
        #expect(result == .ok(65536))
        #expect(submissions == 3)
        bench.expectPattern(at: 4096, count: 65536, bufferOffset: 512)
    }

    @Test func eagainAndEintrResubmitTheRestAndNothingElse() throws {
        let bench = try Bench(bytes: 1 << 20)
        let (result, submissions) = bench.run(.read(target: .own, offset: 0, length: 131072, bufferOffset: 0),
                                              faults: [.short(4096), .errno(EAGAIN), .errno(EINTR), .none])
        #expect(result == .ok(131072))
        #expect(submissions == 4)
        bench.expectPattern(at: 0, count: 131072)
    }

    @Test func aShortWriteLandsWhole() throws {
        let bench = try Bench(bytes: 1 << 20)
        // The buffer holds the pattern for offset 8192; written at 8192 over the same pattern after zeroing it.
        let zeros = [UInt8](repeating: 0, count: 32768)
        let fd = open(bench.path, O_WRONLY)
        #expect(zeros.withUnsafeBytes { pwrite(fd, $0.baseAddress, 32768, 8192) } == 32768)
        close(fd)
        let bytes = bench.data.assumingMemoryBound(to: UInt8.self)
        for i in 0..<32768 { bytes[i] = UInt8((8192 + i) % 251) }
        let (result, submissions) = bench.run(.write(target: .own, offset: 8192, length: 32768, bufferOffset: 0,
                                                     fua: true),
                                              faults: [.short(512), .errno(EAGAIN), .none])
        #expect(result == .ok(32768))
        #expect(submissions == 3)
        memset(bench.data, 0, 32768)
        #expect(bench.run(.read(target: .own, offset: 8192, length: 32768, bufferOffset: 0), faults: []).result
                == .ok(32768))
        bench.expectPattern(at: 8192, count: 32768)
    }

    /// A write the kernel reports as 0 bytes made no progress: it fails, it is never acknowledged.
    @Test func aWriteThatMakesNoProgressIsNotAcknowledged() throws {
        let bench = try Bench(bytes: 1 << 20)
        let (result, _) = bench.run(.write(target: .own, offset: 0, length: 4096, bufferOffset: 0, fua: false),
                                    faults: [.short(0)])
        #expect(result == .failed(.mediumError))
    }

    /// A read at the end of a file that shrank under the LUN: the rest reads as zeros.
    @Test func aReadPastTheEndOfAShrunkFileReadsZeros() throws {
        let bench = try Bench(bytes: 1 << 20)
        #expect(truncate(bench.path, 4096) == 0)
        let (result, _) = bench.run(.read(target: .own, offset: 0, length: 16384, bufferOffset: 0), faults: [])
        #expect(result == .ok(16384))
        bench.expectPattern(at: 0, count: 4096)
        let bytes = bench.data.assumingMemoryBound(to: UInt8.self)
        #expect((4096..<16384).allSatisfy { bytes[$0] == 0 })
    }

    @Test func errorsAreNamedAndControlOpsCompleteOnce() throws {
        let bench = try Bench(bytes: 1 << 20)
        #expect(bench.run(.read(target: .own, offset: 0, length: 4096, bufferOffset: 0),
                          faults: [.errno(EIO)]).result == .failed(.mediumError))
        #expect(bench.run(.write(target: .own, offset: 0, length: 4096, bufferOffset: 0, fua: false),
                          faults: [.errno(ENOSPC)]).result == .failed(.noSpace))
        #expect(bench.run(.flush(target: .own), faults: []) == (.ok(0), 1))
        #expect(bench.run(.flush(target: .own), faults: [.errno(EIO)]).result == .failed(.mediumError))
        // A control operation that reports EAGAIN is not issued again.
        #expect(bench.run(.flush(target: .own), faults: [.errno(EAGAIN)]) == (.failed(.mediumError), 1))
        #expect(bench.run(.discard(target: .own, offset: 0, length: 65536), faults: []).result == .ok(0))
        #expect(bench.run(.prefetch(target: .own, offset: 0, length: 65536), faults: []) == (.ok(0), 0))
    }

    @Test func theNullStoreZeroesReadsAndDropsWrites() {
        let data = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 4096)
        defer { data.deallocate() }
        memset(data, 0xAB, 8192)
        #expect(NullStore.run(.read(target: .own, offset: 0, length: 4096, bufferOffset: 4096), data: data,
                              byteCount: 1 << 30) == .ok(4096))
        let bytes = data.assumingMemoryBound(to: UInt8.self)
        #expect(bytes[4095] == 0xAB && bytes[4096] == 0 && bytes[8191] == 0)
        #expect(NullStore.run(.write(target: .own, offset: 0, length: 4096, bufferOffset: 0, fua: true), data: data,
                              byteCount: 1 << 30) == .ok(4096))
        #expect(NullStore.run(.mapStatus(target: .own, offset: (1 << 30) - 512, maxLength: 1 << 20), data: data,
                              byteCount: 1 << 30) == .extent(mapped: true, length: 512))
    }
}
