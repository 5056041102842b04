"""``bottleneck-sampling``: run a flow-matching diffusers pipeline's denoising loop high -> low -> high.

Scope ``pipeline``: the target is a pipeline object (``FluxPipeline``, ``StableDiffusion3Pipeline``
with ``FlowMatchEulerDiscreteScheduler``), found by duck typing (a ``transformer`` and a ``scheduler``).
``apply`` patches that one object (``diffusers_adapter.patch_pipeline``: its class is swapped for a
one-off subclass); ``revert`` restores the object's class, so the next ``pipe(...)`` is the original.

This is an approximation, not an exact rewrite, so elementwise parity does not apply: ``verify``
scores the applied schedule on the analytic benchmark (exact velocity of a Gaussian field at the
pipeline's default latent size) against 50 full-resolution Euler steps and passes at a quality
ratio >= ``MIN_QUALITY_RATIO`` (0.9: quality within 10 % of full resolution). Imports stay light:
torch and diffusers load inside the methods.
"""

from __future__ import annotations

from typing import Any

from stallscope.fixes.base import Fix, PatchHandle, Target, Tolerance, register
from stallscope.fixes.bottleneck_sampling.schedule import TUNED_SCHEDULE

MIN_QUALITY_RATIO = 0.9


@register
class BottleneckSampling(Fix):
    id = "bottleneck-sampling"
    answers = ("attention-bound-sampling", "attention")
    description = (
        "Run the middle denoising steps of a flow-matching diffusion pipeline at half resolution per axis "
        "(Bottleneck Sampling: high -> low -> high, re-noised at each transition)."
    )
    advice = (
        "Run the middle denoising steps at half resolution per axis (high -> low -> high): "
        '`stallscope.fixes.apply(pipe, ["bottleneck-sampling"])` on a FLUX or SD3 diffusers pipeline with a '
        "flow-matching Euler scheduler. It is an approximation, checked to keep quality within 10 % on the "
        "analytic benchmark; auto-patch does not apply it (it finds no pipeline in a training process)."
    )
    tolerance = Tolerance(
        rtol=float("inf"),
        atol=float("inf"),
        grad_rtol=float("inf"),
        grad_atol=float("inf"),
        scale="tensor",
        note="an approximation: samples differ elementwise by design; verified instead by the "
        "analytic benchmark's quality ratio >= 0.9 against 50 full-resolution steps",
    )
    scope = "pipeline"

    def __init__(self, schedule: Any = None, min_native_px: int | None = None) -> None:
        self.schedule = schedule  # None: the schedule checked on the analytic benchmark (TUNED_SCHEDULE)
        self.min_native_px = min_native_px

    def _schedule(self) -> Any:
        return self.schedule if self.schedule is not None else TUNED_SCHEDULE

    def find_targets(self, root: Any) -> list[Target]:
        """``root`` itself when it looks like a diffusion pipeline (a ``transformer`` and a
        ``scheduler``, and it is not a torch module)."""
        if root is None or hasattr(root, "named_parameters"):
            return []
        if getattr(root, "transformer", None) is None or getattr(root, "scheduler", None) is None:
            return []
        return [Target(name=type(root).__name__, obj=root, kind="pipeline")]

    def why_not(self, target: Target) -> str | None:
        from .diffusers_adapter import is_patched, why_not

        if is_patched(target.obj):
            return "the pipeline already runs bottleneck sampling"
        return why_not(target.obj)

    def apply(self, target: Target) -> PatchHandle:
        from .diffusers_adapter import patch_pipeline

        reason = self.why_not(target)
        if reason:
            raise ValueError(f"bottleneck-sampling cannot patch {target.name}: {reason}")
        original = type(target.obj)
        patch_pipeline(target.obj, self._schedule(), self.min_native_px)
        return PatchHandle(self.id, target, saved={"class": original})

    def revert(self, handle: PatchHandle) -> None:
        from .diffusers_adapter import unpatch_pipeline

        if handle.reverted:
            return
        unpatch_pipeline(handle.target.obj)
        if type(handle.target.obj) is not handle.saved["class"]:
            handle.target.obj.__class__ = handle.saved["class"]
        handle.reverted = True

    def parity_module(self, handle: PatchHandle) -> Any:
        return None

    def verify(self, handle: PatchHandle) -> dict[str, Any] | None:
        from .analytic import GaussianField, exact_quality

        pipe = handle.target.obj
        side = int(getattr(pipe, "default_sample_size", 128) or 128)
        field = GaussianField()
        full = exact_quality(field, (side, side))
        staged = exact_quality(field, (side, side), self._schedule())
        ratio = staged / full if full > 0 else 0.0
        return {
            "passed": ratio >= MIN_QUALITY_RATIO,
            "quality_ratio": round(ratio, 4),
            "quality_full": round(full, 4),
            "quality_staged": round(staged, 4),
            "latent_size": side,
            "min_quality_ratio": MIN_QUALITY_RATIO,
        }
