#!/usr/bin/env bash
# Load benchmark: portcullis (bearer validation + scope check + proxy) next to nginx as a plain
# reverse proxy (no authentication), both in front of the same fast upstream on loopback, driven
# by wrk in alternation (direct upstream, nginx, portcullis) ROUNDS times for each worker count,
# then the token endpoint ROUNDS times. Prints one table of medians and ratios (report.py).
# BENCHMARKS.md ("Load benchmark against nginx") has the latest table and how to read it.
#
# Run from the repository root:   benches/load/run.sh
#
# Environment (all optional):
#   DURATION=10s          length of one wrk run (wrk syntax: 10s, 1m)
#   CONNECTIONS=32        wrk connections
#   WRK_THREADS=1         wrk threads
#   ROUNDS=3              alternation rounds per worker count
#   WORKERS="1 2"         nginx worker_processes = portcullis worker threads (TOKIO_WORKER_THREADS)
#   WARMUP=2s             one unrecorded wrk run per target before the rounds ("0" skips it)
#   UPSTREAM_WORKERS=1    worker_processes of the upstream nginx
#   ACCESS_LOG=0          1 turns portcullis's access log on (its default; nginx's stays off)
#   TOKEN_BENCH=1         0 skips the token issuance runs
#   SKIP_BUILD=0          1 uses target/release/portcullis as it is
#   BASELINE_BIN=         another portcullis binary (an earlier build) measured in the same
#                         rounds as "baseline", for A/B comparisons of a change
#   REDIS=0               1 also measures a second gateway on a Redis store (a redis-server on
#                         a free port): proxied requests (token cache warm) and token issuance
#   FLOOR=0               1 also measures examples/bare_proxy: hyper's server and the gateway's
#                         upstream pool with nothing in between (no token, no headers, no
#                         metrics), the floor of what the gateway's stack can cost
#   RESULTS_DIR=target/load-bench   raw wrk outputs, the run's facts and table.md are kept here
#   KEEP_TMP=0            1 keeps the temp dir (configs, pid files, logs); kept anyway on failure
#
# Everything listens on 127.0.0.1 on ports the kernel picked as free; each process has its own
# config and pid file in a temp dir and is stopped by its pid on exit; every wait has a deadline.
set -euo pipefail

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
WRK_THREADS=${WRK_THREADS:-1}
ROUNDS=${ROUNDS:-3}
WORKERS=${WORKERS:-"1 2"}
WARMUP=${WARMUP:-2s}
UPSTREAM_WORKERS=${UPSTREAM_WORKERS:-1}
TOKEN_BENCH=${TOKEN_BENCH:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
RESULTS_DIR=${RESULTS_DIR:-target/load-bench}
KEEP_TMP=${KEEP_TMP:-0}
ACCESS_LOG=${ACCESS_LOG:-0}
BASELINE_BIN=${BASELINE_BIN:-}
FLOOR=${FLOOR:-0}
REDIS=${REDIS:-0}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$HERE/common.sh"

# ------------------------------------------------------------------------------------------
# One measured wrk run
# ------------------------------------------------------------------------------------------

UPSTREAM_PIDS=
# measure OUT "PROXY PIDS" WRK ARGS...: one wrk run; its output and the CPU ticks the proxy
# and the upstream spent during it go to OUT.
measure() {
    local out=$1 proxy=$2
    shift 2
    local p0 u0 p1 u1 limit
    limit=$(($(seconds_of "$DURATION") + 60))
    # shellcheck disable=SC2086 # pid lists
    p0=$(cpu_ticks $proxy)
    # shellcheck disable=SC2086
    u0=$(cpu_ticks $UPSTREAM_PIDS)
    timeout "$limit" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" >"$out.tmp" \
        || die "wrk failed: $(cat "$out.tmp")"
    # shellcheck disable=SC2086
    p1=$(cpu_ticks $proxy)
    # shellcheck disable=SC2086
    u1=$(cpu_ticks $UPSTREAM_PIDS)
    {
        cat "$out.tmp"
        echo "# cpu proxy_ticks=$((p1 - p0)) upstream_ticks=$((u1 - u0)) clk_tck=$CLK_TCK"
    } >"$out"
    rm -f "$out.tmp"
    awk '/Requests\/sec/ {printf "   %s req/s", $2} END {print ""}' "$out" >&2
}

warmup() {
    [[ $WARMUP == 0 || $WARMUP == 0s ]] && return 0
    timeout $(($(seconds_of "$WARMUP") + 60)) \
        wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$WARMUP" "$@" >/dev/null
}

# ------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------

setup
if [[ $FLOOR == 1 ]]; then
    [[ $SKIP_BUILD == 1 ]] || cargo build --release --example bare_proxy
    [[ -x $ROOT/target/release/examples/bare_proxy ]] || die "examples/bare_proxy not built"
fi
mkdir -p "$RESULTS_DIR"
RESULTS_DIR=$(cd "$RESULTS_DIR" && pwd)
rm -f "$RESULTS_DIR"/*.txt "$RESULTS_DIR"/table.md "$RESULTS_DIR"/run.env

{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "nproc=$(nproc)"
    echo "cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "kernel=$(uname -r)"
    echo "nginx=$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')"
    echo "wrk=$(wrk -v 2>&1 | head -1 | awk '{print $2}')"
    echo "portcullis=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
    echo "duration=$DURATION"
    echo "connections=$CONNECTIONS"
    echo "wrk_threads=$WRK_THREADS"
    echo "rounds=$ROUNDS"
    echo "upstream_workers=$UPSTREAM_WORKERS"
    echo "access_log=$([[ $ACCESS_LOG == 1 ]] && echo on || echo off)"
} >"$RESULTS_DIR/run.env"

# The upstream and the client are shared by every target and every worker count.
start_upstream "$UPSTREAM_WORKERS"
make_client
[[ $REDIS != 1 ]] || start_redis

for n in $WORKERS; do
    start_nginx_proxy "$n"
    BASE_PID=
    if [[ -n $BASELINE_BIN ]]; then
        start_portcullis "$n" "$BASELINE_BIN"
        BASE_PID=$GW_PID BASE_PORT=$GW_PORT BASE_AUTH=$AUTH
        log "N=$n: baseline portcullis ($BASELINE_BIN) pid $BASE_PID on :$BASE_PORT"
    fi
    RGW_PID=
    if [[ $REDIS == 1 ]]; then
        start_portcullis "$n" "$BIN" "{redis: {url: \"redis://127.0.0.1:$REDIS_PORT/0\", key_prefix: \"bench$n:\"}}"
        RGW_PID=$GW_PID RGW_PORT=$GW_PORT RGW_AUTH=$AUTH
        log "N=$n: portcullis on Redis pid $RGW_PID on :$RGW_PORT"
    fi
    start_portcullis "$n"
    FLOOR_PID=
    if [[ $FLOOR == 1 ]]; then
        read -r FLOOR_PORT < <(free_ports 1)
        start floor env TOKIO_WORKER_THREADS="$n" "$ROOT/target/release/examples/bare_proxy" \
            "127.0.0.1:$FLOOR_PORT" "127.0.0.1:$UP_PORT"
        FLOOR_PID=$STARTED
        wait_http floor "$FLOOR_PID" "http://127.0.0.1:$FLOOR_PORT$BENCH_PATH"
    fi
    echo "gateway_workers_$n=$GW_THREADS" >>"$RESULTS_DIR/run.env"
    log "N=$n: nginx proxy pids $NGX_PIDS on :$NGX_PORT; portcullis pid $GW_PID ($GW_THREADS workers) on :$GW_PORT"

    warmup "http://127.0.0.1:$UP_PORT$BENCH_PATH"
    warmup "http://127.0.0.1:$NGX_PORT$BENCH_PATH"
    warmup -H "$AUTH" "http://127.0.0.1:$GW_PORT$BENCH_PATH"
    [[ -z $BASE_PID ]] || warmup -H "$BASE_AUTH" "http://127.0.0.1:$BASE_PORT$BENCH_PATH"
    [[ -z $FLOOR_PID ]] || warmup "http://127.0.0.1:$FLOOR_PORT$BENCH_PATH"
    [[ -z $RGW_PID ]] || warmup -H "$RGW_AUTH" "http://127.0.0.1:$RGW_PORT$BENCH_PATH"
    for ((r = 1; r <= ROUNDS; r++)); do
        log "N=$n round $r/$ROUNDS: direct, nginx, portcullis"
        measure "$RESULTS_DIR/N$n-r$r-direct.txt" "" "http://127.0.0.1:$UP_PORT$BENCH_PATH"
        measure "$RESULTS_DIR/N$n-r$r-nginx.txt" "$NGX_PIDS" "http://127.0.0.1:$NGX_PORT$BENCH_PATH"
        measure "$RESULTS_DIR/N$n-r$r-portcullis.txt" "$GW_PID" -H "$AUTH" \
            "http://127.0.0.1:$GW_PORT$BENCH_PATH"
        if [[ -n $RGW_PID ]]; then
            measure "$RESULTS_DIR/N$n-r$r-redis.txt" "$RGW_PID" -H "$RGW_AUTH" \
                "http://127.0.0.1:$RGW_PORT$BENCH_PATH"
        fi
        if [[ -n $FLOOR_PID ]]; then
            measure "$RESULTS_DIR/N$n-r$r-floor.txt" "$FLOOR_PID" \
                "http://127.0.0.1:$FLOOR_PORT$BENCH_PATH"
        fi
        if [[ -n $BASE_PID ]]; then
            measure "$RESULTS_DIR/N$n-r$r-baseline.txt" "$BASE_PID" -H "$BASE_AUTH" \
                "http://127.0.0.1:$BASE_PORT$BENCH_PATH"
        fi
    done
    [[ -z $BASE_PID ]] || stop_tracked "$BASE_PID"
    [[ -z $FLOOR_PID ]] || stop_tracked "$FLOOR_PID"
    echo "gateway_rss_kib_$n=$(awk '/^VmRSS/ {print $2}' "/proc/$GW_PID/status")" >>"$RESULTS_DIR/run.env"

    # After the proxy rounds: every issued token stays live (1h), and a store grown by
    # hundreds of thousands of tokens would make the later proxy rounds unlike the first.
    if [[ $TOKEN_BENCH == 1 ]]; then
        for ((r = 1; r <= ROUNDS; r++)); do
            log "N=$n token endpoint $r/$ROUNDS"
            measure "$RESULTS_DIR/N$n-r$r-token.txt" "$GW_PID" \
                -s "$HERE/token.lua" "http://127.0.0.1:$GW_PORT/oauth/token"
            if [[ -n $RGW_PID ]]; then
                measure "$RESULTS_DIR/N$n-r$r-redistoken.txt" "$RGW_PID $REDIS_PID" \
                    -s "$HERE/token.lua" "http://127.0.0.1:$RGW_PORT/oauth/token"
            fi
        done
    fi

    stop_tracked "$GW_PID"
    [[ -z $RGW_PID ]] || stop_tracked "$RGW_PID"
    stop_tracked "$NGX_MASTER"
done

python3 "$HERE/report.py" "$RESULTS_DIR" | tee "$RESULTS_DIR/table.md"
