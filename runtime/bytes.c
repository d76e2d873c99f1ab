/* Byte loops the Lua protocol code calls through the FFI.
 *
 * A loop over a payload inside a Lua function splits the JIT's trace: the loop gets a trace
 * of its own and the code after it runs in the interpreter until the next trace entry. These
 * are the two byte loops the WebSocket reader and the HTTP parser run per message, as plain
 * primitives (in the family of memchr and strspn) that the JIT compiles into the caller's
 * trace as one call each. The protocol logic stays in Lua (lua/moonwire/ws/, http/). */
#include "moonwire.h"

#include <stdint.h>
#include <string.h>

int mw_unmask(uint8_t *dst, const uint8_t *src, size_t n, uint32_t mask) {
    /* mask holds the four key bytes in memory order (as loaded from the frame header). */
    uint8_t key[4];
    memcpy(key, &mask, 4);
    uint64_t k64, high = 0, acc = 0;
    uint8_t kk[8] = {key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]};
    memcpy(&k64, kk, 8);
    memset(&high, 0x80, 8);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, src + i, 8);
        v ^= k64;
        acc |= v;
        memcpy(dst + i, &v, 8);
    }
    uint8_t tail = 0;
    for (; i < n; i++) {
        uint8_t v = (uint8_t)(src[i] ^ key[i & 3]);
        tail |= v;
        dst[i] = v;
    }
    return (acc & high) == 0 && (tail & 0x80) == 0;
}

size_t mw_span(const uint8_t *p, size_t n, const uint8_t *set) {
    size_t i = 0;
    while (i < n && set[p[i]])
        i++;
    return i;
}
