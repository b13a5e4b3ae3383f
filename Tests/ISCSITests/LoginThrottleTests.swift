import Testing
@testable import Floor
@testable import URing
@testable import ISCSIWire
@testable import Store
@testable import SCSI
@testable import ISCSI

/// The CHAP brute-force brake (LoginThrottle) on a fake clock: the pauses, the bound per address, other
/// addresses untouched, accounts, forgetting, refusal past the hold limit, and the table's bound.
@Suite struct LoginThrottleTests {
    static let second: UInt64 = 1_000_000_000
    static let attacker = "127.0.0.2"

    @Test func pausesDoubleFromAQuarterSecondUpToTheCap() {
        let ms: UInt64 = 1_000_000
        let pauses: [UInt64] = (0...7).map { LoginThrottle.delayNanos(afterFailures: $0) / ms }
        #expect(pauses == [0, 250, 500, 1000, 2000, 4000, 4000, 4000])
        #expect(LoginThrottle.delayNanos(afterFailures: Int.max) == LoginThrottle.maxDelayNanos)
    }

    /// An attacker that sends a wrong response every millisecond, over as many connections as it likes:
    /// the failures answered in any one second never exceed the documented N, and N is reached.
    @Test func failuresPerSecondFromOneAddressStayWithinTheDocumentedBound() {
        var throttle = LoginThrottle()
        var answers: [UInt64] = []
        var refused = 0
        let start: UInt64 = 1_000 * Self.second
        for step in 0..<60_000 {
            let now = start + UInt64(step) * 1_000_000
            switch throttle.turn(address: Self.attacker, nowNanos: now) {
            case .refuse:
                refused += 1
            case .at(let turn):
                #expect(turn - now <= LoginThrottle.maxHoldNanos)
                answers.append(throttle.failed(address: Self.attacker, account: "alice", turn: turn, nowNanos: now))
            }
        }
        answers.sort()
        var most = 0
        var low = 0
        for high in answers.indices {
            while answers[high] - answers[low] >= Self.second { low += 1 }
            most = max(most, high - low + 1)
        }
        #expect(most == LoginThrottle.maxFailuresPerSecondPerAddress)
        // After the first few, one answer per maximal pause: 60 s of attack checks about 15 guesses, not 60,000.
        #expect(answers.count <= 6 + (60 * Self.second + LoginThrottle.maxHoldNanos) / LoginThrottle.maxDelayNanos,
                "\(answers.count)")
        #expect(refused == 60_000 - answers.count)
    }

    @Test func theFirstFailureIsFreeAndTheNextAnswersWait() {
        var throttle = LoginThrottle()
        let now = 5 * Self.second
        #expect(throttle.turn(address: Self.attacker, nowNanos: now) == .at(now))
        #expect(throttle.failed(address: Self.attacker, account: "alice", turn: now, nowNanos: now) == now)
        // The next answer to this address waits, whether its response will turn out right or wrong.
        #expect(throttle.turn(address: Self.attacker, nowNanos: now + 1) == .at(now + LoginThrottle.firstDelayNanos))
    }

    @Test func anotherAddressIsNeverHeldByTheAttack() {
        var throttle = LoginThrottle()
        var now = 5 * Self.second
        for _ in 0..<20 {
            if case .at(let turn) = throttle.turn(address: Self.attacker, nowNanos: now) {
                _ = throttle.failed(address: Self.attacker, account: "alice", turn: turn, nowNanos: now)
            }
            now += 10_000_000
        }
        #expect(throttle.failures(address: Self.attacker, nowNanos: now) > 3)
        // alice herself, from her own address, with the right secret: answered at once.
        #expect(throttle.turn(address: "127.0.0.1", nowNanos: now) == .at(now))
    }

    @Test func failuresForOneAccountFromManyAddressesWait() {
        var throttle = LoginThrottle()
        let now = 5 * Self.second
        var dues: [UInt64] = []
        for i in 0..<4 {
            let address = "10.0.0.\(i)"
            guard case .at(let turn) = throttle.turn(address: address, nowNanos: now) else { Issue.record("refused"); return }
            #expect(turn == now, "a fresh address gets its turn at once")
            dues.append(throttle.failed(address: address, account: "alice", turn: turn, nowNanos: now))
        }
        let millis: [UInt64] = [0, 250, 750, 1_750]
        #expect(dues == millis.map { now + $0 * 1_000_000 })
        #expect(throttle.failures(account: "alice", nowNanos: now) == 4)
    }

    @Test func aQuietAddressIsForgotten() {
        var throttle = LoginThrottle()
        var now = 5 * Self.second
        var last = now
        for _ in 0..<5 {
            guard case .at(let turn) = throttle.turn(address: Self.attacker, nowNanos: now) else { return }
            last = throttle.failed(address: Self.attacker, account: nil, turn: turn, nowNanos: now)
            now = last
        }
        let next = last + LoginThrottle.delayNanos(afterFailures: 5)
        #expect(throttle.failures(address: Self.attacker, nowNanos: next + LoginThrottle.quietPeriodNanos - 1) == 5)
        now = next + LoginThrottle.quietPeriodNanos
        #expect(throttle.failures(address: Self.attacker, nowNanos: now) == 0)
        #expect(throttle.turn(address: Self.attacker, nowNanos: now) == .at(now))
    }

    @Test func aTurnPastTheHoldLimitIsRefused() {
        var throttle = LoginThrottle()
        let now = 5 * Self.second
        var turns: [LoginThrottle.Turn] = []
        for _ in 0..<8 {
            let t = throttle.turn(address: Self.attacker, nowNanos: now)
            turns.append(t)
            if case .at(let at) = t { _ = throttle.failed(address: Self.attacker, account: nil, turn: at, nowNanos: now) }
        }
        // 0, 0.25, 0.75, 1.75, 3.75, 7.75 s; the next would be 11.75 s away.
        let millis: [UInt64] = [0, 250, 750, 1_750, 3_750, 7_750]
        let expected: [LoginThrottle.Turn] = millis.map { .at(now + $0 * 1_000_000) }
        #expect(Array(turns.prefix(6)) == expected)
        #expect(turns.suffix(2).allSatisfy { $0 == .refuse })
    }

    @Test func theTableNeverOutgrowsItsBoundAndKeepsTheRecentKeys() {
        var throttle = LoginThrottle()
        var now = 5 * Self.second
        for i in 0..<(LoginThrottle.entriesPerCore * 4) {
            now += 1_000
            _ = throttle.failed(address: "a\(i)", account: "u\(i)", turn: now, nowNanos: now)
            if i % 2 == 0 { _ = throttle.failed(address: Self.attacker, account: nil, turn: now, nowNanos: now) }
        }
        #expect(throttle.addresses.entries.count == LoginThrottle.entriesPerCore)
        #expect(throttle.accounts.entries.count == LoginThrottle.entriesPerCore)
        // The address failing all along was never the least recently seen, so it was never dropped.
        #expect(throttle.failures(address: Self.attacker, nowNanos: now) == LoginThrottle.entriesPerCore * 2)
        #expect(throttle.failures(address: "a0", nowNanos: now) == 0)
    }
}
