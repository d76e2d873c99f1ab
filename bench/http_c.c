/*
 * http_c: the raw-C baseline for the HTTP "hello" benchmark.
 *
 * Answers every request head (everything up to "\r\n\r\n") with a fixed
 * 200 response, keeps the connection alive, and answers pipelined requests in
 * one batched write. It does not read request bodies: it is a yardstick for
 * what one core can do with libuv, not an HTTP server.
 *
 * Reads land in one loop-wide buffer. Only a connection that holds a partial
 * head gets a buffer of its own (HEAD_MAX bytes), so idle connections cost a
 * uv_tcp_t and a few words. Responses are written from static memory, so
 * nothing is copied even when a write has to be queued.
 *
 * Usage: http_c HOST PORT
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

#define READ_BUF_SIZE 65536
#define HEAD_MAX 8192
#define LISTEN_BACKLOG 4096
#define RESP_BATCH 128 /* Responses per static block; one iovec per block. */
/* Enough iovecs for the most requests one read can hold: the shortest head,
 * "\r\n\r\n", is 4 bytes. */
#define MAX_IOVS (READ_BUF_SIZE / 4 / RESP_BATCH + 1)

static const char RESPONSE[] = "HTTP/1.1 200 OK\r\n"
                               "Content-Type: text/plain\r\n"
                               "Content-Length: 13\r\n"
                               "\r\n"
                               "Hello, World!";
#define RESP_LEN (sizeof(RESPONSE) - 1)

static const char RESPONSE_431[] = "HTTP/1.1 431 Request Header Fields Too Large\r\n"
                                   "Content-Length: 0\r\n"
                                   "Connection: close\r\n"
                                   "\r\n";

typedef struct {
    uv_tcp_t handle; /* First, so a uv_handle_t * is a conn_t *. */
    char *head;      /* Partial request head, or NULL. */
    size_t head_len;
    int closing_after_write; /* Close once queued responses are written. */
} conn_t;

static char read_buf[READ_BUF_SIZE];
static char resp_block[RESP_BATCH * RESP_LEN];

static void on_close(uv_handle_t *handle) {
    conn_t *c = (conn_t *)handle;
    free(c->head);
    free(c);
}

static void close_conn(conn_t *c) {
    if (!uv_is_closing((uv_handle_t *)&c->handle))
        uv_close((uv_handle_t *)&c->handle, on_close);
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
    conn_t *c = (conn_t *)handle;
    (void)suggested;
    /* A connection holding a partial head reads behind it, so the head stays
     * contiguous; the others share the loop-wide buffer. */
    if (c->head != NULL)
        *buf = uv_buf_init(c->head + c->head_len, (unsigned int)(HEAD_MAX - c->head_len));
    else
        *buf = uv_buf_init(read_buf, sizeof(read_buf));
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

static void on_write(uv_write_t *req, int status) {
    conn_t *c = req->data;
    free(req);
    if (status < 0 || c->closing_after_write) {
        close_conn(c);
        return;
    }
    if (uv_read_start((uv_stream_t *)&c->handle, on_alloc, on_read) < 0)
        close_conn(c);
}

/* Writes n copies of RESPONSE (or the given static text if n is 0). Returns 1
 * if part of it had to be queued, 0 if all was written, -1 on error. */
static int send_static(conn_t *c, size_t n, const char *text, size_t text_len) {
    uv_buf_t bufs[MAX_IOVS];
    unsigned int nbufs = 0;
    if (n == 0) {
        bufs[nbufs++] = uv_buf_init((char *)text, (unsigned int)text_len);
    } else {
        while (n > 0 && nbufs < MAX_IOVS) {
            size_t k = n < RESP_BATCH ? n : RESP_BATCH;
            bufs[nbufs++] = uv_buf_init(resp_block, (unsigned int)(k * RESP_LEN));
            n -= k;
        }
    }

    int sent = uv_try_write((uv_stream_t *)&c->handle, bufs, nbufs);
    if (sent == UV_EAGAIN || sent == UV_ENOSYS)
        sent = 0;
    if (sent < 0)
        return -1;

    /* Skip what went out; the rest still points into static memory. */
    unsigned int first = 0;
    size_t skip = (size_t)sent;
    while (first < nbufs && skip >= bufs[first].len)
        skip -= bufs[first++].len;
    if (first == nbufs)
        return 0;
    bufs[first].base += skip;
    bufs[first].len -= skip;

    uv_write_t *req = malloc(sizeof(*req));
    if (req == NULL)
        return -1;
    req->data = c;
    if (uv_write(req, (uv_stream_t *)&c->handle, bufs + first, nbufs - first, on_write) < 0) {
        free(req);
        return -1;
    }
    /* Stop reading until the kernel takes this batch: bounded per connection. */
    uv_read_stop((uv_stream_t *)&c->handle);
    return 1;
}

/* Case-insensitive search for a header line inside one head. */
static int head_has(const char *head, size_t len, const char *needle) {
    size_t n = strlen(needle);
    for (size_t i = 0; i + n <= len; i++)
        if (strncasecmp(head + i, needle, n) == 0)
            return 1;
    return 0;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
    conn_t *c = (conn_t *)stream;
    if (nread < 0) {
        close_conn(c);
        return;
    }
    if (nread == 0)
        return;

    char *base = c->head != NULL ? c->head : buf->base;
    size_t len = c->head != NULL ? c->head_len + (size_t)nread : (size_t)nread;
    size_t pos = 0, requests = 0;
    int close_after = 0;

    for (;;) {
        char *end = memmem(base + pos, len - pos, "\r\n\r\n", 4);
        if (end == NULL)
            break;
        size_t head_len = (size_t)(end + 4 - (base + pos));
        if (head_has(base + pos, head_len, "\r\nConnection: close"))
            close_after = 1;
        pos += head_len;
        requests++;
        if (close_after)
            break; /* Anything pipelined after "Connection: close" is dropped. */
    }

    size_t rest = len - pos;
    if (close_after) {
        rest = 0;
    } else if (rest >= HEAD_MAX) {
        /* A head that does not fit is refused, as any server would. */
        requests = 0;
        rest = 0;
        c->closing_after_write = 1;
        free(c->head);
        c->head = NULL;
        if (send_static(c, 0, RESPONSE_431, sizeof(RESPONSE_431) - 1) <= 0)
            close_conn(c);
        return;
    }

    /* Keep the partial head, in its own buffer, for the next read. */
    if (rest > 0 && c->head == NULL) {
        c->head = malloc(HEAD_MAX);
        if (c->head == NULL) {
            close_conn(c);
            return;
        }
        memcpy(c->head, base + pos, rest);
    } else if (rest > 0) {
        memmove(c->head, c->head + pos, rest);
    } else if (c->head != NULL) {
        free(c->head);
        c->head = NULL;
    }
    c->head_len = rest;

    if (requests == 0)
        return;
    c->closing_after_write = close_after;
    int rc = send_static(c, requests, NULL, 0);
    if (rc < 0 || (rc == 0 && close_after))
        close_conn(c);
}

static void on_connection(uv_stream_t *server, int status) {
    if (status < 0) {
        fprintf(stderr, "http_c: accept: %s\n", uv_strerror(status));
        return;
    }
    conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return;
    uv_tcp_init(server->loop, &c->handle);
    if (uv_accept(server, (uv_stream_t *)&c->handle) < 0 ||
        uv_read_start((uv_stream_t *)&c->handle, on_alloc, on_read) < 0) {
        close_conn(c);
        return;
    }
    uv_tcp_nodelay(&c->handle, 1);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s HOST PORT\n", argv[0]);
        return 2;
    }
    for (size_t i = 0; i < RESP_BATCH; i++)
        memcpy(resp_block + i * RESP_LEN, RESPONSE, RESP_LEN);

    signal(SIGPIPE, SIG_IGN); /* A peer that resets must not kill the server. */
    uv_loop_t *loop = uv_default_loop();
    uv_tcp_t server;
    struct sockaddr_in addr;
    int rc = uv_ip4_addr(argv[1], atoi(argv[2]), &addr);
    if (rc == 0)
        rc = uv_tcp_init(loop, &server);
    if (rc == 0)
        rc = uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&server, LISTEN_BACKLOG, on_connection);
    if (rc < 0) {
        fprintf(stderr, "http_c: listen on %s:%s: %s\n", argv[1], argv[2], uv_strerror(rc));
        return 1;
    }
    return uv_run(loop, UV_RUN_DEFAULT);
}
