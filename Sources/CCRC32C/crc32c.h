// The SSE4.2 `crc32` instruction for ISCSIWire's CRC32C. Header-only, links nothing: Swift has no intrinsic
// for it, so this is the one piece of ISCSIWire that must be C.
#ifndef RINGTGT_CCRC32C_H
#define RINGTGT_CCRC32C_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>

// CRC32C (Castagnoli) with SSE4.2 when the CPU has it; the table fallback lives in Swift.
#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static inline uint32_t rt_crc32c_hw(uint32_t crc, const void *data, size_t len) {
    const unsigned char *p = (const unsigned char *)data;
    uint64_t c = crc;
    while (len >= 8) { uint64_t v; memcpy(&v, p, 8); c = __builtin_ia32_crc32di(c, v); p += 8; len -= 8; }
    uint32_t c32 = (uint32_t)c;
    while (len > 0) { c32 = __builtin_ia32_crc32qi(c32, *p); p++; len--; }
    return c32;
}
static inline int rt_cpu_has_sse42(void) { return __builtin_cpu_supports("sse4.2"); }
#else
static inline uint32_t rt_crc32c_hw(uint32_t crc, const void *data, size_t len) { (void)data; (void)len; return crc; }
static inline int rt_cpu_has_sse42(void) { return 0; }
#endif

#endif
