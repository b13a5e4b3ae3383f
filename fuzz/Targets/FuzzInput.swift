// What every fuzz target shares: a reader that turns the fuzzer's bytes into decisions, and the invariant
// check that stops a libFuzzer run (a trap it reports as a crash) or is recorded by the corpus replay tests.

/// Consumes the input front to back; once it is exhausted every read returns zeros, so a target never has to
/// test for the end before asking.
public struct FuzzInput {
    let data: UnsafeRawBufferPointer
    public private(set) var offset = 0

    public init(_ data: UnsafeRawBufferPointer) { self.data = data }

    public var isEmpty: Bool { offset >= data.count }
    public var remaining: Int { max(0, data.count - offset) }

    public mutating func byte() -> UInt8 {
        guard offset < data.count else { return 0 }
        defer { offset += 1 }
        return data[offset]
    }

    public mutating func bool() -> Bool { byte() & 1 != 0 }

    public mutating func u16() -> UInt16 { UInt16(byte()) << 8 | UInt16(byte()) }

    public mutating func u32() -> UInt32 { UInt32(u16()) << 16 | UInt32(u16()) }

    public mutating func u64() -> UInt64 { UInt64(u32()) << 32 | UInt64(u32()) }

    /// 0 ..< n (n > 0).
    public mutating func below(_ n: Int) -> Int { Int(u16()) % n }

    /// Up to `count` bytes, fewer at the end of the input.
    public mutating func bytes(_ count: Int) -> [UInt8] {
        let n = min(max(0, count), remaining)
        defer { offset += n }
        return Array(data[offset ..< offset + n])
    }

    /// Passes over up to `count` bytes (a payload the target only skips); copies nothing.
    public mutating func skip(_ count: Int) { offset += min(max(0, count), remaining) }

    /// A length-prefixed chunk (16-bit length), so one input carries a sequence of messages the mutator can
    /// grow and shrink one at a time.
    public mutating func chunk(max: Int = 65_535) -> [UInt8] { bytes(Int(u16()) % (max + 1)) }

    /// Everything left.
    public mutating func rest() -> [UInt8] { bytes(remaining) }
}

public enum FuzzCheck {
    /// Called with a message when an invariant does not hold. libFuzzer runs trap (the input is saved as a
    /// crash); the replay tests record the message instead.
    nonisolated(unsafe) public static var onFailure: (String) -> Void = { message in fatalError("invariant: \(message)") }

    @inline(__always)
    public static func expect(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
                              file: StaticString = #fileID, line: UInt = #line) {
        if !condition() { onFailure("\(file):\(line): \(message())") }
    }
}

/// One fuzz target: a name for `--target=` and the function that runs one input.
public struct FuzzTarget {
    public let name: String
    public let summary: String
    public let run: (UnsafeRawBufferPointer) -> Void
}

public enum FuzzTargets {
    /// A plain release build (scripts/demo builds every product) has none: they need Target built for testing.
    public static let all: [FuzzTarget] = [
        FuzzTarget(name: "framing", summary: "iSCSI framing of a byte stream, PDU by PDU", run: FramingFuzz.run),
    ] + machines

#if DEBUG || FUZZING
    static let machines: [FuzzTarget] = [
        FuzzTarget(name: "login", summary: "iSCSI login, key negotiation and CHAP over a sequence of Login PDUs",
                   run: LoginFuzz.run),
        FuzzTarget(name: "text", summary: "full-feature Text negotiation and SendTargets over a sequence of Text PDUs",
                   run: TextFuzz.run),
        FuzzTarget(name: "scsi", summary: "CDB decoding and the SCSI task over an in-memory store", run: SCSIFuzz.run),
        FuzzTarget(name: "nbd", summary: "the NBD handshake, then transmission request checks", run: NBDFuzz.run),
        FuzzTarget(name: "sheep", summary: "sheep reply headers and the home-core machine", run: SheepFuzz.run),
        FuzzTarget(name: "config", summary: "the targets.conf parser, re-rendered and re-parsed", run: ConfigFuzz.run),
        FuzzTarget(name: "tgtadm", summary: "the tgtadm command line", run: TgtadmFuzz.run),
    ]
#else
    static let machines: [FuzzTarget] = []
#endif

    public static func named(_ name: String) -> FuzzTarget? { all.first { $0.name == name } }
}
