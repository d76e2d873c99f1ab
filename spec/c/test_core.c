/* C-level tests for the parts of the runtime that need no loop: buffers, the CPU count
 * behind --loops auto, reason names. Each check counts; any failure exits non-zero. */
#include "../../runtime/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int checks, failures;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
        }                                                                                          \
    } while (0)

/* Symbols the runtime objects expect from main.c, which is not linked here. */
mw_config_t mw__config;
void mw__main_notify_exit(void) {
}

static void test_buffer(void) {
    mw_bufcache_t bc = {0};
    mw_buf_t b = {0};
    CHECK(mw__buf_append(&bc, &b, "hello", 5) == 0);
    CHECK(b.len == 5 && b.cap == MW_SMALL_BUF && memcmp(b.base + b.off, "hello", 5) == 0);
    mw__buf_consume(&bc, &b, 2);
    CHECK(b.len == 3 && memcmp(b.base + b.off, "llo", 3) == 0);
    /* Growing keeps the live bytes and moves them to the front. */
    char big[10000];
    memset(big, 'x', sizeof big);
    CHECK(mw__buf_append(&bc, &b, big, sizeof big) == 0);
    CHECK(b.len == 10003 && b.off == 0 && b.cap == 16384);
    CHECK(memcmp(b.base, "llo", 3) == 0 && b.base[10002] == 'x');
    /* Consuming everything frees the block. */
    mw__buf_consume(&bc, &b, b.len);
    CHECK(b.base == NULL && b.len == 0 && b.cap == 0);
    /* Small blocks are recycled through the cache. */
    CHECK(mw__buf_append(&bc, &b, "a", 1) == 0);
    char *first = b.base;
    mw__buf_free(&bc, &b);
    CHECK(bc.n == 1);
    CHECK(mw__buf_append(&bc, &b, "b", 1) == 0);
    CHECK(b.base == first && bc.n == 0);
    /* reserve slides data instead of reallocating when there is room at the front. */
    mw__buf_free(&bc, &b);
    CHECK(mw__buf_append(&bc, &b, big, 4000) == 0);
    mw__buf_consume(&bc, &b, 3000);
    CHECK(mw__buf_reserve(&bc, &b, 2000) == 0);
    CHECK(b.off == 0 && b.cap == MW_SMALL_BUF && b.len == 1000);
    mw__buf_free(&bc, &b);
    mw__bufcache_clear(&bc);
    CHECK(bc.n == 0);
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

static void test_cpu_auto(void) {
    char path[] = "/tmp/mw-cpu-XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    char why[128];
    write_file(path, "150000 100000\n");
    CHECK(mw__cpu_auto(path, why, sizeof why) == 2);
    CHECK(strstr(why, "cgroup") != NULL);
    write_file(path, "100000 100000\n");
    CHECK(mw__cpu_auto(path, why, sizeof why) == 1);
    write_file(path, "50000 100000\n");
    CHECK(mw__cpu_auto(path, why, sizeof why) == 1);
    write_file(path, "max 100000\n");
    int n = mw__cpu_auto(path, why, sizeof why);
    CHECK(n >= 1 && strstr(why, "available CPUs") != NULL);
    write_file(path, "garbage\n");
    CHECK(mw__cpu_auto(path, why, sizeof why) == n);
    unlink(path);
    CHECK(mw__cpu_auto("/nonexistent/cpu.max", why, sizeof why) == n);
}

static void test_reasons(void) {
    CHECK(strcmp(mw__reason_name(MW_REASON_EOF), "eof") == 0);
    CHECK(strcmp(mw__reason_name(MW_REASON_LIMIT), "limit") == 0);
    CHECK(strcmp(mw__reason_name(MW_REASON_SHUTDOWN), "shutdown") == 0);
    CHECK(strcmp(mw__reason_name(99), "error") == 0);
}

/* mw_unmask against the byte-at-a-time definition (RFC 6455 section 5.3), for every length
 * up to 40, every key offset, misaligned buffers, in place, and the ASCII flag. */
static void test_unmask(void) {
    uint8_t src[64], dst[64], want[64];
    const uint8_t key[4] = {0x37, 0xfa, 0x21, 0x3d};
    uint32_t mask;
    memcpy(&mask, key, 4);
    int bad = 0;
    for (size_t n = 0; n <= 40; n++) {
        for (size_t off = 0; off < 8; off++) {
            for (size_t i = 0; i < n; i++)
                src[off + i] = (uint8_t)((i * 7 + off) ^ key[i & 3]) & 0x7f;
            int ascii = 1;
            for (size_t i = 0; i < n; i++) {
                want[i] = (uint8_t)(src[off + i] ^ key[i & 3]);
                ascii &= want[i] < 0x80;
            }
            if (mw_unmask(dst + (8 - off), src + off, n, mask) != ascii ||
                memcmp(dst + (8 - off), want, n) != 0)
                bad++;
            if (n > 0) {
                /* One non-ASCII result byte, at the end: the flag must drop. */
                src[off + n - 1] = (uint8_t)(0x80 ^ key[(n - 1) & 3]);
                if (mw_unmask(dst, src + off, n, mask) != 0 || dst[n - 1] != 0x80)
                    bad++;
            }
            memcpy(dst, src + off, n); /* in place */
            mw_unmask(dst, dst, n, mask);
            mw_unmask(dst, dst, n, mask);
            if (memcmp(dst, src + off, n) != 0)
                bad++;
        }
    }
    CHECK(bad == 0);
}

/* mw_span: prefix lengths at every start and bound, a set byte 0 and 255, empty input. */
static void test_span(void) {
    uint8_t set[256] = {0};
    for (int c = 'a'; c <= 'z'; c++)
        set[c] = 1;
    set[255] = 1;
    const uint8_t s[] = "abc\xff:de";
    CHECK(mw_span(s, 9, set) == 4);
    CHECK(mw_span(s, 2, set) == 2);
    CHECK(mw_span(s, 0, set) == 0);
    CHECK(mw_span(s + 4, 5, set) == 0);
    CHECK(mw_span(s + 5, 4, set) == 2); /* stops at the terminating NUL: not in the set */
    set[0] = 1;
    CHECK(mw_span(s + 5, 3, set) == 3); /* and never reads past n */
}

int main(void) {
    test_buffer();
    test_unmask();
    test_span();
    test_cpu_auto();
    test_reasons();
    printf("%d passed, %d failed\n", checks - failures, failures);
    return failures ? 1 : 0;
}
