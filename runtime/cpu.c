/* --loops auto: how many CPUs this process may really use. In a container the cgroup v2
 * quota (cpu.max: "QUOTA PERIOD" or "max PERIOD") is the limit, not the host's core count,
 * so it is read first and rounded up; otherwise the CPUs in our affinity mask. */
#include "internal.h"

#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int mw__cpu_auto(const char *cpu_max_path, char *why, size_t whylen) {
    const char *path = cpu_max_path ? cpu_max_path : "/sys/fs/cgroup/cpu.max";
    FILE *f = fopen(path, "r");
    if (f) {
        char quota[32];
        unsigned long long period = 0;
        int got = fscanf(f, "%31s %llu", quota, &period);
        fclose(f);
        if (got == 2 && strcmp(quota, "max") != 0 && period > 0) {
            unsigned long long q = 0;
            if (sscanf(quota, "%llu", &q) == 1 && q > 0) {
                unsigned long long n = (q + period - 1) / period;
                if (n > 256)
                    n = 256;
                snprintf(why, whylen, "(auto: cgroup cpu.max quota %llu/%llu)", q, period);
                return (int)n;
            }
        }
    }
    cpu_set_t set;
    int n = 0;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        n = CPU_COUNT(&set);
    if (n <= 0)
        n = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (n <= 0)
        n = 1;
    if (n > 256)
        n = 256;
    snprintf(why, whylen, "(auto: %d available CPUs)", n);
    return n;
}
