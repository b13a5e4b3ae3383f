// `bench`: a pipelined READ_OBJ / WRITE_OBJ load straight to a sheep (this server or a real one), with no
// target in between: the raw sheep ceiling of the perf suite (perf/README.md).
//
// Each connection is one thread that keeps `qd` requests in flight: it reads replies in large chunks and
// sends the replacements for everything a chunk completed in one write. Nothing is allocated per request:
// the send buffer holds `qd` slots (header, and for writes the 4 KiB payload written once), the receive
// buffer is fixed, replies are counted in place.
//
//   bench --unix SOCK --qd 32                                   # legacy: VDI "bench", 16 objects, reads
//   bench --unix SOCK --vdi NAME --region 256m --prepare --duration 0     # create + allocate the region only
//   bench --unix SOCK --vdi NAME --region 256m --rw write --qd 128 --duration 3 --warmup 0.5 --json
//
// With `--vdi`, requests go to the data objects that cover the first `--region` bytes of the VDI (the
// objects a LUN on that VDI uses for the same region), at random block-aligned offsets. They must be
// allocated (`--prepare` writes zeros into any that are not, through the inode like `dog vdi write`).

#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import SheepProtocol
import TestSupport

enum BenchMode: String, ExpressibleByArgument { case read, write }

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure pipelined READ_OBJ or WRITE_OBJ throughput against a sheep (the raw ceiling).")
    @OptionGroup var connection: DogConnectionOptions
    @Option(help: "Requests in flight per connection.") var qd = 32
    @Option(help: "Connections (one thread each).") var connections = 1
    @Option(help: "Seconds to run (whole seconds; see --duration).") var seconds = 5
    @Option(help: "Measured seconds (overrides --seconds; 0 with --prepare: prepare only).") var duration: Double?
    @Option(help: "Seconds of load before the measured interval.") var warmup: Double = 0
    @Option(help: "Count mode: this many requests in all (split over the connections), then stop.") var ios: Int?
    @Option(help: "Bytes per request.") var blockSize = 4096
    @Option(help: "read (READ_OBJ) or write (WRITE_OBJ).") var rw: BenchMode = .read
    @Option(help: "Objects to spread requests over (without --vdi).") var objects = 16
    @Option(help: "Use this VDI's data objects (default: a VDI named 'bench', created if missing).") var vdi: String?
    @Option(help: "With --vdi: the region of the VDI to cover, from offset 0 (default: the whole VDI).") var region: String?
    @Flag(help: "Create the VDI (region-sized) if missing and allocate every object of the region.") var prepare = false
    @Option(name: .customLong("server-pid"), help: "Also report this process's CPU over the measured interval (repeatable).")
    var serverPids: [Int32] = []
    @Flag(help: "One JSON object on stdout.") var json = false

    func validate() throws {
        if qd < 1 || connections < 1 { throw ValidationError("--qd and --connections must be at least 1") }
        if blockSize < 1 || blockSize > (4 << 20) { throw ValidationError("--block-size must be 1 B … 4 MiB") }
        if let ios, ios < connections { throw ValidationError("--ios must be at least --connections") }
    }

    func run() throws {
        let endpoint: SheepBackingSpec.Endpoint = connection.unix.map { .unix(path: $0) }
            ?? .tcp(host: connection.address, port: connection.port)
        let setup = try SheepClient(endpoint: endpoint)
        let (oids, objectBytes) = try prepareObjects(setup)
        let measured = duration ?? Double(seconds)
        if prepare && measured <= 0 && ios == nil {
            if json { print("{\"prepared\":\(oids.count),\"objectBytes\":\(objectBytes)}") } else { print("prepared \(oids.count) objects") }
            return
        }
        guard blockSize <= objectBytes else { throw ValidationError("--block-size is larger than an object") }

        let start = monotonicNanoseconds() + UInt64(warmup * 1e9)
        let end = start + UInt64(max(measured, 0) * 1e9)
        let plan = BenchPlan(oids: oids, objectBytes: objectBytes, blockSize: blockSize, qd: qd, write: rw == .write,
                             measureStart: start, measureEnd: end)
        let lock = PosixLock()
        var results: [BenchResult] = []
        var threads: [pthread_t] = []
        let cpu = BenchCPU(serverPids: serverPids)
        for n in 0..<connections {
            let fd = try SheepClient.connect(endpoint)
            let count = ios.map { $0 / connections + (n < $0 % connections ? 1 : 0) }
            let first = n == 0
            let t = startThread {
                var r = BenchResult()
                benchLoop(fd: fd, plan: plan, ios: count, seed: UInt64(n + 1), result: &r,
                          onMeasureStart: first ? { cpu.begin() } : {}, onMeasureEnd: first ? { cpu.end() } : {})
                close(fd)
                lock.withLock { results.append(r) }
            }
            if let t { threads.append(t) } else { close(fd); throw ValidationError("pthread_create failed") }
        }
        threads.forEach(joinThread)

        let ops = results.reduce(0) { $0 + $1.measuredOps }
        let total = results.reduce(0) { $0 + $1.ok }
        let errors = results.reduce(0) { $0 + $1.bad }
        // The measured window: from the first thread's start mark to the last thread's end mark.
        let t0 = results.map(\.markStart).filter { $0 > 0 }.min() ?? 0
        let t1 = results.map(\.markEnd).max() ?? 0
        let secs = t1 > t0 ? Double(t1 - t0) / 1e9 : 0
        let rate = secs > 0 ? Double(ops) / secs : 0
        let firstError = results.compactMap(\.firstError).first
        let verb = rw == .read ? "READ_OBJ" : "WRITE_OBJ"
        if json {
            var o = "{\"rw\":\"\(rw.rawValue)\",\"qd\":\(qd),\"connections\":\(connections),\"blockSize\":\(blockSize)"
            o += ",\"objects\":\(oids.count),\"objectBytes\":\(objectBytes),\"ops\":\(ops),\"totalOps\":\(total)"
            o += ",\"seconds\":\(fmt(secs)),\"opsPerSecond\":\(fmt(rate)),\"mbps\":\(fmt(rate * Double(blockSize) / 1e6))"
            o += ",\"meanLatencyUs\":\(fmt(rate > 0 ? Double(qd * connections) / rate * 1e6 : 0)),\"errors\":\(errors)"
            if let e = firstError { o += ",\"firstError\":\"\(e)\"" }
            if let c = cpu.clientSeconds { o += ",\"clientCPUSeconds\":\(fmt(c)),\"clientCPUMicrosPerOp\":\(fmt(ops > 0 ? c / Double(ops) * 1e6 : 0))" }
            if let s = cpu.serverSeconds { o += ",\"serverCPUSeconds\":\(fmt(s)),\"serverCPUMicrosPerOp\":\(fmt(ops > 0 ? s / Double(ops) * 1e6 : 0))" }
            o += "}"
            print(o)
        } else {
            let what = rw == .read ? "reads" : "writes"
            print("\(what) \(ops) errors \(errors) in \(fmt(secs)) s: \(Int(rate)) \(verb)/s, \(Int(rate * Double(blockSize) / 1_048_576)) MiB/s (qd \(qd) x \(connections) connections)"
                  + (cpu.clientSeconds.map { ", client CPU \(fmt($0 / max(secs, 1e-9) * 100))% of a core" } ?? ""))
        }
        if errors > 0 { throw ExitCode.failure }
    }

    /// The data objects requests go to, allocated (with --prepare) and listed in index order.
    private func prepareObjects(_ c: SheepClient) throws -> (oids: [UInt64], objectBytes: Int) {
        guard let name = vdi else {
            // Legacy: VDI "bench" with `objects` objects, each created by a 1-byte write.
            var vid: UInt32
            do { vid = try c.findVDI(name: "bench") } catch {
                vid = try DogOperations(client: c).create(name: "bench", size: UInt64(objects) << 22)
            }
            var out: [UInt64] = []
            for i in 0..<objects {
                let oid = SheepOID.data(vid: vid, index: UInt32(i))
                if try c.readObject(oid, offset: 0, length: 1).result == .noObj {
                    _ = try c.writeObject(oid, offset: 0, data: [UInt8(i)], create: true)
                }
                out.append(oid)
            }
            return (out, 4 << 20)
        }
        let want = try region.map { try parseSizeArgument($0, "region") }
        var vid: UInt32
        do { vid = try c.findVDI(name: name) } catch SheepClientError.failed(.noVDI, _) where prepare {
            guard let size = want else { throw ValidationError("--prepare of a new VDI needs --region") }
            vid = try DogOperations(client: c).create(name: name, size: size)
        }
        var (h, image) = try readInode(c, vid)
        guard let objSize = h.objectSizeBytes, h.storePolicy == 0 else {
            throw ValidationError("VDI \(name) has an index this tool cannot read")
        }
        let bytes = min(want ?? h.vdiSize, h.vdiSize)
        let count = Int((bytes + objSize - 1) / objSize)
        if prepare {
            let zeros = [UInt8](repeating: 0, count: Int(objSize))
            let ops = DogOperations(client: c)
            var wrote = false
            for i in 0..<count where slot(image, UInt32(i)) != vid {
                try ops.write(name: name, offset: UInt64(i) * objSize, data: zeros)
                wrote = true
            }
            if wrote { (h, image) = try readInode(c, vid) }
        }
        var out: [UInt64] = []
        out.reserveCapacity(count)
        for i in 0..<count {
            let owner = slot(image, UInt32(i))
            guard owner != 0 else {
                throw ValidationError("object \(i) of VDI \(name) is not allocated (use --prepare)")
            }
            guard owner == vid || rw == .read else {
                throw ValidationError("object \(i) of VDI \(name) belongs to VDI \(owner) (writes would copy it; use --prepare)")
            }
            out.append(SheepOID.data(vid: owner, index: UInt32(i)))
        }
        return (out, Int(objSize))
    }

    private func readInode(_ c: SheepClient, _ vid: UInt32) throws -> (SheepInodeHeader, [UInt8]) {
        let r = try c.readInode(vid: vid, withIndex: true)
        guard r.result == .success, let h = SheepInodeHeader(bytes: r.data) else {
            throw SheepClientError.failed(r.result, "reading the inode of VDI \(vid)")
        }
        return (h, r.data)
    }

    private func slot(_ image: [UInt8], _ idx: UInt32) -> UInt32 {
        image.withUnsafeBytes { SheepInodeLayout.loadSlot($0.baseAddress!, idx) }
    }
}

private func fmt(_ v: Double) -> String {
    let r = (v * 1000).rounded() / 1000
    return r == r.rounded() ? String(Int(r)) : String(r)
}

/// What every connection thread needs; read-only once threads run.
private struct BenchPlan: @unchecked Sendable {
    let oids: [UInt64]
    let objectBytes: Int
    let blockSize: Int
    let qd: Int
    let write: Bool
    let measureStart: UInt64
    let measureEnd: UInt64
}

private struct BenchResult {
    var ok = 0
    var bad = 0
    var measuredOps = 0
    var markStart: UInt64 = 0
    var markEnd: UInt64 = 0
    var firstError: String?
}

/// CPU seconds of this process (all threads) and of the given server processes between two marks.
private final class BenchCPU: @unchecked Sendable {
    let serverPids: [Int32]
    private var client0 = 0.0, server0 = 0.0
    private(set) var clientSeconds: Double?
    private(set) var serverSeconds: Double?
    init(serverPids: [Int32]) { self.serverPids = serverPids }

    private static func own() -> Double {
        var u = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &u)
        return Double(u.ru_utime.tv_sec) + Double(u.ru_utime.tv_usec) / 1e6 + Double(u.ru_stime.tv_sec) + Double(u.ru_stime.tv_usec) / 1e6
    }

    /// utime + stime from /proc/PID/stat (fields 14 and 15, after the command name's closing parenthesis).
    private func servers() -> Double {
        let hz = Double(sysconf(Int32(_SC_CLK_TCK)))
        var total = 0.0
        for pid in serverPids {
            let fd = open("/proc/\(pid)/stat", O_RDONLY)
            if fd < 0 { continue }
            var buf = [UInt8](repeating: 0, count: 1024)
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            close(fd)
            guard n > 0, let paren = buf[0..<n].lastIndex(of: UInt8(ascii: ")")) else { continue }
            let fields = buf[(paren + 2)..<n].split(separator: UInt8(ascii: " "))
            // After ")": state is field 3, utime field 14, stime field 15.
            guard fields.count > 12, let u = Double(String(decoding: fields[11], as: UTF8.self)),
                  let s = Double(String(decoding: fields[12], as: UTF8.self)) else { continue }
            total += (u + s) / hz
        }
        return total
    }

    func begin() { client0 = Self.own(); server0 = servers() }
    func end() {
        clientSeconds = Self.own() - client0
        if !serverPids.isEmpty { serverSeconds = servers() - server0 }
    }
}

private func benchLoop(fd: Int32, plan: BenchPlan, ios: Int?, seed: UInt64, result: inout BenchResult,
                       onMeasureStart: () -> Void, onMeasureEnd: () -> Void) {
    var rng = SeededRandom(seed: seed)
    let qd = plan.qd, bs = plan.blockSize
    let objectBlocks = plan.objectBytes / bs
    let nObjects = plan.oids.count
    let payload = plan.write ? bs : 0
    let slotBytes = SheepWire.headerSizeBytes + payload
    // qd slots: a header each, and for writes the payload right behind it (filled once, never copied).
    let sendBuf = UnsafeMutableRawPointer.allocate(byteCount: qd * slotBytes, alignment: 64)
    defer { sendBuf.deallocate() }
    if payload > 0 {
        for i in 0..<qd {
            let p = (sendBuf + i * slotBytes + SheepWire.headerSizeBytes).assumingMemoryBound(to: UInt8.self)
            for j in 0..<payload { p[j] = UInt8(truncatingIfNeeded: j &+ i) }
        }
    }
    let oids = UnsafeMutablePointer<UInt64>.allocate(capacity: max(nObjects, 1))
    defer { oids.deallocate() }
    for (i, o) in plan.oids.enumerated() { oids[i] = o }
    var recvCap = 4 << 20
    var recvBuf = UnsafeMutableRawPointer.allocate(byteCount: recvCap, alignment: 64)
    defer { recvBuf.deallocate() }
    var recvLen = 0
    var nextID: UInt32 = 0
    var inFlight = 0
    var issued = 0
    let limit = ios ?? Int.max
    var measuring = false
    var stopping = false

    /// Encodes `count` requests into the first `count` slots; returns the bytes to send.
    func queue(_ count: Int) -> Int {
        for i in 0..<count {
            let oid = oids[rng.below(nObjects)]
            let off = UInt32(rng.below(objectBlocks) * bs)
            let h = plan.write
                ? SheepRequestHeader.writeObject(id: nextID, oid: oid, offset: off, length: UInt32(bs))
                : SheepRequestHeader.readObject(id: nextID, oid: oid, offset: off, length: UInt32(bs))
            h.encode(to: sendBuf + i * slotBytes)
            nextID &+= 1
        }
        issued += count
        return count * slotBytes
    }

    func fail(_ what: String) {
        result.bad += 1
        if result.firstError == nil { result.firstError = what }
    }

    let firstBatch = min(qd, limit)
    if ios != nil && plan.measureStart <= monotonicNanoseconds() {
        measuring = true; result.markStart = monotonicNanoseconds(); onMeasureStart()
    }
    if (try? writeAll(fd, sendBuf, queue(firstBatch))) == nil { fail("send: \(errnoString())"); return }
    inFlight = firstBatch
    while inFlight > 0 {
        let n = read(fd, recvBuf + recvLen, recvCap - recvLen)
        if n < 0 { if errno == EINTR { continue }; fail("receive: \(errnoString())"); break }
        if n == 0 { fail("connection closed by sheep"); break }
        recvLen += n
        var pos = 0, completed = 0
        while recvLen - pos >= SheepWire.headerSizeBytes {
            let h = SheepResponseHeader(from: recvBuf + pos)
            let total = SheepWire.headerSizeBytes + Int(h.dataLength)
            if total > recvCap {
                // A reply larger than the buffer (not with these requests): grow once and go on.
                let nb = UnsafeMutableRawPointer.allocate(byteCount: total * 2, alignment: 64)
                nb.copyMemory(from: recvBuf + pos, byteCount: recvLen - pos)
                recvBuf.deallocate()
                recvBuf = nb
                recvCap = total * 2
                recvLen -= pos
                pos = 0
                break
            }
            if recvLen - pos < total { break }
            if h.result == .success {
                result.ok += 1
                if measuring { result.measuredOps += 1 }
            } else {
                fail(h.result.name)
            }
            completed += 1
            pos += total
        }
        if pos > 0 {
            if recvLen > pos { recvBuf.copyMemory(from: recvBuf + pos, byteCount: recvLen - pos) }
            recvLen -= pos
        }
        inFlight -= completed
        if completed == 0 { continue }
        let now = monotonicNanoseconds()
        if ios == nil {
            if !measuring && !stopping && now >= plan.measureStart {
                measuring = true; result.markStart = now; onMeasureStart()
            }
            if measuring && now >= plan.measureEnd {
                measuring = false; stopping = true; result.markEnd = now; onMeasureEnd()
            }
        } else if !measuring && !stopping && now >= plan.measureStart {
            measuring = true; result.markStart = now; onMeasureStart()
        }
        if !stopping {
            let more = min(completed, limit - issued)
            if more > 0 {
                if (try? writeAll(fd, sendBuf, queue(more))) == nil { fail("send: \(errnoString())"); break }
                inFlight += more
            }
        }
    }
    if ios != nil && measuring { result.markEnd = monotonicNanoseconds(); onMeasureEnd() }
}
