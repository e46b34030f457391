"""A built-in video of a scene: textured objects that move and pass in front of one another.

Why: label propagation (DINO, Sec. 4.2.2) is easy on the moving-shapes video of `minidino.video`:
each object there has a colour of its own, so even random patch features carry its mask along.
Here, as in `minidino.scenes`, the objects are painted with the background's two colours, so
following them takes features of outline and texture.

How a video is drawn: one scene as in `minidino.scenes.make_scenes` (palette, cluttered
background, which stays still), with n objects of distinct classes. Each object moves in a
straight line at `speed` pixels per frame and turns slowly, staying wholly inside the frame (an
object whose path would leave it moves slower); objects are painted back to front in every
frame, so they hide each other where they cross. Starting places are drawn again until every
object shows at least `min_visible` of itself in every frame. The pixel noise is new each frame.
Frames and masks come in the format of `minidino.video.make_video`, so `minidino.propagation`
runs on them unchanged.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from minidino.scene_paint import (
    SCENE_CLASSES,
    SceneObjects,
    all_visible,
    centre_bounds,
    draw_background,
    outline_distances,
    paint_objects,
    palette,
    radius_for_area,
    to_image,
)
from minidino.scenes import ScenesStyle, scenes_style
from minidino.video import check_video_size


class SceneVideo(NamedTuple):
    """frames uint8 (T, 3, H, W); masks int64 (T, H, W), 0 = background, 1..n objects (drawn
    back to front); classes int64 (n,), the class of object i + 1 (into SCENE_CLASSES)."""

    frames: Tensor
    masks: Tensor
    classes: Tensor


def make_scene_video(n_frames: int = 12, image_size: int = 96, n_objects: int = 3,
                     seed: int = 0, speed: float = 2.0, spin: float = 0.05,
                     style: str | ScenesStyle = "default",
                     scene_side: int | None = None) -> SceneVideo:
    """Draw a clip of `n_objects` textured objects moving over clutter; same arguments, same
    bytes. speed: pixels per frame; spin: the largest turn per frame, in radians. Areas, textures,
    colours and the least visible share come from `style` (see `minidino.scenes.ScenesStyle`).
    The defaults match `minidino.video.make_video`'s (12 frames of 96 px, 2 pixels per frame).

    scene_side: the side in px of the scenes whose pixel scale the video keeps. The style's
    areas, texture period and blob grid are fractions of a scene's side; with scene_side=32 a
    96-px video shows objects, textures and blobs exactly as large in pixels as in 32-px scenes
    (a network trained on those sees them at the size it learned them), in a wider view: each
    object then covers (32 / 96)^2 = 1/9 of its area share in the style. None: the video's own
    side."""
    check_video_size(n_frames, image_size)
    if not isinstance(n_objects, int) or not 1 <= n_objects <= len(SCENE_CLASSES):
        raise ValueError(f"n_objects={n_objects!r} must be an int in [1, {len(SCENE_CLASSES)}]")
    if speed < 0 or spin < 0:
        raise ValueError(f"speed={speed} and spin={spin} must be >= 0")
    st, T, S, n = scenes_style(style), n_frames, image_size, n_objects
    side = S if scene_side is None else scene_side
    if not isinstance(side, int) or not 8 <= side <= S:
        raise ValueError(f"scene_side={scene_side!r} must be None or an int in [8, "
                         f"image_size={S}]")
    scale = side / S  # a scene's side as a share of the video's
    g = torch.Generator().manual_seed(seed)
    u01 = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731

    kinds = torch.randperm(len(SCENE_CLASSES), generator=g)[:n]  # (n,) distinct classes
    lo, hi = st.area_range
    hi = min(max(st.total_area / n, lo), hi)
    area = (lo + (hi - lo) * u01(n)) * scale ** 2  # (n,) shares of the video's frame
    t = torch.arange(T, dtype=torch.float32)[:, None]  # (T, 1)
    angle = 2 * math.pi * u01(n) + spin * (2 * u01(n) - 1) * t  # (T, n)
    one = lambda x: x.expand(T, *x.shape)  # noqa: E731  the same for every frame
    objects = SceneObjects(one(kinds), one(radius_for_area(kinds, area)), angle,
                           torch.zeros(T, n, 2), one(u01(n, 2)), one(u01(n) < 0.5))

    # straight lines: each frame's centre must lie in that frame's bounds (objects turn)
    low, high = centre_bounds(objects, S)  # (T, n, 2) each
    direction = 2 * math.pi * u01(n)  # (n,)
    velocity = speed * 2 / S * torch.stack([torch.cos(direction), torch.sin(direction)], 1)
    for _ in range(20):
        path = velocity * t[..., None]  # (T, n, 2) from the start
        start_lo, start_hi = (low - path).amax(0), (high - path).amin(0)  # (n, 2) each
        too_far = (start_hi < start_lo).any(1)  # (n,)
        if not too_far.any():
            break
        velocity[too_far] /= 2
    for _ in range(200):
        start = start_lo + u01(n, 2) * (start_hi - start_lo)  # (n, 2)
        objects = objects._replace(centre=start + path)  # (T, n, 2)
        d = outline_distances(objects, S)[0]  # (T, n, H, W)
        if all_visible(d, (d <= 0).sum((2, 3)), st.min_visible).all():
            break
    else:
        raise RuntimeError(f"could not place {n} objects so that each shows "
                           f"{st.min_visible:.0%} of itself in every frame: use fewer")

    period = st.period * scale
    # blobs on a finer grid keep their size in pixels; the clutter keeps its share of the frame
    background = draw_background(1, S, period, max(2, round(st.blob_cells / scale)), st.clutter,
                                 st.clutter_area, g).expand(T, S, S)  # (T, H, W) kept still
    pattern, masks = paint_objects(background, objects, period)  # (T, H, W) each
    dark, light = palette(1, st.contrast, st.saturation, g)  # (1, 3) each
    frames = to_image(pattern, dark.expand(T, 3), light.expand(T, 3), st.pixel_noise, g)
    return SceneVideo(frames, masks, kinds)
