import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import SheepTestServer
import SheepProtocol
import TestSupport

@Suite struct Persistence {
    @Test func dataDirSurvivesAStopAndStart() throws {
        let dir = makeTempDirectory()
        defer { removeTree(dir) }
        let a = pattern(21, 10_000), b = pattern(22, 10_000)
        var working: UInt32 = 0
        try withServer({ $0.dataDirectory = dir; $0.cluster.copies = 2 }) { server in
            let d = try server.dog()
            try d.create(name: "vol", size: 64 << 20)
            try d.write(name: "vol", offset: 4_190_000, data: a)
            try d.snapshot(name: "vol", tag: "A")
            try d.write(name: "vol", offset: 4_190_000, data: b)
            working = try d.client.findVDI(name: "vol")
        }
        // The restart takes the cluster settings from the data dir, not from the options.
        try withServer({ $0.dataDirectory = dir; $0.cluster.copies = 3 }) { server in
            let d = try server.dog()
            #expect(try d.client.findVDI(name: "vol") == working)
            var snap: [UInt8] = [], work: [UInt8] = []
            try d.read(name: "vol", snapshot: .tag("A"), offset: 4_190_000, length: 10_000) { snap += $0 }
            try d.read(name: "vol", offset: 4_190_000, length: 10_000) { work += $0 }
            #expect(snap == a && work == b)
            // The snapshot is still read-only after the restart (VDI state rebuilt from the inodes).
            let old = try d.client.findVDI(name: "vol", tag: "A")
            #expect(try d.client.writeObject(SheepOID.data(vid: old, index: 0), offset: 0, data: [1]).result == .readonly)
            #expect(try d.client.lookup(.getVDIInfo, name: "vol").header.vdiCopies == 2)
            // Allocation carries on after the in-use VIDs.
            #expect(try d.client.newVDI(name: "vol2", size: 1 << 20).result == .success)
            let (next, _) = try d.snapshot(name: "vol", tag: "B")
            #expect(next == working + 1)
        }
    }

    @Test func killedServerProcessKeepsEveryAcknowledgedWrite() throws {
        let dir = makeTempDirectory(), logs = makeTempDirectory()
        defer { removeTree(dir); removeTree(logs) }
        func startChild() throws -> (ToolProcess, UInt16) {
            let (child, lines) = try startServerProcess(["--port", "0", "--data-dir", dir, "--log-level", "error"], logDir: logs)
            guard let port = SheepTestServerFixture.address(lines, "listening tcp ").flatMap({ UInt16(exactly: $0.port) }) else {
                child.killNow()
                throw SysError("server printed no TCP port: \(lines)", EIO)
            }
            return (child, port)
        }
        var (child, port) = try startChild()
        var written: [(UInt64, [UInt8])] = []
        do {
            defer { child.killNow() }
            let d = DogOperations(client: try SheepClient(endpoint: .tcp(host: "127.0.0.1", port: port)))
            try d.create(name: "vol", size: 256 << 20)
            for i in 0..<20 {
                let off = UInt64(i) * 7_000_000 + UInt64(i) * 512
                let data = pattern(UInt8(i), 8192)
                try d.write(name: "vol", offset: off, data: data)
                written.append((off, data))
            }
        }
        (child, port) = try startChild()
        defer { child.terminate() }
        let d = DogOperations(client: try SheepClient(endpoint: .tcp(host: "127.0.0.1", port: port)))
        for (off, data) in written {
            var back: [UInt8] = []
            try d.read(name: "vol", offset: off, length: UInt64(data.count)) { back += $0 }
            #expect(back == data)
        }
    }
}

@Suite struct ServerProcess {
    @Test func announcesEveryListenerAndStopsCleanlyOnSIGTERM() throws {
        let dir = makeTempDirectory()
        defer { removeTree(dir) }
        let ready = dir + "/ready", sock = dir + "/sock"
        let child = try ToolProcess(serverBinary(), ["--port", "0", "--unix", sock, "--admin-port", "0", "--ready-file", ready,
                                                     "--order", "fifo", "--log-level", "error"],
                                    logDir: URL(fileURLWithPath: dir), label: "server", stdout: .pipe)
        defer { child.killNow() }
        let lines = try child.waitForLines(timeoutSeconds: SheepFixtureLimits.serverReadySeconds) { $0.count >= 3 }
        try #require(lines.count == 3)
        #expect(lines[0].hasPrefix("listening tcp 127.0.0.1:"))
        #expect(lines[1] == "listening unix \(sock)")
        #expect(lines[2].hasPrefix("admin tcp 127.0.0.1:"))
        // The ready file is written (atomically) before the lines are printed.
        #expect(String(decoding: readWholeFile(ready) ?? [], as: UTF8.self) == lines.joined(separator: "\n") + "\n")
        let port = try #require(UInt16(lines[0].split(separator: ":").last ?? ""))
        let admin = try #require(UInt16(lines[2].split(separator: ":").last ?? ""))
        let viaTCP = try SheepClient(endpoint: .tcp(host: "127.0.0.1", port: port))
        let viaUnix = try SheepClient(endpoint: .unix(path: sock))
        let vid = try viaTCP.newVDI(name: "both", size: 1 << 20).header.vdiID
        #expect(try viaUnix.findVDI(name: "both") == vid)
        #expect(try adminCommand(port: admin, "ping") == "ok pong")
        #expect(child.terminate(), "exits on SIGTERM alone")
        let r = child.result(timedOut: false)
        #expect(!r.killedBySignal && r.exitStatus == 0, "exit status 0 after SIGTERM: \(r)")
        #expect(access(sock, F_OK) != 0, "the unix socket is removed")
    }
}

@Suite struct DogCommandLine {
    @Test func sizesParseLikeDog() {
        #expect(parseDogSize("100") == 100)
        #expect(parseDogSize("4K") == 4096)
        #expect(parseDogSize("1.5G") == 1_610_612_736)
        #expect(parseDogSize("10m") == 10 << 20)
        #expect(parseDogSize("2T") == 2 << 40)
        #expect(parseDogSize("1X") == nil)
        #expect(parseDogSize("") == nil)
        #expect(parseDogSnapshot("3") == .id(3))
        #expect(parseDogSnapshot("snap") == .tag("snap"))
        #expect(parseDogSnapshot(nil) == .working)
    }

    @Test func cliCreatesWritesReadsAndListsAgainstARunningServer() throws {
        try withServer({ $0.unixPath = "/tmp/sheep-cli-\(getpid()).sock" }) { server in
            let port = String(try #require(server.tcpPort))
            #expect(try runTool(["dog", "vdi", "create", "cli", "64M", "-p", port]).status == 0)
            let data = pattern(31, 10_000)
            let w = try runTool(["dog", "vdi", "write", "cli", "4190000", "10000", "-p", port], stdin: data)
            #expect(w.status == 0)
            let r = try runTool(["dog", "vdi", "read", "cli", "4190000", "10000", "--unix", try #require(server.unixPath)])
            #expect(r.status == 0 && r.stdout == data)
            #expect(try runTool(["dog", "vdi", "snapshot", "-s", "t1", "cli", "-p", port]).status == 0)
            #expect(try runTool(["dog", "vdi", "clone", "-s", "t1", "cli", "cli2", "-p", port]).status == 0)
            let list = String(decoding: try runTool(["dog", "vdi", "list", "-r", "-p", port]).stdout, as: UTF8.self)
            let lines = list.split(separator: "\n").map(String.init).sorted()
            #expect(lines.count == 3)
            let snapVID = String(SheepVDIName.firstCandidateVID("cli"), radix: 16)
            #expect(lines.contains { $0.hasPrefix("s cli 1 67108864 8388608 0 ") && $0.hasSuffix(" \(snapVID) 3 t1 22") })
            #expect(lines.contains { $0.hasPrefix("c cli2 0 67108864 0 8388608 ") })
            #expect(lines.contains { $0.hasPrefix("= cli 0 67108864 0 8388608 ") })
            // Lock, unlock through the CLI, lock again.
            let c = try server.client()
            #expect(try c.lookup(.lockVDI, name: "cli").result == .success)
            #expect(try c.lookup(.lockVDI, name: "cli").result == .vdiLocked)
            #expect(try runTool(["dog", "vdi", "lock", "unlock", "cli", "-p", port]).status == 0)
            #expect(try c.lookup(.lockVDI, name: "cli").result == .success)
            // Delete and a failing command.
            #expect(try runTool(["dog", "vdi", "delete", "cli2", "-p", port]).status == 0)
            #expect(try c.lookup(.getVDIInfo, name: "cli2").result == .noVDI)
            #expect(try runTool(["dog", "vdi", "delete", "cli2", "-p", port]).status != 0)
            #expect(try runTool(["dog", "vdi", "create", "cli", "1M", "-p", port]).status != 0)  // VDI_EXIST
        }
    }
}
