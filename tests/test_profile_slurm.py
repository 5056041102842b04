"""Tasks started by SLURM's srun (no torchrun) get their rank folder from SLURM_PROCID."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_srun_tasks_write_their_own_rank_folders_into_one_run_directory(tmp_path: Path) -> None:
    out = tmp_path / "run"
    procs = []
    for task in (0, 1):
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
        env.update(SLURM_PROCID=str(task), SLURM_LOCALID=str(task), SLURM_NTASKS="2")
        procs.append(subprocess.Popen([sys.executable, "-m", "stallscope.cli", "profile", "-q", "--no-diagnose", "-o", str(out),
                                       "--", sys.executable, str(ROOT / "tests" / "workloads" / "infer_tiny.py")],
                                      env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-1500:]
    assert (out / "rank0" / "steps.csv").is_file() and (out / "rank1" / "steps.csv").is_file()
    from stallscope.analyzers.context import load_context

    assert [r.rank for r in load_context(out).ranks] == [0, 1]
