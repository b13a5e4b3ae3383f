import Glibc

/// Puts `p[skip..<len]` at `iov[v]` for a gathered send, skipping bytes an earlier partial send already
/// took: returns the next free index (unchanged when the whole piece was already sent) and consumes `skip`.
/// The send queues of iSCSI connections and of sheep channels share it.
@inlinable @inline(__always)
package func appendIovec(_ iov: UnsafeMutablePointer<iovec>, _ v: Int, _ p: UnsafeMutableRawPointer, _ len: Int,
                         _ skip: inout Int) -> Int {
    if skip >= len { skip -= len; return v }
    iov[v] = iovec(iov_base: p + skip, iov_len: len - skip)
    skip = 0
    return v + 1
}
