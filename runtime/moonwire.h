/* moonwire's C API for Lua.
 *
 * These functions are called from Lua through LuaJIT's FFI (lua/moonwire/core.lua holds the
 * matching ffi.cdef and checks MW_ABI_VERSION). None of them ever calls back into Lua: work
 * that needs Lua (on_close after a close, re-dispatching buffered input after a resume) is
 * queued and done by the loop at a safe point between callbacks.
 *
 * Connection and timer pointers stay valid until Lua has been told they are gone (on_close
 * for a connection, cancel or a one-shot firing for a timer).
 */
#ifndef MOONWIRE_H
#define MOONWIRE_H

#include <stddef.h>
#include <stdint.h>

#define MW_ABI_VERSION 3

typedef struct mw_loop_s mw_loop_t;
typedef struct mw_conn_s mw_conn_t;
typedef struct mw_timer_s mw_timer_t;

int mw_abi_version(void);

/* Queues n bytes for writing (copied). Returns 0, 1 when the write queue is now over its
 * high-water mark (the bytes are still queued; on_drain follows when it empties), or a
 * negative errno: -EPIPE when the connection is closing, -ENOBUFS when the queue went over its
 * hard limit (the connection is then closed with reason "limit"). */
int mw_conn_write(mw_conn_t *c, const char *p, size_t n);
/* Like mw_conn_write, but the bytes go ahead of all queued output that has not been handed to
 * the kernel yet (only the rest of a write the kernel took part of is ahead of them). For control
 * messages that must not wait behind a full queue: a WebSocket pong or close frame. The
 * queue is cut only between calls, so write whole messages with single calls. */
int mw_conn_write_urgent(mw_conn_t *c, const char *p, size_t n);
/* Flushes what is queued, then closes. on_close(conn, "closed") follows at a safe point. */
void mw_conn_close(mw_conn_t *c);
/* Drops the queue and resets the connection. on_close(conn, "aborted") follows. */
void mw_conn_abort(mw_conn_t *c);
/* Flushes then closes with reason 6 ("error") or 7 ("limit"): a protocol failure. */
void mw_conn_fail(mw_conn_t *c, int reason);
void mw_conn_pause(mw_conn_t *c);
void mw_conn_resume(mw_conn_t *c);
/* Writes the peer address into ip (NUL-terminated) and *port. Returns 0 or a negative errno. */
int mw_conn_peer(mw_conn_t *c, char *ip, size_t iplen, int *port);
/* Idle timeout in milliseconds, re-armed by every read; 0 disables it. */
void mw_conn_set_timeout(mw_conn_t *c, unsigned ms);
size_t mw_conn_queued(mw_conn_t *c);

/* Starts a timer that fires after ms and then every repeat ms (0: once). ref is handed back
 * to Lua when it fires. Returns NULL on failure. */
mw_timer_t *mw_timer_start(mw_loop_t *l, double ms, double repeat, double ref);
/* Stops a timer and frees it; the pointer is invalid afterwards. */
void mw_timer_cancel(mw_timer_t *t);

/* The loop's cached time in milliseconds. */
double mw_loop_now(mw_loop_t *l);
/* Loop time updated to now (a clock read). */
double mw_loop_update_time(mw_loop_t *l);

/* One log line (level 0 debug .. 3 error) tagged with the loop id. */
void mw_log_write(int level, int loop_id, const char *msg);
int mw_log_get_level(void);

/* Publishes msg on topic to every loop (including this one). The bytes are copied; delivery
 * happens after the current callback, batched per loop turn. Returns 0 or -ENOMEM. */
int mw_publish(mw_loop_t *l, const char *topic, size_t tlen, const char *msg, size_t mlen);

/* Reload bookkeeping: the loop's handler generation and its last reload error ("" or NULL
 * when the last reload succeeded), shown by status and metrics. */
void mw_loop_set_status(mw_loop_t *l, double generation, const char *err);
/* Asks the main thread to watch a file (absolute path) and reload when it changes. */
void mw_watch_file(const char *path);

/* Counters Lua updates directly (plain stores from the owning loop's thread; doubles so the
 * JIT compiles the increments to one add). */
typedef struct mw_lua_stats_s {
    double messages_in;
    double messages_out;
} mw_lua_stats_t;
mw_lua_stats_t *mw_loop_lua_stats(mw_loop_t *l);

/* A snapshot of one loop's statistics, for the admin listener. status_seq counts the loop's
 * reload answers (mw_loop_set_status calls), so a waiter can tell a fresh answer from a stale
 * reload_error left by an earlier attempt. */
typedef struct mw_loop_stats_s {
    int id;
    double generation;
    unsigned long long open_conns, accepted, closed, rejected;
    unsigned long long closed_eof, closed_reset, closed_timeout, closed_error, closed_limit,
        closed_local;
    unsigned long long bytes_in, bytes_out, reads, writes, messages_in, messages_out;
    unsigned long long handler_errors, write_queue_bytes, paused_conns, timers;
    unsigned long long iterations, wakeups, lag_us, lag_max_us, lua_bytes, gc_cycles;
    unsigned long long lua_live_bytes, gc_forced, gc_forced_before;
    unsigned long long stuck, stuck_ms, spinning_fds;
    char reload_error[512];
    unsigned long long status_seq;
} mw_loop_stats_t;
int mw_stats_nloops(void);
/* Fills out for loop idx (1..N). Returns 0, or -1 for a bad index. */
int mw_stats_loop(int idx, mw_loop_stats_t *out);
/* Called by the runtime at the end of every garbage-collector cycle with the heap size then
 * (what the cycle left live, plus what was allocated while it ran). */
void mw_stats_gc_cycle(mw_loop_t *l, double heap_bytes);
/* Bytes the C allocator (malloc) has handed out and not had back, all threads: the C core's
 * connections, buffers and queues (LuaJIT allocates its heaps on its own). */
double mw_process_malloc_bytes(void);
/* Profiler plumbing for the admin listener: start or stop jit.profile inside worker loop
 * loop_id (its own thread), and hand a loop's folded stacks back to the admin loop. */
int mw_profile_control(int loop_id, int start);
int mw_profile_result(mw_loop_t *l, const char *p, size_t n);
/* Tells the watchdog which callback event ev runs ("on_data at app.lua:12"), for reports. */
void mw_loop_set_callback_info(mw_loop_t *l, int ev, const char *info);
/* --max-callback-ms (0 when off): handler code is kept interpretable when it is set. */
unsigned mw_config_max_callback_ms(void);
/* Asks every loop to reload (as SIGHUP does). */
void mw_reload_all(void);
/* Asks every worker loop to run a full garbage collection between two events; each records
 * its heap before (gc_forced_before) and after (lua_live_bytes) and counts it (gc_forced). */
void mw_gc_all(void);

/* Copies n bytes from src to dst XOR-ed with a WebSocket masking key (the four key bytes in
 * memory order, loaded as one uint32); dst may equal src. Returns 1 when every result byte is
 * ASCII (< 0x80), else 0. */
int mw_unmask(uint8_t *dst, const uint8_t *src, size_t n, uint32_t mask);
/* Length of the longest prefix of p[0, n) whose bytes b all have set[b] != 0 (strspn with a
 * 256-entry table, and a length instead of a terminator). */
size_t mw_span(const uint8_t *p, size_t n, const uint8_t *set);

#endif
