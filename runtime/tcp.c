/* Listening sockets. Each loop binds its own socket with SO_REUSEPORT so the kernel spreads
 * connections across loops with no shared accept lock. libuv 1.44 has no flag for it, so the
 * socket is made here: create, set the option, bind, then hand it to uv_tcp_open. Without
 * SO_REUSEPORT, loop 1 accepts alone and passes sockets to the others (loop.c). */
#include "internal.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int resolve(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len) {
    memset(ss, 0, sizeof *ss);
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0) {
        *len = sizeof(struct sockaddr_in);
        return 0;
    }
    if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) == 0) {
        *len = sizeof(struct sockaddr_in6);
        return 0;
    }
    return UV_EINVAL;
}

static int make_socket(const char *host, int port, int reuseport, int *out_fd, int *out_port) {
    struct sockaddr_storage ss;
    socklen_t len;
    int rc = resolve(host, port, &ss, &len);
    if (rc < 0)
        return rc;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    if (bind(fd, (struct sockaddr *)&ss, len) < 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    if (out_port) {
        struct sockaddr_storage got;
        socklen_t glen = sizeof got;
        getsockname(fd, (struct sockaddr *)&got, &glen);
        *out_port = ntohs(got.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&got)->sin6_port
                                                    : ((struct sockaddr_in *)&got)->sin_port);
    }
    *out_fd = fd;
    return 0;
}

/* Checks that the address is free before the loops bind it with SO_REUSEPORT (which would
 * otherwise silently share a port held by another reuseport server), and turns port 0 into
 * a concrete port so that every loop binds the same one. */
int mw__tcp_probe(const char *host, int *port, char *err, size_t errlen) {
    int fd;
    int rc = make_socket(host, *port, 0, &fd, port);
    if (rc < 0) {
        if (rc == UV_EINVAL)
            snprintf(err, errlen, "bad listen address '%s' (expected IPv4 or IPv6 literal)", host);
        else
            snprintf(err, errlen, "cannot listen on %s:%d: %s", host, *port, uv_strerror(rc));
        return rc;
    }
    close(fd);
    return 0;
}

static void on_connection(uv_stream_t *server, int status) {
    mw_loop_t *l = server->data;
    if (status < 0) {
        MW_LOG(MW_LOG_WARN, l->id, "accept error: %s", uv_strerror(status));
        return;
    }
    if (l->reuseport || l->is_admin || mw__nloops == 1) {
        mw__conn_accept(l, server);
        return;
    }
    /* Single acceptor: round-robin the socket to a loop (ourselves included). */
    int target = l->fallback_rr++ % mw__nloops;
    if (target == l->id - 1) {
        mw__conn_accept(l, server);
        return;
    }
    uv_tcp_t *tmp = malloc(sizeof *tmp);
    if (tmp == NULL)
        return;
    uv_tcp_init(&l->uv, tmp);
    if (uv_accept(server, (uv_stream_t *)tmp) == 0) {
        uv_os_fd_t fd;
        if (uv_fileno((uv_handle_t *)tmp, &fd) == 0) {
            int dupfd = dup(fd);
            mw_msg_t *m = calloc(1, sizeof *m);
            if (dupfd >= 0 && m) {
                m->type = MW_MSG_FD;
                m->fd = dupfd;
                mw__loop_post(&mw__loops[target], m);
            } else {
                if (dupfd >= 0)
                    close(dupfd);
                free(m);
            }
        }
    }
    uv_close((uv_handle_t *)tmp, (uv_close_cb)free);
}

int mw__tcp_listen(mw_loop_t *l, char *err, size_t errlen) {
    int fd;
    int rc = make_socket(l->host, l->port, l->reuseport, &fd, NULL);
    if (rc < 0) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", l->host, l->port, uv_strerror(rc));
        return rc;
    }
    uv_tcp_init(&l->uv, &l->listener);
    l->listener.data = l;
    rc = uv_tcp_open(&l->listener, fd);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&l->listener, 4096, on_connection);
    if (rc < 0) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", l->host, l->port, uv_strerror(rc));
        uv_close((uv_handle_t *)&l->listener, NULL);
        return rc;
    }
    l->listening = 1;
    return 0;
}
