"""GPU-side image preprocessing: batched JPEG decode on the GPU, PIL-equivalent crop/resize/flip
as batched matmuls, fused normalize, channels_last; a DataLoader adapter that moves all of it
after the transfer. Imports lazily so that ``stallscope.fixes.gpu_preprocess.fix`` stays cheap."""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "GpuPipeline": "pipeline",
    "Plan": "pipeline",
    "PackedJpegs": "pipeline",
    "PackedImages": "pipeline",
    "read_decoded": "adapter",
    "collate_decoded": "adapter",
    "Unsupported": "pipeline",
    "plan_from_transform": "pipeline",
    "decode_images": "pipeline",
    "random_resized_crop_params": "pipeline",
    "torchvision_available": "pipeline",
    "resample_batch": "resample",
    "GpuPreprocessLoader": "adapter",
    "patch_loader": "adapter",
    "unpatch_loader": "adapter",
    "read_bytes": "adapter",
    "collate_encoded": "adapter",
}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
