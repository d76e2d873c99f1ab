/* Listening sockets. Each loop binds its own socket with SO_REUSEPORT so the kernel spreads
 * connections across loops with no shared accept lock. libuv 1.44 has no flag for it, so the
 * socket is made here: create, set the option, bind, listen. A uv_poll_t says when it is
 * readable and accept4 takes the connections, as plain sockets for conn.c, which polls them
 * itself. Without SO_REUSEPORT, loop 1 accepts alone and passes sockets to the others. */
#include "internal.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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

/* Gives an accepted socket to this loop or, with a single acceptor, round-robin to a loop. */
static void dispatch(mw_loop_t *l, int fd) {
    int target = l->id - 1;
    if (!l->reuseport && !l->is_admin && mw__nloops > 1)
        target = l->fallback_rr++ % mw__nloops;
    if (target == l->id - 1) {
        mw__conn_adopt(l, fd);
        return;
    }
    mw_msg_t *m = calloc(1, sizeof *m);
    if (m == NULL) {
        close(fd);
        return;
    }
    m->type = MW_MSG_FD;
    m->fd = fd;
    mw__loop_post(&mw__loops[target], m);
}

static void on_listen_ready(uv_poll_t *p, int status, int events);

static void on_accept_resume(uv_timer_t *t) {
    mw_loop_t *l = t->data;
    if (l->listening)
        (void)uv_poll_start(&l->listener, UV_READABLE, on_listen_ready);
}

/* Out of descriptors or memory: the pending connection cannot be taken, and the poll would
 * report it again at once. Stop accepting for a moment (connections wait in the backlog). */
static void pause_accepting(mw_loop_t *l, int err) {
    uint64_t now = uv_now(&l->uv);
    if (l->accept_warned == 0 || now - l->accept_warned >= 1000) {
        l->accept_warned = now;
        MW_LOG(MW_LOG_WARN, l->id, "accept: %s; accepting paused for %d ms%s", strerror(err),
               MW_ACCEPT_PAUSE_MS,
               err == EMFILE || err == ENFILE ? " (raise the file limit or lower --max-conns)"
                                              : "");
    }
    uv_poll_stop(&l->listener);
    uv_timer_start(&l->accept_timer, on_accept_resume, MW_ACCEPT_PAUSE_MS, 0);
}

static void on_listen_ready(uv_poll_t *p, int status, int events) {
    mw_loop_t *l = p->data;
    (void)events;
    if (status < 0) {
        /* libuv has stopped the poll; try again after the pause. */
        pause_accepting(l, EIO);
        return;
    }
    for (int i = 0; i < MW_ACCEPTS_PER_WAKE && l->listening; i++) {
        int fd = accept4(l->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            dispatch(l, fd);
            continue;
        }
        switch (errno) {
        case EAGAIN:
            return;
        case EINTR:
        case ECONNABORTED:
        case EPERM:
        case EPROTO:
        case ENETDOWN:
        case ENETUNREACH:
        case EHOSTDOWN:
        case EHOSTUNREACH:
        case ENONET:
        case ENOPROTOOPT:
        case EOPNOTSUPP:
            continue; /* that connection's own trouble (accept(2)); the next may be fine */
        default:
            pause_accepting(l, errno); /* EMFILE, ENFILE, ENOBUFS, ENOMEM and the unexpected */
            return;
        }
    }
}

int mw__tcp_listen(mw_loop_t *l, char *err, size_t errlen) {
    int fd;
    int rc = make_socket(l->host, l->port, l->reuseport, &fd, NULL);
    /* Linux copies TCP_NODELAY to the sockets accepted from this one: set once here, it
     * saves a system call per connection. */
    int one = 1;
    if (rc == 0 &&
        (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0 || listen(fd, 4096) < 0)) {
        rc = -errno;
        close(fd);
    }
    if (rc == 0) {
        rc = uv_poll_init(&l->uv, &l->listener, fd);
        if (rc < 0)
            close(fd);
    }
    if (rc < 0) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", l->host, l->port, uv_strerror(rc));
        return rc;
    }
    l->listener.data = l;
    l->listen_fd = fd;
    uv_timer_init(&l->uv, &l->accept_timer);
    l->accept_timer.data = l;
    (void)uv_poll_start(&l->listener, UV_READABLE, on_listen_ready);
    l->listening = 1;
    return 0;
}

void mw__tcp_stop(mw_loop_t *l) {
    if (!l->listening)
        return;
    l->listening = 0;
    uv_close((uv_handle_t *)&l->listener, NULL);
    uv_close((uv_handle_t *)&l->accept_timer, NULL);
    close(l->listen_fd);
}
