/* Internal declarations shared by the runtime's C files.
 *
 * Ownership model: one thread owns one mw_loop_t, which ties together a uv_loop_t and a
 * lua_State. Nothing in a loop is touched by another thread except its mailbox (mutex +
 * coalesced uv_async_send) and its stats (relaxed atomics, read-only from outside).
 */
#ifndef MW_INTERNAL_H
#define MW_INTERNAL_H

#include "moonwire.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define MW_VERSION "0.1.0"

/* Size of the per-loop read buffer and of one read. A connection is read at most
 * MW_READS_PER_WAKE times per wake-up (and only again while reads fill the buffer), so one
 * busy connection can take at most MW_READS_PER_WAKE * MW_READ_CHUNK bytes per turn. */
#define MW_READ_CHUNK (64 * 1024)
#define MW_READS_PER_WAKE 32
/* Connections accepted per wake-up of a listening socket before the loop moves on. */
#define MW_ACCEPTS_PER_WAKE 128
/* How long accepting pauses when the process is out of file descriptors (or memory). */
#define MW_ACCEPT_PAUSE_MS 100
/* Small buffers of this size are recycled per loop instead of going back to malloc. */
#define MW_SMALL_BUF 4096
#define MW_SMALL_CACHE 256
/* A socket whose read wake-ups bring nothing this many times in a row is flagged as
 * spinning (logged once, counted in stats.spinning_fds until it makes progress). */
#define MW_SPIN_WAKES 1000
/* How long a closing connection waits for its peer (flush, FIN, lingering read). */
#define MW_LINGER_MS 3000

/* ---- logging (log.c) ---------------------------------------------------------------- */

enum { MW_LOG_DEBUG = 0, MW_LOG_INFO, MW_LOG_WARN, MW_LOG_ERROR, MW_LOG_OFF };

extern int mw__log_level;
void mw__log(int level, int loop_id, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int mw__log_parse_level(const char *name);

#define MW_LOG(lvl, loopid, ...)                                                                   \
    do {                                                                                           \
        if ((lvl) >= mw__log_level)                                                                \
            mw__log((lvl), (loopid), __VA_ARGS__);                                                 \
    } while (0)

/* ---- byte buffers (buffer.c) -------------------------------------------------------- */

/* Bytes live in base[off .. off+len). cap is the allocation size. 32-bit sizes keep the
 * per-connection struct small; a buffer never grows past MW_BUF_MAX. */
typedef struct mw_buf_s {
    char *base;
    uint32_t off;
    uint32_t len;
    uint32_t cap;
} mw_buf_t;

#define MW_BUF_MAX 0x80000000u

typedef struct mw_bufcache_s {
    char *free[MW_SMALL_CACHE];
    int n;
} mw_bufcache_t;

int mw__buf_reserve(mw_bufcache_t *bc, mw_buf_t *b, size_t extra);
int mw__buf_append(mw_bufcache_t *bc, mw_buf_t *b, const void *p, size_t n);
void mw__buf_consume(mw_bufcache_t *bc, mw_buf_t *b, size_t n);
void mw__buf_free(mw_bufcache_t *bc, mw_buf_t *b);
void mw__block_free(mw_bufcache_t *bc, char *base, size_t cap);
void mw__bufcache_clear(mw_bufcache_t *bc);

/* ---- configuration (main.c fills it, loops read it) -------------------------------- */

typedef struct mw_config_s {
    const char *script;     /* handler script path (absolute) */
    const char *lua_dir;    /* where the moonwire.* Lua modules live */
    const char *mode;       /* "run" or "ws" */
    const char *static_dir; /* ws mode: directory served at / */
    char host[64];
    int port;
    int nloops;
    int reuseport; /* 1: SO_REUSEPORT per loop; 0: loop 1 accepts and hands off */
    size_t max_input;
    size_t max_write_queue;
    size_t high_water;
    long max_conns;
    unsigned idle_timeout_ms;
    unsigned drain_timeout_ms;
    int watch;
    const char *pid_file;
    char admin_host[64]; /* admin listener, off when admin_port is 0 */
    int admin_port;
    char admin_script[4096];
    unsigned watchdog_ms;     /* report a callback running longer; 0 = off */
    unsigned max_callback_ms; /* abort a callback running longer; 0 = off */
} mw_config_t;

extern mw_config_t mw__config;

/* ---- stats (stats.c) --------------------------------------------------------------- */

/* Counters are written only by the owning loop thread and read by others, so relaxed
 * atomic loads and stores (plain moves on x86) are enough and keep the hot path lock-free. */
typedef struct mw_stats_s {
    _Atomic uint64_t accepted, closed, rejected;
    _Atomic uint64_t closed_eof, closed_reset, closed_timeout, closed_error, closed_limit,
        closed_local;
    _Atomic uint64_t bytes_in, bytes_out, reads, writes;
    _Atomic uint64_t handler_errors;
    _Atomic uint64_t open_conns;
    _Atomic uint64_t wakeups, iterations;
    _Atomic uint64_t write_queue_bytes, paused_conns, timers;
    _Atomic uint64_t lag_us, lag_max_us, lua_bytes, gc_cycles;
    _Atomic uint64_t lua_live_bytes, gc_forced, gc_forced_before;
    _Atomic uint64_t stuck, stuck_ms, spinning_fds;
} mw_stats_t;

#define MW_STAT_ADD(field, n)                                                                      \
    atomic_store_explicit(&(field), atomic_load_explicit(&(field), memory_order_relaxed) + (n),    \
                          memory_order_relaxed)
#define MW_STAT_GET(field) atomic_load_explicit(&(field), memory_order_relaxed)

/* ---- mailbox messages (loop.c) ----------------------------------------------------- */

enum {
    MW_MSG_SHUTDOWN = 1, /* stop accepting, drain, exit */
    MW_MSG_STOP,         /* drain timeout over: close everything now */
    MW_MSG_FD,           /* single-acceptor fallback: adopt an accepted socket */
    MW_MSG_PUBLISH,      /* pubsub delivery */
    MW_MSG_RELOAD,       /* reload the handler at the next safe point */
    MW_MSG_PROFILE,      /* start (fd = 1) or stop (fd = 0) the Lua profiler */
    MW_MSG_PROFILE_DONE, /* to the admin loop: a loop's folded stacks (blob) */
    MW_MSG_GC,           /* run a full Lua garbage collection */
};

/* A published message, shared by every loop it is delivered to. */
typedef struct mw_blob_s {
    _Atomic int refs;
    size_t topic_len;
    size_t len;
    char data[]; /* topic bytes followed by message bytes */
} mw_blob_t;

typedef struct mw_msg_s {
    struct mw_msg_s *next;
    int type;
    int fd;
    mw_blob_t *blob;
} mw_msg_t;

/* ---- connections (conn.c) ---------------------------------------------------------- */

enum {
    MW_CONN_READING = 1 << 0,         /* polling for input */
    MW_CONN_PAUSED = 1 << 1,          /* the handler paused reading */
    MW_CONN_BACKPRESSURE = 1 << 2,    /* paused because the write queue is over high water */
    MW_CONN_CLOSING = 1 << 3,         /* no more callbacks except the pending on_close */
    MW_CONN_WANT_DRAIN = 1 << 4,      /* write() returned false: on_drain when the queue empties */
    MW_CONN_IN_FLUSH = 1 << 5,        /* on the loop's flush list */
    MW_CONN_IN_PENDING = 1 << 6,      /* on the loop's pending list */
    MW_CONN_CLOSE_NOTIFIED = 1 << 7,  /* on_close has been delivered to Lua */
    MW_CONN_SHUTDOWN_SENT = 1 << 8,   /* FIN queued */
    MW_CONN_HANDLE_CLOSING = 1 << 9,  /* uv_close called */
    MW_CONN_REDISPATCH = 1 << 10,     /* buffered input must be offered to Lua again */
    MW_CONN_WRITING = 1 << 11,        /* output the kernel did not take: polling for room */
    MW_CONN_OPENED = 1 << 12,         /* on_open has been delivered */
    MW_CONN_HARD_CLOSE = 1 << 13,     /* drop the queue and reset instead of flushing */
    MW_CONN_COUNTED_PAUSED = 1 << 14, /* counted in stats.paused_conns */
    MW_CONN_SPINNING = 1 << 15,       /* flagged as waking the loop without progress */
};

typedef struct mw_loop_s mw_loop_t;

/* An intrusive list of connections sharing one idle-timeout value, ordered by deadline. */
typedef struct mw_tlist_s {
    unsigned ms;
    mw_conn_t *head, *tail;
} mw_tlist_t;

struct mw_conn_s {
    uv_poll_t poll; /* first, so a handle pointer is a connection pointer; poll.loop->data
                       is the owning mw_loop_t (see mw__conn_loop) */
    int fd;         /* the socket: read with recv, written with send (conn.c) */
    int events;     /* UV_READABLE / UV_WRITABLE the poll handle is started with */
    double id;
    uint32_t flags;
    int reason;         /* MW_REASON_* once closing */
    mw_buf_t in;        /* input not yet consumed by the handler */
    mw_buf_t out;       /* output not yet handed to the kernel */
    uint32_t committed; /* bytes at the front of out that a send already started on */
    mw_conn_t *flush_next;
    mw_conn_t *pending_next;
    /* idle timeout: position in one of the loop's timeout lists */
    mw_tlist_t *tlist;
    mw_conn_t *tprev, *tnext;
    uint64_t deadline;
    unsigned timeout_ms;
    uint32_t empty_wakes; /* consecutive read wake-ups that brought nothing (spin check) */
};

enum {
    MW_REASON_NONE = 0,
    MW_REASON_EOF,
    MW_REASON_RESET,
    MW_REASON_TIMEOUT,
    MW_REASON_CLOSED,
    MW_REASON_ABORTED,
    MW_REASON_ERROR,
    MW_REASON_LIMIT,
    MW_REASON_SHUTDOWN,
};
const char *mw__reason_name(int reason);

static inline mw_loop_t *mw__conn_loop(const mw_conn_t *c) {
    return (mw_loop_t *)c->poll.loop->data;
}

void mw__conn_adopt(mw_loop_t *l, int fd);
void mw__conn_flush_all(mw_loop_t *l);
void mw__conn_run_pending(mw_loop_t *l);
void mw__conn_teardown(mw_conn_t *c, int reason, int graceful);
void mw__conn_close_all(mw_loop_t *l, int reason);
/* Closes connections that only wait for their peer's FIN (used when shutting down). */
void mw__conn_close_lingering(mw_loop_t *l);
void mw__conn_set_timeout(mw_conn_t *c, unsigned ms);
void mw__conn_timeouts_fire(mw_loop_t *l);

/* ---- Lua timers (timer.c) ----------------------------------------------------------- */

struct mw_timer_s {
    uv_timer_t handle;
    mw_loop_t *loop;
    double ref;
};

void mw__timeouts_arm(mw_loop_t *l);

/* ---- the loop (loop.c) -------------------------------------------------------------- */

/* Events delivered to the Lua dispatcher; mirrored in lua/moonwire/runtime.lua. */
enum {
    MW_EV_OPEN = 1,
    MW_EV_INPUT,
    MW_EV_DRAIN,
    MW_EV_TIMEOUT,
    MW_EV_CLOSE,
    MW_EV_TIMER,
    MW_EV_SHUTDOWN,
    MW_EV_PUBLISH,
    MW_EV_RELOAD,
    MW_EV_PROFILE,      /* worker: start/stop profiling */
    MW_EV_PROFILE_DONE, /* admin: folded stacks from a loop */
    MW_EV_MAX,
};

struct mw_loop_s {
    int id; /* 1..N; the admin loop is -1 */
    int is_admin;
    const char *script; /* handler this loop runs */
    const char *mode;   /* "run", "ws" or "admin" */
    const char *host;   /* listening address */
    int port;
    int reuseport;
    pthread_t thread;
    uv_loop_t uv;
    uv_poll_t listener; /* the listening socket, accepted from with accept4 (tcp.c) */
    int listen_fd;
    int listening;
    uv_timer_t accept_timer; /* resumes accepting after running out of descriptors */
    uint64_t accept_warned;  /* when that was last logged */
    uv_async_t async;
    uv_prepare_t prepare;
    uv_idle_t idle;
    uv_timer_t timeout_timer; /* fires at the earliest idle-timeout deadline */
    uv_timer_t drain_timer;
    uv_timer_t sample_timer; /* stats: Lua heap, lag probe (stats.c) */
    uv_timer_t lag_timer;
    uint64_t lag_armed_ns;
    mw_lua_stats_t lua_stats; /* counters Lua bumps directly through the FFI */
    struct lua_State *L;
    int in_lua; /* > 0 while a Lua callback runs: anything needing Lua is deferred */
    /* watchdog (watchdog.c): written by the loop around every callback, read by the
     * watchdog thread */
    _Atomic uint64_t dispatch_seq;
    _Atomic int in_cb;
    _Atomic int cb_event;
    _Atomic uint64_t wd_seq;
    _Atomic int wd_abort;
    _Atomic int wd_have_stack;
    char stuck_stack[2048];
    char cb_info[MW_EV_MAX][256]; /* per event: which callback, defined where */
    char *rbuf; /* shared read buffer: reads land here unless a connection has leftovers */
    mw_bufcache_t bufcache;
    double next_conn_id;
    long nconns;             /* connections not yet freed */
    mw_conn_t *polling;      /* the connection whose poll callback is running */
    mw_conn_t *flush_head;   /* connections with output to write */
    mw_conn_t *pending_head; /* connections with deferred Lua work */
    mw_conn_t *pending_tail;
    mw_tlist_t *tlists;
    int ntlists;
    uint64_t armed_deadline;
    int shutting_down;
    int fallback_rr; /* round-robin index for the single-acceptor fallback */
    /* mailbox */
    pthread_mutex_t mbox_lock;
    mw_msg_t *mbox_head, *mbox_tail;
    int mbox_npub; /* publish messages waiting in the mailbox */
    /* pubsub outbox: messages published during this turn, sent before the loop sleeps */
    mw_blob_t **outbox;
    int outbox_n, outbox_cap;
    /* reload status, written by the loop under mbox_lock, read by the admin side */
    double generation;
    char reload_error[512];
    unsigned long long status_seq; /* bumped by every mw_loop_set_status: "the loop answered" */
    /* start-up handshake with the main thread */
    int init_status;
    char init_error[512];
    mw_stats_t stats;
};

extern mw_loop_t *mw__loops;
extern int mw__nloops;
extern _Atomic long mw__open_conns;

int mw__loop_start_all(void);
int mw__admin_start(void);
void mw__admin_join(void);
extern mw_loop_t *mw__admin;
void mw__loop_post(mw_loop_t *l, mw_msg_t *m);
void mw__loop_post_all(int type);
void mw__loop_join_all(void);
void mw__loop_pending_add(mw_loop_t *l, mw_conn_t *c);
void mw__loop_flush_add(mw_loop_t *l, mw_conn_t *c);

/* ---- listening sockets (tcp.c) ------------------------------------------------------ */

int mw__tcp_probe(const char *host, int *port, char *err, size_t errlen);
int mw__tcp_listen(mw_loop_t *l, char *err, size_t errlen);
void mw__tcp_stop(mw_loop_t *l);

/* ---- stats (stats.c) ---------------------------------------------------------------- */

void mw__stats_start(mw_loop_t *l);

/* Marks Lua timers (handle->data) so teardown can tell them from the loop's own timers. */
extern char mw__lua_timer_tag;
/* Marks connection handles (handle->data), so uv_walk can find them. */
extern char mw__conn_tag;

/* ---- pubsub (pubsub.c) -------------------------------------------------------------- */

void mw__pubsub_flush(mw_loop_t *l);
void mw__pubsub_deliver(mw_loop_t *l, mw_blob_t *b);
void mw__blob_unref(mw_blob_t *b);

/* ---- the Lua side (lua_loop.c) ------------------------------------------------------ */

int mw__lua_start(mw_loop_t *l, char *err, size_t errlen);
void mw__lua_stop(mw_loop_t *l);
void mw__lua_open(mw_loop_t *l, mw_conn_t *c);
long mw__lua_input(mw_loop_t *l, mw_conn_t *c, const char *p, size_t n);
int mw__lua_event(mw_loop_t *l, mw_conn_t *c, int ev);
void mw__lua_close(mw_loop_t *l, mw_conn_t *c);
void mw__lua_timer(mw_loop_t *l, double ref);
void mw__lua_shutdown(mw_loop_t *l);
void mw__lua_publish(mw_loop_t *l, mw_blob_t *b);
void mw__lua_reload(mw_loop_t *l);
void mw__lua_profile(mw_loop_t *l, int start);
void mw__lua_gc(mw_loop_t *l);
/* The loop's Lua heap in bytes (its own thread only). */
uint64_t mw__lua_heap_bytes(mw_loop_t *l);
void mw__lua_profile_done(mw_loop_t *l, int from, mw_blob_t *b);

/* ---- process (main.c, cpu.c) -------------------------------------------------------- */

void mw__main_notify_exit(void);
void mw__reload_all(void);
int mw__ctl_main(int argc, char **argv);
int mw__watchdog_start(void);
void mw__watchdog_stop(void);

/* ---- file watching for hot reload (watch.c) ---------------------------------------- */

int mw__watch_start(uv_loop_t *loop);
void mw__watch_stop(void);
void mw__watch_free(void);
int mw__cpu_auto(const char *cpu_max_path, char *why, size_t whylen);

#endif
