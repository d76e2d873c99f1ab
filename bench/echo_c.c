/*
 * echo_c: the raw-C baseline for the TCP echo benchmark.
 *
 * One libuv loop, no per-connection buffer: every read lands in one
 * loop-wide buffer and is written straight back with uv_try_write. Only
 * what the kernel would not take is copied into a write request, and reading
 * pauses until that request completes, so a slow reader costs at most one
 * read's worth of memory. An idle connection therefore costs a uv_tcp_t and
 * nothing else, which is the floor moonwire's idle-RSS figure is compared to.
 *
 * Usage: echo_c HOST PORT
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define READ_BUF_SIZE 65536
#define LISTEN_BACKLOG 4096

typedef struct {
    uv_write_t req;
    char data[]; /* The bytes uv_try_write left over. */
} pending_write_t;

static char read_buf[READ_BUF_SIZE];

static void on_close(uv_handle_t *handle) {
    free(handle);
}

static void close_conn(uv_stream_t *stream) {
    if (!uv_is_closing((uv_handle_t *)stream))
        uv_close((uv_handle_t *)stream, on_close);
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
    (void)handle;
    (void)suggested;
    /* Safe to share: the loop is single-threaded and read_cb consumes the
     * buffer (writes it or copies it) before the next read can happen. */
    *buf = uv_buf_init(read_buf, sizeof(read_buf));
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

static void on_write(uv_write_t *req, int status) {
    uv_stream_t *stream = req->handle;
    free(req);
    if (status < 0) {
        close_conn(stream);
        return;
    }
    if (uv_read_start(stream, on_alloc, on_read) < 0)
        close_conn(stream);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
    if (nread < 0) {
        close_conn(stream); /* EOF or error: nothing more to echo. */
        return;
    }
    if (nread == 0)
        return;

    uv_buf_t out = uv_buf_init(buf->base, (unsigned int)nread);
    int sent = uv_try_write(stream, &out, 1);
    if (sent == UV_EAGAIN || sent == UV_ENOSYS)
        sent = 0;
    if (sent < 0) {
        close_conn(stream);
        return;
    }
    if ((size_t)sent == (size_t)nread)
        return;

    /* The kernel send buffer is full: queue the rest and stop reading until it
     * drains, so the per-connection backlog stays bounded by one read. */
    size_t rest = (size_t)nread - (size_t)sent;
    pending_write_t *pw = malloc(sizeof(*pw) + rest);
    if (pw == NULL) {
        close_conn(stream);
        return;
    }
    memcpy(pw->data, buf->base + sent, rest);
    out = uv_buf_init(pw->data, (unsigned int)rest);
    uv_read_stop(stream);
    if (uv_write(&pw->req, stream, &out, 1, on_write) < 0) {
        free(pw);
        close_conn(stream);
    }
}

static void on_connection(uv_stream_t *server, int status) {
    if (status < 0) {
        fprintf(stderr, "echo_c: accept: %s\n", uv_strerror(status));
        return;
    }
    uv_tcp_t *client = malloc(sizeof(*client));
    if (client == NULL)
        return;
    uv_tcp_init(server->loop, client);
    if (uv_accept(server, (uv_stream_t *)client) < 0 ||
        uv_read_start((uv_stream_t *)client, on_alloc, on_read) < 0) {
        close_conn((uv_stream_t *)client);
        return;
    }
    uv_tcp_nodelay(client, 1);
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
        fprintf(stderr, "echo_c: listen on %s:%s: %s\n", argv[1], argv[2], uv_strerror(rc));
        return 1;
    }
    return uv_run(loop, UV_RUN_DEFAULT);
}
