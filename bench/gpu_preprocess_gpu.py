"""GPU preprocessing vs the torchvision PIL pipeline in DataLoader workers.

    python3 bench/gpu_preprocess_gpu.py           # GPU machine: writes $OUT/gpu-preprocess.yaml
    python3 bench/gpu_preprocess_gpu.py --quick   # tiny smoke run on any machine

Data: ``--images`` (1,024) synthetic JPEGs around 500x375 (portrait and landscape, 440-560 x
330-420 px, quality 90) of varied content (gradients, stripes, discs and boxes, texture noise),
made here with PIL and held in memory as encoded bytes, as a server receives them.

Configurations (each timed over ``--epochs`` passes after a warm-up pass; images_per_s =
images / wall seconds):
* pipeline alone: batches ready on the GPU. CPU: the torchvision PIL pipeline in a DataLoader
  with 4 and 16 workers, pin_memory, non_blocking copy. GPU: 2 workers only read bytes; batched
  nvJPEG decode + one resample + normalize on the GPU (fixes.gpu_preprocess), with and without
  prefetch on a side stream. Also: PIL decode in 4 workers, uint8 shipped, resize + normalize on
  the GPU (exact PIL pixels); and, as the naive baseline, torchvision v2 ops one image at a time.
* end to end, ResNet-50 bf16 inference serving (torchvision resnet50(weights=None), channels_last,
  batch 128, predictions copied back per batch): the same loaders feeding the model; plus the
  model alone on resident data as the ceiling.
Two pipelines: ``serve`` (Resize 256, CenterCrop 224, ToTensor, Normalize; used end to end)
and ``train`` (RandomResizedCrop 224, RandomHorizontalFlip, ToTensor, Normalize).
Also: where a CPU worker's time goes per image (decode, resize, crop, flip, to_tensor,
normalize, collate, H2D copy) and the GPU output's difference from the PIL pipeline before
normalisation (same decoded pixels, and nvJPEG vs PIL decode).
Goal: end to end >= 2.25x over the CPU pipeline at 4 workers; 16 workers reported as measured.
"""
from __future__ import annotations

import argparse
import datetime
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from stallscope.fixes.gpu_preprocess.adapter import GpuPreprocessLoader, collate_decoded, collate_encoded
from stallscope.fixes.gpu_preprocess.pipeline import GpuPipeline, decode_images, torchvision_available

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for the sibling bench package (bench.recorded)
from bench.recorded import recorded_command  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HAVE_TV, TV_WHY = torchvision_available()


# ---------------------------------------------------------------- data
def make_jpeg(seed: int) -> bytes:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(440, 561)), int(rng.integers(330, 421))
    if rng.random() < 0.2:
        w, h = h, w
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    base = rng.uniform(0, 255, 3) + np.stack([np.cos(angle) * x + np.sin(angle) * y] * 3, -1) * rng.uniform(-0.5, 0.5, 3)
    period = rng.uniform(4, 40)
    stripes = (np.sin((x * np.cos(angle + 1) + y * np.sin(angle + 1)) / period) > 0)[..., None] * rng.uniform(-60, 60, 3)
    img = np.clip(base + stripes + rng.normal(0, rng.uniform(2, 25), (h, w, 3)), 0, 255).astype(np.uint8)
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(3, 12))):
        box = sorted(rng.integers(0, w, 2).tolist()), sorted(rng.integers(0, h, 2).tolist())
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = (box[0][0], box[1][0], box[0][1], box[1][1])
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(shape, fill=color)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_dataset(n: int, procs: int) -> list[bytes]:
    if procs > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(procs) as pool:
            return pool.map(make_jpeg, range(n), chunksize=16)
    return [make_jpeg(i) for i in range(n)]


# ---------------------------------------------------------------- CPU pipeline (torchvision PIL)
class _Standin:
    """PIL stand-ins for torchvision's transforms, only for --quick where torchvision cannot import."""

    class Compose:
        def __init__(self, transforms):
            self.transforms = transforms

        def __call__(self, img):
            for t in self.transforms:
                img = t(img)
            return img

    class Resize:
        def __init__(self, size):
            self.size, self.interpolation, self.max_size = size, "bilinear", None

        def __call__(self, img):
            from stallscope.fixes.gpu_preprocess.pipeline import _resize_size

            h, w = _resize_size(img.size[1], img.size[0], self.size)
            return img.resize((w, h), 2)

    class CenterCrop:
        def __init__(self, size):
            self.size = (size, size)

        def __call__(self, img):
            from stallscope.fixes.gpu_preprocess.pipeline import _center_offset

            t, l = _center_offset(img.size[1], self.size[0]), _center_offset(img.size[0], self.size[1])
            return img.crop((l, t, l + self.size[1], t + self.size[0]))

    class RandomResizedCrop:
        def __init__(self, size):
            self.size, self.scale, self.ratio, self.interpolation = (size, size), (0.08, 1.0), (3 / 4, 4 / 3), "bilinear"

        def __call__(self, img):
            from stallscope.fixes.gpu_preprocess.pipeline import random_resized_crop_params

            t, l, h, w = random_resized_crop_params(img.size[1], img.size[0], self.scale, self.ratio)
            return img.crop((l, t, l + w, t + h)).resize((self.size[1], self.size[0]), 2)

    class RandomHorizontalFlip:
        def __init__(self, p=0.5):
            self.p = p

        def __call__(self, img):
            return img.transpose(0) if torch.rand(1).item() < self.p else img

    class ToTensor:
        def __call__(self, img):
            return torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div(255)

    class Normalize:
        def __init__(self, mean, std):
            self.mean, self.std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)

        def __call__(self, x):
            return (x - self.mean) / self.std


def transforms_module():
    if HAVE_TV:
        from torchvision import transforms

        return transforms
    return _Standin


def pipelines() -> dict:
    T = transforms_module()
    return {
        "serve": T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)]),
        "train": T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)]),
    }


class EncodedDataset(torch.utils.data.Dataset):
    """Encoded JPEG bytes; with a transform, decoded with PIL and transformed (the CPU pipeline),
    without, returned as uint8 tensors (the GPU pipeline's workers)."""

    def __init__(self, blobs: list[bytes], transform=None, decode: bool = False):
        self.blobs, self.transform, self.decode = blobs, transform, decode

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, i: int):
        if self.decode:  # CPU decode only (PIL), uint8 HWC out; resize etc. on the GPU
            from stallscope.fixes.gpu_preprocess.pipeline import pil_decode_hwc

            return pil_decode_hwc(self.blobs[i]), i % 1000
        if self.transform is None:
            return torch.frombuffer(bytearray(self.blobs[i]), dtype=torch.uint8), i % 1000
        from PIL import Image

        return self.transform(Image.open(io.BytesIO(self.blobs[i])).convert("RGB")), i % 1000


# ---------------------------------------------------------------- measurement
class CpuClock:
    """CPU seconds of this process and its children (DataLoader workers) over a block."""

    def __enter__(self):
        import psutil

        self.proc = psutil.Process()
        self.t0, self.c0 = time.perf_counter(), self._cpu()
        return self

    def _cpu(self) -> float:
        total = sum(self.proc.cpu_times()[:2])
        for child in self.proc.children(recursive=True):
            try:
                total += sum(child.cpu_times()[:2])
            except Exception:  # noqa: BLE001 - a worker may exit meanwhile
                pass
        return total

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        self.cpu = self._cpu() - self.c0
        return False


def run_loader(batches, consume, epochs: int, device: torch.device) -> dict:
    """One warm-up pass, then ``epochs`` timed passes over the iterable of (x, y)."""
    for x, _ in batches:  # warm-up: workers started, cudnn autotuned, decoder initialised
        consume(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    images = 0
    with CpuClock() as clock:
        for _ in range(epochs):
            for x, _ in batches:
                consume(x)
                images += x.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
    return {"images_per_s": round(images / clock.wall, 1), "wall_s": round(clock.wall, 3),
            "cpu_cores_busy": round(clock.cpu / clock.wall, 2)}


def cpu_loader(blobs, transform, workers: int, batch: int):
    return torch.utils.data.DataLoader(EncodedDataset(blobs, transform), batch_size=batch, num_workers=workers,
                                       pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
                                       prefetch_factor=4 if workers > 0 else None)


def gpu_loader(blobs, transform, device, batch: int, workers: int, prefetch: int, cpu_decode: bool = False):
    inner = torch.utils.data.DataLoader(EncodedDataset(blobs, decode=cpu_decode), batch_size=batch, num_workers=workers,
                                        collate_fn=collate_decoded if cpu_decode else collate_encoded,
                                        pin_memory=torch.cuda.is_available(),
                                        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)
    return GpuPreprocessLoader(inner, GpuPipeline.from_transform(transform, device), prefetch=prefetch)


class NaiveGpuLoop:
    """The baseline the batched version replaces: decode and torchvision v2 functional ops one
    image at a time on the GPU (serve pipeline)."""

    def __init__(self, blobs, device, batch: int):
        self.chunks = [blobs[i:i + batch] for i in range(0, len(blobs), batch)]
        self.device = device
        self.mean = torch.tensor(MEAN, device=device).view(3, 1, 1)
        self.std = torch.tensor(STD, device=device).view(3, 1, 1)

    def __iter__(self):
        from torchvision.io import ImageReadMode, decode_jpeg
        from torchvision.transforms.v2 import functional as F

        for chunk in self.chunks:
            out = []
            for blob in chunk:
                img = decode_jpeg(torch.frombuffer(bytearray(blob), dtype=torch.uint8), mode=ImageReadMode.RGB,
                                  device=self.device)
                img = F.center_crop(F.resize(img, [256], antialias=True), [224, 224])
                out.append((img.float() / 255 - self.mean) / self.std)
            yield torch.stack(out).contiguous(memory_format=torch.channels_last), None


def stage_breakdown(blobs: list[bytes], n: int, device: torch.device, batch: int) -> dict:
    """Per-image milliseconds of each CPU stage in one process (what one worker spends)."""
    from PIL import Image

    T = transforms_module()
    resize, crop, rrc = T.Resize(256), T.CenterCrop(224), T.RandomResizedCrop(224)
    flip, to_tensor, norm = T.RandomHorizontalFlip(p=1.0), T.ToTensor(), T.Normalize(MEAN, STD)
    acc = {k: 0.0 for k in ("decode", "resize", "center_crop", "random_resized_crop", "flip", "to_tensor", "normalize")}
    clock = time.perf_counter
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    for data in blobs[:n]:
        t = clock(); img = Image.open(io.BytesIO(data)).convert("RGB"); acc["decode"] += clock() - t  # noqa: E702
        t = clock(); small = resize(img); acc["resize"] += clock() - t  # noqa: E702
        t = clock(); small = crop(small); acc["center_crop"] += clock() - t  # noqa: E702
        t = clock(); cropped = rrc(img); acc["random_resized_crop"] += clock() - t  # noqa: E702
        t = clock(); small = flip(small); acc["flip"] += clock() - t  # noqa: E702
        t = clock(); x = to_tensor(small); acc["to_tensor"] += clock() - t  # noqa: E702
        t = clock(); x = norm(x); acc["normalize"] += clock() - t  # noqa: E702
    per_image = {f"{k}_ms": round(v / n * 1e3, 4) for k, v in acc.items()}
    samples = [torch.randn(3, 224, 224) for _ in range(batch)]
    t = clock()
    for _ in range(5):
        stacked = torch.stack(samples)
    per_image["collate_ms"] = round((clock() - t) / 5 / batch * 1e3, 4)
    torch.set_num_threads(threads)
    if device.type == "cuda":
        for name, src in (("h2d_copy_pinned_ms", stacked.pin_memory()), ("h2d_copy_pageable_ms", stacked)):
            src.to(device, non_blocking=True)
            torch.cuda.synchronize()
            t = clock()
            for _ in range(10):
                src.to(device, non_blocking=True)
            torch.cuda.synchronize()
            per_image[name] = round((clock() - t) / 10 / batch * 1e3, 4)
    serve = ["decode", "resize", "center_crop", "to_tensor", "normalize"]
    train = ["decode", "random_resized_crop", "flip", "to_tensor", "normalize"]
    for name, keys in (("serve", serve), ("train", train)):
        extra = per_image["collate_ms"] + per_image.get("h2d_copy_pinned_ms", 0.0)
        total = sum(per_image[f"{k}_ms"] for k in keys) + extra
        per_image[f"{name}_total_ms"] = round(total, 4)
        per_image[f"{name}_share_pct"] = {k: round(100 * per_image[f"{k}_ms"] / total, 1) for k in keys}
        per_image[f"{name}_share_pct"]["collate_and_copy"] = round(100 * extra / total, 1)
    return per_image


def gpu_stage_breakdown(blobs: list[bytes], device: torch.device, batch: int) -> dict:
    """Milliseconds per batch of the GPU pipeline's decode and of its resample + normalize."""
    pipe = GpuPipeline.from_transform(pipelines()["serve"], device)
    chunks = [blobs[i:i + batch] for i in range(0, len(blobs) - batch + 1, batch)] or [blobs]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    pipe(chunks[0])
    sync()
    decode_s = transform_s = 0.0
    for chunk in chunks:
        t = time.perf_counter()
        images = decode_images(chunk, device)
        sync()
        decode_s += time.perf_counter() - t
        t = time.perf_counter()
        pipe.transform_decoded(images)
        sync()
        transform_s += time.perf_counter() - t
    images_n = sum(len(c) for c in chunks)
    return {"decode_ms_per_batch": round(decode_s / len(chunks) * 1e3, 3),
            "resample_normalize_ms_per_batch": round(transform_s / len(chunks) * 1e3, 3),
            "decode_images_per_s": round(images_n / decode_s, 1),
            "resample_normalize_images_per_s": round(images_n / transform_s, 1)}


def equivalence(blobs: list[bytes], device: torch.device, n: int) -> dict:
    """GPU output vs the PIL pipeline before normalisation, in 0-255 levels."""
    from PIL import Image

    pils = [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs[:n]]
    as_u8 = [torch.from_numpy(np.array(p)).permute(2, 0, 1).contiguous() for p in pils]
    T = transforms_module()
    serve_geo = T.Compose([T.Resize(256), T.CenterCrop(224)])
    ref = torch.stack([torch.from_numpy(np.array(serve_geo(p))).permute(2, 0, 1).double() for p in pils])
    pipe = GpuPipeline.from_transform(pipelines()["serve"], device)
    result = {}
    same = pipe.transform_decoded([u.to(device) for u in as_u8], normalize=False).double().cpu()
    gpu_decoded = pipe.transform_decoded(decode_images(blobs[:n], device), normalize=False).double().cpu()
    exact_out = None
    try:
        from stallscope.fixes.gpu_preprocess.pipeline import geometry_for
        from stallscope.fixes.gpu_preprocess.resample import pad_batch, resample_batch

        geo = geometry_for(pipe.plan, [tuple(u.shape[-2:]) for u in as_u8])
        exact_out = resample_batch(pad_batch([u.to(device) for u in as_u8]), geo, compute_dtype=torch.float64).cpu()
    except Exception as exc:  # noqa: BLE001 - float64 matmul may be unsupported somewhere
        result["float64_error"] = repr(exc)
    for name, out in (("same_decode_float32", same), ("same_decode_float64", exact_out), ("gpu_decode", gpu_decoded)):
        if out is None:
            continue
        d = (out - ref).abs()
        result[name] = {"max_levels": float(d.max()), "p999_levels": float(d.flatten().kthvalue(max(1, int(0.999 * d.numel()))).values),
                        "mean_levels": round(float(d.mean()), 4), "pixels_over_2_levels_pct": round(100 * float((d > 2).double().mean()), 4)}
    dec = decode_images(blobs[:n], device)
    d = torch.cat([(a.cpu().double() - b.double()).abs().flatten() for a, b in zip(dec, as_u8)])
    result["decoder_only"] = {"max_levels": float(d.max()), "mean_levels": round(float(d.mean()), 4),
                              "pixels_over_2_levels_pct": round(100 * float((d > 2).double().mean()), 4)}
    result["within_2_of_255"] = bool(result["gpu_decode"]["max_levels"] <= 2.0)
    return result


class _Folder(torch.utils.data.Dataset):
    """ImageFolder's shape, for --quick where torchvision cannot import."""

    def __init__(self, root: Path, transform):
        from PIL import Image

        self.samples = [(str(p), 0) for p in sorted(root.glob("*/*.jpg"))]
        self.loader = lambda path: Image.open(path).convert("RGB")
        self.transform, self.target_transform = transform, None

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, target = self.samples[i]
        sample = self.loader(path)
        return (self.transform(sample) if self.transform else sample), target


def fix_apply_check(blobs: list[bytes], device: torch.device, n: int) -> dict:
    """The registered ``gpu-preprocess`` fix on an ImageFolder DataLoader: apply, compare one
    epoch with the unpatched loader, revert, compare again."""
    import tempfile

    from stallscope.fixes.base import registered_fixes

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "class0").mkdir()
        for i, data in enumerate(blobs[:n]):
            (root / "class0" / f"{i:05d}.jpg").write_bytes(data)
        transform = pipelines()["serve"]
        if HAVE_TV:
            from torchvision.datasets import ImageFolder

            dataset = ImageFolder(str(root), transform=transform)
        else:
            dataset = _Folder(root, transform)
        loader = torch.utils.data.DataLoader(dataset, batch_size=min(32, n), num_workers=2)
        before = torch.cat([x for x, _ in loader])
        fix = registered_fixes(["gpu-preprocess"])["gpu-preprocess"]()
        if device.type != "cuda":
            fix.device = "cpu"
        [target] = fix.find_targets(loader)
        reason = fix.why_not(target)
        if reason:
            return {"applied": False, "why_not": reason}
        handle = fix.apply(target)
        after = torch.cat([x.float().cpu() for x, _ in loader])
        fix.revert(handle)
        again = torch.cat([x for x, _ in loader])
    std = torch.tensor(STD).view(1, 3, 1, 1)
    levels = ((after - before).abs() * std * 255).amax().item()  # back to 0-255 levels before Normalize
    return {"applied": True, "images": n, "output_device": str(device), "max_diff_levels_before_normalisation": round(levels, 3),
            "within_tolerance_2_of_255": bool(levels <= 2.0 + 1e-3), "revert_bit_identical": bool(torch.equal(before, again))}


def build_model(device: torch.device, quick: bool):
    if HAVE_TV:
        import torchvision

        model = torchvision.models.resnet50(weights=None)
    else:  # --quick without torchvision: a small conv net stands in
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 7, 4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                    torch.nn.Flatten(), torch.nn.Linear(16, 1000))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = model.to(device=device, dtype=dtype, memory_format=torch.channels_last).eval()

    @torch.inference_mode()
    def infer(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True).to(dtype).contiguous(memory_format=torch.channels_last)
        return model(x).argmax(1).cpu()  # serving returns the predictions

    return infer, dtype


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def environment(device: torch.device, out: Path) -> dict:
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "torch": str(torch.__version__), "cuda": torch.version.cuda, "cpu_count": os.cpu_count(),
           "torchvision": None, "cpu": cpu_model(), "command": recorded_command([sys.executable, __file__, *sys.argv[1:]], out), "device": str(device)}
    if HAVE_TV:
        import torchvision

        env["torchvision"] = torchvision.__version__
    else:
        env["torchvision_note"] = TV_WHY + "; CPU pipeline uses PIL stand-ins"
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
        try:
            import pynvml

            pynvml.nvmlInit()
            env["driver"] = pynvml.nvmlSystemGetDriverVersion()
        except Exception:  # noqa: BLE001
            env["driver"] = None
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cpu_workers = (4, 16)
    gpu_workers = 2
    if args.quick:
        args.images, args.batch, args.epochs, cpu_workers, gpu_workers = 48, 16, 1, (1, 2), 1
    torch.backends.cudnn.benchmark = True
    start = time.perf_counter()
    blobs = make_dataset(args.images, min(16, os.cpu_count() or 1))
    sizes = [len(b) for b in blobs]
    print(f"{len(blobs)} JPEGs, mean {np.mean(sizes) / 1024:.1f} KiB, made in {time.perf_counter() - start:.1f} s", flush=True)
    result = {"schema": 1, "benchmark": "gpu-preprocess", **environment(device, Path(args.out)), "images": len(blobs),
              "batch": args.batch, "epochs_timed": args.epochs, "goal": "end to end speedup >= 2.25 vs CPU at 4 workers"}
    errors = {}

    def attempt(name, fn):
        try:
            value = fn()
            print(f"  {name}: {value}", flush=True)
            return value
        except Exception as exc:  # noqa: BLE001 - one broken configuration must not lose the others
            errors[name] = f"{type(exc).__name__}: {exc}"
            print(f"  {name}: FAILED {errors[name]}", flush=True)
            return None

    pipes = pipelines()
    sink = (lambda x: x.to(device, non_blocking=True)) if device.type == "cuda" else (lambda x: x)
    alone = {}
    for pname in ("serve", "train"):
        for w in cpu_workers:
            alone[f"{pname}_cpu_{w}_workers"] = attempt(
                f"pipeline {pname} cpu {w} workers",
                lambda: run_loader(cpu_loader(blobs, pipes[pname], w, args.batch), sink, args.epochs, device))
        for prefetch in (0, 2):
            alone[f"{pname}_gpu_prefetch{prefetch}"] = attempt(
                f"pipeline {pname} gpu prefetch {prefetch}",
                lambda: run_loader(gpu_loader(blobs, pipes[pname], device, args.batch, gpu_workers, prefetch), sink,
                                   args.epochs, device))
    w = cpu_workers[0]
    alone[f"serve_cpu_decode_gpu_resize_{w}_workers"] = attempt(
        f"pipeline serve cpu decode + gpu resize {w} workers",
        lambda: run_loader(gpu_loader(blobs, pipes["serve"], device, args.batch, w, 0, cpu_decode=True), sink,
                           args.epochs, device))
    if HAVE_TV and device.type == "cuda":
        alone["serve_gpu_naive_per_image_loop"] = attempt(
            "pipeline serve gpu naive loop", lambda: run_loader(NaiveGpuLoop(blobs, device, args.batch), sink, 1, device))
    result["pipeline_alone"] = alone

    e2e = {}
    model = attempt("model", lambda: build_model(device, args.quick))
    if model is not None:
        infer, dtype = model
        resident = torch.randn(args.batch, 3, 224, 224, device=device)
        e2e["model_only"] = attempt("e2e model only", lambda: run_loader(
            [(resident, None)] * max(1, len(blobs) // args.batch), infer, args.epochs, device))
        for w in cpu_workers:
            e2e[f"cpu_{w}_workers"] = attempt(f"e2e cpu {w} workers", lambda: run_loader(
                cpu_loader(blobs, pipes["serve"], w, args.batch), infer, args.epochs, device))
        w = cpu_workers[0]
        e2e[f"cpu_decode_gpu_resize_{w}_workers"] = attempt(f"e2e cpu decode + gpu resize {w} workers", lambda: run_loader(
            gpu_loader(blobs, pipes["serve"], device, args.batch, w, 0, cpu_decode=True), infer, args.epochs, device))
        for prefetch in (0, 2):
            e2e[f"gpu_prefetch{prefetch}"] = attempt(f"e2e gpu prefetch {prefetch}", lambda: run_loader(
                gpu_loader(blobs, pipes["serve"], device, args.batch, gpu_workers, prefetch), infer, args.epochs, device))
    result["end_to_end_resnet50"] = e2e
    result["model_dtype"] = str(model[1]) if model else None

    def rate(d, k):
        return (d.get(k) or {}).get("images_per_s")

    gpu_best = max((k for k in ("gpu_prefetch0", "gpu_prefetch2") if rate(e2e, k)), key=lambda k: rate(e2e, k), default=None)
    speedups = {}
    if gpu_best:
        speedups["gpu_config_used"] = gpu_best
        for w in cpu_workers:
            if rate(e2e, f"cpu_{w}_workers"):
                speedups[f"e2e_vs_cpu_{w}_workers"] = round(rate(e2e, gpu_best) / rate(e2e, f"cpu_{w}_workers"), 2)
    w = cpu_workers[0]
    if rate(e2e, f"cpu_decode_gpu_resize_{w}_workers") and rate(e2e, f"cpu_{w}_workers"):
        speedups[f"e2e_cpu_decode_gpu_resize_vs_cpu_{w}_workers"] = round(
            rate(e2e, f"cpu_decode_gpu_resize_{w}_workers") / rate(e2e, f"cpu_{w}_workers"), 2)
    for pname in ("serve", "train"):
        best = max((rate(alone, f"{pname}_gpu_prefetch{p}") or 0) for p in (0, 2))
        for w in cpu_workers:
            if best and rate(alone, f"{pname}_cpu_{w}_workers"):
                speedups[f"pipeline_{pname}_vs_cpu_{w}_workers"] = round(best / rate(alone, f"{pname}_cpu_{w}_workers"), 2)
    result["speedup"] = speedups
    headline = speedups.get(f"e2e_vs_cpu_{cpu_workers[0]}_workers")
    result["goal_met"] = bool(headline is not None and headline >= 2.25) if not args.quick else None
    result["cpu_stage_breakdown_per_image"] = attempt("breakdown", lambda: stage_breakdown(
        blobs, min(len(blobs), 48 if args.quick else 256), device, args.batch))
    result["gpu_stage_breakdown"] = attempt("gpu breakdown", lambda: gpu_stage_breakdown(blobs, device, args.batch))
    result["equivalence_before_normalisation"] = attempt("equivalence", lambda: equivalence(
        blobs, device, min(len(blobs), 16 if args.quick else 64)))
    result["fix_apply_check"] = attempt("fix apply check", lambda: fix_apply_check(blobs, device, 16 if args.quick else 128))
    if errors:
        result["errors"] = errors
    result["wall_s"] = round(time.perf_counter() - start, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from stallscope.profiler.common import write_yaml

    write_yaml(out / "gpu-preprocess.yaml", result)
    print(f"\n{'configuration':<34} {'images/s':>10} {'cores busy':>10}")
    for section, rows in (("pipeline", alone), ("e2e", e2e)):
        for k, v in rows.items():
            if v:
                print(f"{section + ' ' + k:<34} {v['images_per_s']:>10.1f} {v['cpu_cores_busy']:>10.2f}")
    for k, v in speedups.items():
        print(f"speedup {k}: {v}")
    bd = result.get("cpu_stage_breakdown_per_image") or {}
    if bd:
        print(f"CPU serve per image {bd['serve_total_ms']} ms: {bd['serve_share_pct']}")
    eq = result.get("equivalence_before_normalisation") or {}
    if eq:
        print(f"max |GPU - PIL| levels: same decode {eq.get('same_decode_float32', {}).get('max_levels')}, "
              f"nvJPEG decode {eq.get('gpu_decode', {}).get('max_levels')}")
    print(f"wrote {out / 'gpu-preprocess.yaml'} in {result['wall_s']} s" + (f"; {len(errors)} errors" if errors else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
