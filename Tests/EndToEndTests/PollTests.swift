// Busy-polling cores (--poll-us, and poll_us changed at run time): the same answers as sleeping ones.

import Foundation
import Testing

extension EndToEnd {
    @Suite("Polling cores")
    struct Polling {
        @Test func pollingCoresServeAndTheWindowChangesAtRunTime() throws {
            try withTarget(daemonOptions: ["--poll-us", "500"], luns: [.file(bytes: 16 * mebibyte)]) { t in
                let s = try RawSession(t.endpoint, target: t.iqn, options: RawLoginOptions(
                    initiatorName: "\(RunningTarget.iqnPrefix):poll"))
                for i in 0..<64 {
                    try s.writeReadVerify(lba: UInt32(i) * 16, data: patternBytes(8 * 1024, seed: UInt64(i)))
                }
                // Off, then on again, while the session stays up.
                for value in ["0", "2000"] {
                    try t.admin.must(["--lld", "iscsi", "--op", "update", "--mode", "sys", "--name", "poll_us", "--value", value])
                    for i in 0..<16 {
                        try s.writeReadVerify(lba: 4096 + UInt32(i) * 16, data: patternBytes(4096, seed: UInt64(100 + i)))
                    }
                }
                let bad = try t.admin.run(["--lld", "iscsi", "--op", "update", "--mode", "sys", "--name", "poll_us", "--value", "x"])
                #expect(!bad.succeeded, "a bad poll_us must be refused: \(bad)")
                let inq = try t.tool("iscsi-inq", [t.url(lun: 1)])
                #expect(inq.succeeded, "\(inq)")
            }
        }
    }
}
