"""``cudnn-benchmark``: let cuDNN time its convolution algorithms once per shape and keep the fastest.

Process-wide (``torch.backends.cudnn.benchmark``). It pays off when input shapes repeat; with
shapes that change every step it autotunes every step and is slower, which the auto-patch
measurement catches and rolls back.

Tolerance: another algorithm sums in another order (and FFT/Winograd algorithms round their
transforms), so results move by a few fp32 ulps times the reduction length; with cuDNN's TF32
on (PyTorch's default) algorithms may also differ in whether they use TF32. Bound: 1e-2 of the
tensor's scale when cuDNN TF32 is on (same argument as the ``tf32`` fix), 1e-3 when it is off
(FFT/Winograd lose ~3 bits of fp32's 24 on typical 3x3 convolutions).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stallscope.fixes.base import Diagnosis, Fix, PatchHandle, Target, Tolerance, register

_TF32 = Tolerance(
    rtol=1e-2,
    atol=1e-6,
    grad_rtol=2e-2,
    grad_atol=1e-6,
    scale="tensor",
    note="other conv algorithm; cuDNN TF32 on: same bound as the tf32 fix",
)
_FP32 = Tolerance(
    rtol=1e-3,
    atol=1e-6,
    grad_rtol=2e-3,
    grad_atol=1e-6,
    scale="tensor",
    note="other conv algorithm in fp32: reordered sums and FFT/Winograd rounding",
)


def conv_modules(root: Any) -> list[str]:
    import torch

    return [
        n or type(m).__name__
        for n, m in root.named_modules()
        if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.RNNBase))
    ]


@register
class CudnnBenchmark(Fix):
    id = "cudnn-benchmark"
    answers = ("conv-algorithm", "cudnn-benchmark-off")
    description = "Autotune cuDNN convolution algorithms per input shape (torch.backends.cudnn.benchmark = True)."
    advice = (
        "Set `torch.backends.cudnn.benchmark = True` at start-up: cuDNN times its convolution algorithms once "
        "per input shape and keeps the fastest. It pays off when shapes repeat; with shapes that change every "
        "step it is slower. `stallscope profile --auto-patch -- CMD` switches it on, checks parity and keeps it "
        "only when faster."
    )
    tolerance = _TF32
    scope = "process"
    requires_cuda = True

    def find_targets(self, root: Any) -> list[Target]:
        if not hasattr(root, "named_modules"):
            return []
        return [Target("process:cudnn-benchmark", root, "process")] if conv_modules(root) else []

    def why_not(self, target: Target) -> str | None:
        import torch

        if torch.backends.cudnn.benchmark:
            return "cudnn.benchmark is already on"
        if not torch.backends.cudnn.enabled:
            return "cuDNN is disabled in this program (torch.backends.cudnn.enabled = False)"
        return None

    def tolerance_for(self, target: Target) -> Tolerance:
        import torch

        try:
            return _TF32 if torch.backends.cudnn.allow_tf32 else _FP32
        except RuntimeError:
            return _TF32

    def diagnose(self, target: Target, context: Mapping[str, Any] | None = None) -> Diagnosis:
        verdict = super().diagnose(target, context)
        if verdict.called_for:
            convs = conv_modules(target.obj)
            return Diagnosis(True, f"{verdict.why}; {len(convs)} cuDNN layer(s) (e.g. {convs[0]}) with benchmark off")
        return verdict

    def apply(self, target: Target) -> PatchHandle:
        import torch

        saved = {"benchmark": bool(torch.backends.cudnn.benchmark)}
        torch.backends.cudnn.benchmark = True
        return PatchHandle(self.id, target, saved)

    def revert(self, handle: PatchHandle) -> None:
        import torch

        torch.backends.cudnn.benchmark = handle.saved["benchmark"]
        handle.reverted = True
