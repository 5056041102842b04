"""Resize the trailing spatial axes of a latent (images: H, W; video: H, W, never frames).

Kernels: torch's ``area``, ``nearest``, ``bilinear``, ``bicubic``; ``lanczos3`` (separable, anti-aliased
when shrinking, edge-replicated); ``fourier`` (band-limited, periodic: exact for periodic fields, the
analytic benchmark's ideal resampler). All of them keep the amplitude of a smooth signal per position.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["KERNELS", "resize"]

KERNELS = ("area", "nearest", "bilinear", "bicubic", "lanczos3", "fourier")


def resize(x: torch.Tensor, size: Sequence[int], kernel: str) -> torch.Tensor:
    """Resize the last ``len(size)`` axes of ``x`` to ``size`` with the named kernel."""
    size = tuple(int(s) for s in size)
    d = len(size)
    if tuple(x.shape[-d:]) == size:
        return x
    if kernel not in KERNELS:
        raise ValueError(f"unknown resampling kernel {kernel!r}; use one of {', '.join(KERNELS)}")
    if kernel == "fourier":
        return _fourier(x, size)
    if kernel == "lanczos3":
        return _lanczos(x, size, lobes=3)
    if d not in (1, 2, 3):
        raise ValueError(f"torch kernels resize 1 to 3 axes, got {d}")
    lead = x.shape[:-d]
    flat = x.reshape(-1, 1, *x.shape[-d:])
    dtype = flat.dtype
    if dtype in (torch.float16, torch.bfloat16) and flat.device.type == "cpu":
        flat = flat.float()
    if kernel == "area" and any(n > o for n, o in zip(size, x.shape[-d:], strict=False)):
        kernel = "nearest"  # area upsampling is nearest-neighbour; say so explicitly
    mode = kernel
    if kernel in ("bilinear", "bicubic"):
        mode = {1: "linear", 2: kernel, 3: "trilinear"}[d]
        out = F.interpolate(flat, size=size, mode=mode, align_corners=False)
    else:
        out = F.interpolate(flat, size=size, mode=mode)
    return out.to(dtype).reshape(*lead, *size)


def _lanczos_matrix(n_in: int, n_out: int, lobes: int, device: torch.device) -> torch.Tensor:
    scale = n_out / n_in
    support = lobes / min(scale, 1.0)
    centers = (torch.arange(n_out, dtype=torch.float64) + 0.5) / scale - 0.5
    offsets = torch.arange(-math.ceil(support), math.ceil(support) + 1, dtype=torch.float64)
    taps = torch.floor(centers)[:, None] + offsets[None, :]
    dist = (centers[:, None] - taps) * min(scale, 1.0)
    w = torch.sinc(dist) * torch.sinc(dist / lobes) * (dist.abs() < lobes)
    w = w / w.sum(dim=1, keepdim=True)
    idx = taps.clamp(0, n_in - 1).long()
    mat = torch.zeros(n_out, n_in, dtype=torch.float64)
    mat.scatter_add_(1, idx, w)
    return mat.to(device)


def _lanczos(x: torch.Tensor, size: tuple[int, ...], lobes: int) -> torch.Tensor:
    d = len(size)
    out = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    for axis, n_out in zip(range(x.ndim - d, x.ndim), size, strict=False):
        n_in = out.shape[axis]
        if n_in == n_out:
            continue
        mat = _lanczos_matrix(n_in, n_out, lobes, x.device).to(out.dtype)
        out = torch.movedim(torch.movedim(out, axis, -1) @ mat.T, -1, axis)
    return out.to(x.dtype)


def _fourier(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    d = len(size)
    axes = tuple(range(x.ndim - d, x.ndim))
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    spec = torch.fft.fftn(work, dim=axes, norm="forward")
    for axis, n_out in zip(axes, size, strict=False):
        n_in = spec.shape[axis]
        small = min(n_in, n_out)
        k = torch.fft.fftfreq(small, d=1.0 / small).round().long()
        if n_out < n_in:
            spec = spec.index_select(axis, (k % n_in).to(spec.device))
        else:
            shape = list(spec.shape)
            shape[axis] = n_out
            big = spec.new_zeros(shape)
            big.index_copy_(axis, (k % n_out).to(spec.device), spec)
            spec = big
    return torch.fft.ifftn(spec, dim=axes, norm="forward").real.to(x.dtype)
