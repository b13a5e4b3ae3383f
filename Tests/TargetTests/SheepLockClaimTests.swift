import Glibc
import SheepProtocol
import Testing
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor

/// The claim files that tell a live gateway's shared lock from a dead one's: one holder at a time, the file
/// gone after a clean release, and an opener that locked a file its holder unlinked meanwhile not fooled.
@Suite struct SheepLockClaimTests {
    static let endpoint = SheepBackingSpec.Endpoint.tcp(host: "127.0.0.1", port: 7000)

    /// A claim directory in a fresh temporary directory (not yet made: `take` makes it), and its parent.
    static func withDirectory(_ body: (String) throws -> Void) rethrows {
        let parent = makeTemporaryDirectory()
        defer {
            rmdir("\(parent)/sheep-claims")
            rmdir(parent)
        }
        try body("\(parent)/sheep-claims")
    }

    static func take(_ dir: String, _ vdi: String = "vol") -> SheepLockClaim.Outcome {
        SheepLockClaim.take(directory: dir, endpoint: endpoint, vdi: vdi)
    }

    @Test func aHeldClaimRefusesASecondAndItsFileGoesWithTheRelease() throws {
        Self.withDirectory { dir in
            guard case .held(let first) = Self.take(dir) else { Issue.record("the first claim is not held"); return }
            #expect(access(first.path, F_OK) == 0)
            guard case .busy = Self.take(dir) else { Issue.record("a held claim is taken twice"); return }
            guard case .held(let other) = Self.take(dir, "other") else { Issue.record("another VDI's claim is refused"); return }
            first.release()
            #expect(access(first.path, F_OK) != 0 && errno == ENOENT, "the released claim's file is left behind")
            guard case .held(let again) = Self.take(dir) else { Issue.record("a released claim cannot be taken"); return }
            again.release()
            other.release()
        }
    }

    /// A holder that dies without releasing (SIGKILL) leaves its file, unlocked: the next opener takes it.
    @Test func aFileLeftUnlockedIsTakenAgain() throws {
        Self.withDirectory { dir in
            let path = SheepLockClaim.path(directory: dir, endpoint: Self.endpoint, vdi: "vol")
            mkdir(dir, 0o755)
            let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
            #expect(fd >= 0)
            close(fd)
            guard case .held(let c) = Self.take(dir) else { Issue.record("a dead holder's file is not taken"); return }
            c.release()
        }
    }

    /// An opener that opened the file before its holder released it gets the flock on an unlinked inode;
    /// `isLinked` is what sends it back to open the path again, where a newer holder's lock refuses it.
    @Test func aLockOnAFileUnlinkedByItsHolderIsNotAClaim() throws {
        Self.withDirectory { dir in
            guard case .held(let holder) = Self.take(dir) else { Issue.record("the first claim is not held"); return }
            let late = open(holder.path, O_RDWR | O_CLOEXEC)
            #expect(late >= 0)
            defer { close(late) }
            #expect(SheepLockClaim.isLinked(late, holder.path))
            holder.release()
            #expect(flock(late, LOCK_EX | LOCK_NB) == 0, "the released file is still locked")
            #expect(!SheepLockClaim.isLinked(late, holder.path))
            guard case .held(let newer) = Self.take(dir) else { Issue.record("an orphan's lock blocks a new claim"); return }
            #expect(!SheepLockClaim.isLinked(late, newer.path), "the orphan passes for the new file")
            newer.release()
        }
    }
}
