#!/usr/bin/env python3
"""Read a Kineto / torch.profiler trace the way a performance engineer does, with no stallscope code.

This reader exists so that the corpus labels (``bench/corpus/labels``) come from the trace itself and
not from the tool they grade: it uses only json, gzip, collections, statistics and re. It prints:

* the schema: top-level keys, devices, distributed info, every event category with its count (any
  case: PyTorch <= 1.9 writes ``Operator``/``Kernel``/``Runtime``/``Memcpy``, later ``cpu_op``/``kernel``/
  ``cuda_runtime``/``gpu_memcpy``);
* threads: CPU ops per thread, thread names, the most frequent top-level ops (what tells the training
  loop from the autograd engine's backward thread and from DataLoader / pin-memory threads);
* the ``ProfilerStep#N`` spans, and per step how the GPU spent the step: compute kernels, exposed
  communication kernels (nccl/rccl), memcpy, memset, other device work, idle (a partition in that
  priority order), blocking runtime calls, DataLoader ``__next__`` time, kernel queueing delay;
* memcpy by direction, memory kind and size; the top kernels; the communication kernels;
* GPU clock sanity (zero / constant timestamps, device events outside the CPU span, kernels that start
  before their launch) and the start-up calls before the first step;
* the longest GPU idle gaps inside steps and what the host threads were doing at that moment.

Usage: ``python3 bench/corpus/read_trace.py TRACE_OR_FOLDER [--top N] [--thread TID] [--step I] [--gaps N]``.
A folder is read as one trace per rank, followed by a cross-rank table.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import gzip
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

CPU_OP_CATS = {"cpu_op", "operator", "user_annotation", "python_function"}
RUNTIME_CATS = {
    "cuda_runtime",
    "runtime",
    "cuda_driver",
    "driver",
    "mtia_runtime",
    "hip_runtime",
    "privateuse1_runtime",
}
KERNEL_CATS = {"kernel"}
MEMCPY_CATS = {"gpu_memcpy", "memcpy"}
MEMSET_CATS = {"gpu_memset", "memset"}
OTHER_DEVICE_CATS = {"mtia_ccp_events", "privateuse1_kernel"}
COMM_RE = re.compile(r"nccl|rccl", re.I)
STEP_RE = re.compile(r"^ProfilerStep#(\d+)$")
DATALOADER_RE = re.compile(r"^enumerate\(DataLoader\).*__next__")
# Calls that make the host wait for the device (the copy forms are synchronous with respect to the host).
BLOCKING = {
    "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy", "cudaMemcpy2D",
    "cudaMemset", "cuStreamSynchronize", "cuCtxSynchronize", "cuEventSynchronize", "cuMemcpyDtoH_v2",
    "cuMemcpyHtoD_v2", "hipStreamSynchronize", "hipDeviceSynchronize", "hipEventSynchronize", "hipMemcpy",
    "hipMemcpyWithStream",
}  # fmt: skip
STARTUP_HINT = re.compile(r"cudaFree|cudaMalloc|cuModuleLoad|cuCtxCreate|cuInit|cudaGetDevice|cudaSetDevice|"
                          r"cuLibraryLoad|cudaFuncGetAttributes|hipMalloc|hipFree|context", re.I)  # fmt: skip


def load(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The document's top-level keys (without the events) and its event list."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        doc = json.load(fh)
    if isinstance(doc, list):
        return {}, doc
    return {k: v for k, v in doc.items() if k != "traceEvents"}, doc.get("traceEvents", [])


class Ev:
    """One complete ('X') event with the fields used here."""

    __slots__ = ("cat", "name", "pid", "tid", "ts", "dur", "end", "args")

    def __init__(self, e: dict[str, Any]) -> None:
        self.cat = str(e.get("cat") or "").lower()
        self.name = str(e.get("name", ""))
        self.pid = str(e.get("pid"))
        self.tid = str(e.get("tid"))
        self.ts = float(e.get("ts") or 0.0)
        self.dur = float(e.get("dur") or 0.0)
        self.end = self.ts + self.dur
        self.args = e.get("args") or {}


def ms(us: float) -> str:
    """Microseconds as a millisecond string."""
    return f"{us / 1000.0:.3f}"


def pct(part: float, whole: float) -> str:
    """A share as a percentage string ("-" when the whole is 0)."""
    return f"{100.0 * part / whole:.1f}%" if whole > 0 else "-"


def short(name: str, n: int = 90) -> str:
    """A long kernel or op name cut to n characters."""
    return name if len(name) <= n else name[: n - 3] + "..."


def union_len(iv: list[tuple[float, float]]) -> float:
    """Total length covered by possibly overlapping intervals."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(iv):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s  # type: ignore[operator]
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s  # type: ignore[operator]
    return total


def merged(iv: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Overlapping intervals merged, sorted by start."""
    out: list[list[float]] = []
    for s, e in sorted(iv):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(a, b) for a, b in out]


def intersect(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Intersection of two merged, sorted interval lists."""
    i = j = 0
    out = []
    while i < len(a) and j < len(b):
        s, e = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if e > s:
            out.append((s, e))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """a minus b, both merged and sorted."""
    out = []
    j = 0
    for s, e in a:
        cur = s
        while j < len(b) and b[j][1] <= cur:
            j += 1
        k = j
        while k < len(b) and b[k][0] < e:
            if b[k][0] > cur:
                out.append((cur, b[k][0]))
            cur = max(cur, b[k][1])
            k += 1
        if cur < e:
            out.append((cur, e))
    return out


def device_class(ev: Ev) -> str | None:
    """compute / comm / memcpy / memset / other_dev for device events, else None."""
    if ev.cat in KERNEL_CATS:
        return "comm" if COMM_RE.search(ev.name) else "compute"
    if ev.cat in MEMCPY_CATS:
        return "memcpy"
    if ev.cat in MEMSET_CATS:
        return "memset"
    if ev.cat in OTHER_DEVICE_CATS:
        return "other_dev"
    return None


ORDER = ("compute", "comm", "memcpy", "memset", "other_dev")


def partition(dev: list[tuple[float, float, str]], s: float, e: float) -> dict[str, float]:
    """Split [s, e) by what the device ran: compute > comm > memcpy > memset > other > idle."""
    edges: list[tuple[float, int, str]] = []
    for a, b, c in dev:
        a, b = max(a, s), min(b, e)
        if b > a:
            edges.append((a, 1, c))
            edges.append((b, -1, c))
    edges.sort(key=lambda x: (x[0], x[1]))
    out = dict.fromkeys((*ORDER, "idle", "comm_total"), 0.0)
    active = dict.fromkeys(ORDER, 0)
    t = s
    for x, d, c in edges:
        if x > t:
            top = next((k for k in ORDER if active[k] > 0), "idle")
            out[top] += x - t
            if active["comm"] > 0:
                out["comm_total"] += x - t
            t = x
        active[c] += d
    if e > t:
        out["idle"] += e - t
    return out


def memcpy_kind(name: str) -> tuple[str, str]:
    """(direction, memory kinds) of a memcpy name such as "Memcpy HtoD (Pageable -> Device)"."""
    m = re.search(r"(HtoD|DtoH|DtoD|HtoH|PtoP|DtoA|AtoD)", name)
    k = re.search(r"\(([^)]*)\)", name)
    return (m.group(1) if m else name), (k.group(1) if k else "")


class Trace:
    """The events of one trace, indexed for the questions below."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.meta, raw = load(path)
        self.cats: collections.Counter[str] = collections.Counter()
        self.thread_names: dict[tuple[str, str], str] = {}
        self.process_names: dict[str, str] = {}
        self.cpu: list[Ev] = []
        self.rt: list[Ev] = []
        self.dev: list[Ev] = []
        self.sync_events: list[Ev] = []
        self.n_raw = len(raw)
        for e in raw:
            self.cats[str(e.get("cat"))] += 1
            if e.get("ph") == "M":
                if e.get("name") == "thread_name":
                    self.thread_names[(str(e.get("pid")), str(e.get("tid")))] = str((e.get("args") or {}).get("name"))
                elif e.get("name") == "process_name":
                    self.process_names[str(e.get("pid"))] = str((e.get("args") or {}).get("name"))
                continue
            if e.get("ph") != "X":
                continue
            ev = Ev(e)
            if ev.cat in CPU_OP_CATS:
                self.cpu.append(ev)
            elif ev.cat in RUNTIME_CATS:
                self.rt.append(ev)
            elif ev.cat == "cuda_sync":
                self.sync_events.append(ev)
            elif device_class(ev):
                self.dev.append(ev)
        self.steps = sorted((ev for ev in self.cpu if STEP_RE.match(ev.name)), key=lambda v: v.ts)
        self.dev.sort(key=lambda v: v.ts)
        self.by_corr: dict[Any, Ev] = {}
        for ev in self.rt:
            c = ev.args.get("correlation")
            if c is not None:
                self.by_corr[c] = ev
        self.threads: dict[tuple[str, str], list[Ev]] = collections.defaultdict(list)
        for ev in self.cpu:
            self.threads[(ev.pid, ev.tid)].append(ev)
        for evs in self.threads.values():
            evs.sort(key=lambda v: (v.ts, -v.dur))

    def in_steps(self, ev: Ev) -> bool:
        if not self.steps:
            return True
        return self.steps[0].ts <= ev.ts < self.steps[-1].end

    def cpu_span(self) -> tuple[float, float]:
        evs = self.cpu + self.rt
        if not evs:
            return 0.0, 0.0
        return min(v.ts for v in evs), max(v.end for v in evs)


def top_level(evs: list[Ev]) -> list[tuple[Ev, int]]:
    """(op, depth) per op of one thread, depth 0 = no enclosing op; ProfilerStep does not count as a parent."""
    out: list[tuple[Ev, int]] = []
    stack: list[Ev] = []
    for ev in evs:
        while stack and stack[-1].end <= ev.ts:
            stack.pop()
        depth = sum(1 for p in stack if not STEP_RE.match(p.name))
        out.append((ev, depth))
        stack.append(ev)
    return out


def self_times(evs: list[Ev]) -> dict[int, float]:
    """Self time of every op of one thread (its duration less its direct children), by id()."""
    res: dict[int, float] = {}
    stack: list[Ev] = []
    for ev in evs:
        while stack and stack[-1].end <= ev.ts:
            stack.pop()
        res[id(ev)] = ev.dur
        if stack:
            res[id(stack[-1])] -= min(ev.dur, stack[-1].end - ev.ts)
        stack.append(ev)
    return res


def role_hint(tr: Trace, key: tuple[str, str], tops: collections.Counter[str]) -> str:
    """A guess at a thread's role from its ops and name (printed as a hint, the reader decides)."""
    names = " ".join(tops)
    tname = tr.thread_names.get(key, "")
    if any(STEP_RE.match(v.name) for v in tr.threads[key]):
        return "loop (has ProfilerStep)"
    if any(DATALOADER_RE.match(n) for n in tops):
        return "loop (iterates the DataLoader)"
    if "autograd::engine::evaluate_function" in names:
        return "autograd backward engine"
    if "pin_memory" in names.lower() or "pin_memory" in tname.lower():
        return "pin-memory thread"
    return "?"


def print_schema(tr: Trace) -> None:
    """Top-level keys, devices, distributed info and every category with its count."""
    m = tr.meta
    print(f"== {tr.path}")
    print(f"events {tr.n_raw}; keys: {', '.join(sorted(m)) or '(bare list)'}; schemaVersion {m.get('schemaVersion')}")
    for d in m.get("deviceProperties") or []:
        print(f"  device {d.get('id')}: {d.get('name')} mem {d.get('totalGlobalMem')} SMs {d.get('numSms')}")
    if "distributedInfo" in m:
        di = m["distributedInfo"] if isinstance(m["distributedInfo"], dict) else {}
        groups = di.get("pg_config") or []
        brief = {k: v for k, v in di.items() if k != "pg_config"}
        print(f"  distributedInfo: {brief}; {len(groups)} process groups")
    print("  categories: " + ", ".join(f"{c} {n}" for c, n in tr.cats.most_common()))
    lo, hi = tr.cpu_span()
    print(
        f"  CPU span {ms(hi - lo)} ms; CPU ops {len(tr.cpu)}, runtime calls {len(tr.rt)}, device events {len(tr.dev)}"
    )


def print_threads(tr: Trace, top: int) -> None:
    """Threads by op count with their name, role hint and most frequent top-level ops."""
    print("-- threads (pid/tid: ops, name, role hint; most frequent top-level ops)")
    for key, evs in sorted(tr.threads.items(), key=lambda kv: -len(kv[1])):
        tops = collections.Counter(ev.name for ev, d in top_level(evs) if d == 0 and not STEP_RE.match(ev.name))
        busy = union_len([(v.ts, v.end) for v, d in top_level(evs) if d == 0])
        name = tr.thread_names.get(key, "")
        print(
            f"  {key[0]}/{key[1]}: {len(evs)} ops, top-level busy {ms(busy)} ms, name {name!r}, role: {role_hint(tr, key, tops)}"
        )
        for n, c in tops.most_common(top):
            print(f"      {c:6d}  {short(n, 100)}")


def dev_intervals(tr: Trace) -> list[tuple[float, float, str]]:
    """(start, end, class) of every device event."""
    return [(v.ts, v.end, device_class(v) or "other_dev") for v in tr.dev]


def clipped(evs: list[Ev], s: float, e: float) -> float:
    """Summed duration of events inside [s, e)."""
    return sum(max(0.0, min(v.end, e) - max(v.ts, s)) for v in evs)


def idle_why(tr: Trace, dev: list[tuple[float, float, str]], spans: list[tuple[float, float]]) -> dict[str, float]:
    """Device idle time in ``spans`` split by the host's state at that time, first match wins."""
    blocking = [v for v in tr.rt if v.name in BLOCKING]
    dl = [v for v in tr.cpu if DATALOADER_RE.match(v.name)]
    busy = merged([(a, b) for a, b, _ in dev])
    host = {
        "DataLoader": merged([(v.ts, v.end) for v in dl]),
        "blocking call": merged([(v.ts, v.end) for v in blocking + tr.sync_events]),
        "runtime call": merged([(v.ts, v.end) for v in tr.rt]),
    }
    why = dict.fromkeys((*host, "none of these"), 0.0)
    for s, e in spans:
        idle = subtract([(s, e)], busy)
        for k, iv in host.items():
            hit = intersect(idle, iv)
            why[k] += sum(b - a for a, b in hit)
            idle = subtract(idle, merged(hit))
        why["none of these"] += sum(b - a for a, b in idle)
    return why


def print_steps(tr: Trace) -> None:
    """Per step: wall time, the device partition, blocking calls, DataLoader time; totals and idle causes."""
    dev = dev_intervals(tr)
    if not tr.steps:
        lo, hi = tr.cpu_span()
        p = partition(dev, lo, hi)
        print(f"-- no ProfilerStep#N spans; over the CPU span ({ms(hi - lo)} ms): "
              + ", ".join(f"{k} {ms(v)} ms ({pct(v, hi - lo)})" for k, v in p.items()))  # fmt: skip
        why = idle_why(tr, dev, [(lo, hi)])
        print("  device idle while the host is in (share of the CPU span): "
              + ", ".join(f"{k} {pct(v, hi - lo)}" for k, v in why.items()))  # fmt: skip
        return
    blocking = [v for v in tr.rt if v.name in BLOCKING]
    dl = [v for v in tr.cpu if DATALOADER_RE.match(v.name)]
    print("-- steps (ms): wall | GPU compute, comm exposed, memcpy, memset, other dev, idle | comm total | "
          "blocking calls | cuda_sync events | DataLoader next")  # fmt: skip
    rows = []
    for st in tr.steps:
        p = partition(dev, st.ts, st.end)
        b = clipped(blocking, st.ts, st.end)
        sy = clipped(tr.sync_events, st.ts, st.end)
        d = clipped(dl, st.ts, st.end)
        rows.append((st.dur, p, b, d))
        print(f"  {st.name:16s} {ms(st.dur):>10s} | {ms(p['compute'])} {ms(p['comm'])} {ms(p['memcpy'])} "
              f"{ms(p['memset'])} {ms(p['other_dev'])} {ms(p['idle'])} ({pct(p['idle'], st.dur)} idle) | "
              f"{ms(p['comm_total'])} | {ms(b)} | {ms(sy)} | {ms(d)} ({pct(d, st.dur)})")  # fmt: skip
    why = idle_why(tr, dev, [(st.ts, st.end) for st in tr.steps])
    walls = [r[0] for r in rows]
    print(f"  step wall ms: median {ms(statistics.median(walls))} min {ms(min(walls))} max {ms(max(walls))}"
          f" (without the first: median {ms(statistics.median(walls[1:])) if len(walls) > 1 else '-'})")  # fmt: skip
    tot = sum(walls)
    agg = {k: sum(r[1][k] for r in rows) for k in (*ORDER, "idle", "comm_total")}
    print("  share of summed step time: " + ", ".join(f"{k} {pct(v, tot)}" for k, v in agg.items())
          + f", blocking calls {pct(sum(r[2] for r in rows), tot)}, DataLoader {pct(sum(r[3] for r in rows), tot)}")  # fmt: skip
    print("  device idle while the host is in (share of summed step time): "
          + ", ".join(f"{k} {pct(v, tot)}" for k, v in why.items()))  # fmt: skip
    gaps = [v.ts - tr.steps[i].end for i, v in enumerate(tr.steps[1:])]
    if gaps and max(gaps) > 1000:
        print(f"  note: gaps between consecutive steps up to {ms(max(gaps))} ms")


def print_memcpy(tr: Trace) -> None:
    """Copies and memsets per step by direction and memory kind, with bytes and small-copy counts."""
    cps = [v for v in tr.dev if v.cat in MEMCPY_CATS | MEMSET_CATS and tr.in_steps(v)]
    if not cps:
        print("-- memcpy/memset: none in the steps")
        return
    nsteps = max(1, len(tr.steps))
    agg: dict[tuple[str, str], list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0, 0])
    for v in cps:
        size = v.args.get("bytes")
        if size is None:
            rt = tr.by_corr.get(v.args.get("correlation"))
            size = (rt.args.get("size") or rt.args.get("bytes")) if rt else None
        size = float(size) if size not in (None, "") else 0.0
        key = memcpy_kind(v.name) if v.cat in MEMCPY_CATS else ("memset", v.name)
        a = agg[key]
        a[0] += 1
        a[1] += size
        a[2] += v.dur
        a[3] += 1 if size < 64 * 1024 else 0
    print(f"-- memcpy/memset in steps, per step ({nsteps} steps): count, MB, ms, count < 64 KiB")
    for (d, k), (n, b, t, small) in sorted(agg.items(), key=lambda kv: -kv[1][2]):
        print(
            f"  {d:6s} {k:28s} {n / nsteps:8.1f} {b / nsteps / 1e6:10.3f} MB {ms(t / nsteps)} ms  small {small / nsteps:.1f}"
        )
    # Host time in copy calls whose copy goes device-to-host (the host waits for the queue to drain).
    d2h = [tr.by_corr.get(v.args.get("correlation")) for v in cps if "DtoH" in v.name]
    d2h_rt = [r for r in d2h if r is not None]
    if d2h_rt:
        print(f"  host time in calls issuing DtoH copies: {ms(sum(r.dur for r in d2h_rt) / nsteps)} ms/step "
              f"({collections.Counter(r.name for r in d2h_rt).most_common(3)})")  # fmt: skip


def print_kernels(tr: Trace, top: int) -> None:
    """Top kernels by time in the steps, communication kernels, streams."""
    ks = [v for v in tr.dev if v.cat in KERNEL_CATS | OTHER_DEVICE_CATS and tr.in_steps(v)]
    if not ks:
        print("-- kernels: none")
        return
    nsteps = max(1, len(tr.steps))
    tot = sum(v.dur for v in ks)
    agg: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for v in ks:
        agg[v.name][0] += 1
        agg[v.name][1] += v.dur
    print(f"-- top kernels by time in steps (of {ms(tot / nsteps)} ms/step kernel time; {len(agg)} distinct)")
    for n, (c, t) in sorted(agg.items(), key=lambda kv: -kv[1][1])[:top]:
        print(
            f"  {ms(t / nsteps):>9s} ms/step {pct(t, tot):>6s} n/step {c / nsteps:6.1f} mean {t / c:9.1f} us  {short(n)}"
        )
    comm = {n: a for n, a in agg.items() if COMM_RE.search(n)}
    if comm:
        print("-- communication kernels (per step)")
        for n, (c, t) in sorted(comm.items(), key=lambda kv: -kv[1][1]):
            print(f"  {ms(t / nsteps):>9s} ms  n {c / nsteps:5.1f}  {short(n)}")
    streams = collections.Counter((v.pid, v.tid) for v in ks)
    print(f"  device pid/stream: {dict(streams.most_common(8))}")


def print_blocking(tr: Trace, top: int) -> None:
    """Runtime calls per step (blocking ones marked), cuda_sync events, DataLoader time."""
    nsteps = max(1, len(tr.steps))
    agg: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for v in tr.rt:
        if tr.in_steps(v):
            agg[v.name][0] += 1
            agg[v.name][1] += v.dur
    print(f"-- runtime calls in steps, per step (top {top}; * = blocks the host)")
    for n, (c, t) in sorted(agg.items(), key=lambda kv: -kv[1][1])[:top]:
        mark = "*" if n in BLOCKING else " "
        print(f" {mark}{ms(t / nsteps):>9s} ms  n {c / nsteps:7.1f}  {n}")
    if tr.sync_events:
        sy: dict[str, float] = collections.defaultdict(float)
        for v in tr.sync_events:
            if tr.in_steps(v):
                sy[v.name] += v.dur
        print(
            "  cuda_sync events (ms/step): "
            + ", ".join(f"{n} {ms(t / nsteps)}" for n, t in sorted(sy.items(), key=lambda kv: -kv[1]))
        )
    dl = [v for v in tr.cpu if DATALOADER_RE.match(v.name) and tr.in_steps(v)]
    if dl:
        print(f"-- DataLoader next: {len(dl)} calls, {ms(sum(v.dur for v in dl) / nsteps)} ms/step, "
              f"names {collections.Counter(v.name for v in dl).most_common(2)}")  # fmt: skip


def print_queueing(tr: Trace) -> None:
    """Delay from launch call to device start: large means the GPU is behind the host."""
    delays = []
    before = 0
    for v in tr.dev:
        rt = tr.by_corr.get(v.args.get("correlation"))
        if rt is None or not tr.in_steps(v):
            continue
        delays.append(v.ts - rt.ts)
        before += v.ts < rt.ts
    if not delays:
        print("-- launch->start delay: no correlated launches")
        return
    delays.sort()
    q = delays[int(0.9 * (len(delays) - 1))]
    print(f"-- launch->start delay of device work (us): median {statistics.median(delays):.1f}, p90 {q:.1f}, "
          f"max {delays[-1]:.1f}; {before} of {len(delays)} start before their launch call")  # fmt: skip


def print_clock(tr: Trace) -> None:
    """Device clock sanity: zero or repeated timestamps, events outside the CPU span."""
    if not tr.dev:
        print("-- clock: no device events")
        return
    lo, hi = tr.cpu_span()
    zero = sum(1 for v in tr.dev if v.ts == 0)
    zdur = sum(1 for v in tr.dev if v.dur == 0)
    distinct = len({v.ts for v in tr.dev})
    outside = sum(1 for v in tr.dev if v.ts < lo - 1e6 or v.end > hi + 1e6)
    dlo, dhi = tr.dev[0].ts, max(v.end for v in tr.dev)
    print(f"-- clock: {len(tr.dev)} device events, ts==0: {zero}, dur==0: {zdur}, distinct ts: {distinct}; "
          f"device span {ms(dhi - dlo)} ms starting {ms(dlo - lo)} ms after the first CPU event; "
          f"{outside} device events > 1 s outside the CPU span")  # fmt: skip


def print_startup(tr: Trace, top: int) -> None:
    """The longest calls before the first step (or start-up-like calls when there are no steps)."""
    lo, _ = tr.cpu_span()
    first = tr.steps[0].ts if tr.steps else None
    if first is None:
        pre = [v for v in tr.rt + tr.cpu if STARTUP_HINT.search(v.name)]
        label = "whole trace (no steps)"
    else:
        pre = [v for v in tr.rt + tr.cpu if v.ts < first]
        label = f"before the first step ({ms(first - lo)} ms after the trace starts)"
    agg: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for v in pre:
        agg[v.name][0] += 1
        agg[v.name][1] += v.dur
    rows = sorted(agg.items(), key=lambda kv: -kv[1][1])[:top]
    if rows:
        print(f"-- start-up, {label}: longest calls/ops")
        for n, (c, t) in rows:
            print(f"  {ms(t):>10s} ms  n {int(c):5d}  {short(n)}")


def print_self_ops(tr: Trace, top: int) -> None:
    """CPU ops by self time inside the steps, per thread."""
    agg: dict[tuple[str, str], list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for key, evs in tr.threads.items():
        st = self_times(evs)
        for v in evs:
            if tr.in_steps(v) and not STEP_RE.match(v.name):
                agg[(key[1], v.name)][0] += 1
                agg[(key[1], v.name)][1] += st[id(v)]
    nsteps = max(1, len(tr.steps))
    print(f"-- CPU ops by self time in steps, per step (top {top}): tid, ms, calls")
    for (tid, n), (c, t) in sorted(agg.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"  {tid:>12s} {ms(t / nsteps):>9s} ms n {c / nsteps:7.1f}  {short(n)}")


def print_gaps(tr: Trace, n: int) -> None:
    """Device idle gaps inside steps by length, and the longest with the host ops open in them."""
    if not tr.steps or not tr.dev or n <= 0:
        return
    busy = sorted((v.ts, v.end) for v in tr.dev)
    merged: list[list[float]] = []
    for s, e in busy:
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    gaps = []
    for st in tr.steps:
        i = bisect.bisect_left([m[0] for m in merged], st.ts)
        prev = st.ts
        for s, e in merged[max(0, i - 1) :]:
            if s >= st.end:
                break
            if s > prev:
                gaps.append((s - prev, prev, st.name))
            prev = max(prev, e)
        if st.end > prev:
            gaps.append((st.end - prev, prev, st.name))
    gaps.sort(reverse=True)
    buckets = [(10.0, "<=10us"), (100.0, "10-100us"), (1000.0, "0.1-1ms"), (float("inf"), ">1ms")]
    hist = {label: [0, 0.0] for _, label in buckets}
    for length, _, _ in gaps:
        label = next(lb for lim, lb in buckets if length <= lim)
        hist[label][0] += 1
        hist[label][1] += length
    nsteps = len(tr.steps)
    print(
        "-- GPU idle gaps inside steps by length, per step: "
        + ", ".join(f"{lb} n {c / nsteps:.1f} {ms(t / nsteps)} ms" for lb, (c, t) in hist.items())
    )
    print(f"-- longest GPU idle gaps inside steps (top {n}) and the innermost host ops open at the gap's middle")
    for length, start, sname in gaps[:n]:
        mid = start + length / 2
        open_ops = []
        for key, evs in tr.threads.items():
            inner = [v for v in evs if v.ts <= mid < v.end and not STEP_RE.match(v.name)]
            if inner:
                open_ops.append(f"{key[1]}: {short(inner[-1].name, 60)}")
        rts = [v.name for v in tr.rt if v.ts <= mid < v.end]
        print(
            f"  {ms(length):>9s} ms in {sname} at +{ms(start - tr.steps[0].ts)} ms | {'; '.join(open_ops[:3])} | rt {rts[:2]}"
        )


def print_thread(tr: Trace, tid: str, step: int) -> None:
    """The top-level ops of one thread in one step, with offsets and durations."""
    evs = [v for (p, t), lst in tr.threads.items() if t == tid for v in lst]
    if not evs:
        print(f"-- thread {tid}: no ops")
        return
    evs.sort(key=lambda v: (v.ts, -v.dur))
    s, e = (tr.steps[step].ts, tr.steps[step].end) if tr.steps else (evs[0].ts, evs[-1].end)
    print(f"-- thread {tid}, top-level ops in step index {step}")
    for v, d in top_level(evs):
        if d == 0 and s <= v.ts < e:
            print(f"  +{ms(v.ts - s):>10s} {ms(v.dur):>9s} ms  {short(v.name, 100)}")


def print_all(tr: Trace, args: argparse.Namespace) -> None:
    """Print every section for one trace."""
    print_schema(tr)
    print_threads(tr, args.top)
    print_steps(tr)
    print_kernels(tr, args.top)
    print_memcpy(tr)
    print_blocking(tr, args.top)
    print_queueing(tr)
    print_clock(tr)
    print_startup(tr, args.top)
    print_self_ops(tr, args.top)
    print_gaps(tr, args.gaps)
    if args.thread:
        print_thread(tr, args.thread, args.step)


def main(argv: list[str] | None = None) -> int:
    """Command line: a trace or a folder of per-rank traces."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path", type=Path, help="a trace (.json / .json.gz) or a folder of per-rank traces")
    ap.add_argument("--top", type=int, default=10, help="rows per table (default 10)")
    ap.add_argument("--thread", default="", help="list the top-level ops of this tid in --step")
    ap.add_argument("--step", type=int, default=0, help="step index for --thread (default 0)")
    ap.add_argument("--gaps", type=int, default=5, help="longest GPU idle gaps to show (default 5)")
    args = ap.parse_args(argv)
    if not args.path.exists():
        print(f"read_trace: {args.path} does not exist; give a trace file or a folder of traces", file=sys.stderr)
        return 2
    files = (
        sorted(p for p in args.path.iterdir() if p.name.endswith((".json", ".json.gz")))
        if args.path.is_dir()
        else [args.path]
    )
    rows = []
    for f in files:
        try:
            tr = Trace(f)
        except (OSError, EOFError, ValueError, AttributeError) as exc:
            print(
                f"read_trace: {f}: not a readable Kineto trace ({exc.__class__.__name__}: {str(exc)[:120]})",
                file=sys.stderr,
            )
            return 2
        print_all(tr, args)
        rank = (tr.meta.get("distributedInfo") or {}).get("rank", "?")
        walls = [s.dur for s in tr.steps]
        dev = dev_intervals(tr)
        comm = sum(partition(dev, s.ts, s.end)["comm"] for s in tr.steps)
        rows.append((f.name, rank, len(walls), statistics.median(walls) if walls else 0.0, comm / max(1, len(walls))))
        print()
    if len(files) > 1:
        print("== ranks: file, rank, steps, median step ms, exposed comm ms/step")
        for name, rank, n, med, comm in rows:
            print(f"  {name:50s} rank {rank} steps {n} median {ms(med)} comm exposed {ms(comm)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
