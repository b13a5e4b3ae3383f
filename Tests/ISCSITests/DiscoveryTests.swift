import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import ISCSI

@Suite struct DiscoveryTests {
    static let targets: [(name: String, addresses: [String])] = [
        ("iqn.2026-01.org.ringtgt:a", ["192.0.2.1:3260,1", "[2001:db8::1]:3260,1"]),
        ("iqn.2026-01.org.ringtgt:b", []),
    ]

    private func pairs(_ b: [UInt8]) -> [TextKeyValue] {
        // TargetName/TargetAddress repeat, so split by hand instead of TextKeys.parse (which refuses duplicates).
        b.split(separator: 0).map { s in
            let str = String(decoding: s, as: UTF8.self)
            let eq = str.firstIndex(of: "=") ?? str.endIndex
            return TextKeyValue(String(str[..<eq]), String(str[str.index(after: eq)...]))
        }
    }

    @Test func allOnDiscoverySessionListsEveryTargetWithAddresses() {
        let b = Discovery.sendTargetsResponse(request: "All", targets: Self.targets, sessionTarget: nil)
        #expect(pairs(b) == [
            TextKeyValue("TargetName", "iqn.2026-01.org.ringtgt:a"),
            TextKeyValue("TargetAddress", "192.0.2.1:3260,1"),
            TextKeyValue("TargetAddress", "[2001:db8::1]:3260,1"),
            TextKeyValue("TargetName", "iqn.2026-01.org.ringtgt:b"),
        ])
        #expect(b.last == 0)
    }

    @Test func allOnNormalSessionIsRejected() {
        let b = Discovery.sendTargetsResponse(request: "All", targets: Self.targets, sessionTarget: "iqn.2026-01.org.ringtgt:a")
        #expect(pairs(b) == [TextKeyValue("SendTargets", "Reject")])
    }

    @Test func emptyValueMeansTheSessionsTarget() {
        let b = Discovery.sendTargetsResponse(request: "", targets: Self.targets, sessionTarget: "IQN.2026-01.org.ringtgt:b")
        #expect(pairs(b) == [TextKeyValue("TargetName", "iqn.2026-01.org.ringtgt:b")])
        #expect(Discovery.sendTargetsResponse(request: "", targets: Self.targets, sessionTarget: nil).isEmpty)
    }

    @Test func namedTargetOnlyIfVisible() {
        let b = Discovery.sendTargetsResponse(request: "iqn.2026-01.org.ringtgt:a", targets: Self.targets, sessionTarget: nil)
        #expect(pairs(b).count == 3)
        #expect(Discovery.sendTargetsResponse(request: "iqn.nope", targets: Self.targets, sessionTarget: nil).isEmpty)
    }

    @Test func boundDropsWholeTargets() {
        let many = (0..<100).map { (name: "iqn.2026-01.org.ringtgt:t\($0)", addresses: ["10.0.0.1:3260,1"]) }
        let b = Discovery.sendTargetsResponse(request: "All", targets: many, sessionTarget: nil, maxBytes: 500)
        #expect(b.count <= 500)
        let p = pairs(b)
        #expect(p.count % 2 == 0 && p.count > 0)
        #expect(p.last?.key == "TargetAddress")
    }

    @Test func targetAddressFormat() {
        #expect(Discovery.targetAddress(host: "192.0.2.1", port: 3260, portalGroupTag: 1) == "192.0.2.1:3260,1")
        #expect(Discovery.targetAddress(host: "::1", port: 3261, portalGroupTag: 2) == "[::1]:3261,2")
    }

    // Text exchanges in full feature phase.
    private func env(_ mrdsl: Int = 8192, _ st: SessionType = .discovery) -> TextEnvironment {
        TextEnvironment(maxSendDataSegmentLength: mrdsl, sessionType: st) { req in
            Discovery.sendTargetsResponse(request: req, targets: Self.targets, sessionTarget: st == .normal ? Self.targets[0].name : nil)
        }
    }

    private func send(_ x: inout TextExchange, _ req: TextRequest, _ text: [UInt8], _ e: TextEnvironment) -> TextOutcome {
        text.withUnsafeBytes { x.receive(req, data: $0, env: e) }
    }

    private func response(_ o: TextOutcome) -> TextResponse? {
        if case .respond(let r) = o { return r }
        return nil
    }

    @Test func sendTargetsInOneResponse() throws {
        var x = TextExchange()
        let o = send(&x, TextRequest(isFinal: true, itt: 9), TextKeys.encode([TextKeyValue("SendTargets", "All")]), env())
        let r = try #require(response(o))
        #expect(r.isFinal && !r.continueFlag && r.itt == 9 && r.ttt == 0xFFFF_FFFF)
        #expect(pairs(r.text).first == TextKeyValue("TargetName", "iqn.2026-01.org.ringtgt:a"))
    }

    @Test func longResponseContinuesWithTargetTransferTag() throws {
        var x = TextExchange()
        let many = (0..<60).map { (name: "iqn.2026-01.org.ringtgt:target-number-\($0)", addresses: ["192.0.2.1:3260,1"]) }
        let whole = Discovery.sendTargetsResponse(request: "All", targets: many, sessionTarget: nil)
        #expect(whole.count > 1024)
        let e = TextEnvironment(maxSendDataSegmentLength: 512, sessionType: .discovery) { _ in whole }
        var got: [UInt8] = []
        var r = try #require(response(send(&x, TextRequest(isFinal: true, itt: 3), TextKeys.encode([TextKeyValue("SendTargets", "All")]), e)))
        var pdus = 1
        while r.continueFlag {
            #expect(!r.isFinal && r.ttt != 0xFFFF_FFFF && r.text.count == 512)
            got += r.text
            // A foreign TTT is refused, and does not disturb the exchange.
            #expect(send(&x, TextRequest(isFinal: true, itt: 3, ttt: r.ttt &+ 100), [], e) == .reject(reason: 0x09))
            r = try #require(response(send(&x, TextRequest(isFinal: true, itt: 3, ttt: r.ttt), [], e)))
            pdus += 1
            if pdus > 100 { break }
        }
        got += r.text
        #expect(r.isFinal && r.ttt == 0xFFFF_FFFF)
        #expect(got == whole)
        #expect(pdus == (whole.count + 511) / 512)
    }

    @Test func initiatorContinuationIsReassembled() throws {
        var x = TextExchange()
        let all = TextKeys.encode([TextKeyValue("SendTargets", "All")])
        let r1 = try #require(response(send(&x, TextRequest(isFinal: false, continueFlag: true, itt: 4), Array(all[..<5]), env())))
        #expect(!r1.isFinal && r1.text.isEmpty && r1.ttt != 0xFFFF_FFFF)
        let r2 = try #require(response(send(&x, TextRequest(isFinal: true, itt: 4, ttt: r1.ttt), Array(all[5...]), env())))
        #expect(r2.isFinal && pairs(r2.text).count == 4)
    }

    @Test func otherKeysInFullFeaturePhase() throws {
        var x = TextExchange()
        let req = TextKeys.encode([TextKeyValue("MaxRecvDataSegmentLength", "65536"), TextKeyValue("InitialR2T", "Yes"),
                                   TextKeyValue("X-com.example.foo", "1")])
        let r = try #require(response(send(&x, TextRequest(isFinal: true, itt: 1), req, env(8192, .normal))))
        #expect(pairs(r.text) == [TextKeyValue("InitialR2T", "Irrelevant"), TextKeyValue("X-com.example.foo", "NotUnderstood")])
        #expect(x.declaredMaxRecvDataSegmentLength == 65536)
    }

    @Test func protocolErrors() {
        var x = TextExchange()
        #expect(send(&x, TextRequest(isFinal: true, continueFlag: true, itt: 1), [], env()) == .reject(reason: 0x04))
        #expect(send(&x, TextRequest(isFinal: true, itt: 1, ttt: 77), [], env()) == .reject(reason: 0x09))
        #expect(send(&x, TextRequest(isFinal: true, itt: 1), Array("novalue\0".utf8), env()) == .reject(reason: 0x04))
    }

    @Test func nonFinalRequestKeepsExchangeOpen() throws {
        var x = TextExchange()
        let r1 = try #require(response(send(&x, TextRequest(isFinal: false, itt: 2), TextKeys.encode([TextKeyValue("X-a", "1")]), env())))
        #expect(!r1.isFinal && !r1.continueFlag && r1.ttt != 0xFFFF_FFFF)
        let r2 = try #require(response(send(&x, TextRequest(isFinal: true, itt: 2, ttt: r1.ttt), [], env())))
        #expect(r2.isFinal && r2.ttt == 0xFFFF_FFFF && r2.text.isEmpty)
    }
}
