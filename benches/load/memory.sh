#!/usr/bin/env bash
# The gateway's resident memory under the performance issue's two conditions, release build,
# default settings (the bench config of run.sh: memory store, one route, access log off):
#   1. IDLE keep-alive connections, each having made one proxied request, then held idle
#      (benches/load/idle_clients.py): VmRSS before and with them open;
#   2. a soak at full load (wrk -c CONNECTIONS for SOAK): VmRSS sampled every 10 s, so growth
#      shows as a trend rather than one number.
#
# Run from the repository root:   benches/load/memory.sh
#
# Environment (all optional):
#   IDLE=10000            idle keep-alive connections (the default max_connections is 10000);
#                         0 skips that part (a soak from a fresh process is the cleaner trend)
#   SOAK=120s             length of the soak (wrk syntax)
#   CONNECTIONS=32        wrk connections during the soak
#   WORKERS=2             TOKIO_WORKER_THREADS of the gateway
#   SKIP_BUILD=0          1 uses target/release/portcullis as it is
#   KEEP_TMP=0            1 keeps the temp dir; kept anyway on failure
#
# Same rules as run.sh: loopback only, free ports, everything stopped by pid, bounded waits.
set -euo pipefail

IDLE=${IDLE:-10000}
SOAK=${SOAK:-120s}
CONNECTIONS=${CONNECTIONS:-32}
WORKERS=${WORKERS:-2}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$HERE/common.sh"

# Each idle connection is a file descriptor in the client and in the gateway (its child).
ulimit -n "$(ulimit -Hn)"
(($(ulimit -n) > IDLE + 512)) || die "open files limit $(ulimit -n) is too low for IDLE=$IDLE"

setup
start_upstream 1
make_client
start_portcullis "$WORKERS"
log "gateway pid $GW_PID on :$GW_PORT, $GW_THREADS worker threads"

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$GW_PID/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f MiB", k / 1024}'; }

# 1. Idle keep-alive connections.
warm=$(rss_kib)
wrk -t1 -c"$CONNECTIONS" -d2s -H "$AUTH" "http://127.0.0.1:$GW_PORT$BENCH_PATH" >/dev/null
before=$(rss_kib)
with_idle=$before open=0
if ((IDLE > 0)); then
    log "opening $IDLE keep-alive connections (one request each)"
    coproc IDLERS { timeout 300 python3 "$HERE/idle_clients.py" 127.0.0.1 "$GW_PORT" "$BENCH_PATH" "$AUTH" "$IDLE" 240 2>&1; }
    idle_pid=$IDLERS_PID
    read -r -t 240 line <&"${IDLERS[0]}" || die "the idle clients did not report"
    [[ $line == "open $IDLE" ]] || die "idle clients: $line"
    sleep 2
    with_idle=$(rss_kib)
    open=$(curl -fsS --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" |
        awk '/^portcullis_open_connections\{listener="public"\}/ {print $2}')
    exec {IDLERS[1]}>&-
    wait "$idle_pid" || true
fi

# 2. Soak at full load.
log "soak: wrk -c$CONNECTIONS for $SOAK, VmRSS every 10 s"
samples=()
timeout $(($(seconds_of "$SOAK") + 60)) wrk -t1 -c"$CONNECTIONS" -d"$SOAK" -H "$AUTH" \
    "http://127.0.0.1:$GW_PORT$BENCH_PATH" >"$TMP/soak.wrk" &
wrk_pid=$!
end=$((SECONDS + $(seconds_of "$SOAK")))
while ((SECONDS < end)) && kill -0 "$wrk_pid" 2>/dev/null; do
    sleep 10
    samples+=("$(rss_kib)")
done
wait "$wrk_pid" || die "wrk failed: $(cat "$TMP/soak.wrk")"
requests=$(awk '/requests in/ {print $1}' "$TMP/soak.wrk")
errors=$(awk '/Non-2xx|Socket errors/' "$TMP/soak.wrk")

echo
echo "# Gateway memory, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $GW_THREADS worker threads"
echo
echo "| condition | VmRSS |"
echo "| --- | ---: |"
echo "| started, before any load | $(mib "$warm") |"
echo "| after a 2 s warm-up at $CONNECTIONS connections | $(mib "$before") |"
if ((IDLE > 0)); then
    echo "| with $IDLE idle keep-alive connections (gateway counts $open open) | $(mib "$with_idle") |"
    echo
    echo "Per idle connection: $(awk -v a="$before" -v b="$with_idle" -v n="$IDLE" 'BEGIN {printf "%.1f KiB", (b - a) / n}')."
fi
echo
echo "Soak, wrk -c$CONNECTIONS for $SOAK: $requests requests${errors:+, $errors}."
echo "VmRSS every 10 s: $(for s in "${samples[@]}"; do printf '%s ' "$(mib "$s")"; done)"
if ((${#samples[@]} >= 4)); then
    # Growth over the second half, against the first half's peak: a leak grows steadily.
    half=$((${#samples[@]} / 2))
    first_peak=$(printf '%s\n' "${samples[@]:0:half}" | sort -n | tail -1)
    last=${samples[-1]}
    echo "Second half vs first half's peak: $(awk -v a="$first_peak" -v b="$last" 'BEGIN {printf "%+.1f MiB", (b - a) / 1024}')."
fi
