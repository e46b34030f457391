"""DINO multi-crop augmentation: 2 global crops and n_local_crops local crops per image.

Why: DINO trains the student to give, from any crop, the same output as the teacher gives from
a global crop. Global crops (224 px, 40-100% of the image) see the whole object; local crops
(96 px, 5-40%) see parts of it, so the student must learn that a part belongs to the whole.
Every crop also gets BYOL's photometric changes (flip, colour jitter, grayscale, blur,
solarization), so colour and sharpness cannot be used to match views. DINO's recipe, per crop:

| op                                        | global 1 | global 2 | locals   |
| ----------------------------------------- | -------- | -------- | -------- |
| random resized crop (area), ratio 3/4-4/3 | 0.4-1    | 0.4-1    | 0.05-0.4 |
| horizontal flip, probability              | 0.5      | 0.5      | 0.5      |
| colour jitter (b .4, c .4, s .2, h .1)    | 0.8      | 0.8      | 0.8      |
| grayscale                                 | 0.2      | 0.2      | 0.2      |
| Gaussian blur, sigma 0.1-2                | 1.0      | 0.1      | 0.5      |
| solarization (threshold 128)              | 0        | 0.2      | 0        |

How: two implementations of the same `MultiCropConfig`.
- `PerImageMultiCrop`: a torchvision.transforms.v2 pipeline for one image, the readable
  reference. It runs in DataLoader workers, one image at a time.
- `BatchedMultiCrop`: the same operations on a whole batch at once with independent random
  parameters per sample and crop (ops in `augment_batched.py`); over ten times faster per CPU
  core (docs/benchmarks.md), and it runs where the batch is (CUDA, MPS). Two differences: the
  colour jitter order is fixed (brightness, contrast, saturation, hue; torchvision's ColorJitter
  draws a random order per image), and it stays in float where the reference rounds after each op.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import default_collate
from torchvision.transforms import v2

from minidino.augment_batched import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    blur_kernel_size,
    check_images,
    device_constant,
    gaussian_blur,
    normalize,
    resized_crop_batched,
    rgb_to_grayscale,
    sample_crop_boxes,
    solarize,
    to_float,
)
from minidino.config import TrainConfig


@dataclass(frozen=True)
class MultiCropConfig:
    """What to crop and how to change colours; defaults are DINO's ImageNet recipe."""

    global_size: int = 224
    local_size: int = 96
    n_local_crops: int = 8
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)  # global 1, global 2, locals
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: tuple[float, float, float] = (0.0, 0.2, 0.0)  # global 1, global 2, locals
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range of the crop boxes

    def __post_init__(self) -> None:
        for name in ("global_size", "local_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.local_size > self.global_size:
            raise ValueError(f"local_size={self.local_size} > global_size={self.global_size}: "
                             "local crop larger than global crop")
        if not isinstance(self.n_local_crops, int) or self.n_local_crops < 0:
            raise ValueError(f"n_local_crops={self.n_local_crops} must be an integer >= 0")
        for name, top in (("global_scale", 1.0), ("local_scale", 1.0), ("ratio", float("inf")),
                          ("blur_sigma", float("inf"))):
            pair = tuple(getattr(self, name))
            if len(pair) != 2 or not 0 < pair[0] <= pair[1] <= top:
                raise ValueError(f"{name}={pair} must be (lo, hi) with 0 < lo <= hi <= {top}")
        for name, n in (("flip_p", 0), ("jitter_p", 0), ("grayscale_p", 0), ("blur_p", 3),
                        ("solarize_p", 3)):
            value = getattr(self, name)
            probs = tuple(value) if n else (value,)
            if len(probs) != max(n, 1) or not all(0 <= p <= 1 for p in probs):
                what = f"{n} probabilities (global 1, global 2, locals)" if n else "a probability"
                raise ValueError(f"{name}={value} must be {what} in [0, 1]")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue={self.hue} must be in [0, 0.5]")
        local = self.local_size if self.n_local_crops > 0 else self.global_size
        sizes = (self.global_size, self.global_size, local)
        blurred = [s for s, p in zip(sizes, self.blur_p, strict=True) if p > 0]
        half = blur_kernel_size(self.blur_sigma[1]) // 2
        if blurred and half >= min(blurred):
            raise ValueError(f"blur_sigma={self.blur_sigma} needs a {2 * half + 1}-px kernel, "
                             f"too large for {min(blurred)}-px crops")
        for name in ("mean", "std"):
            if len(getattr(self, name)) != 3:
                raise ValueError(f"{name}={getattr(self, name)} must have 3 values (R, G, B)")
        if not all(s > 0 for s in self.std):
            raise ValueError(f"std={self.std} must be positive")

    @property
    def n_crops(self) -> int:
        """2 global crops + n_local_crops."""
        return 2 + self.n_local_crops


def small_image_config(image_size: int = 32, n_local_crops: int = 6) -> MultiCropConfig:
    """Multi-crop for CIFAR-sized images: global crops keep the image size, local crops half it.

    Scales as in DINO; blur sigma shrinks with the image (0.1..2 px at 224 px becomes
    0.014..0.29 px at 32 px), so a blur removes the same fraction of detail.
    """
    if image_size < 2:
        raise ValueError(f"image_size={image_size} must be >= 2")
    shrink = image_size / 224
    return MultiCropConfig(global_size=image_size, local_size=image_size // 2,
                           n_local_crops=n_local_crops, blur_sigma=(0.1 * shrink, 2.0 * shrink))


# --------------------------------------------------------------------------- per image
class PerImageMultiCrop:
    """Reference multi-crop for one image with torchvision.transforms.v2.

    Call with a PIL image or a uint8 tensor (3, H, W); returns cfg.n_crops float32 tensors:
    2 global crops (3, global_size, global_size), then the local ones (3, local_size, local_size).
    """

    def __init__(self, cfg: MultiCropConfig = MultiCropConfig()) -> None:
        self.cfg = cfg
        g, s = cfg.global_size, cfg.global_scale
        self.global1 = self._view(g, s, cfg.blur_p[0], cfg.solarize_p[0])
        self.global2 = self._view(g, s, cfg.blur_p[1], cfg.solarize_p[1])
        self.local = self._view(cfg.local_size, cfg.local_scale, cfg.blur_p[2], cfg.solarize_p[2])

    def _view(self, size: int, scale: tuple[float, float], blur_p: float, solarize_p: float):
        cfg = self.cfg
        jitter = v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
        blur = v2.GaussianBlur(blur_kernel_size(cfg.blur_sigma[1]), sigma=cfg.blur_sigma)
        return v2.Compose([
            v2.RandomResizedCrop(size, scale=scale, ratio=cfg.ratio, antialias=True),  # bilinear
            v2.RandomHorizontalFlip(cfg.flip_p),
            v2.RandomApply([jitter], p=cfg.jitter_p),
            v2.RandomGrayscale(cfg.grayscale_p),
            v2.RandomApply([blur], p=blur_p),
            v2.RandomSolarize(threshold=128, p=solarize_p),  # on uint8 values 0..255
            v2.ToDtype(torch.float32, scale=True),  # 0..255 -> 0..1
            v2.Normalize(cfg.mean, cfg.std),
        ])

    def __call__(self, img: Image.Image | Tensor) -> list[Tensor]:
        if isinstance(img, Image.Image):
            img = v2.functional.pil_to_tensor(img.convert("RGB"))  # (3, H, W) uint8
        check_images(img, ranks=(3,), name="img")
        if img.dtype != torch.uint8:
            raise ValueError(f"img has dtype {img.dtype}: PerImageMultiCrop takes uint8")
        crops = [self.global1(img), self.global2(img)]
        return crops + [self.local(img) for _ in range(self.cfg.n_local_crops)]


def collate_crops(batch: list[tuple[list[Tensor], Any]]) -> tuple[list[Tensor], Tensor]:
    """DataLoader collate_fn: [(crops, label)] * B -> ([crop 0 (B, 3, S, S), ...], labels (B,))."""
    crops, labels = zip(*batch, strict=True)
    n_crops = len(crops[0])
    if any(len(c) != n_crops for c in crops):
        raise ValueError(f"batch: every sample needs the same number of crops, got "
                         f"{sorted({len(c) for c in crops})}")
    stacked = [torch.stack([c[i] for c in crops]) for i in range(n_crops)]  # each (B, 3, S, S)
    return stacked, default_collate(list(labels))


# --------------------------------------------------------------------------- batched
@dataclass
class CropParams:
    """Random decisions for C crops of one size on B images; each field has shape (C, B)."""

    size: int  # output side S
    boxes: Tensor  # (C, B, 4) long: top, left, height, width
    flip: Tensor  # (C, B) bool
    jitter: Tensor  # (C, B) bool: colour jitter applied; factors below are neutral where not
    brightness: Tensor  # (C, B) factor
    contrast: Tensor  # (C, B) factor
    saturation: Tensor  # (C, B) factor
    hue: Tensor  # (C, B) shift in turns
    grayscale: Tensor  # (C, B) bool
    blur: Tensor  # (C, B) bool
    sigma: Tensor  # (C, B) blur sigma in output pixels
    solarize: Tensor  # (C, B) bool

    def to(self, device: torch.device | str) -> CropParams:
        """The same decisions with every tensor on `device`."""
        move = lambda v: v.to(device) if isinstance(v, Tensor) else v  # size stays an int
        return CropParams(**{f.name: move(getattr(self, f.name)) for f in fields(self)})


class BatchedMultiCrop:
    """Multi-crop on a whole batch, on its device, with per-sample random parameters.

    Call with images (B, 3, H, W), uint8 or float in [0, 1]; returns cfg.n_crops float32 tensors
    on the same device: 2 of (B, 3, global_size, global_size), then (B, 3, local_size, local_size).
    Pass a torch.Generator on the images' device for reproducible crops.
    """

    def __init__(self, cfg: MultiCropConfig = MultiCropConfig()) -> None:
        self.cfg = cfg
        self.kernel_size = blur_kernel_size(cfg.blur_sigma[1])
        n = cfg.n_local_crops
        # crops of the same size are done together: (size, scale, blur_p and solarize_p per crop)
        self.groups = [(cfg.global_size, cfg.global_scale, cfg.blur_p[:2], cfg.solarize_p[:2])]
        if n > 0:
            self.groups.append((cfg.local_size, cfg.local_scale, cfg.blur_p[2:] * n,
                                cfg.solarize_p[2:] * n))

    def sample_params(self, batch_size: int, height: int, width: int,
                      generator: torch.Generator | None = None,
                      device: torch.device | str | None = None) -> list[CropParams]:
        """Draw every random decision: one CropParams for the global crops, one for the locals."""
        return [self._sample_group(*group, batch_size, height, width, generator, device)
                for group in self.groups]

    def _sample_group(self, size: int, scale: tuple[float, float], blur_p: tuple[float, ...],
                      solarize_p: tuple[float, ...], B: int, H: int, W: int,
                      generator: torch.Generator | None, device: Any) -> CropParams:
        cfg, C = self.cfg, len(blur_p)
        rand = lambda: torch.rand(C, B, generator=generator, device=device)  # (C, B) in [0, 1)
        per_crop = lambda p: device_constant(p, device).view(C, 1)  # (C, 1), made once
        jitter = rand() < cfg.jitter_p  # (C, B)

        def factor(strength: float) -> Tensor:  # ColorJitter: uniform in [max(0, 1-s), 1+s]
            lo = max(0.0, 1.0 - strength)
            return torch.where(jitter, lo + (1.0 + strength - lo) * rand(), 1.0)  # (C, B)

        boxes = sample_crop_boxes(C * B, H, W, scale, cfg.ratio, generator, device)  # (C*B, 4)
        lo, hi = cfg.blur_sigma
        # arguments run left to right: this order fixes which random draw feeds which field
        return CropParams(
            size=size, boxes=boxes.view(C, B, 4), flip=rand() < cfg.flip_p, jitter=jitter,
            brightness=factor(cfg.brightness), contrast=factor(cfg.contrast),
            saturation=factor(cfg.saturation),
            hue=torch.where(jitter, cfg.hue * (2.0 * rand() - 1.0), 0.0),
            grayscale=rand() < cfg.grayscale_p, blur=rand() < per_crop(blur_p),
            sigma=lo + (hi - lo) * rand(), solarize=rand() < per_crop(solarize_p),
        )

    def apply(self, images: Tensor, params: list[CropParams]) -> list[Tensor]:
        """Make the crops that params describe; images (B, 3, H, W) uint8 or float in [0, 1].

        Every op runs on every crop and is kept where its coin came up (torch.where): some
        wasted arithmetic, but no data-dependent shapes, so nothing makes the CPU wait for a GPU.
        """
        check_images(images, ranks=(4,))
        x = to_float(images)  # (B, 3, H, W) in [0, 1]
        crops = []
        for p in params:
            C, B = p.flip.shape
            if B != x.shape[0]:
                raise ValueError(f"params are for batch size {B}, images have {x.shape[0]}")
            y = resized_crop_batched(x, p.boxes, p.size, p.flip).flatten(0, 1)  # (C*B, 3, S, S)
            on = lambda mask: mask.reshape(-1, 1, 1, 1)  # (C, B) -> (C*B, 1, 1, 1)
            y = adjust_brightness(y, p.brightness.flatten())  # factors are 1 without jitter
            y = adjust_contrast(y, p.contrast.flatten())
            y = adjust_saturation(y, p.saturation.flatten())
            y = torch.where(on(p.jitter), adjust_hue(y, p.hue.flatten()), y)
            y = torch.where(on(p.grayscale), rgb_to_grayscale(y).expand_as(y), y)
            y = torch.where(on(p.blur), gaussian_blur(y, p.sigma.flatten(), self.kernel_size), y)
            y = torch.where(on(p.solarize), solarize(y), y)
            y = normalize(y, self.cfg.mean, self.cfg.std)  # (C*B, 3, S, S)
            crops.extend(y.view(C, B, *y.shape[1:]).unbind(0))
        return crops

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        check_images(images, ranks=(4,))
        if generator is not None and generator.device.type != images.device.type:
            raise ValueError(f"generator is on {generator.device}, images on {images.device}: "
                             "use a generator on the images' device")
        B, _, H, W = images.shape
        return self.apply(images, self.sample_params(B, H, W, generator, images.device))


# --------------------------------------------------------------------------- a run's crops
def crop_config(cfg: TrainConfig) -> MultiCropConfig:
    """The multi-crop of a run: DINO's recipe for small images (`small_image_config`, whose blur
    sigma is DINO's scaled to `global_size`), with the sizes, scales, blur and colour
    probabilities of `cfg`."""
    base = small_image_config(cfg.global_size, n_local_crops=cfg.n_local_crops)
    return replace(base, local_size=cfg.local_size, global_scale=cfg.global_scale,
                   local_scale=cfg.local_scale, blur_sigma=cfg.blur_sigma or base.blur_sigma,
                   blur_p=base.blur_p if cfg.blur else (0.0, 0.0, 0.0), jitter_p=cfg.jitter_p,
                   solarize_p=(0.0, cfg.solarize_p, 0.0))
