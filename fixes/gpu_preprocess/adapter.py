"""DataLoader adapter: the workers only read encoded bytes; decode and transforms run after the
transfer, batched on the GPU.

* :class:`GpuPreprocessLoader` wraps any loader that yields ``(list_of_encoded, targets)`` and
  yields ``(images, targets)`` with ``images`` a channels_last float batch on the device.
* :func:`patch_loader` / :func:`unpatch_loader` turn an ImageFolder-style DataLoader (a dataset
  with ``loader`` and ``transform`` attributes) into one, instance-scoped and reversibly: the
  dataset's ``loader`` reads bytes, its ``transform`` is cleared, the collate keeps a list, and
  this one DataLoader object gets a subclass whose ``__iter__`` runs the GPU pipeline.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import default_collate

from stallscope.fixes.gpu_preprocess.pipeline import GpuPipeline, PackedImages, PackedJpegs, pil_decode_hwc

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

__all__ = [
    "read_bytes",
    "read_decoded",
    "collate_encoded",
    "collate_decoded",
    "GpuPreprocessLoader",
    "patch_loader",
    "unpatch_loader",
]

_MISSING = object()


def read_bytes(path: str) -> torch.Tensor:
    """The file's bytes as a 1-D uint8 tensor (what the workers return instead of a PIL image)."""
    with open(path, "rb") as f:
        return torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)


def read_decoded(path: str) -> torch.Tensor:
    """The image decoded with PIL as an (H, W, 3) uint8 tensor (CPU decode, GPU resize mode)."""
    with open(path, "rb") as f:
        return pil_decode_hwc(f.read())


def collate_decoded(batch: Sequence[Any]) -> tuple[PackedImages, Any]:
    """``[(uint8 image, target, ...), ...]`` -> ``(PackedImages, default_collate(targets))``."""
    images = PackedImages.pack([item[0] for item in batch])
    targets = default_collate([item[1:] for item in batch])
    return images, (targets[0] if len(targets) == 1 else targets)


def collate_encoded(batch: Sequence[Any]) -> tuple[PackedJpegs, Any]:
    """``[(encoded, target, ...), ...]`` -> ``(PackedJpegs, default_collate(targets))``."""
    encoded = PackedJpegs.pack([item[0] for item in batch])
    rest = [item[1:] for item in batch]
    targets = default_collate(rest)
    return encoded, (targets[0] if len(targets) == 1 else targets)


class GpuPreprocessLoader:
    """Iterate ``loader`` (yielding ``(encoded_list, targets)``) and decode + transform each batch
    with ``pipeline`` on its device.

    With ``prefetch=k > 0`` on CUDA, a background thread decodes and transforms up to k batches
    ahead on a side stream (the host part of nvJPEG then overlaps the caller's GPU work); each
    batch is handed over with an event the caller's stream waits on."""

    def __init__(self, loader: Any, pipeline: GpuPipeline, prefetch: int = 0):
        self.loader = loader
        self.pipeline = pipeline
        self.prefetch = prefetch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any]]:
        if self.prefetch <= 0 or self.pipeline.device.type != "cuda":
            for encoded, targets in self.loader:
                yield self.pipeline(encoded), targets
            return
        yield from self._prefetched()

    def _prefetched(self) -> Iterator[tuple[torch.Tensor, Any]]:
        done = object()
        handoff: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        device = self.pipeline.device

        def produce() -> None:
            if device.index is not None:
                torch.cuda.set_device(device)
            stream = torch.cuda.Stream()
            try:
                with torch.cuda.stream(stream):
                    for encoded, targets in self.loader:
                        if stop.is_set():
                            return
                        batch = self.pipeline(encoded)
                        ready = torch.cuda.Event()
                        ready.record(stream)
                        handoff.put((batch, targets, ready))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
                handoff.put(exc)
                return
            handoff.put(done)

        worker = threading.Thread(target=produce, name="gpu-preprocess-prefetch", daemon=True)
        worker.start()
        try:
            while True:
                item = handoff.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                batch, targets, ready = item
                current = torch.cuda.current_stream(device)
                current.wait_event(ready)
                batch.record_stream(current)
                yield batch, targets
        finally:
            stop.set()
            while worker.is_alive():
                try:
                    handoff.get_nowait()
                except queue.Empty:
                    worker.join(timeout=0.05)


def _patched_class(cls: type[DataLoader]) -> type:
    cached = _PATCHED.get(cls)
    if cached is None:

        def __iter__(self):  # noqa: N807 - the special method of the per-instance subclass
            pipeline = self.__dict__["_stallscope_gpu_pipeline"]
            for encoded, targets in cls.__iter__(self):
                yield pipeline(encoded), targets

        cached = type(f"GpuPreprocessed{cls.__name__}", (cls,), {"__iter__": __iter__, "_stallscope_base": cls})
        _PATCHED[cls] = cached
    return cached


_PATCHED: dict[type, type] = {}


def patch_loader(loader: Any, pipeline: GpuPipeline) -> dict[str, Any]:
    """Make this DataLoader yield GPU-preprocessed batches; returns what :func:`unpatch_loader`
    needs. Only this loader and its dataset instance change."""
    dataset = loader.dataset
    saved = {
        "class": type(loader),
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "dataset_loader": dataset.__dict__.get("loader", _MISSING),
        "dataset_transform": dataset.__dict__.get("transform", _MISSING),
    }
    dataset.loader = read_bytes
    dataset.transform = None
    loader.collate_fn = collate_encoded
    loader.pin_memory = pipeline.device.type == "cuda"  # the uint8 bytes cross from pinned memory
    loader.__dict__["_stallscope_gpu_pipeline"] = pipeline
    loader.__class__ = _patched_class(type(loader))
    return saved


def unpatch_loader(loader: Any, saved: dict[str, Any]) -> None:
    """Undo :func:`patch_loader` exactly."""
    dataset = loader.dataset
    for attr, key in (("loader", "dataset_loader"), ("transform", "dataset_transform")):
        if saved[key] is _MISSING:
            dataset.__dict__.pop(attr, None)
        else:
            setattr(dataset, attr, saved[key])
    loader.__class__ = saved["class"]
    loader.collate_fn = saved["collate_fn"]
    loader.pin_memory = saved["pin_memory"]
    loader.__dict__.pop("_stallscope_gpu_pipeline", None)
