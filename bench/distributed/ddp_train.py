"""A DDP training loop with plantable stalls, for the distributed scenarios.

Run with torchrun (any backend): ``torchrun --nproc-per-node 2 bench/distributed/ddp_train.py``.
Plants (applied to one rank, ``--slow-rank``):
  --plant compute   the slow rank does extra matmuls each step (a straggler by compute)
  --plant data      the slow rank's batches take extra CPU time to produce (a straggler by data)
  --plant buckets   every rank: tiny DDP buckets and no overlap (exposed communication)
  --plant none      healthy
No stallscope import: this is a script a user could have written.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

EXPECTED = {"none": "healthy", "compute": "communication", "data": "communication", "buckets": "communication"}


class SlowDataset(torch.utils.data.Dataset):
    POOL = 1024

    def __init__(self, n: int, dim: int, extra_ms: float) -> None:
        self.n, self.dim, self.extra_ms = n, dim, extra_ms
        g = torch.Generator().manual_seed(0)
        # A pool made once: a healthy loader costs almost nothing per sample.
        self.x = torch.randn(self.POOL, dim, generator=g)
        self.y = torch.randint(0, 10, (self.POOL,), generator=g)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if self.extra_ms:
            end = time.perf_counter() + self.extra_ms / 1000.0
            while time.perf_counter() < end:
                pass
        return self.x[i % self.POOL], self.y[i % self.POOL]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--plant", choices=sorted(EXPECTED), default="none")
    ap.add_argument("--slow-rank", type=int, default=1)
    ap.add_argument("--slow-factor", type=float, default=1.0, help="extra work on the slow rank, in units of its step")
    ap.add_argument("--pin", action="store_true", help="pin each rank to its own CPU core (LOCAL_RANK)")
    ap.add_argument("--pace-ms", type=float, default=0.0,
                    help="start step k no earlier than k * PACE ms after a common start (input arriving at a fixed "
                         "rate): on a CPU machine with few cores the other processes slow the ranks unevenly, and "
                         "an unpaced healthy run can have a real, unplanted straggler")
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", 0))
    if args.pin and hasattr(os, "sched_getaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cores[local % len(cores)]})
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(0)

    model = nn.Sequential(*[nn.Sequential(nn.Linear(args.dim, args.dim), nn.GELU()) for _ in range(args.layers)], nn.Linear(args.dim, 10)).to(device)
    slow = rank == args.slow_rank
    ddp_kwargs = {}
    if args.plant == "buckets":
        ddp_kwargs = {"bucket_cap_mb": 0.05, "gradient_as_bucket_view": False}
    ddp = DDP(model, device_ids=[local] if cuda else None, **ddp_kwargs)
    opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)

    extra_ms = 0.0
    if args.plant == "data" and slow:
        extra_ms = 0.4 * args.slow_factor
    ds = SlowDataset(args.steps * args.batch * world, args.dim, extra_ms)
    sampler = torch.utils.data.distributed.DistributedSampler(ds, shuffle=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, sampler=sampler, num_workers=0)
    burn = torch.randn(2 * args.dim, 2 * args.dim, device=device)

    dist.barrier()
    start = time.perf_counter()
    for step, (x, y) in enumerate(loader):
        if step >= args.steps:
            break
        if args.pace_ms:
            time.sleep(max(0.0, start + step * args.pace_ms / 1000.0 - time.perf_counter()))
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if args.plant == "compute" and slow:
            for _ in range(max(1, int(4 * args.slow_factor))):
                burn = torch.tanh(burn @ burn * 1e-3)
        loss = nn.functional.cross_entropy(ddp(x), y)
        opt.zero_grad(set_to_none=True)
        if args.plant == "buckets":
            # Force the whole backward to finish before communication can proceed (no overlap).
            with ddp.no_sync():
                loss.backward()
            for p in ddp.parameters():
                dist.all_reduce(p.grad)
                p.grad /= world
        else:
            loss.backward()
        opt.step()
    if cuda:
        torch.cuda.synchronize()
    dist.barrier()
    if rank == 0:
        print(f"done: {args.steps} steps, plant={args.plant}, world={world}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
