"""GR-KAN modules: a KAT-compatible drop-in, our baseline, and the instance-scoped fast swap.

``KATGroup`` has the parameter names, shapes and ``state_dict`` keys of ``kat_rational.KAT_Group``
(``weight_numerator`` (1, 6), ``weight_denominator`` (G, 4)), its ``num_groups``, ``order`` and
``rational`` attributes, and calls ``self.rational(x, numerator, denominator, num_groups)`` as
KAT does. ``use_fast_kernels(module)`` swaps that instance's ``rational`` for the fast kernels
(Parameter objects untouched); ``restore(handle)`` puts the original back.

Dispatch of every ``*_rational`` callable: CUDA tensors (or any tensor under
``TRITON_INTERPRET=1``) go to Triton kernels in float32; float64 tensors and machines without
CUDA/Triton run the same maths in PyTorch ops (:mod:`.reference`), so results are correct
everywhere.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from .reference import check_shapes, output_dtype_for, rational_reference

__all__ = [
    "INIT_COEFFICIENTS",
    "KATGroup",
    "BaselineKATGroup",
    "FastKernelHandle",
    "fast_rational",
    "baseline_rational",
    "reference_rational",
    "rational_for",
    "triton_available",
    "use_fast_kernels",
    "restore",
    "is_grkan_module",
    "why_not_fast",
]

# KAT's fitted initial coefficients (numerator a0..a5, denominator b1..b4). ``gelu`` was fitted for
# the 1 + |sum b_j x^j| denominator; under the kernels' 1 + sum |b_j||x|^j form it is only a rough
# GELU (F(3) = 1.53 instead of 3.00); identity and swish are faithful under both forms.
INIT_COEFFICIENTS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "identity": ((0.0, 1.0, 0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0)),
    "swish": (
        (
            3.054879741161051e-07,
            0.5000007853744493,
            0.24999783557874275,
            0.05326628273219605,
            0.005803034571292244,
            0.0002751961022402805,
        ),
        (-4.111554955950634e-06, 0.10652899335007827, -1.2690007399796238e-06, 0.0005502331264140556),
    ),
    "gelu": (
        (
            -0.0015396944407940837,
            0.5169287158203125,
            0.44075827336311966,
            0.09725530576705933,
            -0.008844175338745117,
            -0.003786748740673065,
        ),
        (-0.14171056449413297, -0.06481231260299683, -0.04446949005126953, 0.012837756797671318),
    ),
}

_gelu_warned = False
_triton_state: dict[str, Any] = {}


def triton_available() -> bool:
    """True when Triton imports (the kernels' own modules load lazily)."""
    if "ok" not in _triton_state:
        try:
            import triton  # noqa: F401

            _triton_state["ok"] = True
        except Exception:  # pragma: no cover - depends on the install
            _triton_state["ok"] = False
    return _triton_state["ok"]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _runs_triton(x: torch.Tensor) -> bool:
    if x.dtype == torch.float64 or not triton_available():
        return False
    return x.is_cuda or (_interpreting() and x.device.type == "cpu")


def _prepare(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, num_groups: Any):
    groups = check_shapes(x, numerator, denominator)
    if num_groups is not None and int(num_groups) != groups:
        raise ValueError(f"num_groups={num_groups} but the denominator has {groups} rows")
    if numerator.shape[0] not in (1, groups):
        raise ValueError(f"numerator rows {numerator.shape[0]} must be 1 or {groups}")
    return groups


def _triton_rational(function_getter: Callable[[], Any]):
    def rational(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, num_groups: Any = None):
        _prepare(x, numerator, denominator, num_groups)
        if not _runs_triton(x):
            return rational_reference(x, numerator, denominator)
        _, out_dtype = output_dtype_for(x)
        # The kernels ignore autocast; casting here is what KAT's cast_inputs=float32 does.
        y = function_getter().apply(
            x.float().contiguous(), numerator.float().contiguous(), denominator.float().contiguous()
        )
        return y if y.dtype == out_dtype else y.to(out_dtype)

    return rational


def _fast_function():
    from . import kernels

    return kernels.FlashKATRational


def _baseline_function():
    from . import baseline

    return baseline.RationalTriton1DGroup


fast_rational = _triton_rational(_fast_function)
fast_rational.__doc__ = (
    "GR-KAN through the fast (FlashKAT-style) kernels: ``(x, numerator, denominator, num_groups=None)``."
)
fast_rational.__name__ = "fast_rational"
baseline_rational = _triton_rational(_baseline_function)
baseline_rational.__doc__ = "GR-KAN through the KAT-like baseline kernels (per-element atomics)."
baseline_rational.__name__ = "baseline_rational"


def reference_rational(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, num_groups: Any = None):
    """GR-KAN in PyTorch ops (KAT's semantics; runs anywhere)."""
    _prepare(x, numerator, denominator, num_groups)
    return rational_reference(x, numerator, denominator)


_IMPLS = {"auto": fast_rational, "fast": fast_rational, "baseline": baseline_rational, "reference": reference_rational}


def rational_for(impl: str) -> Callable[..., torch.Tensor]:
    """The rational callable for ``impl`` in {auto, fast, baseline, reference}."""
    try:
        return _IMPLS[impl]
    except KeyError:
        raise ValueError(f"impl must be one of {sorted(_IMPLS)}, got {impl!r}") from None


class KATGroup(nn.Module):
    """Drop-in for ``kat_rational.KAT_Group``: group-rational activation over the last dim.

    Args: ``num_groups`` (G, channels must divide evenly), ``mode`` (initial coefficients:
    ``identity``, ``swish``, or ``gelu`` -- see :data:`INIT_COEFFICIENTS` for gelu's caveat),
    ``device``, and ``impl`` (``auto``/``fast``, ``baseline``, ``reference``)."""

    def __init__(self, num_groups: int = 8, mode: str = "gelu", device: Any = None, impl: str = "auto"):
        super().__init__()
        global _gelu_warned
        if mode not in INIT_COEFFICIENTS:
            raise ValueError(f"mode must be one of {sorted(INIT_COEFFICIENTS)}, got {mode!r}")
        if num_groups < 1:
            raise ValueError(f"num_groups must be >= 1, got {num_groups}")
        if mode == "gelu" and not _gelu_warned:
            _gelu_warned = True
            warnings.warn(
                "GR-KAN 'gelu' init coefficients were fitted for a different denominator form; "
                "under the kernels' form they approximate GELU poorly (F(3)=1.53). Use 'swish' or 'identity'.",
                stacklevel=2,
            )
        self.order = (5, 4)
        self.num_groups = num_groups
        self.mode = mode
        self.impl = impl
        num, den = INIT_COEFFICIENTS[mode]
        self.weight_numerator = nn.Parameter(torch.tensor([num], dtype=torch.float32, device=device))
        self.weight_denominator = nn.Parameter(
            torch.tensor([den], dtype=torch.float32, device=device).repeat(num_groups, 1)
        )
        self.rational = rational_for(impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rational(x, self.weight_numerator, self.weight_denominator, self.num_groups)

    def extra_repr(self) -> str:
        return f"num_groups={self.num_groups}, order={self.order}"


class BaselineKATGroup(KATGroup):
    """``KATGroup`` on the KAT-like baseline kernels (the "before" of benchmarks and demos)."""

    def __init__(self, num_groups: int = 8, mode: str = "gelu", device: Any = None):
        super().__init__(num_groups=num_groups, mode=mode, device=device, impl="baseline")


# ---------------------------------------------------------------------------------------------
# Recognition and the instance-scoped swap

_PARAM_PAIRS = (("weight_numerator", "weight_denominator"), ("numerator_v", "denominator_v"))
_REFUSED_CLASSES = {
    "KAT_Group_Torch": "its PyTorch fallback uses signed powers of x in the denominator (different maths)",
    "KAT_Group2D": "the 2-D (NCHW) variant is not channels-last",
}
_MISSING = object()


def _coefficient_pair(module: nn.Module):
    params = dict(module.named_parameters(recurse=False))
    for num_name, den_name in _PARAM_PAIRS:
        num, den = params.get(num_name), params.get(den_name)
        if num is None or den is None:
            continue
        if num.dim() == 2 and den.dim() == 2 and num.shape[1] == 6 and den.shape[1] == 4:
            if num.shape[0] in (1, den.shape[0]) or den.shape[0] == 1:
                return num_name, den_name
    return None


def is_grkan_module(module: Any) -> bool:
    """Duck typing: an ``nn.Module`` holding (weight_numerator, weight_denominator) or
    (numerator_v, denominator_v) Parameters of shapes (k, 6) and (G, 4)."""
    return isinstance(module, nn.Module) and _coefficient_pair(module) is not None


def why_not_fast(module: Any) -> str | None:
    """One line saying why ``module`` must not get the fast kernels, or None when it may."""
    if not is_grkan_module(module):
        return f"{type(module).__name__} is not a GR-KAN module (no (k,6)/(G,4) coefficient Parameters)"
    reason = _REFUSED_CLASSES.get(type(module).__name__)
    if reason:
        return f"{type(module).__name__}: {reason}"
    num_name, den_name = _coefficient_pair(module)
    num, den = getattr(module, num_name), getattr(module, den_name)
    if num.shape[0] != 1 and den.shape[0] != 1 and num.shape[0] != den.shape[0]:
        return f"numerator rows {num.shape[0]} and denominator rows {den.shape[0]} differ"
    if num_name == "weight_numerator" and not callable(getattr(module, "rational", None)):
        return f"{type(module).__name__} has no callable 'rational' attribute to swap"
    return None


@dataclass
class FastKernelHandle:
    """What :func:`use_fast_kernels` changed on one module instance."""

    module: nn.Module
    attribute: str
    original: Any
    restored: bool = False


def _fast_adapter(original: Callable[..., torch.Tensor]):
    def rational(x, numerator, denominator, num_groups=None, *args, **kwargs):
        groups = denominator.shape[0]
        usable = (
            not args
            and not kwargs
            and x.dim() in (2, 3)
            and x.shape[-1] % groups == 0
            and numerator.shape[0] in (1, groups)
            and (num_groups is None or int(num_groups) == groups)
        )
        if not usable:
            return original(x, numerator, denominator, num_groups, *args, **kwargs)
        return fast_rational(x, numerator, denominator)

    # Marks read back with getattr (inspect.unwrap, use_fast_kernels); mypy has no function attributes.
    rational.__wrapped__ = original  # type: ignore[attr-defined]
    rational.stallscope_fast = True  # type: ignore[attr-defined]
    return rational


def _flash_forward(module: nn.Module, num_name: str, den_name: str):
    def forward(x):
        num, den = getattr(module, num_name), getattr(module, den_name)
        groups = max(num.shape[0], den.shape[0])
        if num.shape[0] not in (1, groups):
            raise ValueError("numerator and denominator group counts differ")
        if den.shape[0] == 1 and groups > 1:
            den = den.expand(groups, 4)
        return fast_rational(x, num, den)

    return forward


def use_fast_kernels(module: nn.Module) -> FastKernelHandle:
    """Make this module instance run the fast kernels; its Parameters, names, shapes and
    state_dict keys stay as they are. Raises ValueError (with the reason) when it must not."""
    reason = why_not_fast(module)
    if reason:
        raise ValueError(reason)
    num_name, den_name = _coefficient_pair(module)
    if num_name == "weight_numerator":
        original = module.__dict__.get("rational", _MISSING)
        current = cast(Callable[..., torch.Tensor], module.rational)  # why_not_fast checked it is callable
        if getattr(current, "stallscope_fast", False):
            return FastKernelHandle(module, "rational", original, restored=False)
        object.__setattr__(module, "rational", _fast_adapter(current))
        return FastKernelHandle(module, "rational", original)
    original = module.__dict__.get("forward", _MISSING)
    object.__setattr__(module, "forward", _flash_forward(module, num_name, den_name))
    return FastKernelHandle(module, "forward", original)


def restore(handle: FastKernelHandle) -> None:
    """Undo :func:`use_fast_kernels` on that instance (idempotent)."""
    if handle.restored:
        return
    if handle.original is _MISSING:
        handle.module.__dict__.pop(handle.attribute, None)
    else:
        object.__setattr__(handle.module, handle.attribute, handle.original)
    handle.restored = True
