/* The file watcher behind hot reload. It runs in the main thread.
 *
 * Loops report the files their handler loaded (the script and the application's own
 * modules) with mw_watch_file. The watcher watches each file's *directory*, not the file:
 * editors that save by writing a temporary file and renaming it over the original replace
 * the inode, and a watch on the old inode would go quiet. Events for watched names restart
 * a short debounce timer, so a save made of several writes, or a rename plus an attribute
 * change, becomes one reload; when it fires, files whose identity (inode, size, mtime)
 * changed trigger one reload request to every loop. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define DEBOUNCE_MS 15

typedef struct wfile_s {
    struct wfile_s *next;
    char *path;
    const char *name; /* points into path */
    struct stat st;
    int exists;
} wfile_t;

typedef struct wdir_s {
    struct wdir_s *next;
    char *path;
    uv_fs_event_t ev;
} wdir_t;

static uv_loop_t *wloop;
static uv_async_t wasync;
static uv_timer_t debounce;
static wfile_t *files;
static wdir_t *dirs;
static int enabled;

/* Paths reported by loops, handed over under a lock. */
static pthread_mutex_t req_lock = PTHREAD_MUTEX_INITIALIZER;
static wfile_t *requests;

static void snapshot(wfile_t *f) {
    f->exists = stat(f->path, &f->st) == 0;
}

static int changed(wfile_t *f) {
    struct stat st;
    int exists = stat(f->path, &st) == 0;
    if (exists != f->exists)
        return exists; /* a vanished file is not a change to load (yet) */
    if (!exists)
        return 0;
    return st.st_ino != f->st.st_ino || st.st_size != f->st.st_size ||
           st.st_mtim.tv_sec != f->st.st_mtim.tv_sec || st.st_mtim.tv_nsec != f->st.st_mtim.tv_nsec;
}

static void on_debounce(uv_timer_t *t) {
    (void)t;
    int n = 0;
    const char *first = NULL;
    for (wfile_t *f = files; f; f = f->next) {
        if (changed(f)) {
            if (first == NULL)
                first = f->path;
            n++;
            snapshot(f);
        }
    }
    if (n == 0)
        return;
    mw__log(MW_LOG_INFO, 0, "%s changed%s: reloading", first, n > 1 ? " (and more)" : "");
    mw__reload_all();
}

static void on_fs_event(uv_fs_event_t *h, const char *filename, int events, int status) {
    (void)events;
    wdir_t *d = h->data;
    if (status < 0)
        return;
    for (wfile_t *f = files; f; f = f->next) {
        size_t dl = strlen(d->path);
        if (strncmp(f->path, d->path, dl) != 0 || f->path[dl] != '/' ||
            strchr(f->path + dl + 1, '/') != NULL)
            continue;
        if (filename == NULL || strcmp(f->name, filename) == 0) {
            uv_timer_start(&debounce, on_debounce, DEBOUNCE_MS, 0);
            return;
        }
    }
}

static void free_dir(uv_handle_t *h) {
    wdir_t *d = h->data;
    free(d->path);
    free(d);
}

static void watch_dir(const char *dir) {
    for (wdir_t *d = dirs; d; d = d->next)
        if (strcmp(d->path, dir) == 0)
            return;
    wdir_t *d = calloc(1, sizeof *d);
    if (d == NULL)
        return;
    d->path = strdup(dir);
    uv_fs_event_init(wloop, &d->ev);
    d->ev.data = d;
    int rc = uv_fs_event_start(&d->ev, on_fs_event, dir, 0);
    if (rc < 0) {
        mw__log(MW_LOG_WARN, 0, "cannot watch %s for changes: %s", dir, uv_strerror(rc));
        uv_close((uv_handle_t *)&d->ev, free_dir); /* libuv holds the handle until then */
        return;
    }
    d->next = dirs;
    dirs = d;
    MW_LOG(MW_LOG_DEBUG, 0, "watching %s", dir);
}

static void on_requests(uv_async_t *a) {
    (void)a;
    pthread_mutex_lock(&req_lock);
    wfile_t *r = requests;
    requests = NULL;
    pthread_mutex_unlock(&req_lock);
    while (r) {
        wfile_t *next = r->next;
        int known = 0;
        for (wfile_t *f = files; f; f = f->next)
            if (strcmp(f->path, r->path) == 0)
                known = 1;
        if (known) {
            free(r->path);
            free(r);
        } else {
            char *slash = strrchr(r->path, '/');
            r->name = slash ? slash + 1 : r->path;
            snapshot(r);
            r->next = files;
            files = r;
            if (slash) {
                *slash = '\0';
                watch_dir(r->path);
                *slash = '/';
            }
        }
        r = next;
    }
}

void mw_watch_file(const char *path) {
    if (!enabled || path == NULL || path[0] != '/')
        return;
    wfile_t *r = calloc(1, sizeof *r);
    if (r == NULL)
        return;
    r->path = strdup(path);
    if (r->path == NULL) {
        free(r);
        return;
    }
    pthread_mutex_lock(&req_lock);
    r->next = requests;
    requests = r;
    pthread_mutex_unlock(&req_lock);
    uv_async_send(&wasync);
}

int mw__watch_start(uv_loop_t *loop) {
    wloop = loop;
    uv_async_init(loop, &wasync, on_requests);
    uv_timer_init(loop, &debounce);
    enabled = 1;
    return 0;
}

void mw__watch_stop(void) {
    if (!enabled)
        return;
    enabled = 0;
    uv_close((uv_handle_t *)&wasync, NULL);
    uv_close((uv_handle_t *)&debounce, NULL);
    for (wdir_t *d = dirs; d; d = d->next)
        uv_close((uv_handle_t *)&d->ev, NULL);
}

void mw__watch_free(void) {
    while (dirs) {
        wdir_t *n = dirs->next;
        free(dirs->path);
        free(dirs);
        dirs = n;
    }
    while (files) {
        wfile_t *n = files->next;
        free(files->path);
        free(files);
        files = n;
    }
    pthread_mutex_lock(&req_lock);
    while (requests) {
        wfile_t *n = requests->next;
        free(requests->path);
        free(requests);
        requests = n;
    }
    pthread_mutex_unlock(&req_lock);
}
