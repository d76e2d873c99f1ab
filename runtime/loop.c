/* Loops: one thread, one uv_loop_t, one lua_State each.
 *
 * A turn of a loop: timers, reads and mailbox messages run Lua callbacks; then, in the
 * prepare phase just before the loop sleeps, deferred Lua work (on_close after a close from
 * Lua, input re-offered after a resume) runs, published messages go out to every loop's
 * mailbox, and every connection with queued output is written: one write per connection per
 * turn, however many times the handler called write.
 *
 * The only way into a loop from another thread is its mailbox: a mutex-protected list plus
 * uv_async_send, which libuv coalesces, so a burst of messages costs one wake-up. */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

mw_loop_t *mw__loops;
int mw__nloops;
_Atomic long mw__open_conns;

static pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t start_cond = PTHREAD_COND_INITIALIZER;
static int started_count;

void mw__loop_post(mw_loop_t *l, mw_msg_t *m) {
    m->next = NULL;
    pthread_mutex_lock(&l->mbox_lock);
    if (l->mbox_tail)
        l->mbox_tail->next = m;
    else
        l->mbox_head = m;
    l->mbox_tail = m;
    pthread_mutex_unlock(&l->mbox_lock);
    uv_async_send(&l->async);
}

void mw__loop_post_all(int type) {
    for (int i = 0; i < mw__nloops; i++) {
        mw_msg_t *m = calloc(1, sizeof *m);
        if (m == NULL)
            continue;
        m->type = type;
        mw__loop_post(&mw__loops[i], m);
    }
}

static void close_walk(uv_handle_t *h, void *arg) {
    (void)arg;
    if (uv_is_closing(h))
        return;
    mw_loop_t *l = h->loop->data;
    if (h == (uv_handle_t *)&l->listener || h == (uv_handle_t *)&l->accept_timer) {
        mw__tcp_stop(l);
        return;
    }
    if (h == (uv_handle_t *)&l->async || h == (uv_handle_t *)&l->prepare ||
        h == (uv_handle_t *)&l->idle || h == (uv_handle_t *)&l->timeout_timer ||
        h == (uv_handle_t *)&l->drain_timer) {
        uv_close(h, NULL);
        return;
    }
    if (h->type == UV_TIMER && h->data == &mw__lua_timer_tag) {
        /* A Lua timer (loop.after / loop.every). */
        mw_timer_cancel((mw_timer_t *)h);
        return;
    }
    /* Anything else (fs watchers, helper handles) owns its memory elsewhere. */
    uv_close(h, NULL);
}

static void on_drain_timeout(uv_timer_t *t) {
    mw_loop_t *l = t->data;
    long n = l->nconns;
    if (n > 0)
        MW_LOG(MW_LOG_INFO, l->id, "drain timeout: closing %ld remaining connection(s)", n);
    mw__conn_close_all(l, MW_REASON_SHUTDOWN);
}

static void begin_shutdown(mw_loop_t *l) {
    if (l->shutting_down)
        return;
    l->shutting_down = 1;
    mw__tcp_stop(l);
    mw__lua_shutdown(l);
    mw__conn_close_lingering(l);
    if (l->nconns == 0) {
        uv_stop(&l->uv);
        return;
    }
    l->drain_timer.data = l;
    uv_timer_start(&l->drain_timer, on_drain_timeout, mw__config.drain_timeout_ms, 0);
}

static void on_async(uv_async_t *a) {
    mw_loop_t *l = a->data;
    pthread_mutex_lock(&l->mbox_lock);
    mw_msg_t *m = l->mbox_head;
    l->mbox_head = l->mbox_tail = NULL;
    l->mbox_npub = 0;
    pthread_mutex_unlock(&l->mbox_lock);
    MW_STAT_ADD(l->stats.wakeups, 1);
    int reload = 0;
    while (m) {
        mw_msg_t *next = m->next;
        switch (m->type) {
        case MW_MSG_SHUTDOWN:
            begin_shutdown(l);
            break;
        case MW_MSG_STOP:
            begin_shutdown(l);
            mw__conn_close_all(l, MW_REASON_SHUTDOWN);
            break;
        case MW_MSG_FD:
            if (l->shutting_down)
                close(m->fd);
            else
                mw__conn_adopt(l, m->fd);
            break;
        case MW_MSG_PUBLISH:
            mw__pubsub_deliver(l, m->blob);
            break;
        case MW_MSG_RELOAD:
            reload = 1; /* several requests in one batch make one reload */
            break;
        case MW_MSG_PROFILE:
            mw__lua_profile(l, m->fd);
            break;
        case MW_MSG_GC:
            mw__lua_gc(l);
            break;
        case MW_MSG_PROFILE_DONE:
            mw__lua_profile_done(l, m->fd, m->blob);
            mw__blob_unref(m->blob);
            break;
        }
        free(m);
        m = next;
    }
    if (reload && !l->shutting_down)
        mw__lua_reload(l);
}

void mw__reload_all(void) {
    mw__loop_post_all(MW_MSG_RELOAD);
}

int mw_profile_control(int loop_id, int start) {
    if (loop_id < 1 || loop_id > mw__nloops)
        return -EINVAL;
    mw_msg_t *m = calloc(1, sizeof *m);
    if (m == NULL)
        return -ENOMEM;
    m->type = MW_MSG_PROFILE;
    m->fd = start;
    mw__loop_post(&mw__loops[loop_id - 1], m);
    return 0;
}

int mw_profile_result(mw_loop_t *l, const char *p, size_t n) {
    if (mw__admin == NULL)
        return -ENOENT;
    mw_blob_t *b = malloc(sizeof *b + n);
    mw_msg_t *m = calloc(1, sizeof *m);
    if (b == NULL || m == NULL) {
        free(b);
        free(m);
        return -ENOMEM;
    }
    atomic_init(&b->refs, 1);
    b->topic_len = 0;
    b->len = n;
    memcpy(b->data, p, n);
    m->type = MW_MSG_PROFILE_DONE;
    m->fd = l->id;
    m->blob = b;
    mw__loop_post(mw__admin, m);
    return 0;
}

void mw_gc_all(void) {
    mw__loop_post_all(MW_MSG_GC);
}

void mw_reload_all(void) {
    mw__log(MW_LOG_INFO, 0, "reload requested");
    mw__reload_all();
}

void mw_loop_set_status(mw_loop_t *l, double generation, const char *err) {
    pthread_mutex_lock(&l->mbox_lock);
    l->generation = generation;
    l->status_seq++;
    snprintf(l->reload_error, sizeof l->reload_error, "%s", err ? err : "");
    pthread_mutex_unlock(&l->mbox_lock);
}

static void on_prepare(uv_prepare_t *p) {
    mw_loop_t *l = p->data;
    MW_STAT_ADD(l->stats.iterations, 1);
    if (l->pending_head)
        mw__conn_run_pending(l);
    if (l->outbox_n)
        mw__pubsub_flush(l);
    if (l->flush_head)
        mw__conn_flush_all(l);
}

static int loop_init(mw_loop_t *l) {
    char *err = l->init_error;
    size_t errlen = sizeof l->init_error;
    int rc = uv_loop_init(&l->uv);
    if (rc < 0) {
        snprintf(err, errlen, "uv_loop_init: %s", uv_strerror(rc));
        return rc;
    }
    l->uv.data = l;
    l->rbuf = malloc(MW_READ_CHUNK);
    if (l->rbuf == NULL) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    uv_async_init(&l->uv, &l->async, on_async);
    l->async.data = l;
    uv_prepare_init(&l->uv, &l->prepare);
    l->prepare.data = l;
    uv_prepare_start(&l->prepare, on_prepare);
    uv_unref((uv_handle_t *)&l->prepare);
    uv_idle_init(&l->uv, &l->idle);
    uv_timer_init(&l->uv, &l->timeout_timer);
    uv_unref((uv_handle_t *)&l->timeout_timer);
    uv_timer_init(&l->uv, &l->drain_timer);
    uv_unref((uv_handle_t *)&l->drain_timer);
    mw__stats_start(l);
    /* Lua first: a handler that does not load must not leave a socket accepting. */
    rc = mw__lua_start(l, err, errlen);
    if (rc < 0)
        return rc;
    if (l->reuseport || l->id == 1 || l->is_admin) {
        rc = mw__tcp_listen(l, err, errlen);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static void loop_cleanup(mw_loop_t *l) {
    if (l->uv.data != l)
        return; /* uv_loop_init failed: nothing to tear down */
    /* Whatever is left (user timers, the loop's own handles) is closed; connections were
     * all closed by the drain. Run until every close callback has fired. */
    mw__conn_close_all(l, MW_REASON_SHUTDOWN);
    uv_run(&l->uv, UV_RUN_NOWAIT);
    if (l->pending_head)
        mw__conn_run_pending(l);
    uv_walk(&l->uv, close_walk, NULL);
    while (uv_run(&l->uv, UV_RUN_NOWAIT) != 0) {
        if (l->pending_head)
            mw__conn_run_pending(l);
    }
    if (l->pending_head)
        mw__conn_run_pending(l);
    mw__lua_stop(l);
    int rc = uv_loop_close(&l->uv);
    if (rc < 0)
        MW_LOG(MW_LOG_WARN, l->id, "loop closed with handles still open");
    /* Drop anything still in the mailbox. */
    for (mw_msg_t *m = l->mbox_head; m;) {
        mw_msg_t *next = m->next;
        if (m->type == MW_MSG_FD)
            close(m->fd);
        if (m->type == MW_MSG_PUBLISH || m->type == MW_MSG_PROFILE_DONE)
            mw__blob_unref(m->blob);
        free(m);
        m = next;
    }
    l->mbox_head = l->mbox_tail = NULL;
    for (int i = 0; i < l->outbox_n; i++)
        mw__blob_unref(l->outbox[i]);
    free(l->outbox);
    free(l->tlists);
    free(l->rbuf);
    mw__bufcache_clear(&l->bufcache);
}

static void *loop_main(void *arg) {
    mw_loop_t *l = arg;
    int rc = loop_init(l);
    pthread_mutex_lock(&start_lock);
    l->init_status = rc < 0 ? rc : 1;
    started_count++;
    pthread_cond_broadcast(&start_cond);
    pthread_mutex_unlock(&start_lock);
    if (rc == 0) {
        MW_LOG(MW_LOG_DEBUG, l->id, "loop running");
        /* uv_stop ends a turn early; keep going until the drain is complete. */
        while (uv_run(&l->uv, UV_RUN_DEFAULT) != 0 && !(l->shutting_down && l->nconns == 0))
            ;
    }
    loop_cleanup(l);
    mw__main_notify_exit();
    return NULL;
}

/* Starts every loop and waits until each has loaded its handler and bound its socket.
 * Returns 0, or -1 with the first loop's error already logged (every loop is then stopped
 * and joined before returning). */
int mw__loop_start_all(void) {
    mw__loops = calloc((size_t)mw__nloops, sizeof *mw__loops);
    if (mw__loops == NULL)
        return -1;
    for (int i = 0; i < mw__nloops; i++) {
        mw_loop_t *l = &mw__loops[i];
        l->id = i + 1;
        l->script = mw__config.script;
        l->mode = mw__config.mode;
        l->host = mw__config.host;
        l->port = mw__config.port;
        l->reuseport = mw__config.reuseport;
        pthread_mutex_init(&l->mbox_lock, NULL);
    }
    int created = 0;
    for (int i = 0; i < mw__nloops; i++) {
        if (pthread_create(&mw__loops[i].thread, NULL, loop_main, &mw__loops[i]) != 0) {
            mw__log(MW_LOG_ERROR, 0, "cannot start loop thread %d", i + 1);
            break;
        }
        created++;
    }
    pthread_mutex_lock(&start_lock);
    while (started_count < created)
        pthread_cond_wait(&start_cond, &start_lock);
    pthread_mutex_unlock(&start_lock);
    int failed = created < mw__nloops;
    for (int i = 0; i < created; i++) {
        if (mw__loops[i].init_status < 0) {
            if (!failed)
                mw__log(MW_LOG_ERROR, 0, "%s", mw__loops[i].init_error);
            failed = 1;
        }
    }
    if (failed) {
        for (int i = 0; i < created; i++) {
            mw_loop_t *l = &mw__loops[i];
            if (l->init_status > 0) {
                mw_msg_t *m = calloc(1, sizeof *m);
                if (m) {
                    m->type = MW_MSG_STOP;
                    mw__loop_post(l, m);
                }
            }
        }
        mw__nloops = created;
        mw__loop_join_all();
        return -1;
    }
    return 0;
}

mw_loop_t *mw__admin;

/* The admin listener is a loop of its own (its own thread and Lua state running
 * lua/moonwire/admin.lua), so a busy or stuck worker loop never delays /metrics. */
int mw__admin_start(void) {
    mw_loop_t *l = calloc(1, sizeof *l);
    if (l == NULL)
        return -1;
    l->id = -1;
    l->is_admin = 1;
    l->script = mw__config.admin_script;
    l->mode = "admin";
    l->host = mw__config.admin_host;
    l->port = mw__config.admin_port;
    pthread_mutex_init(&l->mbox_lock, NULL);
    started_count = 0;
    if (pthread_create(&l->thread, NULL, loop_main, l) != 0) {
        free(l);
        return -1;
    }
    pthread_mutex_lock(&start_lock);
    while (started_count < 1)
        pthread_cond_wait(&start_cond, &start_lock);
    pthread_mutex_unlock(&start_lock);
    mw__admin = l;
    if (l->init_status < 0) {
        mw__log(MW_LOG_ERROR, 0, "admin listener: %s", l->init_error);
        return -1;
    }
    return 0;
}

void mw__admin_join(void) {
    if (mw__admin) {
        pthread_join(mw__admin->thread, NULL);
        free(mw__admin);
        mw__admin = NULL;
    }
}

void mw__loop_join_all(void) {
    for (int i = 0; i < mw__nloops; i++)
        pthread_join(mw__loops[i].thread, NULL);
}
