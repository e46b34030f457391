"""Scenes: a few small textured objects on clutter, with a mask per object, that need no download.

Why: DINO's striking finding is that a self-distilled ViT's attention heads segment objects and
its patch features track them through video (DINO, Sec. 4.2 and Fig. 1). Showing that needs
images in which finding the objects is not free. In the built-in shapes the object is large (a
random head's attention overlaps it by chance) and brighter or darker than the background (random
features separate it). Here each object is small (5-25% of the image) and painted with exactly
the two colours the background is painted with, so a pixel's colour says nothing about whether
it belongs to an object: only the outline of a region and the texture inside it do.

How a scene is drawn (every pixel is a mix of its image's two palette colours):
1. A palette per image: a dark and a light colour of one random faint hue.
2. A pattern value P in [0, 1] per pixel; the pixel is dark + P (light - dark) + grey noise.
3. Background: smooth random blobs cut at their median (half dark, half light), and over them a
   few irregular fragments filled with the objects' own textures (clutter).
4. Objects: 2-4 per image. A class is an outline with its own texture (SCENE_TEXTURES): both half
   dark and half light, so an object's mean colour is the background's. Each is drawn at a random
   place (the border may cut it), rotation and area, back to front: later objects partly hide
   earlier ones.
5. Every edge (outline, texture, blob) is anti-aliased alike: coverage = clamp(0.5 - d / pixel)
   from a signed distance d, as in `minidino.shapes`. An object's mask is the pixels whose centre
   it covers; the instance map holds the front-most object's id there (0 = background).
Layouts that hide more than half of an object (behind others or beyond the border) are redrawn.
An image's label is the class of its largest object (its whole area, however much is hidden).
The painting itself is `minidino.scene_paint`; `minidino.scene_video` sets the scenes moving.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from minidino.scene_paint import (
    SCENE_CLASSES,
    SCENE_TEXTURES,
    SceneObjects,
    all_visible,
    centre_bounds,
    draw_background,
    outline_area,
    outline_distances,
    paint_objects,
    palette,
    radius_for_area,
    to_image,
)
from minidino.shapes import BuiltInImages

__all__ = ["SCENES_STYLES", "SCENE_CLASSES", "SCENE_TEXTURES", "Scenes", "ScenesDataset",
           "ScenesStyle", "make_scenes", "plot_scenes", "scenes_style"]


@dataclass(frozen=True)
class ScenesStyle:
    """How scenes are drawn. Areas are fractions of the image, brightness values in [0, 1]."""

    n_objects: tuple[int, int] = (2, 4)  # objects per image, both ends included
    area_range: tuple[float, float] = (0.05, 0.25)  # each object's area before occlusion
    total_area: float = 0.6  # each of an image's n objects covers at most total_area / n
    min_visible: float = 0.5  # every object shows at least this share of its whole area
    outside: float = 0.5  # an object may reach this many radii beyond the image border
    period: float = 1 / 6  # texture period, as a fraction of the side
    blob_cells: int = 6  # the background blobs: smooth noise on this grid
    clutter: int = 3  # textured fragments in the background
    clutter_area: float = 0.15  # each fragment's share of the image
    contrast: tuple[float, float] = (0.35, 0.6)  # brightness gap between the palette's colours
    saturation: float = 0.3  # the palette's largest saturation
    pixel_noise: float = 0.04  # std of per-pixel grey noise

    def __post_init__(self) -> None:
        if not 1 <= self.n_objects[0] <= self.n_objects[1] <= 8:
            raise ValueError(f"n_objects={self.n_objects} must satisfy 1 <= low <= high <= 8")
        if not 0.01 <= self.area_range[0] <= self.area_range[1] <= 0.4:
            raise ValueError(f"area_range={self.area_range} must satisfy 0.01 <= low <= high "
                             "<= 0.4")
        if not 0.0 <= self.contrast[0] <= self.contrast[1] <= 1.0:
            raise ValueError(f"contrast={self.contrast} must satisfy 0 <= low <= high <= 1")
        for name in ("min_visible", "outside", "total_area", "clutter_area", "saturation",
                     "pixel_noise"):
            if not 0.0 <= (value := getattr(self, name)) <= 1.0:
                raise ValueError(f"{name}={value} must be in [0, 1]")
        if not 0.0 < self.period <= 1.0 or self.blob_cells < 2 or self.clutter < 0:
            raise ValueError(f"need 0 < period <= 1, blob_cells >= 2, clutter >= 0; got "
                             f"period={self.period}, blob_cells={self.blob_cells}, "
                             f"clutter={self.clutter}")


# ---------------------------------------------------------------- whole scenes
class Scenes(NamedTuple):
    """images uint8 (n, 3, H, W); labels int64 (n,), the class of each image's largest object;
    instances int64 (n, H, W), 0 = background, i = the object of slot i - 1 (drawn back to
    front); classes int64 (n, K), each slot's class, -1 = empty; areas (n, K), each object's
    whole area as a share of the image (before other objects or the border hide any of it), 0
    for empty slots."""

    images: Tensor
    labels: Tensor
    instances: Tensor
    classes: Tensor
    areas: Tensor


SCENES_STYLES: dict[str, ScenesStyle] = {
    "default": ScenesStyle(),
    # grey, 1-3 objects of 10-25% with coarser, high-contrast textures and no clutter: the
    # easiest scenes in which colour still says nothing about where the objects are
    "plain": ScenesStyle(n_objects=(1, 3), area_range=(0.1, 0.25), period=0.25, clutter=0,
                         contrast=(0.7, 0.9), saturation=0.0),
}


def _layout(m: int, labels: Tensor, style: ScenesStyle, g: torch.Generator) -> SceneObjects:
    """Objects of m images, not yet placed; the largest one of image i has class labels[i]."""
    K = style.n_objects[1]
    count = torch.randint(style.n_objects[0], K + 1, (m,), generator=g)  # (m,)
    present = torch.arange(K) < count[:, None]  # (m, K)
    lo, hi = style.area_range
    hi = torch.clamp(style.total_area / count, lo, hi)[:, None]  # (m, 1)
    area = torch.where(present, lo + (hi - lo) * torch.rand(m, K, generator=g), 0.0)  # (m, K)
    main = area.argmax(1)  # (m,) the slots are exchangeable, so it lies at any depth
    classes = torch.randint(len(SCENE_CLASSES), (m, K), generator=g)
    classes[torch.arange(m), main] = labels
    classes = torch.where(present, classes, -1)  # (m, K)
    angle = 2 * math.pi * torch.rand(m, K, generator=g)
    phase, flip = torch.rand(m, K, 2, generator=g), torch.rand(m, K, generator=g) < 0.5
    return SceneObjects(classes, radius_for_area(classes, area), angle, torch.zeros(m, K, 2),
                        phase, flip)


def place(objects: SceneObjects, size: int, style: ScenesStyle, g: torch.Generator
          ) -> SceneObjects:
    """Give every object a centre (within `style.outside` radii of the image), drawing all
    centres of an image again while one of its objects shows less than `style.min_visible` of
    its whole area, hidden by other objects or cut by the border."""
    low, high = centre_bounds(objects, size, style.outside)  # (m, K, 2) each
    whole = outline_area(objects) * size ** 2  # (m, K) pixels
    centre, todo = objects.centre.clone(), torch.arange(objects.classes.shape[0])
    for _ in range(200):
        t = torch.rand(len(todo), *centre.shape[1:], generator=g)  # (t, K, 2)
        centre[todo] = low[todo] + t * (high[todo] - low[todo])
        d = outline_distances(SceneObjects(*(f[todo] for f in objects._replace(centre=centre))),
                              size)[0]  # (t, K, H, W)
        todo = todo[~all_visible(d, whole[todo], style.min_visible)]
        if len(todo) == 0:
            return objects._replace(centre=centre)
    raise RuntimeError(f"could not place the objects so that each shows {style.min_visible:.0%} "
                       "of itself after 200 tries: lower the objects' areas or their number")


def scenes_style(style: str | ScenesStyle) -> ScenesStyle:
    """A ScenesStyle, or the one named in SCENES_STYLES."""
    if isinstance(style, ScenesStyle):
        return style
    if style not in SCENES_STYLES:
        raise ValueError(f"style={style!r} must be one of {sorted(SCENES_STYLES)} or a "
                         "ScenesStyle")
    return SCENES_STYLES[style]


def make_scenes(n: int, image_size: int = 32, style: str | ScenesStyle = "default",
                seed: int = 0) -> Scenes:
    """Draw `n` scenes; the same arguments always give the same bytes (see `Scenes` for what
    comes back). Labels are balanced: n // C or n // C + 1 images of each of the C classes."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be a positive int")
    if not isinstance(image_size, int) or image_size < 16:
        raise ValueError(f"image_size={image_size!r} must be an int >= 16 (32 or 64 are usual)")
    st, S = scenes_style(style), image_size
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % len(SCENE_CLASSES))[torch.randperm(n, generator=g)]  # (n,)
    K = st.n_objects[1]
    images = torch.empty(n, 3, S, S, dtype=torch.uint8)
    instances = torch.empty(n, S, S, dtype=torch.int64)
    classes, areas = torch.empty(n, K, dtype=torch.int64), torch.empty(n, K)
    chunk = 1024  # bounds memory; a constant, so that the draws below are reproducible
    for start in range(0, n, chunk):
        sl = slice(start, min(start + chunk, n))
        m = sl.stop - sl.start
        objects = place(_layout(m, labels[sl], st, g), S, st, g)
        background = draw_background(m, S, st.period, st.blob_cells, st.clutter, st.clutter_area,
                                     g)  # (m, H, W)
        pattern, instances[sl] = paint_objects(background, objects, st.period)  # (m, H, W) each
        images[sl] = to_image(pattern, *palette(m, st.contrast, st.saturation, g), st.pixel_noise,
                              g)  # (m, 3, H, W)
        classes[sl] = objects.classes
        areas[sl] = outline_area(objects)  # (m, K)
    return Scenes(images, labels, instances, classes, areas)


class ScenesDataset(BuiltInImages):
    """The built-in scenes as a torch Dataset, held in memory (`load_dataset("scenes")`).

    split "train" (default 10,000 images) or "test" (default 2,000) draws from seeds 2 * seed and
    2 * seed + 1. Attributes: images uint8 (N, 3, H, W), labels int64 (N,), masks bool (N, H, W)
    (any object), instances uint8 (N, H, W) (0 background, i object i), instance_classes int64
    (N, K) (-1: no object i + 1), areas (N, K), classes (names). An item is (image, label): the
    uint8 tensor (3, H, W), or a PIL image when as_pil=True, through `transform` if given.
    """

    def __init__(self, split: str = "train", n_images: int | None = None, image_size: int = 32,
                 style: str | ScenesStyle = "default", seed: int = 0, transform: Any = None,
                 as_pil: bool = False) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split={split!r} must be 'train' or 'test'")
        n_images = (10_000 if split == "train" else 2_000) if n_images is None else n_images
        if not isinstance(n_images, int) or n_images < 1:
            raise ValueError(f"n_images={n_images!r} must be a positive int")
        self.split, self.transform, self.as_pil = split, transform, as_pil
        self.classes = list(SCENE_CLASSES)
        scenes = make_scenes(n_images, image_size, style, 2 * seed + (split == "test"))
        self.images, self.labels, self.areas = scenes.images, scenes.labels, scenes.areas
        self.instances = scenes.instances.to(torch.uint8)  # ids <= 8: a quarter of the memory
        self.masks, self.instance_classes = self.instances > 0, scenes.classes


def plot_scenes(images: Tensor, instances: Tensor, labels: Tensor | None = None,
                n_images: int = 6) -> Any:
    """Images uint8 (B, 3, H, W) above their instance maps (B, H, W): background black, then one
    colour per object id. With labels (B,), each image is titled with its class. Returns the
    matplotlib Figure."""
    import matplotlib.pyplot as plt  # here: the datasets should not need matplotlib

    B = min(n_images, images.shape[0])
    colours = torch.cat([torch.zeros(1, 3), torch.tensor(plt.get_cmap("tab10").colors)])  # (11, 3)
    fig, axes = plt.subplots(2, B, figsize=(1.7 * B, 3.6), squeeze=False)
    for i in range(B):
        axes[0, i].imshow(images[i].permute(1, 2, 0).numpy())
        axes[1, i].imshow(colours[instances[i].long().clamp(max=10)].numpy())  # (H, W, 3)
        if labels is not None:
            axes[0, i].set_title(SCENE_CLASSES[int(labels[i])], fontsize=9)
    for ax in axes.flat:
        ax.set_axis_off()
    axes[1, 0].set_title("objects", fontsize=9, loc="left")
    fig.tight_layout()
    return fig
