/*
 * ws_c: the raw-C baseline for the WebSocket echo benchmark.
 *
 * Does the RFC 6455 handshake, then echoes every text, binary and
 * continuation frame back unmasked with its opcode and FIN bit kept (so a
 * fragmented message comes back fragmented the same way), answers ping with
 * pong, ignores pong, and answers close with close. Protocol errors get a
 * close frame with 1002 (or 1009 for a frame over MAX_PAYLOAD) and the
 * connection is closed.
 *
 * Frames are rewritten in place: a server frame is 4 bytes shorter than the
 * client frame it answers (no mask key), so the output never overtakes the
 * input and a whole read is answered with one write and no copy. Reads land
 * in one loop-wide buffer; only a connection holding a partial head or frame
 * gets a buffer of its own, freed as soon as it is consumed.
 *
 * Usage: ws_c HOST PORT
 */
#include <openssl/evp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

#define READ_BUF_SIZE 65536
#define HEAD_MAX 8192
#define MAX_PAYLOAD 65536
#define PEND_CAP (MAX_PAYLOAD + 14) /* Largest frame: 10-byte header + mask key. */
#define LISTEN_BACKLOG 4096

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

typedef struct {
    uv_tcp_t handle; /* First, so a uv_handle_t * is a conn_t *. */
    char *pend;      /* Partial head or frame (PEND_CAP bytes), or NULL. */
    size_t pend_len;
    int upgraded;
    int closing; /* Close once queued writes finish; read nothing more. */
    int writes_queued;
} conn_t;

typedef struct {
    uv_write_t req;
    conn_t *conn;
    char data[];
} pending_write_t;

static char read_buf[READ_BUF_SIZE];

static void on_close(uv_handle_t *handle) {
    conn_t *c = (conn_t *)handle;
    free(c->pend);
    free(c);
}

static void close_conn(conn_t *c) {
    if (!uv_is_closing((uv_handle_t *)&c->handle))
        uv_close((uv_handle_t *)&c->handle, on_close);
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
    conn_t *c = (conn_t *)handle;
    (void)suggested;
    if (c->pend != NULL)
        *buf = uv_buf_init(c->pend + c->pend_len, (unsigned int)(PEND_CAP - c->pend_len));
    else
        *buf = uv_buf_init(read_buf, sizeof(read_buf));
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

static void on_write(uv_write_t *req, int status) {
    pending_write_t *pw = (pending_write_t *)req;
    conn_t *c = pw->conn;
    free(pw);
    c->writes_queued--;
    if (status < 0) {
        close_conn(c);
        return;
    }
    if (c->writes_queued > 0)
        return;
    if (c->closing)
        close_conn(c);
    else if (uv_read_start((uv_stream_t *)&c->handle, on_alloc, on_read) < 0)
        close_conn(c);
}

/* Writes len bytes, copying whatever the kernel does not take at once, and
 * pauses reading until the copy is written. Returns 0 or a negative errno. */
static int send_copy(conn_t *c, const char *data, size_t len) {
    if (len == 0)
        return 0;
    uv_buf_t b = uv_buf_init((char *)data, (unsigned int)len);
    int sent = uv_try_write((uv_stream_t *)&c->handle, &b, 1);
    if (sent == UV_EAGAIN || sent == UV_ENOSYS)
        sent = 0;
    if (sent < 0)
        return sent;
    if ((size_t)sent == len)
        return 0;

    size_t rest = len - (size_t)sent;
    pending_write_t *pw = malloc(sizeof(*pw) + rest);
    if (pw == NULL)
        return UV_ENOMEM;
    pw->conn = c;
    memcpy(pw->data, data + sent, rest);
    b = uv_buf_init(pw->data, (unsigned int)rest);
    int rc = uv_write(&pw->req, (uv_stream_t *)&c->handle, &b, 1, on_write);
    if (rc < 0) {
        free(pw);
        return rc;
    }
    c->writes_queued++;
    uv_read_stop((uv_stream_t *)&c->handle);
    return 0;
}

/* Queues a final close frame and closes after it, or at once if nothing is
 * left to write. */
static void fail_conn(conn_t *c, unsigned code) {
    char frame[4] = {(char)0x88, 2, (char)(code >> 8), (char)(code & 0xff)};
    c->closing = 1;
    if (send_copy(c, frame, sizeof(frame)) < 0 || c->writes_queued == 0)
        close_conn(c);
}

/* Returns the value of header NAME (with its colon) in head, or NULL. */
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
            while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
                e--;
            *vlen = (size_t)(e - v);
            return v;
        }
    }
    return NULL;
}

/* Answers the upgrade request in head. Returns 0, or -1 after refusing it. */
static int handshake(conn_t *c, const char *head, size_t len) {
    static const char bad[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                              "Connection: close\r\n\r\n";
    size_t klen = 0;
    const char *key = find_header(head, len, "Sec-WebSocket-Key:", &klen);
    if (strncmp(head, "GET ", 4) != 0 || key == NULL || klen == 0 || klen > 64) {
        c->closing = 1;
        if (send_copy(c, bad, sizeof(bad) - 1) < 0 || c->writes_queued == 0)
            close_conn(c);
        return -1;
    }

    char keyguid[64 + sizeof(WS_GUID)];
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    unsigned char accept[32];
    memcpy(keyguid, key, klen);
    memcpy(keyguid + klen, WS_GUID, sizeof(WS_GUID) - 1);
    if (!EVP_Digest(keyguid, klen + sizeof(WS_GUID) - 1, md, &mdlen, EVP_sha1(), NULL)) {
        close_conn(c);
        return -1;
    }
    EVP_EncodeBlock(accept, md, (int)mdlen);

    char resp[160];
    int n = snprintf(resp, sizeof(resp),
                     "HTTP/1.1 101 Switching Protocols\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n\r\n",
                     (const char *)accept);
    if (send_copy(c, resp, (size_t)n) < 0) {
        close_conn(c);
        return -1;
    }
    c->upgraded = 1;
    return 0;
}

/* Rewrites the complete frames in base[*pos, len) in place as server frames
 * starting at base[*out]. Stops at a partial frame. Returns 0, or the close
 * code to fail the connection with. A client close frame is answered and
 * sets c->closing. */
static unsigned echo_frames(conn_t *c, char *base, size_t len, size_t *pos, size_t *out) {
    while (!c->closing && len - *pos >= 2) {
        unsigned char *f = (unsigned char *)base + *pos;
        size_t avail = len - *pos;
        unsigned b0 = f[0], b1 = f[1], op = b0 & 0x0f;
        uint64_t plen = b1 & 0x7f;
        size_t hlen = 2;

        if (plen == 126) {
            if (avail < 4)
                break;
            plen = (uint64_t)f[2] << 8 | f[3];
            hlen = 4;
        } else if (plen == 127) {
            if (avail < 10)
                break;
            plen = 0;
            for (int i = 2; i < 10; i++)
                plen = plen << 8 | f[i];
            hlen = 10;
        }
        if (!(b1 & 0x80) || (b0 & 0x70) != 0)
            return 1002; /* Client frames must be masked; no extension is agreed. */
        if (op >= 8 && (!(b0 & 0x80) || plen > 125))
            return 1002; /* Control frames are whole and short. */
        if (op != 0 && op != 1 && op != 2 && op != 8 && op != 9 && op != 10)
            return 1002;
        if (plen > MAX_PAYLOAD)
            return 1009;
        if (avail < hlen + 4 + plen)
            break;

        unsigned char mask[4];
        memcpy(mask, f + hlen, 4);
        unsigned char *payload = f + hlen + 4;
        for (size_t i = 0; i < plen; i++)
            payload[i] ^= mask[i & 3];
        *pos += hlen + 4 + (size_t)plen;

        if (op == 10)
            continue; /* Unsolicited pong: nothing to answer. */
        if (op == 8) {
            /* Echo the status code (if any) and close after writing. */
            plen = plen >= 2 ? 2 : 0;
            c->closing = 1;
        }
        unsigned char *o = (unsigned char *)base + *out;
        o[0] = (unsigned char)(op == 9 ? 0x8a : b0);
        if (plen < 126) {
            o[1] = (unsigned char)plen;
            hlen = 2;
        } else if (plen <= 0xffff) {
            o[1] = 126;
            o[2] = (unsigned char)(plen >> 8);
            o[3] = (unsigned char)plen;
            hlen = 4;
        } else {
            o[1] = 127;
            for (int i = 0; i < 8; i++)
                o[2 + i] = (unsigned char)(plen >> (56 - 8 * i));
            hlen = 10;
        }
        memmove(o + hlen, payload, (size_t)plen);
        *out += hlen + (size_t)plen;
    }
    return 0;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
    conn_t *c = (conn_t *)stream;
    if (nread < 0) {
        close_conn(c);
        return;
    }
    if (nread == 0 || c->closing)
        return;

    char *base = c->pend != NULL ? c->pend : buf->base;
    size_t len = c->pend != NULL ? c->pend_len + (size_t)nread : (size_t)nread;
    size_t pos = 0, out = 0;

    if (!c->upgraded) {
        char *end = memmem(base, len, "\r\n\r\n", 4);
        if (end == NULL && len >= HEAD_MAX) {
            close_conn(c);
            return;
        }
        if (end != NULL) {
            pos = out = (size_t)(end + 4 - base);
            if (handshake(c, base, pos) < 0)
                return;
        }
    }

    size_t out_start = out;
    unsigned code = c->upgraded ? echo_frames(c, base, len, &pos, &out) : 0;
    if (send_copy(c, base + out_start, out - out_start) < 0) {
        close_conn(c);
        return;
    }
    if (code != 0) {
        uv_read_stop(stream);
        fail_conn(c, code);
        return;
    }
    if (c->closing) {
        uv_read_stop(stream);
        if (c->writes_queued == 0)
            close_conn(c);
        return;
    }

    /* Keep a partial head or frame, in the connection's own buffer. */
    size_t rest = len - pos;
    if (rest > 0 && c->pend == NULL) {
        c->pend = malloc(PEND_CAP);
        if (c->pend == NULL) {
            close_conn(c);
            return;
        }
        memcpy(c->pend, base + pos, rest);
    } else if (rest > 0) {
        memmove(c->pend, c->pend + pos, rest);
    } else if (c->pend != NULL) {
        free(c->pend);
        c->pend = NULL;
    }
    c->pend_len = rest;
}

static void on_connection(uv_stream_t *server, int status) {
    if (status < 0) {
        fprintf(stderr, "ws_c: accept: %s\n", uv_strerror(status));
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
        fprintf(stderr, "ws_c: listen on %s:%s: %s\n", argv[1], argv[2], uv_strerror(rc));
        return 1;
    }
    return uv_run(loop, UV_RUN_DEFAULT);
}
