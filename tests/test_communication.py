"""The communication analyzer on real 2-rank gloo runs captured by `stallscope profile -- torchrun`."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from analyzers.builtin.communication import Communication, _bus_factor, match_instances, collectives_of
from analyzers.loader import load_context

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "distributed" / "ddp_train.py"

pytestmark = pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")


def _profile(tmp_path: Path, plant: str, factor: float) -> Path:
    out = tmp_path / f"run-{plant}"
    cmd = [sys.executable, str(ROOT / "cli.py"), "profile", "-q", "--no-diagnose", "-o", str(out), "--skip", "3",
           "--steps", "4", "--", "torchrun", "--nproc-per-node", "2", str(SCRIPT), "--steps", "10", "--dim", "256",
           "--plant", plant, "--slow-factor", str(factor)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def _findings(run: Path) -> dict[str, object]:
    ctx = load_context(run)
    assert [r.rank for r in ctx.ranks] == [0, 1]
    return {f.id: f for f in Communication().analyze(ctx)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ddp")
    return {plant: _profile(tmp, plant, factor) for plant, factor in (("none", 1.0), ("compute", 3.0), ("data", 8.0))}


def test_collectives_match_across_ranks(runs: dict[str, Path]) -> None:
    ctx = load_context(runs["none"])
    per_rank = {rd.rank: collectives_of(rd, 2) for rd in ctx.ranks}
    assert len(per_rank[0]) == len(per_rank[1]) > 0
    inst = match_instances(per_rank)
    assert len(inst) == len(per_rank[0])
    assert all(c.name == "allreduce" and c.nbytes > 0 for i in inst for c in i.values())


def test_compute_straggler_is_named_with_its_cause(runs: dict[str, Path]) -> None:
    f = _findings(runs["compute"])["comm-straggler"]
    assert f.evidence["straggler_rank"] == 1
    assert f.evidence["cause"] == "compute"
    assert f.evidence["peer_wait_pct_of_step"] >= 10.0
    assert f.severity.value in ("medium", "high")


def test_data_straggler_is_named_with_its_cause(runs: dict[str, Path]) -> None:
    f = _findings(runs["data"])["comm-straggler"]
    assert f.evidence["straggler_rank"] == 1
    assert f.evidence["cause"] == "data"
    assert "dataloader-workers" in f.fixes


def test_healthy_run_names_no_straggler(runs: dict[str, Path]) -> None:
    found = _findings(runs["none"])
    assert "comm-straggler" not in found


def test_bus_bandwidth_factors_follow_nccl_tests() -> None:
    assert _bus_factor("allreduce", 2) == pytest.approx(1.0)
    assert _bus_factor("allreduce", 8) == pytest.approx(1.75)
    assert _bus_factor("allgather", 4) == pytest.approx(0.75)
    assert _bus_factor("broadcast", 8) == 1.0


def test_chance_lateness_is_not_significant() -> None:
    from analyzers.builtin.communication import late_by_chance_p

    assert late_by_chance_p(6, 8, 2) > 0.1
    assert late_by_chance_p(8, 8, 2) < 0.01
    assert late_by_chance_p(3, 8, 8) > late_by_chance_p(6, 8, 8)
