// LD_PRELOAD shim for running ringtgtd under valgrind (the instructions-per-I/O gate).
// Valgrind 3.19 holds its big lock while a thread is blocked in io_uring_enter, so one core thread waiting
// for completions stalls every other thread of the daemon (the main thread never gets to open the control
// socket). This shim turns the two blocking liburing waits the daemon uses into a non-blocking submit plus
// poll(2) on the ring fd, which valgrind knows may block and so releases its lock around.
// The shim's own instructions are few per wait and are counted with the daemon's; the gate compares runs of
// N and 2N I/Os, so the constant part cancels.
// Build: cc -O2 -shared -fPIC -o uringwait.so uringwait.c -luring
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <time.h>
#include <liburing.h>

// Upper bound on one poll(2) sleep: completions that poll misses (deferred task work) wait at most this.
static const int slice_millis = 1;

static uint64_t now_nanos(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

// Submits, then waits until `wait_nr` completions are ready or `deadline` (0 = none) passes.
static int submit_and_poll(struct io_uring *ring, unsigned wait_nr, uint64_t deadline) {
    int submitted = io_uring_submit_and_get_events(ring);
    if (submitted < 0) return submitted;
    while (io_uring_cq_ready(ring) < wait_nr) {
        if (deadline && now_nanos() >= deadline) return -ETIME;
        struct pollfd p = { .fd = ring->ring_fd, .events = POLLIN, .revents = 0 };
        poll(&p, 1, slice_millis);
        int rc = io_uring_get_events(ring);
        if (rc < 0 && rc != -EINTR && rc != -EAGAIN) return rc;
    }
    return submitted;
}

int io_uring_submit_and_wait(struct io_uring *ring, unsigned wait_nr) {
    return submit_and_poll(ring, wait_nr, 0);
}

int io_uring_submit_and_wait_timeout(struct io_uring *ring, struct io_uring_cqe **cqe_ptr, unsigned wait_nr,
                                     struct __kernel_timespec *ts, sigset_t *sigmask) {
    (void)sigmask;
    uint64_t deadline = 0;
    if (ts) deadline = now_nanos() + (uint64_t)ts->tv_sec * 1000000000ull + (uint64_t)ts->tv_nsec;
    int rc = submit_and_poll(ring, wait_nr, deadline);
    if (cqe_ptr) {
        *cqe_ptr = NULL;
        if (io_uring_cq_ready(ring) > 0) io_uring_peek_cqe(ring, cqe_ptr);
    }
    return rc;
}
