import Testing
@testable import SheepProtocol

@Suite struct SheepBackingSpecParsing {
    @Test func tgtForms() throws {
        #expect(try SheepBackingSpec.parse("unix:/var/lib/sheepdog/sock:tgt0")
                == SheepBackingSpec(endpoint: .unix(path: "/var/lib/sheepdog/sock"), vdi: "tgt0"))
        #expect(try SheepBackingSpec.parse("unix:/s:vol:snap-a")
                == SheepBackingSpec(endpoint: .unix(path: "/s"), vdi: "vol", snapshot: .tag("snap-a")))
        #expect(try SheepBackingSpec.parse("unix:/s:vol:12")
                == SheepBackingSpec(endpoint: .unix(path: "/s"), vdi: "vol", snapshot: .id(12)))
        #expect(try SheepBackingSpec.parse("tcp:localhost:7000:vol")
                == SheepBackingSpec(endpoint: .tcp(host: "localhost", port: 7000), vdi: "vol"))
        #expect(try SheepBackingSpec.parse("tcp:10.0.0.1:7001:vol:t")
                == SheepBackingSpec(endpoint: .tcp(host: "10.0.0.1", port: 7001), vdi: "vol", snapshot: .tag("t")))
        #expect(try SheepBackingSpec.parse("tcp:h:7000:vol:3").snapshot == .id(3))
    }

    @Test func allDigitsIsASnapshotIDAnythingElseATag() throws {
        #expect(try SheepBackingSpec.parse("unix:/s:v:007").snapshot == .id(7))
        #expect(try SheepBackingSpec.parse("unix:/s:v:7a").snapshot == .tag("7a"))
        #expect(try SheepBackingSpec.parse("unix:/s:v:-1").snapshot == .tag("-1"))
        #expect(try SheepBackingSpec.parse("unix:/s:v:4294967295").snapshot == .id(UInt32.max))
        #expect(throws: SheepBackingSpecError.snapshotIDOutOfRange("4294967296")) {
            try SheepBackingSpec.parse("unix:/s:v:4294967296")
        }
        #expect(throws: SheepBackingSpecError.snapshotIDZero) { try SheepBackingSpec.parse("unix:/s:v:0") }
    }

    @Test func ipv6HostsInBrackets() throws {
        let s = try SheepBackingSpec.parse("tcp:[::1]:7000:vol")
        #expect(s == SheepBackingSpec(endpoint: .tcp(host: "::1", port: 7000), vdi: "vol"))
        #expect(s.description == "tcp:[::1]:7000:vol")
        #expect(try SheepBackingSpec.parse("tcp:[fe80::1%eth0]:7000:vol:5")
                == SheepBackingSpec(endpoint: .tcp(host: "fe80::1%eth0", port: 7000), vdi: "vol", snapshot: .id(5)))
        #expect(throws: SheepBackingSpecError.unterminatedBracket) { try SheepBackingSpec.parse("tcp:[::1:7000:v") }
        #expect(throws: SheepBackingSpecError.emptyHost) { try SheepBackingSpec.parse("tcp:[]:7000:v") }
        #expect(throws: SheepBackingSpecError.unexpectedAfterBracket("x")) {
            try SheepBackingSpec.parse("tcp:[::1]x:7000:v")
        }
        // An unbracketed IPv6 literal is named as such rather than misparsed.
        #expect(throws: SheepBackingSpecError.unbracketedIPv6("fe80::1:7000:v")) {
            try SheepBackingSpec.parse("tcp:fe80::1:7000:v")
        }
        #expect(throws: SheepBackingSpecError.missingPort) { try SheepBackingSpec.parse("tcp:[::1]") }
    }

    @Test func emptyFieldsAreErrorsNotCollapsed() {
        #expect(throws: SheepBackingSpecError.emptyField("socket path")) { try SheepBackingSpec.parse("unix::/s:v") }
        #expect(throws: SheepBackingSpecError.emptyField("VDI name")) { try SheepBackingSpec.parse("unix:/s::v") }
        #expect(throws: SheepBackingSpecError.emptyField("snapshot tag or id")) {
            try SheepBackingSpec.parse("unix:/s:v:")
        }
        #expect(throws: SheepBackingSpecError.emptyField("VDI name")) { try SheepBackingSpec.parse("tcp:h:7000:") }
    }

    @Test func preciseErrors() {
        #expect(throws: SheepBackingSpecError.empty) { try SheepBackingSpec.parse("") }
        #expect(throws: SheepBackingSpecError.unknownScheme("")) { try SheepBackingSpec.parse(":::") }
        #expect(throws: SheepBackingSpecError.unknownScheme("udp")) { try SheepBackingSpec.parse("udp:h:1:v") }
        #expect(throws: SheepBackingSpecError.unknownScheme("vol")) { try SheepBackingSpec.parse("vol") }
        #expect(throws: SheepBackingSpecError.missingSocketPath) { try SheepBackingSpec.parse("unix") }
        #expect(throws: SheepBackingSpecError.missingVDI) { try SheepBackingSpec.parse("unix:/s") }
        #expect(throws: SheepBackingSpecError.missingHost) { try SheepBackingSpec.parse("tcp:") }
        #expect(throws: SheepBackingSpecError.missingPort) { try SheepBackingSpec.parse("tcp:host") }
        #expect(throws: SheepBackingSpecError.invalidPort("70a0")) { try SheepBackingSpec.parse("tcp:h:70a0:v") }
        #expect(throws: SheepBackingSpecError.portOutOfRange("70000")) { try SheepBackingSpec.parse("tcp:h:70000:v") }
        #expect(throws: SheepBackingSpecError.portOutOfRange("0")) { try SheepBackingSpec.parse("tcp:h:0:v") }
        #expect(throws: SheepBackingSpecError.missingVDI) { try SheepBackingSpec.parse("tcp:h:7000") }
        #expect(throws: SheepBackingSpecError.unexpectedToken("extra")) {
            try SheepBackingSpec.parse("unix:/s:v:t:extra")
        }
        #expect(throws: SheepBackingSpecError.vdiNameTooLong(bytes: 256, max: 255)) {
            try SheepBackingSpec.parse("unix:/s:" + String(repeating: "v", count: 256))
        }
        #expect(throws: SheepBackingSpecError.tagTooLong(bytes: 300, max: 255)) {
            try SheepBackingSpec.parse("unix:/s:v:" + String(repeating: "t", count: 300))
        }
        #expect(throws: SheepBackingSpecError.socketPathTooLong(bytes: 108, max: 107)) {
            try SheepBackingSpec.parse("unix:/" + String(repeating: "p", count: 107) + ":v")
        }
    }

    @Test func errorMessagesNameTheProblem() {
        #expect(SheepBackingSpecError.invalidPort("x").description.contains("tcp:[::1]:7000:VDI"))
        #expect(SheepBackingSpecError.unknownScheme("udp").description.contains("unix:PATH:VDI"))
    }

    @Test func lookupArguments() throws {
        let tag = try SheepBackingSpec.parse("unix:/s:v:t")
        #expect(tag.lookupTag == "t" && tag.lookupSnapID == 0 && tag.isSnapshot)
        let id = try SheepBackingSpec.parse("unix:/s:v:4")
        #expect(id.lookupTag == "" && id.lookupSnapID == 4 && id.isSnapshot)
        let working = try SheepBackingSpec.parse("unix:/s:v")
        #expect(!working.isSnapshot && working.description == "unix:/s:v")
    }
}
