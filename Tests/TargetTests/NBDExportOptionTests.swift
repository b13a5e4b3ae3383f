// The daemon's NBD options (Control/NBDExportOption.swift, Reactor's portals): qemu-nbd's sheepdog names,
// --export, and the NBD port.
import Testing
@testable import Target
@testable import Reactor
@testable import NBD

@Suite struct NBDExportOptionTests {
    @Test func qemuSheepdogFilenamesMapToTgtSpecs() throws {
        func spec(_ s: String) throws -> String { try NBDExportOption.sheepdogSpec(s).description }
        #expect(try spec("sheepdog:image") == "tcp:127.0.0.1:7000:image")
        #expect(try spec("sheepdog:image:3") == "tcp:127.0.0.1:7000:image:3")
        #expect(try spec("sheepdog:image:snap1") == "tcp:127.0.0.1:7000:image:snap1")
        #expect(try spec("sheepdog:sheep1:7001:image") == "tcp:sheep1:7001:image")
        #expect(try spec("sheepdog:sheep1:7001:image:tag") == "tcp:sheep1:7001:image:tag")
        #expect(try spec("sheepdog:///image") == "tcp:127.0.0.1:7000:image")
        #expect(try spec("sheepdog://host:7002/image#4") == "tcp:host:7002:image:4")
        #expect(try spec("sheepdog+tcp://[::1]:7003/image") == "tcp:[::1]:7003:image")
        #expect(try spec("sheepdog+unix:///image?socket=/var/lib/sheepdog/sock#t") == "unix:/var/lib/sheepdog/sock:image:t")
        #expect(throws: NBDExportOption.ParseError.self) { try spec("sheepdog+unix:///image") }
        #expect(throws: NBDExportOption.ParseError.self) { try spec("sheepdog:h:notaport:image") }
        #expect(throws: NBDExportOption.ParseError.self) { try spec("sheepdog:") }
    }

    @Test func exportOptionTakesANameAndAPathOrURI() throws {
        #expect(try NBDExportOption.parse("disk=sheepdog:image")
                == NBDExportOption(name: "disk", bstype: "sheepdog", backingStore: "tcp:127.0.0.1:7000:image"))
        #expect(try NBDExportOption.parse("/var/lib/disk.img")
                == NBDExportOption(name: nil, bstype: "rdwr", backingStore: "/var/lib/disk.img"))
        #expect(try NBDExportOption.parse("sheepdog+unix:///v?socket=/s", defaultBSType: "rdwr").bstype == "sheepdog")
        #expect(try NBDExportOption.parse("unix:/sock:vdi", defaultBSType: "sheepdog")
                == NBDExportOption(name: nil, bstype: "sheepdog", backingStore: "unix:/sock:vdi"))
        #expect(throws: NBDExportOption.ParseError.self) { try NBDExportOption.parse("=x") }
    }

    @Test func nbdPortalsDefaultToTheIANAPort() {
        #expect(Portal.parse("127.0.0.1", defaultPort: Portal.nbdDefaultPort) == Portal(host: "127.0.0.1", port: 10809))
        #expect(Portal.parse("[::1]:0", defaultPort: Portal.nbdDefaultPort) == Portal(host: "::1", port: 0))
    }
}
