import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import ISCSI

/// Answers of the target to single keys and key sets, by RFC 7143 §13 rule.
@Suite struct NegotiationTests {
    private func answer(_ key: String, _ value: String, defaults: TargetKeyDefaults = TargetKeyDefaults(),
                        stage: LoginStage = .operational, session: SessionType = .normal) -> String? {
        var n = KeyNegotiator(defaults: defaults)
        let out = try? n.answer([TextKeyValue(key, value)], stage: stage, sessionType: session)
        return out?.first(where: { $0.key == key })?.value
    }

    private func negotiate(_ pairs: [(String, String)], defaults: TargetKeyDefaults = TargetKeyDefaults(),
                           session: SessionType = .normal) throws -> ([String: String], SessionParameters) {
        var n = KeyNegotiator(defaults: defaults)
        n.setIdentity(sessionType: session, initiatorName: "iqn.i", initiatorAlias: nil, targetName: "iqn.t", portalGroupTag: 1)
        let out = try n.answer(pairs.map { TextKeyValue($0.0, $0.1) }, stage: .operational, sessionType: session)
        var d: [String: String] = [:]
        for p in out { d[p.key] = p.value }
        return (d, try n.finish())
    }

    @Test func digestPicksFirstAllowedOfInitiatorsList() {
        #expect(answer("HeaderDigest", "CRC32C,None") == "CRC32C")
        #expect(answer("HeaderDigest", "None,CRC32C") == "None")
        #expect(answer("DataDigest", "MD5,CRC32C") == "CRC32C")
        #expect(answer("DataDigest", "MD5") == "Reject")
        #expect(answer("HeaderDigest", "crc32c") == "Reject")
        let crcOnly = TargetKeyDefaults(headerDigest: [.crc32c])
        #expect(answer("HeaderDigest", "None,CRC32C", defaults: crcOnly) == "CRC32C")
        #expect(answer("HeaderDigest", "None", defaults: crcOnly) == "Reject")
    }

    @Test func forbiddenDigestDefaultFailsTheLogin() throws {
        let crcOnly = TargetKeyDefaults(headerDigest: [.crc32c])
        #expect(throws: NegotiationFailure.self) { try self.negotiate([("HeaderDigest", "None")], defaults: crcOnly) }
        #expect(throws: NegotiationFailure.self) { try self.negotiate([], defaults: crcOnly) }
        let (_, p) = try negotiate([("HeaderDigest", "CRC32C"), ("DataDigest", "CRC32C")])
        #expect(p.headerDigest == .crc32c && p.dataDigest == .crc32c)
    }

    @Test func maxConnectionsIsMinimumWithinRange() {
        #expect(answer("MaxConnections", "4") == "1")
        #expect(answer("MaxConnections", "1") == "1")
        #expect(answer("MaxConnections", "0") == "Reject")
        #expect(answer("MaxConnections", "65536") == "Reject")
        #expect(answer("MaxConnections", "x") == "Reject")
    }

    @Test func initialR2TIsOr() {
        #expect(answer("InitialR2T", "Yes") == "Yes")
        #expect(answer("InitialR2T", "No") == "No")
        #expect(answer("InitialR2T", "No", defaults: TargetKeyDefaults(initialR2T: true)) == "Yes")
        #expect(answer("InitialR2T", "yes") == "Reject")
    }

    @Test func immediateDataIsAnd() {
        #expect(answer("ImmediateData", "Yes") == "Yes")
        #expect(answer("ImmediateData", "No") == "No")
        #expect(answer("ImmediateData", "Yes", defaults: TargetKeyDefaults(immediateData: false)) == "No")
        #expect(answer("ImmediateData", "Maybe") == "Reject")
    }

    @Test func maxRecvDataSegmentLengthIsDeclarativeWithRange() throws {
        #expect(answer("MaxRecvDataSegmentLength", "512") == nil)
        #expect(answer("MaxRecvDataSegmentLength", "511") == "Reject")
        #expect(answer("MaxRecvDataSegmentLength", "16777215") == nil)
        #expect(answer("MaxRecvDataSegmentLength", "16777216") == "Reject")
        let (_, p) = try negotiate([("MaxRecvDataSegmentLength", "0x1000")])
        #expect(p.initiatorMaxRecvDataSegmentLength == 4096)
        let (_, q) = try negotiate([])
        #expect(q.initiatorMaxRecvDataSegmentLength == 8192)
    }

    @Test func burstLengthsAreMinimumAndFirstNotAboveMax() throws {
        #expect(answer("MaxBurstLength", "16776192") == "262144")
        #expect(answer("MaxBurstLength", "1024") == "1024")
        #expect(answer("MaxBurstLength", "100") == "Reject")
        #expect(answer("FirstBurstLength", "262144") == "65536")
        #expect(answer("FirstBurstLength", "4096") == "4096")
        #expect(answer("FirstBurstLength", "0x") == "Reject")
        let (a, p) = try negotiate([("FirstBurstLength", "65536"), ("MaxBurstLength", "8192")])
        #expect(a["FirstBurstLength"] == "8192")
        #expect(p.maxBurstLength == 8192 && p.firstBurstLength == 8192)
    }

    @Test func firstBurstIrrelevantWithoutUnsolicitedData() throws {
        // FirstBurstLength before the keys that make it irrelevant, in the same text.
        let (a, p) = try negotiate([("FirstBurstLength", "65536"), ("InitialR2T", "Yes"), ("ImmediateData", "No")])
        #expect(a["FirstBurstLength"] == "Irrelevant")
        #expect(p.unsolicitedDataLimit == 0)
        let (b, _) = try negotiate([("FirstBurstLength", "65536"), ("InitialR2T", "Yes"), ("ImmediateData", "Yes")])
        #expect(b["FirstBurstLength"] == "65536")
    }

    @Test func time2WaitIsMaxAndTime2RetainIsMin() {
        #expect(answer("DefaultTime2Wait", "0") == "2")
        #expect(answer("DefaultTime2Wait", "10") == "10")
        #expect(answer("DefaultTime2Wait", "3601") == "Reject")
        #expect(answer("DefaultTime2Retain", "20") == "0")
        #expect(answer("DefaultTime2Retain", "5", defaults: TargetKeyDefaults(defaultTime2Retain: 20)) == "5")
        #expect(answer("DefaultTime2Retain", "3600") == "0")
        #expect(answer("DefaultTime2Retain", "-1") == "Reject")
    }

    @Test func outstandingR2TOrderingAndRecoveryLevel() {
        #expect(answer("MaxOutstandingR2T", "8") == "1")
        #expect(answer("MaxOutstandingR2T", "0") == "Reject")
        #expect(answer("DataPDUInOrder", "No") == "Yes")
        #expect(answer("DataSequenceInOrder", "No") == "Yes")
        #expect(answer("DataSequenceInOrder", "Perhaps") == "Reject")
        #expect(answer("ErrorRecoveryLevel", "2") == "0")
        #expect(answer("ErrorRecoveryLevel", "3") == "Reject")
    }

    @Test func obsoleteMarkerKeys() {
        #expect(answer("IFMarker", "No") == "No")
        #expect(answer("OFMarker", "Yes") == "No")
        #expect(answer("OFMarkInt", "2048~8192") == "Reject")
        #expect(answer("IFMarkInt", "2048") == "Reject")
    }

    @Test func authMethodOnlyNoneAndOnlyInSecurityStage() {
        #expect(answer("AuthMethod", "CHAP,None", stage: .security) == "None")
        #expect(answer("AuthMethod", "None", stage: .security) == "None")
        #expect(answer("AuthMethod", "CHAP", stage: .security) == "Reject")
        #expect(answer("AuthMethod", "None", stage: .operational) == "Irrelevant")
    }

    @Test func unknownAndVendorKeysAreNotUnderstood() {
        #expect(answer("FooBar", "1") == "NotUnderstood")
        #expect(answer("X-com.example.Thing", "1") == "NotUnderstood")
        #expect(answer("X#NodeArchitecture", "Linux") == "NotUnderstood")
        #expect(answer("CHAP_A", "5", stage: .security) == "NotUnderstood")
    }

    @Test func wrongPhaseAndWrongSenderKeysAreIrrelevant() {
        #expect(answer("SendTargets", "All") == "Irrelevant")
        #expect(answer("InitialR2T", "Yes", stage: .fullFeature) == "Irrelevant")
        #expect(answer("TargetAlias", "x") == "Irrelevant")
        #expect(answer("TargetName", "iqn.t", session: .discovery) == "Irrelevant")
        #expect(answer("TargetName", "iqn.t", session: .normal) == nil)
        for key in ["MaxConnections", "InitialR2T", "ImmediateData", "MaxBurstLength", "FirstBurstLength",
                    "MaxOutstandingR2T", "DataPDUInOrder", "DataSequenceInOrder"] {
            #expect(answer(key, "1", session: .discovery) == "Irrelevant", "\(key)")
        }
        #expect(answer("HeaderDigest", "None", session: .discovery) == "None")
    }

    @Test func taskReportingPicksRFC3720() {
        #expect(answer("TaskReporting", "FastAbort,RFC3720") == "RFC3720")
        #expect(answer("TaskReporting", "FastAbort") == "Reject")
    }

    @Test func keyNegotiatedTwiceFailsAcrossTexts() throws {
        var n = KeyNegotiator(defaults: TargetKeyDefaults())
        _ = try n.answer([TextKeyValue("MaxBurstLength", "65536")], stage: .operational, sessionType: .normal)
        #expect(throws: NegotiationFailure(.initiatorError,
                                           reason: "key MaxBurstLength negotiated twice in one login")) {
            _ = try n.answer([TextKeyValue("MaxBurstLength", "65536")], stage: .operational, sessionType: .normal)
        }
    }

    @Test func adminParamsAreValidatedAndNamed() throws {
        let d = try TargetKeyDefaults.from(params: ["HeaderDigest": "CRC32C,None", "maxrecvdatasegmentlength": "65536",
                                                    "InitialR2T": "Yes", "TargetAlias": "fast disk"])
        #expect(d.headerDigest == [.crc32c, .none])
        #expect(d.maxRecvDataSegmentLength == 65536)
        #expect(d.initialR2T)
        #expect(d.targetAlias == "fast disk")
        #expect(throws: KeyError.unknownKey("Bogus")) { try TargetKeyDefaults.from(params: ["Bogus": "1"]) }
        #expect(throws: KeyError.invalidValue(key: "MaxBurstLength", value: "100", reason: "must be 512...16777215")) {
            try TargetKeyDefaults.from(params: ["MaxBurstLength": "100"])
        }
        #expect(throws: KeyError.invalidValue(key: "HeaderDigest", value: "MD5", reason: "each item must be None or CRC32C")) {
            try TargetKeyDefaults.from(params: ["HeaderDigest": "MD5"])
        }
        #expect(throws: KeyError.self) { try TargetKeyDefaults.from(params: ["MaxConnections": "2"]) }
        #expect(throws: KeyError.invalidValue(key: "FirstBurstLength", value: "131072", reason: "exceeds MaxBurstLength 65536")) {
            try TargetKeyDefaults.from(params: ["FirstBurstLength": "131072", "MaxBurstLength": "65536"])
        }
    }

    @Test func numberSyntax() {
        #expect(KeyValueSyntax.number("0") == 0)
        #expect(KeyValueSyntax.number("0x10") == 16)
        #expect(KeyValueSyntax.number("0X1f") == 31)
        #expect(KeyValueSyntax.number("") == nil)
        #expect(KeyValueSyntax.number("+1") == nil)
        #expect(KeyValueSyntax.number("1e3") == nil)
        #expect(KeyValueSyntax.number("99999999999999999999") == nil)
    }
}
