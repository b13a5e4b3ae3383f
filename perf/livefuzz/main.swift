// ringtgt-livefuzz: attacks a live ringtgtd over real sockets. `fuzz` sends mutated iSCSI and NBD streams at
// a bounded rate with a liveness probe every few hundred cases and watches the daemon's memory; `hostile`
// holds thousands of hostile connections or floods one session, and reports memory per connection, reaping
// and the throughput an active session keeps. Both start (and always stop) their own ringtgtd.
import ArgumentParser
import Foundation
#if canImport(Glibc)
import Glibc
#endif

struct LiveFuzz: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ringtgt-livefuzz",
        abstract: "Live-daemon fuzzer and hostile-load tool for ringtgtd.",
        subcommands: [Fuzz.self, Hostile.self])
}

/// ringtgtd and ringtgt-loadgen beside this binary unless given.
func sibling(_ name: String) -> String {
    URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        .appendingPathComponent(name).path
}

struct Fuzz: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Mutated iSCSI and NBD streams against a fresh ringtgtd.")

    @Option(help: "Seconds to fuzz.") var duration: Double = 60
    @Option(help: "Seed (default: from the clock; always printed).") var seed: UInt64?
    @Option(name: .customLong("case"), help: "Replay only this case of --seed (then probe).") var only: Int?
    @Option(help: "Cases per second at most.") var rate: Double = 150
    @Option(name: .customLong("probe-every"), help: "Cases between liveness probes.") var probeEvery: Int = 250
    @Option(help: "iscsi,nbd") var protocols: String = "iscsi,nbd"
    @Option(help: "Reactor cores of the daemon.") var cores: Int = 1
    @Option(help: "ringtgtd binary.") var ringtgtd: String?

    func run() throws {
        let seed = self.seed ?? UInt64(Date().timeIntervalSince1970 * 1000)
        let protos = protocols.split(separator: ",").compactMap { Protocol(rawValue: String($0)) }
        guard !protos.isEmpty else { throw ValidationError("--protocols: iscsi, nbd or both") }
        print("livefuzz: seed \(seed) (replay with --seed \(seed))")
        let d = try LiveDaemon(ringtgtd: ringtgtd ?? sibling("ringtgtd"), cores: cores)
        defer { d.stop() }
        installStop(d)
        print("livefuzz: ringtgtd pid \(d.pid), iSCSI :\(d.iscsiPort), NBD :\(d.nbdPort), metrics :\(d.metricsPort)")
        if let only {
            let c = CaseMaker.make(seed: seed, index: only, protocols: protos)
            print("case \(only): \(c.description)")
            runCase(c, iscsiPort: d.iscsiPort, nbdPort: d.nbdPort)
            let t = try probe(iscsiPort: d.iscsiPort, nbdPort: d.nbdPort)
            print("probe ok in \(String(format: "%.3f", t)) s")
            return
        }
        let t0 = Date()
        _ = try probe(iscsiPort: d.iscsiPort, nbdPort: d.nbdPort)
        let rssStart = d.rssKiB
        var rssWarm: Int? = nil, rssMax = rssStart
        var cases = 0, probes = 1, probeMax = 0.0
        var delivered: [Protocol: Int] = [:]
        var failure: String? = nil
        var recent: [String] = []
        while Date().timeIntervalSince(t0) < duration {
            let c = CaseMaker.make(seed: seed, index: cases, protocols: protos)
            recent.append("case \(cases): \(c.description)")
            if recent.count > 8 { recent.removeFirst() }
            if runCase(c, iscsiPort: d.iscsiPort, nbdPort: d.nbdPort) { delivered[c.proto, default: 0] += 1 }
            cases += 1
            // Pacing, not synchronisation: the rate bound keeps the fuzzer from starving the shared machine.
            let ahead = Double(cases) / rate - Date().timeIntervalSince(t0)
            if ahead > 0 { usleep(UInt32(ahead * 1e6)) }
            if cases % probeEvery == 0 {
                if let death = d.death { failure = death; break }
                do {
                    probeMax = max(probeMax, try probe(iscsiPort: d.iscsiPort, nbdPort: d.nbdPort))
                    probes += 1
                } catch {
                    failure = "probe after case \(cases - 1) failed: \(error)"
                    break
                }
                let rss = d.rssKiB
                // The first probe period touches the buffer pool and the connection table: memory is judged from
                // the end of it.
                if rssWarm == nil { rssWarm = rss }
                rssMax = max(rssMax, rss)
                if cases % (probeEvery * 20) == 0 {
                    print("  \(Int(Date().timeIntervalSince(t0))) s: \(cases) cases, \(probes) probes, RSS \(rss) KiB")
                }
            }
        }
        if failure == nil, let death = d.death { failure = death }
        if failure == nil {
            do { probeMax = max(probeMax, try probe(iscsiPort: d.iscsiPort, nbdPort: d.nbdPort)); probes += 1 } catch {
                failure = "final probe failed: \(error)"
            }
        }
        // Every fuzzed connection is closed: none may stay logged in (a leaked slot or session).
        var leaked = d.loggedInConnections()
        let leakDeadline = Date().addingTimeInterval(FuzzBounds.probeSeconds)
        while let l = leaked, l > 0, Date() < leakDeadline { usleep(100_000); leaked = d.loggedInConnections() }
        let rssEnd = d.rssKiB
        let base = rssWarm ?? rssStart
        // A dead daemon has no RSS: its growth is not judged (the death is the failure).
        let growth = base > 0 && rssEnd > 0 ? Double(rssEnd - base) / Double(base) : 0
        print("livefuzz: seed \(seed), \(cases) cases in \(Int(Date().timeIntervalSince(t0))) s, \(probes) probes (slowest \(String(format: "%.3f", probeMax)) s)")
        print("livefuzz: mutated streams delivered after a valid opening: iSCSI \(delivered[.iscsi] ?? 0), NBD \(delivered[.nbd] ?? 0)")
        print("livefuzz: RSS KiB start \(rssStart), after warm-up \(base), end \(rssEnd), max \(rssMax): \(String(format: "%+.1f", growth * 100))% (\(rssEnd == 0 ? "daemon gone" : growth <= FuzzBounds.rssGrowthFraction ? "flat" : "GROWING"))")
        print("livefuzz: sessions still logged in after the run: \(leaked.map(String.init) ?? "unknown (no metrics)")")
        if failure == nil && growth > FuzzBounds.rssGrowthFraction { failure = "RSS grew \(String(format: "%.1f", growth * 100))%" }
        if failure == nil, let l = leaked, l > 0 { failure = "\(l) sessions stayed logged in after their sockets closed" }
        if let failure {
            print("FAIL: \(failure)")
            print("last cases (replay one with --seed \(seed) --case N):")
            for r in recent { print("  " + r) }
            throw ExitCode(1)
        }
        print("livefuzz: PASS")
    }
}

/// Ctrl-C or SIGTERM stops the daemon too.
func installStop(_ d: LiveDaemon) {
    for sig in [SIGINT, SIGTERM] {
        signal(sig, SIG_IGN)
        let src = DispatchSource.makeSignalSource(signal: sig, queue: .global())
        src.setEventHandler { d.stop(); exit(130) }
        src.resume()
        stopSources.append(src)
    }
}
nonisolated(unsafe) var stopSources: [DispatchSourceSignal] = []

// Progress lines reach a log file as they happen (a long run is watched with tail -f).
setvbuf(stdout, nil, _IOLBF, 0)
LiveFuzz.main()
