"""``stallscope demo``: profile a small real workload with a genuine input-pipeline bottleneck.

The workload decodes JPEG images with PIL and augments them on the CPU (random resized crop,
flip, colour jitter, blur) in a ``DataLoader`` with ``num_workers=0``, feeding a small CNN.
The loop waits on the data most of the time, which is what the diagnosis should find. With a
GPU present the CNN also carries a Group-Rational (GR-KAN style) activation layer.

Run as a script (``python profiler/demo.py --run``) it is the workload itself.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any, Optional

from stallscope.profiler.command import ProfileResult, profile_command
from stallscope.profiler.options import ProfileOptions

__all__ = ["run_demo", "main"]  # GroupRational is built lazily (module __getattr__)

DEMO_STEPS = 24
DEMO_SKIP = 6
DEMO_WINDOW = 5


def run_demo(out: Optional[Path] = None, quiet: bool = False, diagnose: bool = True) -> ProfileResult:
    """Profile the bundled workload (through ``profile``) and print the summary; the caller
    diagnoses the run when the result says so."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--run", "--steps", str(DEMO_STEPS)]
    options = ProfileOptions.from_user(skip=DEMO_SKIP, steps=DEMO_WINDOW)
    return profile_command(cmd, options, out=out, diagnose=diagnose, quiet=quiet)


def _build(torch: Any) -> Any:  # torch passed in so that importing this module stays cheap
    nn: Any = torch.nn  # a module from the argument: its classes are bases below

    class GroupRational(nn.Module):
        """Group-rational activation: y = P(x) / (1 + |Q(x)|), coefficients shared per channel group.

        P has degree ``m`` (m+1 coefficients), Q degree ``n`` without constant term; each of the
        ``groups`` channel groups has its own coefficients, initialised near the identity-ish
        shape of a smooth ReLU so that training starts stable.
        """

        def __init__(self, channels: int, groups: int = 4, m: int = 5, n: int = 4) -> None:
            super().__init__()
            if channels % groups:
                raise ValueError(f"channels {channels} not divisible by groups {groups}")
            self.groups, self.m, self.n = groups, m, n
            num = torch.zeros(groups, m + 1)
            num[:, 1] = 1.0
            num[:, 2] = 0.5
            self.numerator = nn.Parameter(num)
            self.denominator = nn.Parameter(torch.full((groups, n), 0.1))

        def forward(self, x):  # (B, C, ...) channels grouped contiguously
            b, c = x.shape[0], x.shape[1]
            xg = x.reshape(b, self.groups, c // self.groups, -1)
            shape = (1, self.groups, 1, 1)
            p = self.numerator[:, self.m].reshape(shape).expand_as(xg)
            for i in range(self.m - 1, -1, -1):
                p = p * xg + self.numerator[:, i].reshape(shape)
            q = self.denominator[:, self.n - 1].reshape(shape) * xg
            for j in range(self.n - 2, -1, -1):
                q = (q + self.denominator[:, j].reshape(shape)) * xg
            return (p / (1.0 + q.abs())).reshape(x.shape)

    class SmallCNN(nn.Module):
        def __init__(self, rational: bool) -> None:
            super().__init__()
            act = (lambda c: GroupRational(c)) if rational else (lambda c: nn.ReLU())
            self.features = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1),
                nn.BatchNorm2d(8),
                act(8),
                nn.MaxPool2d(2),
                nn.Conv2d(8, 16, 3, padding=1),
                nn.BatchNorm2d(16),
                act(16),
                nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1),
                nn.BatchNorm2d(32),
                act(32),
                nn.AdaptiveAvgPool2d(1),
            )
            self.head = nn.Linear(32, 10)

        def forward(self, x):
            return self.head(self.features(x).flatten(1))

    return GroupRational, SmallCNN


def __getattr__(name: str):
    if name == "GroupRational":
        import torch

        return _build(torch)[0]
    raise AttributeError(name)


def _make_jpegs(n: int, size: int, seed: int) -> list:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = []
    for _ in range(n):
        f = rng.uniform(1, 6, size=3)
        ph = rng.uniform(0, 6.28, size=3)
        img = np.stack([np.sin(f[c] * (xx + yy * (c + 1)) * 3.14 + ph[c]) for c in range(3)], axis=-1)
        img = (img * 0.4 + 0.5 + rng.normal(0, 0.08, img.shape)).clip(0, 1)
        buf = io.BytesIO()
        Image.fromarray((img * 255).astype(np.uint8)).save(buf, format="JPEG", quality=92)
        out.append((buf.getvalue(), int(rng.integers(0, 10))))
    return out


def main(argv: Optional[list] = None) -> int:
    """The workload: decode + augment on the CPU in the main process, train a small CNN."""
    ap = argparse.ArgumentParser(description="stallscope demo workload")
    ap.add_argument("--run", action="store_true")
    ap.add_argument("--steps", type=int, default=DEMO_STEPS)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image, ImageEnhance, ImageFilter
    from torch.utils.data import DataLoader, Dataset

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        # the model stands in for GPU work; one intra-op thread keeps it small and steady on a busy CPU
        torch.set_num_threads(1)
    samples = _make_jpegs(128, 192, seed=0)

    # Image.BICUBIC & co.: Pillow sets these module constants in a loop mypy cannot follow (hence the
    # ignores below); Image.Resampling would need Pillow 9.1, and the project allows 9.0.
    class JpegDataset(Dataset):
        def __len__(self) -> int:
            return len(samples)

        def __getitem__(self, i: int):
            data, label = samples[i]
            rng = np.random.default_rng(i)
            img = Image.open(io.BytesIO(data)).convert("RGB")
            w, h = img.size
            cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            img = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((128, 128), Image.BICUBIC)  # type: ignore[attr-defined]
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)  # type: ignore[attr-defined]
            img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.3))
            img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.7, 1.3))
            img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 1.5))))
            img = img.resize((32, 32), Image.BILINEAR)  # type: ignore[attr-defined]
            arr = np.asarray(img, dtype=np.float32) / 255.0
            t = torch.from_numpy(arr).permute(2, 0, 1)
            return (t - 0.5) / 0.25, label

    loader = DataLoader(JpegDataset(), batch_size=args.batch, shuffle=True, num_workers=0)
    _, SmallCNN = _build(torch)
    model = SmallCNN(rational=(device == "cuda")).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    step = 0
    while step < args.steps:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step >= args.steps:
                break
    print(f"demo: {step} steps on {device}, final loss {loss.item():.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
