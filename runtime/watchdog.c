/* The runaway-handler watchdog: a thread that notices a loop stuck inside one Lua callback.
 *
 * Each loop bumps a sequence number and raises a flag around every callback (two relaxed
 * stores, no clock read on the hot path). Every 100 ms the watchdog compares: a loop still
 * inside the callback it was in last time has been stuck since then. Past --watchdog-ms it
 * is reported once (loop, the callback and where it is defined, and the Lua stack where the
 * VM can give one) and counted; the other loops are untouched and keep serving.
 *
 * The stack and the abort (--max-callback-ms) use a Lua hook set from this thread, which
 * fires in the stuck thread at its next interpreted instruction. LuaJIT does not check hooks
 * inside JIT-compiled loops, so with --max-callback-ms the runtime turns the JIT off for the
 * handler's own functions (jit.off(chunk, true)), which keeps them interruptible; see
 * docs/observability.md. */
#include "internal.h"

#include <lauxlib.h>
#include <lua.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define TICK_MS 100
#define STACK_WAIT_MS 300

typedef struct wd_state_s {
    uint64_t seq;
    uint64_t since_ns;
    int reported;
    int aborted;
} wd_state_t;

static pthread_t wd_thread;
static _Atomic int wd_stop;
static int wd_running;

static mw_loop_t *loop_of(lua_State *L) {
    for (int i = 0; i < mw__nloops; i++)
        if (mw__loops[i].L == L)
            return &mw__loops[i];
    return NULL;
}

/* Runs in the stuck loop's own thread, at a safe point of the Lua VM. */
static void hook(lua_State *L, lua_Debug *ar) {
    (void)ar;
    mw_loop_t *l = loop_of(L);
    lua_sethook(L, NULL, 0, 0);
    if (l == NULL || atomic_load(&l->wd_seq) != atomic_load(&l->dispatch_seq) ||
        !atomic_load(&l->in_cb))
        return; /* that callback is over: nothing to do for this one */
    luaL_traceback(L, L, NULL, 0);
    pthread_mutex_lock(&l->mbox_lock);
    snprintf(l->stuck_stack, sizeof l->stuck_stack, "%s", lua_tostring(L, -1));
    pthread_mutex_unlock(&l->mbox_lock);
    lua_pop(L, 1);
    atomic_store(&l->wd_have_stack, 1);
    if (atomic_load(&l->wd_abort))
        luaL_error(L, "callback aborted: it ran longer than --max-callback-ms (%u ms)",
                   mw__config.max_callback_ms);
}

static void request_hook(mw_loop_t *l, uint64_t seq, int abort) {
    atomic_store(&l->wd_seq, seq);
    atomic_store(&l->wd_abort, abort);
    /* lua_sethook only stores the hook and updates the dispatch table; it is the call the
     * Lua manual allows from outside the running code (e.g. a signal handler). */
    lua_sethook(l->L, hook, LUA_MASKCOUNT, 1);
}

static uint64_t now_ns(void) {
    return uv_hrtime();
}

static void report(mw_loop_t *l, uint64_t stuck_ms, uint64_t seq) {
    atomic_store(&l->wd_have_stack, 0);
    request_hook(l, seq, 0);
    /* Give the hook a moment to capture the stack in the loop's thread. */
    for (int waited = 0; waited < STACK_WAIT_MS && !atomic_load(&l->wd_have_stack); waited += 10) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    char where[320], stack[2048];
    pthread_mutex_lock(&l->mbox_lock);
    int ev = atomic_load(&l->cb_event);
    snprintf(where, sizeof where, "%s",
             ev > 0 && ev < MW_EV_MAX && l->cb_info[ev][0] ? l->cb_info[ev] : "a callback");
    snprintf(stack, sizeof stack, "%s", atomic_load(&l->wd_have_stack) ? l->stuck_stack : "");
    pthread_mutex_unlock(&l->mbox_lock);
    if (stack[0])
        mw__log(MW_LOG_ERROR, l->id, "stuck for %llu ms in %s (other loops keep serving)\n%s",
                (unsigned long long)stuck_ms, where, stack);
    else
        mw__log(MW_LOG_ERROR, l->id,
                "stuck for %llu ms in %s (other loops keep serving); no Lua stack: the code is "
                "running JIT-compiled (--max-callback-ms keeps handler code interruptible)",
                (unsigned long long)stuck_ms, where);
}

static void *wd_main(void *arg) {
    (void)arg;
    wd_state_t st[256];
    memset(st, 0, sizeof st);
    unsigned limit = mw__config.watchdog_ms;
    unsigned max_cb = mw__config.max_callback_ms;
    while (!atomic_load(&wd_stop)) {
        struct timespec ts = {0, TICK_MS * 1000000L};
        nanosleep(&ts, NULL);
        uint64_t now = now_ns();
        for (int i = 0; i < mw__nloops && i < 256; i++) {
            mw_loop_t *l = &mw__loops[i];
            wd_state_t *w = &st[i];
            uint64_t seq = atomic_load_explicit(&l->dispatch_seq, memory_order_relaxed);
            int in_cb = atomic_load_explicit(&l->in_cb, memory_order_relaxed);
            if (!in_cb || seq != w->seq) {
                if (w->reported)
                    MW_LOG(MW_LOG_INFO, l->id, "no longer stuck");
                w->seq = seq;
                w->since_ns = now;
                w->reported = w->aborted = 0;
                atomic_store_explicit(&l->stats.stuck_ms, 0, memory_order_relaxed);
                continue;
            }
            uint64_t stuck_ms = (now - w->since_ns) / 1000000 + TICK_MS / 2;
            atomic_store_explicit(&l->stats.stuck_ms, stuck_ms, memory_order_relaxed);
            if (limit && stuck_ms >= limit && !w->reported) {
                w->reported = 1;
                MW_STAT_ADD(l->stats.stuck, 1);
                report(l, stuck_ms, seq);
            }
            if (max_cb && stuck_ms >= max_cb && !w->aborted) {
                w->aborted = 1;
                if (!w->reported) {
                    w->reported = 1;
                    MW_STAT_ADD(l->stats.stuck, 1);
                }
                MW_LOG(MW_LOG_ERROR, l->id,
                       "aborting the callback after %llu ms (--max-callback-ms %u)",
                       (unsigned long long)stuck_ms, max_cb);
                request_hook(l, seq, 1);
            }
        }
    }
    return NULL;
}

int mw__watchdog_start(void) {
    if (mw__config.watchdog_ms == 0 && mw__config.max_callback_ms == 0)
        return 0;
    if (pthread_create(&wd_thread, NULL, wd_main, NULL) != 0)
        return -1;
    wd_running = 1;
    return 0;
}

void mw__watchdog_stop(void) {
    if (!wd_running)
        return;
    atomic_store(&wd_stop, 1);
    pthread_join(wd_thread, NULL);
    wd_running = 0;
}

void mw_loop_set_callback_info(mw_loop_t *l, int ev, const char *info) {
    if (ev <= 0 || ev >= MW_EV_MAX)
        return;
    pthread_mutex_lock(&l->mbox_lock);
    snprintf(l->cb_info[ev], sizeof l->cb_info[ev], "%s", info ? info : "");
    pthread_mutex_unlock(&l->mbox_lock);
}
