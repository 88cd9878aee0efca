#!/usr/bin/env bash
# Load benchmark: portcullis (bearer validation + scope check + proxy) next to nginx as a plain
# reverse proxy (no authentication), both in front of the same fast upstream on loopback, driven
# by wrk in alternation: direct upstream, nginx, portcullis, then the token endpoint, repeated
# ROUNDS times for each worker count. Prints one table of medians and ratios (report.py).
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
#   TOKEN_BENCH=1         0 skips the token issuance runs
#   SKIP_BUILD=0          1 uses target/release/portcullis as it is
#   RESULTS_DIR=target/load-bench   raw wrk outputs, the run's facts and table.md are kept here
#   KEEP_TMP=0            1 keeps the temp dir (configs, pid files, logs) after the run
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

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=$ROOT/target/release/portcullis
BENCH_PATH=/api/bench          # served by the upstream as is, and by portcullis's /api route
START_DEADLINE=30              # seconds any server may take to answer after it is started
STOP_DEADLINE=10               # seconds a server may take to exit after SIGTERM

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------------------------------
# Tools
# ------------------------------------------------------------------------------------------

ensure_tools() {
    local missing=()
    command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    command -v pgrep >/dev/null 2>&1 || missing+=(procps)
    command -v timeout >/dev/null 2>&1 || missing+=(coreutils)
    ((${#missing[@]} == 0)) && return 0
    [[ $(id -u) == 0 ]] || die "missing ${missing[*]}: install them (Debian packages) or run as root"
    log "installing ${missing[*]} from Debian packages"
    apt-get update
    local pkgs=()
    for p in "${missing[@]}"; do
        if [[ $p == nginx ]]; then
            # nginx-light is enough (a plain proxy); newer Debian folds it into nginx.
            if apt-cache show nginx-light >/dev/null 2>&1; then pkgs+=(nginx-light); else pkgs+=(nginx); fi
        else
            pkgs+=("$p")
        fi
    done
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}"
}

NGINX=
find_nginx() {
    NGINX=$(command -v nginx 2>/dev/null || true)
    [[ -n $NGINX ]] || NGINX=/usr/sbin/nginx
    [[ -x $NGINX ]] || die "nginx not found after install"
}

# ------------------------------------------------------------------------------------------
# Processes: started in the background, remembered by pid, stopped by pid
# ------------------------------------------------------------------------------------------

PIDS=()
TMP=

# The state letter of a process (R, S, Z...), empty if it is gone.
proc_state() {
    [[ -r /proc/$1/stat ]] || return 0
    sed -e 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1 || true
}

alive() {
    local s
    s=$(proc_state "$1")
    [[ -n $s && $s != Z && $s != X ]]
}

stop_pid() {
    local pid=$1 end
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        end=$((SECONDS + STOP_DEADLINE))
        while alive "$pid" && ((SECONDS < end)); do sleep 0.1; done
        if alive "$pid"; then
            log "pid $pid still running ${STOP_DEADLINE}s after SIGTERM: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

forget_pid() {
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

cleanup() {
    local rc=$? i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done
    if [[ -n $TMP && -d $TMP ]]; then
        if [[ $KEEP_TMP == 1 || $rc != 0 ]]; then
            log "temp dir kept: $TMP"
        else
            rm -rf "$TMP"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CMD...: runs CMD in the background, output in $TMP/NAME.log, pid in $TMP/NAME.pid.
STARTED=
start() {
    local name=$1
    shift
    "$@" >"$TMP/$name.log" 2>&1 &
    STARTED=$!
    echo "$STARTED" >"$TMP/$name.pid"
    PIDS+=("$STARTED")
}

# wait_http NAME PID URL [CURL ARGS...]: until URL answers 2xx, the process dies, or the deadline.
wait_http() {
    local name=$1 pid=$2 url=$3
    shift 3
    local end=$((SECONDS + START_DEADLINE))
    while ((SECONDS < end)); do
        alive "$pid" || { cat "$TMP/$name.log" >&2; die "$name exited while starting"; }
        curl -fsS -o /dev/null --max-time 1 "$@" "$url" 2>/dev/null && return 0
        sleep 0.1
    done
    cat "$TMP/$name.log" >&2
    die "$name did not answer $url within ${START_DEADLINE}s"
}

# Free loopback ports, all distinct: the sockets stay bound until every port is picked.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
}

# render TEMPLATE OUT NAME=VALUE...: replaces each @NAME@.
render() {
    local template=$1 out=$2 kv args=()
    shift 2
    for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${args[@]}" "$template" >"$out"
    ! grep -q '@[A-Z_]*@' "$out" || die "unfilled placeholder in $out"
}

# CPU time (utime + stime, in clock ticks) of the given pids, summed over all their threads.
cpu_ticks() {
    local total=0 pid t
    for pid in "$@"; do
        t=$(sed -e 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}') || t=0
        total=$((total + ${t:-0}))
    done
    echo "$total"
}

# The nginx master and its workers (the workers do the proxying).
nginx_pids() {
    echo "$1" $(pgrep -P "$1" || true)
}

# The tokio worker threads of a process (the blocking pool shares the name; count at idle).
tokio_workers() {
    local n=0 t
    for t in /proc/"$1"/task/*/comm; do
        [[ $(cat "$t" 2>/dev/null) == tokio-runtime-w* ]] && n=$((n + 1))
    done
    echo "$n"
}

seconds_of() { # wrk duration (10, 10s, 2m, 1h) -> seconds
    local d=$1
    case $d in
        *h) echo $((${d%h} * 3600)) ;;
        *m) echo $((${d%m} * 60)) ;;
        *s) echo "${d%s}" ;;
        *) echo "$d" ;;
    esac
}

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

cd "$ROOT"
ensure_tools
find_nginx
CLK_TCK=$(getconf CLK_TCK)

if [[ $SKIP_BUILD != 1 ]]; then
    log "cargo build --release"
    cargo build --release --bin portcullis
fi
[[ -x $BIN ]] || die "$BIN not built"

TMP=$(mktemp -d -t portcullis-load.XXXXXX)
# nginx workers run as nobody; they must reach their temp dirs under $TMP.
chmod 755 "$TMP"
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
} >"$RESULTS_DIR/run.env"

# The upstream, shared by every target and every worker count.
read -r UP_PORT < <(free_ports 1)
mkdir -p "$TMP/upstream-temp"
render "$HERE/nginx-upstream.conf.template" "$TMP/nginx-upstream.conf" \
    "DIR=$TMP" "PORT=$UP_PORT" "WORKERS=$UPSTREAM_WORKERS"
start upstream "$NGINX" -p "$TMP" -e "$TMP/upstream.error.log" -c "$TMP/nginx-upstream.conf"
UPSTREAM_MASTER=$STARTED
wait_http upstream "$UPSTREAM_MASTER" "http://127.0.0.1:$UP_PORT$BENCH_PATH"
UPSTREAM_PIDS=$(nginx_pids "$UPSTREAM_MASTER")
log "upstream: nginx on 127.0.0.1:$UP_PORT, pids $UPSTREAM_PIDS"

# One generated client for the whole run; portcullis stores only the hash.
SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
SECRET_HASH=$(printf '%s' "$SECRET" | "$BIN" hash-secret)
# token.lua reads the Basic credentials from the environment.
BENCH_BASIC_AUTH=$(printf 'bench:%s' "$SECRET" | base64 -w0)
export BENCH_BASIC_AUTH

for n in $WORKERS; do
    read -r NGX_PORT GW_PORT ADMIN_PORT < <(free_ports 3)

    mkdir -p "$TMP/proxy-temp"
    render "$HERE/nginx-proxy.conf.template" "$TMP/nginx-proxy.conf" \
        "DIR=$TMP" "PORT=$NGX_PORT" "UPSTREAM_PORT=$UP_PORT" "WORKERS=$n"
    start nginx-proxy "$NGINX" -p "$TMP" -e "$TMP/nginx-proxy.error.log" -c "$TMP/nginx-proxy.conf"
    NGX_MASTER=$STARTED
    wait_http nginx-proxy "$NGX_MASTER" "http://127.0.0.1:$NGX_PORT$BENCH_PATH"
    NGX_PIDS=$(nginx_pids "$NGX_MASTER")

    render "$HERE/gateway.yaml.template" "$TMP/gateway.yaml" \
        "PORT=$GW_PORT" "ADMIN_PORT=$ADMIN_PORT" "UPSTREAM_PORT=$UP_PORT" "SECRET_HASH=$SECRET_HASH"
    start portcullis env TOKIO_WORKER_THREADS="$n" "$BIN" serve --config "$TMP/gateway.yaml"
    GW_PID=$STARTED
    wait_http portcullis "$GW_PID" "http://127.0.0.1:$ADMIN_PORT/healthz"
    # `env` execs the gateway, so the pid is the gateway's own.
    [[ $(cat "/proc/$GW_PID/comm") == portcullis ]] || die "pid $GW_PID is not the gateway"
    GW_THREADS=$(tokio_workers "$GW_PID")
    if [[ $GW_THREADS != "$n" ]]; then
        log "WARNING: asked TOKIO_WORKER_THREADS=$n, the gateway runs $GW_THREADS tokio worker threads"
    fi
    echo "gateway_workers_$n=$GW_THREADS" >>"$RESULTS_DIR/run.env"

    TOKEN=$(curl -fsS --max-time 5 -u "bench:$SECRET" -d grant_type=client_credentials \
        "http://127.0.0.1:$GW_PORT/oauth/token" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
    AUTH="Authorization: Bearer $TOKEN"

    # Each target must answer the bench request with the upstream's 200 "ok" before it is timed,
    # and portcullis must refuse it without the token (else it would not be checking anything).
    for url in "http://127.0.0.1:$UP_PORT$BENCH_PATH" "http://127.0.0.1:$NGX_PORT$BENCH_PATH"; do
        [[ $(curl -fsS --max-time 5 "$url") == ok ]] || die "$url did not answer ok"
    done
    [[ $(curl -fsS --max-time 5 -H "$AUTH" "http://127.0.0.1:$GW_PORT$BENCH_PATH") == ok ]] \
        || die "portcullis did not proxy the bench request"
    code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$GW_PORT$BENCH_PATH")
    [[ $code == 401 ]] || die "portcullis answered $code without a token (expected 401)"

    log "N=$n: nginx proxy pids $NGX_PIDS on :$NGX_PORT; portcullis pid $GW_PID ($GW_THREADS workers) on :$GW_PORT"
    warmup "http://127.0.0.1:$UP_PORT$BENCH_PATH"
    warmup "http://127.0.0.1:$NGX_PORT$BENCH_PATH"
    warmup -H "$AUTH" "http://127.0.0.1:$GW_PORT$BENCH_PATH"

    for ((r = 1; r <= ROUNDS; r++)); do
        log "N=$n round $r/$ROUNDS"
        measure "$RESULTS_DIR/N$n-r$r-direct.txt" "" "http://127.0.0.1:$UP_PORT$BENCH_PATH"
        measure "$RESULTS_DIR/N$n-r$r-nginx.txt" "$NGX_PIDS" "http://127.0.0.1:$NGX_PORT$BENCH_PATH"
        measure "$RESULTS_DIR/N$n-r$r-portcullis.txt" "$GW_PID" -H "$AUTH" \
            "http://127.0.0.1:$GW_PORT$BENCH_PATH"
        if [[ $TOKEN_BENCH == 1 ]]; then
            measure "$RESULTS_DIR/N$n-r$r-token.txt" "$GW_PID" \
                -s "$HERE/token.lua" "http://127.0.0.1:$GW_PORT/oauth/token"
        fi
    done

    echo "gateway_rss_kib_$n=$(awk '/^VmRSS/ {print $2}' "/proc/$GW_PID/status")" >>"$RESULTS_DIR/run.env"
    stop_pid "$GW_PID"
    forget_pid "$GW_PID"
    stop_pid "$NGX_MASTER"
    forget_pid "$NGX_MASTER"
done

python3 "$HERE/report.py" "$RESULTS_DIR" | tee "$RESULTS_DIR/table.md"
