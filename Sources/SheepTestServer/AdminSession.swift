// The admin listener's line protocol, for tests that run the server as a separate process. One command per
// line, one reply line each ("ok …" or "error …"):
//   ping                      ok pong
//   faults on | faults off    enable / disable the fault plan (the plan is kept)
//   faults set SPEC           replace the plan (see Faults.swift), e.g. "faults set error=HALT:1"
//   cut | restore             close the listeners and every client connection / listen again
//   pause | resume            stop executing requests (clients hang) / carry on
//   lock on | lock off        cluster locking (LOCK_VDI takes locks) on or off
//   node kill N | node start N   node N leaves the cluster (shared locks dropped) / joins again
//   index hold SLOT           the next index write covering data_vdi_id[SLOT] waits after it invalidated the
//                             other participants, before the index changes (IndexWriteHold.swift)
//   index wait                waits until a write is held there ("error" after IndexWriteHold.waitMaxSeconds)
//   index release             lets it go on
//   stats                     ok connections=N objects=M
//   quit                      close this admin connection

#if canImport(Glibc)
import Glibc
#endif
import SheepProtocol

struct AdminSession {
    static let maxLineBytes = 4096
    let fd: Int32
    unowned let server: SheepTestServer

    func run() {
        var pending: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1024)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if n < 0 { if errno == EINTR { continue }; return }
            if n == 0 { return }
            pending.append(contentsOf: chunk[0..<n])
            while let nl = pending.firstIndex(of: 0x0A) {
                let line = String(decoding: pending[0..<nl], as: UTF8.self)
                pending.removeSubrange(0...nl)
                let (reply, keepGoing) = execute(line)
                var bytes = Array((reply + "\n").utf8)
                do { try bytes.withUnsafeMutableBytes { try writeAll(fd, $0.baseAddress!, $0.count) } } catch { return }
                bytes.removeAll()
                if !keepGoing { return }
            }
            if pending.count > Self.maxLineBytes { return }
        }
    }

    func execute(_ rawLine: String) -> (String, Bool) {
        let line = rawLine.hasSuffix("\r") ? String(rawLine.dropLast()) : rawLine
        let words = line.split(separator: " ", maxSplits: 2).map(String.init)
        guard let command = words.first else { return ("error empty command", true) }
        switch (command, words.count > 1 ? words[1] : nil) {
        case ("ping", nil): return ("ok pong", true)
        case ("faults", "on"): server.setFaultsEnabled(true); return ("ok", true)
        case ("faults", "off"): server.setFaultsEnabled(false); return ("ok", true)
        case ("faults", "set"):
            do {
                server.setFaults(try FaultPlan.parse(words.count > 2 ? words[2] : ""))
                return ("ok", true)
            } catch { return ("error \(error)", true) }
        case ("cut", nil): server.cut(); return ("ok", true)
        case ("restore", nil):
            do { try server.restore(); return ("ok", true) } catch { return ("error \(error)", true) }
        case ("pause", nil): server.pauseService(); return ("ok", true)
        case ("resume", nil): server.resumeService(); return ("ok", true)
        case ("lock", "on"): server.cluster.setUseLock(true); return ("ok", true)
        case ("lock", "off"): server.cluster.setUseLock(false); return ("ok", true)
        case ("node", _):
            let args = words.count > 2 ? words[2].split(separator: " ") : []
            guard let verb = words.count > 1 ? words[1] : nil, args.count == 1, let n = Int(args[0]) else {
                return ("error usage: node kill N | node start N", true)
            }
            do {
                switch verb {
                case "kill": try server.killNode(n)
                case "start": try server.startNode(n)
                default: return ("error usage: node kill N | node start N", true)
                }
                return ("ok", true)
            } catch { return ("error \(error)", true) }
        case ("index", _):
            let arg = words.count > 2 ? words[2] : nil
            switch (words.count > 1 ? words[1] : "", arg) {
            case ("hold", let a?):
                guard let slot = UInt32(a), slot < UInt32(SheepInodeLayout.dataIndexSlots) else {
                    return ("error bad slot '\(a)'", true)
                }
                server.cluster.indexHold.arm(slot: slot)
                return ("ok", true)
            case ("wait", nil):
                return server.cluster.indexHold.waitHeld() ? ("ok held", true) : ("error no index write held", true)
            case ("release", nil):
                server.cluster.indexHold.release()
                return ("ok", true)
            default: return ("error usage: index hold SLOT | index wait | index release", true)
            }
        case ("stats", nil):
            return ("ok connections=\(server.connectionCount) objects=\(server.cluster.objectCount())", true)
        case ("quit", nil): return ("ok", false)
        default: return ("error unknown command '\(line)'", true)
        }
    }
}
