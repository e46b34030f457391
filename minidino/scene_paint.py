"""Painting scenes: textured outlines over clutter, every edge anti-aliased, as signed distances.

The drawing half of `minidino.scenes` (which lays scenes out, labels them and serves them as a
dataset) and of `minidino.scene_video`. Everything is painted in "pattern" space: a value P in
[0, 1] per pixel, turned into colour at the end as dark + P (light - dark), so objects and
background share one palette by construction.

- A class is an outline (a signed distance from `minidino.shapes.SHAPE_SDF`) filled with its
  own texture (`TEXTURE_SDF`, also signed distances, each half light and half dark).
- An edge at signed distance d (image units; one pixel is 2 / size) covers a pixel by
  clamp(0.5 - d / pixel, 0, 1): outlines, textures and blobs are anti-aliased alike.
- Objects are K slots per image (`SceneObjects`), painted back to front; the instance map holds
  the front-most slot covering each pixel's centre.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from minidino.shapes import SHAPE_SDF, hsv_to_rgb

SCENE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "crescent")
SCENE_TEXTURES: dict[str, str] = {"circle": "rings", "square": "checks", "triangle": "stripes",
                                  "cross": "dots", "crescent": "zigzag"}


# ---------------------------------------------------------------- textures, as distances
# x, y in periods; d < 0 on the light half. Each covers half the plane, so its mean is 1/2.
def _bands(s: Tensor) -> Tensor:
    return ((s % 1) - 0.5).abs() - 0.25  # light where s is within 1/4 of a half-integer


def _checks(x: Tensor, y: Tensor) -> Tensor:
    edge = torch.minimum(((2 * x + 0.5) % 1 - 0.5).abs(), ((2 * y + 0.5) % 1 - 0.5).abs()) / 2
    light = (torch.floor(2 * x) + torch.floor(2 * y)) % 2 == 0
    return torch.where(light, -edge, edge)


TEXTURE_SDF = {
    "stripes": lambda x, y: _bands(x),
    "rings": lambda x, y: _bands(torch.hypot(x, y)),
    "checks": _checks,
    "dots": lambda x, y: torch.hypot(x % 1 - 0.5, y % 1 - 0.5) - math.sqrt(0.5 / math.pi),
    "zigzag": lambda x, y: _bands(y + (x % 1 - 0.5).abs()) / math.sqrt(2.0),
}
CLASS_TEXTURE_SDF = {name: TEXTURE_SDF[SCENE_TEXTURES[name]] for name in SCENE_CLASSES}


def _by_class(fn: dict, kinds: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """d[i] = fn[SCENE_CLASSES[kinds[i]]](x[i], y[i]); kinds (m,), x, y (m, ...) -> (m, ...)."""
    d = torch.empty_like(x)
    for c, name in enumerate(SCENE_CLASSES):
        idx = (kinds == c).nonzero().squeeze(1)
        d[idx] = fn[name](x[idx], y[idx])
    return d


@functools.cache
def _outline_stats() -> tuple[Tensor, Tensor]:
    """Each class's outline at radius 1 (the image spans [-1, 1]): its area (C,), and how far it
    reaches in each direction 2 pi j / 360 (its support function) (C, 360)."""
    c = (torch.arange(256) + 0.5) / 128 - 1
    y, x = torch.meshgrid(c, c, indexing="ij")  # (256, 256)
    theta = torch.arange(360) * (2 * math.pi / 360)  # (360,)
    areas, reach = [], []
    for name in SCENE_CLASSES:
        inside = SHAPE_SDF[name](x, y) <= 0  # (256, 256)
        areas.append(4 * inside.float().mean())
        out = F.max_pool2d((~inside).float()[None], 3, 1, 1)[0] > 0  # (256, 256) near outside
        edge = inside & out  # the farthest point in any direction lies on the edge
        reach.append((torch.cos(theta)[:, None] * x[edge] + torch.sin(theta)[:, None]
                      * y[edge]).amax(1))  # (360,)
    return torch.stack(areas), torch.stack(reach)


# ---------------------------------------------------------------- painting
class SceneObjects(NamedTuple):
    """K object slots in each of m images; a slot with class -1 is empty. Lengths in image units
    (the side spans [-1, 1]); phase in texture periods."""

    classes: Tensor  # int64 (m, K), indices into SCENE_CLASSES, -1 = no object
    radius: Tensor  # (m, K) of the outline's unit disk
    angle: Tensor  # (m, K) radians
    centre: Tensor  # (m, K, 2) (u right, v up)
    phase: Tensor  # (m, K, 2) texture offset
    flip: Tensor  # bool (m, K) swap the texture's dark and light halves


def _grid(size: int) -> tuple[Tensor, Tensor]:
    coords = (2 * torch.arange(size) + 1) / size - 1  # pixel centres in (-1, 1)
    v, u = torch.meshgrid(-coords, coords, indexing="ij")  # (H, W); u right, v up
    return u, v


def outline_distances(objects: SceneObjects, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Signed distance to each object's outline d (m, K, H, W) (inf for empty slots), and each
    pixel's place x, y (m, K, H, W) in the object's own rotated frame, all in image units."""
    u, v = _grid(size)
    du = u - objects.centre[..., 0, None, None]  # (m, K, H, W)
    dv = v - objects.centre[..., 1, None, None]
    cos, sin = torch.cos(objects.angle)[..., None, None], torch.sin(objects.angle)[..., None, None]
    x, y = cos * du + sin * dv, cos * dv - sin * du  # (m, K, H, W)
    r = objects.radius[..., None, None]  # (m, K, 1, 1)
    kinds = objects.classes.clamp(min=0).reshape(-1)  # (m K,)
    d = _by_class(SHAPE_SDF, kinds, (x / r).flatten(0, 1), (y / r).flatten(0, 1))  # (m K, H, W)
    d = d.reshape(x.shape) * r  # (m, K, H, W)
    return torch.where(objects.classes[..., None, None] >= 0, d, torch.inf), x, y


def front_ids(d: Tensor) -> Tensor:
    """Outline distances (m, K, H, W) -> int64 (m, H, W): 1 + the last (front-most) slot whose
    outline covers the pixel's centre, 0 where none does."""
    K = d.shape[1]
    slot = torch.arange(1, K + 1)[None, :, None, None]  # (1, K, 1, 1)
    return torch.where(d <= 0, slot, 0).amax(1)  # (m, H, W)


def _coverage(d: Tensor, size: int) -> Tensor:
    return torch.clamp(0.5 - d * size / 2, 0, 1)  # d in image units; one pixel is 2 / size


def _texture(kinds: Tensor, x: Tensor, y: Tensor, flip: Tensor, period: float, size: int
             ) -> Tensor:
    """Light share (m, H, W) of class kinds[i]'s texture (m,) at x, y (m, H, W) in periods,
    dark and light swapped where flip (m,)."""
    light = _coverage(_by_class(CLASS_TEXTURE_SDF, kinds, x, y) * period, size)  # (m, H, W)
    return torch.where(flip[:, None, None], 1 - light, light)


def paint_objects(background: Tensor, objects: SceneObjects, period: float
                  ) -> tuple[Tensor, Tensor]:
    """Paint textured objects back to front (slot 0 first) over a pattern (m, H, W) in [0, 1].

    Returns the pattern (m, H, W) and the instance map int64 (m, H, W): i + 1 where slot i is the
    front-most object covering the pixel's centre, 0 for background.
    """
    m, H, W = background.shape
    d, x, y = outline_distances(objects, H)  # (m, K, H, W) each
    pattern = background.clone()
    for k in range(d.shape[1]):
        tx = x[:, k] / period + objects.phase[:, k, 0, None, None]  # (m, H, W) in periods
        ty = y[:, k] / period + objects.phase[:, k, 1, None, None]
        light = _texture(objects.classes[:, k].clamp(min=0), tx, ty, objects.flip[:, k], period,
                         H)  # (m, H, W)
        pattern += _coverage(d[:, k], H) * (light - pattern)  # (m, H, W)
    return pattern, front_ids(d)


# ---------------------------------------------------------------- background and colour
def _smooth_edges(field: Tensor, level: Tensor, size: int) -> Tensor:
    """Coverage of {field > level} with a one-pixel anti-aliased edge: field (m, H, W), level
    (m, 1, 1); the distance to the edge is estimated as (field - level) / |gradient|."""
    gv, gu = torch.gradient(field, spacing=2 / size, dim=(1, 2))  # (m, H, W) each
    slope = torch.hypot(gu, gv).clamp(min=1e-6)
    return _coverage(-(field - level) / slope, size)


def _smooth_noise(m: int, cells: int, size: int, g: torch.Generator) -> Tensor:
    coarse = torch.randn(m, 1, cells, cells, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[:, 0]


def draw_background(m: int, size: int, period: float, blob_cells: int, clutter: int,
                    clutter_area: float, g: torch.Generator) -> Tensor:
    """Cluttered background patterns (m, H, W) in [0, 1]: smooth noise on a blob_cells grid cut
    at its median, then `clutter` irregular fragments (each `clutter_area` of the image), each
    filled with a random class's texture at a random angle."""
    blobs = _smooth_noise(m, blob_cells, size, g)  # (m, H, W)
    pattern = _smooth_edges(blobs, blobs.flatten(1).median(1).values[:, None, None], size)
    u, v = _grid(size)
    for _ in range(clutter):
        field = _smooth_noise(m, blob_cells, size, g)  # (m, H, W)
        level = field.flatten(1).quantile(1 - clutter_area, dim=1)[:, None, None]
        region = _smooth_edges(field, level, size)  # (m, H, W)
        kinds = torch.randint(len(SCENE_CLASSES), (m,), generator=g)
        angle = 2 * math.pi * torch.rand(m, 1, 1, generator=g)
        phase = torch.rand(m, 2, 1, 1, generator=g)
        x = (torch.cos(angle) * u + torch.sin(angle) * v) / period + phase[:, 0]  # (m, H, W)
        y = (torch.cos(angle) * v - torch.sin(angle) * u) / period + phase[:, 1]
        flip = torch.rand(m, generator=g) < 0.5
        light = _texture(kinds, x, y, flip, period, size)  # (m, H, W)
        pattern += region * (light - pattern)  # (m, H, W)
    return pattern


def radius_for_area(classes: Tensor, area: Tensor) -> Tensor:
    """The radius at which each class's outline covers `area` of the image (same shapes)."""
    return torch.sqrt(4 * area / _outline_stats()[0][classes.clamp(min=0)])


def outline_area(objects: SceneObjects) -> Tensor:
    """Each object's whole area as a share of the image (m, K), 0 for empty slots: what its
    outline covers, whether other objects or the image border hide part of it or not."""
    area = _outline_stats()[0][objects.classes.clamp(min=0)] * objects.radius ** 2 / 4
    return torch.where(objects.classes >= 0, area, 0.0)


def palette(m: int, contrast: tuple[float, float], saturation: float, g: torch.Generator
            ) -> tuple[Tensor, Tensor]:
    """Dark and light colours (m, 3) each, of one random hue and saturation (up to `saturation`)
    per image, with a brightness gap drawn from `contrast` around a mid-grey."""
    hue, sat = torch.rand(m, generator=g), saturation * torch.rand(m, generator=g)
    lo, hi = contrast
    gap = lo + (hi - lo) * torch.rand(m, generator=g)
    mid = 0.5 + 0.05 * (2 * torch.rand(m, generator=g) - 1)
    return hsv_to_rgb(hue, sat, mid - gap / 2), hsv_to_rgb(hue, sat, mid + gap / 2)


def to_image(pattern: Tensor, dark: Tensor, light: Tensor, noise: float, g: torch.Generator
             ) -> Tensor:
    """Pattern (m, H, W), colours (m, 3) -> uint8 images (m, 3, H, W) with grey pixel noise."""
    m, H, W = pattern.shape
    img = dark[:, :, None, None] + pattern[:, None] * (light - dark)[:, :, None, None]
    img = img + noise * torch.randn(m, 1, H, W, generator=g)  # (m, 3, H, W)
    return img.mul_(255).clamp_(0, 255).round_().to(torch.uint8)


# ---------------------------------------------------------------- placing
def centre_bounds(objects: SceneObjects, size: int, outside: float = 0.0
                  ) -> tuple[Tensor, Tensor]:
    """The lowest and highest centres (m, K, 2) that keep each object, as rotated, inside the
    image with half a pixel to spare, but for up to `outside` times its radius."""
    reach = _outline_stats()[1][objects.classes.clamp(min=0)]  # (m, K, 360)
    j = (-objects.angle * (180 / math.pi)).round().long()  # (m, K) the image's +u, rotated back
    look = lambda turn: reach.gather(2, ((j + turn) % 360)[..., None])[..., 0]  # noqa: E731
    r, margin = objects.radius, 1 / size
    low = torch.stack([-1 + r * (look(180) - outside), -1 + r * (look(270) - outside)], -1)
    high = torch.stack([1 - r * (look(0) - outside), 1 - r * (look(90) - outside)], -1)
    return low + margin, high - margin  # (m, K, 2) each


def visible_pixels(d: Tensor) -> Tensor:
    """Outline distances (m, K, H, W) -> int64 (m, K): pixels where each slot is in front."""
    ids = front_ids(d)  # (m, H, W)
    slots = torch.arange(1, d.shape[1] + 1)[None, :, None, None]  # (1, K, 1, 1)
    return (ids[:, None] == slots).sum((2, 3))  # (m, K)


def all_visible(d: Tensor, whole: Tensor, min_visible: float) -> Tensor:
    """bool (m,): each object of the image shows at least `min_visible` of its `whole` (m, K)
    pixels. d: outline distances (m, K, H, W)."""
    return (visible_pixels(d) >= min_visible * whole).all(1)
