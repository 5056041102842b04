"""Record small real torch.profiler traces on the CPU for the analyzer tests (helper, not a test),
and find the GPU fixtures recorded by ``tests/fixtures/make_analyzer_traces_gpu.py``."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

GPU_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "gpu"


def record(path: Path, step_fn: Callable[[int], None], steps: int = 3, stacks: bool = True, warmup: int = 1) -> Path:
    """Run ``step_fn(i)`` for warmup + steps iterations under torch.profiler with ProfilerStep
    markers, shapes and (optionally) Python stacks; export the chrome trace to ``path``."""
    from torch.profiler import ProfilerActivity, profile, schedule

    with profile(
        activities=[ProfilerActivity.CPU],
        schedule=schedule(wait=0, warmup=warmup, active=steps, repeat=1),
        record_shapes=True,
        with_stack=stacks,
        with_flops=True,
    ) as prof:
        for i in range(warmup + steps):
            step_fn(i)
            prof.step()
    prof.export_chrome_trace(str(path))
    return path


def context(path: Path):  # -> AnalysisContext
    from stallscope.analyzers.context import load_context

    return load_context(path)


def run(name: str, ctx) -> list:  # type: ignore[no-untyped-def]
    from stallscope.analyzers.base import registered_analyzers

    cls = registered_analyzers([name])[name]
    return cls().analyze(ctx)


def gpu_fixture(name: str):  # -> AnalysisContext
    """Load a committed GPU fixture, or skip the test until the lead has recorded it."""
    path = GPU_FIXTURES / f"{name}.json.gz"
    if not path.is_file():
        pytest.skip(f"GPU fixture {path.name} not recorded yet (run tests/fixtures/make_analyzer_traces_gpu.py on the GPU)")
    return context(path)
