// Header-only shim over <liburing.h> for Swift.
// The libc headers come first: otherwise liburing's feature macros make fd_set differ from SwiftGlibc's view.
#ifndef RINGTGT_CURING_SHIM_H
#define RINGTGT_CURING_SHIM_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <time.h>
#include <poll.h>
#include <linux/fs.h>
#include <liburing.h>

// IOSQE_* are shifts of enum values and do not import: re-export them as plain constants.
static const uint8_t RT_IOSQE_FIXED_FILE = IOSQE_FIXED_FILE;
static const uint8_t RT_IOSQE_IO_DRAIN = IOSQE_IO_DRAIN;
static const uint8_t RT_IOSQE_IO_LINK = IOSQE_IO_LINK;
static const uint8_t RT_IOSQE_IO_HARDLINK = IOSQE_IO_HARDLINK;
static const uint8_t RT_IOSQE_ASYNC = IOSQE_ASYNC;
static const uint8_t RT_IOSQE_BUFFER_SELECT = IOSQE_BUFFER_SELECT;
static const uint8_t RT_IOSQE_CQE_SKIP_SUCCESS = IOSQE_CQE_SKIP_SUCCESS;

static const uint32_t RT_SETUP_SINGLE_ISSUER = IORING_SETUP_SINGLE_ISSUER;
static const uint32_t RT_SETUP_DEFER_TASKRUN = IORING_SETUP_DEFER_TASKRUN;
static const uint32_t RT_SETUP_COOP_TASKRUN = IORING_SETUP_COOP_TASKRUN;
static const uint32_t RT_SETUP_SUBMIT_ALL = IORING_SETUP_SUBMIT_ALL;
static const int RT_FALLOC_PUNCH_HOLE = 0x02;   // FALLOC_FL_PUNCH_HOLE (linux/falloc.h)
static const int RT_FALLOC_KEEP_SIZE = 0x01;    // FALLOC_FL_KEEP_SIZE
static const int RT_FALLOC_ZERO_RANGE = 0x10;   // FALLOC_FL_ZERO_RANGE
#if defined(__aarch64__)
static const int RT_O_DIRECT = 0200000;
#else
static const int RT_O_DIRECT = 040000;
#endif
static const int RT_SOCK_STREAM = SOCK_STREAM;
static const int RT_SOCK_CLOEXEC = SOCK_CLOEXEC;
static const uint32_t RT_CQE_F_MORE = IORING_CQE_F_MORE;

// Copies up to `max` ready completions out of the ring (acquire-ordered tail read happens in C).
static inline unsigned rt_peek_batch(struct io_uring *ring, struct io_uring_cqe **cqes, unsigned max) {
    return io_uring_peek_batch_cqe(ring, cqes, max);
}

static inline int rt_errno(void) { return errno; }
// fallocate(2) without _GNU_SOURCE (the ring simulation carries out IORING_OP_FALLOCATE with it).
static inline int rt_fallocate(int fd, int mode, long long offset, long long length) {
    return (int)syscall(SYS_fallocate, fd, mode, (off_t)offset, (off_t)length);
}

// A relative timeout for submit_and_wait_timeout.
static inline int rt_wait(struct io_uring *ring, unsigned waitNr, long long nanos) {
    struct io_uring_cqe *cqe = NULL;
    if (nanos < 0) {
        return io_uring_submit_and_wait(ring, waitNr);
    }
    struct __kernel_timespec ts = { .tv_sec = nanos / 1000000000LL, .tv_nsec = nanos % 1000000000LL };
    return io_uring_submit_and_wait_timeout(ring, &cqe, waitNr, &ts, NULL);
}

// Atomic access to shared 32-bit slots (the sheepdog object index): plain moves on x86, ordered for the compiler.
static inline uint32_t rt_load_acquire_u32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void rt_store_release_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

// Pins the calling thread to one CPU (raw syscall: cpu_set_t needs _GNU_SOURCE, which would make this
// module's libc types differ from SwiftGlibc's).
static inline int rt_pin_to_cpu(int cpu) {
    unsigned long mask[16] = {0};
    if (cpu < 0 || cpu >= 1024) return -1;
    mask[cpu / 64] = 1UL << (cpu % 64);
    return (int)syscall(SYS_sched_setaffinity, 0, sizeof(mask), mask);
}

// CPUs this process may run on.
static inline int rt_cpu_online_count(void) {
    unsigned long mask[16] = {0};
    long n = syscall(SYS_sched_getaffinity, 0, sizeof(mask), mask);
    if (n <= 0) return 1;
    int count = 0;
    for (int i = 0; i < 16; i++) count += __builtin_popcountl(mask[i]);
    return count > 0 ? count : 1;
}

#endif
