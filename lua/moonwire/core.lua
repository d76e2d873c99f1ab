-- The FFI view of the runtime's C API (runtime/moonwire.h). Every ffi.cdef lives here, and
-- the ABI version is checked once so a Lua library and a binary from different builds fail
-- loudly instead of crashing.
local ffi = require "ffi"

local _M = { _VERSION = "0.1.0", ABI_VERSION = 3 }

ffi.cdef [[
typedef struct mw_loop_s mw_loop_t;
typedef struct mw_conn_s mw_conn_t;
typedef struct mw_timer_s mw_timer_t;

int mw_abi_version(void);
int mw_conn_write(mw_conn_t *c, const char *p, size_t n);
int mw_conn_write_urgent(mw_conn_t *c, const char *p, size_t n);
void mw_conn_close(mw_conn_t *c);
void mw_conn_abort(mw_conn_t *c);
void mw_conn_fail(mw_conn_t *c, int reason);
void mw_conn_pause(mw_conn_t *c);
void mw_conn_resume(mw_conn_t *c);
int mw_conn_peer(mw_conn_t *c, char *ip, size_t iplen, int *port);
void mw_conn_set_timeout(mw_conn_t *c, unsigned ms);
size_t mw_conn_queued(mw_conn_t *c);
mw_timer_t *mw_timer_start(mw_loop_t *l, double ms, double repeat, double ref);
void mw_timer_cancel(mw_timer_t *t);
double mw_loop_now(mw_loop_t *l);
double mw_loop_update_time(mw_loop_t *l);
void mw_log_write(int level, int loop_id, const char *msg);
int mw_log_get_level(void);
int mw_publish(mw_loop_t *l, const char *topic, size_t tlen, const char *msg, size_t mlen);

void mw_loop_set_status(mw_loop_t *l, double generation, const char *err);
typedef struct mw_lua_stats_s {
    double messages_in;
    double messages_out;
} mw_lua_stats_t;
mw_lua_stats_t *mw_loop_lua_stats(mw_loop_t *l);
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
int mw_stats_loop(int idx, mw_loop_stats_t *out);
void mw_stats_gc_cycle(mw_loop_t *l, double heap_bytes);
void mw_gc_all(void);
double mw_process_malloc_bytes(void);
void mw_reload_all(void);
void mw_loop_set_callback_info(mw_loop_t *l, int ev, const char *info);
unsigned mw_config_max_callback_ms(void);
int mw_profile_control(int loop_id, int start);
int mw_profile_result(mw_loop_t *l, const char *p, size_t n);
void mw_watch_file(const char *path);
int mw_unmask(uint8_t *dst, const uint8_t *src, size_t n, uint32_t mask);
size_t mw_span(const uint8_t *p, size_t n, const uint8_t *set);

void *memchr(const void *s, int c, size_t n);
char *getcwd(char *buf, size_t size);
]]

local C = ffi.C
_M.C = C

-- Inside bin/moonwire the mw_* symbols are exported; under a plain luajit (unit specs) they
-- are not, and only the pure-Lua parts of the library may be used.
local ok, abi = pcall(function() return C.mw_abi_version() end)
_M.in_runtime = ok
if ok and abi ~= _M.ABI_VERSION then
  error(string.format("moonwire Lua library ABI %d does not match the binary's ABI %d",
    _M.ABI_VERSION, abi))
end

-- Close reasons understood by mw_conn_fail (runtime/internal.h MW_REASON_*).
_M.REASON = { error = 6, limit = 7 }

return _M
