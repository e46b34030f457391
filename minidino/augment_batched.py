"""Batched image operations with one random parameter per sample.

Why: DINO makes 2 + n_local_crops views of every image, each with its own random crop and
colours. Done one image at a time (PIL or torchvision on a CPU worker) this is the slowest
part of training on small images. Every operation below instead takes a whole batch
(B, 3, H, W) of float images in [0, 1] together with one parameter per sample, shape (B,),
and is a handful of tensor operations, so the same code runs on a CPU, CUDA or MPS.

Each function follows the definition of its torchvision counterpart
(`torchvision.transforms.v2.functional`), so that the batched pipeline in `augment.py` makes
the same crops and colours as the per-image one; `tests/test_augment.py` checks this.

How:
- crop + resize is a linear map. Each output row is a weighted average of input rows, so the
  whole operation is `out = Wy @ image @ Wx.T` with per-sample (S, H) and (S, W) weight
  matrices. We build the weights of torch's antialiased bilinear resize (a triangle filter that
  widens when shrinking) restricted to the crop box; a horizontal flip just reverses Wx.
- colour ops are per-sample arithmetic with factors broadcast as (B, 1, 1, 1).
- blur is separable: a 1-D Gaussian along x, then along y, as depthwise convolutions with
  one kernel per sample.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- input


def check_images(images: Any, ranks: tuple[int, ...], name: str = "images") -> None:
    """Raise ValueError naming `name` unless images is a uint8/float tensor of a given rank."""
    if not isinstance(images, Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(images).__name__}")
    if images.ndim not in ranks or images.shape[-3] != 3:
        raise ValueError(f"{name} of shape {tuple(images.shape)} must be "
                         + " or ".join({3: "(3, H, W)", 4: "(B, 3, H, W)"}[r] for r in ranks))
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ValueError(f"{name} has dtype {images.dtype}: allowed are uint8 or float in [0, 1]")


def device_constant(values: Sequence[float], device: torch.device | str | None) -> Tensor:
    """`torch.tensor(values)` (floats, torch's default dtype) on `device`, made once per
    (values, device, dtype) and then shared by every caller: read it, never change it in place.

    Why: torch.tensor copies Python numbers from host memory to the device, and on CUDA such a
    copy makes the CPU wait for the work queued on the GPU. The batched crops need a few small
    constants at every step (normalisation's mean and std, the probabilities of each crop); made
    once, they cost no copy after the first step. device None (torch's default device) is not
    cached.
    """
    values, dtype = tuple(float(v) for v in values), torch.get_default_dtype()
    if device is None:
        return torch.tensor(values, dtype=dtype)
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # "cuda" is the current GPU
        device = torch.device("cuda", torch.cuda.current_device())
    return _device_constant(values, device, dtype)


@functools.lru_cache(maxsize=64)
def _device_constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype
                     ) -> Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


def to_float(images: Tensor) -> Tensor:
    """uint8 0..255 -> float32 0..1; float input is taken to be in [0, 1] already."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def normalize(images: Tensor, mean: tuple[float, ...] = IMAGENET_MEAN,
              std: tuple[float, ...] = IMAGENET_STD) -> Tensor:
    """(B, 3, H, W) or (3, H, W), uint8 or float in [0, 1] -> float32 (x - mean) / std."""
    check_images(images, ranks=(3, 4))
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean={mean}, std={std}: need 3 values each, std > 0")
    m = device_constant(mean, images.device).view(3, 1, 1)  # (3, 1, 1), made once per device
    s = device_constant(std, images.device).view(3, 1, 1)  # (3, 1, 1)
    return (to_float(images) - m) / s  # same shape as images


# --------------------------------------------------------------------------- geometry


def fallback_size(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """(h, w) of RandomResizedCrop's fallback: the whole image trimmed to the nearest allowed
    aspect ratio (it is placed in the centre)."""
    if width / height < ratio[0]:
        return round(width / ratio[0]), width
    if width / height > ratio[1]:
        return height, round(height * ratio[1])
    return height, width


def sample_crop_boxes(
    batch_size: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    attempts: int = 10,
) -> Tensor:
    """Draw one RandomResizedCrop box per sample, vectorised: returns (B, 4) long (top, left, h, w).

    torchvision's rule: try `attempts` times an area fraction uniform in `scale` and an aspect
    ratio log-uniform in `ratio`; keep the first box that fits, placed uniformly at random.
    If none fits, fall back to the central crop clipped to the allowed aspect ratios.
    Here all attempts of all samples are drawn at once and the first fitting one is picked.
    """
    if batch_size < 0 or height <= 0 or width <= 0:
        raise ValueError(f"batch_size={batch_size}, height={height}, width={width}: need >= 0, > 0")
    u = torch.rand(batch_size, attempts, 2, generator=generator, device=device)  # (B, A, 2)
    target_area = height * width * (scale[0] + (scale[1] - scale[0]) * u[..., 0])  # (B, A)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])  # (B, A) width / height
    w = torch.round(torch.sqrt(target_area * aspect))  # (B, A)
    h = torch.round(torch.sqrt(target_area / aspect))  # (B, A)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # (B, A)
    first = fits.int().argmax(dim=1, keepdim=True)  # (B, 1) first fitting attempt (0 if none)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)  # (B,), (B,)
    found = fits.any(dim=1)  # (B,)

    fallback_h, fallback_w = fallback_size(height, width, ratio)
    w = torch.where(found, w, torch.full_like(w, fallback_w))  # (B,)
    h = torch.where(found, h, torch.full_like(h, fallback_h))  # (B,)

    u_pos = torch.rand(batch_size, 2, generator=generator, device=device)  # (B, 2)
    top = torch.where(found, torch.floor(u_pos[:, 0] * (height - h + 1)), (height - h) // 2)
    left = torch.where(found, torch.floor(u_pos[:, 1] * (width - w + 1)), (width - w) // 2)
    return torch.stack([top, left, h, w], dim=1).long()  # (B, 4)


def resize_weights(start: Tensor, length: Tensor, in_size: int, out_size: int) -> Tensor:
    """Weights (..., out_size, in_size) mapping pixels [start, start + length) to out_size pixels.

    They reproduce torch's bilinear resize with antialias=True: output pixel i sits at input
    coordinate c_i = start + (i + 0.5) * scale with scale = length / out_size; input pixel j
    (centre j + 0.5) gets weight max(0, 1 - |j + 0.5 - c_i| / support), support = max(scale, 1),
    counting only pixels inside the box, and each row is normalised to sum to 1.
    """
    start, length = start.float(), length.float()  # (...,)
    scale = length / out_size  # (...,) input pixels per output pixel
    support = scale.clamp_min(1.0)  # (...,) a shrink averages over more input pixels
    out_pos = torch.arange(out_size, device=start.device) + 0.5  # (S,)
    in_pos = torch.arange(in_size, device=start.device) + 0.5  # (H,)
    centre = start[..., None] + scale[..., None] * out_pos  # (..., S)
    dist = (in_pos - centre[..., None]).abs() / support[..., None, None]  # (..., S, H)
    inside = (in_pos >= start[..., None]) & (in_pos < (start + length)[..., None])  # (..., H)
    weights = (1.0 - dist).clamp_min(0.0) * inside[..., None, :]  # (..., S, H)
    return weights / weights.sum(dim=-1, keepdim=True)  # (..., S, H)


def resized_crop_batched(
    images: Tensor, boxes: Tensor, size: int, flip: Tensor | None = None
) -> Tensor:
    """Crop every image to its box and resize it to (size, size), optionally flipped.

    images: (B, 3, H, W) float. boxes: (B, 4) or (C, B, 4) long (top, left, height, width),
    C crops per image done in one go. flip: bool of shape boxes.shape[:-1], mirror left-right.
    Returns (B, 3, size, size) or (C, B, 3, size, size); matches torchvision's
    `resized_crop(..., interpolation=BILINEAR, antialias=True)` up to float rounding.
    """
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float (B, 3, H, W) tensor, got {images.dtype} "
                         f"of shape {tuple(images.shape)}")
    if boxes.shape[-1] != 4 or boxes.shape[-2] != images.shape[0]:
        raise ValueError(f"boxes shape {tuple(boxes.shape)} must be (..., B={images.shape[0]}, 4)")
    _, _, H, W = images.shape
    top, left, h, w = boxes.unbind(-1)  # each (..., B)
    wy = resize_weights(top, h, H, size)  # (..., B, S, H)
    wx = resize_weights(left, w, W, size)  # (..., B, S, W)
    if flip is not None:
        wx = torch.where(flip[..., None, None], wx.flip(-2), wx)  # mirror the output columns
    rows = torch.einsum("...bsh,bchw->...bcsw", wy, images)  # (..., B, 3, S, W)
    return torch.einsum("...bcsw,...btw->...bcst", rows, wx)  # (..., B, 3, S, S)


# --------------------------------------------------------------------------- colour


def _per_sample(value: Tensor) -> Tensor:
    return value.reshape(-1, 1, 1, 1)  # (B,) -> (B, 1, 1, 1), broadcasts over (3, H, W)


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """Luma (B, 1, H, W) of RGB images (B, 3, H, W)."""
    r, g, b = x.unbind(1)  # each (B, H, W)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """factor * x + (1 - factor) * other, clamped to [0, 1]; factor (B,) is one number per image."""
    return torch.lerp(other, x, _per_sample(factor)).clamp_(0.0, 1.0)  # (B, 3, H, W)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """Scale intensities by factor (B,): blend with black."""
    return (x * _per_sample(factor)).clamp_(0.0, 1.0)  # (B, 3, H, W)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the image's mean grey level (one number per image) by factor (B,)."""
    mean = rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return _blend(x, mean.expand_as(x), factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the grey version of the image by factor (B,)."""
    return _blend(x, rgb_to_grayscale(x).expand_as(x), factor)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue by shift (B,) in [-0.5, 0.5] turns of the colour circle, as in HSV space.

    A hue rotation keeps each pixel's largest channel (HSV's value) and its chroma (largest minus
    smallest channel); only where the colour sits on the circle changes. So we compute the hue
    in sixths of the circle (0 red, 2 green, 4 blue), add 6 * shift, and rebuild every channel
    as max - chroma * ramp: ramp_n = clamp(min(k, 4 - k), 0, 1) with k = (hue6 + n) mod 6 and
    n = 5, 3, 1 for R, G, B (a closed form of the usual six-sector HSV -> RGB table).
    """
    r, g, b = x.unbind(1)  # each (B, H, W)
    high = torch.maximum(torch.maximum(r, g), b)  # (B, H, W) largest channel
    low = torch.minimum(torch.minimum(r, g), b)  # (B, H, W) smallest channel
    chroma = high - low  # (B, H, W)
    is_r = high == r  # red wins ties, then green (as torchvision)
    is_g = (high == g) & ~is_r
    numerator = torch.where(is_r, g - b, torch.where(is_g, b - r, r - g))  # (B, H, W)
    sector = torch.where(is_r, 0.0, torch.where(is_g, 2.0, 4.0))  # (B, H, W)
    # greys (chroma 0) have no hue; any value works since chroma * ramp is then 0
    hue6 = numerator / torch.where(chroma > 0, chroma, 1.0) + sector + 6.0 * shift.view(-1, 1, 1)
    n = device_constant((5.0, 3.0, 1.0), x.device).view(1, 3, 1, 1)  # (1, 3, 1, 1)
    k = (hue6.unsqueeze(1) + n).remainder_(6.0)  # (B, 3, H, W)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)  # (B, 3, H, W)
    return ramp.mul_(chroma.unsqueeze(1)).neg_().add_(high.unsqueeze(1))  # max - chroma * ramp


def solarize(x: Tensor, threshold: float = 128 / 255) -> Tensor:
    """Invert every pixel value at or above threshold (128 on the 0..255 scale)."""
    return torch.where(x >= threshold, 1.0 - x, x)  # (B, 3, H, W)


# --------------------------------------------------------------------------- blur


def blur_kernel_size(sigma_max: float) -> int:
    """Odd kernel size that holds +-3 sigma of the widest Gaussian: 2 * ceil(3 * sigma_max) + 1."""
    return 2 * math.ceil(3.0 * sigma_max) + 1


def gaussian_kernels(sigma: Tensor, kernel_size: int) -> Tensor:
    """Normalised 1-D Gaussian weights (B, K) at integer offsets -K//2..K//2, one sigma per row."""
    offsets = torch.arange(kernel_size, device=sigma.device) - kernel_size // 2  # (K,)
    logits = -0.5 * (offsets / sigma[:, None]) ** 2  # (B, K)
    return torch.softmax(logits, dim=1)  # (B, K), exp(logits) / sum


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Blur every image (B, 3, H, W) with its own sigma (B,), reflect padding like torchvision.

    The 2-D Gaussian is separable, so we blur rows then columns. Each pass is a depthwise
    convolution: the batch and channels are folded into B * 3 groups with one kernel each.
    """
    B, C, H, W = x.shape
    pad = kernel_size // 2
    if pad >= min(H, W):
        raise ValueError(f"kernel_size={kernel_size} too large for images of {(H, W)}")
    if B == 0:
        return x
    weights = gaussian_kernels(sigma, kernel_size).repeat_interleave(C, dim=0)  # (B*3, K)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect").reshape(1, B * C, H + 2 * pad, -1)
    rows = F.conv2d(padded, weights.view(B * C, 1, 1, kernel_size), groups=B * C)  # along x
    out = F.conv2d(rows, weights.view(B * C, 1, kernel_size, 1), groups=B * C)  # along y
    return out.view(B, C, H, W)
