"""Analyzers' step window covers the GPU work the steps launched (real H200 trace)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stallscope.analyzers.builtin._common import window_ns
from stallscope.analyzers.context import load_context
from stallscope.analyzers.model import GPU_KINDS

TRAIN = Path(__file__).resolve().parent / "fixtures" / "gpu" / "train.pt.trace.json.gz"


@pytest.mark.skipif(not TRAIN.is_file(), reason="GPU fixture not recorded")
def test_window_ends_at_the_last_gpu_work_of_the_steps() -> None:
    rd = load_context(TRAIN).ranks[0]
    ev = rd.events
    total, n = window_ns(rd)
    assert n == len(rd.steps) > 0
    cpu = sum(s.end_ns - s.start_ns for s in rd.steps)
    gpu = np.flatnonzero(np.isin(ev.kind, np.asarray(GPU_KINDS, dtype=ev.kind.dtype)) & (ev.step >= 0))
    gpu_end = int((ev.ts_ns[gpu] + ev.dur_ns[gpu]).max())
    assert total >= cpu
    assert total >= gpu_end - rd.steps[0].start_ns
    assert total == max(cpu, max(rd.steps[-1].end_ns, gpu_end) - rd.steps[0].start_ns)
