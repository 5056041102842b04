"""OpenOps (many lookups of the CPU ops open at an instant) against the plain scan of every op, on
real traces: every launch of a recorded H200 training trace, and instants inside and between ops
(including the 1 ms edges of its short-op window)."""

from __future__ import annotations

import numpy as np
import pytest

from stallscope.analyzers.builtin import _common as c
from stallscope.analyzers.model import Kind
from tests.analyzer_traces import GPU_FIXTURES, context


@pytest.mark.parametrize(
    "name", ["train.pt.trace.json.gz", "sync_item_per_layer.json.gz", "runs/h200_cnn_memory/rank0/trace.json.gz"]
)
def test_open_ops_finds_what_the_scan_finds(name: str) -> None:
    ev = context(GPU_FIXTURES / name).ranks[0].events
    ops = ev.rows_of_kind(Kind.CPU_OP)
    assert len(ops) > 100
    index = c.OpenOps(ev)
    rng = np.random.default_rng(0)
    launches = ev.rows_of_kind(Kind.RUNTIME)
    probes = [(int(ev.tid[r]), int(ev.ts_ns[r])) for r in launches[:: max(1, len(launches) // 300)]]
    for r in rng.choice(ops, 300):  # op edges, and just past the short-op window of each op's start
        tid, t0, t1 = int(ev.tid[r]), int(ev.ts_ns[r]), int(ev.ts_ns[r] + ev.dur_ns[r])
        probes += [(tid, t0), (tid, t1), (tid, t1 + 1), (tid, t0 + c.OpenOps.SHORT_NS + 1), (tid, (t0 + t1) // 2)]
    nested = 0
    for tid, t in probes:
        want = c.enclosing_ops(ev, tid, t, ops)
        got = index.at(tid, t)
        assert got.tolist() == want.tolist(), (tid, t)
        nested += len(want) > 1
    assert nested > 50  # the probes reach nested ops, not only empty answers
    if "h200_cnn" in name:  # ops over 1 ms (backward, optimizer) take the whole-check path
        assert any(len(long) for *_, long in index._by_tid.values())
