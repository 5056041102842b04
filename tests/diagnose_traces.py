"""Real torch.profiler traces for the diagnose tests, recorded on the CPU once per machine.

Every function returns paths under a cache folder keyed by the torch version and this file's
content, so the traces are recorded once and shared by all diagnose test modules.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
GPU_FIXTURES = HERE.parent / "fixtures" / "gpu"

_SCRIPT = r'''
import os, sys, time, json
import torch, torch.nn as nn
from torch.profiler import profile, schedule, ProfilerActivity, tensorboard_trace_handler

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
    dist.destroy_process_group()

out = sys.argv[1] if len(sys.argv) > 2 else ""
what = sys.argv[2] if len(sys.argv) > 2 else ""
torch.manual_seed(0)

def loop(prof, steps, sleep_data=0.0):
    m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    class DS(torch.utils.data.Dataset):
        def __len__(self): return 4096
        def __getitem__(self, i):
            if sleep_data: time.sleep(sleep_data)
            return torch.randn(64), i % 10
    dl = torch.utils.data.DataLoader(DS(), batch_size=16)
    for i, (x, y) in enumerate(dl):
        loss = nn.functional.cross_entropy(m(x), y)
        opt.zero_grad(); loss.backward(); opt.step(); loss.item()
        if prof is not None: prof.step()
        if i + 1 >= steps: break

acts = [ProfilerActivity.CPU]
if what == "steps":
    with profile(activities=acts, schedule=schedule(wait=1, warmup=1, active=4, repeat=1), record_shapes=True, with_stack=True, with_flops=True) as p:
        loop(p, 8, sleep_data=0.0002)
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


def _cache() -> Path:
    import torch

    key = hashlib.sha256((torch.__version__ + _SCRIPT).encode()).hexdigest()[:12]
    root = Path(tempfile.gettempdir()) / f"stallscope-test-traces-{key}"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _record(what: str, produced: Path) -> Path:
    if produced.exists():
        return produced
    root = _cache()
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        script = root / "record.py"
        if not script.exists():
            part = root / f".record.{os.getpid()}.py"
            part.write_text(_SCRIPT)
            os.replace(part, script)
        subprocess.run([sys.executable, str(script), tmp, what], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
        made = Path(tmp) / produced.relative_to(root)
        try:
            os.replace(made, produced)
        except OSError:
            if not produced.exists():  # another test process won the race: use its copy
                raise
    return produced


def cpu_steps_trace() -> Path:
    """CPU training loop: ProfilerStep#N, DataLoader, record_shapes, with_stack, with_flops."""
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
    p = folder / "empty.json"
    p.write_text(json.dumps({"schemaVersion": 1, "traceEvents": []}))
    return p
