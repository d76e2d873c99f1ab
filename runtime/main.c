/* Command line, start-up and signals. The main thread owns no connections: it parses the
 * command line, checks the address, starts the loops, and turns signals into mailbox
 * messages (SIGTERM/SIGINT: drain and exit; a second one: close everything now). */
#include "internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#ifndef MW_LUA_DIR
#define MW_LUA_DIR "/usr/local/share/lua/5.1"
#endif

mw_config_t mw__config;

static const char usage[] =
    "usage: moonwire <command> [options]\n"
    "\n"
    "commands:\n"
    "  run SCRIPT            serve the handler SCRIPT\n"
    "  ws SCRIPT             serve a WebSocket handler at / (with --static DIR for files)\n"
    "  reload                reload a running server's handler (--pid, --pid-file, --admin)\n"
    "  status, top, profile, gc  read or drive a running server's admin listener\n"
    "                        (--admin HOST:PORT)\n"
    "  help                  show this help\n"
    "  version               show the version\n"
    "\n"
    "options:\n"
    "  --listen HOST:PORT    address to listen on (default 127.0.0.1:9000; [::1]:PORT for IPv6)\n"
    "  --loops N|auto        event loops, one thread and one Lua state each (default 1);\n"
    "                        auto = the cgroup v2 CPU quota, else the available CPUs\n"
    "  --max-conns N         connections open at once, all loops (default: open-file limit)\n"
    "  --max-input BYTES     unconsumed input kept per connection (default 1m)\n"
    "  --max-write-queue BYTES  output queued per connection before it is closed (default 8m)\n"
    "  --high-water BYTES    write() returns false past this queue size (default 256k)\n"
    "  --idle-timeout MS     close connections idle this long; 0 = never (default 0)\n"
    "  --drain-timeout MS    on SIGTERM, wait this long for connections (default 5000)\n"
    "  --no-reuseport        one loop accepts and hands connections to the others\n"
    "  --no-watch            do not reload when the handler or its modules change\n"
    "  --admin HOST:PORT     admin listener: /metrics, /stats, /status, /reload, /gc,\n"
    "                        /profile, /flamegraph and a live dashboard at / (loopback only)\n"
    "  --admin-allow-remote  allow a non-loopback --admin address\n"
    "  --watchdog-ms MS      report a loop stuck in one callback this long (default 1000;\n"
    "                        0 = off)\n"
    "  --max-callback-ms MS  abort a callback running this long with a Lua error (default\n"
    "                        0 = off; keeps the handler's own code out of the JIT)\n"
    "  --pid-file PATH       write the process id there (for moonwire reload)\n"
    "  --static DIR          (ws) directory served over HTTP next to the WebSocket\n"
    "  --log-level LEVEL     debug, info, warn, error or off (default info)\n"
    "  --lua-dir DIR         where the moonwire Lua library lives\n"
    "  -h, --help            show this help\n"
    "  -V, --version         show the version\n"
    "\n"
    "Sizes take k and m suffixes (KiB, MiB). Logs go to stderr, one line per event.\n";

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("moonwire: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\n", stderr);
    va_end(ap);
    exit(2);
}

static size_t parse_size(const char *opt, const char *s) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *s == '-')
        die("%s: expected a size, got '%s'", opt, s);
    if (*end == 'k' || *end == 'K')
        v *= 1024, end++;
    else if (*end == 'm' || *end == 'M')
        v *= 1024 * 1024, end++;
    else if (*end == 'g' || *end == 'G')
        v *= 1024ULL * 1024 * 1024, end++;
    if (*end != '\0')
        die("%s: expected a size such as 65536, 64k or 8m, got '%s'", opt, s);
    return (size_t)v;
}

static long parse_num(const char *opt, const char *s, long min, long max) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < min || v > max)
        die("%s: expected a number from %ld to %ld, got '%s'", opt, min, max, s);
    return v;
}

static void parse_addr(const char *opt, const char *s, char *host, size_t hostlen, int *port) {
    const char *colon = strrchr(s, ':');
    if (colon == NULL)
        die("%s: expected HOST:PORT, got '%s'", opt, s);
    const char *h = s;
    size_t hl = (size_t)(colon - s);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']')
        h++, hl -= 2;
    if (hl == 0 || hl >= hostlen)
        die("%s: bad host in '%s'", opt, s);
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = (int)parse_num(opt, colon + 1, 0, 65535);
}

static int is_loopback(const char *host) {
    struct in_addr a4;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    return strcmp(host, "::1") == 0;
}

static const char *find_lua_dir(const char *given) {
    static char buf[PATH_MAX];
    char probe[PATH_MAX + 64];
    if (given)
        return given;
    const char *env = getenv("MOONWIRE_LUA_DIR");
    if (env && *env)
        return env;
    /* Next to the binary: bin/moonwire -> lua/ in a source tree, or
     * PREFIX/bin/moonwire -> PREFIX/share/lua/5.1 when installed (make install, luarocks). */
    static const char *const rel[] = {"/../lua", "/../share/lua/5.1"};
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n > 0) {
        buf[n] = '\0';
        char *slash = strrchr(buf, '/');
        if (slash) {
            *slash = '\0';
            for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
                snprintf(probe, sizeof probe, "%s%s/moonwire/runtime.lua", buf, rel[i]);
                if (access(probe, R_OK) == 0) {
                    snprintf(probe, sizeof probe, "%s%s", buf, rel[i]);
                    if (realpath(probe, buf))
                        return buf;
                }
            }
        }
    }
    return MW_LUA_DIR;
}

/* Open files bound the connections a server can hold: take the hard limit, and when
 * privileged (root in a container, say) lift the hard limit too, up to fs.nr_open. */
static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t want = 1048576;
    FILE *f = fopen("/proc/sys/fs/nr_open", "r");
    if (f) {
        unsigned long long n;
        if (fscanf(f, "%llu", &n) == 1 && n < want)
            want = (rlim_t)n;
        fclose(f);
    }
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want) {
        struct rlimit up = {want, want};
        if (setrlimit(RLIMIT_NOFILE, &up) == 0)
            return;
    }
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static long default_max_conns(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur > 256)
        return (long)rl.rlim_cur - 128;
    return 100000;
}

/* ---- signals ----------------------------------------------------------------------- */

static uv_signal_t sig_term, sig_int, sig_hup;
static uv_async_t loops_done;
static int signals_seen;
_Atomic int mw__loops_exited;

static void post_everywhere(int type) {
    mw__loop_post_all(type);
    if (mw__admin) {
        mw_msg_t *m = calloc(1, sizeof *m);
        if (m) {
            m->type = type;
            mw__loop_post(mw__admin, m);
        }
    }
}

static void on_stop_signal(uv_signal_t *h, int signum) {
    (void)h;
    if (signals_seen++ == 0) {
        mw__log(MW_LOG_INFO, 0, "%s: shutting down (draining up to %u ms; repeat to force)",
                signum == SIGINT ? "SIGINT" : "SIGTERM", mw__config.drain_timeout_ms);
        post_everywhere(MW_MSG_SHUTDOWN);
    } else {
        mw__log(MW_LOG_INFO, 0, "second signal: closing every connection now");
        post_everywhere(MW_MSG_STOP);
    }
}

static void on_hup(uv_signal_t *h, int signum) {
    (void)h;
    (void)signum;
    mw__log(MW_LOG_INFO, 0, "SIGHUP: reloading");
    mw__reload_all();
}

static void on_loops_done(uv_async_t *a) {
    if (atomic_load(&mw__loops_exited) < mw__nloops + (mw__admin ? 1 : 0))
        return;
    uv_close((uv_handle_t *)&sig_term, NULL);
    uv_close((uv_handle_t *)&sig_int, NULL);
    uv_close((uv_handle_t *)&sig_hup, NULL);
    uv_close((uv_handle_t *)a, NULL);
    mw__watch_stop();
}

void mw__main_notify_exit(void) {
    atomic_fetch_add(&mw__loops_exited, 1);
    uv_async_send(&loops_done);
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc > 1 && (strcmp(argv[1], "reload") == 0 || strcmp(argv[1], "status") == 0 ||
                     strcmp(argv[1], "top") == 0 || strcmp(argv[1], "profile") == 0 ||
                     strcmp(argv[1], "gc") == 0))
        return mw__ctl_main(argc, argv);
    mw__config.mode = "run";
    snprintf(mw__config.host, sizeof mw__config.host, "127.0.0.1");
    mw__config.port = 9000;
    mw__config.nloops = 1;
    mw__config.reuseport = 1;
    mw__config.max_input = 1024 * 1024;
    mw__config.max_write_queue = 8 * 1024 * 1024;
    mw__config.high_water = 256 * 1024;
    mw__config.drain_timeout_ms = 5000;
    mw__config.watch = 1;
    mw__config.watchdog_ms = 1000;
    const char *lua_dir = NULL;
    const char *script = NULL;
    const char *command = NULL;
    int loops_auto = 0;
    long max_conns = -1;
    const char *admin = NULL;
    int admin_remote = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEEDV()                                                                                    \
    do {                                                                                           \
        if (v == NULL)                                                                             \
            die("%s needs a value (see moonwire --help)", a);                                      \
        i++;                                                                                       \
    } while (0)
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0 || strcmp(a, "help") == 0) {
            fputs(usage, stdout);
            return 0;
        } else if (strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0 ||
                   strcmp(a, "version") == 0) {
            printf("moonwire %s (libuv %s, %s)\n", MW_VERSION, uv_version_string(), "LuaJIT 2.1");
            return 0;
        } else if (strcmp(a, "--listen") == 0) {
            NEEDV();
            parse_addr(a, v, mw__config.host, sizeof mw__config.host, &mw__config.port);
        } else if (strcmp(a, "--loops") == 0) {
            NEEDV();
            if (strcmp(v, "auto") == 0)
                loops_auto = 1;
            else
                mw__config.nloops = (int)parse_num(a, v, 1, 256), loops_auto = 0;
        } else if (strcmp(a, "--max-conns") == 0) {
            NEEDV();
            max_conns = parse_num(a, v, 1, 100000000);
        } else if (strcmp(a, "--max-input") == 0) {
            NEEDV();
            mw__config.max_input = parse_size(a, v);
        } else if (strcmp(a, "--max-write-queue") == 0) {
            NEEDV();
            mw__config.max_write_queue = parse_size(a, v);
        } else if (strcmp(a, "--high-water") == 0) {
            NEEDV();
            mw__config.high_water = parse_size(a, v);
        } else if (strcmp(a, "--idle-timeout") == 0) {
            NEEDV();
            mw__config.idle_timeout_ms = (unsigned)parse_num(a, v, 0, 86400000);
        } else if (strcmp(a, "--drain-timeout") == 0) {
            NEEDV();
            mw__config.drain_timeout_ms = (unsigned)parse_num(a, v, 0, 86400000);
        } else if (strcmp(a, "--no-reuseport") == 0) {
            mw__config.reuseport = 0;
        } else if (strcmp(a, "--no-watch") == 0) {
            mw__config.watch = 0;
        } else if (strcmp(a, "--admin") == 0) {
            NEEDV();
            admin = v;
        } else if (strcmp(a, "--watchdog-ms") == 0) {
            NEEDV();
            mw__config.watchdog_ms = (unsigned)parse_num(a, v, 0, 86400000);
        } else if (strcmp(a, "--max-callback-ms") == 0) {
            NEEDV();
            mw__config.max_callback_ms = (unsigned)parse_num(a, v, 0, 86400000);
        } else if (strcmp(a, "--admin-allow-remote") == 0) {
            admin_remote = 1;
        } else if (strcmp(a, "--pid-file") == 0) {
            NEEDV();
            mw__config.pid_file = v;
        } else if (strcmp(a, "--static") == 0) {
            NEEDV();
            mw__config.static_dir = v;
        } else if (strcmp(a, "--log-level") == 0) {
            NEEDV();
            int lvl = mw__log_parse_level(v);
            if (lvl < 0)
                die("--log-level: expected debug, info, warn, error or off, got '%s'", v);
            mw__log_level = lvl;
        } else if (strcmp(a, "--lua-dir") == 0) {
            NEEDV();
            lua_dir = v;
        } else if (a[0] == '-') {
            die("unknown option '%s' (see moonwire --help)", a);
        } else if (command == NULL) {
            if (strcmp(a, "run") != 0 && strcmp(a, "ws") != 0)
                die("unknown command '%s' (see moonwire --help)", a);
            command = a;
        } else if (script == NULL) {
            script = a;
        } else {
            die("unexpected argument '%s' (see moonwire --help)", a);
        }
#undef NEEDV
    }
    if (command == NULL) {
        fputs(usage, stderr);
        return 2;
    }
    if (script == NULL)
        die("%s: missing the handler script (moonwire %s SCRIPT)", command, command);
    mw__config.mode = command;
    if (mw__config.static_dir && strcmp(command, "ws") != 0)
        die("--static is for 'moonwire ws' (an HTTP app serves files with app:static)");
    if (mw__config.max_input >= MW_BUF_MAX || mw__config.max_write_queue >= MW_BUF_MAX)
        die("--max-input and --max-write-queue must be below 2g");
    if (mw__config.high_water > mw__config.max_write_queue)
        die("--high-water (%zu) must not exceed --max-write-queue (%zu)", mw__config.high_water,
            mw__config.max_write_queue);

    char err[256];
    static char script_abs[PATH_MAX];
    if (access(script, R_OK) != 0 || realpath(script, script_abs) == NULL)
        die("cannot read handler script '%s': %s", script, strerror(errno));
    mw__config.script = script_abs;
    static char static_abs[PATH_MAX];
    if (mw__config.static_dir) {
        if (realpath(mw__config.static_dir, static_abs) == NULL)
            die("--static: cannot open '%s': %s", mw__config.static_dir, strerror(errno));
        mw__config.static_dir = static_abs;
    }
    mw__config.lua_dir = find_lua_dir(lua_dir);
    if (admin) {
        parse_addr("--admin", admin, mw__config.admin_host, sizeof mw__config.admin_host,
                   &mw__config.admin_port);
        if (!admin_remote && !is_loopback(mw__config.admin_host))
            die("--admin %s is not a loopback address: the admin listener can reload code and "
                "profile the server, so it stays on 127.0.0.1 or ::1 unless "
                "--admin-allow-remote is given",
                admin);
        snprintf(mw__config.admin_script, sizeof mw__config.admin_script, "%s/moonwire/admin.lua",
                 mw__config.lua_dir);
        if (mw__tcp_probe(mw__config.admin_host, &mw__config.admin_port, err, sizeof err) < 0)
            die("--admin: %s", err);
    }

    raise_nofile();
    mw__config.max_conns = max_conns > 0 ? max_conns : default_max_conns();
    char why[128] = "";
    if (loops_auto)
        mw__config.nloops = mw__cpu_auto(getenv("MOONWIRE_CGROUP_CPU_MAX"), why, sizeof why);
    mw__nloops = mw__config.nloops;

    if (mw__tcp_probe(mw__config.host, &mw__config.port, err, sizeof err) < 0)
        die("%s", err);

    uv_loop_t *main_loop = uv_default_loop();
    uv_async_init(main_loop, &loops_done, on_loops_done);
    uv_signal_init(main_loop, &sig_term);
    uv_signal_start(&sig_term, on_stop_signal, SIGTERM);
    uv_signal_init(main_loop, &sig_int);
    uv_signal_start(&sig_int, on_stop_signal, SIGINT);
    uv_signal_init(main_loop, &sig_hup);
    uv_signal_start(&sig_hup, on_hup, SIGHUP);

    if (mw__config.watch)
        mw__watch_start(main_loop);
    if (mw__loop_start_all() < 0)
        return 1;
    if (mw__watchdog_start() < 0)
        mw__log(MW_LOG_WARN, 0, "cannot start the watchdog thread");
    if (mw__config.admin_port && mw__admin_start() < 0) {
        mw__watchdog_stop();
        mw__loop_post_all(MW_MSG_STOP);
        mw__loop_join_all();
        mw__admin_join();
        return 1;
    }
    if (mw__config.pid_file) {
        FILE *pf = fopen(mw__config.pid_file, "w");
        if (pf == NULL)
            mw__log(MW_LOG_WARN, 0, "cannot write --pid-file %s: %s", mw__config.pid_file,
                    strerror(errno));
        else
            fprintf(pf, "%ld\n", (long)getpid()), fclose(pf);
    }
    const char *host_fmt = strchr(mw__config.host, ':') ? "[%s]" : "%s";
    char hostbuf[80];
    snprintf(hostbuf, sizeof hostbuf, host_fmt, mw__config.host);
    mw__log(MW_LOG_INFO, 0, "moonwire %s listening on %s:%d, %d loop(s)%s%s, handler %s",
            MW_VERSION, hostbuf, mw__config.port, mw__nloops, loops_auto ? " " : "", why,
            mw__config.script);
    if (mw__config.admin_port)
        mw__log(MW_LOG_INFO, 0, "admin listener on http://%s:%d/", mw__config.admin_host,
                mw__config.admin_port);

    uv_run(main_loop, UV_RUN_DEFAULT);
    mw__loop_join_all();
    mw__watchdog_stop();
    mw__admin_join();
    mw__watch_free();
    if (mw__config.pid_file)
        unlink(mw__config.pid_file);
    uv_loop_close(main_loop);
    free(mw__loops);
    mw__log(MW_LOG_INFO, 0, "stopped");
    return 0;
}
