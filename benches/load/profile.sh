#!/usr/bin/env bash
# Where portcullis spends its CPU under the load benchmark's load, next to nginx:
#   1. perf stat of each proxy during one wrk run: CPU, context switches and syscalls per request;
#   2. perf record (cpu-clock samples, dwarf call graphs) of each proxy during another run, sorted
#      by perf_categories.py into buckets (kernel send, scheduler, allocator, per crate...) and
#      inclusive frames (auth, route, header rewrite, hyper client...), in µs per request.
# cpu-clock is a software event, so this works in VMs that expose no hardware counters (there,
# `perf stat -e instructions` says <not supported>).
#
# Run from the repository root:   benches/load/profile.sh
#
# Environment (all optional):
#   DURATION=10s          length of each profiled wrk run
#   CONNECTIONS=32        wrk connections
#   WRK_THREADS=1         wrk threads
#   N=1                   nginx worker_processes = portcullis worker threads
#   FREQ=999              perf samples per second
#   ACCESS_LOG=0          1 turns portcullis's access log on (its default; nginx's stays off)
#   SKIP_BUILD=0          1 uses target/release/portcullis as it is
#   PROFILE_DIR=target/load-bench/profile   perf data, the reports, summary.txt
#   KEEP_TMP=0            1 keeps the temp dir (configs, pid files, logs); kept anyway on failure
#
# Same rules as run.sh: loopback only, free ports, everything stopped by pid, bounded waits.
set -euo pipefail

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
WRK_THREADS=${WRK_THREADS:-1}
N=${N:-1}
FREQ=${FREQ:-999}
SKIP_BUILD=${SKIP_BUILD:-0}
PROFILE_DIR=${PROFILE_DIR:-target/load-bench/profile}
KEEP_TMP=${KEEP_TMP:-0}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$HERE/common.sh"

command -v perf >/dev/null 2>&1 || {
    [[ $(id -u) == 0 ]] || die "perf missing: install linux-perf"
    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y linux-perf
}

# wrk_run OUT WRK ARGS...: one wrk run of DURATION, bounded.
wrk_run() {
    local out=$1
    shift
    timeout $(($(seconds_of "$DURATION") + 60)) \
        wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" >"$out"
}

requests_of() { awk '/requests in/ {print $1}' "$1"; }

# perf_stat NAME "PIDS" WRK ARGS...: counters of the proxy while wrk runs; per-request figures.
perf_stat() {
    local name=$1 pids=$2 limit
    shift 2
    limit=$(($(seconds_of "$DURATION") + 60))
    timeout "$limit" perf stat -x, -o "$PROFILE_DIR/$name.stat" \
        -e task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter \
        -p "${pids// /,}" -- sleep "$(seconds_of "$DURATION")" &
    local stat_pid=$!
    wrk_run "$PROFILE_DIR/$name.wrk" "$@"
    wait "$stat_pid" || die "perf stat failed: $(cat "$PROFILE_DIR/$name.stat")"
    local requests
    requests=$(requests_of "$PROFILE_DIR/$name.wrk")
    awk -F, -v n="$requests" -v name="$name" '
        $3 == "task-clock"        { cpu = $1 * 1000 / n }   # msec -> µs per request
        $3 == "context-switches"  { cs = $1 / n }
        $3 == "raw_syscalls:sys_enter" { sc = $1 / n }
        END { printf "%-11s %9d requests  %6.1f µs CPU/req  %5.2f syscalls/req  %5.3f context switches/req\n",
              name, n, cpu, sc, cs }' "$PROFILE_DIR/$name.stat"
}

setup
mkdir -p "$PROFILE_DIR"
PROFILE_DIR=$(cd "$PROFILE_DIR" && pwd)
rm -f "$PROFILE_DIR"/*

start_upstream 1
make_client
start_nginx_proxy "$N"
start_portcullis "$N"
log "N=$N: nginx proxy pids $NGX_PIDS; portcullis pid $GW_PID ($GW_THREADS workers)"
timeout 70 wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d2s "http://127.0.0.1:$NGX_PORT$BENCH_PATH" >/dev/null
timeout 70 wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d2s -H "$AUTH" "http://127.0.0.1:$GW_PORT$BENCH_PATH" >/dev/null

{
    echo "# perf stat during one wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION run each, N=$N, $(date -u '+%Y-%m-%d %H:%M UTC')"
    perf_stat nginx "$NGX_PIDS" "http://127.0.0.1:$NGX_PORT$BENCH_PATH"
    perf_stat portcullis "$GW_PID" -H "$AUTH" "http://127.0.0.1:$GW_PORT$BENCH_PATH"
} | tee "$PROFILE_DIR/summary.txt"

# record NAME "PIDS" WRK ARGS...: cpu-clock samples with dwarf call graphs while wrk runs, then
# the samples sorted into buckets by perf_categories.py, scaled by CPU/request from perf stat.
record() {
    local name=$1 pids=$2 limit
    shift 2
    limit=$(($(seconds_of "$DURATION") + 60))
    log "perf record of $name (${FREQ} Hz, dwarf call graphs)"
    timeout "$limit" perf record -q -F "$FREQ" --call-graph dwarf,16384 \
        -o "$PROFILE_DIR/$name.perf.data" -p "${pids// /,}" -- sleep "$(seconds_of "$DURATION")" &
    local record_pid=$!
    wrk_run "$PROFILE_DIR/$name.record.wrk" "$@"
    wait "$record_pid" || die "perf record of $name failed"
    # --no-inline: resolving inlined frames runs addr2line per address, minutes instead of
    # a second; the frames of inlined functions are lost, their callers keep the samples.
    perf script --no-inline -i "$PROFILE_DIR/$name.perf.data" -F comm,tid,ip,sym,dso \
        >"$PROFILE_DIR/$name.script" 2>/dev/null
    local us
    us=$(awk -v n="$name" '$1 == n {print $4; exit}' "$PROFILE_DIR/summary.txt")
    python3 "$HERE/perf_categories.py" --name "$name" --us-per-request "$us" <"$PROFILE_DIR/$name.script" \
        >"$PROFILE_DIR/$name.categories.md"
    local report=(perf report -i "$PROFILE_DIR/$name.perf.data" --stdio --quiet --no-inline -g none)
    "${report[@]}" --no-children --sort dso,symbol --percent-limit 0.5 \
        >"$PROFILE_DIR/$name.self-by-symbol.txt" 2>/dev/null
    "${report[@]}" --children --sort symbol --percent-limit 2 \
        >"$PROFILE_DIR/$name.inclusive-by-symbol.txt" 2>/dev/null
}

record portcullis "$GW_PID" -H "$AUTH" "http://127.0.0.1:$GW_PORT$BENCH_PATH"
record nginx "$NGX_PIDS" "http://127.0.0.1:$NGX_PORT$BENCH_PATH"
{
    for name in portcullis nginx; do
        echo
        echo "## $name"
        echo
        cat "$PROFILE_DIR/$name.categories.md"
        echo
        echo "Top symbols by self time ($name):"
        echo
        head -25 "$PROFILE_DIR/$name.self-by-symbol.txt" | cut -c1-160
    done
} | tee -a "$PROFILE_DIR/summary.txt"

stop_tracked "$GW_PID"
stop_tracked "$NGX_MASTER"
