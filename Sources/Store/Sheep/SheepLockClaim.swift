import Floor
import URing
import Glibc
import SheepProtocol

/// This host's record that a live gateway holds sheep's shared lock on a VDI through one sheep endpoint: an
/// flock on a file named after (endpoint, VDI), held while the LUN is open.
///
/// Sheep owns a shared lock by node, not by connection (vdi.c `add_new_participant` refuses a node that
/// already participates, and nothing releases it when a client goes away). A gateway killed with SIGKILL
/// therefore leaves its node participating, and the restarted gateway's LOCK_VDI answers VDI_LOCKED until
/// someone runs `dog vdi lock unlock`. The kernel drops an flock when its holder dies, so a free claim
/// after VDI_LOCKED means no gateway on this host still serves the VDI through that endpoint: the node's
/// participation is stale and may be released (RELEASE_VDI shared drops only the asking node) and taken
/// again. A claim held by a live process (another daemon, or another LUN of this one) keeps the refusal
/// sheep would give. Gateways on other hosts are not seen: each must use its own sheep node.
public final class SheepLockClaim: @unchecked Sendable {
    /// Host-wide, not per daemon: every ringtgtd on the host must see every other's claims, whatever its
    /// control socket, or one would release a live daemon's participation. Under /run (the directory the
    /// packaged daemon's control socket lives in), so it is cleared at boot with the flocks it names.
    public static let defaultDirectory = "/run/ringtgt/sheep-claims"
    /// Opens that found the path unlinked or replaced after locking it, before giving up as if busy. Each
    /// one means a holder released in between, so more than a few means claims churn faster than we open.
    static let openAttempts = 8

    public enum Outcome {
        /// This gateway holds the claim until `release()`.
        case held(SheepLockClaim)
        /// A live gateway on this host serves the VDI through this endpoint.
        case busy
        /// No claim file could be made: behave as before, without reclaiming.
        case unavailable
    }

    let path: String
    private let fd: Locked<Int32>

    private init(fd: Int32, path: String) {
        self.fd = Locked(fd)
        self.path = path
    }

    static func take(directory: String, endpoint: SheepBackingSpec.Endpoint, vdi: String) -> Outcome {
        if let slash = directory.lastIndex(of: "/"), slash != directory.startIndex {
            mkdir(String(directory[..<slash]), 0o755)
        }
        mkdir(directory, 0o755)
        let path = path(directory: directory, endpoint: endpoint, vdi: vdi)
        for _ in 0..<openAttempts {
            let fd = Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
            if fd < 0 { return .unavailable }
            if flock(fd, LOCK_EX | LOCK_NB) != 0 {
                let busy = errno == EWOULDBLOCK
                close(fd)
                return busy ? .busy : .unavailable
            }
            // A holder that released between our open and flock unlinked what we opened: the lock we got is
            // on an orphan, and the next opener would make a new file and lock that too. Open again.
            if isLinked(fd, path) { return .held(SheepLockClaim(fd: fd, path: path)) }
            close(fd)
        }
        return .busy
    }

    /// Whether `path` still names the file open on `fd`.
    static func isLinked(_ fd: Int32, _ path: String) -> Bool {
        var opened = stat(), named = stat()
        guard fstat(fd, &opened) == 0, stat(path, &named) == 0 else { return false }
        return opened.st_dev == named.st_dev && opened.st_ino == named.st_ino
    }

    /// Drops the claim (after RELEASE_VDI) and removes its file. Unlinked while still locked, so an opener
    /// that locks the old file after us sees it unlinked (`isLinked`) and opens again.
    func release() {
        let old = fd.withLock { f -> Int32 in let o = f; f = -1; return o }
        guard old >= 0 else { return }
        unlink(path)
        close(old)
    }

    deinit { release() }

    /// VDI names may hold any byte and be 256 bytes long, so the file is named by a hash (FNV-1a, 64 bits)
    /// of endpoint and name; a collision only refuses a second VDI as if it were served.
    static func path(directory: String, endpoint: SheepBackingSpec.Endpoint, vdi: String) -> String {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for b in Array("\(endpoint)".utf8) + [0] + Array(vdi.utf8) { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
        return "\(directory)/\(String(h, radix: 16))"
    }
}
