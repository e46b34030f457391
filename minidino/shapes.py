"""The built-in dataset: ten classes of drawn shapes that need no download.

Why: the course must run anywhere (a laptop CPU, CI with no network), so it draws its own images:
the same seed always gives the same images, and 10,000 of them take well under a second.

What a model must learn is *shape*: position, size, rotation, brightness polarity, hue and noise
are random and class-independent, so a classifier of position or mean colour alone is at chance.

How an image is drawn:
1. Each class is a signed distance function (SDF) in the shape's own frame, where the shape fits
   the unit disk: d(x, y) < 0 inside, > 0 outside, |d| about the distance to the edge.
2. Every pixel centre is mapped into that frame (undo the position, rotation and size).
3. Coverage = clamp(0.5 - d / pixel_size, 0, 1): a pixel half inside the edge is half covered, so
   edges are anti-aliased without supersampling. The mask is the pixels whose centre is inside.
4. image = coverage * shape colour + (1 - coverage) * background + pixel and blotch noise, as uint8.

`ShapesStyle` holds every knob; `SHAPES_STYLES` names three levels. "easy" (the default) is what a
tiny DINO ViT learns in minutes on a CPU: big grey shapes, a fixed contrast and heavy texture noise,
so a random network's features are weak and training has something to add. "medium" adds a faint
tint and smaller shapes; "hard" saturated random colours and busy backgrounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring",
                                  "crescent", "arrow", "heart", "hexagon")


@dataclass(frozen=True)
class ShapesStyle:
    """How the shapes are drawn. Brightness and colour values are in [0, 1]."""

    size_range: tuple[float, float] = (0.6, 0.95)  # shape diameter, as a fraction of the side
    rotate: bool = True  # random rotation in [0, 360) degrees
    colour: str = "grey"  # "grey": two brightness levels (+ optional tint); "random": any colours
    contrast: float = 0.5  # "grey": brightness gap between shape and background
    polarity: str = "random"  # "grey": "random", "light" (shape on dark) or "dark" (on light)
    contrast_jitter: float = 0.05  # the gap varies by +- this
    brightness_jitter: float = 0.05  # the mid level 0.5 varies by +- this
    tint: float = 0.0  # "grey": strength of a random hue added at constant brightness
    shared_hue: bool = True  # "grey": shape and background get the same hue
    background: str = "plain"  # "plain" | "stripes" | "blobs" | "busy" (stripes or blobs)
    pixel_noise: float = 0.1  # std of per-pixel brightness noise
    blotch_noise: float = 0.1  # std of smooth noise on a blotch_cells x blotch_cells grid
    blotch_cells: int = 4

    def __post_init__(self) -> None:
        if not 0.05 <= self.size_range[0] <= self.size_range[1] <= 1.0:
            raise ValueError(f"size_range={self.size_range} must satisfy 0.05 <= low <= high <= 1")
        if self.colour not in ("grey", "random"):
            raise ValueError(f"colour={self.colour!r} must be 'grey' or 'random'")
        if self.polarity not in ("random", "light", "dark"):
            raise ValueError(f"polarity={self.polarity!r} must be 'random', 'light' or 'dark'")
        if self.background not in ("plain", "stripes", "blobs", "busy"):
            raise ValueError(f"background={self.background!r} must be one of "
                             "'plain', 'stripes', 'blobs', 'busy'")
        for name in ("contrast", "contrast_jitter", "brightness_jitter", "tint", "pixel_noise",
                     "blotch_noise"):
            if not 0.0 <= (value := getattr(self, name)) <= 1.0:
                raise ValueError(f"{name}={value} must be in [0, 1]")
        if self.blotch_cells < 2:
            raise ValueError(f"blotch_cells={self.blotch_cells} must be at least 2")


SHAPES_STYLES: dict[str, ShapesStyle] = {
    "easy": ShapesStyle(),
    "medium": ShapesStyle(size_range=(0.4, 0.8), contrast=0.4, contrast_jitter=0.1, tint=0.12,
                          shared_hue=False, pixel_noise=0.08, blotch_noise=0.08),
    "hard": ShapesStyle(size_range=(0.35, 0.7), colour="random", background="busy",
                        pixel_noise=0.05, blotch_noise=0.05),
}


# ---------------------------------------------------------------- the shapes, as distances
# Each is a d(x, y) as in step 1 above. Union is min, intersection max, subtraction max(d_a, -d_b);
# convex pieces use the largest distance to an edge line: exact near edges, all anti-aliasing needs.
def _box(x: Tensor, y: Tensor, half_w: float, half_h: float) -> Tensor:
    return torch.maximum(x.abs() - half_w, y.abs() - half_h)


def _disk(x: Tensor, y: Tensor, cx: float, cy: float, r: float) -> Tensor:
    return torch.hypot(x - cx, y - cy) - r


def _star(x: Tensor, y: Tensor, n: int, inner: float) -> Tensor:
    """n outer corners at radius 1 and n inner corners at radius `inner` between them. With
    inner = cos(pi / n) the inner corners sit on straight edges: a regular n-gon."""
    wedge = 2 * math.pi / n
    angle = torch.atan2(y, x) % wedge
    angle = torch.minimum(angle, wedge - angle)  # fold by symmetry into [0, pi / n]
    r = torch.hypot(x, y)
    px, py = r * torch.cos(angle), r * torch.sin(angle)
    # the edge from the outer corner (1, 0) to the inner corner at angle pi / n
    ix, iy = inner * math.cos(wedge / 2), inner * math.sin(wedge / 2)
    nx, ny = iy, 1.0 - ix  # its normal, pointing away from the centre
    return (nx * (px - 1.0) + ny * py) / math.hypot(nx, ny)


def _arrow(x: Tensor, y: Tensor) -> Tensor:
    shaft = _box(x + 0.4, y, 0.55, 0.2)  # x in [-0.95, 0.15]
    base, tip, half = 0.1, 0.95, 0.62  # head: a triangle (base, +-half) -> (tip, 0)
    nx, ny = half, tip - base
    slant = (nx * (x - tip) + ny * y.abs()) / math.hypot(nx, ny)
    return torch.minimum(shaft, torch.maximum(base - x, slant))  # shaft or head


def _heart(x: Tensor, y: Tensor) -> Tensor:
    """A square on its corner with a half disk on each upper edge, centred and scaled to fit."""
    # with half diagonal a and centre (0, k a), the tip is at (k - 1) a and the lobes' tops at
    # (k + 1/2 + 1/sqrt 2) a: k levels the two; a makes the farthest point (a lobe's) reach 1
    k = (0.5 - math.sqrt(0.5)) / 2
    a = 1.0 / (math.hypot(0.5, k + 0.5) + math.sqrt(0.5))
    c0 = k * a
    diamond = (x.abs() + (y - c0).abs() - a) / math.sqrt(2.0)
    lobes = _disk(x.abs(), y, a / 2, c0 + a / 2, a / math.sqrt(2.0))
    return torch.minimum(diamond, lobes)


# The signed distance of each shape: d(x, y) < 0 inside, in units of the shape's radius.
SHAPE_SDF = {
    "circle": lambda x, y: torch.hypot(x, y) - 1.0,
    "square": lambda x, y: _box(x, y, 0.7, 0.7),
    "triangle": lambda x, y: _star(x, y, 3, math.cos(math.pi / 3)),
    "star": lambda x, y: _star(x, y, 5, 0.48),
    "cross": lambda x, y: torch.minimum(_box(x, y, 0.95, 0.3), _box(x, y, 0.3, 0.95)),
    "ring": lambda x, y: (torch.hypot(x, y) - 0.75).abs() - 0.25,
    "crescent": lambda x, y: torch.maximum(_disk(x, y, 0, 0, 1.0), -_disk(x, y, 0.45, 0, 0.8)),
    "arrow": _arrow,
    "heart": _heart,
    "hexagon": lambda x, y: _star(x, y, 6, math.cos(math.pi / 6)),
}


# ---------------------------------------------------------------- colours and backgrounds
_E1 = torch.tensor([1.0, -1.0, 0.0]) / math.sqrt(2.0)  # two unit directions orthogonal to
_E2 = torch.tensor([1.0, 1.0, -2.0]) / math.sqrt(6.0)  # grey (1, 1, 1): hue, no brightness


def _tinted(brightness: Tensor, hue: Tensor, tint: float) -> Tensor:
    """RGB colours with mean `brightness` and a hue at angle `hue`.  (n,), (n,) -> (n, 3)"""
    chroma = torch.cos(hue)[:, None] * _E1 + torch.sin(hue)[:, None] * _E2  # (n, 3)
    return brightness[:, None] + tint * chroma


def hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """Hue in turns, saturation and value in [0, 1].  (n,) x 3 -> (n, 3)"""
    k = (torch.tensor([5.0, 3.0, 1.0]) + 6 * h[:, None]) % 6  # (n, 3)
    ramp = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return v[:, None] * (1 - s[:, None] * ramp)


def _draw_colours(n: int, style: ShapesStyle, g: torch.Generator) -> tuple[Tensor, ...]:
    """Shape, background and second background colour for each image.  3 x (n, 3)"""
    u = lambda: torch.rand(n, generator=g)  # noqa: E731
    if style.colour == "grey":
        mid = 0.5 + style.brightness_jitter * (2 * u() - 1)
        gap = style.contrast + style.contrast_jitter * (2 * u() - 1)
        p_light = {"random": 0.5, "light": 1.0, "dark": 0.0}[style.polarity]
        sign = torch.where(u() < p_light, 1.0, -1.0)  # +1: light shape on dark background
        hue_fg = 2 * math.pi * u()
        hue_bg = hue_fg if style.shared_hue else 2 * math.pi * u()
        fg = _tinted(mid + sign * gap / 2, hue_fg, style.tint)
        bg = _tinted(mid - sign * gap / 2, hue_bg, style.tint)
        return fg, bg, _tinted(mid, hue_bg, style.tint)  # bg2, for patterns: half way between
    colour = lambda hue: hsv_to_rgb(hue, 0.6 + 0.4 * u(), 0.45 + 0.55 * u())  # noqa: E731
    hue = u()
    distant = lambda: (hue + 0.25 + 0.5 * u()) % 1  # noqa: E731
    return colour(hue), colour(distant()), colour(distant())  # bg and bg2 at distant hues


def _pattern(u: Tensor, v: Tensor, n: int, background: str, g: torch.Generator) -> Tensor | None:
    """Background mix weights in [0, 1] (n, H, W): soft stripes, smooth blobs, or for "busy" one of
    the two at random per image; None for a plain background.  u, v: (H, W) pixel coordinates."""
    if background == "plain":
        return None
    H, W = u.shape
    angle = math.pi * torch.rand(n, 1, 1, generator=g)
    freq = 1.5 + 2.5 * torch.rand(n, 1, 1, generator=g)  # stripe pairs per image side
    phase = 2 * math.pi * torch.rand(n, 1, 1, generator=g)
    along = u * torch.cos(angle) + v * torch.sin(angle)  # (n, H, W)
    stripes = torch.clamp(0.5 + 1.5 * torch.sin(math.pi * freq * along + phase), 0, 1)
    if background == "stripes":
        return stripes
    coarse = torch.randn(n, 1, 4, 4, generator=g)
    smooth = F.interpolate(coarse, size=(H, W), mode="bicubic", align_corners=False)[:, 0]
    blobs = torch.clamp(0.5 + 2.0 * smooth, 0, 1)  # (n, H, W)
    if background == "blobs":
        return blobs
    return torch.where(torch.rand(n, 1, 1, generator=g) < 0.5, stripes, blobs)  # coin per image


# ---------------------------------------------------------------- drawing
def make_shapes(n: int, image_size: int = 32, difficulty: str | ShapesStyle = "easy",
                seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Draw `n` shape images; the same arguments always give the same bytes.

    Returns images uint8 (n, 3, H, W) with H = W = image_size, labels int64 (n,) indexing
    SHAPE_CLASSES (balanced: n // 10 or n // 10 + 1 of each, shuffled) and masks bool (n, H, W),
    True on the pixels whose centre lies inside the shape.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be a positive int")
    if not isinstance(image_size, int) or image_size < 16:
        raise ValueError(f"image_size={image_size!r} must be an int >= 16 (32 or 64 are usual)")
    style = difficulty if isinstance(difficulty, ShapesStyle) else SHAPES_STYLES.get(difficulty)
    if style is None:
        raise ValueError(f"difficulty={difficulty!r} must be one of {sorted(SHAPES_STYLES)} "
                         "or a ShapesStyle")
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % len(SHAPE_CLASSES))[torch.randperm(n, generator=g)]  # (n,)

    # per-image pose: radius in units of half the side; the centre keeps the shape inside
    lo, hi = style.size_range
    radius = lo + (hi - lo) * torch.rand(n, generator=g)  # (n,)
    centre = (1 - radius)[:, None] * (2 * torch.rand(n, 2, generator=g) - 1)  # (n, 2)
    angle = 2 * math.pi * torch.rand(n, generator=g) if style.rotate else torch.zeros(n)
    fg, bg, bg2 = _draw_colours(n, style, g)  # (n, 3) each

    H = W = image_size
    coords = (2 * torch.arange(H) + 1) / H - 1  # pixel centres in (-1, 1)
    v, u = torch.meshgrid(-coords, coords, indexing="ij")  # (H, W); u right, v up
    images = torch.empty(n, 3, H, W, dtype=torch.uint8)
    masks = torch.empty(n, H, W, dtype=torch.bool)
    chunk = 1024  # bounds memory; a constant, so that the draws below are reproducible
    for start in range(0, n, chunk):
        sl = slice(start, min(start + chunk, n))
        m = sl.stop - sl.start
        # into each shape's frame: translate, rotate by -angle, scale by 1 / radius
        du, dv = u - centre[sl, 0, None, None], v - centre[sl, 1, None, None]  # (m, H, W)
        cos, sin = torch.cos(angle[sl])[:, None, None], torch.sin(angle[sl])[:, None, None]
        r = radius[sl, None, None]
        x, y = (cos * du + sin * dv) / r, (cos * dv - sin * du) / r  # (m, H, W)
        d = torch.empty(m, H, W)
        for c, name in enumerate(SHAPE_CLASSES):
            idx = (labels[sl] == c).nonzero().squeeze(1)
            d[idx] = SHAPE_SDF[name](x[idx], y[idx]) * r[idx]  # distance in image units
        coverage = torch.clamp(0.5 - d / (2.0 / W), 0, 1)[:, None]  # d in pixels; (m, 1, H, W)
        masks[sl] = d <= 0

        back = bg[sl, :, None, None]  # (m, 3, 1, 1)
        mix = _pattern(u, v, m, style.background, g)  # (m, H, W) or None
        if mix is not None:
            mix = mix[:, None]  # (m, 1, H, W)
            back = (1 - mix) * back + mix * bg2[sl, :, None, None]  # (m, 3, H, W)
        blotches = torch.randn(m, 1, style.blotch_cells, style.blotch_cells, generator=g)
        noise = style.blotch_noise * F.interpolate(blotches, size=(H, W), mode="bilinear",
                                                   align_corners=False)  # (m, 1, H, W)
        noise += style.pixel_noise * torch.randn(m, 1, H, W, generator=g)
        img = back + coverage * (fg[sl, :, None, None] - back) + noise  # (m, 3, H, W)
        images[sl] = img.mul_(255).clamp_(0, 255).round_().to(torch.uint8)
    return images, labels, masks


class BuiltInImages(Dataset):
    """A built-in dataset held in memory: `images` uint8 (N, 3, H, W) and `labels` (N,). An item
    is (image, label): the uint8 tensor (3, H, W), or a PIL image when `as_pil` is set, passed
    through `transform` if one is given."""

    images: Tensor
    labels: Tensor
    transform: Any = None
    as_pil: bool = False

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Any, int]:
        image: Any = self.images[i]  # (3, H, W) uint8
        if self.as_pil:
            from torchvision.transforms.functional import to_pil_image
            image = to_pil_image(image)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[i])


class ShapesDataset(BuiltInImages):
    """The built-in dataset as a torch Dataset, held in memory.

    split "train" (default 10,000 images) or "test" (default 2,000) draws from seeds 2 * seed and
    2 * seed + 1, so the splits never share an image. Attributes: images uint8 (N, 3, H, W), labels
    int64 (N,), masks bool (N, H, W), classes. An item is (image, label): the uint8 tensor
    (3, H, W), or a PIL image when as_pil=True, passed through `transform` if one is given.
    """

    def __init__(self, split: str = "train", n_images: int | None = None, image_size: int = 32,
                 difficulty: str | ShapesStyle = "easy", seed: int = 0, transform: Any = None,
                 as_pil: bool = False) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split={split!r} must be 'train' or 'test'")
        if n_images is None:
            n_images = 10_000 if split == "train" else 2_000
        if not isinstance(n_images, int) or n_images < 1:
            raise ValueError(f"n_images={n_images!r} must be a positive int")
        self.split, self.transform, self.as_pil = split, transform, as_pil
        self.classes = list(SHAPE_CLASSES)
        seed = 2 * seed + (0 if split == "train" else 1)  # a seed of its own for each split
        self.images, self.labels, self.masks = make_shapes(n_images, image_size, difficulty, seed)

