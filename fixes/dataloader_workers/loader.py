"""DataLoader helpers the DataLoader fixes share: naming, epoch observation, sample probes.

A DataLoader's settings are read when an iterator is created (``iter(loader)``, i.e. at an
epoch boundary), so a changed setting takes effect at the next epoch and the running epoch is
left alone. :func:`observe_epochs` counts iterator creations through an instance attribute
(``loader._get_iterator``, which ``DataLoader.__iter__`` looks up on the instance), so the
class is never touched.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["equal_samples", "is_dataloader", "loader_name", "observe_epochs", "probe_sample", "stop_observing"]


def is_dataloader(obj: Any) -> bool:
    from torch.utils.data import DataLoader

    return isinstance(obj, DataLoader)


def loader_name(loader: Any) -> str:
    """A readable, per-instance name: dataset class, batch size, address."""
    return f"DataLoader({type(loader.dataset).__name__}, batch_size={loader.batch_size})@{id(loader):x}"


def observe_epochs(loader: Any, counter: list[int]) -> Callable[[], Any]:
    """Count iterator creations of ``loader`` in ``counter[0]``; returns the wrapper installed."""
    previous = loader.__dict__.get("_get_iterator")
    inner = previous if previous is not None else loader._get_iterator

    def _get_iterator() -> Any:
        if getattr(_get_iterator, "active", True):
            counter[0] += 1
        return inner()

    _get_iterator.previous = previous  # type: ignore[attr-defined]
    loader._get_iterator = _get_iterator
    return _get_iterator


def stop_observing(loader: Any, wrapper: Any) -> None:
    """Undo :func:`observe_epochs`; if another wrapper was stacked on top, go inert instead."""
    if loader.__dict__.get("_get_iterator") is wrapper:
        if wrapper.previous is None:
            del loader.__dict__["_get_iterator"]
        else:
            loader._get_iterator = wrapper.previous
    else:
        wrapper.active = False


class _RNG:
    def __init__(self) -> None:
        import torch

        self.torch = torch.random.get_rng_state()
        self.py = random.getstate()
        np = sys.modules.get("numpy")
        self.np = np.random.get_state() if np is not None else None

    def seed(self, s: int) -> None:
        import torch

        torch.manual_seed(s)
        random.seed(s)
        np = sys.modules.get("numpy")
        if np is not None:
            np.random.seed(s % (2**32))

    def restore(self) -> None:
        import torch

        torch.random.set_rng_state(self.torch)
        random.setstate(self.py)
        if self.np is not None:
            sys.modules["numpy"].random.set_state(self.np)


def probe_sample(loader: Any, index: int = 0, seeds: tuple[int, ...] = (12345, 67890)) -> tuple[list[Any], bool]:
    """``collate([dataset[index]])`` under each seed (torch, random, numpy), with every RNG state
    put back afterwards, and whether loading drew from the process's RNGs. Equal samples mean
    the sample does not depend on the RNG state."""
    import torch

    rng = _RNG()
    out = []
    consumed = False
    try:
        for s in seeds:
            rng.seed(s)
            before = (torch.random.get_rng_state(), random.getstate())
            out.append(loader.collate_fn([loader.dataset[index]]))
            consumed |= not torch.equal(before[0], torch.random.get_rng_state()) or before[1] != random.getstate()
    finally:
        rng.restore()
    return out, consumed


def equal_samples(a: Any, b: Any) -> bool:
    """Bit-exact equality of nested samples (tensors, arrays, numbers, strings, containers)."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and bool(torch.equal(a.cpu(), b.cpu()))
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(equal_samples(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(equal_samples(x, y) for x, y in zip(a, b, strict=False))
    np = sys.modules.get("numpy")
    if np is not None and (isinstance(a, np.ndarray) or isinstance(b, np.ndarray)):
        return bool(np.array_equal(a, b))
    try:
        return bool(a == b)
    except Exception:
        return False


def contains_cuda(sample: Any) -> bool:
    import torch

    if isinstance(sample, torch.Tensor):
        return sample.is_cuda
    if isinstance(sample, dict):
        return any(contains_cuda(v) for v in sample.values())
    if isinstance(sample, (list, tuple)):
        return any(contains_cuda(v) for v in sample)
    return False
