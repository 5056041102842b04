"""A SIGKILL of `stallscope profile` leaves the run marked `orphaned` by the target, which trains on.

The watch itself (ParentWatch, mark_orphaned) on real processes, then end to end: a profiled
tiny training loop whose `profile` process is killed, and a normal run that never says orphaned.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from stallscope.profiler import runformat
from stallscope.profiler.upkeep import ParentWatch, mark_orphaned

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "tests" / "workloads" / "train_tiny.py"
DDP = ROOT / "tests" / "workloads" / "ddp_tiny.py"

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


def _env() -> dict:
    env = dict(os.environ)
    env.pop("STALLSCOPE_RUN_DIR", None)
    env.pop("STALLSCOPE_PARENT_PID", None)
    return env


def _wait_for(cond, timeout: float, what: str, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _meta(run: Path) -> dict:
    try:
        return yaml.safe_load((run / "meta.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _steps(run: Path) -> list[int]:
    try:
        with (run / "rank0" / "steps.csv").open(newline="") as fh:
            return [int(r["step"]) for r in csv.DictReader(fh)]
    except (OSError, KeyError, ValueError):
        return []


def _last_printed_step(log: Path) -> int:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("step ")]
    return int(lines[-1].split()[1]) if lines else -1


def _target_pid(parent: int, run: Path) -> int:
    """The target's pid: the `profile` process's child, else the pid rank.yaml records."""
    try:
        return int(Path(f"/proc/{parent}/task/{parent}/children").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return int(_wait_for(lambda: runformat.read_rank_info(run / "rank0").get("pid"), 60, "rank.yaml"))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rfind(")") + 2] not in "ZX"


def test_parent_watch_on_live_reaped_zombie_and_reused_pids() -> None:
    assert not ParentWatch(os.getppid()).gone()
    assert not ParentWatch(os.getpid()).gone()  # any live process, not only the direct parent
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    watch = ParentWatch(child.pid)
    _wait_for(lambda: not _alive(child.pid), 60, "the child to exit")
    assert watch.gone(), "an exited, not yet reaped process (zombie) counts as gone"
    child.wait()
    assert watch.gone()
    reused = ParentWatch(os.getpid())
    reused.start = "1"  # another start time under the same pid: a reused pid
    assert reused.gone()


def test_mark_orphaned_only_while_running(tmp_path: Path) -> None:
    running = {
        "schema_version": 1,
        "exit": {"code": None, "signal": None, "status": "running", "error": None},
        "notices": ["an earlier notice"],
    }
    runformat.write_meta(tmp_path, running)
    (tmp_path / "rank0").mkdir()
    assert mark_orphaned(tmp_path, 4321)
    meta = runformat.read_meta(tmp_path)
    assert meta["exit"]["status"] == "orphaned" and "4321" in meta["exit"]["error"]
    assert meta["exit"]["orphaned_utc"].endswith("Z") and meta["ranks"] == [0]
    assert meta["notices"][0].startswith("orphaned run:") and meta["notices"][1] == "an earlier notice"
    assert not mark_orphaned(tmp_path, 4321)  # already orphaned: left alone
    assert runformat.read_meta(tmp_path)["notices"] == meta["notices"]
    done = {**running, "exit": {"code": 0, "signal": None, "status": "ok", "error": None}}
    runformat.write_meta(tmp_path, done)
    assert not mark_orphaned(tmp_path, 4321)
    assert runformat.read_meta(tmp_path)["exit"]["status"] == "ok"


def test_sigkill_of_profile_leaves_an_orphaned_run_and_the_target_training(tmp_path: Path) -> None:
    run, log = tmp_path / "run", tmp_path / "target.out"
    opts = ["-q", "--no-diagnose", "--out", str(run), "--skip", "2", "--steps", "2"]
    target_cmd = [str(TRAIN), "--steps", "3000", "--sleep-ms", "20", "--print"]
    argv = [sys.executable, "-m", "stallscope.cli", "profile", *opts, "--", sys.executable, *target_cmd]
    with log.open("w") as out:
        parent = subprocess.Popen(argv, cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT)
    target = -1
    try:
        _wait_for(lambda: _last_printed_step(log) >= 30, 240, "the target to reach step 30")
        target = _target_pid(parent.pid, run)
        assert runformat.read_meta(run)["exit"]["status"] == "running"
        last = _last_printed_step(log)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)

        meta = _wait_for(
            lambda: (m := _meta(run)).get("exit", {}).get("status") == "orphaned" and m, 60, "meta.yaml to say orphaned"
        )
        assert str(parent.pid) in meta["exit"]["error"] and meta["exit"]["orphaned_utc"]
        assert meta["notices"][0].startswith("orphaned run:") and meta["ranks"] == [0]
        assert set(range(last + 1)) <= set(_steps(run)), "rows of the steps before the kill are missing"
        assert not (run / "rank0" / runformat.STATUS).exists(), "the heartbeat has no reader any more"
        info = yaml.safe_load((run / "rank0" / "rank.yaml").read_text())
        assert any(n.startswith("orphaned run:") for n in info["notices"])

        # the user's training goes on, and its rows keep reaching steps.csv
        at_orphan = max(_steps(run))
        _wait_for(lambda: max(_steps(run)) > at_orphan + 20, 60, "rows after the orphaning")
        assert _alive(target)

        diag = subprocess.run(
            [sys.executable, "-m", "stallscope.cli", "diagnose", str(run), "--format", "json"],
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert diag.returncode == 0, diag.stderr[-2000:]
        notices = json.loads(diag.stdout)["notices"]
        assert sum(n.startswith("orphaned run:") for n in notices) == 1, notices
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if target > 0 and _alive(target):
            os.kill(target, signal.SIGKILL)


@pytest.mark.parametrize("launcher", ["python", "torchrun"])
def test_normal_run_is_never_orphaned(tmp_path: Path, launcher: str) -> None:
    """Under torchrun the ranks' parent is torchrun, not the watched `profile` process."""
    run = tmp_path / "run"
    env = _env()
    if launcher == "torchrun":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
        cmd = [torchrun, "--nproc-per-node", "2", "--master-port", str(port), str(DDP)]
        env["TINY_STEPS"] = "300"
    else:
        cmd = [sys.executable, str(TRAIN), "--steps", "60", "--sleep-ms", "40"]
    argv = [sys.executable, "-m", "stallscope.cli", "profile", "-q", "--no-diagnose", "--out", str(run), "--"]
    res = subprocess.run(argv + cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    meta = _meta(run)
    ranks = [0, 1] if launcher == "torchrun" else [0]
    assert meta["exit"]["status"] == "ok" and "orphaned_utc" not in meta["exit"] and meta["ranks"] == ranks
    # every rank checked at its first sampler tick, and the single run lasted several checks
    assert len(_steps(run)) >= 59
    text = (run / "meta.yaml").read_text() + "".join((run / f"rank{r}" / "rank.yaml").read_text() for r in ranks)
    assert "orphaned" not in text
