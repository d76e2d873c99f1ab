/*
 * churn: connect/close cycles against a server, to show that its memory after a million
 * cycles is what it was after a thousand.
 *
 *   churn --port P --proto tcp|http|ws --cycles N [--conns K] [--close STYLE]
 *         [--checkpoints 1000,10000,...] [--server-pid PID] [--admin HOST:PORT]
 *
 * K connections at a time (default 32) each run cycles until N have been done: connect,
 * one exchange in the protocol, then close in one of these styles (--close, default mix,
 * which takes them in turn):
 *
 *   fin      close once the answer is in (the peer sees EOF)
 *   rst      close with SO_LINGER 0 (the peer sees a reset)
 *   half     shut down writing (after a Close frame on WebSocket), wait for the server
 *            to close, then close
 *   partial  send part of a message (a request line, a frame header), then reset
 *   probe    connect and close without a byte (a load balancer's TCP health check)
 *
 * The exchange: tcp sends a line and waits for its echo (handlers/echo.lua); http sends a
 * keep-alive GET / and reads the whole response (status 200); ws does the handshake (101)
 * and waits for the echo of one masked text frame (handlers/ws_echo.lua).
 *
 * At each checkpoint (and at the end) no new cycle starts until every connection is
 * closed; then, with --admin, it waits until the server reports no open connection
 * (moonwire_connections_open, at most 5 s) and asks for a full garbage collection
 * (POST /gc), and prints one line: cycles, elapsed seconds, cycles per second, the server's
 * RSS (--server-pid), its Lua heap after the collection, the open connections it reports,
 * and the errors so far. An error is a failed connect, an unexpected answer, or a cycle not
 * done within 5 s; any error makes the exit status 1.
 *
 * Bounded: cycles (at most 100 million), connections at a time (at most 1,024), run time
 * (--seconds, default 600). Only loopback addresses.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 1024
#define MAX_CYCLES 100000000ULL
#define MAX_CHECKPOINTS 32
#define BUF_SIZE 4096
#define CYCLE_TIMEOUT_NS (5ULL * 1000000000ULL)
#define MAX_ERROR_LINES 10

enum proto { P_TCP, P_HTTP, P_WS };
enum style { S_FIN, S_RST, S_HALF, S_PARTIAL, S_PROBE, S_MIX };
enum state { C_IDLE, C_CONNECTING, C_HANDSHAKE, C_EXCHANGE, C_DRAINING };

static const char *const style_names[] = {"fin", "rst", "half", "partial", "probe", "mix"};

typedef struct {
    int fd;
    int state;
    int style;
    uint64_t cycle;
    uint64_t deadline;
    size_t got;
    char buf[BUF_SIZE];
} slot_t;

static struct {
    int proto;
    int style;
    int port;
    int conns;
    int server_pid;
    const char *admin;
    double seconds;
    uint64_t cycles;
    uint64_t checkpoints[MAX_CHECKPOINTS];
    int ncheckpoints;

    struct sockaddr_in addr;
    int ep;
    slot_t *slots;
    uint64_t started, done, errors, error_lines;
    uint64_t t0;
} cf;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void slot_error(slot_t *s, const char *what, const char *detail) {
    cf.errors++;
    if (cf.error_lines++ < MAX_ERROR_LINES)
        fprintf(stderr, "churn: cycle %" PRIu64 " (%s): %s%s%s\n", s->cycle, style_names[s->style],
                what, detail ? ": " : "", detail ? detail : "");
}

/* ---- messages -------------------------------------------------------------------------- */

static const char http_request[] = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
static const char ws_request[] =
    "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n";
#define WS_PAYLOAD "churn"
#define LINE "churn line\n"

/* A masked client text frame of WS_PAYLOAD (a fixed mask is enough here). */
static size_t ws_frame(unsigned char *f, int op, const char *p, size_t n) {
    static const unsigned char mask[4] = {0x37, 0xfa, 0x21, 0x3d};
    f[0] = (unsigned char)(0x80 | op);
    f[1] = (unsigned char)(0x80 | n);
    memcpy(f + 2, mask, 4);
    for (size_t i = 0; i < n; i++)
        f[6 + i] = (unsigned char)p[i] ^ mask[i & 3];
    return 6 + n;
}

static int send_all(slot_t *s, const void *p, size_t n) {
    ssize_t w = send(s->fd, p, n, MSG_NOSIGNAL);
    if (w == (ssize_t)n)
        return 0;
    slot_error(s, "send", w < 0 ? strerror(errno) : "short write");
    return -1;
}

/* The first message of the exchange (after the handshake on WebSocket). */
static int send_message(slot_t *s) {
    if (cf.proto == P_TCP)
        return send_all(s, LINE, sizeof LINE - 1);
    if (cf.proto == P_HTTP)
        return send_all(s, http_request, sizeof http_request - 1);
    unsigned char f[64];
    return send_all(s, f, ws_frame(f, 1, WS_PAYLOAD, sizeof WS_PAYLOAD - 1));
}

/* Part of a message: what a client that vanishes mid-request leaves behind. */
static int send_partial(slot_t *s) {
    if (cf.proto == P_TCP)
        return send_all(s, "abcd", 4);
    if (cf.proto == P_HTTP)
        return send_all(s, "GET / HTTP/1.1\r\nHo", 18);
    unsigned char f[64];
    ws_frame(f, 1, WS_PAYLOAD, sizeof WS_PAYLOAD - 1);
    return send_all(s, f, 3);
}

/* 1 once buf holds the whole answer, 0 while more is due, -1 when it is wrong. */
static int answer_complete(slot_t *s, const char **why) {
    const char *b = s->buf;
    size_t n = s->got;
    if (cf.proto == P_TCP) {
        if (n > sizeof LINE - 1 || memcmp(b, LINE, n) != 0) {
            *why = "echo differs from the line sent";
            return -1;
        }
        return n == sizeof LINE - 1;
    }
    const char *end = memmem(b, n, "\r\n\r\n", 4);
    if (s->state == C_HANDSHAKE || cf.proto == P_HTTP) {
        if (end == NULL)
            return n >= BUF_SIZE - 1 ? (*why = "response head too long", -1) : 0;
        if (s->state == C_HANDSHAKE) {
            if (strncmp(b, "HTTP/1.1 101 ", 13) != 0) {
                *why = "handshake not answered with 101";
                return -1;
            }
            return 1;
        }
        if (strncmp(b, "HTTP/1.1 200 ", 13) != 0) {
            *why = "status is not 200";
            return -1;
        }
        const char *cl = strcasestr(b, "\r\ncontent-length:");
        if (cl == NULL || cl > end) {
            *why = "no Content-Length";
            return -1;
        }
        size_t body = strtoul(cl + 17, NULL, 10);
        size_t head = (size_t)(end - b) + 4;
        if (n > head + body) {
            *why = "more bytes than the response";
            return -1;
        }
        return n == head + body;
    }
    /* WebSocket echo: an unmasked text frame with the payload. */
    size_t want = 2 + sizeof WS_PAYLOAD - 1;
    if (n < want)
        return 0;
    if (n > want || (unsigned char)b[0] != 0x81 || b[1] != (char)(sizeof WS_PAYLOAD - 1) ||
        memcmp(b + 2, WS_PAYLOAD, sizeof WS_PAYLOAD - 1) != 0) {
        *why = "echo frame differs";
        return -1;
    }
    return 1;
}

/* ---- cycles ------------------------------------------------------------------------------ */

static void finish_cycle(slot_t *s, int reset) {
    if (reset) {
        struct linger lg = {1, 0};
        setsockopt(s->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    close(s->fd); /* also removes it from the epoll set */
    s->fd = -1;
    s->state = C_IDLE;
    cf.done++;
}

static void start_cycle(slot_t *s) {
    s->cycle = ++cf.started;
    s->style = cf.style == S_MIX ? (int)(s->cycle % S_MIX) : cf.style;
    s->got = 0;
    s->deadline = now_ns() + CYCLE_TIMEOUT_NS;
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) {
        slot_error(s, "socket", strerror(errno));
        s->state = C_IDLE;
        cf.done++;
        return;
    }
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(s->fd, (struct sockaddr *)&cf.addr, sizeof cf.addr) < 0 && errno != EINPROGRESS) {
        slot_error(s, "connect", strerror(errno));
        finish_cycle(s, 1);
        return;
    }
    s->state = C_CONNECTING;
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = s};
    epoll_ctl(cf.ep, EPOLL_CTL_ADD, s->fd, &ev);
}

/* The exchange is over: close in the slot's style. */
static void close_in_style(slot_t *s) {
    if (s->style == S_RST) {
        finish_cycle(s, 1);
        return;
    }
    if (s->style != S_HALF) {
        finish_cycle(s, 0);
        return;
    }
    if (cf.proto == P_WS) {
        unsigned char f[16];
        const char code[2] = {0x03, (char)0xe8}; /* 1000 */
        if (send_all(s, f, ws_frame(f, 8, code, 2)) < 0) {
            finish_cycle(s, 1);
            return;
        }
    }
    shutdown(s->fd, SHUT_WR);
    s->state = C_DRAINING;
}

/* Connected (and, on WebSocket, upgraded): cut the message short, or start the exchange. */
static void begin_exchange(slot_t *s) {
    if (s->style == S_PARTIAL) {
        send_partial(s);
        finish_cycle(s, 1);
        return;
    }
    s->state = C_EXCHANGE;
    if (send_message(s) < 0)
        finish_cycle(s, 1);
}

static void on_connected(slot_t *s) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
        slot_error(s, "connect", strerror(err));
        finish_cycle(s, 1);
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};
    epoll_ctl(cf.ep, EPOLL_CTL_MOD, s->fd, &ev);
    if (s->style == S_PROBE) {
        finish_cycle(s, 0);
        return;
    }
    if (cf.proto == P_WS) {
        s->state = C_HANDSHAKE;
        if (send_all(s, ws_request, sizeof ws_request - 1) < 0)
            finish_cycle(s, 1);
        return;
    }
    begin_exchange(s);
}

static void on_readable(slot_t *s) {
    if (s->state == C_DRAINING) {
        /* Waiting for the server to close: whatever comes first (a Close frame) is dropped. */
        ssize_t r = recv(s->fd, s->buf, BUF_SIZE, 0);
        if (r == 0)
            finish_cycle(s, 0);
        else if (r < 0 && errno != EAGAIN) {
            slot_error(s, "after shutdown", strerror(errno));
            finish_cycle(s, 1);
        }
        return;
    }
    ssize_t r = recv(s->fd, s->buf + s->got, BUF_SIZE - 1 - s->got, 0);
    if (r < 0 && errno == EAGAIN)
        return;
    if (r <= 0) {
        slot_error(s, r == 0 ? "server closed early" : "recv", r == 0 ? NULL : strerror(errno));
        finish_cycle(s, 1);
        return;
    }
    s->got += (size_t)r;
    s->buf[s->got] = '\0';
    const char *why = NULL;
    int rc = answer_complete(s, &why);
    if (rc < 0) {
        slot_error(s, why, NULL);
        finish_cycle(s, 1);
        return;
    }
    if (rc == 0)
        return;
    if (s->state == C_HANDSHAKE) {
        s->got = 0;
        begin_exchange(s);
        return;
    }
    close_in_style(s);
}

/* ---- the server's side ------------------------------------------------------------------ */

static long rss_kb(void) {
    if (cf.server_pid <= 0)
        return -1;
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", cf.server_pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

/* One HTTP/1.0 request to the admin listener; the body (malloc'd) or NULL. */
static char *admin_request(const char *method, const char *path) {
    char host[64];
    const char *colon = strrchr(cf.admin, ':');
    if (colon == NULL || (size_t)(colon - cf.admin) >= sizeof host)
        return NULL;
    memcpy(host, cf.admin, (size_t)(colon - cf.admin));
    host[colon - cf.admin] = '\0';
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        return NULL;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    struct timeval tv = {15, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char req[256];
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.0\r\nHost: %s\r\nContent-Length: 0\r\n\r\n",
                     method, path, host);
    size_t cap = 1 << 16, len = 0;
    char *out = malloc(cap + 1);
    if (out == NULL || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
        send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        free(out);
        close(fd);
        return NULL;
    }
    ssize_t r;
    while (len < cap && (r = recv(fd, out + len, cap - len, 0)) > 0)
        len += (size_t)r;
    close(fd);
    out[len] = '\0';
    char *body = strstr(out, "\r\n\r\n");
    if (body == NULL) {
        free(out);
        return NULL;
    }
    memmove(out, body + 4, strlen(body + 4) + 1);
    return out;
}

/* The sum over loops of a Prometheus gauge, or -1. */
static double metric_sum(const char *text, const char *name) {
    double sum = -1;
    size_t nl = strlen(name);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, name, nl) == 0 && (p[nl] == '{' || p[nl] == ' ')) {
            const char *v = strchr(p, ' ');
            if (v)
                sum = (sum < 0 ? 0 : sum) + strtod(v + 1, NULL);
        }
    }
    return sum;
}

static void report(void) {
    double open = -1, live = -1, c_heap = -1;
    if (cf.admin) {
        uint64_t until = now_ns() + 5000000000ULL;
        for (;;) {
            char *m = admin_request("GET", "/metrics");
            open = m ? metric_sum(m, "moonwire_connections_open") : -1;
            free(m);
            if (open <= 0 || now_ns() > until)
                break;
            struct timespec ts = {0, 10000000};
            nanosleep(&ts, NULL);
        }
        free(admin_request("POST", "/gc"));
        char *m = admin_request("GET", "/metrics");
        live = m ? metric_sum(m, "moonwire_lua_live_bytes") : -1;
        c_heap = m ? metric_sum(m, "moonwire_process_malloc_bytes") : -1;
        free(m);
    }
    double secs = (double)(now_ns() - cf.t0) / 1e9;
    printf("cycles=%" PRIu64 " secs=%.2f rate=%.0f rss_kb=%ld lua_kb=%.0f malloc_kb=%.0f open=%.0f "
           "errors=%" PRIu64 "\n",
           cf.done, secs, secs > 0 ? (double)cf.done / secs : 0, rss_kb(),
           live >= 0 ? live / 1024 : -1, c_heap >= 0 ? c_heap / 1024 : -1, open, cf.errors);
    fflush(stdout);
}

/* ---- main ------------------------------------------------------------------------------- */

static void usage(void) {
    fprintf(
        stderr,
        "usage: churn --port P --proto tcp|http|ws --cycles N [--conns K]\n"
        "             [--close fin|rst|half|partial|probe|mix] [--checkpoints N,N,...]\n"
        "             [--server-pid PID] [--admin HOST:PORT] [--seconds S] [--host 127.0.0.1]\n");
    exit(2);
}

/* Checkpoints in increasing order, each once; the run's end reports anyway. */
static void parse_checkpoints(const char *list) {
    for (const char *t = list; *t; t += *t == ',') {
        char *end;
        uint64_t v = strtoull(t, &end, 10);
        if (end == t || (*end != ',' && *end != '\0')) {
            fprintf(stderr, "churn: --checkpoints takes numbers separated by commas\n");
            exit(2);
        }
        t = end;
        if (cf.ncheckpoints == MAX_CHECKPOINTS)
            usage();
        if (v == 0 || (cf.ncheckpoints > 0 && v <= cf.checkpoints[cf.ncheckpoints - 1])) {
            fprintf(stderr, "churn: --checkpoints must be increasing numbers above 0\n");
            exit(2);
        }
        cf.checkpoints[cf.ncheckpoints++] = v;
    }
}

int main(int argc, char **argv) {
    static const struct option opts[] = {{"host", required_argument, NULL, 'h'},
                                         {"port", required_argument, NULL, 'p'},
                                         {"proto", required_argument, NULL, 'P'},
                                         {"cycles", required_argument, NULL, 'n'},
                                         {"conns", required_argument, NULL, 'c'},
                                         {"close", required_argument, NULL, 'C'},
                                         {"checkpoints", required_argument, NULL, 'k'},
                                         {"server-pid", required_argument, NULL, 's'},
                                         {"admin", required_argument, NULL, 'a'},
                                         {"seconds", required_argument, NULL, 't'},
                                         {NULL, 0, NULL, 0}};
    const char *host = "127.0.0.1", *proto = NULL, *style = "mix";
    cf.conns = 32;
    cf.seconds = 600;
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'h':
            host = optarg;
            break;
        case 'p':
            cf.port = atoi(optarg);
            break;
        case 'P':
            proto = optarg;
            break;
        case 'n':
            cf.cycles = strtoull(optarg, NULL, 10);
            break;
        case 'c':
            cf.conns = atoi(optarg);
            break;
        case 'C':
            style = optarg;
            break;
        case 'k':
            parse_checkpoints(optarg);
            break;
        case 's':
            cf.server_pid = atoi(optarg);
            break;
        case 'a':
            cf.admin = optarg;
            break;
        case 't':
            cf.seconds = atof(optarg);
            break;
        default:
            usage();
        }
    }
    if (optind != argc || proto == NULL || cf.port <= 0 || cf.cycles == 0)
        usage();
    if (strcmp(proto, "tcp") == 0)
        cf.proto = P_TCP;
    else if (strcmp(proto, "http") == 0)
        cf.proto = P_HTTP;
    else if (strcmp(proto, "ws") == 0)
        cf.proto = P_WS;
    else
        usage();
    cf.style = -1;
    for (int i = 0; i <= S_MIX; i++)
        if (strcmp(style, style_names[i]) == 0)
            cf.style = i;
    if (cf.style < 0)
        usage();
    if (cf.cycles > MAX_CYCLES || cf.conns < 1 || cf.conns > MAX_CONNS || cf.seconds <= 0) {
        fprintf(stderr, "churn: at most %llu cycles, 1 to %d connections, seconds > 0\n",
                MAX_CYCLES, MAX_CONNS);
        return 2;
    }
    cf.addr.sin_family = AF_INET;
    cf.addr.sin_port = htons((uint16_t)cf.port);
    if (inet_pton(AF_INET, host, &cf.addr.sin_addr) != 1 ||
        (ntohl(cf.addr.sin_addr.s_addr) >> 24) != 127) {
        fprintf(stderr, "churn: --host must be an IPv4 loopback address\n");
        return 2;
    }
    if (cf.admin && strncmp(cf.admin, "127.", 4) != 0) {
        fprintf(stderr, "churn: --admin must be on a loopback address\n");
        return 2;
    }
    cf.slots = calloc((size_t)cf.conns, sizeof *cf.slots);
    cf.ep = epoll_create1(EPOLL_CLOEXEC);
    if (cf.slots == NULL || cf.ep < 0) {
        perror("churn");
        return 2;
    }
    for (int i = 0; i < cf.conns; i++)
        cf.slots[i].fd = -1;

    cf.t0 = now_ns();
    uint64_t stop_at = cf.t0 + (uint64_t)(cf.seconds * 1e9);
    int next_cp = 0;
    struct epoll_event evs[256];
    int timed_out = 0;
    uint64_t next_sweep = 0;
    for (;;) {
        uint64_t limit = cf.cycles;
        if (next_cp < cf.ncheckpoints && cf.checkpoints[next_cp] < limit)
            limit = cf.checkpoints[next_cp];
        int busy = 0;
        for (int i = 0; i < cf.conns; i++) {
            slot_t *s = &cf.slots[i];
            if (s->state == C_IDLE && cf.started < limit && !timed_out)
                start_cycle(s);
            busy += s->state != C_IDLE;
        }
        if (busy == 0) {
            report();
            if (cf.done >= cf.cycles || timed_out)
                break;
            next_cp++;
            continue;
        }
        int n = epoll_wait(cf.ep, evs, 256, 100);
        for (int i = 0; i < n; i++) {
            slot_t *s = evs[i].data.ptr;
            if (s->state == C_CONNECTING)
                on_connected(s);
            else if (s->state != C_IDLE)
                on_readable(s);
        }
        uint64_t t = now_ns();
        if (t > stop_at && !timed_out) {
            fprintf(stderr, "churn: --seconds %.0f over, stopping after %" PRIu64 " cycles\n",
                    cf.seconds, cf.done);
            timed_out = 1;
            cf.errors++;
        }
        if (t > next_sweep) {
            next_sweep = t + 100000000ULL;
            for (int i = 0; i < cf.conns; i++) {
                slot_t *s = &cf.slots[i];
                if (s->state != C_IDLE && t > s->deadline) {
                    slot_error(s, "not done within 5 s", NULL);
                    finish_cycle(s, 1);
                }
            }
        }
    }
    return cf.errors ? 1 : 0;
}
