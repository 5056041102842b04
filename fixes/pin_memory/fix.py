"""``pin-memory``: collate DataLoader batches into page-locked host memory.

Copies from pinned memory go straight to the GPU by DMA (and overlap with compute when the
program uses ``.to(device, non_blocking=True)``); from pageable memory CUDA first stages them
through a pinned bounce buffer, synchronously. Pinning copies the bytes, so the data and the
order are unchanged; ``verify`` pins a real sample and compares it bit for bit.

Refused: batches that already hold CUDA tensors (nothing to pin), and a DataLoader with
persistent workers whose iterator already exists (the setting would never reach it). The
change takes effect at the next ``iter(loader)`` (next epoch).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stallscope.fixes.base import Diagnosis, Fix, PatchHandle, Target, Tolerance, register
from stallscope.fixes.dataloader_workers.loader import (
    contains_cuda,
    equal_samples,
    is_dataloader,
    loader_name,
    observe_epochs,
    probe_sample,
    stop_observing,
)


@register
class PinMemory(Fix):
    id = "pin-memory"
    answers = ("pageable-copies",)
    description = "DataLoader(pin_memory=True): page-locked batches for faster, asynchronous host-to-device copies."
    advice = (
        "Create the DataLoader with `pin_memory=True` and copy batches with `.to(device, non_blocking=True)`: "
        "page-locked batches go to the GPU by DMA and overlap with compute. `stallscope profile --auto-patch -- CMD` "
        "sets it on the live DataLoader (from its next epoch) and keeps it only when faster."
    )
    tolerance = Tolerance(rtol=0.0, atol=0.0, grad_rtol=0.0, grad_atol=0.0, note="batches must be bit-identical")
    scope = "dataloader"
    requires_cuda = True

    def find_targets(self, root: Any) -> list[Target]:
        if not is_dataloader(root) or root.pin_memory:
            return []
        return [Target(loader_name(root), root, "dataloader")]

    def why_not(self, target: Target) -> str | None:
        loader = target.obj
        if loader.persistent_workers and getattr(loader, "_iterator", None) is not None:
            return "persistent workers already running: pin_memory would never reach their iterator"
        try:
            samples, _ = probe_sample(loader, seeds=(0,))
        except Exception as exc:
            return f"could not load a probe sample: {type(exc).__name__}: {exc}"
        if contains_cuda(samples[0]):
            return "batches already hold CUDA tensors"
        return None

    def diagnose(self, target: Target, context: Mapping[str, Any] | None = None) -> Diagnosis:
        verdict = super().diagnose(target, context)
        if verdict.called_for and not (context or {}).get("findings"):
            return Diagnosis(True, f"{verdict.why}; batches are copied to the GPU from pageable memory")
        return verdict

    def apply(self, target: Target) -> PatchHandle:
        loader = target.obj
        saved = {"pin_memory": loader.pin_memory, "epochs": [0]}
        loader.pin_memory = True
        saved["observer"] = observe_epochs(loader, saved["epochs"])
        return PatchHandle(self.id, target, saved)

    def revert(self, handle: PatchHandle) -> None:
        loader = handle.target.obj
        stop_observing(loader, handle.saved["observer"])
        loader.pin_memory = handle.saved["pin_memory"]
        handle.reverted = True

    def effective(self, handle: PatchHandle) -> bool:
        """True once the program has started an epoch (a new iterator) since ``apply``."""
        return handle.saved["epochs"][0] > 0

    def verify(self, handle: PatchHandle) -> dict[str, Any]:
        import torch
        from torch.utils.data._utils.pin_memory import pin_memory

        if not torch.cuda.is_available():
            return {"passed": False, "reason": "no CUDA device: memory cannot be pinned here"}
        samples, _ = probe_sample(handle.target.obj, seeds=(0,))
        try:
            pinned = pin_memory(samples[0])
        except Exception as exc:
            return {"passed": False, "reason": f"pinning a real batch failed: {type(exc).__name__}: {exc}"}
        same = equal_samples(samples[0], pinned)
        return {
            "passed": same,
            "reason": "a pinned probe batch is bit-identical to the pageable one"
            if same
            else "the pinned batch differs from the pageable one",
        }
