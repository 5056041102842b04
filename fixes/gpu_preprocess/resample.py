"""Batched crop + antialiased bilinear resize + flip as two batched matmuls, PIL-equivalent.

PIL's BILINEAR resize is separable: every output column is a weighted sum of input columns with a
triangle filter stretched by the downscale factor (that stretch is the antialiasing), rows
likewise, horizontal pass first, each pass rounded to uint8 in 22-bit fixed point. A crop only
shifts which input columns a filter covers, a centre crop after the resize selects output rows,
and a horizontal flip reverses the output columns. So a whole per-sample
RandomResizedCrop/Resize/CenterCrop/flip chain becomes one (out_w x W) and one (out_h x H)
weight matrix per sample, and the batch is resampled with two batched matmuls, whatever each
sample's crop box. Out-of-image rows of a centre crop get zero weights (torchvision pads with 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["Geometry", "pil_bilinear_weights", "resample_batch", "pad_batch"]

_PRECISION_BITS = 22  # PIL's fixed point for 8-bit resampling


class Geometry:
    """Per-sample geometry of a batch (all tensors of shape (B,), int64, on the CPU or the device):
    the source crop box (``top``, ``left``, ``height``, ``width``) that is resized to
    (``resize_h``, ``resize_w``); then the output window (``out_top``, ``out_left``) of fixed size
    ``out_size`` = (h, w) inside the resized image; then ``flip`` (bool)."""

    def __init__(
        self,
        top: torch.Tensor,
        left: torch.Tensor,
        height: torch.Tensor,
        width: torch.Tensor,
        resize_h: torch.Tensor,
        resize_w: torch.Tensor,
        out_top: torch.Tensor,
        out_left: torch.Tensor,
        flip: torch.Tensor,
        out_size: Sequence[int],
    ) -> None:
        self.top, self.left, self.height, self.width = top, left, height, width
        self.resize_h, self.resize_w = resize_h, resize_w
        self.out_top, self.out_left, self.flip = out_top, out_left, flip
        self.out_size = (int(out_size[0]), int(out_size[1]))

    def to(self, device: torch.device) -> Geometry:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=True)

        return Geometry(
            move(self.top),
            move(self.left),
            move(self.height),
            move(self.width),
            move(self.resize_h),
            move(self.resize_w),
            move(self.out_top),
            move(self.out_left),
            move(self.flip),
            self.out_size,
        )


def pil_bilinear_weights(
    start: torch.Tensor,
    size: torch.Tensor,
    resized: torch.Tensor,
    window: torch.Tensor,
    out: int,
    full: int,
    *,
    fixed_point: bool = True,
) -> torch.Tensor:
    """(B, out, full) weights: output index o of sample b reads source indices of the crop
    [start, start+size) resized to ``resized`` samples, at resized position ``window + o``.
    Computed in float64 as PIL does, optionally quantised to PIL's 22-bit fixed point."""
    device = start.device
    start, size, resized, window = (t.to(torch.float64).view(-1, 1, 1) for t in (start, size, resized, window))
    position = window + torch.arange(out, device=device, dtype=torch.float64).view(1, -1, 1)  # in resized pixels
    scale = size / resized
    filterscale = scale.clamp(min=1.0)
    support = filterscale  # bilinear support is 1
    center = (position + 0.5) * scale
    source = torch.arange(full, device=device, dtype=torch.float64).view(1, 1, -1) - start  # relative to crop
    first = torch.trunc(center - support + 0.5).clamp(min=0)
    last = torch.minimum(torch.trunc(center + support + 0.5), size)
    inside = (source >= first) & (source < last)
    weights = torch.where(inside, (1.0 - ((source - center + 0.5) / filterscale).abs()).clamp(min=0), 0.0)
    total = weights.sum(-1, keepdim=True)
    weights = torch.where(total > 0, weights / torch.where(total > 0, total, 1.0), 0.0)
    in_window = (position >= 0) & (position < resized)  # centre crop larger than the image: zero rows
    weights = weights * in_window
    if fixed_point:
        unit = float(1 << _PRECISION_BITS)
        weights = torch.floor(weights * unit + 0.5) / unit
    return weights


def pad_batch(images: list[torch.Tensor]) -> torch.Tensor:
    """List of (C, Hi, Wi) tensors -> (B, C, Hmax, Wmax), zero padded at the bottom/right."""
    channels = images[0].shape[0]
    height = max(int(im.shape[-2]) for im in images)
    width = max(int(im.shape[-1]) for im in images)
    if all(im.shape[-2] == height and im.shape[-1] == width for im in images):
        return torch.stack(images)
    batch = images[0].new_zeros((len(images), channels, height, width))
    for i, im in enumerate(images):
        batch[i, :, : im.shape[-2], : im.shape[-1]] = im
    return batch


def resample_batch(
    batch: torch.Tensor, geometry: Geometry, *, pil_rounding: bool = True, compute_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Crop, resize (antialiased bilinear), window and flip a padded uint8 batch (B, C, H, W):
    returns (B, C, out_h, out_w) in ``compute_dtype`` with values in [0, 255] (integers when
    ``pil_rounding``, as PIL's uint8 passes)."""
    g = geometry.to(batch.device)
    out_h, out_w = g.out_size
    full_h, full_w = batch.shape[-2], batch.shape[-1]
    wx = pil_bilinear_weights(g.left, g.width, g.resize_w, g.out_left, out_w, full_w, fixed_point=pil_rounding)
    wy = pil_bilinear_weights(g.top, g.height, g.resize_h, g.out_top, out_h, full_h, fixed_point=pil_rounding)
    wx = torch.where(g.flip.view(-1, 1, 1), wx.flip(1), wx)
    # PIL skips a pass whose size does not change (no crop offset, same length): identity weights, same values
    x = batch.to(compute_dtype)
    x = torch.matmul(x, wx.to(compute_dtype).transpose(1, 2).unsqueeze(1))  # horizontal pass first, as PIL
    if pil_rounding:
        x = torch.floor(x + 0.5).clamp_(0, 255)
    x = torch.matmul(wy.to(compute_dtype).unsqueeze(1), x)
    if pil_rounding:
        x = torch.floor(x + 0.5).clamp_(0, 255)
    return x
