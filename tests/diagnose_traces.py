"""Real torch.profiler traces for the diagnose tests, recorded on the CPU once per test session.

Every function returns a path under this session's folder (conftest.py hands pytest's session
temp folder to :func:`use_cache`), so a trace is recorded on first use, shared by the diagnose
test modules of the session, and never outlives it: no recording made by another checkout or an
earlier session is ever read.

The ``steps`` trace's DataLoader sleeps ``STEPS_SLEEP_PER_SAMPLE_S`` in every ``__getitem__``, so
each step waits at least ``STEPS_DATA_WAIT_FLOOR_MS`` (160 ms) for data by construction. The rest
of a step (a tiny MLP on one thread) takes about a millisecond, 5 ms in the first profiled step
with three CPU-bound processes on two cores: the data wait stays the largest part of every step
unless the rest grows more than a hundredfold, which is the margin the tests' assertions rely on.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
GPU_FIXTURES = HERE.parent / "fixtures" / "gpu"

STEPS_SLEEP_PER_SAMPLE_S = 0.01
STEPS_BATCH = 16
STEPS_DATA_WAIT_FLOOR_MS = 1000.0 * STEPS_SLEEP_PER_SAMPLE_S * STEPS_BATCH
"""Lower bound of every step's data wait in :func:`cpu_steps_trace` (``time.sleep`` never returns early)."""

_cache_root: Path | None = None

_SCRIPT = f"SLEEP_PER_SAMPLE_S = {STEPS_SLEEP_PER_SAMPLE_S!r}\nBATCH = {STEPS_BATCH!r}\n" + r'''
import os, sys, time, json
import torch, torch.nn as nn
from torch.profiler import profile, schedule, ProfilerActivity, tensorboard_trace_handler

# One intra-op thread: on a machine with more runnable processes than cores, spinning OpenMP
# workers would stretch every op and shrink the loader's share of the step.
torch.set_num_threads(1)

def ddp_work(rank, world, port, out):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    m = DDP(nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=1, warmup=1, active=3, repeat=1), record_shapes=True) as p:
        for _ in range(6):
            if rank == 1: time.sleep(0.003)
            loss = m(torch.randn(32, 64)).square().mean()
            opt.zero_grad(); loss.backward(); opt.step(); p.step()
    os.makedirs(os.path.join(out, "ddp"), exist_ok=True)
    p.export_chrome_trace(os.path.join(out, "ddp", f"worker{rank}.pt.trace.json"))
    dist.barrier()  # neither rank tears gloo down while the other still uses it
    dist.destroy_process_group()

out = sys.argv[1] if len(sys.argv) > 2 else ""
what = sys.argv[2] if len(sys.argv) > 2 else ""
torch.manual_seed(0)

def loop(prof, steps, sleep_data=0.0, batch=16):
    m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    class DS(torch.utils.data.Dataset):
        def __len__(self): return 4096
        def __getitem__(self, i):
            if sleep_data: time.sleep(sleep_data)
            return torch.randn(64), i % 10
    dl = torch.utils.data.DataLoader(DS(), batch_size=batch)
    for i, (x, y) in enumerate(dl):
        loss = nn.functional.cross_entropy(m(x), y)
        opt.zero_grad(); loss.backward(); opt.step(); loss.item()
        if prof is not None: prof.step()
        if i + 1 >= steps: break

acts = [ProfilerActivity.CPU]
if what == "steps":
    with profile(activities=acts, schedule=schedule(wait=1, warmup=1, active=4, repeat=1), record_shapes=True, with_stack=True, with_flops=True) as p:
        loop(p, 8, sleep_data=SLEEP_PER_SAMPLE_S, batch=BATCH)
    p.export_chrome_trace(os.path.join(out, "steps.json"))
elif what == "plain":
    with profile(activities=acts, schedule=schedule(wait=0, warmup=1, active=3, repeat=1)) as p:
        loop(p, 5)
    p.export_chrome_trace(os.path.join(out, "plain.json"))
elif what == "nosteps":
    with profile(activities=acts, record_shapes=True) as p:
        loop(None, 3)
    p.export_chrome_trace(os.path.join(out, "nosteps.json"))
elif what == "tb":
    os.makedirs(os.path.join(out, "tb"), exist_ok=True)
    with profile(activities=acts, schedule=schedule(wait=0, warmup=1, active=2, repeat=2), on_trace_ready=tensorboard_trace_handler(os.path.join(out, "tb"), worker_name="host_42", use_gzip=True)) as p:
        loop(p, 7)
elif what == "ddp":
    import torch.multiprocessing as mp
    if __name__ == "__main__":
        mp.spawn(ddp_work, args=(2, 29000 + os.getpid() % 3000, out), nprocs=2, join=True)
'''


def use_cache(folder: Path) -> None:
    """Record this session's traces into ``folder`` (called once by conftest.py's session fixture)."""
    global _cache_root
    folder.mkdir(parents=True, exist_ok=True)
    _cache_root = folder


def _cache() -> Path:
    """The session's trace folder; outside pytest, a fresh private folder for this process."""
    global _cache_root
    if _cache_root is None:
        _cache_root = Path(tempfile.mkdtemp(prefix="stallscope-test-traces-"))
    return _cache_root


def _record(what: str, produced: Path) -> Path:
    """Record ``what`` with the script above unless this session already did; return ``produced``.

    The recording is made in a scratch folder and moved into place whole, so a recording that
    failed or was interrupted never appears under the name the tests read.
    """
    if produced.exists():
        return produced
    root = _cache()
    script = root / "record.py"
    if not script.exists():
        script.write_text(_SCRIPT)
    failures = []
    for _attempt in range(2):  # torch's gloo teardown aborts a rank now and then (SIGABRT): record again once
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            env = dict(os.environ, PYTHONWARNINGS="ignore")
            proc = subprocess.run([sys.executable, str(script), tmp, what], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, timeout=300)
            if proc.returncode == 0:
                os.replace(Path(tmp) / produced.relative_to(root), produced)
                return produced
            failures.append(f"({proc.returncode}):\n{proc.stderr[-3000:]}")
    raise RuntimeError(f"recording the {what!r} trace failed twice: " + "\n---\n".join(failures))


def cpu_steps_trace() -> Path:
    """CPU training loop: ProfilerStep#N, a slow DataLoader (see the module docstring), record_shapes,
    with_stack, with_flops; four profiled steps."""
    return _record("steps", _cache() / "steps.json")


def cpu_plain_trace() -> Path:
    """CPU training loop with ProfilerStep, no shapes or stacks."""
    return _record("plain", _cache() / "plain.json")


def cpu_nosteps_trace() -> Path:
    """A profile() block without a schedule: no ProfilerStep."""
    return _record("nosteps", _cache() / "nosteps.json")


def tb_folder() -> Path:
    """tensorboard_trace_handler output: two cycles of one process, gzipped."""
    return _record("tb", _cache() / "tb")


def ddp_folder() -> Path:
    """Two gloo DDP ranks on the CPU (distributedInfo in each trace), rank 1 a straggler."""
    return _record("ddp", _cache() / "ddp")


def gpu_fixture(name: str) -> Path | None:
    """A committed GPU trace (tests/fixtures/gpu/, made by make_gpu_traces.py), or None."""
    p = GPU_FIXTURES / name
    return p if p.exists() else None


def empty_trace(folder: Path) -> Path:
    """A valid trace file with no events."""
    p = folder / "empty.json"
    p.write_text(json.dumps({"schemaVersion": 1, "traceEvents": []}))
    return p
