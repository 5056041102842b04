"""A slow link is found beside a straggler, on runs built the way bench/scale_1024.py builds them.

The runs are copies of the real 2-rank DDP traces recorded on two H200s
(``tests/fixtures/gpu/ddp_h200/healthy``), made by the bench's own ``build_run`` with
``FULL_RANKS + 4`` ranks, so that the last four are read from their compact tables as a
1,024-rank diagnose reads them (the tables written by ``compact_trace``, what the profiler runs at
the end of each rank's window).

A slow link in one process group paces the whole collective: every rank leaves an all-reduce
together, so every rank's transfer takes as long as the slowest link allows, and no rank's
collective is longer than its peers' for it (docs/analyzers.md, communication). The finding is
the group's (``comm-slow-link``, C4's communication-slow), measured on the last arriver of each
collective, who waited for nobody, so a straggler in the same run neither hides it nor fakes it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from stallscope.analyzers.builtin.communication import Communication
from stallscope.analyzers.compact import FULL_RANKS
from stallscope.analyzers.compaction import compact_trace
from stallscope.analyzers.context import load_context

ROOT = Path(__file__).resolve().parents[1]
WORLD = FULL_RANKS + 4


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("scale_1024", ROOT / "bench" / "scale_1024.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _diagnose(folder: Path) -> dict[str, Any]:
    """Compact every rank's trace as the profiler does, then the communication analyzer's findings."""
    for trace in folder.glob("rank*/trace.json.gz"):
        compact_trace(trace)
    ctx = load_context(folder)
    assert [rd.rank for rd in ctx.ranks] == list(range(WORLD))
    assert all(bool(rd.meta.get("compacted")) == (rd.rank >= FULL_RANKS) for rd in ctx.ranks)
    return {f.id: f for f in Communication().analyze(ctx)}


Run = tuple[dict[str, Any], dict[str, Any]]  # (planted ranks, findings by id)
Runs = Callable[[str], Run]  # a run by name, built on first use


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    bench = _bench()
    plants = {
        "both": {},  # the bench's run: a straggler and a slow link
        "slow-link": {"straggler": False},
        "healthy": {"straggler": False, "slow_link": False},
    }
    built: dict[str, Run] = {}

    def get(name: str) -> Run:
        if name not in built:
            folder = tmp_path_factory.mktemp(name)
            planted = bench.build_run(folder, WORLD, **plants[name])
            built[name] = (planted, _diagnose(folder))
        return built[name]

    return get


def _busbw(found: dict[str, Any]) -> float:
    return float(found["comm-bandwidth"].evidence["by_collective"]["allreduce"]["median_busbw_gbps"])


def test_slow_link_is_found_beside_the_straggler(runs: Runs) -> None:
    planted, found = runs("both")
    assert found["comm-straggler"].where["ranks"] == [planted["straggler"]]
    assert "comm-slow-link" in found, sorted(found)
    slow = found["comm-slow-link"]
    assert slow.evidence["c4_class"] == "communication-slow"
    assert slow.where["ranks"] == list(range(WORLD))  # the group whose collectives the link paces
    # measured on the last arriver: the straggler's peers' waits do not lower the bandwidth
    assert _busbw(found) == pytest.approx(_busbw(runs("slow-link")[1]), rel=0.1)


def test_slow_link_alone_blames_no_rank(runs: Runs) -> None:
    _, found = runs("slow-link")
    assert "comm-slow-link" in found, sorted(found)
    assert "comm-straggler" not in found, found.get("comm-straggler")


def test_healthy_twin_names_no_slow_link(runs: Runs) -> None:
    _, found = runs("healthy")
    assert "comm-slow-link" not in found, found.get("comm-slow-link")
    assert "comm-straggler" not in found, found.get("comm-straggler")
    # the twin's link runs at the measured pair's speed, the planted one at a fraction of it
    _, slow = runs("slow-link")
    assert _busbw(slow) < 0.75 * _busbw(found)


def test_a_real_straggler_neither_hides_nor_fakes_a_slow_link() -> None:
    """On the H200 pair recorded with extra compute on rank 1 (bench/distributed/run_gpu.py): its
    peer's all-reduces hold the waits, the last arriver's do not, so the group's bus bandwidth is
    the healthy run's."""
    fixtures = ROOT / "tests" / "fixtures" / "gpu" / "ddp_h200"
    found = {
        name: {f.id: f for f in Communication().analyze(load_context(fixtures / name))}
        for name in ("healthy", "straggler_compute")
    }
    assert "comm-straggler" in found["straggler_compute"]
    assert "comm-slow-link" not in found["straggler_compute"]
    assert _busbw(found["straggler_compute"]) == pytest.approx(_busbw(found["healthy"]), rel=0.1)


def test_a_group_over_several_hosts_is_not_judged_against_one_hosts_link(tmp_path: Path) -> None:
    """The peak is two H200s of one host over NVLink; ranks on several hosts talk over network
    cards at a fraction of it. The same planted run, its meta saying the ranks span two hosts:
    no slow link is claimed from that peak."""
    _bench().build_run(tmp_path, WORLD, straggler=False)
    for trace in tmp_path.glob("rank*/trace.json.gz"):
        compact_trace(trace)
    ctx = load_context(tmp_path)
    assert "comm-slow-link" in {f.id for f in Communication().analyze(ctx)}  # one host: found
    ctx.meta["per_rank"] = {r: {"host": f"node{r % 2}"} for r in range(WORLD)}
    assert "comm-slow-link" not in {f.id for f in Communication().analyze(ctx)}
