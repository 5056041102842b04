"""What one step of light telemetry costs the host, piece by piece (microseconds per call).

    python3 bench/overhead_components_gpu.py     # on the GPU machine, stallscope installed; writes $OUT/overhead-components.yaml

An optimizer over one tiny CPU tensor is stepped back to back (about 10-30 us a step), bare and
inside a light ``stallscope.Session`` (window never started), with the sampler at 25 Hz and
nearly off (0.1 Hz), so the step hooks' cost on the training thread and the sampler thread's
share of the GIL separate; the CUDA calls the recorder makes per step are timed alone. Each
figure is the median of 5 repetitions of 20000 calls.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from recorded import gpu_driver  # bench/recorded.py, next to this script
from stallscope.profiler import Session
from stallscope.profiler.common import write_yaml


def per_call_us(fn: Callable[[], Any], n: int = 20000, reps: int = 5) -> float:
    for _ in range(n // 10):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t0) / n * 1e6)
    return round(statistics.median(out), 3)


def tiny_optimizer() -> torch.optim.Optimizer:
    """An optimizer over one tiny CPU tensor: its step is almost only the step hooks' path."""
    p = torch.nn.Parameter(torch.zeros(1))
    p.grad = torch.zeros(1)
    return torch.optim.SGD([p], lr=0.0)


def main() -> None:
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.init()
        torch.zeros(1, device="cuda")
    opt = tiny_optimizer()
    work = Path(tempfile.mkdtemp(prefix="components-"))
    res: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python3 bench/overhead_components_gpu.py",
        "torch": str(torch.__version__),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "driver": gpu_driver(),
        "unit": "microseconds per call",
    }
    res["optimizer_step_bare_us"] = per_call_us(opt.step)
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    h1 = register_optimizer_step_pre_hook(lambda *a: None)
    h2 = register_optimizer_step_post_hook(lambda *a: None)
    res["optimizer_step_two_empty_global_hooks_us"] = per_call_us(opt.step)
    res["torch_compiler_is_compiling_us"] = per_call_us(torch.compiler.is_compiling)
    res["time_ns_us"] = per_call_us(time.time_ns)
    h1.remove()
    h2.remove()
    if cuda:
        evs = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
        i = [0]

        def record() -> None:
            i[0] ^= 1
            evs[i[0]].record()

        res["cuda_event_record_us"] = per_call_us(record)
        res["cuda_current_stream_us"] = per_call_us(torch.cuda.current_stream)
        stream = torch.cuda.current_stream()

        def record_on_known_stream() -> None:
            i[0] ^= 1
            evs[i[0]].record(stream)

        res["cuda_event_record_given_stream_us"] = per_call_us(record_on_known_stream)
        torch.cuda.synchronize()
        res["cuda_event_query_us"] = per_call_us(evs[0].query)
        res["cuda_event_elapsed_time_us"] = per_call_us(lambda: evs[0].elapsed_time(evs[1]))
        res["cuda_event_create_us"] = per_call_us(lambda: torch.cuda.Event(enable_timing=True), n=2000)
    for label, hz in (("sampler_off", 0.1), ("sampler_25hz", 25.0)):
        with Session(out=work / label, skip=10**9, steps=1, sample_hz=hz, command=["components"]) as s:
            res[f"optimizer_step_light_{label}_us"] = per_call_us(opt.step)
            rec = s.recorder
            if label == "sampler_25hz" and rec is not None:
                res["recorder_boundary_us"] = per_call_us(lambda: rec.boundary("optimizer"))

                gpu = rec.gpu

                def record_and_return() -> None:
                    ev = gpu.record()
                    if ev is not None:
                        gpu.pool.append(ev)

                res["recorder_record_event_pooled_us"] = per_call_us(record_and_return)
                record_event = rec.record_event
                rec.record_event = None  # the same path without the per-step CUDA event
                try:
                    res["optimizer_step_light_no_events_us"] = per_call_us(opt.step)
                finally:
                    rec.record_event = record_event
                rec.boundary = lambda *a, **k: None  # the hooks and their guards alone
                try:
                    res["optimizer_step_light_hooks_only_us"] = per_call_us(opt.step)
                finally:
                    del rec.boundary  # the class's method again
            if label == "sampler_25hz" and rec is not None and rec.sampler is not None:
                res["sampler_sample_once_us"] = per_call_us(rec.sampler.sample_once, n=200)
                res["sampler_tick_us"] = per_call_us(rec.upkeep.tick, n=200)
    bare = res["optimizer_step_bare_us"]
    res["light_added_us_per_step_sampler_off"] = round(res["optimizer_step_light_sampler_off_us"] - bare, 3)
    res["light_added_us_per_step_sampler_25hz"] = round(res["optimizer_step_light_sampler_25hz_us"] - bare, 3)
    write_figures(res, "overhead-components.yaml")


def write_figures(res: dict, name: str) -> Path:
    """Write ``res`` as $OUT/``name`` (a temp folder without $OUT) and print it, a figure a line."""
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="stallscope-bench-"))
    if os.environ.get("BENCH_REV"):
        res["code"] = os.environ["BENCH_REV"]  # the commit measured (the device copy has no .git)
    path = write_yaml(out / name, res)
    for k, v in res.items():
        print(f"{k:48s} {v}")
    print(f"written: {path}")
    return path


if __name__ == "__main__":
    main()
