import Floor
import URing
import CURing
import Glibc

/// The backing stores, as an enum so that dispatch per I/O is a switch, not an existential call.
public enum Backing: @unchecked Sendable {
    /// Reads return zeros, writes are dropped (tgt's `--bstype null`).
    case null
    /// A regular file or block device driven with READ_FIXED / WRITE_FIXED on the ring.
    case file(FileBacking)
    /// A sheepdog VDI, spoken to over per-core pipelined connections on the same ring.
    case sheep(SheepVolume)
}

/// A regular file or block device. The descriptor is shared by every core's ring; each core submits
/// its own operations on it, so nothing here is mutated after open.
public final class FileBacking: @unchecked Sendable {
    public let fd: Int32
    public let byteCount: UInt64
    public let isBlockDevice: Bool
    public let directIO: Bool
    public let readOnly: Bool
    public let path: String

    init(fd: Int32, byteCount: UInt64, isBlockDevice: Bool, directIO: Bool, readOnly: Bool, path: String) {
        self.fd = fd
        self.byteCount = byteCount
        self.isBlockDevice = isBlockDevice
        self.directIO = directIO
        self.readOnly = readOnly
        self.path = path
    }

    deinit { close(fd) }

    /// GET LBA STATUS support: the run of bytes from `offset` that are all data or all hole.
    /// lseek(SEEK_DATA/SEEK_HOLE) only reads metadata; it is bounded and does not block on data I/O.
    public func mapStatus(offset: UInt64, maxLength: UInt64) -> StoreResult {
        if isBlockDevice || offset >= byteCount { return .extent(mapped: true, length: min(maxLength, byteCount &- offset)) }
        let end = min(byteCount, offset &+ maxLength)
        let data = lseek(fd, off_t(offset), SEEK_DATA)
        if data < 0 {
            // ENXIO: no data at or after offset: the rest is a hole.
            if errno == ENXIO { return .extent(mapped: false, length: end - offset) }
            return .extent(mapped: true, length: end - offset)
        }
        if UInt64(data) > offset {
            return .extent(mapped: false, length: min(UInt64(data), end) - offset)
        }
        let hole = lseek(fd, off_t(offset), SEEK_HOLE)
        let holeAt = hole < 0 ? end : min(UInt64(hole), end)
        return .extent(mapped: true, length: max(holeAt, offset + 1) - offset)
    }
}

public enum BackingOpenError: Error, Equatable, CustomStringConvertible {
    case invalid(String)
    case system(String, errno: Int32)

    public var description: String {
        switch self {
        case .invalid(let s): return s
        case .system(let s, let e): return "\(s): \(String(cString: strerror(e)))"
        }
    }
}

public enum BackingFactory {
    /// Default size of a null LUN when no `size=` option is given (tgt's null store reports 1 TiB... we use 1 TiB too).
    public static let defaultNullBytes: UInt64 = 1 << 40

    /// Opens a backing store from tgtadm's terms.
    /// - bstype: `rdwr` (also `aio`, accepted as an alias) or `null`.
    /// - options: `size=BYTES[K|M|G|T]` for null, `direct=1` for O_DIRECT, `readonly=1`.
    public static func open(bstype: String, path: String, options: [String: String], blockSize: Int)
        throws(BackingOpenError) -> (backing: Backing, byteCount: UInt64, capabilities: StoreCapabilities)
    {
        let readOnly = isTrue(options["readonly"])
        switch bstype {
        case "null":
            var bytes = defaultNullBytes
            if let s = options["size"] {
                guard let v = ByteCount.parse(s) else { throw .invalid("invalid size '\(s)' for the null store") }
                bytes = v
            }
            bytes -= bytes % UInt64(blockSize)
            guard bytes > 0 else { throw .invalid("the null store needs a size of at least one block") }
            let caps = StoreCapabilities(canDiscard: true, discardZeroes: true, canReportMapping: true,
                                         readOnly: readOnly, hasVolatileCache: false)
            return (.null, bytes, caps)
        case "rdwr", "aio", "":
            guard !path.isEmpty else { throw .invalid("a backing store path is required") }
            let direct = isTrue(options["direct"])
            var flags: Int32 = (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC
            if direct { flags |= RT_O_DIRECT }
            let fd = Glibc.open(path, flags)
            if fd < 0 { throw .system("can't open \(path)", errno: errno) }
            var st = stat()
            if fstat(fd, &st) != 0 {
                let e = errno
                close(fd)
                throw .system("can't stat \(path)", errno: e)
            }
            let isBlock = (st.st_mode & S_IFMT) == S_IFBLK
            var bytes: UInt64
            if isBlock {
                var sz: UInt64 = 0
                if ioctl(fd, 0x8008_1272 /* BLKGETSIZE64 */, &sz) != 0 {
                    let e = errno
                    close(fd)
                    throw .system("can't get the size of \(path)", errno: e)
                }
                bytes = sz
            } else if (st.st_mode & S_IFMT) == S_IFREG {
                bytes = UInt64(st.st_size)
            } else {
                close(fd)
                throw .invalid("\(path) is neither a regular file nor a block device")
            }
            bytes -= bytes % UInt64(blockSize)
            if bytes == 0 {
                close(fd)
                throw .invalid("\(path) is smaller than one block")
            }
            let fb = FileBacking(fd: fd, byteCount: bytes, isBlockDevice: isBlock, directIO: direct,
                                 readOnly: readOnly, path: path)
            // Read-only still deallocates in principle: UNMAP and SANITIZE reach the write-protect check and
            // are refused with DATA PROTECT, as SBC-4 says, instead of looking unimplemented.
            let caps = StoreCapabilities(canDiscard: true, discardZeroes: true, canReportMapping: !isBlock,
                                         readOnly: readOnly, hasVolatileCache: !direct,
                                         unmapGranularityBytes: 4096)
            return (.file(fb), bytes, caps)
        default:
            throw .invalid("unsupported backing store type '\(bstype)'")
        }
    }

    static func isTrue(_ s: String?) -> Bool {
        guard let s = s?.lowercased() else { return false }
        return s == "1" || s == "yes" || s == "true" || s == "on"
    }
}

/// Size options of the stores (null's `size=1G`).
public enum ByteCount {
    /// Reads a size option such as null's `size=1G`: a number of bytes with an optional binary suffix
    /// K, M, G, T or P (optionally followed by "B" or "iB"). nil for anything else or on overflow.
    public static func parse(_ text: String) -> UInt64? {
        var body = Substring(text.uppercased())
        if body.hasSuffix("IB") { body = body.dropLast(2) } else if body.hasSuffix("B") { body = body.dropLast() }
        var shift: UInt64 = 0
        if let last = body.last, let index = "KMGTP".firstIndex(of: last) {
            shift = 10 * UInt64("KMGTP".distance(from: "KMGTP".startIndex, to: index) + 1)
            body = body.dropLast()
        }
        guard !body.isEmpty, body.allSatisfy({ $0.isASCII && $0.isNumber }), let n = UInt64(body) else { return nil }
        let (bytes, overflow) = n.multipliedReportingOverflow(by: 1 << shift)
        return overflow ? nil : bytes
    }
}
