// The brake on CHAP guessing (issue 11). A CHAP secret of 96 bits cannot be searched online, but a weak one
// chosen by a person can, so each core spaces out the answers to CHAP responses that follow failures:
// per source address and per CHAP account, the first failure is answered at once, then each answer waits
// 0.25 s, 0.5 s, 1 s, 2 s, then 4 s after the previous one, and an address or account that stays quiet for a
// minute starts afresh. Pure (the caller passes the clock), so the numbers are unit-tested without sleeping.
//
// Why every answer from a throttled address waits, a correct one too: if only failures waited, an attacker
// would open many connections, take "no answer yet" as "wrong", and never wait at all. Why the account brake
// delays failures only: a correct login from another address must never wait for someone else's attack.

import Floor
import ISCSIWire
import SCSI
public struct LoginThrottle {
    /// The pause before the answer that follows the first failure; each further failure doubles it.
    public static let firstDelayNanos: UInt64 = 250_000_000
    /// The longest pause between two answers to one address or account.
    public static let maxDelayNanos: UInt64 = 4_000_000_000
    /// An address or account with no failure for this long is forgotten.
    public static let quietPeriodNanos: UInt64 = 60_000_000_000
    /// An answer is never held longer than this (well inside the 15 s login timeout); a CHAP response whose
    /// turn is further off is refused unchecked (Service Unavailable) after this long, so parallel
    /// connections can neither queue up guesses without bound nor spin on fast refusals.
    public static let maxHoldNanos: UInt64 = 8_000_000_000
    /// Addresses, and separately accounts, one core remembers; past that the least recently seen is dropped.
    public static let entriesPerCore = 256
    /// Checked CHAP responses answered as failed to one address in any one second, per core (0, 0.25 and
    /// 0.75 s after the first failure; then one per 4 s). With C cores an address can reach C times this.
    public static let maxFailuresPerSecondPerAddress = 3

    /// When the answer to a checked CHAP response may go out.
    public enum Turn: Equatable {
        /// At this time (now or later).
        case at(UInt64)
        /// Not within `maxHoldNanos`: refuse without revealing whether the response was right.
        case refuse
    }

    private(set) var addresses = FailureTable(capacity: LoginThrottle.entriesPerCore)
    private(set) var accounts = FailureTable(capacity: LoginThrottle.entriesPerCore)

    public init() {}

    /// The pause after `failures` failures: none before the first, then 0.25 s doubling up to the cap.
    public static func delayNanos(afterFailures failures: Int) -> UInt64 {
        guard failures > 0 else { return 0 }
        let shift = min(failures - 1, 16)
        return min(maxDelayNanos, firstDelayNanos << UInt64(shift))
    }

    /// Called once the login machine has checked a CHAP response from `address`, before its verdict is
    /// used: the turn depends on the address's past only, so its timing tells nothing about this verdict.
    public mutating func turn(address: String, nowNanos now: UInt64) -> Turn {
        let due = max(now, addresses.nextAnswerNanos(address, now: now))
        return due - now > LoginThrottle.maxHoldNanos ? .refuse : .at(due)
    }

    /// The checked response was wrong: records the failure for the address and the account (the CHAP_N the
    /// initiator gave, nil when none) and returns when its answer goes out.
    public mutating func failed(address: String, account: String?, turn: UInt64, nowNanos now: UInt64) -> UInt64 {
        var due = turn
        if let account {
            due = max(due, min(accounts.nextAnswerNanos(account, now: now), now + LoginThrottle.maxHoldNanos))
            accounts.recordFailure(account, answeredAt: due, now: now)
        }
        addresses.recordFailure(address, answeredAt: due, now: now)
        return due
    }

    /// Failures remembered for an address (tests and the log line).
    public func failures(address: String, nowNanos now: UInt64) -> Int { addresses.failures(address, now: now) }
    public func failures(account: String, nowNanos now: UInt64) -> Int { accounts.failures(account, now: now) }
}

/// A fixed number of keys, each with its failure count and the earliest time of its next answer.
public struct FailureTable {
    public struct Entry {
        var key: String
        var failures: Int
        var nextAnswerNanos: UInt64
        var lastSeenNanos: UInt64
    }
    let capacity: Int
    private(set) var entries: [Entry] = []

    init(capacity: Int) {
        self.capacity = capacity
        entries.reserveCapacity(capacity)
    }

    private func live(_ e: Entry, now: UInt64) -> Bool { now < e.nextAnswerNanos &+ LoginThrottle.quietPeriodNanos }

    private func find(_ key: String, now: UInt64) -> Int? {
        guard let i = entries.firstIndex(where: { $0.key == key }), live(entries[i], now: now) else { return nil }
        return i
    }

    func nextAnswerNanos(_ key: String, now: UInt64) -> UInt64 { find(key, now: now).map { entries[$0].nextAnswerNanos } ?? now }

    func failures(_ key: String, now: UInt64) -> Int { find(key, now: now).map { entries[$0].failures } ?? 0 }

    mutating func recordFailure(_ key: String, answeredAt: UInt64, now: UInt64) {
        let i: Int
        if let found = find(key, now: now) {
            i = found
        } else {
            let fresh = Entry(key: key, failures: 0, nextAnswerNanos: now, lastSeenNanos: now)
            if let stale = entries.firstIndex(where: { $0.key == key || !live($0, now: now) }) {
                entries[stale] = fresh
                i = stale
            } else if entries.count < capacity {
                entries.append(fresh)
                i = entries.count - 1
            } else {
                // Full of live keys: the one seen longest ago goes, so the table never grows.
                i = entries.indices.min { entries[$0].lastSeenNanos < entries[$1].lastSeenNanos }!
                entries[i] = fresh
            }
        }
        entries[i].failures += 1
        entries[i].lastSeenNanos = now
        entries[i].nextAnswerNanos = max(entries[i].nextAnswerNanos,
                                         answeredAt + LoginThrottle.delayNanos(afterFailures: entries[i].failures))
    }
}
