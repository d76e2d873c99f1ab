/* Cross-loop publish/subscribe transport.
 *
 * Subscriptions live in each loop's Lua state (lua/moonwire/pubsub.lua); C only moves
 * messages. A publish copies the message once into a reference-counted blob and appends it
 * to the loop's outbox. Before the loop sleeps, the outbox is handed to every other loop's
 * mailbox, one lock and one coalesced wake-up per loop per turn however many messages were
 * published, and delivered to the publishing loop itself directly. Each mailbox appends in
 * order, so messages from one publisher arrive in the order they were published. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Messages waiting in one loop's mailbox beyond this are dropped (and counted): a loop that
 * cannot keep up must not make every other loop buffer without bound. */
#define MW_MBOX_MAX_PUBLISH 262144

static _Atomic uint64_t dropped;

void mw__blob_unref(mw_blob_t *b) {
    if (atomic_fetch_sub(&b->refs, 1) == 1)
        free(b);
}

int mw_publish(mw_loop_t *l, const char *topic, size_t tlen, const char *msg, size_t mlen) {
    if (l->is_admin)
        return -EINVAL; /* the admin loop is not part of the pubsub fabric */
    if (l->outbox_n == l->outbox_cap) {
        int cap = l->outbox_cap ? l->outbox_cap * 2 : 64;
        mw_blob_t **nb = realloc(l->outbox, sizeof *nb * (size_t)cap);
        if (nb == NULL)
            return -ENOMEM;
        l->outbox = nb;
        l->outbox_cap = cap;
    }
    mw_blob_t *b = malloc(sizeof *b + tlen + mlen);
    if (b == NULL)
        return -ENOMEM;
    atomic_init(&b->refs, mw__nloops);
    b->topic_len = tlen;
    b->len = mlen;
    memcpy(b->data, topic, tlen);
    memcpy(b->data + tlen, msg, mlen);
    l->outbox[l->outbox_n++] = b;
    return 0;
}

void mw__pubsub_flush(mw_loop_t *l) {
    int n = l->outbox_n;
    mw_blob_t **box = l->outbox;
    l->outbox = NULL;
    l->outbox_n = l->outbox_cap = 0;
    for (int t = 0; t < mw__nloops; t++) {
        mw_loop_t *dst = &mw__loops[t];
        if (dst == l)
            continue;
        /* Build the chain outside the lock, then splice it in with one lock. */
        mw_msg_t *head = NULL, *tail = NULL;
        for (int i = 0; i < n; i++) {
            mw_msg_t *m = malloc(sizeof *m);
            if (m == NULL) {
                mw__blob_unref(box[i]);
                continue;
            }
            m->next = NULL;
            m->type = MW_MSG_PUBLISH;
            m->fd = -1;
            m->blob = box[i];
            if (tail)
                tail->next = m;
            else
                head = m;
            tail = m;
        }
        if (head == NULL)
            continue;
        pthread_mutex_lock(&dst->mbox_lock);
        int full = dst->mbox_npub + n > MW_MBOX_MAX_PUBLISH;
        if (!full) {
            dst->mbox_npub += n;
            if (dst->mbox_tail)
                dst->mbox_tail->next = head;
            else
                dst->mbox_head = head;
            dst->mbox_tail = tail;
        }
        pthread_mutex_unlock(&dst->mbox_lock);
        if (full) {
            uint64_t before = atomic_fetch_add(&dropped, (uint64_t)n);
            if (before == 0 || (before / 10000) != ((before + (uint64_t)n) / 10000))
                MW_LOG(MW_LOG_WARN, l->id, "loop %d is not keeping up: dropped %llu messages",
                       dst->id, (unsigned long long)(before + (uint64_t)n));
            while (head) {
                mw_msg_t *next = head->next;
                mw__blob_unref(head->blob);
                free(head);
                head = next;
            }
            continue;
        }
        uv_async_send(&dst->async);
    }
    for (int i = 0; i < n; i++)
        mw__pubsub_deliver(l, box[i]);
    free(box);
}

void mw__pubsub_deliver(mw_loop_t *l, mw_blob_t *b) {
    if (!l->shutting_down)
        mw__lua_publish(l, b);
    mw__blob_unref(b);
}
