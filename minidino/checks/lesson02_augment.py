"""Checks for lesson 02 (multi-crop): a random-resized-crop box, and crop + resize of a batch.

Exercise 2.1 draws random boxes, so its check cannot compare numbers with a reference. It checks
what any correct RandomResizedCrop box must satisfy instead: inside the image, area fraction in
`scale`, aspect ratio in `ratio` (up to the rounding of the sides to whole pixels), the central
fallback when no box fits, the same box for the same seed, and a spread of sizes, shapes and
positions over many draws. Exercise 2.2 is deterministic and compared with minidino's batched path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from minidino.augment_batched import fallback_size, resized_crop_batched, sample_crop_boxes
from minidino.checks._core import expect, expect_close, fail, run_check

__all__ = ["sample_crop_box", "resized_crop"]

Box = tuple[int, int, int, int]
EX21 = "Exercise 2.1 (sample_crop_box)"
EX22 = "Exercise 2.2 (resized_crop)"


def reference_sample_crop_box(height: int, width: int, scale: tuple[float, float],
                              ratio: tuple[float, float], generator: torch.Generator) -> Box:
    """One RandomResizedCrop box (top, left, h, w) for an image of height x width pixels."""
    box = sample_crop_boxes(1, height, width, scale, ratio, generator)[0]  # (4,)
    top, left, h, w = (int(v) for v in box.tolist())
    return top, left, h, w


def reference_resized_crop(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    """images (B, 3, H, W) float, boxes (B, 4) long (top, left, h, w) -> (B, 3, size, size)."""
    return resized_crop_batched(images, boxes, size)  # (B, 3, size, size)


def _as_box(exercise: str, case: str, out: Any) -> Box:
    """The learner's box as four Python ints, or a failure that says what came back."""
    if isinstance(out, Tensor):
        out = out.flatten().tolist()
    if not isinstance(out, (tuple, list)) or len(out) != 4:
        fail(exercise, case, f"expected 4 numbers (top, left, h, w), got {out!r}")
    if not all(float(v) == int(v) for v in out):
        fail(exercise, case, f"the box {tuple(out)} has non-integer values",
             "round the sides with round(...) and draw top and left as whole pixels")
    top, left, h, w = (int(v) for v in out)
    return top, left, h, w


def _fallback(height: int, width: int, ratio: tuple[float, float]) -> Box:
    """The central box torchvision uses when no random attempt fits."""
    h, w = fallback_size(height, width, ratio)
    return (height - h) // 2, (width - w) // 2, h, w


def _inside(case: str, box: Box, height: int, width: int) -> None:
    top, left, h, w = box
    expect(EX21, case, h >= 1 and w >= 1, f"box {box} has an empty side",
           "a crop needs at least one pixel each way: keep only attempts with 0 < w <= width "
           "and 0 < h <= height")
    expect(EX21, case, top >= 0 and left >= 0 and top + h <= height and left + w <= width,
           f"box {box} (top, left, h, w) leaves the {height} x {width} image",
           "draw top uniformly among the height - h + 1 positions that keep the box inside "
           "(and left among width - w + 1); check h against the height and w against the width")


def _in_range(case: str, box: Box, height: int, width: int, scale: tuple[float, float],
              ratio: tuple[float, float]) -> None:
    """Area fraction and aspect ratio allowed, given that each side was rounded by <= 0.5 px."""
    _, _, h, w = box
    area = height * width
    lo_area, hi_area = (w - 0.5) * (h - 0.5), (w + 0.5) * (h + 0.5)  # the area before rounding
    expect(EX21, case, hi_area >= scale[0] * area - 1e-6 and lo_area <= scale[1] * area + 1e-6,
           f"box {box} covers {w * h / area:.3f} of the image; scale={scale} allows "
           f"{scale[0]:.3f}..{scale[1]:.3f}",
           "scale is a fraction of the image's AREA: target_area = height * width * "
           "uniform(scale); the sides are sqrt(target_area * aspect) and "
           "sqrt(target_area / aspect), not scale times the side length")
    lo_ratio, hi_ratio = (w - 0.5) / (h + 0.5), (w + 0.5) / max(h - 0.5, 1e-9)
    expect(EX21, case, hi_ratio >= ratio[0] - 1e-6 and lo_ratio <= ratio[1] + 1e-6,
           f"box {box} has aspect ratio w / h = {w / h:.3f}, outside ratio={ratio}",
           "draw the aspect ratio (width / height) log-uniformly: "
           "exp(uniform(log ratio[0], log ratio[1])); w = sqrt(area * aspect), "
           "h = sqrt(area / aspect)")


def _box_trials(fn: Callable[..., Any]) -> int:
    n_cases = 0
    # determinism: two generators with the same seed give the same boxes
    for seed in (0, 1):
        args = (48, 64, (0.08, 1.0), (3 / 4, 4 / 3))
        a = _as_box(EX21, "determinism", fn(*args, torch.Generator().manual_seed(seed)))
        b = _as_box(EX21, "determinism", fn(*args, torch.Generator().manual_seed(seed)))
        expect(EX21, f"two generators seeded with {seed}", a == b,
               f"the same seed gave two different boxes, {a} and {b}",
               "draw every random number from `generator` (torch.rand(..., generator=generator)), "
               "not from torch's global random state or Python's random module")
        n_cases += 1

    # edge cases with one right answer
    edge_cases = [
        ("a square image, scale (1, 1), ratio (1, 1)", (32, 32, (1.0, 1.0), (1.0, 1.0)),
         (0, 0, 32, 32)),
        ("a 1 x 1 image", (1, 1, (0.05, 0.4), (3 / 4, 4 / 3)), (0, 0, 1, 1)),
        ("a wide 20 x 50 image, scale (1, 1): no attempt fits", (20, 50, (1.0, 1.0),
                                                                 (3 / 4, 4 / 3)),
         _fallback(20, 50, (3 / 4, 4 / 3))),
        ("a tall 60 x 12 image, scale (1, 1): no attempt fits", (60, 12, (1.0, 1.0),
                                                                 (3 / 4, 4 / 3)),
         _fallback(60, 12, (3 / 4, 4 / 3))),
    ]
    for case, args, want in edge_cases:
        box = _as_box(EX21, case, fn(*args, torch.Generator().manual_seed(3)))
        _inside(case, box, args[0], args[1])
        expect(EX21, case, box == want, f"got box {box}, expected {want}",
               "after 10 attempts that do not fit, fall back to the central crop: the whole "
               "image, trimmed to the nearest allowed aspect ratio, placed at "
               "((height - h) // 2, (width - w) // 2)")
        n_cases += 1

    # many draws: every box valid, and sizes, shapes and positions spread out
    for height, width, scale in ((64, 96, (0.05, 0.4)), (64, 64, (0.4, 1.0)),
                                 (96, 72, (0.14, 0.14))):
        ratio = (3 / 4, 4 / 3)
        g = torch.Generator().manual_seed(height + width)
        case = f"300 boxes on a {height} x {width} image, scale={scale}"
        fallback = _fallback(height, width, ratio)
        boxes = [_as_box(EX21, case, fn(height, width, scale, ratio, g)) for _ in range(300)]
        drawn = []
        for box in boxes:
            _inside(case, box, height, width)
            if box != fallback:
                _in_range(case, box, height, width, scale, ratio)
                drawn.append(box)
        expect(EX21, case, len(drawn) >= 200,
               f"{300 - len(drawn)} of 300 boxes were the central fallback box {fallback}",
               "use the fallback only when none of the 10 attempts fits inside the image")
        fractions = torch.tensor([h * w / (height * width) for _, _, h, w in drawn])
        aspects = torch.tensor([math.log(w / h) for _, _, h, w in drawn])
        span = scale[1] - scale[0]
        if span > 0:
            expect(EX21, case, fractions.min() < scale[0] + 0.2 * span
                   and fractions.max() > scale[1] - 0.3 * span,
                   f"area fractions only span {fractions.min():.3f}..{fractions.max():.3f} of "
                   f"scale={scale}",
                   "draw the area fraction uniformly over the whole scale range")
        wide = (aspects > 0.02).float().mean().item()
        tall = (aspects < -0.02).float().mean().item()
        expect(EX21, case, wide > 0.2 and tall > 0.2,
               f"{wide:.0%} of the boxes are wider than tall and {tall:.0%} taller than wide",
               "draw a new aspect ratio for every box, log-uniform in ratio, so that wide and "
               "tall boxes are about equally likely")
        rows = {2 * top + h for top, _, h, _ in drawn}  # twice the box centre, in pixels
        cols = {2 * left + w for _, left, _, w in drawn}
        expect(EX21, case, len(rows) > 3 and len(cols) > 3,
               f"the box centres sit at only {len(rows)} rows and {len(cols)} columns",
               "place each box uniformly at random: top = randint(0, height - h + 1), "
               "left = randint(0, width - w + 1)")
        n_cases += 1
    return n_cases


def sample_crop_box(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check Exercise 2.1: fn(height, width, scale, ratio, generator) -> (top, left, h, w)."""
    return run_check(EX21, fn, reference_sample_crop_box, _box_trials)


def _crop_trials(fn: Callable[..., Tensor]) -> int:
    g = torch.Generator().manual_seed(0)
    cases = []
    for B, H, W, size in ((4, 32, 32, 16), (3, 24, 40, 20), (2, 48, 30, 36)):
        images = torch.rand(B, 3, H, W, generator=g)  # (B, 3, H, W)
        boxes = sample_crop_boxes(B, H, W, (0.1, 0.9), (0.5, 2.0), g)  # (B, 4)
        cases.append((f"{B} images {H} x {W}, random boxes, size {size}", images, boxes, size))
    images = torch.rand(2, 3, 20, 36, generator=g)  # (2, 3, 20, 36)
    boxes = torch.tensor([[2, 5, 8, 24], [0, 0, 20, 36]])  # a wide box, and the whole image
    cases.append(("wide boxes (h != w) on a 20 x 36 image, size 12", images, boxes, 12))
    boxes = torch.tensor([[3, 1, 16, 6], [4, 30, 10, 6]])  # tall boxes, one at the right edge
    cases.append(("tall boxes (h != w) on a 20 x 36 image, size 10", images, boxes, 10))
    boxes = torch.tensor([[5, 7, 4, 4], [0, 0, 1, 1]])  # enlarge 4 x 4 and a single pixel
    cases.append(("tiny boxes enlarged to size 8", images, boxes, 8))

    for case, images, boxes, size in cases:
        out = fn(images.clone(), boxes.clone(), size)
        expect_close(EX22, case, out, reference_resized_crop(images, boxes, size),
                     "a box is (top, left, h, w): rows top:top + h (the y axis, dim -2) and "
                     "columns left:left + w (the x axis, dim -1); then resize the crop to "
                     "(size, size) with bilinear interpolation and antialias=True",
                     atol=1e-4, rtol=1e-4)
    return len(cases)


def resized_crop(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Check Exercise 2.2: fn(images (B, 3, H, W), boxes (B, 4), size) -> (B, 3, size, size)."""
    return run_check(EX22, fn, reference_resized_crop, _crop_trials)
