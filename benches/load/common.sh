# Shared by run.sh and profile.sh (sourced, not run): tools, process handling by pid, free
# ports, config rendering, and starting the upstream, nginx and portcullis. Each start_*
# function sets globals (ports, pids) that the caller reads.
# shellcheck shell=bash
# shellcheck disable=SC2034 # the start_* functions set globals for the caller

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${PORTCULLIS_BIN:-$ROOT/target/release/portcullis}
BENCH_PATH=/api/bench          # served by the upstream as is, and by portcullis's /api route
START_DEADLINE=30              # seconds any server may take to answer after it is started
STOP_DEADLINE=10               # seconds a server may take to exit after SIGTERM

log() { printf '== %s\n' "$*" >&2; }
die() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

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
        if [[ ${KEEP_TMP:-0} == 1 || $rc != 0 ]]; then
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
    # shellcheck disable=SC2046 # one word per pid
    echo "$1" $(pgrep -P "$1" || true)
}

# The tokio worker threads of a process: "tokio-rt-worker" (recent tokio) or
# "tokio-runtime-worker" (older), cut to 15 bytes; the blocking pool shares it, so count at idle.
tokio_workers() {
    local n=0 t
    for t in /proc/"$1"/task/*/comm; do
        [[ $(cat "$t" 2>/dev/null) == tokio-r* ]] && n=$((n + 1))
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
# The servers under test
# ------------------------------------------------------------------------------------------

# Tools, the release build, the temp dir. Reads SKIP_BUILD.
setup() {
    cd "$ROOT" || die "cannot cd to $ROOT"
    ensure_tools
    find_nginx
    CLK_TCK=$(getconf CLK_TCK)
    if [[ ${SKIP_BUILD:-0} != 1 ]]; then
        log "cargo build --release"
        cargo build --release --bin portcullis
    fi
    [[ -x $BIN ]] || die "$BIN not built"
    TMP=$(mktemp -d -t portcullis-load.XXXXXX)
    # nginx workers run as nobody; they must reach their temp dirs under $TMP.
    chmod 755 "$TMP"
}

# start_upstream WORKERS: nginx answering 200 "ok". Sets UP_PORT, UPSTREAM_MASTER, UPSTREAM_PIDS.
start_upstream() {
    read -r UP_PORT < <(free_ports 1)
    mkdir -p "$TMP/upstream-temp"
    render "$HERE/nginx-upstream.conf.template" "$TMP/nginx-upstream.conf" \
        "DIR=$TMP" "PORT=$UP_PORT" "WORKERS=$1"
    start upstream "$NGINX" -p "$TMP" -e "$TMP/upstream.error.log" -c "$TMP/nginx-upstream.conf"
    UPSTREAM_MASTER=$STARTED
    wait_http upstream "$UPSTREAM_MASTER" "http://127.0.0.1:$UP_PORT$BENCH_PATH"
    UPSTREAM_PIDS=$(nginx_pids "$UPSTREAM_MASTER")
    log "upstream: nginx on 127.0.0.1:$UP_PORT, pids $UPSTREAM_PIDS"
}

# One generated client; portcullis stores only the hash. Sets SECRET, SECRET_HASH and
# BENCH_BASIC_AUTH (exported: token.lua reads it).
make_client() {
    SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    SECRET_HASH=$(printf '%s' "$SECRET" | "$BIN" hash-secret)
    BENCH_BASIC_AUTH=$(printf 'bench:%s' "$SECRET" | base64 -w0)
    export BENCH_BASIC_AUTH
}

# start_nginx_proxy WORKERS: sets NGX_PORT, NGX_MASTER, NGX_PIDS (master and workers).
start_nginx_proxy() {
    read -r NGX_PORT < <(free_ports 1)
    mkdir -p "$TMP/proxy-temp"
    render "$HERE/nginx-proxy.conf.template" "$TMP/nginx-proxy.conf" \
        "DIR=$TMP" "PORT=$NGX_PORT" "UPSTREAM_PORT=$UP_PORT" "WORKERS=$1"
    start nginx-proxy "$NGINX" -p "$TMP" -e "$TMP/nginx-proxy.error.log" -c "$TMP/nginx-proxy.conf"
    NGX_MASTER=$STARTED
    wait_http nginx-proxy "$NGX_MASTER" "http://127.0.0.1:$NGX_PORT$BENCH_PATH"
    NGX_PIDS=$(nginx_pids "$NGX_MASTER")
    [[ $(curl -fsS --max-time 5 "http://127.0.0.1:$NGX_PORT$BENCH_PATH") == ok ]] \
        || die "nginx did not proxy the bench request"
}

# start_portcullis THREADS [BINARY [STORE]]: the gateway (BINARY, default $BIN; STORE, the
# `store:` value, default memory) with TOKIO_WORKER_THREADS=THREADS, and a token for the client. Sets GW_PORT, ADMIN_PORT, GW_PID,
# GW_THREADS (counted), TOKEN and AUTH (the header).
start_portcullis() {
    local bin=${2:-$BIN}
    read -r GW_PORT ADMIN_PORT < <(free_ports 2)
    # One config and log per gateway: several may run side by side (BASELINE_BIN, REDIS).
    local cfg="$TMP/gateway-$GW_PORT.yaml"
    render "$HERE/gateway.yaml.template" "$cfg" \
        "PORT=$GW_PORT" "ADMIN_PORT=$ADMIN_PORT" "UPSTREAM_PORT=$UP_PORT" "SECRET_HASH=$SECRET_HASH" \
        "ACCESS_LOG=$([[ ${ACCESS_LOG:-0} == 1 ]] && echo true || echo false)" \
        "STORE=${3:-memory}"
    start "portcullis-$GW_PORT" env TOKIO_WORKER_THREADS="$1" "$bin" serve --config "$cfg"
    GW_PID=$STARTED
    wait_http "portcullis-$GW_PORT" "$GW_PID" "http://127.0.0.1:$ADMIN_PORT/healthz"
    # `env` execs the gateway, so the pid is the gateway's own.
    [[ $(cat "/proc/$GW_PID/comm") == portcullis ]] || die "pid $GW_PID is not the gateway"
    GW_THREADS=$(tokio_workers "$GW_PID")
    if [[ $GW_THREADS != "$1" ]]; then
        log "WARNING: asked TOKIO_WORKER_THREADS=$1, the gateway runs $GW_THREADS tokio worker threads"
    fi

    TOKEN=$(curl -fsS --max-time 5 -u "bench:$SECRET" -d grant_type=client_credentials \
        "http://127.0.0.1:$GW_PORT/oauth/token" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
    AUTH="Authorization: Bearer $TOKEN"

    # The bench request must reach the upstream's 200 "ok", and be refused without the token
    # (else the gateway would not be checking anything).
    [[ $(curl -fsS --max-time 5 -H "$AUTH" "http://127.0.0.1:$GW_PORT$BENCH_PATH") == ok ]] \
        || die "portcullis did not proxy the bench request"
    local code
    code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$GW_PORT$BENCH_PATH")
    [[ $code == 401 ]] || die "portcullis answered $code without a token (expected 401)"
}

# start_redis: a throwaway redis-server (no persistence) on a free port. Sets REDIS_PORT and
# REDIS_PID.
start_redis() {
    command -v redis-server >/dev/null 2>&1 || die "redis-server missing (Debian package redis-server)"
    read -r REDIS_PORT < <(free_ports 1)
    start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$TMP"
    REDIS_PID=$STARTED
    local end=$((SECONDS + START_DEADLINE))
    until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do
        ((SECONDS < end)) || die "redis-server did not start"
        sleep 0.1
    done
    log "redis: 127.0.0.1:$REDIS_PORT, pid $REDIS_PID"
}

# stop_tracked PID: stops a process started by start() and forgets it.
stop_tracked() {
    stop_pid "$1"
    forget_pid "$1"
}
