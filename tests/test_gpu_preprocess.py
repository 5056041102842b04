"""GPU preprocessing: PIL equivalence of the batched resample, pipeline recognition, the
DataLoader patch (apply, equivalence, revert). Runs on CPU tensors here; decode falls back to
PIL where torchvision does not import (this machine's CPU torch has no matching torchvision)."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from stallscope.fixes.gpu_preprocess.pipeline import (
    GpuPipeline,
    Unsupported,
    _center_offset,
    _resize_size,
    decode_images,
    geometry_for,
    plan_from_transform,
    torchvision_available,
)
from stallscope.fixes.gpu_preprocess.resample import pad_batch, resample_batch

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _jpeg(h: int, w: int, seed: int) -> bytes:
    """Varied content: gradients, stripes, a disc, noise (edges and flat areas both matter)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255.0 / w, y * 255.0 / h, ((x // 7 + y // 11) % 2) * 200.0], -1)
    disc = (x - w * rng.uniform(0.2, 0.8)) ** 2 + (y - h * rng.uniform(0.2, 0.8)) ** 2 < (min(h, w) * 0.2) ** 2
    img[disc] = rng.uniform(0, 255, 3)
    img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    sizes = [(375, 500), (333, 500), (500, 375), (120, 90), (400, 531), (375, 500)]
    return [_jpeg(h, w, i) for i, (h, w) in enumerate(sizes)]


def _pil(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def _as_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).double()


def _pil_center_crop(img: Image.Image, h: int, w: int) -> Image.Image:
    """torchvision's PIL centre crop: zero padding when the crop is larger than the image."""
    top, left = _center_offset(img.size[1], h), _center_offset(img.size[0], w)
    out = Image.new("RGB", (w, h))
    out.paste(img.crop((max(left, 0), max(top, 0), left + w, top + h)), (max(-left, 0), max(-top, 0)))
    return out


# --- stand-ins with torchvision's class names and attributes, applying the PIL operations that
# torchvision's PIL backend applies (crop, resize BILINEAR, transpose), so they are the reference.
class Compose:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, img):
        for t in self.transforms:
            img = t(img)
        return img


class Resize:
    def __init__(self, size, interpolation="bilinear"):
        self.size, self.interpolation, self.max_size = size, interpolation, None

    def __call__(self, img):
        h, w = _resize_size(img.size[1], img.size[0], self.size)
        return img.resize((w, h), Image.BILINEAR)


class CenterCrop:
    def __init__(self, size):
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, img):
        return _pil_center_crop(img, *self.size)


class RandomHorizontalFlip:
    def __init__(self, p=0.5):
        self.p = p


class RandomResizedCrop:
    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation="bilinear"):
        self.size, self.scale, self.ratio, self.interpolation = (size, size), scale, ratio, interpolation


class ToTensor:
    def __call__(self, img):
        return _as_tensor(img).float() / 255.0


class Normalize:
    def __init__(self, mean, std):
        self.mean, self.std = mean, std

    def __call__(self, x):
        return (x - torch.tensor(self.mean).view(-1, 1, 1)) / torch.tensor(self.std).view(-1, 1, 1)


class ColorJitter:
    pass


def test_random_resized_crop_and_flip_are_pil_exact_in_float64(jpegs):
    plan = plan_from_transform(Compose([RandomResizedCrop(224), RandomHorizontalFlip(), ToTensor()]))
    rng = np.random.default_rng(0)
    pils = [_pil(b) for b in jpegs]
    params = []
    for im in pils:
        w, h = im.size
        ch, cw = int(rng.integers(10, h + 1)), int(rng.integers(10, w + 1))
        params.append({"crop": (int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw),
                       "flip": bool(rng.integers(0, 2))})
    decoded = decode_images(jpegs)
    geometry = geometry_for(plan, [tuple(d.shape[-2:]) for d in decoded], params=params)
    exact = resample_batch(pad_batch(decoded), geometry, compute_dtype=torch.float64)
    fast = resample_batch(pad_batch(decoded), geometry, compute_dtype=torch.float32)
    for i, (im, p) in enumerate(zip(pils, params)):
        top, left, ch, cw = p["crop"]
        ref = im.crop((left, top, left + cw, top + ch)).resize((224, 224), Image.BILINEAR)
        if p["flip"]:
            ref = ref.transpose(Image.FLIP_LEFT_RIGHT)
        ref_t = _as_tensor(ref)
        assert torch.equal(exact[i], ref_t), f"image {i}: float64 resample differs from PIL"
        assert (fast[i].double() - ref_t).abs().max().item() <= 1.0


@pytest.mark.parametrize("resize,crop", [(256, 224), ((300, 280), 224), (64, 100)])
def test_resize_center_crop_normalize_match_the_pil_pipeline(jpegs, resize, crop):
    transform = Compose([Resize(resize), CenterCrop(crop), ToTensor(), Normalize(MEAN, STD)])
    pipe = GpuPipeline.from_transform(transform, "cpu")
    out = pipe(jpegs)
    assert out.shape == (len(jpegs), 3, crop, crop) and out.is_contiguous(memory_format=torch.channels_last)
    ref = torch.stack([transform(_pil(b)) for b in jpegs]).float()
    scale = 1.0 / (255.0 * min(STD))
    assert (out - ref).abs().max().item() <= 1.0 * scale + 1e-5  # <= 1/255 before normalisation
    before = pipe.transform_decoded(decode_images(jpegs), normalize=False)
    ref_before = torch.stack([_as_tensor(CenterCrop(crop)(Resize(resize)(_pil(b)))) for b in jpegs])
    assert (before.double() - ref_before).abs().max().item() <= 1.0


def test_random_params_follow_torchvision_draws_and_stay_in_range(jpegs):
    plan = plan_from_transform(Compose([RandomResizedCrop(96, scale=(0.2, 1.0)), RandomHorizontalFlip(), ToTensor()]))
    sizes = [(375, 500)] * 200
    g = geometry_for(plan, sizes, generator=torch.Generator().manual_seed(0))
    area = (g.height * g.width).double() / (375 * 500)
    assert (g.top >= 0).all() and (g.top + g.height <= 375).all() and (g.left + g.width <= 500).all()
    assert area.min() >= 0.19 and area.max() <= 1.0
    assert 0.35 < g.flip.double().mean().item() < 0.65  # p = 0.5
    again = geometry_for(plan, sizes, generator=torch.Generator().manual_seed(0))
    assert torch.equal(g.top, again.top) and torch.equal(g.flip, again.flip)


@pytest.mark.parametrize("transform,reason", [
    (Compose([Resize(256), ColorJitter(), ToTensor()]), "ColorJitter"),
    (Compose([Resize(256, interpolation="bicubic"), ToTensor()]), "bilinear"),
    (Compose([Resize(256), Resize(224), ToTensor()]), "another resize"),
    (Compose([Resize(256), CenterCrop(224)]), "ToTensor"),
    (Compose([RandomHorizontalFlip(), CenterCrop(224), ToTensor()]), "flip"),
])
def test_unsupported_pipelines_say_why(transform, reason):
    with pytest.raises(Unsupported, match=reason):
        plan_from_transform(transform)


class JpegFolder(torch.utils.data.Dataset):
    """ImageFolder's shape: samples of (path, class), a path loader, transform, target_transform."""

    def __init__(self, paths, transform):
        self.samples = [(str(p), i % 3) for i, p in enumerate(paths)]
        self.loader = lambda path: Image.open(path).convert("RGB")
        self.transform, self.target_transform = transform, None

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, target = self.samples[i]
        sample = self.loader(path)
        if self.transform is not None:
            sample = self.transform(sample)
        return sample, target


@pytest.fixture()
def folder_loader(tmp_path, jpegs):
    paths = []
    for i, data in enumerate(jpegs):
        paths.append(tmp_path / f"img{i}.jpg")
        paths[-1].write_bytes(data)
    transform = Compose([Resize(256), CenterCrop(224), ToTensor(), Normalize(MEAN, STD)])
    return torch.utils.data.DataLoader(JpegFolder(paths, transform), batch_size=4, num_workers=0)


def test_fix_patches_a_dataloader_equivalently_and_reverts_exactly(folder_loader):
    from stallscope.fixes.base import registered_fixes

    fix = registered_fixes(["gpu-preprocess"])["gpu-preprocess"]()
    fix.device = "cpu"
    before = [(x.clone(), y.clone()) for x, y in folder_loader]
    dataset_loader = folder_loader.dataset.loader
    [target] = fix.find_targets(folder_loader)
    assert target.kind == "dataloader" and fix.why_not(target) is None
    handle = fix.apply(target)
    assert fix.why_not(target) == "this DataLoader is already GPU-preprocessed"
    after = list(folder_loader)
    assert [y.tolist() for _, y in after] == [y.tolist() for _, y in before]
    for (x0, _), (x1, _) in zip(before, after):
        assert x1.is_contiguous(memory_format=torch.channels_last)
        assert (x1 - x0).abs().max().item() <= (2.0 / 255.0) / min(STD)
    fix.revert(handle)
    assert type(folder_loader) is torch.utils.data.DataLoader
    assert folder_loader.dataset.loader is dataset_loader
    for (x0, y0), (x2, y2) in zip(before, folder_loader):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)
    other = torch.utils.data.DataLoader(folder_loader.dataset, batch_size=2)
    assert type(other) is torch.utils.data.DataLoader  # the class was never touched


def test_fix_refuses_what_it_cannot_match(folder_loader, tmp_path):
    from stallscope.fixes.base import registered_fixes

    fix = registered_fixes(["gpu-preprocess"])["gpu-preprocess"]()
    if not torch.cuda.is_available():
        assert "no CUDA" in fix.why_not(fix.find_targets(folder_loader)[0])
    fix.device = "cpu"
    assert fix.find_targets(torch.nn.Linear(2, 2)) == []
    custom = torch.utils.data.DataLoader(folder_loader.dataset, batch_size=2, collate_fn=lambda b: b)
    assert "collate_fn" in fix.why_not(fix.find_targets(custom)[0])
    folder_loader.dataset.transform = Compose([Resize(256), ColorJitter(), ToTensor()])
    assert "ColorJitter" in fix.why_not(fix.find_targets(folder_loader)[0])
    png = JpegFolder([tmp_path / "a.png"], Compose([Resize(256), ToTensor()]))
    assert "not JPEG" in fix.why_not(fix.find_targets(torch.utils.data.DataLoader(png))[0])
    with pytest.raises(RuntimeError, match="cannot patch"):
        fix.apply(fix.find_targets(folder_loader)[0])


def test_with_real_torchvision_transforms(jpegs):
    ok, why = torchvision_available()
    if not ok:
        pytest.skip(f"{why}; the CPU torch here has no matching torchvision build (covered on the GPU machine)")
    from torchvision import transforms as T
    from torchvision.transforms import functional as F

    transform = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])
    pils = [_pil(b) for b in jpegs]
    out = GpuPipeline.from_transform(transform, "cpu").transform_decoded([_as_tensor(p).to(torch.uint8) for p in pils])
    ref = torch.stack([transform(p) for p in pils])
    assert (out - ref).abs().max().item() <= (1.0 / 255.0) / min(STD) + 1e-5
    rrc = T.Compose([T.RandomResizedCrop(160), T.RandomHorizontalFlip(), T.ToTensor()])
    plan = plan_from_transform(rrc)
    params = [{"crop": (10, 20, 200, 250), "flip": True}] * len(pils)
    got = GpuPipeline(plan, "cpu").transform_decoded([_as_tensor(p).to(torch.uint8) for p in pils], params,
                                                     normalize=False)
    want = torch.stack([F.to_tensor(F.hflip(F.resized_crop(p, 10, 20, 200, 250, [160, 160]))) * 255 for p in pils])
    assert (got - want).abs().max().item() <= 1.0 + 1e-4


@pytest.mark.gpu
def test_cuda_pipeline_matches_cpu_and_decoder_difference_is_small(jpegs):
    assert torch.cuda.is_available()
    transform = Compose([Resize(256), CenterCrop(224), ToTensor(), Normalize(MEAN, STD)])
    cpu_decoded = [_as_tensor(_pil(b)).to(torch.uint8) for b in jpegs]
    cuda = GpuPipeline.from_transform(transform, "cuda")
    cpu = GpuPipeline.from_transform(transform, "cpu")
    same_input = cuda.transform_decoded([d.cuda() for d in cpu_decoded], normalize=False).cpu()
    assert (same_input - cpu.transform_decoded(cpu_decoded, normalize=False)).abs().max().item() <= 1.0
    nvjpeg = decode_images(jpegs, "cuda")
    diffs = [(a.cpu().double() - b.double()).abs() for a, b in zip(nvjpeg, cpu_decoded)]
    assert max(d.mean().item() for d in diffs) <= 2.0  # decoders differ in IDCT/upsampling, not in content


def test_packed_batches_survive_worker_processes_and_prefetch_falls_back_on_cpu(jpegs):
    from stallscope.fixes.gpu_preprocess.adapter import GpuPreprocessLoader, collate_encoded
    from stallscope.fixes.gpu_preprocess.pipeline import PackedJpegs

    class Bytes(torch.utils.data.Dataset):
        def __len__(self):
            return len(jpegs)

        def __getitem__(self, i):
            return torch.frombuffer(bytearray(jpegs[i]), dtype=torch.uint8), i

    transform = Compose([Resize(64), CenterCrop(48), ToTensor(), Normalize(MEAN, STD)])
    inner = torch.utils.data.DataLoader(Bytes(), batch_size=4, num_workers=1, collate_fn=collate_encoded)
    encoded, _ = next(iter(inner))
    assert isinstance(encoded, PackedJpegs) and [len(b) for b in jpegs[:4]] == encoded.sizes.tolist()
    assert bytes(encoded.unpack()[1].numpy()) == jpegs[1]
    loader = GpuPreprocessLoader(inner, GpuPipeline.from_transform(transform, "cpu"), prefetch=2)
    batches = list(loader)
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 48, 48), (2, 3, 48, 48)]
    ref = torch.stack([transform(_pil(b)) for b in jpegs]).float()
    assert (torch.cat([x for x, _ in batches]) - ref).abs().max().item() <= (1.0 / 255.0) / min(STD) + 1e-5


def test_cpu_decode_gpu_resize_mode_is_pil_exact(tmp_path, jpegs):
    from stallscope.fixes.gpu_preprocess.adapter import GpuPreprocessLoader, collate_decoded, read_decoded
    from stallscope.fixes.gpu_preprocess.pipeline import PackedImages

    paths = []
    for i, data in enumerate(jpegs):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(data)
    transform = Compose([Resize(256), CenterCrop(224), ToTensor(), Normalize(MEAN, STD)])
    dataset = JpegFolder(paths, None)
    dataset.loader = read_decoded
    inner = torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=collate_decoded)
    packed, _ = next(iter(inner))
    assert isinstance(packed, PackedImages) and packed.shapes[0].tolist()[2] == 3
    pipe = GpuPipeline.from_transform(transform, "cpu")
    out = torch.cat([x for x, _ in GpuPreprocessLoader(inner, pipe)])
    ref = torch.stack([transform(_pil(b)) for b in jpegs]).float()
    assert (out - ref).abs().max().item() <= (1.0 / 255.0) / min(STD) + 1e-5
