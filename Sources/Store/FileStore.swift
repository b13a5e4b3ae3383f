import Floor
import URing
import CURing
import Glibc

// The file and null stores, and the progress record every store keeps per request. A store sees one request at a time: the operation, the request's data buffer, its
// own progress record and a completion tag. It never sees who asked (an iSCSI command, an NBD request) nor
// their task tables: the caller keeps the record (`StoreRequest`) beside its own task state, as a block driver
// keeps its per-request data inside the block layer's request, and routes the completion by the tag.

/// A file request's progress, kept by the caller between `FileStore.start` and its completions. Files can
/// complete short: `done` says how far the transfer got, and the rest is submitted again.
public struct StoreRequest {
    public enum Kind: UInt8 {
        case none
        /// READ_FIXED or WRITE_FIXED of `length` bytes; may complete in several pieces.
        case transfer
        /// fsync or fallocate: one completion, no data.
        case control
        /// A sheepdog request split into object pieces; finished when `pending` reaches 0.
        case sheep
    }

    var kind: Kind = .none
    var offset: UInt64 = 0
    var length: Int = 0
    var done: Int = 0
    var bufferOffset: Int = 0
    var isWrite = false
    var fua = false
    var fd: Int32 = -1
    /// Sheepdog: pieces without a reply, and the first failure among them.
    var pending: Int32 = 0
    var failure: StoreError? = nil

    /// No operation (an idle task's), or the start of one.
    public init(kind: Kind = .none, offset: UInt64 = 0, length: Int = 0, bufferOffset: Int = 0,
                 isWrite: Bool = false, fua: Bool = false, fd: Int32 = -1, pending: Int32 = 0) {
        self.kind = kind
        self.offset = offset
        self.length = length
        self.bufferOffset = bufferOffset
        self.isWrite = isWrite
        self.fua = fua
        self.fd = fd
        self.pending = pending
    }
}

/// Where the store's data lives and whom the kernel's completion names.
public struct StoreBuffer {
    /// The request's registered buffer (its slot), at least as long as the operation's bufferOffset + length.
    public var data: UnsafeMutableRawPointer
    /// The ring's user_data for the operations of this request.
    public var tag: UInt64

    @inlinable
    public init(data: UnsafeMutableRawPointer, tag: UInt64) {
        self.data = data
        self.tag = tag
    }
}

public enum NullStore {
    /// Reads return zeros and writes are dropped (tgt's `--bstype null`); everything completes at once.
    public static func run(_ op: StoreOp, data: UnsafeMutableRawPointer, byteCount: UInt64) -> StoreResult {
        switch op {
        case .read(_, _, let length, let bufferOffset):
            memset(data + bufferOffset, 0, length)
            return .ok(length)
        case .write(_, _, let length, _, _):
            return .ok(length)
        case .mapStatus(_, let offset, let maxLength):
            return .extent(mapped: true, length: min(maxLength, byteCount &- offset))
        case .flush, .discard, .prefetch, .shareState, .compareSection, .sharePortGroupState:
            return .ok(0)
        }
    }
}

public enum FileStore {
    /// Starts `op` on `file`. Returns the result when it is known at once (metadata queries, refusals, hints),
    /// nil when the ring holds the operation; then every completion carrying `buffer.tag` goes to `complete`.
    public static func start(_ op: StoreOp, on file: FileBacking, _ r: inout StoreRequest, _ buffer: StoreBuffer,
                      ring: borrowing Ring) -> StoreResult? {
        switch op {
        case .read(_, let offset, let length, let bufferOffset):
            r = StoreRequest(kind: .transfer, offset: offset, length: length, bufferOffset: bufferOffset,
                             isWrite: false, fua: false, fd: file.fd)
            submitTransfer(r, buffer, ring: ring)
        case .write(_, let offset, let length, let bufferOffset, let fua):
            if file.readOnly { return .failed(.writeProtected) }
            // O_DIRECT writes are on the medium when they complete: no RWF_DSYNC needed.
            r = StoreRequest(kind: .transfer, offset: offset, length: length, bufferOffset: bufferOffset,
                             isWrite: true, fua: fua && !file.directIO, fd: file.fd)
            submitTransfer(r, buffer, ring: ring)
        case .flush:
            r = StoreRequest(kind: .control, fd: file.fd)
            let sqe = ring.sqe()
            io_uring_prep_fsync(sqe, file.fd, UInt32(IORING_FSYNC_DATASYNC))
            sqe.pointee.user_data = buffer.tag
        case .discard(_, let offset, let length):
            if file.readOnly { return .failed(.writeProtected) }
            r = StoreRequest(kind: .control, fd: file.fd)
            let sqe = ring.sqe()
            io_uring_prep_fallocate(sqe, file.fd, RT_FALLOC_PUNCH_HOLE | RT_FALLOC_KEEP_SIZE,
                                    off_t(offset), off_t(length))
            sqe.pointee.user_data = buffer.tag
        case .mapStatus(_, let offset, let maxLength):
            return file.mapStatus(offset: offset, maxLength: maxLength)
        case .prefetch(_, let offset, let length):
            _ = posix_fadvise(file.fd, off_t(offset), off_t(length), POSIX_FADV_WILLNEED)
            return .ok(0)
        case .shareState, .compareSection, .sharePortGroupState:
            return .ok(0)   // a file is served by one gateway: its LU's state is the whole state
        }
        return nil
    }

    /// One completion of the request. Returns its result, or nil when the rest was submitted again (a short
    /// transfer, or EINTR/EAGAIN on a transfer).
    public static func complete(_ r: inout StoreRequest, result res: Int32, _ buffer: StoreBuffer,
                         ring: borrowing Ring) -> StoreResult? {
        if r.kind == .control {
            // A failed fsync or fallocate is not issued again: EINTR and EAGAIN, which they do not return in
            // practice, fail it as a medium error.
            guard res < 0 else { return .ok(0) }
            if case .fail(let error) = StoreErrno.classify(errno: -res) { return .failed(error) }
            return .failed(.mediumError)
        }
        if res < 0 {
            switch StoreErrno.classify(errno: -res) {
            case .retry:
                submitTransfer(r, buffer, ring: ring)
                return nil
            case .fail(let error):
                return .failed(error)
            }
        }
        if res == 0 {
            // A write that makes no progress is never acknowledged as done.
            if r.isWrite { return .failed(.mediumError) }
            // Past the end of the file: the rest reads as zeros (a file shrunk under us).
            memset(buffer.data + r.bufferOffset + r.done, 0, r.length - r.done)
            return .ok(r.length)
        }
        r.done += Int(res)
        if r.done < r.length {
            // Short read or write: continue where it stopped.
            submitTransfer(r, buffer, ring: ring)
            return nil
        }
        return .ok(r.length)
    }

    private static func submitTransfer(_ r: borrowing StoreRequest, _ buffer: StoreBuffer, ring: borrowing Ring) {
        let sqe = ring.sqe()
        let p = buffer.data + r.bufferOffset + r.done
        let len = UInt32(r.length - r.done)
        let off = r.offset + UInt64(r.done)
        if r.isWrite {
            io_uring_prep_write_fixed(sqe, r.fd, p, len, off, 0)
            if r.fua { sqe.pointee.rw_flags = Int32(RWF_DSYNC) }
        } else {
            io_uring_prep_read_fixed(sqe, r.fd, p, len, off, 0)
        }
        sqe.pointee.user_data = buffer.tag
    }
}
