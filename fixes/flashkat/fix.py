"""``flashkat``: run GR-KAN (Group-Rational KAN) activations on the FlashKAT-style kernels.

Targets are found by duck typing (``stallscope.fixes.flashkat.modules.is_grkan_module``: a module with
``weight_numerator``/``weight_denominator`` or ``numerator_v``/``denominator_v`` Parameters of
shapes (k, 6) and (G, 4)), so KAT's ``KAT_Group``, our ``KATGroup``/``BaselineKATGroup`` and
look-alikes all match. The patch swaps the instance's ``rational`` callable (or ``forward``)
only; Parameters, names, shapes and ``state_dict`` keys are untouched.

Tolerance (scale-relative): the forward is the same maths in the same fp32 order, a few ulps
apart (1e-5 of the output scale). The coefficient gradients are sums over the N/G elements of a
group: the baseline adds them with per-element fp32 atomics in arbitrary order, whose rounding
grows like u * sqrt(N) of the gradient's magnitude (u = 6e-8: 5e-4 at N = 1.5e8, KAT-T's
largest layer at batch 1024), the fast kernel reduces in blocks first; 5e-3 leaves a factor 10.
"""

from __future__ import annotations

from typing import Any

from stallscope.fixes.base import Fix, PatchHandle, Target, Tolerance, register


@register
class FlashKAT(Fix):
    id = "flashkat"
    answers = ("grkan-atomic-backward",)
    description = "GR-KAN activations on FlashKAT-style kernels (block-reduced backward, no per-element atomics)."
    advice = (
        "Run the GR-KAN activations on the FlashKAT-style kernels: the backward reduces the coefficient "
        "gradients per block instead of per-element atomics; parameters and state_dict keys are unchanged. "
        "`stallscope profile --auto-patch -- CMD` applies it, checks parity and keeps it only when faster; "
        "`stallscope run --patch-from RUN -- CMD` applies what was kept; in code: "
        '`stallscope.fixes.apply(model, ["flashkat"])` (CUDA and Triton).'
    )
    tolerance = Tolerance(
        rtol=1e-5,
        atol=1e-6,
        grad_rtol=5e-3,
        grad_atol=1e-6,
        scale="tensor",
        note="same forward maths (ulps); coefficient grads: baseline fp32 atomics drift ~u*sqrt(N)",
    )
    scope = "module"
    requires_cuda = True

    def find_targets(self, root: Any) -> list[Target]:
        if not hasattr(root, "named_modules"):
            return []
        from stallscope.fixes.flashkat.modules import is_grkan_module

        return [
            Target(name or type(m).__name__, m, "module")
            for name, m in root.named_modules()
            if is_grkan_module(m) and not getattr(m.__dict__.get("rational"), "stallscope_fast", False)
        ]

    def why_not(self, target: Target) -> str | None:
        from stallscope.fixes.flashkat.modules import why_not_fast

        return why_not_fast(target.obj)

    def apply(self, target: Target) -> PatchHandle:
        from stallscope.fixes.flashkat.modules import use_fast_kernels

        return PatchHandle(self.id, target, {"handle": use_fast_kernels(target.obj)})

    def revert(self, handle: PatchHandle) -> None:
        from stallscope.fixes.flashkat.modules import restore

        restore(handle.saved["handle"])
        handle.reverted = True
