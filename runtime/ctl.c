/* Client commands that talk to a running server: reload, status, top, profile, gc.
 *
 * reload works through a signal (--pid / --pid-file) or the admin listener (--admin);
 * the others read the admin listener over plain HTTP/1.0 on a loopback address. */
#include "internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char ctl_usage[] =
    "usage:\n"
    "  moonwire reload (--pid PID | --pid-file PATH | --admin HOST:PORT)\n"
    "  moonwire status --admin HOST:PORT        loops, generations, reload errors\n"
    "  moonwire top --admin HOST:PORT [--count N]   live per-loop view, every second\n"
    "  moonwire profile --admin HOST:PORT [--seconds N] [--loop K|all] [--folded]\n"
    "                                           flame graph SVG (or folded stacks) on stdout\n"
    "  moonwire gc --admin HOST:PORT            full Lua garbage collection in every loop\n";

static int fail(const char *fmt, const char *arg) {
    fputs("moonwire: ", stderr);
    fprintf(stderr, fmt, arg);
    fputs("\n", stderr);
    return 2;
}

/* One HTTP/1.0 request; the response body goes to out (malloc'd). Returns the status code
 * or a negative errno. */
static int http_request(const char *addr, const char *method, const char *path, char **out,
                        size_t *outlen, int timeout_s) {
    char host[64];
    const char *colon = strrchr(addr, ':');
    if (colon == NULL || (size_t)(colon - addr) >= sizeof host)
        return -EINVAL;
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        return -EINVAL;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct timeval tv = {timeout_s, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    char req[512];
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.0\r\nHost: %s\r\nContent-Length: 0\r\n\r\n",
                     method, path, addr);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return -EIO;
    }
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (len + 4096 > cap) {
            cap *= 2;
            char *nb = realloc(buf, cap);
            if (nb == NULL)
                break;
            buf = nb;
        }
        ssize_t r = read(fd, buf + len, cap - len - 1);
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    buf[len] = '\0';
    int status = 0;
    if (sscanf(buf, "HTTP/%*d.%*d %d", &status) != 1) {
        free(buf);
        return -EPROTO;
    }
    char *body = strstr(buf, "\r\n\r\n");
    body = body ? body + 4 : buf + len;
    *outlen = len - (size_t)(body - buf);
    *out = malloc(*outlen + 1);
    memcpy(*out, body, *outlen);
    (*out)[*outlen] = '\0';
    free(buf);
    return status;
}

static int admin_call(const char *admin, const char *method, const char *path, int timeout_s,
                      int print) {
    char *body = NULL;
    size_t len = 0;
    int status = http_request(admin, method, path, &body, &len, timeout_s);
    if (status < 0) {
        fprintf(stderr, "moonwire: cannot reach the admin listener at %s: %s\n", admin,
                status == -EINVAL ? "expected an IPv4 HOST:PORT" : strerror(-status));
        return 1;
    }
    if (print || status != 200) {
        FILE *to = status == 200 ? stdout : stderr;
        fwrite(body, 1, len, to);
        /* JSON answers (reload) end without a newline; keep the shell prompt on its own line. */
        if (len > 0 && body[len - 1] != '\n')
            fputc('\n', to);
    }
    free(body);
    return status == 200 ? 0 : 1;
}

int mw__ctl_main(int argc, char **argv) {
    const char *cmd = argv[1];
    const char *admin = NULL, *pid_file = NULL, *loop = "all";
    long pid = 0, seconds = 10, count = 0;
    int folded = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(ctl_usage, stdout);
            return 0;
        }
        if (strcmp(a, "--folded") == 0) {
            folded = 1;
            continue;
        }
        if (v == NULL)
            return fail("%s needs a value (see moonwire --help)", a);
        i++;
        if (strcmp(a, "--admin") == 0)
            admin = v;
        else if (strcmp(a, "--pid") == 0)
            pid = atol(v);
        else if (strcmp(a, "--pid-file") == 0)
            pid_file = v;
        else if (strcmp(a, "--seconds") == 0)
            seconds = atol(v);
        else if (strcmp(a, "--loop") == 0)
            loop = v;
        else if (strcmp(a, "--count") == 0)
            count = atol(v);
        else
            return fail("unknown option '%s' (see moonwire --help)", a);
    }
    if (strcmp(cmd, "reload") == 0) {
        if (pid_file) {
            FILE *f = fopen(pid_file, "r");
            if (f == NULL || fscanf(f, "%ld", &pid) != 1)
                return fail("cannot read a pid from '%s'", pid_file);
            fclose(f);
        }
        if (pid > 0) {
            if (kill((pid_t)pid, SIGHUP) < 0)
                return fail("cannot signal the server: %s", strerror(errno));
            return 0;
        }
        if (admin)
            return admin_call(admin, "POST", "/reload", 5, 1);
        fputs(ctl_usage, stderr);
        return 2;
    }
    if (admin == NULL)
        return fail("%s needs --admin HOST:PORT (start the server with --admin)", cmd);
    if (strcmp(cmd, "status") == 0)
        return admin_call(admin, "GET", "/status", 5, 1);
    if (strcmp(cmd, "gc") == 0)
        return admin_call(admin, "POST", "/gc", 15, 1);
    if (strcmp(cmd, "top") == 0) {
        for (long i = 0; count == 0 || i < count; i++) {
            if (i > 0)
                sleep(1);
            fputs("\033[H\033[2J", stdout);
            int rc = admin_call(admin, "GET", "/top", 5, 1);
            fflush(stdout);
            if (rc != 0)
                return rc;
        }
        return 0;
    }
    if (strcmp(cmd, "profile") == 0) {
        char path[128];
        snprintf(path, sizeof path, "/%s?seconds=%ld&loop=%s", folded ? "profile" : "flamegraph",
                 seconds, loop);
        return admin_call(admin, "GET", path, (int)seconds + 10, 1);
    }
    return fail("unknown command '%s'", cmd);
}
