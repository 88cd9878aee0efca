#!/usr/bin/env python3
"""The table of the load benchmark, from the raw wrk outputs run.sh keeps.

Reads RESULTS_DIR/N{workers}-r{round}-{target}.txt (wrk --latency output plus run.sh's
`# cpu ...` line) and RESULTS_DIR/run.env, prints one Markdown table: per worker count and
target, the median over rounds of req/s, p50, p99 and the proxy's CPU per request, and the
ratios portcullis/nginx and each proxy/direct. A ratio is the median of the per-round ratios:
the targets of one round run back to back, so pairing them cancels some of the drift of a
shared machine.

Usage: report.py RESULTS_DIR
"""

import re
import statistics
import sys
from pathlib import Path

TARGETS = [
    ("direct", "direct upstream"),
    ("nginx", "nginx proxy_pass"),
    ("portcullis", "portcullis (bearer + scope)"),
    ("baseline", "baseline build (BASELINE_BIN)"),
    ("floor", "floor: hyper + upstream pool, no checks"),
    ("redis", "portcullis, Redis store (cache warm)"),
    ("token", "portcullis token endpoint"),
    ("redistoken", "token endpoint, Redis store (CPU: gateway + Redis)"),
]
UNIT_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6}
NAME = re.compile(r"^N(\d+)-r(\d+)-(\w+)\.txt$")


def parse(path):
    text = path.read_text()
    run = {"non2xx": 0, "socket_errors": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    run["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    run["requests"] = int(m.group(1)) if m else 0
    for pct, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M):
        run[f"p{pct}"] = float(value) * UNIT_US[unit]
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        run["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        run["socket_errors"] = sum(int(g) for g in m.groups())
    m = re.search(r"# cpu proxy_ticks=(\d+) upstream_ticks=(\d+) clk_tck=(\d+)", text)
    if m and run["requests"]:
        per_tick_us = 1e6 / int(m.group(3))
        run["proxy_cpu"] = int(m.group(1)) * per_tick_us / run["requests"]
        run["upstream_cpu"] = int(m.group(2)) * per_tick_us / run["requests"]
    return run


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt_us(us):
    if us is None:
        return "—"
    return f"{us:.0f} µs" if us < 1000 else f"{us / 1000:.2f} ms"


def fmt(value, spec, suffix=""):
    return "—" if value is None else f"{value:{spec}}{suffix}"


def main():
    results = Path(sys.argv[1])
    env = {}
    env_file = results / "run.env"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            env[key] = value

    runs = {}  # (workers, target) -> {round: run}
    for path in sorted(results.glob("N*-r*-*.txt")):
        m = NAME.match(path.name)
        if m:
            runs.setdefault((int(m.group(1)), m.group(3)), {})[int(m.group(2))] = parse(path)
    if not runs:
        sys.exit(f"report.py: no wrk results in {results}")

    print(
        f"Load benchmark, {env.get('date', '?')}: {env.get('nproc', '?')} cores "
        f"({env.get('cpu', '?')}), Linux {env.get('kernel', '?')}, nginx {env.get('nginx', '?')}, "
        f"wrk {env.get('wrk', '?')}, portcullis {env.get('portcullis', '?')}."
    )
    print(
        f"wrk -t{env.get('wrk_threads', '?')} -c{env.get('connections', '?')} "
        f"-d{env.get('duration', '?')} --latency, medians of {env.get('rounds', '?')} alternated "
        f"rounds; upstream: nginx `return 200` with {env.get('upstream_workers', '?')} worker(s). "
        "N = nginx worker_processes = portcullis tokio worker threads. Access logs: nginx off, "
        f"portcullis {env.get('access_log', '?')}."
    )
    print()
    print(
        "| N | target | req/s | p50 | p99 | proxy CPU/req | upstream CPU/req "
        "| req/s vs nginx | p99 vs nginx | req/s vs direct | p99 vs direct | errors |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")

    verdicts = []
    for workers in sorted({w for w, _ in runs}):
        def ratio(target, base, key):
            a, b = runs.get((workers, target), {}), runs.get((workers, base), {})
            return median(
                a[r][key] / b[r][key]
                for r in a
                if r in b and a[r].get(key) and b[r].get(key)
            )

        for target, label in TARGETS:
            rounds = runs.get((workers, target))
            if not rounds:
                continue
            rs = list(rounds.values())
            rps = median(r["rps"] for r in rs)
            p50 = median(r.get("p50") for r in rs)
            p99 = median(r.get("p99") for r in rs)
            proxy_cpu = median(r.get("proxy_cpu") for r in rs)
            upstream_cpu = median(r.get("upstream_cpu") for r in rs)
            errors = sum(r["non2xx"] + r["socket_errors"] for r in rs)
            vs_nginx = (None, None)
            vs_direct = (None, None)
            if target in ("portcullis", "baseline", "floor", "redis"):
                vs_nginx = (ratio(target, "nginx", "rps"), ratio(target, "nginx", "p99"))
            if target in ("nginx", "portcullis", "baseline", "floor", "redis"):
                vs_direct = (ratio(target, "direct", "rps"), ratio(target, "direct", "p99"))
            if target == "direct":
                proxy_cpu = None
            if target in ("token", "redistoken"):
                upstream_cpu = None
            unit = "tokens/s" if target in ("token", "redistoken") else ""
            print(
                f"| {workers} | {label} | {rps:,.0f}{' ' + unit if unit else ''} | {fmt_us(p50)} "
                f"| {fmt_us(p99)} | {fmt(proxy_cpu, '.1f', ' µs')} | {fmt(upstream_cpu, '.1f', ' µs')} "
                f"| {fmt(vs_nginx[0], '.2f', 'x')} | {fmt(vs_nginx[1], '.2f', 'x')} "
                f"| {fmt(vs_direct[0], '.2f', 'x')} | {fmt(vs_direct[1], '.2f', 'x')} | {errors} |"
            )

        def cpu(target):
            return median(r.get("proxy_cpu") for r in runs.get((workers, target), {}).values())

        def issuance(target, floor, what):
            rounds = runs.get((workers, target))
            if rounds:
                rate = median(r["rps"] for r in rounds.values())
                verdicts.append(
                    f"N={workers}: token issuance{what} {rate:,.0f} tokens/s "
                    f"({'reached' if rate >= floor else 'NOT reached'}: target >= {floor:,}/s)."
                )

        t, p = ratio("portcullis", "nginx", "rps"), ratio("portcullis", "nginx", "p99")
        if t is not None and p is not None:
            verdicts.append(
                f"N={workers}: throughput {t:.2f}x nginx ({'reached' if t >= 1.0 else 'NOT reached'}: "
                f"target >= 1.0x), p99 {p:.2f}x nginx ({'reached' if p <= 1.0 else 'NOT reached'}: "
                f"target <= 1.0x), CPU per request {fmt(cpu('portcullis'), '.1f', ' µs')} vs nginx "
                f"{fmt(cpu('nginx'), '.1f', ' µs')}."
            )
        issuance("token", 20000, " (memory store)")
        r = ratio("redis", "portcullis", "rps")
        if r is not None:
            verdicts.append(
                f"N={workers}: validation on the Redis store (warm cache) moves {r:.2f}x the memory "
                f"store's requests/s ({'reached' if r >= 0.95 else 'NOT reached'}: target within 5%), "
                f"CPU per request {fmt(cpu('redis'), '.1f', ' µs')} vs "
                f"{fmt(cpu('portcullis'), '.1f', ' µs')}."
            )
        issuance("redistoken", 10000, " on the Redis store")
    print()
    for v in verdicts:
        print(f"- {v}")
    threads = [f"N={k.rsplit('_', 1)[1]}: {v}" for k, v in env.items() if k.startswith("gateway_workers_")]
    if threads:
        print(f"- portcullis tokio worker threads at idle (from /proc/PID/task): {', '.join(threads)}.")
    errors = sum(r["non2xx"] + r["socket_errors"] for rounds in runs.values() for r in rounds.values())
    if errors:
        print(f"- WARNING: {errors} non-2xx responses or socket errors in the timed runs (column errors).")


if __name__ == "__main__":
    main()
