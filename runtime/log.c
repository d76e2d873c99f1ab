/* Leveled logging: one line per event on stderr, written with a single write(2) so lines
 * from different loops never interleave. */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int mw__log_level = MW_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int mw__log_parse_level(const char *name) {
    for (int i = 0; i < 4; i++)
        if (strcmp(name, level_names[i]) == 0)
            return i;
    if (strcmp(name, "off") == 0)
        return MW_LOG_OFF;
    return -1;
}

static void vlog(int level, int loop_id, const char *fmt, va_list ap) {
    char line[4096];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, level_names[level]);
    if (loop_id > 0)
        n += snprintf(line + n, sizeof line - (size_t)n, "[loop %d] ", loop_id);
    else if (loop_id < 0)
        n += snprintf(line + n, sizeof line - (size_t)n, "[admin] ");
    else
        n += snprintf(line + n, sizeof line - (size_t)n, "[main] ");
    int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    if (m < 0)
        m = 0;
    n += m;
    if (n > (int)sizeof line - 2)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
}

void mw__log(int level, int loop_id, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vlog(level, loop_id, fmt, ap);
    va_end(ap);
}

void mw_log_write(int level, int loop_id, const char *msg) {
    if (level < 0)
        level = 0;
    if (level > MW_LOG_ERROR)
        level = MW_LOG_ERROR;
    if (level >= mw__log_level)
        mw__log(level, loop_id, "%s", msg);
}

int mw_log_get_level(void) {
    return mw__log_level;
}
