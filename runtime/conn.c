/* Connections: reading into the loop's buffer, the write queue, closing and idle timeouts.
 *
 * The life of a connection:
 *   accept -> on_open -> reads dispatched to Lua -> teardown(reason) -> on_close -> flush,
 *   FIN, lingering read (graceful) or reset (abort) -> uv_close -> free.
 * A connection is a uv_poll_t on its socket: libuv says when it is readable or writable and
 * this file does the I/O with recv and send, which skip the VFS layer that read and write
 * (what libuv's streams use) go through: 6.5% more requests per CPU-second on the HTTP
 * benchmark (docs/architecture.md, "Sockets"). The poll is level-triggered, so events only
 * change when reading pauses or resumes and while output waits for room.
 * on_close is delivered exactly once. When teardown starts inside a Lua callback (conn:close()
 * from a handler, a write over the hard limit) the notification is queued on the loop's
 * pending list and delivered at the next safe point, because C never calls into Lua from an
 * FFI call. The struct is freed only in the close callback, and only once it is off every
 * list the loop walks. */
#include "internal.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MW_CONN_FREE_LATER (1u << 30)

static void on_poll(uv_poll_t *h, int status, int events);
static void start_reading(mw_conn_t *c);
static void stop_reading(mw_conn_t *c);
static void finish_close(mw_conn_t *c);
static void flush(mw_conn_t *c);

static const char *const reason_names[] = {
    "none", "eof", "reset", "timeout", "closed", "aborted", "error", "limit", "shutdown",
};

const char *mw__reason_name(int reason) {
    if (reason < 0 || reason > MW_REASON_SHUTDOWN)
        return "error";
    return reason_names[reason];
}

static size_t queued(const mw_conn_t *c) {
    return c->out.len;
}

/* Starts, changes or stops the poll to match what the connection waits for. Inside the
 * connection's own poll callback this waits for its end, so that a change undone before then
 * (or made moot by closing) costs no epoll call. */
static void update_poll(mw_conn_t *c) {
    if ((c->flags & MW_CONN_HANDLE_CLOSING) || mw__conn_loop(c)->polling == c)
        return;
    int ev = ((c->flags & MW_CONN_READING) ? UV_READABLE : 0) |
             ((c->flags & MW_CONN_WRITING) ? UV_WRITABLE : 0);
    if (ev == c->events)
        return;
    c->events = ev;
    if (ev == 0)
        uv_poll_stop(&c->poll);
    else
        (void)uv_poll_start(&c->poll, ev, on_poll); /* fails only for an fd polled twice */
}

/* Bytes leave the user-space write queue (written, or dropped). */
static void queue_sub(mw_conn_t *c, size_t n) {
    MW_STAT_ADD(mw__conn_loop(c)->stats.write_queue_bytes, (uint64_t)0 - n);
}

static void drop_out(mw_conn_t *c) {
    queue_sub(c, c->out.len);
    mw__buf_free(&mw__conn_loop(c)->bufcache, &c->out);
    c->committed = 0;
    c->flags &= ~(uint32_t)MW_CONN_WRITING;
    update_poll(c);
}

/* ---- idle timeouts ------------------------------------------------------------------
 * One list per distinct timeout value. Every member of a list has the same timeout, so
 * moving a connection to the tail on activity keeps the list ordered by deadline: touching
 * is O(1) and one loop timer armed at the earliest head is enough. Nothing runs while idle. */

static void tlist_remove(mw_conn_t *c) {
    mw_tlist_t *t = c->tlist;
    if (t == NULL)
        return;
    if (c->tprev)
        c->tprev->tnext = c->tnext;
    else
        t->head = c->tnext;
    if (c->tnext)
        c->tnext->tprev = c->tprev;
    else
        t->tail = c->tprev;
    c->tprev = c->tnext = NULL;
    c->tlist = NULL;
}

static void tlist_append(mw_tlist_t *t, mw_conn_t *c) {
    c->tlist = t;
    c->tnext = NULL;
    c->tprev = t->tail;
    if (t->tail)
        t->tail->tnext = c;
    else
        t->head = c;
    t->tail = c;
}

static mw_tlist_t *tlist_for(mw_loop_t *l, unsigned ms) {
    for (int i = 0; i < l->ntlists; i++)
        if (l->tlists[i].ms == ms)
            return &l->tlists[i];
    /* Distinct timeout values are few in practice (idle, header, linger), so a flat array
     * searched linearly is enough; members hold list pointers, re-pointed if it moves. */
    mw_tlist_t *nt = realloc(l->tlists, sizeof *nt * (size_t)(l->ntlists + 1));
    if (nt == NULL)
        return NULL;
    if (nt != l->tlists) {
        /* Re-point every member at the moved lists. */
        for (int i = 0; i < l->ntlists; i++)
            for (mw_conn_t *m = nt[i].head; m; m = m->tnext)
                m->tlist = &nt[i];
    }
    l->tlists = nt;
    mw_tlist_t *t = &nt[l->ntlists++];
    t->ms = ms;
    t->head = t->tail = NULL;
    return t;
}

void mw__conn_set_timeout(mw_conn_t *c, unsigned ms) {
    mw_loop_t *l = mw__conn_loop(c);
    tlist_remove(c);
    c->timeout_ms = ms;
    if (ms == 0)
        return;
    mw_tlist_t *t = tlist_for(l, ms);
    if (t == NULL)
        return;
    c->deadline = uv_now(&l->uv) + ms;
    tlist_append(t, c);
    if (l->armed_deadline == 0 || c->deadline < l->armed_deadline)
        mw__timeouts_arm(l);
}

static void touch(mw_conn_t *c) {
    mw_tlist_t *t = c->tlist;
    if (t == NULL)
        return;
    c->deadline = uv_now(&mw__conn_loop(c)->uv) + c->timeout_ms;
    if (t->tail != c) {
        tlist_remove(c);
        tlist_append(t, c);
    }
}

static void on_timeout(mw_conn_t *c) {
    mw_loop_t *l = mw__conn_loop(c);
    if (c->flags & MW_CONN_CLOSING) {
        /* The peer did not finish the close in time: drop it. */
        finish_close(c);
        return;
    }
    /* on_timeout decides (and may re-arm); without one the connection is closed. */
    if (!mw__lua_event(l, c, MW_EV_TIMEOUT)) {
        mw__conn_teardown(c, MW_REASON_TIMEOUT, 1);
        return;
    }
    if (!(c->flags & MW_CONN_CLOSING) && c->tlist == NULL && c->timeout_ms > 0)
        mw__conn_set_timeout(c, c->timeout_ms);
}

void mw__conn_timeouts_fire(mw_loop_t *l) {
    uint64_t now = uv_now(&l->uv);
    for (int i = 0; i < l->ntlists; i++) {
        mw_tlist_t *t = &l->tlists[i];
        /* A handler may re-arm (tail, later deadline) or close (removed) what it is given,
         * so take the head afresh each time; each connection fires at most once per call. */
        unsigned budget = 1u << 20;
        while (t->head && t->head->deadline <= now && budget--) {
            mw_conn_t *c = t->head;
            tlist_remove(c);
            on_timeout(c);
            t = &l->tlists[i]; /* on_timeout may have grown the array */
        }
    }
    mw__timeouts_arm(l);
}

/* ---- lists the loop walks ------------------------------------------------------------ */

static void release(mw_conn_t *c) {
    mw_loop_t *l = mw__conn_loop(c);
    if (c->flags & MW_CONN_COUNTED_PAUSED)
        MW_STAT_ADD(l->stats.paused_conns, (uint64_t)-1);
    if (c->flags & MW_CONN_SPINNING)
        MW_STAT_ADD(l->stats.spinning_fds, (uint64_t)-1);
    mw__buf_free(&l->bufcache, &c->in);
    drop_out(c);
    free(c);
}

void mw__loop_flush_add(mw_loop_t *l, mw_conn_t *c) {
    if (c->flags & MW_CONN_IN_FLUSH)
        return;
    c->flags |= MW_CONN_IN_FLUSH;
    c->flush_next = l->flush_head;
    l->flush_head = c;
}

static void on_idle(uv_idle_t *h) {
    (void)h; /* Only there to keep the next poll from blocking while work is pending. */
}

void mw__loop_pending_add(mw_loop_t *l, mw_conn_t *c) {
    if (c->flags & MW_CONN_IN_PENDING)
        return;
    c->flags |= MW_CONN_IN_PENDING;
    c->pending_next = NULL;
    if (l->pending_tail)
        l->pending_tail->pending_next = c;
    else
        l->pending_head = c;
    l->pending_tail = c;
    uv_idle_start(&l->idle, on_idle); /* make the next poll non-blocking */
}

/* ---- closing ------------------------------------------------------------------------- */

static void on_closed(uv_handle_t *h) {
    mw_conn_t *c = (mw_conn_t *)h;
    mw_loop_t *l = mw__conn_loop(c);
    l->nconns--;
    atomic_fetch_sub(&mw__open_conns, 1);
    MW_STAT_ADD(l->stats.open_conns, (uint64_t)-1);
    MW_STAT_ADD(l->stats.closed, 1);
    if (c->flags & (MW_CONN_IN_FLUSH | MW_CONN_IN_PENDING))
        c->flags |= MW_CONN_FREE_LATER; /* freed when the list walk reaches it */
    else
        release(c);
    if (l->shutting_down && l->nconns == 0)
        uv_stop(&l->uv);
}

static void finish_close(mw_conn_t *c) {
    if (c->flags & MW_CONN_HANDLE_CLOSING)
        return;
    c->flags |= MW_CONN_HANDLE_CLOSING;
    tlist_remove(c);
    uv_close((uv_handle_t *)&c->poll, on_closed); /* stops the poll: the fd can go now */
    close(c->fd);
    c->fd = -1;
}

/* Called when the write queue is empty on a closing connection. */
static void after_flush_closing(mw_conn_t *c) {
    if (c->flags & (MW_CONN_SHUTDOWN_SENT | MW_CONN_HANDLE_CLOSING))
        return;
    if (c->reason == MW_REASON_EOF || c->reason == MW_REASON_RESET) {
        finish_close(c);
        return;
    }
    c->flags |= MW_CONN_SHUTDOWN_SENT;
    if (shutdown(c->fd, SHUT_WR) < 0) {
        finish_close(c);
        return;
    }
    /* Keep reading (and discarding) until the peer's FIN so that closing never turns unread
     * input into a reset that would destroy the reply we just flushed. The linger timeout
     * armed at teardown bounds the wait. */
    start_reading(c);
}

/* Continues a teardown once Lua has been told. */
static void continue_close(mw_conn_t *c) {
    if (c->flags & MW_CONN_HARD_CLOSE) {
        drop_out(c);
        if (c->reason != MW_REASON_RESET &&
            !(c->flags & (MW_CONN_HANDLE_CLOSING | MW_CONN_SHUTDOWN_SENT))) {
            /* A zero linger makes close() send a reset and drop what the kernel holds. */
            struct linger lg = {.l_onoff = 1, .l_linger = 0};
            setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
        finish_close(c);
        return;
    }
    /* Graceful: flush, FIN, linger; bounded by the linger timeout. Flushing now rather than
     * in the prepare phase lets the lingering read start before the poll is synced, so a
     * reply that fits in the socket buffer closes without stopping and restarting it. */
    mw__conn_set_timeout(c, MW_LINGER_MS);
    if (queued(c) == 0)
        after_flush_closing(c);
    else
        flush(c);
}

static void notify_close(mw_conn_t *c) {
    if (c->flags & MW_CONN_CLOSE_NOTIFIED)
        return;
    c->flags |= MW_CONN_CLOSE_NOTIFIED;
    mw__lua_close(mw__conn_loop(c), c);
}

void mw__conn_teardown(mw_conn_t *c, int reason, int graceful) {
    mw_loop_t *l = mw__conn_loop(c);
    if (c->flags & MW_CONN_CLOSING) {
        /* Already closing: an abort still upgrades a graceful close. */
        if (!graceful && !(c->flags & MW_CONN_HARD_CLOSE)) {
            c->flags |= MW_CONN_HARD_CLOSE;
            if (c->flags & MW_CONN_CLOSE_NOTIFIED)
                continue_close(c);
        }
        return;
    }
    c->flags |= MW_CONN_CLOSING;
    if (!graceful)
        c->flags |= MW_CONN_HARD_CLOSE;
    c->reason = reason;
    switch (reason) {
    case MW_REASON_EOF:
        MW_STAT_ADD(l->stats.closed_eof, 1);
        break;
    case MW_REASON_RESET:
        MW_STAT_ADD(l->stats.closed_reset, 1);
        break;
    case MW_REASON_TIMEOUT:
        MW_STAT_ADD(l->stats.closed_timeout, 1);
        break;
    case MW_REASON_ERROR:
        MW_STAT_ADD(l->stats.closed_error, 1);
        break;
    case MW_REASON_LIMIT:
        MW_STAT_ADD(l->stats.closed_limit, 1);
        break;
    default:
        MW_STAT_ADD(l->stats.closed_local, 1);
        break;
    }
    stop_reading(c);
    tlist_remove(c);
    if (!(c->flags & MW_CONN_OPENED)) {
        /* Lua never saw it (rejected before on_open): nothing to tell. */
        c->flags |= MW_CONN_CLOSE_NOTIFIED;
        continue_close(c);
        return;
    }
    if (l->in_lua) {
        /* Called from Lua (directly or through an FFI call): on_close at the next safe point,
         * since C never calls into Lua from inside an FFI call. */
        mw__loop_pending_add(l, c);
        return;
    }
    notify_close(c);
    continue_close(c);
}

/* Connections are found through libuv's own handle list (their handle's data is
 * mw__conn_tag), so a connection carries no list links of its own for this. uv_walk visits
 * a snapshot: closing handles from the callback is safe. */
char mw__conn_tag;

static void close_all_walk(uv_handle_t *h, void *arg) {
    if (h->data != &mw__conn_tag)
        return;
    mw_conn_t *c = (mw_conn_t *)h;
    int reason = *(int *)arg;
    if (!(c->flags & MW_CONN_CLOSING))
        mw__conn_teardown(c, reason, 0);
    else if (!(c->flags & MW_CONN_HANDLE_CLOSING) && (c->flags & MW_CONN_CLOSE_NOTIFIED))
        finish_close(c);
}

void mw__conn_close_all(mw_loop_t *l, int reason) {
    uv_walk(&l->uv, close_all_walk, &reason);
}

static void lingering_walk(uv_handle_t *h, void *arg) {
    (void)arg;
    if (h->data != &mw__conn_tag)
        return;
    mw_conn_t *c = (mw_conn_t *)h;
    if ((c->flags & MW_CONN_SHUTDOWN_SENT) && (c->flags & MW_CONN_CLOSE_NOTIFIED) &&
        c->out.len == 0)
        finish_close(c);
}

void mw__conn_close_lingering(mw_loop_t *l) {
    uv_walk(&l->uv, lingering_walk, NULL);
}

/* ---- reading ------------------------------------------------------------------------- */

/* Offers the buffered (or just read) bytes to Lua and keeps what it did not consume. */
static void deliver(mw_conn_t *c, const char *p, size_t n, int from_rbuf) {
    mw_loop_t *l = mw__conn_loop(c);
    long used = mw__lua_input(l, c, p, n);
    if (c->flags & MW_CONN_CLOSING) {
        if (!from_rbuf)
            mw__buf_free(&l->bufcache, &c->in);
        return;
    }
    if (used < 0) {
        mw__conn_teardown(c, MW_REASON_ERROR, 1);
        return;
    }
    size_t u = (size_t)used > n ? n : (size_t)used;
    if (from_rbuf) {
        if (u < n && mw__buf_append(&l->bufcache, &c->in, p + u, n - u) < 0) {
            MW_LOG(MW_LOG_ERROR, l->id, "conn %.0f: out of memory buffering input, closing", c->id);
            mw__conn_teardown(c, MW_REASON_ERROR, 0);
            return;
        }
    } else {
        mw__buf_consume(&l->bufcache, &c->in, u);
    }
    if (c->in.len > mw__config.max_input) {
        MW_LOG(MW_LOG_WARN, l->id,
               "conn %.0f: input buffer over limit (%zu bytes unconsumed > max-input %zu), closing",
               c->id, (size_t)c->in.len, mw__config.max_input);
        mw__conn_teardown(c, MW_REASON_LIMIT, 0);
    }
}

/* One read's outcome: nread bytes at base, 0 for a wake-up with nothing to read, or a
 * negative error (UV_EOF at the peer's FIN). */
static void on_read(mw_conn_t *c, ssize_t nread, const char *base) {
    mw_loop_t *l = mw__conn_loop(c);
    if (nread == 0) {
        /* Woken up, nothing to read (EAGAIN). Harmless now and then; a socket that does it
         * on every turn is spinning the loop (the CLOSE_WAIT spin of gev #70). */
        if (++c->empty_wakes == MW_SPIN_WAKES && !(c->flags & MW_CONN_SPINNING)) {
            c->flags |= MW_CONN_SPINNING;
            MW_STAT_ADD(l->stats.spinning_fds, 1);
            MW_LOG(MW_LOG_WARN, l->id,
                   "conn %.0f (fd %d) woke the loop %d times in a row without data: spinning",
                   c->id, c->fd, MW_SPIN_WAKES);
        }
        return;
    }
    if (c->empty_wakes) {
        c->empty_wakes = 0;
        if (c->flags & MW_CONN_SPINNING) {
            c->flags &= ~(uint32_t)MW_CONN_SPINNING;
            MW_STAT_ADD(l->stats.spinning_fds, (uint64_t)-1);
        }
    }
    if (c->flags & MW_CONN_CLOSING) {
        /* Lingering after our FIN: discard until the peer closes. */
        if (nread < 0)
            finish_close(c);
        else if (base != l->rbuf)
            c->in.len += (size_t)nread, mw__buf_free(&l->bufcache, &c->in);
        return;
    }
    if (nread < 0) {
        int reason = nread == UV_EOF          ? MW_REASON_EOF
                     : nread == UV_ECONNRESET ? MW_REASON_RESET
                                              : MW_REASON_ERROR;
        if (reason == MW_REASON_ERROR)
            MW_LOG(nread == UV_ENOBUFS ? MW_LOG_ERROR : MW_LOG_INFO, l->id,
                   "conn %.0f: read error: %s", c->id, uv_strerror((int)nread));
        mw__conn_teardown(c, reason, reason == MW_REASON_EOF);
        return;
    }
    MW_STAT_ADD(l->stats.bytes_in, (uint64_t)nread);
    MW_STAT_ADD(l->stats.reads, 1);
    touch(c);
    if (base == l->rbuf) {
        deliver(c, l->rbuf, (size_t)nread, 1);
    } else {
        c->in.len += (size_t)nread;
        deliver(c, c->in.base + c->in.off, c->in.len, 0);
    }
    /* Answer right away: everything the handler wrote for this read goes out in one write
     * now, so the peer can send its next request while we read the other sockets. Output
     * from timers and other connections' callbacks still waits for the prepare phase. */
    if (c->out.len > 0 && !(c->flags & MW_CONN_CLOSING))
        flush(c);
}

/* Reads while the socket has input: into the loop's shared buffer, or right behind leftover
 * input so the handler sees one contiguous run. Another read follows only when one filled its
 * buffer, and at most MW_READS_PER_WAKE of them, so one busy peer cannot hold the loop. */
static void read_input(mw_conn_t *c) {
    mw_loop_t *l = mw__conn_loop(c);
    for (int i = 0; i < MW_READS_PER_WAKE; i++) {
        char *base = l->rbuf;
        size_t len = MW_READ_CHUNK;
        if (c->in.len > 0 && !(c->flags & MW_CONN_CLOSING)) {
            if (mw__buf_reserve(&l->bufcache, &c->in, MW_READ_CHUNK) < 0) {
                on_read(c, UV_ENOBUFS, NULL);
                return;
            }
            base = c->in.base + c->in.off + c->in.len;
            len = c->in.cap - c->in.off - c->in.len;
        }
        ssize_t n;
        do
            n = recv(c->fd, base, len, 0);
        while (n < 0 && errno == EINTR);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (i == 0)
                on_read(c, 0, base);
            return;
        }
        on_read(c, n > 0 ? n : n == 0 ? UV_EOF : -errno, base);
        if ((size_t)n != len ||
            (c->flags & (MW_CONN_HANDLE_CLOSING | MW_CONN_READING)) != MW_CONN_READING)
            return;
    }
}

static void on_poll(uv_poll_t *h, int status, int events) {
    mw_conn_t *c = (mw_conn_t *)h;
    mw_loop_t *l = mw__conn_loop(c);
    l->polling = c;
    if (status < 0) {
        /* POLLERR: libuv has stopped the poll. The read or write below reports the error;
         * update_poll restarts the poll if neither closes the connection. */
        c->events = 0;
        events = UV_READABLE | UV_WRITABLE;
    }
    if ((events & UV_WRITABLE) && (c->flags & MW_CONN_WRITING)) {
        c->flags &= ~(uint32_t)MW_CONN_WRITING;
        size_t before = c->out.len;
        flush(c);
        if (c->out.len < before)
            touch(c);
    }
    if ((events & UV_READABLE) &&
        (c->flags & (MW_CONN_HANDLE_CLOSING | MW_CONN_READING)) == MW_CONN_READING)
        read_input(c);
    l->polling = NULL;
    /* Work queued for the prepare phase (a close asked for by the handler: flush, FIN, then
     * the lingering read) runs before the loop polls again and syncs the poll itself; a
     * stop now would be undone there, at the cost of three epoll calls. */
    if (!(c->flags & MW_CONN_IN_PENDING))
        update_poll(c);
}

static void start_reading(mw_conn_t *c) {
    if (c->flags & (MW_CONN_READING | MW_CONN_HANDLE_CLOSING))
        return;
    c->flags |= MW_CONN_READING;
    update_poll(c);
}

static void stop_reading(mw_conn_t *c) {
    if (!(c->flags & MW_CONN_READING))
        return;
    c->flags &= ~(uint32_t)MW_CONN_READING;
    update_poll(c);
}

static void update_reading(mw_conn_t *c) {
    int paused = (c->flags & (MW_CONN_PAUSED | MW_CONN_BACKPRESSURE)) != 0;
    if (paused != ((c->flags & MW_CONN_COUNTED_PAUSED) != 0)) {
        c->flags ^= MW_CONN_COUNTED_PAUSED;
        MW_STAT_ADD(mw__conn_loop(c)->stats.paused_conns, paused ? 1 : (uint64_t)-1);
    }
    if (c->flags & (MW_CONN_CLOSING | MW_CONN_PAUSED | MW_CONN_BACKPRESSURE))
        stop_reading(c);
    else
        start_reading(c);
}

/* ---- writing ------------------------------------------------------------------------- */

static void queue_drained(mw_conn_t *c) {
    if (c->flags & MW_CONN_CLOSING) {
        after_flush_closing(c);
        return;
    }
    if (c->flags & MW_CONN_BACKPRESSURE) {
        c->flags &= ~(uint32_t)MW_CONN_BACKPRESSURE;
        update_reading(c);
        if (c->in.len > 0 && !(c->flags & MW_CONN_PAUSED)) {
            c->flags |= MW_CONN_REDISPATCH;
            mw__loop_pending_add(mw__conn_loop(c), c);
        }
    }
    if (c->flags & MW_CONN_WANT_DRAIN) {
        c->flags &= ~(uint32_t)MW_CONN_WANT_DRAIN;
        mw__lua_event(mw__conn_loop(c), c, MW_EV_DRAIN);
    }
}

/* Hands the output to the kernel. What it does not take stays in c->out and goes when the
 * socket has room (on_poll). All of it counts as started (c->committed), so urgent bytes are
 * put behind it and never split a message the peer may already be receiving. */
static void flush(mw_conn_t *c) {
    mw_loop_t *l = mw__conn_loop(c);
    if (c->out.len == 0 ||
        (c->flags & (MW_CONN_WRITING | MW_CONN_HANDLE_CLOSING | MW_CONN_SHUTDOWN_SENT)))
        return;
    size_t n = c->out.len;
    ssize_t w;
    do
        w = send(c->fd, c->out.base + c->out.off, n, MSG_NOSIGNAL);
    while (w < 0 && errno == EINTR);
    if (w >= 0) {
        MW_STAT_ADD(l->stats.bytes_out, (uint64_t)w);
        MW_STAT_ADD(l->stats.writes, 1);
        queue_sub(c, (size_t)w);
        if ((size_t)w == n) {
            mw__buf_free(&l->bufcache, &c->out);
            c->committed = 0;
            queue_drained(c);
            return;
        }
        c->out.off += (uint32_t)w;
        c->out.len -= (uint32_t)w;
    } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
        int err = -errno;
        MW_LOG(MW_LOG_DEBUG, l->id, "conn %.0f: write error: %s", c->id, uv_strerror(err));
        c->flags |= MW_CONN_SHUTDOWN_SENT; /* no FIN on a broken pipe */
        drop_out(c);
        mw__conn_teardown(c, err == UV_ECONNRESET ? MW_REASON_RESET : MW_REASON_ERROR, 0);
        if (c->flags & MW_CONN_CLOSE_NOTIFIED)
            finish_close(c);
        return;
    }
    c->committed = c->out.len;
    c->flags |= MW_CONN_WRITING;
    update_poll(c);
}

void mw__conn_flush_all(mw_loop_t *l) {
    mw_conn_t *c = l->flush_head;
    l->flush_head = NULL;
    while (c) {
        mw_conn_t *next = c->flush_next;
        c->flags &= ~(uint32_t)MW_CONN_IN_FLUSH;
        if (c->flags & MW_CONN_FREE_LATER) {
            if (!(c->flags & MW_CONN_IN_PENDING))
                release(c);
        } else {
            flush(c);
        }
        c = next;
    }
}

void mw__conn_run_pending(mw_loop_t *l) {
    /* Work queued while running this list (a resume from a callback, say) waits for the
     * next turn, so a handler cannot keep the loop here forever. */
    mw_conn_t *c = l->pending_head;
    l->pending_head = l->pending_tail = NULL;
    while (c) {
        mw_conn_t *next = c->pending_next;
        c->flags &= ~(uint32_t)MW_CONN_IN_PENDING;
        if (c->flags & MW_CONN_FREE_LATER) {
            if (!(c->flags & MW_CONN_IN_FLUSH))
                release(c);
            c = next;
            continue;
        }
        if (c->flags & MW_CONN_CLOSING) {
            if (!(c->flags & MW_CONN_CLOSE_NOTIFIED)) {
                notify_close(c);
                continue_close(c);
            }
        } else if (c->flags & MW_CONN_REDISPATCH) {
            c->flags &= ~(uint32_t)MW_CONN_REDISPATCH;
            if (c->in.len > 0 && !(c->flags & (MW_CONN_PAUSED | MW_CONN_BACKPRESSURE)))
                deliver(c, c->in.base + c->in.off, c->in.len, 0);
        }
        update_poll(c); /* on_poll may have left it to this list */
        c = next;
    }
    if (l->pending_head == NULL)
        uv_idle_stop(&l->idle);
}

/* ---- accepting ----------------------------------------------------------------------- */

static void setup(mw_loop_t *l, mw_conn_t *c) {
    c->id = ++l->next_conn_id;
    c->poll.data = &mw__conn_tag;
    l->nconns++;
    MW_STAT_ADD(l->stats.accepted, 1);
    MW_STAT_ADD(l->stats.open_conns, 1);
    long open = atomic_fetch_add(&mw__open_conns, 1) + 1;
    if (open > mw__config.max_conns || l->shutting_down) {
        static _Atomic uint64_t last_warn;
        uint64_t now = uv_now(&l->uv);
        if (now - atomic_load(&last_warn) >= 1000) {
            atomic_store(&last_warn, now);
            MW_LOG(MW_LOG_WARN, l->id, "connection limit reached (max-conns %ld), rejecting",
                   mw__config.max_conns);
        }
        MW_STAT_ADD(l->stats.rejected, 1);
        c->flags |= MW_CONN_CLOSING | MW_CONN_CLOSE_NOTIFIED;
        c->reason = MW_REASON_LIMIT;
        finish_close(c);
        return;
    }
    /* TCP_NODELAY is already on: accepted sockets inherit it from the listener (tcp.c). */
    c->flags |= MW_CONN_OPENED;
    mw__lua_open(l, c);
    if (c->flags & MW_CONN_CLOSING)
        return;
    if (c->timeout_ms == 0 && mw__config.idle_timeout_ms > 0)
        mw__conn_set_timeout(c, mw__config.idle_timeout_ms);
    update_reading(c);
}

/* Takes over an accepted socket (non-blocking already): from this loop's listener, or handed
 * over by the accepting loop. */
void mw__conn_adopt(mw_loop_t *l, int fd) {
    mw_conn_t *c = calloc(1, sizeof *c);
    if (c == NULL) {
        MW_LOG(MW_LOG_ERROR, l->id, "out of memory accepting a connection");
        close(fd);
        return;
    }
    int rc = uv_poll_init(&l->uv, &c->poll, fd);
    if (rc < 0) {
        MW_LOG(MW_LOG_ERROR, l->id, "cannot poll an accepted socket: %s", uv_strerror(rc));
        close(fd);
        free(c);
        return;
    }
    c->fd = fd;
    setup(l, c);
}

/* ---- the FFI surface ------------------------------------------------------------------ */

int mw_conn_write(mw_conn_t *c, const char *p, size_t n) {
    mw_loop_t *l = mw__conn_loop(c);
    if (c->flags & MW_CONN_CLOSING)
        return -EPIPE;
    if (n == 0)
        return queued(c) > mw__config.high_water;
    if (queued(c) + n > mw__config.max_write_queue) {
        MW_LOG(MW_LOG_WARN, l->id,
               "conn %.0f: write queue over limit (%zu bytes queued > max-write-queue %zu), "
               "closing",
               c->id, queued(c) + n, mw__config.max_write_queue);
        mw__conn_teardown(c, MW_REASON_LIMIT, 0);
        return -ENOBUFS;
    }
    if (mw__buf_append(&l->bufcache, &c->out, p, n) < 0)
        return -ENOMEM;
    MW_STAT_ADD(l->stats.write_queue_bytes, n);
    mw__loop_flush_add(l, c);
    if (queued(c) > mw__config.high_water) {
        c->flags |= MW_CONN_WANT_DRAIN | MW_CONN_BACKPRESSURE;
        update_reading(c);
        return 1;
    }
    return 0;
}

int mw_conn_write_urgent(mw_conn_t *c, const char *p, size_t n) {
    mw_loop_t *l = mw__conn_loop(c);
    if (c->out.len == c->committed || n == 0 || (c->flags & MW_CONN_CLOSING) ||
        queued(c) + n > mw__config.max_write_queue)
        return mw_conn_write(c, p, n);
    /* Behind what a send started on (see flush): everything after that begins at a boundary
     * between write calls, so bytes put there never split what another call queued. */
    if (mw__buf_reserve(&l->bufcache, &c->out, n) < 0)
        return -ENOMEM;
    char *start = c->out.base + c->out.off + c->committed;
    memmove(start + n, start, c->out.len - c->committed);
    memcpy(start, p, n);
    c->out.len += (uint32_t)n;
    MW_STAT_ADD(l->stats.write_queue_bytes, n);
    mw__loop_flush_add(l, c);
    return queued(c) > mw__config.high_water;
}

void mw_conn_close(mw_conn_t *c) {
    mw__conn_teardown(c, MW_REASON_CLOSED, 1);
}

void mw_conn_abort(mw_conn_t *c) {
    mw__conn_teardown(c, MW_REASON_ABORTED, 0);
}

void mw_conn_fail(mw_conn_t *c, int reason) {
    if (reason != MW_REASON_LIMIT)
        reason = MW_REASON_ERROR;
    mw__conn_teardown(c, reason, 1);
}

void mw_conn_pause(mw_conn_t *c) {
    c->flags |= MW_CONN_PAUSED;
    update_reading(c);
}

void mw_conn_resume(mw_conn_t *c) {
    if (!(c->flags & MW_CONN_PAUSED))
        return;
    c->flags &= ~(uint32_t)MW_CONN_PAUSED;
    update_reading(c);
    if (c->in.len > 0 && !(c->flags & MW_CONN_CLOSING)) {
        c->flags |= MW_CONN_REDISPATCH;
        mw__loop_pending_add(mw__conn_loop(c), c);
    }
}

int mw_conn_peer(mw_conn_t *c, char *ip, size_t iplen, int *port) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getpeername(c->fd, (struct sockaddr *)&ss, &len) < 0)
        return -errno;
    if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        *port = ntohs(a->sin6_port);
        return uv_ip6_name(a, ip, iplen);
    }
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    *port = ntohs(a->sin_port);
    return uv_ip4_name(a, ip, iplen);
}

void mw_conn_set_timeout(mw_conn_t *c, unsigned ms) {
    if (c->flags & MW_CONN_CLOSING)
        return;
    mw__conn_set_timeout(c, ms);
}

size_t mw_conn_queued(mw_conn_t *c) {
    return queued(c);
}
