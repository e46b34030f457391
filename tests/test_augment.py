"""Tests for minidino.augment: the per-image torchvision pipeline and the batched tensor version.

Trusted references: torchvision.transforms.v2 (RandomResizedCrop's box rule, resized_crop, the
colour functionals, gaussian_blur), binomial statistics for the per-crop probabilities, and
constructed images where an operation is visible (a ramp shows a flip, a coloured image shows
grayscale, a bright image shows solarization).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from minidino import augment_batched as ab
from minidino.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BatchedMultiCrop,
    MultiCropConfig,
    PerImageMultiCrop,
    collate_crops,
    normalize,
    small_image_config,
)

# A small ImageNet-style config (DINO's defaults, fewer and smaller crops) and the CIFAR one.
CONFIGS = {
    "imagenet_small": MultiCropConfig(global_size=64, local_size=32, n_local_crops=3),
    "cifar": small_image_config(32),
}
UNNORMALISED = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
# Only the op under test is left on (everything else has probability 0).
ALL_OFF = dict(flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0, 0.0, 0.0),
               solarize_p=(0.0, 0.0, 0.0), **UNNORMALISED)


def random_images(B: int, H: int, W: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (B, 3, H, W), dtype=torch.uint8, generator=g)  # (B, 3, H, W)


def expected_sizes(cfg: MultiCropConfig) -> list[int]:
    return [cfg.global_size] * 2 + [cfg.local_size] * cfg.n_local_crops


def in_range(crop: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> bool:
    """Every channel c of crop (..., 3, S, S) within [lo[c], hi[c]] (float rounding aside)."""
    lo, hi = lo.view(3, 1, 1) - 1e-5, hi.view(3, 1, 1) + 1e-5  # (3, 1, 1)
    return bool(((crop >= lo) & (crop <= hi)).all())


def within_binomial(hits: int, n: int, p: float) -> bool:
    """|hits/n - p| within 4.5 standard deviations (a false alarm about once in 150,000 runs)."""
    return abs(hits / n - p) <= 4.5 * math.sqrt(p * (1 - p) / n) + 1e-9


# --------------------------------------------------------------------------- shapes and ranges


@pytest.mark.parametrize("name", CONFIGS)
def test_shapes_dtype_device_and_range(name: str) -> None:
    cfg = CONFIGS[name]
    images = random_images(4, 48, 40)  # not square, not the crop size
    for normalised in (False, True):
        c = cfg if normalised else dataclasses.replace(cfg, **UNNORMALISED)
        per_image = PerImageMultiCrop(c)(images[0])
        batched = BatchedMultiCrop(c)(images)
        assert len(per_image) == len(batched) == c.n_crops
        lo = (0 - torch.tensor(c.mean)) / torch.tensor(c.std)  # (3,) value of black
        hi = (1 - torch.tensor(c.mean)) / torch.tensor(c.std)  # (3,) value of white
        for crop, size in zip(per_image, expected_sizes(c), strict=True):
            assert crop.shape == (3, size, size) and crop.dtype == torch.float32
            assert in_range(crop, lo, hi)
        for crop, size in zip(batched, expected_sizes(c), strict=True):
            assert crop.shape == (4, 3, size, size) and crop.dtype == torch.float32
            assert crop.device == images.device and in_range(crop, lo, hi)


def test_default_imagenet_config_shapes() -> None:
    cfg = MultiCropConfig()
    assert cfg.n_crops == 10
    crops = BatchedMultiCrop(cfg)(random_images(2, 120, 100))
    assert [c.shape for c in crops] == [(2, 3, 224, 224)] * 2 + [(2, 3, 96, 96)] * 8
    one = PerImageMultiCrop(cfg)(Image.new("RGB", (100, 120), (10, 200, 30)))  # PIL input
    assert [c.shape for c in one] == [(3, 224, 224)] * 2 + [(3, 96, 96)] * 8


def test_small_image_config_follows_the_guide() -> None:
    cfg = small_image_config(32, n_local_crops=6)
    assert (cfg.global_size, cfg.local_size, cfg.n_local_crops, cfg.n_crops) == (32, 16, 6, 8)
    assert cfg.global_scale == (0.4, 1.0) and cfg.local_scale == (0.05, 0.4)
    assert cfg.blur_sigma[1] < MultiCropConfig().blur_sigma[1]  # smaller blur for tiny images


def test_float_input_gives_the_same_crops_as_uint8() -> None:
    images = random_images(3, 32, 32)
    augment = BatchedMultiCrop(small_image_config(32))
    as_uint8 = augment(images, generator=torch.Generator().manual_seed(5))
    as_float = augment(images.float() / 255, generator=torch.Generator().manual_seed(5))
    for a, b in zip(as_uint8, as_float, strict=True):
        torch.testing.assert_close(a, b)


def test_normalize_matches_torchvision() -> None:
    images = random_images(2, 8, 8)
    expected = TF.normalize(images.float() / 255, list(IMAGENET_MEAN), list(IMAGENET_STD))
    torch.testing.assert_close(normalize(images, IMAGENET_MEAN, IMAGENET_STD), expected)
    torch.testing.assert_close(normalize(images[0], IMAGENET_MEAN, IMAGENET_STD), expected[0])


def test_collate_crops_stacks_per_crop() -> None:
    augment = PerImageMultiCrop(small_image_config(16, n_local_crops=2))
    samples = [(augment(img), label) for img, label in zip(random_images(3, 16, 16), [4, 1, 7],
                                                           strict=True)]
    crops, labels = collate_crops(samples)
    assert labels.tolist() == [4, 1, 7]
    assert [c.shape for c in crops] == [(3, 3, 16, 16)] * 2 + [(3, 3, 8, 8)] * 2
    torch.testing.assert_close(crops[3][1], samples[1][0][3])


# --------------------------------------------------------------------------- randomness


def test_batched_is_random_per_sample_and_reproducible() -> None:
    same = random_images(1, 32, 32).expand(2, -1, -1, -1)  # two identical images
    augment = BatchedMultiCrop(small_image_config(32))
    first = augment(same, generator=torch.Generator().manual_seed(0))
    for crop in first:  # every crop position differs between the two copies
        assert not torch.allclose(crop[0], crop[1])
    again = augment(same, generator=torch.Generator().manual_seed(0))
    other = augment(same, generator=torch.Generator().manual_seed(1))
    for a, b, c in zip(first, again, other, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert not torch.allclose(a, c)


def test_crop_box_fallback_matches_torchvision() -> None:
    # scale (1, 1) on a 10 x 40 image: no box with aspect in [3/4, 4/3] fits, so the centre crop
    rrc = v2.RandomResizedCrop(8, scale=(1.0, 1.0))
    expected = rrc.make_params([torch.empty(3, 10, 40)])
    boxes = ab.sample_crop_boxes(5, 10, 40, (1.0, 1.0))  # (5, 4)
    assert boxes.tolist() == [[expected[k] for k in ("top", "left", "height", "width")]] * 5


@pytest.mark.parametrize("scale", [(0.05, 0.4), (0.4, 1.0)])
def test_crop_box_distribution_matches_torchvision(scale: tuple[float, float]) -> None:
    H, W, n = 30, 40, 3000
    torch.manual_seed(0)
    rrc = v2.RandomResizedCrop(8, scale=scale)
    ref = torch.tensor([[p[k] for k in ("top", "left", "height", "width")]
                        for p in (rrc.make_params([torch.empty(3, H, W)]) for _ in range(n))])
    ours = ab.sample_crop_boxes(n, H, W, scale, generator=torch.Generator().manual_seed(1))
    assert ((ours[:, 2] > 0) & (ours[:, 3] > 0)).all()
    assert ((ours[:, 0] + ours[:, 2] <= H) & (ours[:, 1] + ours[:, 3] <= W)).all()
    for stat in (lambda b: b[:, 2] * b[:, 3] / (H * W),  # area fraction
                 lambda b: torch.log(b[:, 3] / b[:, 2]),  # log aspect ratio
                 lambda b: b[:, 0] + b[:, 2] / 2,  # box centre row
                 lambda b: b[:, 1] + b[:, 3] / 2):  # box centre column
        a, b = stat(ours.double()), stat(ref.double())
        stderr = math.sqrt(a.var() / n + b.var() / n)
        assert abs(a.mean() - b.mean()) < 5 * stderr  # two-sample z-test


# --------------------------------------------------------------------------- same as torchvision


@settings(max_examples=20, deadline=None)
@given(H=st.integers(4, 70), W=st.integers(4, 70), size=st.integers(2, 40),
       lo=st.floats(0.02, 1.0), seed=st.integers(0, 2**16))
def test_resized_crop_matches_torchvision(H: int, W: int, size: int, lo: float, seed: int) -> None:
    # resized_crop_batched builds the same triangle-filter weights as torch's antialiased
    # bilinear resize, so on float images only rounding differs (sums in another order): 1e-5.
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(4, 3, H, W, generator=g)  # (4, 3, H, W)
    boxes = ab.sample_crop_boxes(4, H, W, (lo, 1.0), generator=g)  # (4, 4)
    flip = torch.tensor([False, True, False, True])
    ours = ab.resized_crop_batched(images, boxes, size, flip)  # (4, 3, size, size)
    for i, (top, left, h, w) in enumerate(boxes.tolist()):
        ref = TF.resized_crop(images[i], top, left, h, w, [size, size], antialias=True)
        ref = TF.horizontal_flip(ref) if flip[i] else ref
        torch.testing.assert_close(ours[i], ref, rtol=0, atol=1e-5)


def test_resized_crop_matches_torchvision_on_uint8() -> None:
    # torchvision's uint8 kernel uses fixed-point weights and rounds to whole levels after each
    # of its two passes (rows, then columns): up to half a level each, so allow 1.5 levels.
    images = random_images(16, 50, 36)
    g = torch.Generator().manual_seed(3)
    boxes = ab.sample_crop_boxes(16, 50, 36, (0.05, 1.0), generator=g)  # (16, 4)
    ours = ab.resized_crop_batched(images.float() / 255, boxes, 24) * 255  # (16, 3, 24, 24)
    for i, (top, left, h, w) in enumerate(boxes.tolist()):
        ref = TF.resized_crop(images[i], top, left, h, w, [24, 24], antialias=True)
        assert (ours[i] - ref.float()).abs().max() <= 1.5


def colourful_images(B: int = 8, size: int = 12) -> torch.Tensor:
    """Float images in [0, 1] with edge cases: greys, black, white, ties between channels."""
    x = torch.rand(B, 3, size, size, generator=torch.Generator().manual_seed(0))
    x = torch.round(x * 4) / 4  # few distinct levels: many pixels with equal channels
    x[:, :, 0, 0], x[:, :, 0, 1] = 0.0, 1.0  # black and white
    x[:, :, 0, 2] = torch.tensor([0.3, 0.3, 0.3])  # grey
    x[:, :, 0, 3] = torch.tensor([0.9, 0.9, 0.1])  # red and green tie for the maximum
    return x


@pytest.mark.parametrize("op, low, high", [
    ("adjust_brightness", 0.0, 2.0), ("adjust_contrast", 0.0, 2.0),
    ("adjust_saturation", 0.0, 2.0), ("adjust_hue", -0.5, 0.5),
])
def test_colour_ops_match_torchvision(op: str, low: float, high: float) -> None:
    # Same formulas in float32; only rounding differs (hue goes through HSV and back): 1e-5.
    x = torch.cat([colourful_images(), torch.rand(8, 3, 12, 12)])  # (16, 3, 12, 12)
    factor = low + (high - low) * torch.rand(16, generator=torch.Generator().manual_seed(1))
    ours = getattr(ab, op)(x, factor)
    for i in range(16):
        ref = getattr(TF, op)(x[i], factor[i].item())
        torch.testing.assert_close(ours[i], ref, rtol=0, atol=1e-5)


def test_grayscale_solarize_blur_match_torchvision() -> None:
    x = colourful_images()  # (8, 3, 12, 12)
    torch.testing.assert_close(ab.rgb_to_grayscale(x), TF.rgb_to_grayscale(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(ab.solarize(x), TF.solarize(x, 128 / 255), rtol=0, atol=0)
    sigma = 0.1 + 1.9 * torch.rand(8, generator=torch.Generator().manual_seed(2))  # (8,)
    k = ab.blur_kernel_size(2.0)
    ours = ab.gaussian_blur(x, sigma, k)
    for i in range(8):  # separable vs 2-D convolution: rounding only
        ref = TF.gaussian_blur(x[i], [k, k], [sigma[i].item()] * 2)
        torch.testing.assert_close(ours[i], ref, rtol=0, atol=1e-5)


def test_pipeline_with_fixed_params_matches_torchvision_functionals() -> None:
    # The whole batched pipeline, against torchvision's functionals applied one image at a time
    # with the same decisions, in the same fixed order; float throughout, so 1e-4 after /std.
    cfg = dataclasses.replace(small_image_config(24, n_local_crops=2), blur_p=(1.0, 0.5, 0.5),
                              blur_sigma=(0.3, 1.5), solarize_p=(0.5, 0.5, 0.5))
    augment = BatchedMultiCrop(cfg)
    images = random_images(6, 30, 26)
    params = augment.sample_params(6, 30, 26, generator=torch.Generator().manual_seed(4))
    crops = augment.apply(images, params)
    x = images.float() / 255
    expected = []
    for p in params:
        for c in range(p.flip.shape[0]):
            for i in range(6):
                top, left, h, w = p.boxes[c, i].tolist()
                y = TF.resized_crop(x[i], top, left, h, w, [p.size] * 2, antialias=True)
                y = TF.horizontal_flip(y) if p.flip[c, i] else y
                if p.jitter[c, i]:
                    y = TF.adjust_brightness(y, p.brightness[c, i].item())
                    y = TF.adjust_contrast(y, p.contrast[c, i].item())
                    y = TF.adjust_saturation(y, p.saturation[c, i].item())
                    y = TF.adjust_hue(y, p.hue[c, i].item())
                y = TF.rgb_to_grayscale(y, 3) if p.grayscale[c, i] else y
                if p.blur[c, i]:
                    y = TF.gaussian_blur(y, [augment.kernel_size] * 2, [p.sigma[c, i].item()] * 2)
                y = TF.solarize(y, 128 / 255) if p.solarize[c, i] else y
                expected.append(TF.normalize(y, list(cfg.mean), list(cfg.std)))
    ours = [c for crop in crops for c in crop]  # crop position major, then image
    assert len(ours) == len(expected) == 6 * cfg.n_crops
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


# --------------------------------------------------------------------------- probabilities


def test_drawn_decisions_have_the_configured_rates() -> None:
    cfg, n = MultiCropConfig(n_local_crops=2), 4000
    g = torch.Generator().manual_seed(0)
    global_p, local_p = BatchedMultiCrop(cfg).sample_params(n, 64, 64, g)
    blur = cfg.blur_p[:2] + cfg.blur_p[2:] * 2  # per crop position: global 1, global 2, locals
    solarize = cfg.solarize_p[:2] + cfg.solarize_p[2:] * 2
    for k, (p, c) in enumerate([(global_p, 0), (global_p, 1), (local_p, 0), (local_p, 1)]):
        for mask, rate in [(p.flip, cfg.flip_p), (p.jitter, cfg.jitter_p),
                           (p.grayscale, cfg.grayscale_p), (p.blur, blur[k]),
                           (p.solarize, solarize[k])]:
            assert within_binomial(int(mask[c].sum()), n, rate), (k, rate)
    # factors lie in ColorJitter's ranges where jitter is on and are neutral where it is off
    for p in (global_p, local_p):
        assert ((p.brightness - 1).abs() <= cfg.brightness).all()
        assert ((p.saturation - 1).abs() <= cfg.saturation).all() and (p.hue.abs() <= cfg.hue).all()
        assert (p.brightness[~p.jitter] == 1).all() and (p.hue[~p.jitter] == 0).all()
        assert ((p.sigma >= cfg.blur_sigma[0]) & (p.sigma <= cfg.blur_sigma[1])).all()


def detections(images: torch.Tensor, cfg: MultiCropConfig,
               detect: Callable[[torch.Tensor], bool], n: int, batched: bool) -> list[int]:
    """How often `detect(crop)` fires, per crop position, over n augmentations of images[0]."""
    if batched:
        crops = BatchedMultiCrop(cfg)(images[:1].expand(n, -1, -1, -1),
                                      generator=torch.Generator().manual_seed(0))
        return [int(sum(detect(c) for c in crop)) for crop in crops]
    torch.manual_seed(0)
    runs = [PerImageMultiCrop(cfg)(images[0]) for _ in range(n)]
    return [int(sum(detect(run[k]) for run in runs)) for k in range(cfg.n_crops)]


@pytest.mark.parametrize("batched, n", [(True, 2000), (False, 300)])
def test_flip_grayscale_solarize_rates_on_constructed_images(batched: bool, n: int) -> None:
    base = dict(global_size=8, local_size=8, n_local_crops=1, global_scale=(1.0, 1.0),
                local_scale=(1.0, 1.0))  # every crop is the whole 8 x 8 image
    ramp = torch.arange(8, dtype=torch.uint8).mul(30).expand(1, 3, 8, 8)  # dark left, bright right
    cfg = MultiCropConfig(**{**base, **ALL_OFF, "flip_p": 0.3})
    hits = detections(ramp, cfg, lambda c: bool(c[0, 0, 0] > c[0, 0, -1]), n, batched)
    assert all(within_binomial(k, n, 0.3) for k in hits), hits

    colour = torch.tensor([200, 40, 90], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 8, 8)
    cfg = MultiCropConfig(**{**base, **ALL_OFF, "grayscale_p": 0.2})
    hits = detections(colour, cfg, lambda c: bool((c[0] - c[1]).abs().max() < 1e-6), n, batched)
    assert all(within_binomial(k, n, 0.2) for k in hits), hits

    bright = torch.full((1, 3, 8, 8), 200, dtype=torch.uint8)  # solarized to 55
    cfg = MultiCropConfig(**{**base, **ALL_OFF, "solarize_p": (0.0, 0.2, 0.5)})
    hits = detections(bright, cfg, lambda c: bool(c.max() < 0.5), n, batched)
    assert all(within_binomial(k, n, p) for k, p in zip(hits, (0.0, 0.2, 0.5), strict=True)), hits


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("field, value", [
    ("global_size", 0), ("local_size", -1), ("local_size", 256), ("n_local_crops", -1),
    ("global_scale", (0.0, 1.0)), ("local_scale", (0.5, 0.4)), ("local_scale", (0.1, 1.5)),
    ("flip_p", 1.5), ("jitter_p", -0.1), ("grayscale_p", 2.0), ("blur_p", (1.0, 0.1)),
    ("blur_p", (1.0, 0.1, 1.2)), ("solarize_p", (0.0, -0.2, 0.0)), ("brightness", -0.1),
    ("hue", 0.6), ("blur_sigma", (0.0, 2.0)), ("blur_sigma", (0.1, 40.0)), ("std", (0.2, 0.0, 0.2)),
    ("mean", (0.5, 0.5)), ("ratio", (4 / 3, 3 / 4)),
])
def test_bad_config_raises_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        MultiCropConfig(**{field: value})


def test_local_crop_larger_than_global_crop_message() -> None:
    with pytest.raises(ValueError, match="local crop larger than global crop"):
        MultiCropConfig(global_size=32, local_size=64)


@pytest.mark.parametrize("bad", [
    torch.zeros(3, 8, 8, dtype=torch.uint8),  # no batch dimension
    torch.zeros(2, 4, 8, 8, dtype=torch.uint8),  # 4 channels
    torch.zeros(2, 3, 8, 8, dtype=torch.int32),  # not uint8 or float
    [[0]],  # not a tensor
])
def test_bad_batched_input_raises(bad: object) -> None:
    with pytest.raises(ValueError, match="images"):
        BatchedMultiCrop(small_image_config(8))(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [
    torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.zeros(3, 8, 8), torch.zeros(1, 8, 8),
])
def test_bad_per_image_input_raises(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="img"):
        PerImageMultiCrop(small_image_config(8))(bad)


def test_other_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="mean"):
        normalize(torch.zeros(3, 4, 4), (0.5, 0.5), (0.2, 0.2, 0.2))
    with pytest.raises(ValueError, match="batch"):
        collate_crops([([torch.zeros(3, 4, 4)] * 2, 0), ([torch.zeros(3, 4, 4)] * 3, 1)])
    with pytest.raises(ValueError, match="boxes"):
        ab.resized_crop_batched(torch.zeros(2, 3, 8, 8), torch.zeros(3, 4, dtype=torch.long), 4)


# --------------------------------------------------------------------------- other devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batched_on_cuda_matches_cpu() -> None:
    augment = BatchedMultiCrop(small_image_config(32))
    images = random_images(8, 32, 32)
    gen = torch.Generator(device="cuda").manual_seed(0)
    crops = augment(images.cuda(), generator=gen)
    assert all(c.device.type == "cuda" and c.dtype == torch.float32 for c in crops)
    params = augment.sample_params(8, 32, 32, torch.Generator().manual_seed(0))
    on_cpu = augment.apply(images, params)
    on_gpu = augment.apply(images.cuda(), [p.to("cuda") for p in params])
    for a, b in zip(on_cpu, on_gpu, strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="generator"):
        augment(images.cuda(), generator=torch.Generator())
