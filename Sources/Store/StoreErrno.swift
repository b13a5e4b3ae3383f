import Floor
import URing
import Glibc

/// What a failed store file operation (read, write, fsync, fallocate on the backing file) becomes: tried again,
/// or a StoreError, which the SCSI layer turns into sense data. Every errno the kernel documents for these calls
/// is named, so a new one is a decision, not an accident.
public enum StoreErrno: Equatable {
    case retry
    case fail(StoreError)

    public static func classify(errno e: Int32) -> StoreErrno {
        switch e {
        // Interrupted or would block: the same operation again.
        case EINTR, EAGAIN: return .retry
        // Out of space: DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT.
        case ENOSPC, EDQUOT: return .fail(.noSpace)
        // The file or its file system refuses writes (remounted read-only, permissions, fd not open for writing).
        case EROFS, EPERM, EACCES, EBADF: return .fail(.writeProtected)
        // The file system cannot do this operation (fallocate punch hole, RWF_DSYNC, O_DIRECT alignment).
        case EOPNOTSUPP, EINVAL: return .fail(.notSupported)
        // The device failed or went away: MEDIUM ERROR.
        case EIO, ENXIO, ENODEV, ENOMEDIUM, EREMOTEIO, EUCLEAN: return .fail(.mediumError)
        // Beyond what the file can hold, the kernel short of memory, cancelled: the command fails as a medium
        // error, as tgt's backing store reports any other failed I/O.
        case EFBIG, EOVERFLOW, ESPIPE, ENOMEM, ENOBUFS, ECANCELED, ETIMEDOUT, EFAULT: return .fail(.mediumError)
        default: return .fail(.mediumError)
        }
    }
}
