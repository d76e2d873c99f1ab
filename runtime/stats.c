/* Live statistics. Counters are kept per loop by the loop's own thread (relaxed atomics, no
 * locks on the hot path); a once-a-second timer per loop samples the Lua heap and measures
 * event-loop lag with a 100 ms probe timer. Other threads (the admin listener, the watchdog)
 * read snapshots with mw_stats_loop. */
#include "internal.h"

#include <malloc.h>
#include <string.h>

#define LAG_PROBE_MS 100
#define SAMPLE_MS 1000

static void on_lag_probe(uv_timer_t *t) {
    mw_loop_t *l = t->data;
    uint64_t late = uv_hrtime() - l->lag_armed_ns;
    uint64_t lag_us = late > LAG_PROBE_MS * 1000000ULL ? (late / 1000 - LAG_PROBE_MS * 1000) : 0;
    atomic_store_explicit(&l->stats.lag_us, lag_us, memory_order_relaxed);
    uint64_t max = atomic_load_explicit(&l->stats.lag_max_us, memory_order_relaxed);
    if (lag_us > max)
        atomic_store_explicit(&l->stats.lag_max_us, lag_us, memory_order_relaxed);
}

static void on_sample(uv_timer_t *t) {
    mw_loop_t *l = t->data;
    if (l->L)
        atomic_store_explicit(&l->stats.lua_bytes, mw__lua_heap_bytes(l), memory_order_relaxed);
    l->lag_armed_ns = uv_hrtime();
    uv_timer_start(&l->lag_timer, on_lag_probe, LAG_PROBE_MS, 0);
}

void mw__stats_start(mw_loop_t *l) {
    uv_timer_init(&l->uv, &l->sample_timer);
    uv_timer_init(&l->uv, &l->lag_timer);
    l->sample_timer.data = l;
    l->lag_timer.data = l;
    uv_unref((uv_handle_t *)&l->sample_timer);
    uv_unref((uv_handle_t *)&l->lag_timer);
    uv_timer_start(&l->sample_timer, on_sample, SAMPLE_MS, SAMPLE_MS);
}

int mw_stats_nloops(void) {
    return mw__nloops;
}

#define GET(f) atomic_load_explicit(&s->f, memory_order_relaxed)

int mw_stats_loop(int idx, mw_loop_stats_t *out) {
    if (idx < 1 || idx > mw__nloops)
        return -1;
    mw_loop_t *l = &mw__loops[idx - 1];
    mw_stats_t *s = &l->stats;
    memset(out, 0, sizeof *out);
    out->id = l->id;
    out->open_conns = GET(open_conns);
    out->accepted = GET(accepted);
    out->closed = GET(closed);
    out->rejected = GET(rejected);
    out->closed_eof = GET(closed_eof);
    out->closed_reset = GET(closed_reset);
    out->closed_timeout = GET(closed_timeout);
    out->closed_error = GET(closed_error);
    out->closed_limit = GET(closed_limit);
    out->closed_local = GET(closed_local);
    out->bytes_in = GET(bytes_in);
    out->bytes_out = GET(bytes_out);
    out->reads = GET(reads);
    out->writes = GET(writes);
    out->messages_in = (unsigned long long)l->lua_stats.messages_in;
    out->messages_out = (unsigned long long)l->lua_stats.messages_out;
    out->handler_errors = GET(handler_errors);
    out->write_queue_bytes = GET(write_queue_bytes);
    out->paused_conns = GET(paused_conns);
    out->timers = GET(timers);
    out->iterations = GET(iterations);
    out->wakeups = GET(wakeups);
    out->lag_us = GET(lag_us);
    out->lag_max_us = GET(lag_max_us);
    out->lua_bytes = GET(lua_bytes);
    out->gc_cycles = GET(gc_cycles);
    out->lua_live_bytes = GET(lua_live_bytes);
    out->gc_forced = GET(gc_forced);
    out->gc_forced_before = GET(gc_forced_before);
    out->stuck = GET(stuck);
    out->stuck_ms = GET(stuck_ms);
    out->spinning_fds = GET(spinning_fds);
    pthread_mutex_lock(&l->mbox_lock);
    out->generation = l->generation;
    out->status_seq = l->status_seq;
    snprintf(out->reload_error, sizeof out->reload_error, "%s", l->reload_error);
    pthread_mutex_unlock(&l->mbox_lock);
    return 0;
}

double mw_process_malloc_bytes(void) {
    struct mallinfo2 mi = mallinfo2();
    return (double)(mi.uordblks + mi.hblkhd);
}

mw_lua_stats_t *mw_loop_lua_stats(mw_loop_t *l) {
    return &l->lua_stats;
}

void mw_stats_gc_cycle(mw_loop_t *l, double heap_bytes) {
    MW_STAT_ADD(l->stats.gc_cycles, 1);
    atomic_store_explicit(&l->stats.lua_live_bytes, (uint64_t)heap_bytes, memory_order_relaxed);
}
