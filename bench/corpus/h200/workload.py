"""Training loops of public models (timm, torchvision, transformers) with one plantable stall each,
recorded on an H200 for the accuracy corpus (``bench/corpus/h200/record.py`` drives them).

No stallscope import: this is a script a user could have written. With ``--trace PATH`` it records
its own torch.profiler window (steps ``--skip`` .. ``--skip + --active``) and gzips the export;
without it, it is the plain loop (for ``stallscope profile -- torchrun ... workload.py``).

Plants:
  none        healthy: bf16 autocast, data already on the GPU, fused optimizer
  fp32        no autocast and TF32 off: FP32 GEMMs / convolutions on tensor-core hardware
  pil         images decoded and augmented with PIL in the loop (DataLoader num_workers=0)
  item        a Python metric with ``.item()`` per micro-batch: the host blocks on the GPU each time
  eager_attn  transformers' eager attention (softmax(QK^T)V unfused) at sequence 512
  pageable    float32 batches built on the CPU and copied from pageable memory each step
  ema_clone   an "EMA" kept by cloning every parameter each step: device-to-device copies
  slow_rank   rank ``--slow-rank`` does extra matmuls each step (a straggler by compute)
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

PLANTS = ("none", "fp32", "pil", "item", "eager_attn", "pageable", "ema_clone", "slow_rank")


def build(model: str, plant: str) -> tuple[nn.Module, dict[str, Any]]:
    """The model (on the CPU) and how its batches look."""
    if model in ("gpt2", "bert"):
        if model == "gpt2":
            from transformers import GPT2Config, GPT2LMHeadModel

            cfg = GPT2Config()
            return GPT2LMHeadModel(cfg), {"kind": "lm", "batch": 16, "seq": 512, "vocab": cfg.vocab_size}
        from transformers import BertConfig, BertForMaskedLM

        attn = "eager" if plant == "eager_attn" else "sdpa"
        cfg = BertConfig()
        return BertForMaskedLM._from_config(cfg, attn_implementation=attn), {
            "kind": "lm",
            "batch": 32,
            "seq": 512,
            "vocab": cfg.vocab_size,
        }
    if model == "resnet18_tv":
        import torchvision

        return torchvision.models.resnet18(num_classes=1000), {"kind": "image", "batch": 64, "size": 224}
    import timm

    name = {"vit_tiny": "vit_tiny_patch16_224"}.get(model, model)
    batch = {"vit_tiny": 2}.get(model, 128)
    return timm.create_model(name, pretrained=False, num_classes=1000), {"kind": "image", "batch": batch, "size": 224}


class PilImages(torch.utils.data.Dataset):
    """JPEG-sized random images augmented with PIL/torchvision transforms in ``__getitem__``."""

    def __init__(self, n: int, size: int) -> None:
        import numpy as np
        from PIL import Image
        from torchvision import transforms

        rng = np.random.default_rng(0)
        self.images = [Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)) for _ in range(32)]
        self.n = n
        self.tf = transforms.Compose(
            [
                transforms.RandomResizedCrop(size),
                transforms.RandomHorizontalFlip(),
                transforms.ColorJitter(0.4, 0.4, 0.4),
                transforms.ToTensor(),
                transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        )

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.tf(self.images[i % len(self.images)]), i % 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--plant", choices=PLANTS, default="none")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--skip", type=int, default=10)
    ap.add_argument("--active", type=int, default=3)
    ap.add_argument("--trace", default="", help="write this rank's trace here (.json.gz); {rank} is replaced")
    ap.add_argument("--ddp", choices=("", "ddp", "fsdp"), default="")
    ap.add_argument("--slow-rank", type=int, default=1)
    a = ap.parse_args()

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local)
    dev = torch.device("cuda", local)
    if a.ddp:
        import torch.distributed as dist

        dist.init_process_group("nccl", device_id=dev)
    if a.plant == "fp32":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    model, info = build(a.model, a.plant)
    model = model.to(dev)
    if info["kind"] == "image":
        model = model.to(memory_format=torch.channels_last)
    if a.ddp == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[local])
    elif a.ddp == "fsdp":
        from torch.distributed.fsdp import FullyShardedDataParallel

        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        blocks = {type(m) for m in model.modules() if type(m).__name__ in ("GPT2Block", "BertLayer", "Bottleneck")}
        model = FullyShardedDataParallel(
            model, device_id=local, use_orig_params=True, auto_wrap_policy=ModuleWrapPolicy(blocks) if blocks else None
        )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    autocast = a.plant != "fp32"
    b = info["batch"]
    if info["kind"] == "lm":
        x_gpu = torch.randint(0, info["vocab"], (b, info["seq"]), device=dev)
    else:
        x_gpu = torch.randn(b, 3, info["size"], info["size"], device=dev).to(memory_format=torch.channels_last)
        y_gpu = torch.randint(0, 1000, (b,), device=dev)
    if a.plant == "pageable":  # built once, in ordinary (pageable) host memory, copied every step
        x_host = torch.randn(b, 3, info["size"], info["size"])
        y_host = torch.randint(0, 1000, (b,))
    loader = None
    if a.plant == "pil":
        loader = iter(
            torch.utils.data.DataLoader(PilImages(b * (a.steps + 2), info["size"]), batch_size=b, num_workers=0)
        )
    ema = None
    slow = torch.randn(4096, 4096, device=dev) if a.plant == "slow_rank" and rank == a.slow_rank else None

    def step() -> None:
        nonlocal ema
        if loader is not None:
            xb, yb = next(loader)
            x, y = xb.to(dev, non_blocking=True).to(memory_format=torch.channels_last), yb.to(dev, non_blocking=True)
        elif a.plant == "pageable":
            x = x_host.to(dev).to(memory_format=torch.channels_last)
            y = y_host.to(dev)
        elif info["kind"] == "image":
            x, y = x_gpu, y_gpu
        else:
            x = x_gpu
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            if info["kind"] == "lm":
                out = model(input_ids=x, labels=x)
                loss = out.loss
            else:
                logits = model(x)
                loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if a.plant == "item":
            # a running accuracy computed batch-row by batch-row: each .item() waits for the GPU
            with torch.no_grad():
                ref = out.logits if info["kind"] == "lm" else logits
                hits = 0.0
                for r in range(min(ref.shape[0], 16)):
                    hits += float(
                        (ref[r].argmax(-1) == x[r] if info["kind"] == "lm" else ref[r].argmax() == y[r])
                        .float()
                        .mean()
                        .item()
                    )
        if a.plant == "ema_clone":
            ema = [p.detach().clone() for p in model.parameters()]
        if slow is not None:
            for _ in range(12):
                torch.mm(slow, slow)

    marks: list[torch.cuda.Event] = []
    prof = None
    if a.trace:
        from torch.profiler import ProfilerActivity, profile, schedule

        prof = profile(
            activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
            schedule=schedule(wait=a.skip, warmup=1, active=a.active, repeat=1),
            record_shapes=True,
        )
        prof.start()
    for _ in range(a.steps):
        marks.append(torch.cuda.Event(enable_timing=True))
        marks[-1].record()
        step()
        if prof is not None:
            prof.step()
    marks.append(torch.cuda.Event(enable_timing=True))
    marks[-1].record()
    torch.cuda.synchronize(dev)
    # step time between consecutive step starts on the GPU's clock: no host sync inside the loop
    times = [marks[i].elapsed_time(marks[i + 1]) for i in range(len(marks) - 1)]
    if prof is not None:
        prof.stop()
        path = a.trace.replace("{rank}", str(rank))
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        raw = path[: -len(".gz")] if path.endswith(".gz") else path + ".json"
        prof.export_chrome_trace(raw)
        with open(raw, "rb") as src, gzip.open(path, "wb", compresslevel=9) as dst:
            shutil.copyfileobj(src, dst)
        os.remove(raw)
    steady = sorted(times[a.skip :]) or sorted(times)
    print(
        f"RESULT model={a.model} plant={a.plant} rank={rank} world={world} median_ms={steady[len(steady) // 2]:.3f} "
        f"min_ms={steady[0]:.3f} max_ms={steady[-1]:.3f} steps={len(times)}",
        flush=True,
    )
    if a.ddp:
        import torch.distributed as dist

        dist.destroy_process_group()


if __name__ == "__main__":
    main()
