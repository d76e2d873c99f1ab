/* Growable byte buffers with a per-loop cache of small blocks.
 *
 * Connections get a buffer only while they have bytes to keep (leftover input, output the
 * kernel has not taken yet), so an idle connection holds none. The small-block cache keeps
 * the common case (a few KiB per turn) off malloc. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static char *block_alloc(mw_bufcache_t *bc, size_t cap) {
    if (cap == MW_SMALL_BUF && bc->n > 0)
        return bc->free[--bc->n];
    return malloc(cap);
}

void mw__block_free(mw_bufcache_t *bc, char *base, size_t cap) {
    if (base == NULL)
        return;
    if (cap == MW_SMALL_BUF && bc->n < MW_SMALL_CACHE) {
        bc->free[bc->n++] = base;
        return;
    }
    free(base);
}

int mw__buf_reserve(mw_bufcache_t *bc, mw_buf_t *b, size_t extra) {
    if (b->cap - b->off - b->len >= extra)
        return 0;
    /* Slide the live bytes to the front when that makes room, and only while they fill at
     * most half the block: a queue that drains at the front while small writes arrive at the
     * back would otherwise move all of its bytes for every few it gains. */
    if (b->off > 0 && b->cap - b->len >= extra && b->len <= b->cap / 2) {
        memmove(b->base, b->base + b->off, b->len);
        b->off = 0;
        return 0;
    }
    if (extra >= MW_BUF_MAX - b->len)
        return -ENOMEM;
    size_t need = b->len + extra;
    size_t cap = MW_SMALL_BUF;
    while (cap < need)
        cap *= 2;
    char *nb = block_alloc(bc, cap);
    if (nb == NULL)
        return -ENOMEM;
    if (b->len > 0)
        memcpy(nb, b->base + b->off, b->len);
    mw__block_free(bc, b->base, b->cap);
    b->base = nb;
    b->off = 0;
    b->cap = (uint32_t)cap;
    return 0;
}

int mw__buf_append(mw_bufcache_t *bc, mw_buf_t *b, const void *p, size_t n) {
    int rc = mw__buf_reserve(bc, b, n);
    if (rc < 0)
        return rc;
    memcpy(b->base + b->off + b->len, p, n);
    b->len += (uint32_t)n;
    return 0;
}

void mw__buf_consume(mw_bufcache_t *bc, mw_buf_t *b, size_t n) {
    if (n >= b->len) {
        mw__buf_free(bc, b);
        return;
    }
    b->off += (uint32_t)n;
    b->len -= (uint32_t)n;
}

void mw__buf_free(mw_bufcache_t *bc, mw_buf_t *b) {
    mw__block_free(bc, b->base, b->cap);
    b->base = NULL;
    b->off = b->len = b->cap = 0;
}

void mw__bufcache_clear(mw_bufcache_t *bc) {
    while (bc->n > 0)
        free(bc->free[--bc->n]);
}
