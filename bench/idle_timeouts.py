#!/usr/bin/env python3
"""Idle connections with idle timeouts cost no CPU (bench/run.sh timeouts).

Opens N connections (default 100,000) to a moonwire server started with
--idle-timeout 600000, so every connection has a timeout armed; the source
addresses rotate over 127.0.0.2..127.0.0.9 to get past one address's
ephemeral ports. Then measures the server's CPU time over a quiet window and
prints one key=value line. Loopback only; bounded in count and time.

usage: idle_timeouts.py PORT SERVER_PID [CONNS] [SECONDS]
"""
import os
import resource
import socket
import sys
import time


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    port, pid = int(sys.argv[1]), int(sys.argv[2])
    conns = int(sys.argv[3]) if len(sys.argv) > 3 else 100000
    window = float(sys.argv[4]) if len(sys.argv) > 4 else 5.0
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (conns + 1024, conns + 1024))
    except (ValueError, OSError):
        # Without the privilege to lift the hard limit, hold what it allows (the server
        # has the same limit) and say so in the output.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if conns > hard - 1024:
            print(f"note: open-file hard limit {hard}: holding {hard - 1024} connections, "
                  f"not {conns}", file=sys.stderr)
            conns = hard - 1024
    rss_before = rss_kb(pid)
    socks = []
    deadline = time.time() + 120
    for i in range(conns):
        if time.time() > deadline:
            sys.exit(f"idle_timeouts: only {i} connections in 120 s")
        s = socket.socket()
        s.bind((f"127.0.0.{2 + i % 8}", 0))
        s.connect(("127.0.0.1", port))
        socks.append(s)
    time.sleep(1.0)  # let the server accept everything
    c0 = cpu_seconds(pid)
    time.sleep(window)
    used = cpu_seconds(pid) - c0
    rss = rss_kb(pid)
    print(f"conns={conns} window_s={window} server_cpu_s={used:.3f} "
          f"cpu_pct={100 * used / window:.2f} rss_before_kb={rss_before} rss_kb={rss} "
          f"rss_per_conn_b={(rss - rss_before) * 1024 // conns}")
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
