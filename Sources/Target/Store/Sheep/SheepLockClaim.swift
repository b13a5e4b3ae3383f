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
final class SheepLockClaim: @unchecked Sendable {
    /// Under /run like the control sockets, so it is cleared at boot with the flocks it names.
    static let directory = "/run/ringtgt/sheep-claims"

    enum Outcome {
        /// This gateway holds the claim until `release()`.
        case held(SheepLockClaim)
        /// A live gateway on this host serves the VDI through this endpoint.
        case busy
        /// No claim file could be made (no /run/ringtgt): behave as before, without reclaiming.
        case unavailable
    }

    private let fd: Locked<Int32>

    private init(fd: Int32) { self.fd = Locked(fd) }

    static func take(endpoint: SheepBackingSpec.Endpoint, vdi: String) -> Outcome {
        mkdir("/run/ringtgt", 0o755)
        mkdir(directory, 0o755)
        let fd = Glibc.open(path(endpoint: endpoint, vdi: vdi), O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        if fd < 0 { return .unavailable }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let busy = errno == EWOULDBLOCK
            close(fd)
            return busy ? .busy : .unavailable
        }
        return .held(SheepLockClaim(fd: fd))
    }

    /// Drops the claim (after RELEASE_VDI). The file stays: unlinking it would let two openers lock two
    /// different inodes under one name.
    func release() {
        let old = fd.withLock { f -> Int32 in let o = f; f = -1; return o }
        if old >= 0 { close(old) }
    }

    deinit { release() }

    /// VDI names may hold any byte and be 256 bytes long, so the file is named by a hash (FNV-1a, 64 bits)
    /// of endpoint and name; a collision only refuses a second VDI as if it were served.
    static func path(endpoint: SheepBackingSpec.Endpoint, vdi: String) -> String {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for b in Array("\(endpoint)".utf8) + [0] + Array(vdi.utf8) { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
        return "\(directory)/\(String(h, radix: 16))"
    }
}
