"""Settings table for the generic fix contract tests (Composer's ``algorithm_settings`` idea).

Every registered fix must appear here: either a :class:`FixSetting` that builds a small live
program it can patch on the CPU (a model and an input, or a DataLoader), or an
:class:`Advisory` entry saying why it cannot be patched into a program on the CPU.
``tests/test_fix_contract.py`` runs the same contract over every runnable entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


@dataclass
class FixSetting:
    """A live program a fix can patch on the CPU.

    ``build()`` returns a dict with ``model`` and ``input`` (module/process fixes) or
    ``loader`` (DataLoader fixes). ``effect()`` says whether the patch is in force (process
    fixes change global settings); ``cpu_parity`` is False when the fix's own parity check
    needs a GPU (it then runs in the GPU script).
    """

    build: Callable[[], dict[str, Any]]
    effect: Callable[[dict[str, Any]], bool] | None = None
    cpu_parity: bool = True
    note: str = ""
    min_targets: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Advisory:
    """A fix that does not patch a live program on the CPU, and why."""

    reason: str


class GemmNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.GELU(), nn.Dropout(0.2), nn.Linear(32, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
        self.head = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).flatten(1))


def fast_kernels_in_force(model: nn.Module) -> bool:
    """Every GR-KAN activation of ``model`` runs the swapped-in fast path (the flashkat patch)."""
    from stallscope.fixes.flashkat.modules import is_grkan_module

    acts = [m for m in model.modules() if is_grkan_module(m)]
    return bool(acts) and all(getattr(m.__dict__.get("rational"), "stallscope_fast", False) for m in acts)


def kat_like_mlp() -> nn.Module:
    """Two GR-KAN activations (our KAT_Group drop-in on the baseline kernels) in an MLP block."""
    from stallscope.fixes.flashkat.modules import BaselineKATGroup

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 32),
        BaselineKATGroup(num_groups=4, mode="swish"),
        nn.Linear(32, 16),
        BaselineKATGroup(num_groups=4, mode="identity"),
    )


class SquaresDataset(Dataset):
    """Deterministic samples: (features, label) computed from the index."""

    def __init__(self, n: int = 40) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.arange(6, dtype=torch.float32) * i, i % 3


def shuffled_loader() -> DataLoader:
    return DataLoader(SquaresDataset(), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(7))


SETTINGS: dict[str, FixSetting | Advisory] = {
    "flashkat": FixSetting(
        build=lambda: {"model": kat_like_mlp(), "input": torch.randn(4, 5, 16)},
        effect=lambda built: fast_kernels_in_force(built["model"]),
        min_targets=2,
        note="on the CPU both sides run the PyTorch path of the same maths; the kernels are compared with an "
        "independent implementation under the Triton interpreter (tests/flashkat_*interp_cases.py) and on "
        "the GPU (bench/autopatch_gpu.py)",
    ),
    "tf32": FixSetting(
        build=lambda: {"model": GemmNet(), "input": torch.randn(6, 16)},
        effect=lambda built: torch.get_float32_matmul_precision() == "high",
    ),
    "cudnn-benchmark": FixSetting(
        build=lambda: {"model": ConvNet(), "input": torch.randn(2, 3, 8, 8)},
        effect=lambda built: bool(torch.backends.cudnn.benchmark),
    ),
    "pin-memory": FixSetting(
        build=lambda: {"loader": shuffled_loader()},
        effect=lambda built: built["loader"].pin_memory,
        cpu_parity=False,
        note="pinning needs CUDA; on the CPU the DataLoader ignores pin_memory, order/content are still checked",
    ),
    "dataloader-workers": FixSetting(
        build=lambda: {"loader": shuffled_loader()},
        effect=lambda built: built["loader"].num_workers > 0,
    ),
    "tensorbleu": Advisory("the per-sentence BLEU loop must be rewritten to one batched call; the fix only advises"),
    "gpu-preprocess": Advisory(
        "patches an ImageFolder-style DataLoader with torchvision transforms over JPEG files "
        "(torchvision is not on the CPU CI); its own tests cover it (tests/test_gpu_preprocess.py)"
    ),
    "bottleneck-sampling": Advisory(
        "patches a diffusers pipeline object (not installed on the CPU CI) with an "
        "approximate schedule verified by its own quality benchmark, not by elementwise parity"
    ),
}
