// ringtgt-echo: the loopback limit. A raw io_uring request/response loop with a read's message sizes
// (a 48-byte request; a 48-byte header plus --payload bytes back, 4 KiB unless told), client and server in
// separate processes, no iSCSI. No target can serve reads of that size over this loopback faster than this
// loop runs: 4 KiB for the random-read rows, 128 KiB for the sequential-read ceiling.
import ArgumentParser
import CURing
import Glibc

enum EchoSizes {
    static let requestBytes = 48
    /// A response is a 48-byte header (a Data-In BHS) and the payload.
    static let headerBytes = 48
    static let defaultPayloadBytes = 4096
    static let maxPayloadBytes = 1 << 20
    /// Responses (or requests) sent by one send at most, unless --batch says fewer.
    static let maxBatch = 256
    /// Bytes one send hands the kernel at most (a target's send queue coalesces about this much too), so that
    /// large responses are not batched 256 at a time.
    static let maxSendBytes = 1 << 20
    static let receiveBytes = 1 << 20
    static let ringEntries: UInt32 = 64
    static let waitSliceNanos: Int64 = 10_000_000
}

/// A ring with the daemon's flags, and a loop helper. The ring lives behind a pointer: no exclusivity checks.
struct EchoRing: ~Copyable {
    let ring: UnsafeMutablePointer<io_uring>
    let cqes: UnsafeMutablePointer<UnsafeMutablePointer<io_uring_cqe>?>

    init() {
        ring = .allocate(capacity: 1)
        ring.initialize(to: io_uring())
        cqes = .allocate(capacity: 64)
        var p = io_uring_params()
        p.flags = RT_SETUP_SINGLE_ISSUER | RT_SETUP_DEFER_TASKRUN
        if io_uring_queue_init_params(EchoSizes.ringEntries, ring, &p) < 0 {
            p = io_uring_params()
            let rc = io_uring_queue_init_params(EchoSizes.ringEntries, ring, &p)
            if rc < 0 { fatalError("io_uring_queue_init_params: \(rc)") }
        }
    }
    deinit {
        io_uring_queue_exit(ring)
        ring.deallocate()
        cqes.deallocate()
    }
    @inline(__always) func sqe() -> UnsafeMutablePointer<io_uring_sqe> {
        if let s = io_uring_get_sqe(ring) { return s }
        _ = io_uring_submit(ring)
        return io_uring_get_sqe(ring)!
    }
    /// user_data: the operation (`EchoOp`) in the low byte, the connection's index above it.
    @inline(__always) func recv(_ fd: Int32, _ p: UnsafeMutableRawPointer, _ n: Int, connection: Int = 0) {
        let s = sqe()
        io_uring_prep_recv(s, fd, p, n, 0)
        s.pointee.user_data = EchoOp.receive | UInt64(connection) << 8
    }
    @inline(__always) func send(_ fd: Int32, _ p: UnsafeMutableRawPointer, _ n: Int, zeroCopy: Bool, connection: Int = 0) {
        let s = sqe()
        if zeroCopy {
            // IORING_OP_SEND_ZC: the kernel sends from these pages and later posts a second CQE
            // (IORING_CQE_F_NOTIF) when it no longer needs them. The echo never changes its send buffer, so it
            // does not wait for that notification before the next send (the best case for zero copy).
            io_uring_prep_send_zc(s, fd, p, n, Int32(MSG_NOSIGNAL), 0)
        } else {
            io_uring_prep_send(s, fd, p, n, Int32(MSG_NOSIGNAL))
        }
        s.pointee.user_data = EchoOp.send | UInt64(connection) << 8
    }
}

enum EchoOp {
    static let receive: UInt64 = 1
    static let send: UInt64 = 2
    static let mask: UInt64 = 0xFF
}

/// One side of the loop: receives units of `inBytes`, answers each with `outBytes`, one send in flight.
struct Pump: ~Copyable {
    let fd: Int32
    let inBytes: Int
    let outBytes: Int
    let rx: UnsafeMutableRawPointer
    let tx: UnsafeMutableRawPointer
    var partialIn = 0
    var owedOut = 0          // bytes owed to the peer, not yet handed to a send
    var sending = 0          // bytes in the current send
    var unitsIn: UInt64 = 0
    var closed = false
    /// Units per send at most: 1 sends every message on its own, maxBatch coalesces like a target's send queue.
    let batch: Int
    /// Sends with IORING_OP_SEND_ZC (server --zero-copy).
    let zeroCopy: Bool

    init(fd: Int32, inBytes: Int, outBytes: Int, batch: Int, zeroCopy: Bool = false) {
        self.fd = fd
        self.zeroCopy = zeroCopy
        self.batch = max(1, min(batch, EchoSizes.maxBatch, EchoSizes.maxSendBytes / outBytes))
        self.inBytes = inBytes
        self.outBytes = outBytes
        rx = .allocate(byteCount: EchoSizes.receiveBytes, alignment: 4096)
        let txBytes = outBytes * self.batch
        tx = .allocate(byteCount: txBytes, alignment: 4096)
        tx.initializeMemory(as: UInt8.self, repeating: 0x5A, count: txBytes)
    }
    deinit {
        rx.deallocate()
        tx.deallocate()
    }

    /// Received `n` bytes: counts whole units and owes one answer per unit.
    mutating func received(_ n: Int) -> Int {
        let total = partialIn + n
        let units = total / inBytes
        partialIn = total - units * inBytes
        unitsIn &+= UInt64(units)
        return units
    }

    mutating func owe(_ units: Int) { owedOut += units * outBytes }

    mutating func flush(_ ring: borrowing EchoRing, connection: Int = 0) {
        guard sending == 0, owedOut > 0 else { return }
        let n = min(owedOut, outBytes * batch)
        sending = n
        owedOut -= n
        ring.send(fd, tx, n, zeroCopy: zeroCopy, connection: connection)
    }

    mutating func sent(_ res: Int32) {
        if res <= 0 { closed = true; return }
        // A short send: the rest is owed again (every byte of the batch is alike).
        owedOut += sending - Int(res)
        sending = 0
    }
}

func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// Runs the loop until the peer closes (server) or the clock says stop (client).
func pumpLoop(_ ring: borrowing EchoRing, _ pump: inout Pump, answerEachUnit: Bool, stopAt: UInt64,
              measureFrom: UInt64, measured: inout UInt64, poll: Bool = false) {
    ring.recv(pump.fd, pump.rx, EchoSizes.receiveBytes)
    pump.flush(ring)
    while !pump.closed {
        if monotonicNanos() >= stopAt { break }
        if poll { _ = io_uring_submit_and_get_events(ring.ring) } else { _ = rt_wait(ring.ring, 1, EchoSizes.waitSliceNanos) }
        while true {
            let n = Int(rt_peek_batch(ring.ring, ring.cqes, 64))
            if n == 0 { break }
            let now = monotonicNanos()
            for i in 0..<n {
                let c = ring.cqes[i]!
                let res = c.pointee.res
                if c.pointee.user_data & EchoOp.mask == EchoOp.receive {
                    if res <= 0 { pump.closed = true; continue }
                    let units = pump.received(Int(res))
                    if now >= measureFrom { measured &+= UInt64(units) }
                    if answerEachUnit || now < stopAt { pump.owe(units) }
                    ring.recv(pump.fd, pump.rx, EchoSizes.receiveBytes)
                } else if c.pointee.flags & IORING_CQE_F_NOTIF == 0 {
                    pump.sent(res)
                }
            }
            io_uring_cq_advance(ring.ring, UInt32(n))
            pump.flush(ring)
        }
    }
}

/// The server side for `count` connections at once, in one loop: a target serving many initiators from one
/// core. Runs until every peer has closed.
func serveConcurrently(_ ring: borrowing EchoRing, _ pumps: UnsafeMutablePointer<Pump>, count: Int, poll: Bool) {
    var open = count
    for k in 0..<count {
        ring.recv(pumps[k].fd, pumps[k].rx, EchoSizes.receiveBytes, connection: k)
    }
    while open > 0 {
        if poll { _ = io_uring_submit_and_get_events(ring.ring) } else { _ = rt_wait(ring.ring, 1, EchoSizes.waitSliceNanos) }
        while true {
            let n = Int(rt_peek_batch(ring.ring, ring.cqes, 64))
            if n == 0 { break }
            for i in 0..<n {
                let c = ring.cqes[i]!
                let res = c.pointee.res
                let k = Int(c.pointee.user_data >> 8)
                guard !pumps[k].closed else { continue }
                if c.pointee.user_data & EchoOp.mask == EchoOp.receive {
                    if res <= 0 { pumps[k].closed = true; open -= 1; continue }
                    pumps[k].owe(pumps[k].received(Int(res)))
                    ring.recv(pumps[k].fd, pumps[k].rx, EchoSizes.receiveBytes, connection: k)
                    pumps[k].flush(ring, connection: k)
                } else if c.pointee.flags & IORING_CQE_F_NOTIF == 0 {
                    pumps[k].sent(res)
                    if pumps[k].closed { open -= 1 } else { pumps[k].flush(ring, connection: k) }
                }
            }
            io_uring_cq_advance(ring.ring, UInt32(n))
        }
    }
}

struct Echo: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ringtgt-echo",
        abstract: "Loopback limit: io_uring request/response with a read's message sizes.",
        subcommands: [Server.self, Client.self])
}

struct Server: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Answer each 48-byte request with 48 + PAYLOAD bytes; prints 'PORT n'.")
    @Option(help: "Port to listen on (0 = any).") var port: UInt16 = 0
    @Option(help: "Payload bytes after each response's 48-byte header (a read's size).") var payload = EchoSizes.defaultPayloadBytes
    @Option(help: "Connections to serve, one after another.") var connections: Int = 1
    @Option(help: "Connections to serve at once, in one loop (after all have connected); overrides --connections.")
    var concurrent: Int = 0
    @Option(help: "Responses per send at most (1 = each on its own).") var batch: Int = EchoSizes.maxBatch
    @Flag(help: "Busy-poll the ring instead of sleeping in the kernel.") var poll = false
    @Flag(help: "Send the answers with IORING_OP_SEND_ZC.") var zeroCopy = false

    func validate() throws { try validatePayload(payload) }

    func run() throws {
        let lfd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var one: Int32 = 1
        setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = port.bigEndian
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(lfd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0, listen(lfd, 128) == 0 else { throw ValidationError("bind/listen: \(String(cString: strerror(errno)))") }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(lfd, $0, &len) } }
        print("PORT \(UInt16(bigEndian: a.sin_port))")
        fflush(stdout)
        let ring = EchoRing()
        if concurrent > 0 {
            let pumps = UnsafeMutablePointer<Pump>.allocate(capacity: concurrent)
            for k in 0..<concurrent {
                var fd: Int32 = -1
                while fd < 0 { fd = accept(lfd, nil, nil) }
                setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
                (pumps + k).initialize(to: Pump(fd: fd, inBytes: EchoSizes.requestBytes, outBytes: EchoSizes.headerBytes + payload,
                                                batch: batch, zeroCopy: zeroCopy))
            }
            serveConcurrently(ring, pumps, count: concurrent, poll: poll)
            for k in 0..<concurrent { close(pumps[k].fd) }
            pumps.deinitialize(count: concurrent)
            pumps.deallocate()
        }
        for _ in 0..<(concurrent > 0 ? 0 : connections) {
            let fd = accept(lfd, nil, nil)
            guard fd >= 0 else { continue }
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            var pump = Pump(fd: fd, inBytes: EchoSizes.requestBytes, outBytes: EchoSizes.headerBytes + payload, batch: batch,
                            zeroCopy: zeroCopy)
            var ignored: UInt64 = 0
            pumpLoop(ring, &pump, answerEachUnit: true, stopAt: .max, measureFrom: .max, measured: &ignored,
                     poll: poll)
            close(fd)
        }
        close(lfd)
        // Its whole life's CPU time: the harness measures the floor per round trip with it (the server is gone,
        // and reaped, by the time anyone could read its /proc entry).
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        let cpu = Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec)
            + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
        print("CPU \(cpu)")
        fflush(stdout)
    }
}

struct Client: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Keep --qd requests in flight; report round trips per second.")
    @Option(help: "Server port on 127.0.0.1.") var port: UInt16
    @Option(name: .customLong("qd"), help: "Requests in flight.") var queueDepth: Int = 32
    @Option(help: "Measured seconds.") var duration: Double = 5
    @Option(help: "Seconds before measuring.") var warmup: Double = 1
    @Option(help: "Requests per send at most (1 = each on its own).") var batch: Int = EchoSizes.maxBatch
    @Option(help: "Payload bytes the server sends after each 48-byte header (as its --payload).") var payload = EchoSizes.defaultPayloadBytes
    @Flag(help: "Print JSON.") var json = false
    @Flag(help: "Busy-poll the ring instead of sleeping in the kernel.") var poll = false

    func validate() throws { try validatePayload(payload) }

    func run() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = port.bigEndian
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { throw ValidationError("connect: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let ring = EchoRing()
        var pump = Pump(fd: fd, inBytes: EchoSizes.headerBytes + payload, outBytes: EchoSizes.requestBytes, batch: batch)
        pump.owe(queueDepth)
        let start = monotonicNanos()
        let from = start + UInt64(warmup * 1e9)
        let stop = from + UInt64(duration * 1e9)
        var measured: UInt64 = 0
        pumpLoop(ring, &pump, answerEachUnit: false, stopAt: stop, measureFrom: from, measured: &measured,
                 poll: poll)
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
        let rate = Double(measured) / duration
        if json {
            print("{\"queueDepth\":\(queueDepth),\"payloadBytes\":\(payload),\"batch\":\(batch),\"seconds\":\(duration),\"roundTrips\":\(measured),\"roundTripsPerSecond\":\(Int(rate))}")
        } else {
            print("loopback echo qd=\(queueDepth) payload=\(payload) batch=\(batch): \(Int(rate)) round trips/s (\(measured) in \(duration) s)")
        }
    }
}

func validatePayload(_ payload: Int) throws {
    guard (1...EchoSizes.maxPayloadBytes).contains(payload) else {
        throw ValidationError("--payload must be 1...\(EchoSizes.maxPayloadBytes) bytes")
    }
}

Echo.main()
