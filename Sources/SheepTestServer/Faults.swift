// Seeded fault injection. Every decision is drawn from a stream derived from (seed, connection number,
// purpose) and consumed once per request in arrival order, so a given client request sequence on the n-th
// accepted connection meets the same faults on every run with the same seed.
//
// SPEC is a comma-separated list:
//   drop-after=N          cut a connection right after its N-th request has executed: that reply, and any
//                         other reply not sent yet, is lost (the client must resend work that was done)
//   drop=P                cut the connection at a request with probability P; a seeded coin decides whether
//                         the request executed first (reply lost) or never ran
//   delay=P:MS            hold a request for MS milliseconds before executing it, with probability P
//   delay=P:MIN-MAX       … for a uniformly drawn MIN…MAX milliseconds
//   error=CODE:P[:OPS]    answer a fraction P of object requests with CODE (SD_RES_ name or number) without
//                         executing them. OPS: read, write, create, discard, remove joined by '+', or all
//                         (default read+write+create). Several error= items are tried in order.
//   none                  nothing (same as an empty SPEC)

import SheepProtocol
import TestSupport

struct FaultPlan: Equatable, Sendable {
    struct ErrorRule: Equatable, Sendable {
        var result: SheepResult
        var probability: Double
        var opcodes: Set<UInt8>
    }

    var dropAfterRequests: UInt64?
    var dropProbability: Double = 0
    var delayProbability: Double = 0
    var delayMinMilliseconds = 0
    var delayMaxMilliseconds = 0
    var errors: [ErrorRule] = []

    static let defaultErrorOps: Set<UInt8> = [SheepOpcode.readObj.rawValue, SheepOpcode.writeObj.rawValue,
                                              SheepOpcode.createAndWriteObj.rawValue]

    var isEmpty: Bool { self == FaultPlan() }

    static func parse(_ spec: String) throws -> FaultPlan {
        var plan = FaultPlan()
        for rawItem in spec.split(separator: ",") {
            let item = rawItem.trimmingSpaces
            if item.isEmpty || item == "none" { continue }
            guard let eq = item.firstIndex(of: "=") else { throw FaultSpecError("'\(item)': expected KEY=VALUE") }
            let key = item[item.startIndex..<eq], value = item[item.index(after: eq)...]
            switch key {
            case "drop-after":
                guard let n = UInt64(value), n > 0 else { throw FaultSpecError("drop-after needs a positive count, got '\(value)'") }
                plan.dropAfterRequests = n
            case "drop":
                plan.dropProbability = try probability(value, item)
            case "delay":
                let parts = value.split(separator: ":", omittingEmptySubsequences: false)
                guard parts.count == 2 else { throw FaultSpecError("'\(item)': expected delay=P:MS or delay=P:MIN-MAX") }
                plan.delayProbability = try probability(parts[0], item)
                let range = parts[1].split(separator: "-", omittingEmptySubsequences: false)
                guard range.count <= 2, let lo = Int(range[0]), lo >= 0,
                      let hi = range.count == 2 ? Int(range[1]) : lo, hi >= lo
                else { throw FaultSpecError("'\(item)': bad milliseconds '\(parts[1])'") }
                plan.delayMinMilliseconds = lo
                plan.delayMaxMilliseconds = hi
            case "error":
                let parts = value.split(separator: ":", omittingEmptySubsequences: false)
                guard parts.count == 2 || parts.count == 3 else {
                    throw FaultSpecError("'\(item)': expected error=CODE:P[:OPS]")
                }
                guard let code = SheepResult(name: String(parts[0])) else {
                    throw FaultSpecError("'\(item)': unknown result code '\(parts[0])'")
                }
                let p = try probability(parts[1], item)
                var ops = defaultErrorOps
                if parts.count == 3 { ops = try opcodes(parts[2], item) }
                plan.errors.append(ErrorRule(result: code, probability: p, opcodes: ops))
            default:
                throw FaultSpecError("unknown fault '\(key)' (known: drop-after, drop, delay, error, none)")
            }
        }
        return plan
    }

    private static func probability(_ s: Substring, _ item: Substring) throws -> Double {
        guard let p = Double(s), p >= 0, p <= 1 else { throw FaultSpecError("'\(item)': probability '\(s)' is not in 0…1") }
        return p
    }

    private static func opcodes(_ s: Substring, _ item: Substring) throws -> Set<UInt8> {
        var out: Set<UInt8> = []
        for name in s.split(separator: "+") {
            switch name {
            case "read": out.insert(SheepOpcode.readObj.rawValue)
            case "write": out.insert(SheepOpcode.writeObj.rawValue)
            case "create": out.insert(SheepOpcode.createAndWriteObj.rawValue)
            case "discard": out.insert(SheepOpcode.discardObj.rawValue)
            case "remove": out.insert(SheepOpcode.removeObj.rawValue)
            case "all":
                out.formUnion([SheepOpcode.readObj, .writeObj, .createAndWriteObj, .discardObj, .removeObj].map(\.rawValue))
            default: throw FaultSpecError("'\(item)': unknown op '\(name)' (read, write, create, discard, remove, all)")
            }
        }
        return out
    }
}

struct FaultSpecError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = "bad --faults: " + d }
}

/// The per-connection decision streams.
struct FaultDice {
    private var drop: SeededRandom
    private var delay: SeededRandom
    private var error: SeededRandom

    init(seed: UInt64, connection: UInt64) {
        drop = SeededRandom(seed: seed, stream: connection, purpose: 1)
        delay = SeededRandom(seed: seed, stream: connection, purpose: 2)
        error = SeededRandom(seed: seed, stream: connection, purpose: 3)
    }

    enum Drop { case none, afterExecuting, beforeExecuting }

    /// Whether request number `sequence` (1-based, on this connection) cuts the connection, and when.
    mutating func drop(_ plan: FaultPlan, sequence: UInt64) -> Drop {
        let roll = drop.unit()
        let coin = drop.next() & 1 == 0
        if let n = plan.dropAfterRequests, sequence == n { return .afterExecuting }
        guard roll < plan.dropProbability else { return .none }
        return coin ? .afterExecuting : .beforeExecuting
    }

    /// Milliseconds to hold the request, 0 for none.
    mutating func delayMilliseconds(_ plan: FaultPlan) -> Int {
        let roll = delay.unit()
        let span = delay.next()
        guard roll < plan.delayProbability else { return 0 }
        let width = UInt64(plan.delayMaxMilliseconds - plan.delayMinMilliseconds + 1)
        return plan.delayMinMilliseconds + Int(span % width)
    }

    /// An injected result for an object request, if any.
    mutating func injectedError(_ plan: FaultPlan, opcode: SheepOpcode) -> SheepResult? {
        let roll = error.unit()
        var threshold = 0.0
        for rule in plan.errors where rule.opcodes.contains(opcode.rawValue) {
            threshold += rule.probability
            if roll < threshold { return rule.result }
        }
        return nil
    }
}

extension Substring {
    var trimmingSpaces: Substring {
        var s = self
        while s.first == " " { s.removeFirst() }
        while s.last == " " { s.removeLast() }
        return s
    }
}
