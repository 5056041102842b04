"""What one CUDA event per step costs a launch-bound training loop (microseconds per step).

    python3 bench/event_cost_gpu.py [--steps 20000]     # on the GPU machine, stallscope installed; writes $OUT/event-cost.yaml

The small MLP of bench/profile_overhead_workload.py runs without a synchronize per step (the host
runs ahead, as a real loop does). Steps alternate: even steps plain, odd steps plus one variant of
the per-step CUDA work the light telemetry does, so slow drift of the host (block medians of one
process differ by +-10 % on the H200 host) hits both halves alike. Per variant: median odd step
minus median even step. Variants: a timing event recorded from a pool; the same with a thread
reading ``elapsed_time`` of finished events at 25 Hz (the sampler's share); an event without
timing; the event every 4th step only.
"""
from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the workloads next to this script

import torch  # noqa: E402
from overhead_components_gpu import write_figures  # noqa: E402
from profile_overhead_workload import mlp  # noqa: E402
from recorded import gpu_driver, recorded_command  # noqa: E402 - bench/recorded.py, next to this script


class EventRecorder:
    """One event per call, recycled once a reader has read it (as the recorder does)."""

    def __init__(self, timing: bool, poll_hz: float = 0.0) -> None:
        self.timing = timing
        self.pool: list = []
        self.pending: deque = deque()
        self.stream = torch.cuda.current_stream()
        self.last = None
        self.read = 0
        self.stop = threading.Event()
        self.thread = None
        if poll_hz:
            self.thread = threading.Thread(target=self._poll_loop, args=(1.0 / poll_hz,), daemon=True)
            self.thread.start()

    def record(self) -> None:
        ev = self.pool.pop() if self.pool else torch.cuda.Event(enable_timing=self.timing)
        ev.record(self.stream)
        if self.last is not None:
            self.pending.append((self.last, ev))
        self.last = ev

    def poll(self) -> None:
        if not self.pending or not self.pending[-1][1].query():
            return
        while self.pending:
            start, end = self.pending.popleft()
            if self.timing:
                start.elapsed_time(end)
            self.read += 1
            self.pool.append(start)

    def _poll_loop(self, period: float) -> None:
        while not self.stop.wait(period):
            self.poll()

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        torch.cuda.synchronize()
        self.poll()


def medians(plain: list, plus: list) -> dict:
    """Median plain step, median step with the added work, and their difference (us)."""
    a, b = statistics.median(plain), statistics.median(plus)
    return {"plain_us": round(a, 2), "with_us": round(b, 2), "added_us": round(b - a, 2)}


def alternate(step, steps: int, extra, period: int = 2) -> dict:
    """Median host time (us) of plain steps and of the steps followed by ``extra()`` (every ``period``-th)."""
    plain, plus = [], []
    for i in range(steps):
        t0 = time.perf_counter()
        step()
        with_extra = i % period == period - 1
        if with_extra:
            extra()
        dt_us = (time.perf_counter() - t0) * 1e6
        (plus if with_extra else plain).append(dt_us)
    torch.cuda.synchronize()
    return medians(plain, plus)


def session_alternating(step, steps: int) -> dict:
    """A light Session whose recorder is live on odd steps only: the hooks' and the step
    bookkeeping's cost on the training thread (the sampler thread runs throughout, so its share
    falls on both halves and is not in this figure)."""
    from stallscope.profiler import Session

    plain, plus = [], []
    with Session(out=tempfile.mkdtemp(prefix="event-cost-"), skip=10**9, steps=1, command=["event-cost"]) as s:
        rec = s.recorder
        for i in range(steps):
            rec.disabled = i % 2 == 0
            t0 = time.perf_counter()
            step()
            (plus if i % 2 else plain).append((time.perf_counter() - t0) * 1e6)
        rec.disabled = False
    return medians(plain, plus)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--only", default="", help="comma-separated figures to measure (default: all)")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))

    def wanted(name: str) -> bool:
        return not only or name in only

    if not torch.cuda.is_available():
        raise SystemExit("event_cost_gpu.py needs a CUDA GPU")
    torch.manual_seed(0)
    step = mlp("cuda", small=False)
    for _ in range(500):
        step()
    torch.cuda.synchronize()
    res: dict = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": recorded_command([sys.executable, __file__, *sys.argv[1:]]),
        "torch": str(torch.__version__), "gpu": torch.cuda.get_device_name(0), "driver": gpu_driver(),
        "steps_per_variant": args.steps,
        "unit": "microseconds per step (host, no synchronize per step)",
    }
    variants = {
        "timing_event": dict(timing=True),
        "timing_event_read_at_25hz": dict(timing=True, poll_hz=25.0),
        "event_without_timing": dict(timing=False),
    }
    if wanted("nothing_added"):
        res["nothing_added"] = alternate(step, args.steps, lambda: None)
    for name, kw in variants.items():
        if not wanted(name):
            continue
        rec = EventRecorder(**kw)
        res[name] = alternate(step, args.steps, rec.record)
        rec.close()
        print(f"{name:28s} {res[name]}", flush=True)
    if wanted("timing_event_every_4th_step_read_at_25hz"):
        rec = EventRecorder(timing=True, poll_hz=25.0)
        res["timing_event_every_4th_step_read_at_25hz"] = alternate(step, args.steps, rec.record, period=4)
        rec.close()
    if wanted("light_session_training_thread"):
        res["light_session_training_thread"] = session_alternating(step, args.steps)
    write_figures(res, "event-cost.yaml")


if __name__ == "__main__":
    main()
