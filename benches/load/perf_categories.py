#!/usr/bin/env python3
"""Sorts the CPU samples of a `perf record --call-graph dwarf` of portcullis into costs one can act on.

Reads `perf script --no-inline -F comm,tid,ip,sym,dso` on stdin. Prints three tables:

- self time: each sample goes to one bucket, chosen by its leaf frame (kernel samples by the
  syscall they are in, or the scheduler; user samples by library or by Rust crate);
- by owner: each sample goes to the innermost portcullis function on its stack (whatever the
  leaf: hyper, malloc or the kernel), i.e. the gateway code that led to that cost; samples with
  none go to the task they ran in (the hyper client connection, the tokio runtime);
- inclusive time: the share of samples with a given frame anywhere on the stack (they overlap,
  so they do not add up).

With --us-per-request X, each share is also given in microseconds of CPU per request (X is the
CPU per request measured without the profiler, by perf stat).

Usage: perf script ... | perf_categories.py [--name NAME] [--us-per-request X]
"""

import re
import sys
from collections import Counter

KERNEL_DSO = "[kernel.kallsyms]"
SCHED = re.compile(r"^(__schedule|schedule|finish_task_switch|schedule_hrtimeout|preempt_schedule)")
SEND = re.compile(r"(writev|__libc_write|^write$|sendmsg|sendto|__send)")
RECV = re.compile(r"(readv|__libc_read|^read$|recvmsg|recvfrom|__libc_recv|^recv$)")
ALLOC = re.compile(
    r"^(malloc|_int_malloc|free|cfree|_int_free|realloc|_int_realloc|calloc|malloc_consolidate|"
    r"unlink_chunk|tcache_|__libc_malloc|__libc_free|__libc_realloc|__rust_alloc|__rust_dealloc|"
    r"__rust_realloc|__rdl_|alloc::alloc::)"
)
MEMCPY = re.compile(r"^__(memmove|memcpy|memset|memcmp|memchr|strlen)")
CRATE = re.compile(r"^[<&\s]*(?:dyn\s+)?(?:core::ptr::drop_in_place<)?[<&\s]*(?:dyn\s+)?([A-Za-z_][A-Za-z0-9_]*)::")

INCLUSIVE = [
    ("hyper server connection task (everything under it)", r"portcullis::server::serve::"),
    ("Gateway::call (stack: auth, route, proxy)", r"portcullis::stack::Gateway as tower_service::Service"),
    ("proxy::forward (request to upstream, incl. hyper client)", r"portcullis::proxy::forward"),
    ("hyper client connection task (upstream side)", r"hyper::client::conn::http1::"),
    ("header rewrite (proxy::headers)", r"portcullis::proxy::headers::"),
    ("bearer auth + token lookup (auth, store)", r"portcullis::(auth|store)::"),
    ("route find + scope check (route)", r"portcullis::route::"),
    ("prometheus (metric updates)", r"^prometheus::|^<prometheus::"),
    ("HTTP/1 parse (httparse, hyper role parse)", r"httparse::|hyper::proto::h1::role::.*::parse"),
    ("HTTP/1 encode (hyper role encode)", r"hyper::proto::h1::role::.*::encode"),
    ("writev to a socket (user + kernel)", r"__GI___writev|writev"),
    ("read from a socket (user + kernel)", r"__libc_recv|__libc_read|^read$|recv"),
    ("epoll_wait (tokio reactor park)", r"epoll_wait"),
    ("allocator (malloc/free and callers' frees)", r"^(malloc|_int_malloc|free|cfree|_int_free|realloc|_int_realloc|malloc_consolidate)$"),
    ("tokio task wake/schedule", r"tokio::runtime::scheduler::multi_thread::worker::.*schedule|tokio::runtime::task::waker|wake_by_val|wake_by_ref"),
]


def samples(stream):
    """Yields each sample's frames, leaf first, as (symbol, dso)."""
    frames = []
    for line in stream:
        if not line.strip():
            if frames:
                yield frames
            frames = []
            continue
        if not line.startswith(("\t", " ")):
            continue  # the comm/tid header of a sample
        parts = line.strip().split(" ", 1)
        if len(parts) < 2:
            continue
        rest = parts[1]
        m = re.match(r"^(.*) \((.*)\)$", rest)
        sym, dso = (m.group(1), m.group(2)) if m else (rest, "?")
        sym = re.sub(r"\+0x[0-9a-f]+$", "", sym)
        frames.append((sym, dso))
    if frames:
        yield frames


def bucket(frames):
    sym, dso = frames[0]
    if dso == KERNEL_DSO:
        kernel = [s for s, d in frames if d == KERNEL_DSO]
        user = next((s for s, d in frames if d != KERNEL_DSO), "")
        if any(SCHED.match(s) for s in kernel):
            return "kernel: scheduler (context switches, preemption on syscall return)"
        if SEND.search(user):
            return "kernel: send (TCP + loopback delivery to the receiver)"
        if RECV.search(user):
            return "kernel: receive (TCP read)"
        if "epoll_wait" in user:
            return "kernel: epoll_wait"
        return "kernel: other (interrupts, timers, futex)"
    base = dso.rsplit("/", 1)[-1]
    if ALLOC.match(sym):
        return "allocator (malloc/free)"
    if base.startswith("libc"):
        if MEMCPY.match(sym):
            return "libc memcpy/memmove"
        return f"libc other ({sym})" if sym else "libc other"
    if base == "[vdso]":
        return "vdso (clock_gettime)"
    m = CRATE.match(sym)
    if m:
        crate = m.group(1)
        if crate in ("core", "alloc", "std"):
            return "Rust core/alloc/std"
        return f"crate {crate}"
    return f"other ({base})"


def owner(frames):
    """The innermost portcullis item on the stack, else the task the sample ran in."""
    for sym, _ in frames:
        bare = sym.lstrip("<& ")
        if bare.startswith("portcullis::"):
            path = re.split(r"[<\s]", bare, 1)[0].replace("::{{closure}}", "")
            return "::".join(path.split("::")[1:3])
    syms = " ".join(s for s, _ in frames)
    if "hyper::client::conn::http1" in syms:
        return "(hyper client connection task, no portcullis frame)"
    if "tokio::runtime" in syms:
        return "(tokio runtime: park, reactor, timers)"
    return "(other)"


def main():
    us = None
    name = "portcullis"
    if "--us-per-request" in sys.argv:
        us = float(sys.argv[sys.argv.index("--us-per-request") + 1])
    if "--name" in sys.argv:
        name = sys.argv[sys.argv.index("--name") + 1]
    selfs = Counter()
    owners = Counter()
    owners_kernel = Counter()
    inclusive = Counter()
    compiled = [(label, re.compile(rx)) for label, rx in INCLUSIVE]
    total = 0
    for frames in samples(sys.stdin):
        total += 1
        selfs[bucket(frames)] += 1
        owners[owner(frames)] += 1
        if frames[0][1] == KERNEL_DSO:
            owners_kernel[owner(frames)] += 1
        syms = [s for s, _ in frames]
        for label, rx in compiled:
            if any(rx.search(s) for s in syms):
                inclusive[label] += 1
    if not total:
        sys.exit("perf_categories.py: no samples")

    def row(label, n):
        pct = 100.0 * n / total
        extra = f" | {pct * us / 100:.1f} µs" if us is not None else ""
        return f"| {label} | {pct:.1f}%{extra} |"

    head = "| share | µs/request |" if us is not None else "| share |"
    rule = "| --- | ---: | ---: |" if us is not None else "| --- | ---: |"
    print(f"Self time of {name}, {total} samples (each sample in one bucket):")
    print()
    print(f"| bucket {head}")
    print(rule)
    other = 0
    for label, n in selfs.most_common():
        if 100.0 * n / total < 0.5:
            other += n
        else:
            print(row(label, n))
    if other:
        print(row("everything below 0.5% each", other))
    if any(not o.startswith("(") for o in owners):
        print()
        print(f"By owner: the innermost portcullis function on the stack ({name}):")
        print()
        print(f"| owner {head} of which in the kernel |")
        print(rule + " ---: |")

        def kernel_part(n):
            pct = 100.0 * n / total
            return f" {pct * us / 100:.1f} µs |" if us is not None else f" {pct:.1f}% |"

        other = other_kernel = 0
        for label, n in owners.most_common():
            if 100.0 * n / total < 0.5:
                other += n
                other_kernel += owners_kernel[label]
            else:
                print(row(label, n) + kernel_part(owners_kernel[label]))
        if other:
            print(row("everything below 0.5% each", other) + kernel_part(other_kernel))
    rows = [(label, inclusive[label]) for label, _ in INCLUSIVE if inclusive[label]]
    if rows:
        print()
        print(f"Inclusive time of {name} (a frame anywhere on the stack; rows overlap):")
        print()
        print(f"| frame {head}")
        print(rule)
        for label, n in rows:
            print(row(label, n))


if __name__ == "__main__":
    main()
