"""The built-in shapes dataset: determinism, balance, masks, geometry, and no shortcuts."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minidino.shapes import (
    SHAPE_CLASSES,
    SHAPE_SDF,
    SHAPES_STYLES,
    ShapesDataset,
    ShapesStyle,
    make_shapes,
)

C = len(SHAPE_CLASSES)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Drawing is many small element-wise ops: one thread is fastest on a busy shared CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------- basic contract
@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
@pytest.mark.parametrize("image_size", [32, 64])
def test_types_shapes_and_ranges(difficulty: str, image_size: int) -> None:
    images, labels, masks = make_shapes(40, image_size, difficulty, seed=3)
    assert images.shape == (40, 3, image_size, image_size) and images.dtype == torch.uint8
    assert labels.shape == (40,) and labels.dtype == torch.int64
    assert masks.shape == (40, image_size, image_size) and masks.dtype == torch.bool
    assert labels.min() >= 0 and labels.max() < C
    assert masks.flatten(1).any(1).all(), "every image has a non-empty mask"
    assert (~masks).flatten(1).any(1).all(), "every image has some background"
    # images use a real range of values (not blank, not saturated to one value)
    assert images.float().flatten(1).std(1).min() > 10


def test_same_seed_same_bytes_other_seed_differs() -> None:
    a = make_shapes(30, seed=7)
    b = make_shapes(30, seed=7)
    c = make_shapes(30, seed=8)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], c[0])


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 95), seed=st.integers(0, 10_000))
def test_labels_are_balanced(n: int, seed: int) -> None:
    _, labels, _ = make_shapes(n, seed=seed)
    counts = torch.bincount(labels, minlength=C)
    assert counts.sum() == n
    assert counts.max() - counts.min() <= 1  # n // C or n // C + 1 of each class


def test_dataset_splits_defaults_and_items() -> None:
    train, test = ShapesDataset("train"), ShapesDataset("test")
    assert len(train) == 10_000 and len(test) == 2_000
    assert torch.bincount(train.labels, minlength=C).tolist() == [1000] * C
    assert train.classes == list(SHAPE_CLASSES)
    # no image appears in both splits
    train_keys = {bytes(im.numpy()) for im in train.images}
    assert not any(bytes(im.numpy()) in train_keys for im in test.images)
    image, label = train[5]
    assert torch.equal(image, train.images[5]) and label == int(train.labels[5])
    assert isinstance(label, int)


def test_dataset_transform_and_pil() -> None:
    ds = ShapesDataset("test", n_images=4, as_pil=True, transform=lambda im: im.size)
    size, _ = ds[0]
    assert size == (32, 32)  # the transform received a PIL image
    ds64 = ShapesDataset("train", n_images=4, image_size=64)
    assert ds64[0][0].shape == (3, 64, 64) and ds64.masks.shape == (4, 64, 64)


def test_seed_changes_dataset() -> None:
    a = ShapesDataset("train", n_images=10, seed=0).images
    b = ShapesDataset("train", n_images=10, seed=1).images
    assert not torch.equal(a, b)


# ---------------------------------------------------------------- masks agree with pixels
def test_mask_marks_the_shape_pixels_easy() -> None:
    images, _, masks = make_shapes(200, 32, "easy", seed=1)
    grey = images.float().mean(1)  # (n, H, W)
    inside = (grey * masks).sum((1, 2)) / masks.sum((1, 2))
    outside = (grey * ~masks).sum((1, 2)) / (~masks).sum((1, 2))
    # easy: brightness gap 0.5 +- 0.05 of the range between shape and background, blurred per
    # image by the noise (the blotches do not average out over one shape) and a little clipping
    gap = (inside - outside).abs() / 255
    assert gap.min() > 0.2, gap.min()
    assert abs(gap.mean() - 0.5) < 0.05, gap.mean()


@pytest.mark.parametrize("polarity, light_shapes", [("light", 1.0), ("dark", 0.0),
                                                     ("random", 0.5)])
def test_polarity(polarity: str, light_shapes: float) -> None:
    images, _, masks = make_shapes(400, 32, replace(SHAPES_STYLES["easy"], polarity=polarity),
                                   seed=9)
    grey = images.float().mean(1)  # (n, H, W)
    inside = (grey * masks).sum((1, 2)) / masks.sum((1, 2))
    outside = (grey * ~masks).sum((1, 2)) / (~masks).sum((1, 2))
    fraction = (inside > outside).float().mean().item()
    assert abs(fraction - light_shapes) < 0.1  # 400 coin flips: std 0.025


def test_mask_is_exactly_the_pixels_past_half_coverage() -> None:
    """Noise-free: a pixel is on the shape's side of the mid grey iff its centre is inside."""
    style = replace(SHAPES_STYLES["easy"], pixel_noise=0.0, blotch_noise=0.0,
                    contrast_jitter=0.0, brightness_jitter=0.0)
    images, _, masks = make_shapes(100, 32, style, seed=2)
    grey = images.float().mean(1)  # (n, H, W), background 63.75 or 191.25, shape the other
    light_shape = (grey * masks).sum((1, 2)) / masks.sum((1, 2)) > 127.5  # (n,)
    brighter = grey > 127.5
    on_edge = (grey - 127.5).abs() < 1  # coverage within 1/255 of one half: either side
    agree = (brighter == (masks == light_shape[:, None, None])) | on_edge
    assert agree.all()
    # away from edges, pixels are the two pure levels
    levels = torch.tensor([64.0, 191.0])
    far = (grey[:, None] - levels[None, :, None, None]).abs().amin(1) < 1
    assert far.float().mean() > 0.8


# ---------------------------------------------------------------- geometry
def _fixed(size: float) -> ShapesStyle:
    return replace(SHAPES_STYLES["easy"], size_range=(size, size), pixel_noise=0.0,
                   blotch_noise=0.0)


@pytest.mark.parametrize("name, area_in_unit_radius", [
    ("circle", math.pi),
    ("triangle", 3 * math.sqrt(3) / 4),  # regular triangle in a circle of radius 1
    ("hexagon", 3 * math.sqrt(3) / 2),  # regular hexagon in a circle of radius 1
])
def test_size_is_the_diameter_as_a_fraction_of_the_side(name: str,
                                                        area_in_unit_radius: float) -> None:
    size, image_size = 0.8, 64
    images, labels, masks = make_shapes(100, image_size, _fixed(size), seed=4)
    radius_px = size * image_size / 2
    areas = masks[labels == SHAPE_CLASSES.index(name)].sum((1, 2)).float()
    expected = area_in_unit_radius * radius_px**2
    assert torch.allclose(areas, torch.full_like(areas, expected), rtol=0.03)


def test_edges_are_antialiased_over_one_pixel() -> None:
    """Coverage = the fraction of a pixel inside the shape: the partly covered pixels form a band
    one pixel wide along the edge (about 2 pi R of them for a circle), and the coverage summed
    over the image is the circle's area pi R^2."""
    style = replace(_fixed(0.8), contrast_jitter=0.0, brightness_jitter=0.0)
    images, labels, _ = make_shapes(60, 64, style, seed=6)
    grey = images[labels == SHAPE_CLASSES.index("circle")].float().mean(1)  # (k, H, W)
    dark_shape = (grey[:, 0, 0] > 127.5)[:, None, None]  # a corner is always background
    coverage = (grey - 63.75) / 127.5  # 0 on a dark background, 1 on a light shape
    coverage = torch.where(dark_shape, 1 - coverage, coverage).clamp(0, 1)
    radius_px = 0.8 * 64 / 2
    partial = ((coverage > 0.02) & (coverage < 0.98)).sum((1, 2)).float()
    assert torch.allclose(partial, torch.full_like(partial, 2 * math.pi * radius_px), rtol=0.15)
    area = coverage.sum((1, 2))
    assert torch.allclose(area, torch.full_like(area, math.pi * radius_px**2), rtol=0.01)


@pytest.mark.parametrize("name", SHAPE_CLASSES)
def test_every_shape_fits_the_unit_disk_and_covers_its_centre_region(name: str) -> None:
    angle = torch.linspace(0, 2 * math.pi, 721)
    for r in (1.001, 1.2):
        d = SHAPE_SDF[name](r * torch.cos(angle), r * torch.sin(angle))
        assert (d > 0).all(), f"{name} pokes out of the unit disk"
    # a shape of diameter `size` spans most of it: some point at radius 0.9 is inside
    d = SHAPE_SDF[name](0.9 * torch.cos(angle), 0.9 * torch.sin(angle))
    assert (d < 0).any()


def test_unrotated_shapes_are_drawn_upright() -> None:
    """rotate=False: the arrow points right (+x), and its head is to the right of its tail."""
    style = replace(_fixed(0.9), rotate=False)
    images, labels, masks = make_shapes(50, 64, style, seed=5)
    arrows = masks[labels == SHAPE_CLASSES.index("arrow")].float()  # (k, H, W)
    column_height = arrows.sum(1)  # (k, W): tall where the head is
    width = arrows.shape[-1]
    assert (column_height[:, width // 2:].amax(1) > 2 * column_height[:, : width // 2].amax(1)
            ).all()


# ---------------------------------------------------------------- no shortcut to the class
def _nearest_centroid_accuracy(train_x: torch.Tensor, train_y: torch.Tensor,
                               test_x: torch.Tensor, test_y: torch.Tensor) -> float:
    centroids = torch.stack([train_x[train_y == c].mean(0) for c in range(C)])  # (C, F)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    pred = torch.cdist((test_x - mean) / std, (centroids - mean) / std).argmin(1)
    return (pred == test_y).float().mean().item()


def _features(images: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    m = masks.float()
    H = m.shape[-1]
    grid = torch.arange(H, dtype=torch.float32)
    area = m.sum((1, 2))
    centroid = torch.stack([(m.sum(1) * grid).sum(1) / area, (m.sum(2) * grid).sum(1) / area], 1)
    return {
        "mask centroid": centroid,  # (n, 2): where the object is
        "mean colour": images.float().mean((2, 3)),  # (n, 3)
        "coarse mask": torch.nn.functional.avg_pool2d(m[:, None], 2).flatten(1),  # shape
    }


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_position_and_colour_do_not_give_the_class_away(difficulty: str) -> None:
    train_images, train_y, train_masks = make_shapes(2000, 32, difficulty, seed=10)
    test_images, test_y, test_masks = make_shapes(1000, 32, difficulty, seed=11)
    train, test = _features(train_images, train_masks), _features(test_images, test_masks)
    acc = {k: _nearest_centroid_accuracy(train[k], train_y, test[k], test_y) for k in train}
    chance = 1 / C  # the binomial std of 1,000 test images at chance is ~0.01
    assert acc["mask centroid"] < chance + 0.06, acc
    assert acc["mean colour"] < chance + 0.06, acc
    # the same classifier does find the class from the shape itself: the check can fail
    assert acc["coarse mask"] > chance + 0.07, acc


def test_the_shortcut_check_catches_a_leak() -> None:
    """A deliberately leaky variant (a hue tied to the class) is caught by the same check."""
    images, labels, masks = make_shapes(2000, 32, "easy", seed=10)
    shift = 10.0 * labels[:, None, None, None] * torch.tensor([1.0, 0.0, -1.0])[:, None, None]
    leaky = (images.float() + shift).clamp(0, 255)  # red up, blue down, more for later classes
    feats = _features(leaky, masks)["mean colour"]
    acc = _nearest_centroid_accuracy(feats[:1000], labels[:1000], feats[1000:], labels[1000:])
    assert acc > 1 / C + 0.06


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, words", [
    ({"n": 0}, "n=0"),
    ({"n": 10, "image_size": 8}, "image_size=8"),
    ({"n": 10, "difficulty": "extreme"}, "difficulty='extreme'"),
])
def test_make_shapes_bad_input(kwargs: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        make_shapes(**kwargs)


@pytest.mark.parametrize("kwargs, words", [
    ({"size_range": (0.9, 0.5)}, "size_range"),
    ({"colour": "rainbow"}, "colour='rainbow'"),
    ({"background": "plaid"}, "background='plaid'"),
    ({"pixel_noise": -0.1}, "pixel_noise=-0.1"),
    ({"polarity": "both"}, "polarity='both'"),
    ({"blotch_cells": 1}, "blotch_cells=1"),
])
def test_style_bad_input(kwargs: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        ShapesStyle(**kwargs)


def test_dataset_bad_split() -> None:
    with pytest.raises(ValueError, match="split='validation'"):
        ShapesDataset("validation", n_images=10)
    with pytest.raises(ValueError, match="n_images=0"):
        ShapesDataset("train", n_images=0)
