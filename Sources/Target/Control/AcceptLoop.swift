// The thread that serves a listening socket off the cores (the control socket, the metrics endpoint): it
// accepts one connection at a time, hands it to a handler and closes it, until `stop` wakes it through a pipe.

#if canImport(Glibc)
import Glibc
#endif
import Foundation

final class AcceptLoop: @unchecked Sendable {
    private let listenFD: Int32
    private let handle: (Int32) -> Void
    /// Written to by stop() so that poll() in the thread wakes up.
    private var wakePipe: [Int32] = [-1, -1]
    private var thread: Thread?
    private let finished = DispatchSemaphore(value: 0)

    /// Serves `listenFD` (already listening; the loop closes it when stopped) on a thread named `name`.
    /// Throws the errno of a failed pipe(2); the caller still owns `listenFD` then.
    init(listenFD: Int32, name: String, handle: @escaping (Int32) -> Void) throws(NetError) {
        precondition(listenFD >= 0, "AcceptLoop needs a listening socket")
        self.listenFD = listenFD
        self.handle = handle
        var fds: [Int32] = [-1, -1]
        if pipe(&fds) != 0 { throw .system("pipe", errno) }
        _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        wakePipe = fds
        let t = Thread { [self] in
            serve()
            finished.signal()
        }
        t.name = name
        thread = t
        t.start()
    }

    /// Stops serving, waits for the thread, closes the socket.
    func stop() {
        guard thread != nil else { return }
        var byte: UInt8 = 1
        _ = write(wakePipe[1], &byte, 1)
        finished.wait()
        thread = nil
        close(listenFD)
        close(wakePipe[0])
        close(wakePipe[1])
    }

    deinit { stop() }

    private func serve() {
        while true {
            var pfds = [pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0),
                        pollfd(fd: wakePipe[0], events: Int16(POLLIN), revents: 0)]
            let n = poll(&pfds, 2, -1)
            if n < 0 {
                if errno == EINTR { continue }
                return
            }
            if pfds[1].revents != 0 { return }
            if pfds[0].revents & Int16(POLLIN) == 0 { continue }
            let client = accept(listenFD, nil, nil)
            if client < 0 { continue }   // ECONNABORTED, EMFILE...: keep serving
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)
            handle(client)
            close(client)
        }
    }
}
