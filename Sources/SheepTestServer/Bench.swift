// `bench`: a pipelined READ_OBJ load generator, to check the server keeps up with what the perf suite asks of
// it (QD32/128 4 KiB reads). One thread per connection keeps `qd` requests in flight, reads replies in large
// chunks and sends the replacement requests in one write per chunk.

#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import SheepProtocol

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Measure pipelined READ_OBJ throughput against a sheep.")
    @OptionGroup var connection: DogConnectionOptions
    @Option(help: "Requests in flight per connection.") var qd = 32
    @Option(help: "Connections (one thread each).") var connections = 1
    @Option(help: "Seconds to run.") var seconds = 5
    @Option(help: "Bytes per read.") var blockSize = 4096
    @Option(help: "Objects to spread reads over.") var objects = 16

    func run() throws {
        let endpoint: SheepBackingSpec.Endpoint = connection.unix.map { .unix(path: $0) }
            ?? .tcp(host: connection.address, port: connection.port)
        let setup = try SheepClient(endpoint: endpoint)
        var vid: UInt32
        do { vid = try setup.findVDI(name: "bench") } catch {
            vid = try DogOperations(client: setup).create(name: "bench", size: UInt64(objects) << 22)
        }
        for i in 0..<objects {
            let oid = SheepOID.data(vid: vid, index: UInt32(i))
            if try setup.readObject(oid, offset: 0, length: 1).result == .noObj {
                _ = try setup.writeObject(oid, offset: 0, data: [UInt8(i)], create: true)
            }
        }
        let deadline = monotonicNanoseconds() + UInt64(seconds) * 1_000_000_000
        let lock = PosixLock()
        var total = 0, errors = 0
        var threads: [pthread_t] = []
        for n in 0..<connections {
            let fd = try SheepClient.connect(endpoint)
            let t = startThread { [qd, blockSize, objects] in
                let (ok, bad) = benchLoop(fd: fd, vid: vid, qd: qd, blockSize: blockSize, objects: objects,
                                          deadline: deadline, seed: UInt64(n + 1))
                close(fd)
                lock.withLock { total += ok; errors += bad }
            }
            if let t { threads.append(t) }
        }
        threads.forEach(joinThread)
        let rate = Double(total) / Double(seconds)
        print("reads \(total) errors \(errors) in \(seconds) s: \(Int(rate)) READ_OBJ/s, \(Int(rate * Double(blockSize) / 1_048_576)) MiB/s (qd \(qd) x \(connections) connections)")
    }
}

private func benchLoop(fd: Int32, vid: UInt32, qd: Int, blockSize: Int, objects: Int, deadline: UInt64,
                       seed: UInt64) -> (Int, Int) {
    var rng = SeededRandom(seed: seed)
    let objectBlocks = (4 << 20) / blockSize
    var sendBuf = [UInt8](repeating: 0, count: qd * SheepWire.headerSizeBytes)
    var recvCap = 4 << 20
    var recvBuf = UnsafeMutableRawPointer.allocate(byteCount: recvCap, alignment: 64)
    defer { recvBuf.deallocate() }
    var recvLen = 0
    var nextID: UInt32 = 0
    var done = 0, bad = 0, inFlight = 0

    func queue(_ count: Int) -> Int {
        sendBuf.withUnsafeMutableBytes { raw in
            for i in 0..<count {
                let oid = SheepOID.data(vid: vid, index: UInt32(rng.below(objects)))
                let off = UInt32(rng.below(objectBlocks) * blockSize)
                SheepRequestHeader.readObject(id: nextID, oid: oid, offset: off, length: UInt32(blockSize))
                    .encode(to: raw.baseAddress! + i * SheepWire.headerSizeBytes)
                nextID &+= 1
            }
        }
        return count * SheepWire.headerSizeBytes
    }

    let first = queue(qd)
    if (try? sendBuf.withUnsafeBytes { try writeAll(fd, $0.baseAddress!, first) }) == nil { return (0, 1) }
    inFlight = qd
    var stopping = false
    while inFlight > 0 {
        let n = read(fd, recvBuf + recvLen, recvCap - recvLen)
        if n < 0 { if errno == EINTR { continue }; return (done, bad + 1) }
        if n == 0 { return (done, bad + 1) }
        recvLen += n
        var pos = 0, completed = 0
        while recvLen - pos >= SheepWire.headerSizeBytes {
            let h = SheepResponseHeader(from: recvBuf + pos)
            let total = SheepWire.headerSizeBytes + Int(h.dataLength)
            if total > recvCap {
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
            if h.result == .success { done += 1 } else { bad += 1 }
            completed += 1
            pos += total
        }
        if pos > 0 {
            (recvBuf).copyMemory(from: recvBuf + pos, byteCount: recvLen - pos)
            recvLen -= pos
        }
        inFlight -= completed
        if !stopping && monotonicNanoseconds() >= deadline { stopping = true }
        if !stopping && completed > 0 {
            let bytes = queue(completed)
            if (try? sendBuf.withUnsafeBytes { try writeAll(fd, $0.baseAddress!, bytes) }) == nil { return (done, bad + 1) }
            inFlight += completed
        }
    }
    return (done, bad)
}
