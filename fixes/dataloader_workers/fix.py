"""``dataloader-workers``: load batches in worker processes instead of the training loop's thread.

Rules (each refusal is reported with its reason):

* only a DataLoader with ``num_workers == 0`` over a map-style dataset; an ``IterableDataset``
  is refused: without sharding by ``get_worker_info()`` every worker would replay the stream;
* the data must not change: ``dataset[0]`` is loaded under two different seeds (torch,
  ``random``, numpy) and must come out bit-identical and without drawing from the process's
  RNGs; random augmentations would draw from per-worker seeds instead, and a dataset that draws
  from the main RNG would shift every later random draw of the program;
* the order must not change: indices are still drawn by the same sampler (and its
  ``generator``) in the main process, and batches are delivered in order (``in_order`` must be
  True where the attribute exists); the per-epoch base seed is drawn the same way with or
  without workers;
* no CUDA tensors in samples (CUDA cannot be used in forked workers); with a non-fork start
  method the dataset and ``collate_fn`` must pickle;
* at least one spare CPU: workers = min(8, CPUs available / local ranks - 1).

The change takes effect when the program next calls ``iter(loader)`` (the next epoch); the
running epoch continues as it was. ``revert`` restores the settings for the following epoch.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
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

MAX_WORKERS = 8


def worker_count() -> int:
    """Workers to use: the CPUs this process may run on, shared among local ranks, minus one."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(0, min(MAX_WORKERS, cpus // local - 1))


@register
class DataLoaderWorkers(Fix):
    id = "dataloader-workers"
    answers = ("input-pipeline-data-wait", "input-pipeline")
    description = "Give a single-process DataLoader worker processes (same order, same data), from its next epoch."
    advice = (
        "Load batches in worker processes: `DataLoader(..., num_workers=N, persistent_workers=True)`, N about the "
        "CPUs per GPU minus one, for a map-style dataset whose samples do not draw from the main process's RNG. "
        "`stallscope profile --auto-patch -- CMD` gives a single-process DataLoader workers from its next epoch "
        "(same order, same data, checked) and keeps them only when faster."
    )
    tolerance = Tolerance(rtol=0.0, atol=0.0, grad_rtol=0.0, grad_atol=0.0, note="batches must be bit-identical")
    scope = "dataloader"

    def find_targets(self, root: Any) -> list[Target]:
        if not is_dataloader(root) or root.num_workers != 0:
            return []
        return [Target(loader_name(root), root, "dataloader")]

    def why_not(self, target: Target) -> str | None:
        from torch.utils.data import IterableDataset

        loader = target.obj
        if isinstance(loader.dataset, IterableDataset):
            return "IterableDataset: workers would each replay the stream unless it shards by get_worker_info()"
        if getattr(loader, "in_order", True) is False:
            return "in_order=False: workers would deliver batches out of order"
        if worker_count() < 1:
            return "no spare CPU for a worker process"
        try:
            if len(loader.dataset) == 0:
                return "the dataset is empty"
            samples, consumed = probe_sample(loader)
        except Exception as exc:
            return f"could not load a probe sample: {type(exc).__name__}: {exc}"
        if not equal_samples(samples[0], samples[1]):
            return "samples depend on the RNG state (random augmentations): in workers they would change"
        if consumed:
            return "loading a sample draws from the process's RNG: in workers later random draws would change"
        if contains_cuda(samples[0]):
            return "samples hold CUDA tensors, which forked workers cannot create"
        method = loader.multiprocessing_context or multiprocessing.get_start_method(allow_none=True) or "fork"
        if str(getattr(method, "_name", method)) != "fork":
            try:
                pickle.dumps((loader.dataset, loader.collate_fn, loader.worker_init_fn))
            except Exception as exc:
                return f"start method {method} needs a picklable dataset: {type(exc).__name__}"
        return None

    def diagnose(self, target: Target, context: Mapping[str, Any] | None = None) -> Diagnosis:
        verdict = super().diagnose(target, context)
        context = context or {}
        share = context.get("data_wait_pct")
        if verdict.called_for and not context.get("findings") and share is not None and share < 2.0:
            # 2 %: the auto-patch keeps nothing that gains less, so a smaller data wait cannot pay
            return Diagnosis(False, f"data wait is {share:.1f} % of the step (< 2 %): workers cannot gain enough")
        if verdict.called_for and share is not None:
            return Diagnosis(True, f"{verdict.why}; data wait {share:.1f} % of the step")
        return verdict

    def apply(self, target: Target) -> PatchHandle:
        loader = target.obj
        saved = {"num_workers": loader.num_workers, "prefetch_factor": loader.prefetch_factor, "epochs": [0]}
        loader.num_workers = worker_count()
        if loader.prefetch_factor is None:
            loader.prefetch_factor = 2
        saved["observer"] = observe_epochs(loader, saved["epochs"])
        return PatchHandle(self.id, target, saved)

    def revert(self, handle: PatchHandle) -> None:
        loader = handle.target.obj
        stop_observing(loader, handle.saved["observer"])
        loader.num_workers = handle.saved["num_workers"]
        loader.prefetch_factor = handle.saved["prefetch_factor"]
        handle.reverted = True

    def effective(self, handle: PatchHandle) -> bool:
        """True once the program has started an epoch (a new iterator) since ``apply``."""
        return handle.saved["epochs"][0] > 0

    def verify(self, handle: PatchHandle) -> dict[str, Any]:
        loader = handle.target.obj
        samples, consumed = probe_sample(loader)
        same = equal_samples(samples[0], samples[1]) and not consumed
        return {
            "passed": same,
            "reason": (
                "dataset[0] is bit-identical under two RNG seeds and draws no process RNG; "
                "indices still come from the same sampler in order"
            )
            if same
            else "dataset[0] depends on the RNG state",
            "workers": loader.num_workers,
        }
