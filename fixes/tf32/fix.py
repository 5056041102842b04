"""``tf32``: run fp32 matmuls (and convolutions, when cuDNN's TF32 is off) on the tensor cores.

Process-wide by nature (PyTorch's TF32 switches are global), so it is found on a model that
has fp32 GEMM layers and applied to the process; ``revert`` restores the exact settings.
The matmul switch goes through ``torch.set_float32_matmul_precision`` (it keeps PyTorch's
legacy and new TF32 flags consistent; setting one API and reading the other raises in
PyTorch >= 2.9).

Tolerance (scale-relative, ``Tolerance.scale = "tensor"``): TF32 keeps 10 mantissa bits, so
each GEMM input is rounded with unit roundoff u = 2^-11 ~ 4.9e-4 and a product carries at most
2u ~ 1e-3 relative error; accumulation stays fp32. For a length-K dot product with mixed
signs the error is ~1e-3 * sqrt(K) * |a||b| and the output scale is ~sqrt(K) * |a||b|, so one
GEMM lands near 1e-3 of its output's largest magnitude. Errors of stacked GEMMs add (a dozen
layers: a few 1e-3), hence 1e-2 for outputs.

Gradients are judged by direction and norm (``grad_min_cosine``), not elementwise: the forward's
~1e-3 rounding flips the ReLU/dropout/max decisions of the few pre-activations that lie within
1e-3 of zero (a fraction ~1e-4), and each flipped element's gradient changes completely. The
largest elementwise error of a weight gradient is then set by a handful of elements: 4-11 % of
the tensor's scale in a 4-layer ReLU MLP with TF32 emulated on the CPU (tests/test_fix_parity.py),
5.5-6 % on the H200 (bench/results/autopatch.yaml), while the gradient as a whole keeps its
norm to 1e-4 and its direction to 1 - cosine ~ 5e-4. A gradient passes when its cosine with the
original is >= 0.99 (8 degrees: ~20x the 4-layer figure, which grows about linearly with depth)
and its norm is within 2 % (``grad_rtol``). A wrong gradient (a dropped term, a wrong scale)
misses one of the two.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stallscope.fixes.base import Diagnosis, Fix, PatchHandle, Target, Tolerance, register

GEMM_CLASSES = (
    "Linear",
    "Bilinear",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "MultiheadAttention",
    "LSTM",
    "GRU",
    "RNN",
    "LazyLinear",
    "NonDynamicallyQuantizableLinear",
)


def fp32_gemm_modules(root: Any) -> list[str]:
    """Names of modules in ``root`` that run fp32 GEMMs (Linear/Conv/attention/RNN with fp32 weights)."""
    import torch

    found = []
    for name, m in root.named_modules():
        if type(m).__name__ in GEMM_CLASSES or isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)):
            w = next(m.parameters(recurse=False), None)
            if w is not None and w.dtype == torch.float32:
                found.append(name or type(m).__name__)
    return found


def tf32_state() -> dict[str, Any]:
    """The current TF32 settings: matmul precision and cuDNN's allow_tf32 (None if unreadable)."""
    import torch

    try:
        cudnn = bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError:
        cudnn = None
    return {"matmul_precision": torch.get_float32_matmul_precision(), "cudnn_allow_tf32": cudnn}


@register
class TF32(Fix):
    id = "tf32"
    answers = ("fp32-matmul-off-tensor-cores", "precision")
    description = (
        "Run fp32 matmuls/convolutions in TF32 on the tensor cores (torch.set_float32_matmul_precision('high'))."
    )
    advice = (
        'Let fp32 matmuls and convolutions use the tensor cores: `torch.set_float32_matmul_precision("high")` '
        "and `torch.backends.cudnn.allow_tf32 = True` at start-up (TF32 rounds GEMM inputs to 10 mantissa bits, "
        "about 1e-3 of a GEMM's output scale). `stallscope profile --auto-patch -- CMD` switches it on, checks "
        "parity and keeps it only when faster."
    )
    tolerance = Tolerance(
        rtol=1e-2,
        atol=1e-6,
        grad_rtol=2e-2,
        grad_atol=1e-6,
        scale="tensor",
        grad_min_cosine=0.99,
        note="TF32 rounds GEMM inputs to 10 mantissa bits (u = 4.9e-4): ~1e-3 of the output scale per GEMM, "
        "1e-2 leaves room for a dozen stacked layers; gradients: the rounding flips a few ReLU/dropout "
        "decisions near zero, so they are judged by direction (cosine >= 0.99) and norm (2 %)",
    )
    scope = "process"
    requires_cuda = True

    def find_targets(self, root: Any) -> list[Target]:
        if not hasattr(root, "named_modules"):
            return []
        layers = fp32_gemm_modules(root)
        return [Target("process:tf32", root, "process")] if layers else []

    def why_not(self, target: Target) -> str | None:
        state = tf32_state()
        if state["matmul_precision"] != "highest" and state["cudnn_allow_tf32"] is not False:
            return f"TF32 is already on (matmul precision {state['matmul_precision']!r}, cuDNN allow_tf32 on)"
        return None

    def diagnose(self, target: Target, context: Mapping[str, Any] | None = None) -> Diagnosis:
        verdict = super().diagnose(target, context)
        if not verdict.called_for:
            return verdict
        layers = fp32_gemm_modules(target.obj)
        return Diagnosis(True, f"{verdict.why}; {len(layers)} fp32 GEMM layer(s) (e.g. {layers[0]}) with TF32 off")

    def apply(self, target: Target) -> PatchHandle:
        import torch

        saved = tf32_state()
        if saved["matmul_precision"] == "highest":
            torch.set_float32_matmul_precision("high")
        if saved["cudnn_allow_tf32"] is False:
            torch.backends.cudnn.allow_tf32 = True
        return PatchHandle(self.id, target, saved)

    def revert(self, handle: PatchHandle) -> None:
        import torch

        torch.set_float32_matmul_precision(handle.saved["matmul_precision"])
        if handle.saved["cudnn_allow_tf32"] is False:
            torch.backends.cudnn.allow_tf32 = False
        handle.reverted = True
