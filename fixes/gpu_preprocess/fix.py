"""Fix ``gpu-preprocess``: move JPEG decode and the torchvision transforms of an ImageFolder-style
DataLoader after the host-to-device transfer, batched on the GPU. Applied only where the GPU
pipeline is equivalent (recognised transforms, bilinear, JPEG files read by a path loader)."""

from __future__ import annotations

from typing import Any, ClassVar

from stallscope.fixes.base import Fix, PatchHandle, Target, Tolerance, register


def _looks_like_dataloader(obj: Any) -> bool:
    return hasattr(obj, "dataset") and hasattr(obj, "collate_fn") and hasattr(obj, "batch_size")


@register
class GpuPreprocessFix(Fix):
    """CPU decode + resize + normalize in DataLoader workers -> uint8 bytes in the workers,
    batched nvJPEG decode and one resample per batch on the GPU, channels_last output."""

    id = "gpu-preprocess"
    answers = ("input-pipeline",)
    description = "Decode JPEGs and run crop/resize/flip/normalize on the GPU, batched, after the transfer"
    advice = (
        "Move JPEG decoding and the torchvision transforms after the transfer, batched on the GPU: wrap a "
        "bytes-yielding loader in `stallscope.fixes.gpu_preprocess.GpuPreprocessLoader`, or call "
        '`stallscope.fixes.apply(model, ["gpu-preprocess"], loaders=[loader])` for an ImageFolder-style '
        "DataLoader. nvJPEG's pixels differ from PIL's (docs/gpu-preprocess.md); auto-patch does not keep this "
        "fix, it has no parity check on live batches."
    )
    tolerance = Tolerance(
        rtol=0.0,
        atol=2.0 / 255.0,
        grad_rtol=0.0,
        grad_atol=0.0,
        note="max |GPU - PIL| <= 2/255 before normalisation with the same crops; resampling is "
        "PIL-exact in float64 (<= 1/255 in float32); decoder (nvJPEG vs libjpeg) "
        "differences are measured in bench/results/gpu-preprocess.yaml",
    )
    scope = "dataloader"
    device: ClassVar[str | None] = None  # None: CUDA when available; tests set "cpu"

    def find_targets(self, root: Any) -> list[Target]:
        """``root`` itself when it is a DataLoader (duck-typed); nothing otherwise."""
        if root is None or not _looks_like_dataloader(root):
            return []
        return [Target(name=f"{type(root).__name__}({type(root.dataset).__name__})", obj=root, kind="dataloader")]

    def _device(self) -> str | None:
        if self.device is not None:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else None

    def why_not(self, target: Target) -> str | None:
        loader = target.obj
        if self._device() is None:
            return "no CUDA device: decoding and resizing on the CPU in the main process would be slower than workers"
        if getattr(type(loader), "_stallscope_base", None) is not None:
            return "this DataLoader is already GPU-preprocessed"
        dataset = getattr(loader, "dataset", None)
        if not callable(getattr(dataset, "loader", None)) or not hasattr(dataset, "transform"):
            return (
                f"dataset {type(dataset).__name__} decodes inside __getitem__ (no .loader/.transform attributes); "
                "wrap a bytes-yielding loader in stallscope.fixes.gpu_preprocess.GpuPreprocessLoader instead"
            )
        assert dataset is not None  # it has a callable .loader
        if getattr(dataset, "target_transform", None) is not None and not callable(dataset.target_transform):
            return "target_transform is not callable"
        from torch.utils.data import default_collate
        from torch.utils.data._utils.collate import default_collate as internal_default_collate

        if loader.collate_fn not in (default_collate, internal_default_collate):
            return "the DataLoader has a custom collate_fn: the GPU batch would bypass it"
        if getattr(loader, "_iterator", None) is not None and getattr(loader, "persistent_workers", False):
            return "persistent workers already hold a copy of the dataset; patch before the first epoch"
        samples = getattr(dataset, "samples", None) or getattr(dataset, "imgs", None)
        if samples:
            path = str(samples[0][0]).lower()
            if not path.endswith((".jpg", ".jpeg")):
                return f"files are not JPEG ({samples[0][0]}); the GPU decoder is for JPEG"
        from stallscope.fixes.gpu_preprocess.pipeline import Unsupported, plan_from_transform

        try:
            plan_from_transform(dataset.transform)
        except Unsupported as exc:
            return f"transform not equivalent on the GPU: {exc}"
        return None

    def apply(self, target: Target) -> PatchHandle:
        reason = self.why_not(target)
        if reason is not None:
            raise RuntimeError(f"gpu-preprocess cannot patch {target.name}: {reason}")
        from stallscope.fixes.gpu_preprocess.adapter import patch_loader
        from stallscope.fixes.gpu_preprocess.pipeline import GpuPipeline

        pipeline = GpuPipeline.from_transform(target.obj.dataset.transform, self._device())
        saved = patch_loader(target.obj, pipeline)
        return PatchHandle(fix_id=self.id, target=target, saved=saved)

    def revert(self, handle: PatchHandle) -> None:
        if handle.reverted:
            return
        from stallscope.fixes.gpu_preprocess.adapter import unpatch_loader

        unpatch_loader(handle.target.obj, handle.saved)
        handle.reverted = True
