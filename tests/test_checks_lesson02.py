"""The lesson 02 checks accept correct answers and reject the mistakes the lesson warns about."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from minidino import checks
from minidino.checks import CheckFailed
from minidino.checks.lesson02_augment import reference_resized_crop, reference_sample_crop_box

Box = tuple[int, int, int, int]


def make_box_sampler(area_of_side: bool = False, top_range: int = 1, use_generator: bool = True,
                     fallback: bool = True, fixed_aspect: bool = False,
                     centred: bool = False, swap_xy: bool = False) -> Callable[..., Box]:
    """A torchvision-style box sampler; each flag switches on one typical mistake."""

    def sample(height: int, width: int, scale: tuple[float, float],
               ratio: tuple[float, float], generator: torch.Generator) -> Box:
        g = generator if use_generator else None
        area = height * width
        for _ in range(10):
            s = scale[0] + (scale[1] - scale[0]) * torch.rand(1, generator=g).item()
            log_r = math.log(ratio[0]) + (math.log(ratio[1] / ratio[0])
                                          * torch.rand(1, generator=g).item())
            aspect = 1.0 if fixed_aspect else math.exp(log_r)
            target = s * s * area if area_of_side else s * area  # the side-length mistake
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                if centred:
                    return (height - h) // 2, (width - w) // 2, h, w
                # top_range=1 is right; a larger value lets boxes run past the bottom edge
                rows, cols = (width, height) if swap_xy else (height, width)
                top = int(torch.randint(0, rows - h + top_range, (1,), generator=g))
                left = int(torch.randint(0, cols - w + top_range, (1,), generator=g))
                return top, left, h, w
        if not fallback:
            return 0, 0, height, width
        if width / height < ratio[0]:
            w, h = width, round(width / ratio[0])
        elif width / height > ratio[1]:
            w, h = round(height * ratio[1]), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    return sample


def stub(*args: object) -> None:
    raise NotImplementedError("Exercise: not done yet")


# ------------------------------------------------------------------ Exercise 2.1
def test_sample_crop_box_reference_passes() -> None:
    assert checks.sample_crop_box(reference_sample_crop_box) is reference_sample_crop_box


def test_sample_crop_box_a_correct_rewrite_passes() -> None:
    right = make_box_sampler()
    assert checks.sample_crop_box(right) is right


def test_sample_crop_box_stub_falls_back_to_the_reference() -> None:
    assert checks.sample_crop_box(stub) is reference_sample_crop_box


@pytest.mark.parametrize("mistake", [
    {"area_of_side": True},  # scale applied to the side length instead of the area
    {"top_range": 8},  # boxes that leave the image
    {"use_generator": False},  # ignores the generator: not reproducible
    {"fallback": False},  # no central fallback with the allowed aspect ratio
    {"fixed_aspect": True},  # always square boxes
    {"centred": True},  # never a random position
    {"swap_xy": True},  # top drawn along the width, left along the height
])
def test_sample_crop_box_mistakes_are_rejected(mistake: dict) -> None:
    with pytest.raises(CheckFailed):
        checks.sample_crop_box(make_box_sampler(**mistake))


# ------------------------------------------------------------------ Exercise 2.2
def torchvision_resized_crop(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    crops = [TF.resized_crop(img, *box.tolist(), [size, size], antialias=True)
             for img, box in zip(images, boxes, strict=True)]  # each (3, size, size)
    return torch.stack(crops)  # (B, 3, size, size)


def interpolate_resized_crop(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    crops = []
    for img, (top, left, h, w) in zip(images, boxes.tolist(), strict=True):
        crop = img[None, :, top:top + h, left:left + w]  # (1, 3, h, w)
        crops.append(F.interpolate(crop, size=(size, size), mode="bilinear",
                                   align_corners=False, antialias=True))
    return torch.cat(crops)  # (B, 3, size, size)


@pytest.mark.parametrize("right", [reference_resized_crop, torchvision_resized_crop,
                                   interpolate_resized_crop])
def test_resized_crop_correct_versions_pass(right: Callable[..., Tensor]) -> None:
    assert checks.resized_crop(right) is right


def test_resized_crop_stub_falls_back_to_the_reference() -> None:
    assert checks.resized_crop(stub) is reference_resized_crop


def swapped_xy(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    crops = []
    for img, (top, left, h, w) in zip(images, boxes.tolist(), strict=True):
        crops.append(TF.resized_crop(img, left, top, w, h, [size, size], antialias=True))
    return torch.stack(crops)


def no_crop(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)


def off_by_one(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    crops = []
    for img, (top, left, h, w) in zip(images, boxes.tolist(), strict=True):
        crop = img[None, :, top:top + h - 1, left:left + w - 1] if h > 1 and w > 1 else img[None]
        crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True))
    return torch.cat(crops)


def nearest(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    crops = []
    for img, (top, left, h, w) in zip(images, boxes.tolist(), strict=True):
        crop = img[None, :, top:top + h, left:left + w]
        crops.append(F.interpolate(crop, size=(size, size), mode="nearest"))
    return torch.cat(crops)


@pytest.mark.parametrize("wrong", [swapped_xy, no_crop, off_by_one, nearest])
def test_resized_crop_mistakes_are_rejected(wrong: Callable[..., Tensor]) -> None:
    with pytest.raises(CheckFailed):
        checks.resized_crop(wrong)
