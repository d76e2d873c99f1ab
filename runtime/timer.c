/* Timers: the Lua-visible ones (loop.after / loop.every), and the single loop timer that
 * serves every connection's idle timeout (see the timeout lists in conn.c). */
#include "internal.h"

#include <stdlib.h>

static void on_timeouts(uv_timer_t *h) {
    mw_loop_t *l = h->data;
    l->armed_deadline = 0;
    mw__conn_timeouts_fire(l);
}

/* Arms the loop timer at the earliest head deadline of the timeout lists, or stops it. */
void mw__timeouts_arm(mw_loop_t *l) {
    uint64_t best = 0;
    for (int i = 0; i < l->ntlists; i++) {
        mw_conn_t *h = l->tlists[i].head;
        if (h && (best == 0 || h->deadline < best))
            best = h->deadline;
    }
    if (best == 0) {
        uv_timer_stop(&l->timeout_timer);
        l->armed_deadline = 0;
        return;
    }
    uint64_t now = uv_now(&l->uv);
    l->timeout_timer.data = l;
    uv_timer_start(&l->timeout_timer, on_timeouts, best > now ? best - now : 0, 0);
    l->armed_deadline = best;
}

char mw__lua_timer_tag;

static void on_timer_closed(uv_handle_t *h) {
    mw_timer_t *t = (mw_timer_t *)h;
    MW_STAT_ADD(t->loop->stats.timers, (uint64_t)-1);
    free(h);
}

static void on_timer(uv_timer_t *h) {
    mw_timer_t *t = (mw_timer_t *)h;
    mw__lua_timer(t->loop, t->ref);
}

mw_timer_t *mw_timer_start(mw_loop_t *l, double ms, double repeat, double ref) {
    mw_timer_t *t = malloc(sizeof *t);
    if (t == NULL)
        return NULL;
    uv_timer_init(&l->uv, &t->handle);
    t->handle.data = &mw__lua_timer_tag;
    t->loop = l;
    MW_STAT_ADD(l->stats.timers, 1);
    t->ref = ref;
    uint64_t first = ms < 0 ? 0 : (uint64_t)ms;
    uint64_t rep = repeat < 0 ? 0 : (uint64_t)repeat;
    uv_timer_start(&t->handle, on_timer, first, rep);
    return t;
}

void mw_timer_cancel(mw_timer_t *t) {
    uv_timer_stop(&t->handle);
    uv_close((uv_handle_t *)&t->handle, on_timer_closed);
}

double mw_loop_now(mw_loop_t *l) {
    return (double)uv_now(&l->uv);
}

double mw_loop_update_time(mw_loop_t *l) {
    uv_update_time(&l->uv);
    return (double)uv_now(&l->uv);
}
