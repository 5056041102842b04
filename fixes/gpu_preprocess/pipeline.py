"""Recognise a torchvision PIL pipeline and run its equivalent on batched (CUDA) tensors.

Recognised (by class name and attributes, torchvision v1 or v2): ``Compose`` of
``RandomResizedCrop`` | ``Resize`` (at most one resampling step, bilinear), ``CenterCrop``
(any number, after it), ``RandomHorizontalFlip`` (after the geometry), ``ToTensor`` |
``PILToTensor``+``ConvertImageDtype`` | ``ToImage``+``ToDtype(scale=True)``, ``Normalize``.
Anything else makes :func:`plan_from_transform` raise :class:`Unsupported` with the reason.

The GPU version: encoded JPEG bytes -> batched decode (nvJPEG via ``torchvision.io.decode_jpeg``
with ``device='cuda'``; CPU decode elsewhere) -> one crop/resize/flip resample per batch
(:mod:`stallscope.fixes.gpu_preprocess.resample`) -> fused ``/255`` and Normalize -> channels_last.
Random parameters are drawn on the host with torchvision's RandomResizedCrop algorithm.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from stallscope.fixes.gpu_preprocess.resample import Geometry, pad_batch, resample_batch

__all__ = [
    "PackedJpegs",
    "PackedImages",
    "Unsupported",
    "Step",
    "Plan",
    "plan_from_transform",
    "decode_images",
    "GpuPipeline",
    "random_resized_crop_params",
    "torchvision_available",
]


class PackedJpegs(NamedTuple):
    """A batch of encoded images as one flat uint8 tensor and their byte sizes: one shared-memory
    tensor between worker and main process and one pinned buffer, instead of one per image."""

    data: torch.Tensor
    sizes: torch.Tensor

    @classmethod
    def pack(cls, encoded: Sequence[torch.Tensor]) -> PackedJpegs:
        return cls(torch.cat([e.reshape(-1) for e in encoded]), torch.tensor([e.numel() for e in encoded]))

    def unpack(self) -> list[torch.Tensor]:
        return list(torch.split(self.data, self.sizes.tolist()))


class PackedImages(NamedTuple):
    """Decoded (H, W, C) uint8 images of different sizes as one flat tensor and their shapes: for
    loaders that decode on the CPU (exact libjpeg-turbo pixels) and resize on the GPU. Channels
    last as PIL gives them; :meth:`unpack` returns (C, H, W) views."""

    data: torch.Tensor
    shapes: torch.Tensor

    @classmethod
    def pack(cls, images: Sequence[torch.Tensor]) -> PackedImages:
        return cls(torch.cat([im.reshape(-1) for im in images]), torch.tensor([list(im.shape) for im in images]))

    def unpack(self, device: torch.device | str | None = None) -> list[torch.Tensor]:
        data = self.data if device is None else self.data.to(device, non_blocking=True)  # one transfer
        shapes = [tuple(s) for s in self.shapes.tolist()]
        sizes = [h * w * c for h, w, c in shapes]
        return [
            chunk.view(shape).permute(2, 0, 1) for chunk, shape in zip(torch.split(data, sizes), shapes, strict=False)
        ]


class Unsupported(ValueError):
    """The transform has no exact GPU equivalent here; the message says which step and why."""


@dataclass(frozen=True)
class Step:
    """One recognised transform with its parameters."""

    kind: str  # random_resized_crop | resize | center_crop | hflip | to_float | normalize
    args: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """The recognised pipeline, in order; what :class:`GpuPipeline` executes."""

    steps: tuple[Step, ...]

    @property
    def out_size(self) -> tuple[int, int] | None:
        """Fixed output size (h, w), or None when the output size depends on the image."""
        size = None
        for s in self.steps:
            if s.kind in ("random_resized_crop", "center_crop"):
                size = s.args["size"]
            elif s.kind == "resize":
                size = s.args["size"] if isinstance(s.args["size"], tuple) else None
        return size


@functools.lru_cache(maxsize=1)
def torchvision_available() -> tuple[bool, str]:
    """Whether torchvision imports here (it needs a torch build it was made for)."""
    try:
        import torchvision  # noqa: F401
        import torchvision.io  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable here"
        return (
            False,
            f"torchvision does not import ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
        )
    return True, ""


def _pair(size: Any) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(s) for s in size)
    return (size[0], size[0]) if len(size) == 1 else (size[0], size[1])


def _bilinear(transform: Any) -> bool:
    mode = getattr(transform, "interpolation", "bilinear")
    value = getattr(mode, "value", mode)
    return value in ("bilinear", 2) or str(value).lower().endswith("bilinear")


def plan_from_transform(transform: Any) -> Plan:
    """A :class:`Plan` for a torchvision transform pipeline that acts on PIL RGB images, or
    :class:`Unsupported` naming the first step without an exact GPU equivalent."""
    items = list(getattr(transform, "transforms", [transform])) if transform is not None else []
    steps: list[Step] = []
    resampled = flipped = as_float = normalized = False
    pending_pil_to_tensor = False
    for t in items:
        name = type(t).__name__
        if name in ("RandomResizedCrop", "Resize"):
            if resampled or as_float or flipped:
                raise Unsupported(f"{name} after another resize, flip or ToTensor has no single-pass equivalent")
            if not _bilinear(t):
                raise Unsupported(
                    f"{name} uses {getattr(t, 'interpolation', '?')} interpolation; only bilinear is matched"
                )
            if name == "RandomResizedCrop":
                steps.append(
                    Step(
                        "random_resized_crop", {"size": _pair(t.size), "scale": tuple(t.scale), "ratio": tuple(t.ratio)}
                    )
                )
            else:
                size = t.size
                if getattr(t, "max_size", None) is not None:
                    raise Unsupported("Resize(max_size=...) is not matched")
                if not isinstance(size, int):
                    size = int(size[0]) if len(size) == 1 else _pair(size)
                steps.append(Step("resize", {"size": size}))
            resampled = True
        elif name == "CenterCrop":
            if as_float or flipped:
                raise Unsupported("CenterCrop after ToTensor or a flip is not matched")
            steps.append(Step("center_crop", {"size": _pair(t.size)}))
        elif name == "RandomHorizontalFlip":
            if as_float or flipped:
                raise Unsupported("RandomHorizontalFlip after ToTensor or twice is not matched")
            steps.append(Step("hflip", {"p": float(t.p)}))
            flipped = True
        elif (
            name == "ToTensor"
            or (name == "ConvertImageDtype" and pending_pil_to_tensor)
            or (name == "ToDtype" and pending_pil_to_tensor and getattr(t, "scale", False))
        ):
            if name != "ToTensor":
                dtype = getattr(t, "dtype", None)
                dtype = dtype.get(torch.Tensor, dtype) if isinstance(dtype, dict) else dtype
                if dtype not in (torch.float32, None):
                    raise Unsupported(f"{name} to {dtype} is not matched (float32 only)")
            steps.append(Step("to_float"))
            as_float, pending_pil_to_tensor = True, False
        elif name in ("PILToTensor", "ToImage"):
            pending_pil_to_tensor = True
        elif name == "Normalize":
            if not as_float or normalized:
                raise Unsupported("Normalize before ToTensor (or twice) is not matched")
            steps.append(
                Step("normalize", {"mean": tuple(float(m) for m in t.mean), "std": tuple(float(s) for s in t.std)})
            )
            normalized = True
        else:
            raise Unsupported(f"transform {name} has no GPU equivalent here")
    if not as_float:
        raise Unsupported("the pipeline never converts to a float tensor (ToTensor); the loader would yield PIL images")
    return Plan(tuple(steps))


def random_resized_crop_params(
    height: int, width: int, scale: Sequence[float], ratio: Sequence[float], generator: torch.Generator | None = None
) -> tuple[int, int, int, int]:
    """(top, left, h, w) drawn as torchvision's RandomResizedCrop draws them: ten tries of a
    random area share and log-uniform aspect ratio, else the largest central crop in range."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))  # float32 as torchvision: same draws for the same seed
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        # 0-dim tensor bounds, as torchvision passes them (torch reads them as doubles; its stub says float)
        aspect = torch.exp(
            torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)  # type: ignore[arg-type]
        ).item()
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _resize_size(h: int, w: int, size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, tuple):
        return size
    short, long = (h, w) if h <= w else (w, h)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if h <= w else (new_long, new_short)


def _center_offset(length: int, crop: int) -> int:
    """torchvision's centre crop: pad symmetrically when the crop is larger, else round((L-c)/2)."""
    if crop > length:
        return -((crop - length) // 2)
    return int(round((length - crop) / 2.0))


def geometry_for(
    plan: Plan,
    sizes: Sequence[tuple[int, int]],
    generator: torch.Generator | None = None,
    params: Sequence[dict] | None = None,
) -> Geometry:
    """Per-sample geometry for images of ``sizes`` (h, w); ``params`` forces random choices
    (``{"crop": (top, left, h, w), "flip": bool}`` per sample) for equivalence checks."""
    rows = []
    for i, (h, w) in enumerate(sizes):
        top, left, ch, cw = 0, 0, h, w  # source box
        rh, rw = h, w  # resized size
        ot, ol, oh, ow = 0, 0, h, w  # output window in the resized image
        flip = False
        forced = params[i] if params is not None else {}
        for s in plan.steps:
            if s.kind == "random_resized_crop":
                top, left, ch, cw = forced.get("crop") or random_resized_crop_params(
                    h, w, s.args["scale"], s.args["ratio"], generator
                )
                rh, rw = s.args["size"]
                ot, ol, oh, ow = 0, 0, rh, rw
            elif s.kind == "resize":
                rh, rw = _resize_size(h, w, s.args["size"])
                ot, ol, oh, ow = 0, 0, rh, rw
            elif s.kind == "center_crop":
                ch2, cw2 = s.args["size"]
                ot, ol = ot + _center_offset(oh, ch2), ol + _center_offset(ow, cw2)
                oh, ow = ch2, cw2
            elif s.kind == "hflip":
                flip = (
                    bool(forced["flip"])
                    if "flip" in forced
                    else bool(torch.rand(1, generator=generator).item() < s.args["p"])
                )
        rows.append((top, left, ch, cw, rh, rw, ot, ol, flip, oh, ow))
    out_sizes = {(r[9], r[10]) for r in rows}
    if len(out_sizes) != 1:
        raise Unsupported(f"output sizes differ within the batch {sorted(out_sizes)}; add a CenterCrop or fixed Resize")
    cols = list(zip(*rows, strict=False))
    as_long = lambda c: torch.tensor(c, dtype=torch.long)  # noqa: E731
    tops, lefts, heights, widths, resize_hs, resize_ws, out_tops, out_lefts = (as_long(c) for c in cols[:8])
    flips = torch.tensor(cols[8], dtype=torch.bool)
    return Geometry(tops, lefts, heights, widths, resize_hs, resize_ws, out_tops, out_lefts, flips, out_sizes.pop())


def pil_decode_hwc(data: bytes | torch.Tensor) -> torch.Tensor:
    """Decode with PIL (libjpeg-turbo) to an (H, W, 3) uint8 RGB tensor, as ImageFolder's loader."""
    import numpy as np
    from PIL import Image

    raw = data.numpy().tobytes() if isinstance(data, torch.Tensor) else bytes(data)
    with Image.open(io.BytesIO(raw)) as img:
        return torch.from_numpy(np.array(img.convert("RGB")))


def _pil_decode(data: bytes | torch.Tensor) -> torch.Tensor:
    return pil_decode_hwc(data).permute(2, 0, 1).contiguous()


def decode_images(encoded: Sequence[torch.Tensor | bytes], device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Decode JPEG bytes to (3, H, W) uint8 RGB tensors on ``device``: one batched nvJPEG call
    on CUDA (torchvision), torchvision's CPU decoder elsewhere, PIL when torchvision is not
    usable; a file nvJPEG refuses (CMYK, PNG) falls back to PIL on its own."""
    device = torch.device(device)
    if isinstance(encoded, PackedJpegs):
        encoded = encoded.unpack()
    data = [e if isinstance(e, torch.Tensor) else torch.frombuffer(bytearray(e), dtype=torch.uint8) for e in encoded]
    ok, _ = torchvision_available()
    if ok:
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            out = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
            return list(out) if not isinstance(out, torch.Tensor) else [out]
        except RuntimeError:
            pass  # one bad file fails the whole batch: decode one by one below
        images = []
        for d in data:
            try:
                images.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                images.append(_pil_decode(d).to(device))
        return images
    return [_pil_decode(d).to(device) for d in data]


class GpuPipeline:
    """Callable: a list of encoded images -> (B, 3, h, w) float32 channels_last batch on
    ``device``, equal to the recognised PIL pipeline (see :func:`plan_from_transform`)."""

    def __init__(
        self,
        plan: Plan,
        device: torch.device | str | None = None,
        *,
        generator: torch.Generator | None = None,
        pil_rounding: bool = True,
        out_dtype: torch.dtype = torch.float32,
    ):
        self.plan = plan
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.generator = generator
        self.pil_rounding = pil_rounding
        self.out_dtype = out_dtype
        norm = next((s for s in plan.steps if s.kind == "normalize"), None)
        mean = torch.tensor(norm.args["mean"] if norm else (0.0, 0.0, 0.0), dtype=torch.float32)
        std = torch.tensor(norm.args["std"] if norm else (1.0, 1.0, 1.0), dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1).to(self.device)
        self._shift = (-mean / std).view(1, -1, 1, 1).to(self.device)

    @classmethod
    def from_transform(cls, transform: Any, device: torch.device | str | None = None, **kwargs: Any) -> GpuPipeline:
        return cls(plan_from_transform(transform), device, **kwargs)

    def transform_decoded(
        self, images: list[torch.Tensor], params: Sequence[dict] | None = None, normalize: bool = True
    ) -> torch.Tensor:
        """Decoded (3, H, W) uint8 images (on the device) -> the output batch. With
        ``normalize=False`` returns the [0, 255] values before ``/255`` and Normalize."""
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        geometry = geometry_for(self.plan, sizes, self.generator, params)
        x = resample_batch(pad_batch(images), geometry, pil_rounding=self.pil_rounding)
        if not normalize:
            return x
        x = torch.addcmul(self._shift, x, self._scale)
        return x.to(self.out_dtype).contiguous(memory_format=torch.channels_last)

    def __call__(
        self, encoded: Sequence[torch.Tensor | bytes] | PackedJpegs | PackedImages, params: Sequence[dict] | None = None
    ) -> torch.Tensor:
        if isinstance(encoded, PackedImages):  # decoded on the CPU already: one uint8 transfer
            return self.transform_decoded(encoded.unpack(self.device), params)
        return self.transform_decoded(decode_images(encoded, self.device), params)
