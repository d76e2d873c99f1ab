#!/usr/bin/env bash
# bench/run.sh: the `make bench` driver. Runs moonwire and its peers side by
# side on this machine and prints markdown tables (also written to
# bench/results/latest.md).
#
#   bench/run.sh [tcp] [idle] [http] [ws] [wsidle] [fanout] [churn] [pairs] ...
#                                              default: all of ALL_SCENARIOS
#
# Every server is pinned to one CPU (BENCH_SERVER_CPU, default 0) and the
# load generator to another (BENCH_CLIENT_CPU, default 1). The exception is
# fanout: moonwire runs 2 loops there, so the server gets BENCH_FANOUT_CPUS
# (default 0,1) and the load generator shares them. Throughput is also
# given per server CPU-second (utime + stime from /proc over the measured
# window), because the load generator saturates first against fast servers.
# Each figure is the median of BENCH_RUNS runs (default 3) of BENCH_SECONDS
# (default 5) measured after BENCH_WARMUP (default 1) seconds of warm-up.
# Only loopback addresses are used; only the processes started here are
# stopped. See docs/BENCHMARKS.md.
set -euo pipefail

cd "$(dirname "$0")/.."

RUNS=${BENCH_RUNS:-3}
SECS=${BENCH_SECONDS:-5}
WARM=${BENCH_WARMUP:-1}
SERVER_CPU=${BENCH_SERVER_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
NEXT_PORT=${BENCH_PORT_BASE:-19100}
PORT_LIMIT=$((NEXT_PORT + 800))
IDLE_CONNS=${BENCH_IDLE_CONNS:-10000}
FANOUT_CPUS=${BENCH_FANOUT_CPUS:-0,1}
FANOUT_SUBS=${BENCH_FANOUT_SUBS:-10000}
FANOUT_WINDOW=${BENCH_FANOUT_WINDOW:-32}
FANOUT_SECS=30 # Upper bound of one fan-out run; a slower server reports done=0.
PAIR_ROUNDS=${BENCH_PAIR_ROUNDS:-6}
CHURN_CYCLES=${BENCH_CHURN_CYCLES:-1000000}
# A run during which other work used more than this % of a CPU is repeated
# (at most RUNS extra times per row); the machine may be shared.
MAX_OTHER=${BENCH_MAX_OTHER:-25}
HOST=127.0.0.1
LOADGEN=bench/bin/loadgen
MOONWIRE=bin/moonwire
RESULTS=bench/results/latest.md
CLK_TCK=$(getconf CLK_TCK)

ALL_SCENARIOS=(tcp idle http ws wsidle fanout reload timeouts churn pairs)
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -eq 0 ] && SCENARIOS=("${ALL_SCENARIOS[@]}")
for s in "${SCENARIOS[@]}"; do
    case " ${ALL_SCENARIOS[*]} " in
    *" $s "*) ;;
    *)
        echo "run.sh: unknown scenario '$s' (choose from: ${ALL_SCENARIOS[*]})" >&2
        exit 2
        ;;
    esac
done

TMP=$(mktemp -d /tmp/moonwire-bench.XXXXXX)
STARTED=() # Every PID this script started, so cleanup kills only those.

cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '%s\n' "$*" | tee -a "$TMP/report.md"; }
note() { printf '%s\n' "$*" >&2; }

# ---- build -----------------------------------------------------------------

make -s -f bench/bench.mk bench-tools
MOONWIRE_NOTE=""
if [ -f Makefile ] && [ -d runtime ]; then
    if ! make -s all >"$TMP/make.log" 2>&1; then
        MOONWIRE_NOTE="moonwire build failed (see make output); moonwire rows skipped"
        tail -20 "$TMP/make.log" >&2
    fi
fi
if [ -z "$MOONWIRE_NOTE" ] && [ ! -x "$MOONWIRE" ]; then
    MOONWIRE_NOTE="$MOONWIRE not built; moonwire rows skipped"
fi

# Servers and clients in the 16,000-connection runs need the fds.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---- processes -------------------------------------------------------------

port_busy() { [ -n "$(ss -Htln "sport = :$1" 2>/dev/null)" ]; }

# Picks a fresh free port for every server start: fresh ports also keep the
# TIME_WAIT sockets of one run from colliding with the next.
pick_port() {
    while port_busy "$NEXT_PORT"; do
        NEXT_PORT=$((NEXT_PORT + 1))
    done
    if [ "$NEXT_PORT" -ge "$PORT_LIMIT" ]; then
        note "run.sh: no free port left below $PORT_LIMIT"
        exit 1
    fi
    PORT=$NEXT_PORT
    NEXT_PORT=$((NEXT_PORT + 1))
}

# start_server NAME CMD... (CMD may use $PORT): sets SERVER_PID (the process
# to measure) and SERVER_MAIN (the process to stop). Returns 1 if the server
# does not listen within 10 s. SERVER_CPUSET, when set, replaces SERVER_CPU.
SERVER_CPUSET=""
start_server() {
    local name=$1
    shift
    taskset -c "${SERVER_CPUSET:-$SERVER_CPU}" "$@" >"$TMP/$name.$PORT.log" 2>&1 &
    SERVER_MAIN=$!
    SERVER_PID=$SERVER_MAIN
    STARTED+=("$SERVER_MAIN")
    local i
    for ((i = 0; i < 200; i++)); do
        if ! kill -0 "$SERVER_MAIN" 2>/dev/null; then
            note "run.sh: $name exited at start:"
            tail -5 "$TMP/$name.$PORT.log" >&2
            return 1
        fi
        if port_busy "$PORT"; then
            if [ "$name" = nginx ]; then
                # Measure the single worker, not the master that only waits.
                SERVER_PID=$(pgrep -P "$SERVER_MAIN" | head -1)
                [ -n "$SERVER_PID" ] || { sleep 0.05 && continue; }
            fi
            sleep 0.2 # Let it finish starting (JIT warm-up is the warm-up's job).
            return 0
        fi
        sleep 0.05
    done
    note "run.sh: $name did not listen on $PORT within 10 s"
    stop_server
    return 1
}

stop_server() {
    kill "$SERVER_MAIN" 2>/dev/null || true
    local i
    for ((i = 0; i < 50; i++)); do
        kill -0 "$SERVER_MAIN" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$SERVER_MAIN" 2>/dev/null || true
    wait "$SERVER_MAIN" 2>/dev/null || true
}

# start_fresh NAME CMD...: start_server on a freshly picked PORT; @PORT@ in CMD becomes
# the port, and nginx gets its prefix directory written first.
start_fresh() {
    local name=$1 a cmd=()
    shift
    pick_port
    if [ "$name" = nginx ]; then nginx_conf "$PORT"; fi
    for a in "$@"; do cmd+=("${a//@PORT@/$PORT}"); done
    start_server "$name" "${cmd[@]}"
}

alive() { kill -0 "$SERVER_PID" 2>/dev/null; }

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

cpu_ticks() {
    local stat rest
    stat=$(cat "/proc/$1/stat")
    rest=${stat##*) }
    # shellcheck disable=SC2086 # Word splitting into fields is the point.
    set -- $rest
    echo $((${12} + ${13})) # utime + stime: fields 14 and 15 of the whole line.
}

# Busy ticks of the whole machine: user nice system irq softirq steal.
busy_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }

# Sums the request bytes the server side of every established connection has
# received, and counts those connections (one ss snapshot, on the client CPU).
ss_snapshot() {
    taskset -c "$CLIENT_CPU" ss -Htin state established "( sport = :$PORT )" |
        awk '/^[^ \t]/ { n++ }
             { for (i = 1; i <= NF; i++) if ($i ~ /^bytes_received:/) { split($i, a, ":"); b += a[2] } }
             END { printf "%d %d\n", n, b }'
}

# ---- statistics ------------------------------------------------------------

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR ? v[int((NR + 1) / 2)] : "-") }'; }
kv() { printf '%s\n' "$2" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k { print $2 }'; }
pct() { awk -v c="${1:-0}" -v s="$2" 'BEGIN { printf "%.0f", (s > 0 ? 100 * c / s : 0) }'; }
human_kb() { awk -v k="$1" 'BEGIN { if (k >= 10240) printf "%.1f MB", k / 1024; else printf "%d KB", k }'; }
fmt_rate() { awk -v r="$1" 'BEGIN { if (r == "-") print "-"; else if (r >= 1000) printf "%.1fk", r / 1000; else printf "%d", r }'; }

# ---- the message echo scenarios (tcp, ws) ----------------------------------

# echo_rows MODE NAME CMD...: starts the server once, runs every connection
# count RUNS times against it, and appends one table row per count.
echo_rows() {
    local mode=$1 name=$2
    shift 2
    if ! start_fresh "$name" "$@"; then
        say "| $name | - | server failed to start | | | | | | | |"
        return
    fi
    local rss0 conns run out
    rss0=$(rss_kb "$SERVER_PID")
    for conns in 50 1000; do
        local rates=() percpu=() cpus=() clients=() others=() p50s=() p99s=() errs=0 retries=0
        for ((run = 1; run <= RUNS; run++)); do
            out=$(taskset -c "$CLIENT_CPU" "$LOADGEN" --mode "$mode" --host "$HOST" --port "$PORT" \
                --conns "$conns" --seconds "$SECS" --warmup "$WARM" --size 64 \
                --server-pid "$SERVER_PID" 2>"$TMP/loadgen.err") || true
            if [ -n "$(kv rate "$out")" ] && [ "$retries" -lt "$RUNS" ] &&
                [ "$(pct "$(kv other_cpu_s "$out")" "$(kv secs "$out")")" -gt "$MAX_OTHER" ]; then
                retries=$((retries + 1))
                run=$((run - 1))
                sleep 1
                continue
            fi
            if [ -z "$(kv rate "$out")" ]; then
                note "run.sh: $name $mode $conns conns: loadgen failed: $(head -3 "$TMP/loadgen.err")"
                errs=$((errs + 1))
                alive || break
                continue
            fi
            rates+=("$(kv rate "$out")")
            percpu+=("$(kv per_cpu_s "$out")")
            cpus+=("$(pct "$(kv server_cpu_s "$out")" "$(kv secs "$out")")")
            clients+=("$(pct "$(kv client_cpu_s "$out")" "$(kv secs "$out")")")
            others+=("$(pct "$(kv other_cpu_s "$out")" "$(kv secs "$out")")")
            p50s+=("$(kv p50_us "$out")")
            p99s+=("$(kv p99_us "$out")")
            errs=$((errs + $(kv errors "$out")))
            sleep 0.3
        done
        if [ ${#rates[@]} -eq 0 ]; then
            say "| $name | $conns | failed | | | | | | | $errs |"
            continue
        fi
        say "| $name | $conns | $(fmt_rate "$(median "${rates[@]}")") | $(median "${cpus[@]}")% |" \
            "$(fmt_rate "$(median "${percpu[@]}")") | $(median "${p50s[@]}") | $(median "${p99s[@]}") |" \
            "$(median "${clients[@]}")% | $(median "${others[@]}")% | $errs |"
    done
    RSS_ROWS+=("| $name | $(human_kb "$rss0") | $(human_kb "$(rss_kb "$SERVER_PID")") |")
    stop_server
}

echo_header() {
    say "| server | conns | msg/s | server CPU | msg per server CPU-s | p50 µs | p99 µs | loadgen CPU | other CPU | errors |"
    say "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
}

rss_table() {
    say ""
    say "Server RSS at start and after all the runs above:"
    say ""
    say "| server | RSS at start | RSS after load |"
    say "|---|---:|---:|"
    local r
    for r in "${RSS_ROWS[@]}"; do say "$r"; done
}

moonwire_usable() {
    local handler=$1
    if [ -n "$MOONWIRE_NOTE" ]; then
        NOTES+=("moonwire: $MOONWIRE_NOTE.")
        return 1
    fi
    if [ ! -f "$handler" ]; then
        NOTES+=("moonwire: skipped, $handler does not exist yet.")
        return 1
    fi
    return 0
}

print_notes() {
    local n
    for n in "${NOTES[@]}"; do say ""; say "Note: $n"; done
}

scenario_tcp() {
    say ""
    say "### TCP echo, 64 B messages, one outstanding per connection (loadgen --mode tcp)"
    say ""
    NOTES=()
    RSS_ROWS=()
    echo_header
    if moonwire_usable handlers/echo.lua; then
        echo_rows tcp moonwire "$MOONWIRE" run handlers/echo.lua --listen "$HOST:@PORT@" \
            --loops 1 --log-level warn
    fi
    echo_rows tcp echo_c bench/bin/echo_c "$HOST" @PORT@
    if luajit -e 'require "luv"' 2>/dev/null; then
        echo_rows tcp luv luajit bench/luv_echo.lua "$HOST" @PORT@
    else
        NOTES+=("luv: skipped, lua-luv is not installed (apt-get install lua-luv).")
    fi
    rss_table
    print_notes
}

scenario_ws() {
    say ""
    say "### WebSocket echo, 64 B text frames (loadgen --mode ws)"
    say ""
    NOTES=()
    RSS_ROWS=()
    echo_header
    if moonwire_usable handlers/ws_echo.lua; then
        echo_rows ws moonwire "$MOONWIRE" run handlers/ws_echo.lua --listen "$HOST:@PORT@" \
            --loops 1 --log-level warn
    fi
    echo_rows ws ws_c bench/bin/ws_c "$HOST" @PORT@
    if command -v node >/dev/null; then
        echo_rows ws node_ws node bench/node_ws_echo.js "$HOST" @PORT@
    else
        NOTES+=("node ws: skipped, node is not installed.")
    fi
    rss_table
    print_notes
}

# ---- idle ------------------------------------------------------------------

# idle_row NAME MODE CMD...: per run, a fresh server; RSS before and while
# IDLE_CONNS connections are held; the row gives the medians.
idle_row() {
    local name=$1 mode=$2
    shift 2
    local before=() held=() per=() run ok=0
    for ((run = 1; run <= RUNS; run++)); do
        start_fresh "$name" "$@" || break
        sleep 0.3
        local rss0 rss1 lg i
        rss0=$(rss_kb "$SERVER_PID")
        taskset -c "$CLIENT_CPU" "$LOADGEN" --mode "$mode" --host "$HOST" --port "$PORT" \
            --conns "$IDLE_CONNS" --seconds 4 >"$TMP/idle.out" 2>"$TMP/idle.err" &
        lg=$!
        STARTED+=("$lg")
        for ((i = 0; i < 600; i++)); do
            grep -q '^open=' "$TMP/idle.out" && break
            kill -0 "$lg" 2>/dev/null || break
            sleep 0.05
        done
        if grep -q '^open=' "$TMP/idle.out"; then
            sleep 1 # Let the server finish accepting and settle.
            rss1=$(rss_kb "$SERVER_PID")
            before+=("$rss0")
            held+=("$rss1")
            per+=("$(((rss1 - rss0) * 1024 / IDLE_CONNS))")
            ok=1
        else
            note "run.sh: $name idle: $(head -3 "$TMP/idle.err")"
        fi
        wait "$lg" 2>/dev/null || true
        stop_server
    done
    if [ "$ok" = 0 ]; then
        say "| $name | $mode | failed | | | |"
        return
    fi
    say "| $name | $mode | $IDLE_CONNS | $(human_kb "$(median "${before[@]}")") |" \
        "$(human_kb "$(median "${held[@]}")") | $(median "${per[@]}") B |"
}

scenario_idle() {
    say ""
    say "### RSS per idle connection ($IDLE_CONNS connections held; loadgen --mode idle / http-idle)"
    say ""
    NOTES=()
    say "| server | connections | held | RSS before | RSS with all held | RSS per idle conn |"
    say "|---|---|---:|---:|---:|---:|"
    if moonwire_usable handlers/echo.lua; then
        idle_row moonwire idle "$MOONWIRE" run handlers/echo.lua --listen "$HOST:@PORT@" \
            --loops 1 --log-level warn
    fi
    idle_row echo_c idle bench/bin/echo_c "$HOST" @PORT@
    if luajit -e 'require "luv"' 2>/dev/null; then
        idle_row luv idle luajit bench/luv_echo.lua "$HOST" @PORT@
    fi
    if nginx_usable; then
        idle_row nginx http-idle nginx -p "$TMP/nginx.@PORT@" -c nginx.conf -e stderr
    fi
    NOTES+=("\"idle\" connections are only connected; \"http-idle\" ones have completed one keep-alive GET first. RSS after the tcp load runs is in the TCP table's RSS section.")
    print_notes
}

scenario_wsidle() {
    say ""
    say "### RSS per idle WebSocket connection ($IDLE_CONNS connections held after the handshake; loadgen --mode ws-idle)"
    say ""
    NOTES=()
    say "| server | connections | held | RSS before | RSS with all held | RSS per idle conn |"
    say "|---|---|---:|---:|---:|---:|"
    if moonwire_usable handlers/ws_echo.lua; then
        idle_row moonwire ws-idle "$MOONWIRE" run handlers/ws_echo.lua --listen "$HOST:@PORT@" \
            --loops 1 --log-level warn
    fi
    idle_row ws_c ws-idle bench/bin/ws_c "$HOST" @PORT@
    if command -v node >/dev/null; then
        idle_row node_ws ws-idle node bench/node_ws_echo.js "$HOST" @PORT@
    else
        NOTES+=("node ws: skipped, node is not installed.")
    fi
    NOTES+=("\"ws-idle\" connections have completed the WebSocket handshake (101 and Sec-WebSocket-Accept checked) and then send nothing. Target for moonwire (issue 5): at most 1.5 KiB each.")
    print_notes
}

# ---- fan-out ---------------------------------------------------------------

# Waits (up to 10 s) until the server has no connection on PORT left and
# has used no CPU for 0.2 s: the teardown of one fan-out run's 10,000
# connections must not fall into the next run's window.
settle() {
    local i t0 t1
    for ((i = 0; i < 50; i++)); do
        t0=$(cpu_ticks "$SERVER_PID" 2>/dev/null || echo 0)
        sleep 0.2
        t1=$(cpu_ticks "$SERVER_PID" 2>/dev/null || echo 0)
        if [ "$t0" = "$t1" ] &&
            [ -z "$(ss -Htn state established "( sport = :$PORT )" 2>/dev/null | head -1)" ]; then
            return 0
        fi
    done
    note "run.sh: server on $PORT still busy after 10 s"
}

# fanout_rows NAME LOOPS MESSAGES CMD... (CMD may use @PORT@ and @ADMIN@):
# one server for all runs; each run connects FANOUT_SUBS subscribers and a
# publisher anew (loadgen --mode ws-fanout) and publishes MESSAGES.
fanout_rows() {
    local name=$1 loops=$2 msgs=$3
    shift 3
    local port admin="" cmd=() a
    pick_port
    port=$PORT
    case " $* " in
    *@ADMIN@*)
        pick_port
        admin=$PORT
        PORT=$port
        ;;
    esac
    for a in "$@"; do
        a=${a//@PORT@/$PORT}
        cmd+=("${a//@ADMIN@/$admin}")
    done
    SERVER_CPUSET=$FANOUT_CPUS
    if ! start_server "$name" "${cmd[@]}"; then
        SERVER_CPUSET=""
        say "| $name | $loops | - | server failed to start | | | | | | | | | |"
        return
    fi
    SERVER_CPUSET=""
    local rates=() percpu=() cpus=() clients=() others=() p50s=() p99s=() run out
    local errs=0 lost=0 notdone=0 ok=0
    for ((run = 1; run <= RUNS; run++)); do
        settle
        out=$(taskset -c "$FANOUT_CPUS" "$LOADGEN" --mode ws-fanout --host "$HOST" --port "$PORT" \
            --conns "$FANOUT_SUBS" --messages "$msgs" --window "$FANOUT_WINDOW" --size 64 \
            --seconds "$FANOUT_SECS" --warmup "$WARM" --server-pid "$SERVER_PID" \
            2>"$TMP/loadgen.err") || true
        if [ -z "$(kv rate "$out")" ]; then
            note "run.sh: $name fanout: loadgen failed: $(head -3 "$TMP/loadgen.err")"
            errs=$((errs + 1))
            alive || break
            continue
        fi
        ok=$((ok + 1))
        rates+=("$(kv rate "$out")")
        percpu+=("$(kv per_cpu_s "$out")")
        cpus+=("$(pct "$(kv server_cpu_s "$out")" "$(kv secs "$out")")")
        clients+=("$(pct "$(kv client_cpu_s "$out")" "$(kv secs "$out")")")
        others+=("$(pct "$(kv other_cpu_s "$out")" "$(kv secs "$out")")")
        p50s+=("$(kv p50_us "$out")")
        p99s+=("$(kv p99_us "$out")")
        errs=$((errs + $(kv errors "$out")))
        lost=$((lost + $(kv lost "$out")))
        [ "$(kv "done" "$out")" = 1 ] || notdone=$((notdone + 1))
    done
    if [ -n "$admin" ] && [ "$ok" -gt 0 ] && command -v curl >/dev/null; then
        # Connections accepted per loop over all runs (publisher included);
        # each loop's "rates" object has an "accepted" of its own.
        local split
        split=$(curl -s "http://$HOST:$admin/stats" | sed 's/"rates":{[^}]*}//g' |
            grep -o '"accepted":[0-9]*' | cut -d: -f2 | paste -sd/ -)
        NOTES+=("$name --loops $loops: connections accepted per loop over $ok runs of $((FANOUT_SUBS + 1)): ${split:-unknown}.")
    fi
    stop_server
    if [ ${#rates[@]} -eq 0 ]; then
        say "| $name | $loops | $FANOUT_SUBS | $msgs | failed | | | | | | | | $errs |"
        return
    fi
    [ "$notdone" -eq 0 ] || NOTES+=("$name: $notdone run(s) hit the ${FANOUT_SECS} s bound before every message was delivered; the rate is over the runs' full time.")
    say "| $name | $loops | $FANOUT_SUBS | $msgs | $(fmt_rate "$(median "${rates[@]}")") |" \
        "$(median "${cpus[@]}")% | $(fmt_rate "$(median "${percpu[@]}")") |" \
        "$(awk -v u="$(median "${p50s[@]}")" 'BEGIN { printf "%.0f", u / 1000 }') |" \
        "$(awk -v u="$(median "${p99s[@]}")" 'BEGIN { printf "%.0f", u / 1000 }') |" \
        "$(median "${clients[@]}")% | $(median "${others[@]}")% | $lost | $errs |"
}

scenario_fanout() {
    say ""
    say "### WebSocket broadcast fan-out, 64 B text messages, 1 publisher (loadgen --mode ws-fanout)"
    say ""
    NOTES=()
    say "| server | loops | subscribers | messages | deliveries/s | server CPU | deliveries per server CPU-s | p50 ms | p99 ms | loadgen CPU | other CPU | lost | errors |"
    say "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    if moonwire_usable bench/ws_fanout.lua; then
        fanout_rows moonwire 2 500 "$MOONWIRE" run bench/ws_fanout.lua --listen "$HOST:@PORT@" \
            --loops 2 --admin "$HOST:@ADMIN@" --log-level warn
        fanout_rows moonwire 1 500 "$MOONWIRE" run bench/ws_fanout.lua --listen "$HOST:@PORT@" \
            --loops 1 --log-level warn
    fi
    if command -v node >/dev/null; then
        fanout_rows node_ws 1 100 node bench/node_ws_fanout.js "$HOST" @PORT@
    else
        NOTES+=("node ws: skipped, node is not installed.")
    fi
    NOTES+=("Server and load generator share CPUs $FANOUT_CPUS (taskset), so the load generator's and the kernel's loopback work (\"other CPU\") take from the same two cores. Every message goes to all $FANOUT_SUBS subscribers plus the publisher; deliveries/s counts the subscribers' only. At most $FANOUT_WINDOW messages are in flight: a message is published only once every connection has the one $FANOUT_WINDOW before it, so the slowest subscriber sets the pace. Latency is from publish to each delivery. \"lost\": deliveries the server skipped (slow_subscriber = \"drop\"). bench/node_ws_fanout.js broadcasts over ws.clients in one process (Node has no broadcast across processes); ws_c has no broadcast and is not listed.")
    print_notes
}

# ---- http ------------------------------------------------------------------

nginx_usable() {
    if ! command -v nginx >/dev/null || [ ! -f /usr/lib/nginx/modules/ngx_http_lua_module.so ]; then
        NOTES+=("nginx + lua: skipped, install with: apt-get install nginx libnginx-mod-http-lua")
        return 1
    fi
    return 0
}

# Writes the nginx prefix directory for the port about to be picked. nginx
# is given one worker, all the fds it needs and no log on the hot path.
nginx_conf() {
    local dir="$TMP/nginx.$1"
    mkdir -p "$dir/logs"
    cat >"$dir/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 40000;
pid $dir/nginx.pid;
error_log stderr warn;
events {
    worker_connections 20000;
}
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    server {
        listen $HOST:$1 backlog=4096;
        location / {
            default_type text/plain;
            content_by_lua_block { ngx.print("Hello, World!") }
        }
    }
}
EOF
}

# http_rows NAME CMD...: wrk -t1 at each connection count. Once every
# connection is established (ss), after the warm-up, requests are counted
# from the server side's received bytes over the measured window, so the
# slow connect phase of 16,000 connections is not averaged in.
http_rows() {
    local name=$1
    shift
    if ! start_fresh "$name" "$@"; then
        say "| $name | - | server failed to start | | | | | | |"
        return
    fi
    local req_len conns run rss0
    rss0=$(rss_kb "$SERVER_PID")
    # wrk's request: "GET / HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\n\r\n".
    req_len=$(printf 'GET / HTTP/1.1\r\nHost: %s:%s\r\n\r\n' "$HOST" "$PORT" | wc -c)
    for conns in 200 8000 16000; do
        local rates=() percpu=() cpus=() wrks=() others=() opens=() errs=0 retries=0
        for ((run = 1; run <= RUNS; run++)); do
            taskset -c "$CLIENT_CPU" wrk -t1 -c"$conns" -d600 --timeout 10s \
                "http://$HOST:$PORT/" >"$TMP/wrk.out" 2>&1 &
            local wrk=$! i snap0 snap1 t0 t1 c0 c1 w0 w1 m0 m1 open=0
            STARTED+=("$wrk")
            for ((i = 0; i < 300; i++)); do # Up to 30 s to connect everything.
                open=$(ss_snapshot | cut -d' ' -f1)
                [ "$open" -ge "$conns" ] && break
                kill -0 "$wrk" 2>/dev/null || break
                sleep 0.1
            done
            sleep "$WARM"
            c0=$(cpu_ticks "$SERVER_PID" 2>/dev/null || echo 0)
            w0=$(cpu_ticks "$wrk" 2>/dev/null || echo 0)
            m0=$(busy_ticks)
            t0=$(date +%s.%N)
            snap0=$(ss_snapshot)
            sleep "$SECS"
            snap1=$(ss_snapshot)
            t1=$(date +%s.%N)
            c1=$(cpu_ticks "$SERVER_PID" 2>/dev/null || echo "$c0")
            w1=$(cpu_ticks "$wrk" 2>/dev/null || echo "$w0")
            m1=$(busy_ticks)
            kill -INT "$wrk" 2>/dev/null || true
            wait "$wrk" 2>/dev/null || true
            if grep -qE 'Socket errors|Non-2xx' "$TMP/wrk.out"; then
                errs=$((errs + 1))
                note "run.sh: $name $conns conns: $(grep -E 'Socket errors|Non-2xx' "$TMP/wrk.out" | tr -s ' ')"
            fi
            read -r _ b0 <<<"$snap0"
            read -r o1 b1 <<<"$snap1"
            local stats
            stats=$(awk -v b="$((b1 - b0))" -v l="$req_len" -v t0="$t0" -v t1="$t1" \
                -v c="$((c1 - c0))" -v w="$((w1 - w0))" -v m="$((m1 - m0))" -v hz="$CLK_TCK" 'BEGIN {
                    r = b / l; s = t1 - t0; cpu = c / hz; o = (m - c - w) / hz; if (o < 0) o = 0;
                    printf "%.0f %.0f %.0f %.0f %.0f\n", r / s, (cpu > 0 ? r / cpu : 0),
                        100 * cpu / s, 100 * w / hz / s, 100 * o / s }')
            read -r r p u wu ou <<<"$stats"
            if [ "$ou" -gt "$MAX_OTHER" ] && [ "$retries" -lt "$RUNS" ]; then
                retries=$((retries + 1))
                run=$((run - 1))
                sleep 1
                continue
            fi
            opens+=("$o1")
            wrks+=("$wu")
            others+=("$ou")
            rates+=("$r")
            percpu+=("$p")
            cpus+=("$u")
            alive || break
            sleep 0.5
        done
        say "| $name | $conns | $(median "${opens[@]}") | $(fmt_rate "$(median "${rates[@]}")") |" \
            "$(median "${cpus[@]}")% | $(fmt_rate "$(median "${percpu[@]}")") |" \
            "$(median "${wrks[@]}")% | $(median "${others[@]}")% | $errs |"
        alive || break
    done
    RSS_ROWS+=("| $name | $(human_kb "$rss0") | $(human_kb "$(rss_kb "$SERVER_PID")") |")
    stop_server
}

scenario_http() {
    say ""
    say "### HTTP hello (wrk -t1, keep-alive; steady state once all connections are open)"
    say ""
    NOTES=()
    if ! command -v wrk >/dev/null; then
        say "Skipped: wrk is not installed (apt-get install wrk)."
        return
    fi
    RSS_ROWS=()
    say "| server | conns | open | req/s | server CPU | req per server CPU-s | wrk CPU | other CPU | runs with wrk errors |"
    say "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    local moonwire_ok=0
    if moonwire_usable handlers/hello_http.lua; then
        moonwire_ok=1
        http_rows moonwire "$MOONWIRE" run handlers/hello_http.lua --listen "$HOST:@PORT@" \
            --loops 1 --log-level warn
    fi
    http_rows http_c bench/bin/http_c "$HOST" @PORT@
    if nginx_usable; then
        http_rows nginx nginx -p "$TMP/nginx.@PORT@" -c nginx.conf -e stderr
    fi
    rss_table
    say ""
    say "Memory per idle keep-alive connection: $IDLE_CONNS connections, each after one GET"
    say "(loadgen --mode http-idle), a fresh server per run:"
    say ""
    say "| server | connections | held | RSS before | RSS with all held | RSS per idle conn |"
    say "|---|---|---:|---:|---:|---:|"
    if [ "$moonwire_ok" = 1 ]; then
        idle_row moonwire http-idle "$MOONWIRE" run handlers/hello_http.lua --listen "$HOST:@PORT@" \
            --loops 1 --log-level warn
    fi
    idle_row http_c http-idle bench/bin/http_c "$HOST" @PORT@
    if nginx_usable; then
        idle_row nginx http-idle nginx -p "$TMP/nginx.@PORT@" -c nginx.conf -e stderr
    fi
    print_notes
}

# ---- pairs: two servers measured at the same time ----------------------------

# The sequential tables above move by +-15% between runs on a shared machine,
# which hides differences of a few percent. Here moonwire and one peer run at
# the same time, both pinned to the server CPU, each driven by its own load
# generator on the client CPU, for PAIR_ROUNDS rounds of SECS seconds. Both
# see the same machine conditions in every round, so the ratio of their
# figures per server CPU-second holds still even when the absolute rates do
# not (each server gets about half a core, so absolute rates are lower than
# in the tables above and are not comparable with them).

# pair_start NAME CMD...: starts a server for a pair; sets PAIR_PID (measured)
# and PAIR_MAIN (stopped), PAIR_PORT.
pair_start() {
    start_fresh "$@" || return 1
    PAIR_PID=$SERVER_PID PAIR_MAIN=$SERVER_MAIN PAIR_PORT=$PORT
}

# pair_http_round PORT PID CONNS OUT: one wrk window against one server,
# started in the background; the caller waits. Writes "requests ticks" to OUT.
pair_http_round() {
    local port=$1 pid=$2 conns=$3 out=$4 c0 c1
    (
        c0=$(cpu_ticks "$pid")
        taskset -c "$CLIENT_CPU" wrk -t1 -c"$conns" -d"${SECS}s" --timeout 10s \
            "http://$HOST:$port/" >"$out.wrk" 2>&1
        c1=$(cpu_ticks "$pid")
        echo "$(awk '/requests in/ { print $1 }' "$out.wrk") $((c1 - c0))" >"$out"
    ) &
}

# pair_ws_round PORT PID CONNS OUT: the same with loadgen --mode ws, which
# measures the server's CPU over its own window.
pair_ws_round() {
    local port=$1 pid=$2 conns=$3 out=$4
    taskset -c "$CLIENT_CPU" "$LOADGEN" --mode ws --host "$HOST" --port "$port" \
        --conns "$conns" --seconds "$SECS" --warmup "$WARM" --size 64 \
        --server-pid "$pid" >"$out" 2>"$out.err" &
}

# pair_row KIND CONNS PEER: rounds against the two running servers (moonwire:
# MW_PID/MW_PORT, peer: PEER_PID/PEER_PORT); one table row.
pair_row() {
    local kind=$1 conns=$2 peer=$3 r mws=() peers=() ratios=() a b
    for ((r = 0; r <= PAIR_ROUNDS; r++)); do # round 0 warms both up and is not counted
        # The load generator started second gets a slightly better share of the client CPU
        # (about 1% in A/A runs here), so the two swap places every round.
        local j1 j2
        if ((r % 2 == 0)); then
            "pair_${kind}_round" "$MW_PORT" "$MW_PID" "$conns" "$TMP/pair.mw"
            j1=$!
            "pair_${kind}_round" "$PEER_PORT" "$PEER_PID" "$conns" "$TMP/pair.peer"
            j2=$!
        else
            "pair_${kind}_round" "$PEER_PORT" "$PEER_PID" "$conns" "$TMP/pair.peer"
            j2=$!
            "pair_${kind}_round" "$MW_PORT" "$MW_PID" "$conns" "$TMP/pair.mw"
            j1=$!
        fi
        wait "$j1" "$j2" 2>/dev/null || true
        [ "$r" -eq 0 ] && continue
        if [ "$kind" = http ]; then
            a=$(awk -v hz="$CLK_TCK" '{ if ($2 > 0) printf "%.0f", $1 / ($2 / hz) }' "$TMP/pair.mw")
            b=$(awk -v hz="$CLK_TCK" '{ if ($2 > 0) printf "%.0f", $1 / ($2 / hz) }' "$TMP/pair.peer")
        else
            a=$(kv per_cpu_s "$(cat "$TMP/pair.mw")")
            b=$(kv per_cpu_s "$(cat "$TMP/pair.peer")")
        fi
        if [ -z "$a" ] || [ -z "$b" ] || [ "$a" = 0 ] || [ "$b" = 0 ]; then
            note "run.sh: pair $kind moonwire/$peer round $r failed"
            continue
        fi
        mws+=("$a")
        peers+=("$b")
        ratios+=("$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", a / b }')")
    done
    if [ ${#ratios[@]} -eq 0 ]; then
        say "| $kind | moonwire / $peer | $conns | failed | | | |"
        return
    fi
    local lo hi
    lo=$(printf '%s\n' "${ratios[@]}" | sort -g | head -1)
    hi=$(printf '%s\n' "${ratios[@]}" | sort -g | tail -1)
    say "| $kind | moonwire / $peer | $conns | $(fmt_rate "$(median "${mws[@]}")") |" \
        "$(fmt_rate "$(median "${peers[@]}")") | **$(median "${ratios[@]}")x** | $lo–$hi (${#ratios[@]}) |"
}

# pair_servers KIND PEER CONNS_LIST PEER_CMD...: moonwire (handler for KIND)
# and the peer both running, then one row per connection count.
pair_servers() {
    local kind=$1 peer=$2 counts=$3
    shift 3
    local handler=handlers/hello_http.lua
    [ "$kind" = ws ] && handler=handlers/ws_echo.lua
    moonwire_usable "$handler" || return
    pair_start moonwire "$MOONWIRE" run "$handler" --listen "$HOST:@PORT@" --loops 1 --log-level warn ||
        return
    MW_PID=$PAIR_PID MW_MAIN=$PAIR_MAIN MW_PORT=$PAIR_PORT
    if ! pair_start "$peer" "$@"; then
        SERVER_MAIN=$MW_MAIN stop_server
        return
    fi
    PEER_PID=$PAIR_PID PEER_MAIN=$PAIR_MAIN PEER_PORT=$PAIR_PORT
    local conns
    for conns in $counts; do
        pair_row "$kind" "$conns" "$peer"
    done
    SERVER_MAIN=$PEER_MAIN stop_server
    SERVER_MAIN=$MW_MAIN stop_server
}

scenario_pairs() {
    say ""
    say "### Pairs: moonwire and a peer measured at the same time ($PAIR_ROUNDS rounds of ${SECS} s)"
    say ""
    NOTES=()
    say "| load | pair | conns | moonwire per server CPU-s | peer per server CPU-s | ratio (median) | ratio range (rounds) |"
    say "|---|---|---:|---:|---:|---:|---:|"
    if command -v wrk >/dev/null; then
        if nginx_usable; then
            pair_servers http nginx "200 8000" nginx -p "$TMP/nginx.@PORT@" -c nginx.conf -e stderr
        fi
        pair_servers http http_c "200" bench/bin/http_c "$HOST" @PORT@
    else
        NOTES+=("http pairs: skipped, wrk is not installed.")
    fi
    if command -v node >/dev/null; then
        pair_servers ws node_ws "50 1000" node bench/node_ws_echo.js "$HOST" @PORT@
    fi
    pair_servers ws ws_c "50 1000" bench/bin/ws_c "$HOST" @PORT@
    NOTES+=("Both servers of a pair share the server CPU and each has its own load generator on the client CPU, so each gets about half a core: compare the ratios, not the absolute rates, with the tables above.")
    print_notes
}

scenario_timeouts() {
    say ""
    say "### Idle connections with idle timeouts armed (bench/idle_timeouts.py)"
    say ""
    NOTES=()
    if ! moonwire_usable handlers/echo.lua; then
        print_notes
        return
    fi
    say "moonwire with --idle-timeout 600000 (every connection has a timeout armed); up to"
    say "100,000 connections from 127.0.0.2-9, or what the open-file limit allows; server CPU"
    say "time over 5 quiet seconds."
    say ""
    pick_port
    local port=$PORT
    "$MOONWIRE" run handlers/echo.lua --listen "$HOST:$port" --idle-timeout 600000 \
        --log-level warn 2>>"$TMP/timeouts.log" &
    local pid=$!
    STARTED+=("$pid")
    sleep 0.5
    say '```'
    python3 bench/idle_timeouts.py "$port" "$pid" 100000 5 2>&1 | tee -a "$TMP/report.md" >&2
    say '```'
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# churn_rows PROTO HANDLER: one moonwire loop, bench/churn pinned to the client CPU; a row
# per checkpoint.
churn_rows() {
    local proto=$1 handler=$2 admin line
    pick_port
    admin=$PORT
    if ! start_fresh moonwire "$MOONWIRE" run "$handler" --listen "$HOST:@PORT@" --loops 1 \
        --admin "$HOST:$admin" --log-level warn; then
        NOTES+=("moonwire $proto: did not start.")
        return
    fi
    taskset -c "$CLIENT_CPU" bench/bin/churn --port "$PORT" --proto "$proto" \
        --cycles "$CHURN_CYCLES" --checkpoints 1000,10000,100000 --server-pid "$SERVER_PID" \
        --admin "$HOST:$admin" --seconds 900 >"$TMP/churn.out" 2>"$TMP/churn.err" ||
        NOTES+=("$proto: churn reported errors: $(head -3 "$TMP/churn.err" | tr '\n' ' ')")
    while read -r line; do
        say "| $proto | $(kv cycles "$line") | $(kv rate "$line") | $(human_kb "$(kv rss_kb "$line")") |" \
            "$(kv lua_kb "$line") KB | $(kv malloc_kb "$line") KB | $(kv open "$line") | $(kv errors "$line") |"
    done < <(grep '^cycles=' "$TMP/churn.out")
    stop_server
}

scenario_churn() {
    say ""
    say "### Connection churn: memory after $CHURN_CYCLES connect/close cycles (bench/churn)"
    say ""
    NOTES=()
    if ! moonwire_usable handlers/echo.lua; then
        print_notes
        return
    fi
    say "32 connections at a time, each cycle one exchange (tcp: a line echoed by handlers/echo.lua;"
    say "http: a GET to handlers/hello_http.lua; ws: handshake and one echoed frame with"
    say "handlers/ws_echo.lua) and one of five endings in turn: close, reset, half-close, a message"
    say "cut short then reset, a bare TCP probe. At each checkpoint the server has closed every"
    say "connection and run a full collection (POST /gc) before it is measured."
    say ""
    say "| protocol | cycles | cycles/s | RSS | Lua heap after GC | C heap (malloc) | open | errors |"
    say "|---|---:|---:|---:|---:|---:|---:|---:|"
    churn_rows tcp handlers/echo.lua
    churn_rows http handlers/hello_http.lua
    churn_rows ws handlers/ws_echo.lua
    NOTES+=("RSS grows until the loop's garbage-collector headroom (live heap + 4 MB, docs/architecture.md) has been filled once; the Lua and C heaps show what is actually kept.")
    print_notes
}

scenario_reload() {
    say ""
    say "### Hot reload (bench/reload.lua)"
    say ""
    NOTES=()
    if ! moonwire_usable handlers/echo.lua; then
        print_notes
        return
    fi
    say "Latency: a 4-loop server, one probe connection on each loop; time from the rename of"
    say "the handler to every probe answering with the new generation."
    say ""
    say '```'
    RELOADS=100 luajit bench/reload.lua latency 2>&1 | tee -a "$TMP/report.md" >&2
    say '```'
    say ""
    say "Under load: loadgen on 1,000 echo connections (64 B, every echo checked), once without"
    say "reloads (10 s) and once while the handler is reloaded 100 times by SIGHUP (12 s)."
    say ""
    say '```'
    luajit bench/reload.lua load 2>&1 | tee -a "$TMP/report.md" >&2
    say '```'
}

# ---- main ------------------------------------------------------------------

: >"$TMP/report.md"
say "## moonwire benchmarks, $(date -u '+%Y-%m-%d %H:%M UTC')"
say ""
say "- machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)," \
    "$(awk '/^MemTotal/ { printf "%.0f GB", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r)"
say "- command: bench/run.sh ${SCENARIOS[*]} (RUNS=$RUNS, ${SECS} s measured after ${WARM} s warm-up)"
say "- server on CPU $SERVER_CPU, load generator on CPU $CLIENT_CPU; figures are medians of $RUNS runs"
say "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews results)"
[ -n "$MOONWIRE_NOTE" ] && say "- $MOONWIRE_NOTE"

for s in "${SCENARIOS[@]}"; do
    "scenario_$s"
done

say ""
say "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg). \"other CPU\" is machine-wide busy time"
say "(/proc/stat) that is neither the server's nor the load generator's, in % of one CPU: kernel"
say "work not charged to either, plus anything else running. A run with more than $MAX_OTHER% is"
say "repeated (up to $RUNS times per row); distrust rows where it is still high."

mkdir -p "$(dirname "$RESULTS")"
cp "$TMP/report.md" "$RESULTS"
note ""
note "run.sh: results written to $RESULTS"
