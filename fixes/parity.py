"""Parity of a patched module against the original, on the program's own inputs, without side effects.

For one module and one captured input: clone the input, run the original and the patched
forward and backward on the clone with the same random upstream gradient, take gradients with
:func:`torch.autograd.grad` (nothing accumulates into ``.grad``), and compare outputs and
gradients (inputs and parameters) against the fix's :class:`~stallscope.fixes.base.Tolerance`.

What the program could notice is put back: the torch, CUDA, ``random`` and numpy RNG states,
and every buffer of the module (BatchNorm running statistics and ``num_batches_tracked``
change under ``no_grad`` in training mode). Global module hooks (the profiler's step detector)
are silenced while the check runs; :func:`in_parity_check` tells other hooks to stay out.

Reported figures: ``max_abs_err`` is the largest absolute difference, ``max_rel_err`` that
difference divided by the largest magnitude of the original tensor (scale-relative, so outputs
that cancel to nearly zero do not blow it up; with ``scale: tensor`` that magnitude is at least
``floor`` times the largest among the tensors of the same kind, so a gradient that is zero by
structure is not judged against its own rounding noise). The pass rule is the tolerance's own
(``scale`` element or tensor).
"""

from __future__ import annotations

import contextlib
import random
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from stallscope.fixes.base import Tolerance

__all__ = ["ParityProbe", "ParityResult", "check_parity", "in_parity_check", "unwrap_model"]

_local = threading.local()


def in_parity_check() -> bool:
    """True while a parity check runs its reference or patched forward/backward."""
    return bool(getattr(_local, "active", False))


@dataclass
class ParityResult:
    """The outcome of one parity check, with the figures the report shows."""

    passed: bool
    tolerance: Tolerance
    max_abs_err_out: float = 0.0
    max_rel_err_out: float = 0.0
    max_abs_err_grad: float = 0.0
    max_rel_err_grad: float = 0.0
    min_grad_cosine: float | None = None
    tensors_compared: int = 0
    worst: str = ""
    reason: str = ""
    module: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "module": self.module,
            "max_abs_err_out": _num(self.max_abs_err_out),
            "max_rel_err_out": _num(self.max_rel_err_out),
            "max_abs_err_grad": _num(self.max_abs_err_grad),
            "max_rel_err_grad": _num(self.max_rel_err_grad),
            "min_grad_cosine": None if self.min_grad_cosine is None else _num(self.min_grad_cosine),
            "tensors_compared": self.tensors_compared,
            "worst": self.worst,
            "reason": self.reason,
        }


def merge_results(results: list[ParityResult], tolerance: Tolerance) -> ParityResult:
    """One record for a fix with many patched modules: the worst figures, failed if any failed."""
    if not results:
        return ParityResult(False, tolerance, reason="no input reached a patched module")
    failed = [r for r in results if not r.passed]
    worst_out = max(results, key=lambda r: r.max_rel_err_out)
    worst_grad = max(results, key=lambda r: r.max_rel_err_grad)
    return ParityResult(
        passed=not failed,
        tolerance=tolerance,
        max_abs_err_out=max(r.max_abs_err_out for r in results),
        max_rel_err_out=worst_out.max_rel_err_out,
        max_abs_err_grad=max(r.max_abs_err_grad for r in results),
        max_rel_err_grad=worst_grad.max_rel_err_grad,
        min_grad_cosine=min((r.min_grad_cosine for r in results if r.min_grad_cosine is not None), default=None),
        tensors_compared=sum(r.tensors_compared for r in results),
        worst=(failed[0] if failed else worst_grad if worst_grad.max_rel_err_grad > 0 else worst_out).worst,
        reason=failed[0].reason if failed else f"{len(results)} module(s) within tolerance",
        module=(failed[0].module if failed else f"{len(results)} module(s)"),
    )


def _num(x: float) -> float:
    return float(f"{x:.4g}")


def unwrap_model(model: Any) -> Any:
    """The module that computes: through DataParallel/DDP (``.module``) and torch.compile
    (``._orig_mod``) wrappers, whose forward must not be re-run (DDP would expect a reduction)."""
    for _ in range(8):
        name = type(model).__name__
        if name in ("DistributedDataParallel", "DataParallel") and hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            break
    return model


def _map_tensors(obj: Any, fn: Callable[[Any], Any]) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_map_tensors(v, fn) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    if isinstance(obj, dict):
        out = dict(obj)
        for k, v in obj.items():
            out[k] = _map_tensors(v, fn)
        try:
            return type(obj)(out)
        except Exception:
            return out
    return obj


def _flat_tensors(obj: Any, prefix: str = "out") -> list[tuple[str, Any]]:
    import torch

    if isinstance(obj, torch.Tensor):
        return [(prefix, obj)]
    found: list[tuple[str, Any]] = []
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found += _flat_tensors(v, f"{prefix}[{i}]")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            found += _flat_tensors(v, f"{prefix}.{k}")
    return found


def clone_inputs(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Detached copies of the captured inputs; floating tensors require grad (for d input)."""

    def copy(t: Any) -> Any:
        c = t.detach().clone()
        if c.is_floating_point() or c.is_complex():
            c.requires_grad_(True)
        return c

    return _map_tensors(tuple(args), copy), _map_tensors(dict(kwargs), copy)


@contextlib.contextmanager
def _quiet_global_hooks() -> Iterator[None]:
    from torch.nn.modules import module as m

    names = [n for n in dir(m) if n.startswith("_global_") and n.endswith("hooks") and isinstance(getattr(m, n), dict)]
    saved = {n: dict(getattr(m, n)) for n in names}
    for n in names:
        getattr(m, n).clear()
    try:
        yield
    finally:
        for n in names:
            getattr(m, n).clear()
            getattr(m, n).update(saved[n])


class _SideState:
    """RNG states and module buffers, saved once and put back on demand."""

    def __init__(self, module: Any) -> None:
        import torch

        self.cpu = torch.random.get_rng_state()
        self.cuda = (
            torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        )
        self.py = random.getstate()
        np = sys.modules.get("numpy")
        self.np = np.random.get_state() if np is not None else None
        self.buffers = [(b, b.detach().clone()) for b in module.buffers()]

    def restore(self) -> None:
        import torch

        torch.random.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        random.setstate(self.py)
        if self.np is not None:
            sys.modules["numpy"].random.set_state(self.np)
        with torch.no_grad():
            for buf, saved in self.buffers:
                if buf.shape == saved.shape:
                    buf.copy_(saved)


def _forward_backward(
    module: Any, args: tuple, kwargs: dict, seed: int, backward: bool, upstream: list[Any] | None
) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]], list[Any]]:
    import torch

    args, kwargs = clone_inputs(args, kwargs)
    with torch.enable_grad():
        out = module(*args, **kwargs)
    outs = [(n, t) for n, t in _flat_tensors(out) if t.is_floating_point() or t.is_complex()]
    grads: list[tuple[str, Any]] = []
    if backward:
        inputs = [(f"input{n[2:]}", t) for n, t in _flat_tensors((args, kwargs), "in") if t.requires_grad]
        params = [(f"grad.{n}", p) for n, p in module.named_parameters() if p.requires_grad]
        wrt = inputs + params
        diff = [(n, t) for n, t in outs if t.requires_grad]
        if diff and wrt:
            if upstream is None:
                upstream = []
                for _, t in diff:
                    gen = torch.Generator(device=t.device).manual_seed(seed)
                    upstream.append(torch.randn(t.shape, generator=gen, device=t.device, dtype=t.dtype))
            if len(upstream) != len(diff) or any(u.shape != t.shape for u, (_, t) in zip(upstream, diff, strict=False)):
                raise _Mismatch("patched outputs differ in number or shape from the original")
            got = torch.autograd.grad(
                [t for _, t in diff], [t for _, t in wrt], grad_outputs=upstream, allow_unused=True
            )
            grads = [(n, g.detach()) for (n, _), g in zip(wrt, got, strict=False) if g is not None]
    return [(n, t.detach()) for n, t in outs], grads, upstream or []


class _Mismatch(Exception):
    pass


def _compare(
    ref: list[tuple[str, Any]], new: list[tuple[str, Any]], tol: Tolerance, kind: str, result: ParityResult
) -> None:
    import torch

    rtol, atol = tol.bound(kind)
    finite_max = [float(torch.nan_to_num(t.detach().abs(), nan=0.0, posinf=0.0).max()) for _, t in ref if t.numel()]
    floor = tol.floor * max(finite_max, default=0.0) if tol.scale == "tensor" else 0.0
    ref_names = [n for n, _ in ref]
    new_map = dict(new)
    if ref_names != [n for n, _ in new]:
        missing = sorted(set(ref_names) ^ set(new_map))
        raise _Mismatch(f"{kind}s differ in structure ({', '.join(missing[:3])})")
    for name, a in ref:
        b = new_map[name]
        if a.shape != b.shape:
            raise _Mismatch(f"{name}: shape {tuple(b.shape)} != {tuple(a.shape)}")
        if a.numel() == 0:
            continue
        a64, b64 = a.detach().to(torch.float64), b.detach().to(torch.float64)
        same = (a64 == b64) | (torch.isnan(a64) & torch.isnan(b64))
        diff = torch.where(same, torch.zeros_like(a64), (b64 - a64).abs())
        direction = None
        if not bool(torch.isfinite(diff).all()):
            abs_err, scale, ok = float("inf"), 1.0, False
        else:
            abs_err = float(diff.max())
            mag = torch.where(torch.isfinite(a64), a64.abs(), torch.zeros_like(a64))
            scale = max(float(mag.max()), floor)
            if tol.scale == "tensor":
                ok = abs_err <= atol + rtol * scale
            else:
                ok = bool((diff <= atol + rtol * mag).all())
            if kind == "grad" and tol.grad_min_cosine is not None:
                direction = cosine, norm_ratio = _direction(a64, b64)
                result.min_grad_cosine = (
                    cosine if result.min_grad_cosine is None else min(result.min_grad_cosine, cosine)
                )
                if not ok and cosine >= tol.grad_min_cosine and abs(norm_ratio - 1.0) <= rtol:
                    ok = True
        rel_err = abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else float("inf"))
        result.tensors_compared += 1
        if kind == "grad":
            if rel_err >= result.max_rel_err_grad:
                result.max_rel_err_grad, result.worst = rel_err, name
            result.max_abs_err_grad = max(result.max_abs_err_grad, abs_err)
        else:
            if rel_err >= result.max_rel_err_out:
                result.max_rel_err_out = rel_err
                if result.max_rel_err_grad == 0:
                    result.worst = name
            result.max_abs_err_out = max(result.max_abs_err_out, abs_err)
        if not ok and result.passed:
            result.passed = False
            result.worst = name
            result.reason = (
                f"{name}: max abs err {abs_err:.3g} (rel {rel_err:.3g}) exceeds "
                f"atol {atol:g} + rtol {rtol:g} ({tol.scale} scale)"
            )
            if direction is not None:
                cosine, norm_ratio = direction
                result.reason += (
                    f", and its direction/norm differ too (cosine {cosine:.6f}, needs >= "
                    f"{tol.grad_min_cosine:g}; norm ratio {norm_ratio:.4f}, needs 1 +- {rtol:g})"
                )


def _direction(a, b) -> tuple[float, float]:
    """(cosine between two tensors, norm of b over norm of a); (1, 1) for two zero tensors."""
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 or nb == 0.0:
        return (1.0, 1.0) if na == nb else (0.0, float("inf"))
    return float((a * b).sum()) / (na * nb), nb / na


def check_parity(
    module: Any,
    args: tuple,
    kwargs: dict | None,
    original: Callable[[], AbstractContextManager[Any]],
    tolerance: Tolerance,
    *,
    seed: int = 0,
    backward: bool = True,
    name: str = "",
) -> ParityResult:
    """Compare ``module`` as patched now with ``module`` under ``original()`` on these inputs.

    Both runs start from the same RNG state and buffers; afterwards RNG states, buffers and
    ``.grad`` are as they were before the call.
    """
    import torch

    kwargs = kwargs or {}
    result = ParityResult(True, tolerance, module=name)
    if torch.is_inference_mode_enabled():
        backward = False
    state = _SideState(module)
    _local.active = True
    try:
        with _quiet_global_hooks(), torch.inference_mode(False):
            with original():
                ref_out, ref_grads, upstream = _forward_backward(module, args, kwargs, seed, backward, None)
            state.restore()
            new_out, new_grads, _ = _forward_backward(module, args, kwargs, seed, backward, upstream or None)
        if not ref_out:
            raise _Mismatch("the module returned no floating-point tensor to compare")
        _compare(ref_out, new_out, tolerance, "output", result)
        _compare(ref_grads, new_grads, tolerance, "grad", result)
        if result.passed:
            result.reason = "within tolerance"
    except _Mismatch as exc:
        result.passed, result.reason = False, str(exc)
    except Exception as exc:  # a fix that raises on real inputs fails parity, it does not crash the program
        result.passed, result.reason = (
            False,
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300],
        )
    finally:
        _local.active = False
        state.restore()
    return result


class ParityProbe:
    """Checks parity on the next real input of ``module``: a forward pre-hook that runs
    :func:`check_parity` once, hands the result to ``on_result`` and removes itself. It runs
    before the real forward, so ``on_result`` may still revert the patch for this very call."""

    def __init__(
        self,
        module: Any,
        original: Callable[[], AbstractContextManager[Any]],
        tolerance: Tolerance,
        on_result: Callable[[ParityProbe, ParityResult], None],
        *,
        name: str = "",
        seed: int = 0,
    ) -> None:
        self.module = module
        self.name = name
        self.original = original
        self.tolerance = tolerance
        self.on_result = on_result
        self.seed = seed
        self.result: ParityResult | None = None
        self._hook = module.register_forward_pre_hook(self._pre_hook, with_kwargs=True)

    def _pre_hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        if self.result is not None or in_parity_check():
            return None
        self.cancel()
        self.result = check_parity(module, args, kwargs, self.original, self.tolerance, seed=self.seed, name=self.name)
        self.on_result(self, self.result)
        return None

    def cancel(self) -> None:
        """Remove the hook without checking (the patch was rolled back meanwhile)."""
        self._hook.remove()
