/*
 * loadgen: moonwire's load generator for the echo and idle benchmarks.
 *
 * One thread, one libuv loop. Modes:
 *
 *   tcp        every connection ping-pongs SIZE-byte messages, one outstanding
 *              at a time, checks each echo byte for byte and records the
 *              round-trip time.
 *   ws         the same over WebSocket: client handshake (status 101 and the
 *              Sec-WebSocket-Accept key are checked), masked text frames with
 *              a fresh mask per frame, each echoed frame checked byte for byte.
 *   idle       opens N connections and holds them for SECONDS.
 *   http-idle  opens N connections, completes one GET on each (so the server
 *              has set up its HTTP state), then holds them for SECONDS.
 *   ws-idle    opens N connections, completes the WebSocket handshake on each,
 *              then holds them for SECONDS.
 *   ws-fanout  opens N subscriber WebSocket connections and one publisher,
 *              which sends MESSAGES masked text messages of SIZE bytes to a
 *              broadcast endpoint (bench/ws_fanout.lua) that delivers each to
 *              every connection, the publisher included. At most WINDOW
 *              messages are in flight: message s is sent only once every
 *              connection has received (or, being past it, lost) message
 *              s - WINDOW, so the slowest subscriber paces the publisher and
 *              nothing piles up anywhere. Every frame every connection gets
 *              is checked: text, in order, payload byte for byte. The run ends
 *              when every connection has all MESSAGES or after SECONDS.
 *
 * In tcp and ws mode the run is: connect everything, warm up for --warmup
 * seconds once all connections are ready, then measure for --seconds. With
 * --server-pid the server's CPU time (utime + stime from /proc) is read at
 * the exact edges of the measured window, so throughput per server
 * CPU-second needs no guessing by the caller. The result is one line of
 * key=value pairs on stdout. Any mismatch, unexpected close or connect
 * failure counts as an error and makes the exit status non-zero.
 *
 * In ws-fanout mode the window starts with the first message (after --warmup
 * seconds of settling once all connections are ready) and ends with the last
 * delivery; deliveries to the N subscribers are counted (the publisher's own
 * are not). "missing" is the subscriber deliveries that never came: "lost"
 * ones the server skipped (a later message arrived first), the rest were
 * still due when --seconds ran out ("done=0").
 *
 * In the idle modes "open=N" is printed (and flushed) once all N
 * connections are ready; the caller measures the server while they are held.
 *
 * Everything is bounded: connections (and connects in flight), message size,
 * the time to connect, the run time. Only loopback targets are accepted.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <unistd.h>
#include <uv.h>

#define MAX_CONNS 60000
#define MAX_SIZE (1 << 20)
#define MAX_SECONDS 3600
#define CONNECT_INFLIGHT 256 /* Connects (and handshakes) in flight at once. */
#define HEAD_MAX 4096        /* Handshake / HTTP response head. */
#define READ_BUF_SIZE 65536
#define MAX_ERROR_LINES 10
#define MAX_MESSAGES 100000000
#define MAX_WINDOW 1024
#define SEQ_DIGITS 8 /* A fan-out payload starts with its sequence number in hex. */

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/* Latency histogram: exact below 64 us, then 32 buckets per power of two
 * (about 3% resolution), which is plenty for p50/p99. */
#define HIST_SUB_BITS 5
#define HIST_SUB (1 << HIST_SUB_BITS)
#define HIST_BUCKETS ((64 - HIST_SUB_BITS) * HIST_SUB + HIST_SUB)

enum mode { MODE_TCP, MODE_WS, MODE_IDLE, MODE_HTTP_IDLE, MODE_WS_IDLE, MODE_WS_FANOUT };
enum conn_state { C_NEW, C_CONNECTING, C_HANDSHAKE, C_RUNNING, C_IDLE, C_CLOSED };
enum phase { PH_CONNECT, PH_WARMUP, PH_MEASURE, PH_HOLD, PH_DONE };

typedef struct {
    uv_tcp_t handle; /* First, so a uv_handle_t * is a conn_t *. */
    uv_connect_t connect_req;
    uv_write_t write_req; /* At most one write in flight per connection. */
    uint32_t id;
    int state;
    int write_busy;    /* write_req is in use. */
    int send_deferred; /* The next message waits for write_req. */
    uint64_t seq;
    uint64_t sent_at; /* uv_hrtime() of the current message. */
    char *tx;         /* The message as sent (a masked frame in ws mode). */
    size_t tx_len;
    char *expect; /* The reply expected for it, byte for byte. */
    size_t expect_len;
    size_t got; /* Bytes of the reply received so far. */
    char *head; /* Response head during a handshake, else NULL. */
    size_t head_len;
    char accept[32]; /* Expected Sec-WebSocket-Accept. */
    /* ws-fanout: frames from the server, and where this connection is. */
    char *rx; /* A frame split across reads, else unused. */
    size_t rx_len;
    uint64_t next_seq; /* The next message this connection should get. */
} conn_t;

static struct {
    int mode;
    const char *host;
    int port;
    int conns;
    double seconds;
    double warmup;
    double connect_timeout;
    size_t size;
    const char *path;
    int server_pid;

    struct sockaddr_storage addr;
    uv_loop_t *loop;
    uv_timer_t timer;
    conn_t *c;
    int next_connect;
    int inflight;
    int ready;
    int phase;
    int exit_code;
    uint64_t msgs;
    uint64_t errors;
    uint64_t error_lines;
    uint64_t t0, t1;
    double cpu0, cpu1;   /* Server CPU seconds at the window's edges. */
    double self0, self1; /* Our own CPU seconds. */
    double busy0, busy1; /* The whole machine's busy CPU seconds. */
    uint64_t rng;
    uint64_t hist[HIST_BUCKETS];

    /* ws-fanout. The publisher is c[conns], so receivers = conns + 1. */
    uint64_t messages;   /* To publish. */
    int window;          /* Messages in flight at most. */
    size_t rx_cap;       /* Largest frame a connection buffers. */
    conn_t *pub;         /* The publisher. */
    uint64_t sent;       /* Messages the publisher has sent. */
    uint64_t complete;   /* Messages every connection has got or lost. */
    uint64_t delivered;  /* Verified deliveries to subscribers. */
    uint64_t lost;       /* Deliveries to subscribers skipped by the server. */
    uint32_t *resolved;  /* Per window slot: connections past that message. */
    char *payloads;      /* Per window slot: the payload sent. */
    uint64_t *sent_time; /* Per window slot: uv_hrtime() when it was sent. */
} lg;

static char read_buf[READ_BUF_SIZE];

static void finish(void);
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

/* ---- small helpers ------------------------------------------------------ */

static uint64_t rng_next(void) {
    /* xorshift64*: a fresh, unpredictable-enough mask per frame at no cost.
     * Seeded from getrandom(); a benchmark client needs no stronger mask. */
    lg.rng ^= lg.rng >> 12;
    lg.rng ^= lg.rng << 25;
    lg.rng ^= lg.rng >> 27;
    return lg.rng * 0x2545F4914F6CDD1DULL;
}

static void conn_error(conn_t *c, const char *fmt, const char *detail) {
    lg.errors++;
    if (lg.error_lines++ < MAX_ERROR_LINES) {
        fprintf(stderr, "loadgen: conn %" PRIu32 ": ", c->id);
        fprintf(stderr, fmt, detail);
        fputc('\n', stderr);
    }
}

static void on_close(uv_handle_t *handle) {
    conn_t *c = (conn_t *)handle;
    free(c->head);
    c->head = NULL;
}

static void close_conn(conn_t *c) {
    if (c->state == C_CLOSED || c->state == C_NEW)
        return;
    c->state = C_CLOSED;
    if (!uv_is_closing((uv_handle_t *)&c->handle))
        uv_close((uv_handle_t *)&c->handle, on_close);
}

/* Reads utime + stime of pid in seconds, or -1. */
static double proc_cpu_seconds(int pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name may hold spaces and parentheses: skip past the last ')'.
     * Then: state(3) ... utime(14) stime(15). */
    char *p = strrchr(buf, ')');
    if (p == NULL)
        return -1;
    unsigned long long utime = 0, stime = 0;
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
        return -1;
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

static double self_cpu_seconds(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) < 0)
        return -1;
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* Busy CPU seconds of the whole machine (all CPUs, steal included), or -1.
 * What is neither ours nor the server's shows other work skewing a run. */
static double machine_busy_seconds(void) {
    unsigned long long v[8] = {0};
    FILE *f = fopen("/proc/stat", "r");
    if (f == NULL)
        return -1;
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n != 8)
        return -1;
    /* user nice system [idle iowait] irq softirq steal */
    return (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
}

static void hist_add(uint64_t us) {
    size_t i;
    if (us < 2 * HIST_SUB) {
        i = (size_t)us;
    } else {
        int e = 63 - __builtin_clzll(us); /* e >= HIST_SUB_BITS + 1 */
        int shift = e - HIST_SUB_BITS;
        i = (size_t)shift * HIST_SUB + (size_t)(us >> shift);
    }
    lg.hist[i < HIST_BUCKETS ? i : HIST_BUCKETS - 1]++;
}

/* The value at quantile q, as the middle of its bucket. */
static uint64_t hist_quantile(double q) {
    uint64_t total = 0;
    for (size_t i = 0; i < HIST_BUCKETS; i++)
        total += lg.hist[i];
    if (total == 0)
        return 0;
    uint64_t rank = (uint64_t)(q * (double)total + 0.999999);
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < HIST_BUCKETS; i++) {
        seen += lg.hist[i];
        if (seen >= rank) {
            if (i < 2 * HIST_SUB)
                return i;
            size_t shift = i / HIST_SUB - 1;
            uint64_t low = (uint64_t)(i % HIST_SUB + HIST_SUB) << shift;
            return low + ((1ULL << shift) >> 1);
        }
    }
    return 0;
}

static uint64_t hist_max(void) {
    for (size_t i = HIST_BUCKETS; i-- > 0;)
        if (lg.hist[i] != 0) {
            if (i < 2 * HIST_SUB)
                return i;
            size_t shift = i / HIST_SUB - 1;
            return ((uint64_t)(i % HIST_SUB + HIST_SUB) << shift) + (1ULL << shift) - 1;
        }
    return 0;
}

/* ---- messages ----------------------------------------------------------- */

static int is_ws(void) {
    return lg.mode == MODE_WS || lg.mode == MODE_WS_IDLE || lg.mode == MODE_WS_FANOUT;
}

/* The connections to open: the publisher comes on top in ws-fanout mode. */
static int total_conns(void) {
    return lg.mode == MODE_WS_FANOUT ? lg.conns + 1 : lg.conns;
}

/* Writes the header of an unmasked text frame of n payload bytes; returns
 * its length (2, 4 or 10). */
static size_t ws_text_header(unsigned char *e, size_t n) {
    e[0] = 0x81; /* FIN + text */
    if (n < 126) {
        e[1] = (unsigned char)n;
        return 2;
    }
    if (n <= 0xffff) {
        e[1] = 126;
        e[2] = (unsigned char)(n >> 8);
        e[3] = (unsigned char)n;
        return 4;
    }
    e[1] = 127;
    for (int i = 0; i < 8; i++)
        e[2 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
    return 10;
}

/* Writes the masked client frame of payload p (n bytes, header of length h
 * as ws_text_header gives it) to t, with a fresh mask; returns its length. */
static size_t ws_mask_frame(unsigned char *t, const unsigned char *header, size_t h, const char *p,
                            size_t n) {
    memcpy(t, header, h);
    t[1] |= 0x80; /* MASK bit */
    uint32_t mask = (uint32_t)rng_next();
    memcpy(t + h, &mask, 4);
    unsigned char *m = t + h, *tp = t + h + 4;
    for (size_t i = 0; i < n; i++)
        tp[i] = (unsigned char)p[i] ^ m[i & 3];
    return h + 4 + n;
}

/* Fills the next message: printable ASCII (valid UTF-8 for text frames) that
 * differs per connection and per message, so a crossed or stale echo is
 * caught. In ws mode tx is the masked client frame and expect the unmasked
 * server frame. */
static void build_message(conn_t *c) {
    size_t n = lg.size, h = 0;
    char *payload;
    if (lg.mode == MODE_WS) {
        unsigned char *e = (unsigned char *)c->expect;
        h = ws_text_header(e, n);
        payload = c->expect + h;
        for (size_t i = 0; i < n; i++)
            payload[i] = (char)('a' + (c->id * 7u + (unsigned)c->seq * 13u + i) % 26);
        c->tx_len = ws_mask_frame((unsigned char *)c->tx, e, h, payload, n);
        c->expect_len = h + n;
    } else {
        payload = c->tx;
        for (size_t i = 0; i < n; i++)
            payload[i] = (char)('a' + (c->id * 7u + (unsigned)c->seq * 13u + i) % 26);
        c->tx_len = c->expect_len = n;
    }
    c->got = 0;
}

static void on_write(uv_write_t *req, int status);
static void publish_more(void);

static int send_bytes(conn_t *c, const char *data, size_t len) {
    uv_buf_t b = uv_buf_init((char *)data, (unsigned int)len);
    int sent = uv_try_write((uv_stream_t *)&c->handle, &b, 1);
    if (sent == UV_EAGAIN || sent == UV_ENOSYS)
        sent = 0;
    if (sent < 0)
        return sent;
    if ((size_t)sent == len)
        return 0;
    /* The rest stays valid: tx is not touched until the echo is complete,
     * and the echo cannot complete before the write does. */
    b = uv_buf_init((char *)data + sent, (unsigned int)(len - (size_t)sent));
    c->write_busy = 1;
    return uv_write(&c->write_req, (uv_stream_t *)&c->handle, &b, 1, on_write);
}

static void send_message(conn_t *c) {
    if (c->write_busy) {
        c->send_deferred = 1;
        return;
    }
    build_message(c);
    c->sent_at = uv_hrtime();
    int rc = send_bytes(c, c->tx, c->tx_len);
    if (rc < 0) {
        conn_error(c, "write: %s", uv_strerror(rc));
        close_conn(c);
    }
}

static void on_write(uv_write_t *req, int status) {
    conn_t *c = req->data;
    c->write_busy = 0;
    if (status < 0) {
        if (c->state != C_CLOSED && lg.phase != PH_DONE) {
            conn_error(c, "write: %s", uv_strerror(status));
            close_conn(c);
        }
        return;
    }
    if (c == lg.pub && lg.phase == PH_MEASURE) {
        publish_more();
        return;
    }
    if (c->send_deferred && c->state == C_RUNNING && lg.phase != PH_DONE) {
        c->send_deferred = 0;
        send_message(c);
    }
}

/* ---- fan-out ------------------------------------------------------------ */

/* The payload of message seq: its number in hex, then letters that differ
 * per message, so a stale or crossed delivery is caught. */
static void fanout_payload(char *p, uint64_t seq) {
    for (int i = 0; i < SEQ_DIGITS; i++)
        p[i] = "0123456789abcdef"[(seq >> (4 * (SEQ_DIGITS - 1 - i))) & 0xf];
    for (size_t i = SEQ_DIGITS; i < lg.size; i++)
        p[i] = (char)('a' + ((unsigned)seq * 13u + i) % 26);
}

/* Sends messages while the window allows and the publisher's previous write
 * has left the kernel: one write in flight, so tx can be rebuilt. */
static void publish_more(void) {
    conn_t *c = lg.pub;
    while (lg.phase == PH_MEASURE && !c->write_busy && c->state == C_RUNNING &&
           lg.sent < lg.messages && lg.sent < lg.complete + (uint64_t)lg.window) {
        size_t slot = (size_t)(lg.sent % (uint64_t)lg.window);
        char *p = lg.payloads + slot * lg.size;
        unsigned char header[10];
        fanout_payload(p, lg.sent);
        size_t h = ws_text_header(header, lg.size);
        c->tx_len = ws_mask_frame((unsigned char *)c->tx, header, h, p, lg.size);
        lg.sent_time[slot] = uv_hrtime();
        lg.sent++;
        int rc = send_bytes(c, c->tx, c->tx_len);
        if (rc < 0) {
            conn_error(c, "publish: %s", uv_strerror(rc));
            close_conn(c);
            finish();
            return;
        }
    }
}

/* Marks messages [from, to] as settled for one connection and moves the
 * window on past every message all connections have settled. */
static void fanout_settle(uint64_t from, uint64_t to) {
    uint32_t receivers = (uint32_t)lg.conns + 1;
    for (uint64_t s = from; s <= to; s++)
        lg.resolved[s % (uint64_t)lg.window]++;
    size_t slot;
    while (lg.complete < lg.sent &&
           lg.resolved[slot = (size_t)(lg.complete % (uint64_t)lg.window)] == receivers) {
        lg.resolved[slot] = 0;
        lg.complete++;
    }
    if (lg.complete == lg.messages)
        finish();
    else
        publish_more();
}

/* Answers a ping with a pong carrying its payload. Rare (keep-alive only), so
 * the request and frame get an allocation of their own. */
static void on_pong_written(uv_write_t *req, int status) {
    (void)status;
    free(req);
}

static int send_pong(conn_t *c, const unsigned char *payload, size_t n) {
    uv_write_t *req = malloc(sizeof(*req) + 6 + 125);
    if (req == NULL)
        return UV_ENOMEM;
    unsigned char *f = (unsigned char *)(req + 1), header[2] = {0x8a, (unsigned char)n};
    size_t len = ws_mask_frame(f, header, 2, (const char *)payload, n);
    uv_buf_t b = uv_buf_init((char *)f, (unsigned int)len);
    int rc = uv_write(req, (uv_stream_t *)&c->handle, &b, 1, on_pong_written);
    if (rc < 0)
        free(req);
    return rc;
}

/* The bytes needed to know more about the server frame at f (len bytes so
 * far): its header's length while that is incomplete, then the whole
 * frame's length. Server frames are never masked. */
static uint64_t frame_need(const unsigned char *f, size_t len) {
    if (len < 2)
        return 2;
    unsigned n7 = f[1] & 0x7f;
    size_t h = n7 < 126 ? 2 : n7 == 126 ? 4 : 10;
    if (len < h)
        return h;
    uint64_t n = n7;
    if (n7 == 126)
        n = (uint64_t)f[2] << 8 | f[3];
    else if (n7 == 127)
        for (int i = 0; i < 8; i++)
            n = (i == 0 ? 0 : n << 8) | f[2 + i];
    return h + n;
}

/* Checks one complete server frame. Returns 0, or -1 after an error. */
static int fanout_frame(conn_t *c, const unsigned char *f, size_t len) {
    unsigned n7 = f[1] & 0x7f;
    size_t h = n7 < 126 ? 2 : n7 == 126 ? 4 : 10, n = len - h;
    const unsigned char *p = f + h;
    char what[96];
    if ((f[1] & 0x80) != 0) {
        conn_error(c, "%s", "masked frame from the server");
        return -1;
    }
    switch (f[0]) {
    case 0x81: /* FIN + text: a message. */
        break;
    case 0x89: /* Ping. */
        if (n > 125 || send_pong(c, p, n) < 0) {
            conn_error(c, "%s", "cannot answer a ping");
            return -1;
        }
        return 0;
    case 0x8a: /* Pong: unsolicited, ignored as the RFC allows. */
        return 0;
    case 0x88:
        snprintf(what, sizeof(what), "server sent close %u",
                 n >= 2 ? (unsigned)(p[0] << 8 | p[1]) : 1005u);
        conn_error(c, "%s", what);
        return -1;
    default:
        snprintf(what, sizeof(what), "unexpected frame 0x%02x", f[0]);
        conn_error(c, "%s", what);
        return -1;
    }
    char num[SEQ_DIGITS + 1];
    char *end;
    uint64_t seq = UINT64_MAX;
    if (n == lg.size) {
        memcpy(num, p, SEQ_DIGITS);
        num[SEQ_DIGITS] = '\0';
        seq = strtoull(num, &end, 16);
        if (end != num + SEQ_DIGITS)
            seq = UINT64_MAX;
    }
    if (seq == UINT64_MAX || seq < c->next_seq || seq >= lg.sent) {
        snprintf(what, sizeof(what), "unexpected message (%zu bytes) while waiting for %" PRIu64, n,
                 c->next_seq);
        conn_error(c, "%s", what);
        return -1;
    }
    size_t slot = (size_t)(seq % (uint64_t)lg.window);
    if (memcmp(p, lg.payloads + slot * lg.size, n) != 0) {
        snprintf(what, sizeof(what), "payload mismatch in message %" PRIu64, seq);
        conn_error(c, "%s", what);
        return -1;
    }
    uint64_t from = c->next_seq;
    c->next_seq = seq + 1;
    if (c != lg.pub) {
        lg.lost += seq - from; /* Order per publisher: the skipped ones are lost. */
        lg.delivered++;
        hist_add((uv_hrtime() - lg.sent_time[slot]) / 1000);
    }
    fanout_settle(from, seq);
    return 0;
}

/* Splits a read into frames, buffering only a frame cut by the read's end.
 * Returns 0, or -1 after an error. */
static int fanout_input(conn_t *c, const char *data, size_t n) {
    while (c->rx_len > 0) {
        uint64_t need = frame_need((unsigned char *)c->rx, c->rx_len);
        if (need > lg.rx_cap) {
            conn_error(c, "%s", "frame larger than any message sent");
            return -1;
        }
        if (c->rx_len == need) {
            c->rx_len = 0;
            if (fanout_frame(c, (unsigned char *)c->rx, (size_t)need) < 0)
                return -1;
            break;
        }
        if (n == 0)
            return 0;
        size_t take = (size_t)need - c->rx_len;
        take = take < n ? take : n;
        memcpy(c->rx + c->rx_len, data, take);
        c->rx_len += take;
        data += take;
        n -= take;
    }
    while (n > 0 && lg.phase != PH_DONE && c->state != C_CLOSED) {
        uint64_t need = frame_need((const unsigned char *)data, n);
        if (need > lg.rx_cap) {
            conn_error(c, "%s", "frame larger than any message sent");
            return -1;
        }
        if (need > n) {
            memcpy(c->rx, data, n);
            c->rx_len = n;
            return 0;
        }
        if (fanout_frame(c, (const unsigned char *)data, (size_t)need) < 0)
            return -1;
        data += need;
        n -= (size_t)need;
    }
    return 0;
}

/* ---- phases ------------------------------------------------------------- */

static void start_connects(void);

static void on_timer(uv_timer_t *t) {
    (void)t;
    if (lg.phase == PH_CONNECT) {
        fprintf(stderr, "loadgen: only %d of %d connections ready after %.0f s\n", lg.ready,
                total_conns(), lg.connect_timeout);
        lg.exit_code = 1;
        finish();
    } else if (lg.phase == PH_WARMUP) {
        /* Start the measured window from a clean slate. */
        memset(lg.hist, 0, sizeof(lg.hist));
        lg.msgs = 0;
        lg.phase = PH_MEASURE;
        lg.t0 = uv_hrtime();
        if (lg.server_pid > 0)
            lg.cpu0 = proc_cpu_seconds(lg.server_pid);
        lg.self0 = self_cpu_seconds();
        lg.busy0 = machine_busy_seconds();
        uv_timer_start(&lg.timer, on_timer, (uint64_t)(lg.seconds * 1000), 0);
        if (lg.mode == MODE_WS_FANOUT)
            publish_more();
    } else {
        finish();
    }
}

static void conn_ready(conn_t *c) {
    lg.inflight--;
    lg.ready++;
    if (lg.mode == MODE_TCP || lg.mode == MODE_WS) {
        c->state = C_RUNNING;
        send_message(c);
    } else if (lg.mode == MODE_WS_FANOUT) {
        c->state = C_RUNNING; /* Publishing starts after the warm-up. */
    } else {
        c->state = C_IDLE;
    }
    if (lg.ready == total_conns()) {
        if (lg.mode == MODE_TCP || lg.mode == MODE_WS || lg.mode == MODE_WS_FANOUT) {
            lg.phase = PH_WARMUP;
            uv_timer_start(&lg.timer, on_timer, (uint64_t)(lg.warmup * 1000), 0);
        } else {
            lg.phase = PH_HOLD;
            printf("open=%d\n", lg.conns);
            fflush(stdout);
            uv_timer_start(&lg.timer, on_timer, (uint64_t)(lg.seconds * 1000), 0);
        }
    } else {
        start_connects();
    }
}

static void finish(void) {
    if (lg.phase == PH_DONE)
        return;
    int measured = lg.phase == PH_MEASURE;
    lg.phase = PH_DONE;
    lg.t1 = uv_hrtime();
    if (lg.server_pid > 0)
        lg.cpu1 = proc_cpu_seconds(lg.server_pid);
    lg.self1 = self_cpu_seconds();
    lg.busy1 = machine_busy_seconds();
    uv_timer_stop(&lg.timer);
    uv_close((uv_handle_t *)&lg.timer, NULL);

    if (measured && lg.mode == MODE_WS_FANOUT) {
        double secs = (double)(lg.t1 - lg.t0) / 1e9;
        uint64_t missing = (uint64_t)lg.conns * lg.messages - lg.delivered;
        printf("mode=ws-fanout subs=%d messages=%" PRIu64 " sent=%" PRIu64 " size=%zu window=%d"
               " delivered=%" PRIu64 " secs=%.3f rate=%.0f p50_us=%" PRIu64 " p99_us=%" PRIu64
               " max_us=%" PRIu64,
               lg.conns, lg.messages, lg.sent, lg.size, lg.window, lg.delivered, secs,
               (double)lg.delivered / secs, hist_quantile(0.5), hist_quantile(0.99), hist_max());
        double server = 0;
        if (lg.server_pid > 0 && lg.cpu0 >= 0 && lg.cpu1 >= 0) {
            server = lg.cpu1 - lg.cpu0;
            printf(" server_cpu_s=%.2f per_cpu_s=%.0f", server,
                   server > 0 ? (double)lg.delivered / server : 0.0);
        }
        printf(" client_cpu_s=%.2f", lg.self1 - lg.self0);
        if (lg.busy0 >= 0 && lg.busy1 >= 0) {
            double other = lg.busy1 - lg.busy0 - server - (lg.self1 - lg.self0);
            printf(" other_cpu_s=%.2f", other > 0 ? other : 0.0);
        }
        /* missing: every subscriber delivery that did not come, whether the
         * server skipped it (lost) or the time ran out first (done=0). */
        printf(" errors=%" PRIu64 " missing=%" PRIu64 " lost=%" PRIu64 " done=%d\n", lg.errors,
               missing, lg.lost, lg.complete == lg.messages);
        if (missing > 0)
            lg.exit_code = 1;
    } else if (measured) {
        double secs = (double)(lg.t1 - lg.t0) / 1e9;
        printf("mode=%s conns=%d size=%zu msgs=%" PRIu64 " secs=%.3f rate=%.0f p50_us=%" PRIu64
               " p99_us=%" PRIu64 " p999_us=%" PRIu64 " max_us=%" PRIu64,
               lg.mode == MODE_WS ? "ws" : "tcp", lg.conns, lg.size, lg.msgs, secs,
               (double)lg.msgs / secs, hist_quantile(0.5), hist_quantile(0.99),
               hist_quantile(0.999), hist_max());
        double server = 0;
        if (lg.server_pid > 0 && lg.cpu0 >= 0 && lg.cpu1 >= 0) {
            server = lg.cpu1 - lg.cpu0;
            printf(" server_cpu_s=%.2f per_cpu_s=%.0f", server,
                   server > 0 ? (double)lg.msgs / server : 0.0);
        }
        printf(" client_cpu_s=%.2f", lg.self1 - lg.self0);
        if (lg.busy0 >= 0 && lg.busy1 >= 0) {
            /* Kernel work not charged to either process lands here too. */
            double other = lg.busy1 - lg.busy0 - server - (lg.self1 - lg.self0);
            printf(" other_cpu_s=%.2f", other > 0 ? other : 0.0);
        }
        printf(" errors=%" PRIu64 "\n", lg.errors);
    } else if (lg.mode == MODE_IDLE || lg.mode == MODE_HTTP_IDLE || lg.mode == MODE_WS_IDLE) {
        printf("held=%d errors=%" PRIu64 "\n", lg.ready, lg.errors);
    }
    fflush(stdout);
    if (lg.errors > 0)
        lg.exit_code = 1;
    for (int i = 0; i < total_conns(); i++)
        close_conn(&lg.c[i]);
}

/* ---- handshakes --------------------------------------------------------- */

static const char *find_header(const char *head, size_t len, const char *name, size_t *vlen) {
    size_t n = strlen(name);
    for (size_t i = 0; i + n <= len; i++) {
        if ((i == 0 || head[i - 1] == '\n') && strncasecmp(head + i, name, n) == 0) {
            const char *v = head + i + n, *end = head + len;
            while (v < end && (*v == ' ' || *v == '\t'))
                v++;
            const char *e = v;
            while (e < end && *e != '\r')
                e++;
            *vlen = (size_t)(e - v);
            return v;
        }
    }
    return NULL;
}

static int send_request(conn_t *c) {
    char req[512];
    int n;
    if (is_ws()) {
        unsigned char key_raw[16], key[32], md[EVP_MAX_MD_SIZE], keyguid[64];
        unsigned int mdlen = 0;
        for (int i = 0; i < 16; i += 8) {
            uint64_t r = rng_next();
            memcpy(key_raw + i, &r, 8);
        }
        int klen = EVP_EncodeBlock(key, key_raw, 16);
        memcpy(keyguid, key, (size_t)klen);
        memcpy(keyguid + klen, WS_GUID, sizeof(WS_GUID) - 1);
        if (!EVP_Digest(keyguid, (size_t)klen + sizeof(WS_GUID) - 1, md, &mdlen, EVP_sha1(), NULL))
            return UV_EINVAL;
        EVP_EncodeBlock((unsigned char *)c->accept, md, (int)mdlen);
        n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     lg.path, lg.host, lg.port, (const char *)key);
    } else {
        n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n", lg.path, lg.host,
                     lg.port);
    }
    /* A request this small always fits the empty send buffer of a new
     * socket; anything else is an error rather than a queued write. */
    uv_buf_t b = uv_buf_init(req, (unsigned int)n);
    int sent = uv_try_write((uv_stream_t *)&c->handle, &b, 1);
    if (sent < 0)
        return sent;
    return sent == n ? 0 : UV_EAGAIN;
}

/* Returns the length of the complete chunked body at p (no trailers), 0 if
 * it is incomplete, or -1 if it is malformed. */
static long chunked_length(const char *p, size_t len) {
    size_t pos = 0;
    for (;;) {
        const char *eol = memmem(p + pos, len - pos, "\r\n", 2);
        if (eol == NULL)
            return 0;
        char *end;
        unsigned long size = strtoul(p + pos, &end, 16);
        if (end == p + pos || size > HEAD_MAX)
            return -1;
        pos = (size_t)(eol - p) + 2;
        if (len - pos < size + 2)
            return 0;
        if (memcmp(p + pos + size, "\r\n", 2) != 0)
            return -1;
        pos += size + 2;
        if (size == 0)
            return (long)pos;
    }
}

/* Consumes response-head bytes during a handshake. Returns 1 when the
 * connection became ready, 0 for more, -1 after an error. */
static int handshake_input(conn_t *c, const char *data, size_t n) {
    if (c->head_len + n > HEAD_MAX) {
        conn_error(c, "%s", "response head too large");
        return -1;
    }
    memcpy(c->head + c->head_len, data, n);
    c->head_len += n;
    char *end = memmem(c->head, c->head_len, "\r\n\r\n", 4);
    if (end == NULL)
        return 0;
    size_t hlen = (size_t)(end + 4 - c->head), extra = c->head_len - hlen, vlen = 0;

    if (is_ws()) {
        if (strncmp(c->head, "HTTP/1.1 101", 12) != 0) {
            c->head[c->head_len < 40 ? c->head_len : 40] = '\0';
            conn_error(c, "handshake refused: %s", c->head);
            return -1;
        }
        const char *v = find_header(c->head, hlen, "Sec-WebSocket-Accept:", &vlen);
        if (v == NULL || vlen != strlen(c->accept) || memcmp(v, c->accept, vlen) != 0) {
            conn_error(c, "%s", "bad Sec-WebSocket-Accept");
            return -1;
        }
        if (extra != 0) {
            conn_error(c, "%s", "data after the 101 before any frame was sent");
            return -1;
        }
    } else {
        if (strncmp(c->head, "HTTP/1.1 200", 12) != 0 &&
            strncmp(c->head, "HTTP/1.0 200", 12) != 0) {
            c->head[c->head_len < 40 ? c->head_len : 40] = '\0';
            conn_error(c, "HTTP status not 200: %s", c->head);
            return -1;
        }
        const char *v = find_header(c->head, hlen, "Content-Length:", &vlen);
        size_t body;
        if (v != NULL) {
            body = (size_t)strtoul(v, NULL, 10);
        } else if ((v = find_header(c->head, hlen, "Transfer-Encoding:", &vlen)) != NULL &&
                   vlen == 7 && strncasecmp(v, "chunked", 7) == 0) {
            long r = chunked_length(c->head + hlen, extra);
            if (r < 0) {
                conn_error(c, "%s", "bad chunked body");
                return -1;
            }
            body = r == 0 ? extra + 1 : (size_t)r; /* 0: incomplete, wait. */
        } else {
            conn_error(c, "%s", "response with neither Content-Length nor chunked body");
            return -1;
        }
        if (extra < body)
            return 0; /* The body is still coming; it is small (HEAD_MAX). */
        if (extra > body) {
            conn_error(c, "%s", "data after the response");
            return -1;
        }
    }
    free(c->head);
    c->head = NULL;
    c->head_len = 0;
    return 1;
}

/* ---- connections -------------------------------------------------------- */

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
    (void)handle;
    (void)suggested;
    /* Replies are checked and dropped inside on_read: one buffer serves all. */
    *buf = uv_buf_init(read_buf, sizeof(read_buf));
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
    conn_t *c = (conn_t *)stream;
    if (c->state == C_CLOSED || lg.phase == PH_DONE)
        return;
    if (nread < 0) {
        conn_error(c, "closed by server: %s", nread == UV_EOF ? "EOF" : uv_strerror((int)nread));
        close_conn(c);
        return;
    }
    size_t n = (size_t)nread;

    if (c->state == C_HANDSHAKE) {
        int rc = handshake_input(c, buf->base, n);
        if (rc < 0)
            close_conn(c);
        else if (rc > 0)
            conn_ready(c);
        return;
    }
    if (lg.mode == MODE_WS_FANOUT && c->state == C_RUNNING && lg.phase == PH_MEASURE) {
        if (fanout_input(c, buf->base, n) < 0) {
            close_conn(c);
            finish(); /* A fan-out with a broken subscriber would only stall. */
        }
        return;
    }
    if (c->state != C_RUNNING || lg.mode == MODE_WS_FANOUT) {
        conn_error(c, "%s", "unexpected data on an idle connection");
        close_conn(c);
        return;
    }
    if (c->got + n > c->expect_len) {
        conn_error(c, "%s", "more bytes than were sent");
        close_conn(c);
        return;
    }
    if (memcmp(buf->base, c->expect + c->got, n) != 0) {
        char where[64];
        size_t off = 0;
        while (off < n && buf->base[off] == c->expect[c->got + off])
            off++;
        if (lg.mode == MODE_WS && c->got == 0 && n >= 4 && (unsigned char)buf->base[0] == 0x88)
            snprintf(where, sizeof(where), "message %" PRIu64 ": server sent close %u", c->seq,
                     (unsigned)((unsigned char)buf->base[2] << 8 | (unsigned char)buf->base[3]));
        else
            snprintf(where, sizeof(where), "message %" PRIu64 " byte %zu", c->seq, c->got + off);
        conn_error(c, "echo mismatch at %s", where);
        close_conn(c);
        return;
    }
    c->got += n;
    if (c->got < c->expect_len)
        return;

    uint64_t now = uv_hrtime();
    if (lg.phase == PH_MEASURE) {
        lg.msgs++;
        hist_add((now - c->sent_at) / 1000);
    }
    c->seq++;
    send_message(c);
}

static void on_connect(uv_connect_t *req, int status) {
    conn_t *c = req->data;
    if (lg.phase == PH_DONE)
        return;
    if (status < 0) {
        conn_error(c, "connect: %s", uv_strerror(status));
        lg.exit_code = 1;
        finish(); /* A benchmark with fewer connections than asked is void. */
        return;
    }
    uv_tcp_nodelay(&c->handle, 1);
    int rc = uv_read_start((uv_stream_t *)&c->handle, on_alloc, on_read);
    if (rc == 0 && (is_ws() || lg.mode == MODE_HTTP_IDLE)) {
        c->state = C_HANDSHAKE;
        c->head = malloc(HEAD_MAX + 1);
        rc = c->head == NULL ? UV_ENOMEM : send_request(c);
        if (rc == 0)
            return;
    }
    if (rc < 0) {
        conn_error(c, "start: %s", uv_strerror(rc));
        lg.exit_code = 1;
        finish();
        return;
    }
    conn_ready(c);
}

static void start_connects(void) {
    while (lg.inflight < CONNECT_INFLIGHT && lg.next_connect < total_conns()) {
        conn_t *c = &lg.c[lg.next_connect++];
        uv_tcp_init(lg.loop, &c->handle);
        c->state = C_CONNECTING;
        c->connect_req.data = c;
        c->write_req.data = c;
        lg.inflight++;
        int rc = uv_tcp_connect(&c->connect_req, &c->handle, (const struct sockaddr *)&lg.addr,
                                on_connect);
        if (rc < 0) {
            conn_error(c, "connect: %s", uv_strerror(rc));
            lg.exit_code = 1;
            finish();
            return;
        }
    }
}

/* ---- setup -------------------------------------------------------------- */

static int raise_nofile(int conns) {
    struct rlimit rl;
    rlim_t need = (rlim_t)conns + 64;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return -errno;
    if (rl.rlim_cur >= need)
        return 0;
    if (rl.rlim_max < need) {
        struct rlimit more = {need, need};
        if (setrlimit(RLIMIT_NOFILE, &more) == 0)
            return 0;
    }
    rl.rlim_cur = rl.rlim_max < need ? rl.rlim_max : need;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
        return -errno;
    if (rl.rlim_cur < need) {
        fprintf(stderr, "loadgen: RLIMIT_NOFILE hard limit %llu is too low for %d connections\n",
                (unsigned long long)rl.rlim_max, conns);
        return -EMFILE;
    }
    return 0;
}

static int resolve_loopback(const char *host, int port, struct sockaddr_storage *ss) {
    struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (strcmp(host, "localhost") == 0)
        host = "127.0.0.1";
    memset(ss, 0, sizeof(*ss));
    if (uv_ip4_addr(host, port, in4) == 0) {
        /* Only 127.0.0.0/8: this tool never targets another machine. */
        return (ntohl(in4->sin_addr.s_addr) >> 24) == 127 ? 0 : -1;
    }
    if (uv_ip6_addr(host, port, in6) == 0)
        return memcmp(&in6->sin6_addr, &in6addr_loopback, sizeof(in6addr_loopback)) == 0 ? 0 : -1;
    return -1;
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --mode tcp|ws|idle|http-idle|ws-idle|ws-fanout --host 127.0.0.1\n"
            "               --port PORT [--conns N] [--seconds S] [--size BYTES]\n"
            "               [--warmup S] [--path /] [--server-pid PID]\n"
            "               [--connect-timeout S] [--messages M] [--window K]\n"
            "In ws-fanout mode --conns is the subscribers, besides the publisher.\n"
            "Prints one line of key=value pairs; exits non-zero on any error.\n");
}

static int parse_args(int argc, char **argv) {
    static const struct option opts[] = {{"mode", required_argument, NULL, 'm'},
                                         {"host", required_argument, NULL, 'h'},
                                         {"port", required_argument, NULL, 'p'},
                                         {"conns", required_argument, NULL, 'c'},
                                         {"seconds", required_argument, NULL, 's'},
                                         {"size", required_argument, NULL, 'z'},
                                         {"warmup", required_argument, NULL, 'w'},
                                         {"path", required_argument, NULL, 'P'},
                                         {"server-pid", required_argument, NULL, 'S'},
                                         {"connect-timeout", required_argument, NULL, 'T'},
                                         {"messages", required_argument, NULL, 'M'},
                                         {"window", required_argument, NULL, 'W'},
                                         {"help", no_argument, NULL, '?'},
                                         {NULL, 0, NULL, 0}};
    const char *mode = NULL;
    int opt;

    lg.host = "127.0.0.1";
    lg.conns = 50;
    lg.seconds = 5;
    lg.warmup = 1;
    lg.size = 64;
    lg.path = "/";
    lg.connect_timeout = 60;
    lg.messages = 1000;
    lg.window = 32;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'm':
            mode = optarg;
            break;
        case 'h':
            lg.host = optarg;
            break;
        case 'p':
            lg.port = atoi(optarg);
            break;
        case 'c':
            lg.conns = atoi(optarg);
            break;
        case 's':
            lg.seconds = atof(optarg);
            break;
        case 'z':
            lg.size = (size_t)strtoul(optarg, NULL, 10);
            break;
        case 'w':
            lg.warmup = atof(optarg);
            break;
        case 'P':
            lg.path = optarg;
            break;
        case 'S':
            lg.server_pid = atoi(optarg);
            break;
        case 'T':
            lg.connect_timeout = atof(optarg);
            break;
        case 'M':
            lg.messages = strtoull(optarg, NULL, 10);
            break;
        case 'W':
            lg.window = atoi(optarg);
            break;
        default:
            return -1;
        }
    }
    if (optind != argc || mode == NULL)
        return -1;
    if (strcmp(mode, "tcp") == 0)
        lg.mode = MODE_TCP;
    else if (strcmp(mode, "ws") == 0)
        lg.mode = MODE_WS;
    else if (strcmp(mode, "idle") == 0)
        lg.mode = MODE_IDLE;
    else if (strcmp(mode, "http-idle") == 0)
        lg.mode = MODE_HTTP_IDLE;
    else if (strcmp(mode, "ws-idle") == 0)
        lg.mode = MODE_WS_IDLE;
    else if (strcmp(mode, "ws-fanout") == 0)
        lg.mode = MODE_WS_FANOUT;
    else
        return -1;

    if (lg.port <= 0 || lg.port > 65535 || lg.conns <= 0 || lg.conns > MAX_CONNS ||
        lg.seconds <= 0 || lg.seconds > MAX_SECONDS || lg.warmup < 0 || lg.warmup > MAX_SECONDS ||
        lg.size == 0 || lg.size > MAX_SIZE || lg.connect_timeout <= 0 ||
        lg.connect_timeout > MAX_SECONDS || strlen(lg.path) > 200 || strlen(lg.host) > 64 ||
        lg.path[0] != '/' || lg.messages == 0 || lg.messages > MAX_MESSAGES || lg.window <= 0 ||
        lg.window > MAX_WINDOW || (lg.mode == MODE_WS_FANOUT && lg.size < SEQ_DIGITS) ||
        (lg.mode == MODE_WS_FANOUT && lg.conns >= MAX_CONNS)) {
        fprintf(stderr,
                "loadgen: argument out of range (conns 1..%d, size 1..%d and at least %d in "
                "ws-fanout mode, seconds up to %d, messages 1..%d, window 1..%d)\n",
                MAX_CONNS, MAX_SIZE, SEQ_DIGITS, MAX_SECONDS, MAX_MESSAGES, MAX_WINDOW);
        return -1;
    }
    if (resolve_loopback(lg.host, lg.port, &lg.addr) < 0) {
        fprintf(stderr, "loadgen: --host must be a loopback address, not %s\n", lg.host);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (parse_args(argc, argv) < 0) {
        usage();
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (raise_nofile(total_conns()) < 0)
        return 1;
    if (getrandom(&lg.rng, sizeof(lg.rng), 0) != sizeof(lg.rng) || lg.rng == 0)
        lg.rng = uv_hrtime() | 1;

    lg.c = calloc((size_t)total_conns(), sizeof(conn_t));
    if (lg.c == NULL)
        return 1;
    int with_msgs = lg.mode == MODE_TCP || lg.mode == MODE_WS;
    if (lg.mode == MODE_WS_FANOUT) {
        /* Frames from the server: the messages, or control frames of up to
         * 125 bytes. Larger ones are refused rather than buffered. */
        lg.rx_cap = (lg.size > 125 ? lg.size : 125) + 10;
        lg.resolved = calloc((size_t)lg.window, sizeof(*lg.resolved));
        lg.payloads = malloc((size_t)lg.window * lg.size);
        lg.sent_time = calloc((size_t)lg.window, sizeof(*lg.sent_time));
        lg.pub = &lg.c[lg.conns];
        lg.pub->tx = malloc(lg.size + 14);
        if (lg.resolved == NULL || lg.payloads == NULL || lg.sent_time == NULL ||
            lg.pub->tx == NULL)
            return 1;
    }
    for (int i = 0; i < total_conns(); i++) {
        lg.c[i].id = (uint32_t)i;
        if (with_msgs) {
            lg.c[i].tx = malloc(lg.size + 14);
            lg.c[i].expect = lg.mode == MODE_WS ? malloc(lg.size + 14) : lg.c[i].tx;
            if (lg.c[i].tx == NULL || lg.c[i].expect == NULL)
                return 1;
        }
        if (lg.mode == MODE_WS_FANOUT && (lg.c[i].rx = malloc(lg.rx_cap)) == NULL)
            return 1;
    }

    lg.loop = uv_default_loop();
    uv_timer_init(lg.loop, &lg.timer);
    uv_timer_start(&lg.timer, on_timer, (uint64_t)(lg.connect_timeout * 1000), 0);
    lg.phase = PH_CONNECT;
    start_connects();
    uv_run(lg.loop, UV_RUN_DEFAULT);

    for (int i = 0; i < total_conns(); i++) {
        if (lg.c[i].expect != lg.c[i].tx)
            free(lg.c[i].expect);
        free(lg.c[i].tx);
        free(lg.c[i].rx);
    }
    free(lg.c);
    free(lg.resolved);
    free(lg.payloads);
    free(lg.sent_time);
    uv_loop_close(lg.loop);
    return lg.exit_code;
}
