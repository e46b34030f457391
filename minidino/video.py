"""Videos for dense evaluation: a built-in moving-shapes clip, and the DAVIS-2017 format on disk.

Why: DINO's patch features can track objects through a video with no training for it at all
(DINO, Sec. 4.2.2, DAVIS-2017 label propagation). Measuring that needs frames with a ground-truth
mask on every frame. `make_video` draws one with the same shapes as the built-in dataset
(`minidino.shapes`), so the whole evaluation runs anywhere without a download; `load_davis` reads
the real benchmark when it is on disk.

How a video is drawn: each object is one of SHAPE_CLASSES with a fixed colour, size and rotation
speed, whose centre moves in a straight line at a constant speed (a few pixels per frame) chosen
so the whole object stays inside the frame. Objects are painted back to front over a background
with smooth blotches and pixel noise, so later objects hide earlier ones; the mask holds, for each
pixel, the id of the front-most object whose shape covers the pixel's centre (0 = background).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from minidino.shapes import SHAPE_CLASSES, SHAPE_SDF, hsv_to_rgb

DAVIS_URL = "https://davischallenge.org/davis2017/code.html"


class ShapesVideo(NamedTuple):
    """frames uint8 (T, 3, H, W); masks int64 (T, H, W), 0 = background, 1..n objects;
    colours float (1 + n, 3) in [0, 1]: the background's base colour, then each object's."""

    frames: Tensor
    masks: Tensor
    colours: Tensor


def make_video(n_frames: int = 12, image_size: int = 96, n_objects: int = 2, seed: int = 0,
               speed: float = 2.0, size_range: tuple[float, float] = (0.35, 0.5),
               pixel_noise: float = 0.04, blotch_noise: float = 0.06) -> ShapesVideo:
    """Draw a clip of `n_objects` shapes moving in straight lines; same arguments, same bytes.

    speed: how far each centre moves per frame, in pixels. size_range: object diameter as a
    fraction of the side. pixel_noise, blotch_noise: std of per-pixel and of smooth brightness
    noise (0 for both gives flat colours, exactly `colours`, away from the anti-aliased edges).
    """
    check_video_size(n_frames, image_size)
    if not isinstance(n_objects, int) or not 0 <= n_objects <= len(SHAPE_CLASSES):
        raise ValueError(f"n_objects={n_objects!r} must be an int in [0, {len(SHAPE_CLASSES)}]")
    if not 0.05 <= size_range[0] <= size_range[1] <= 1.0:
        raise ValueError(f"size_range={size_range} must satisfy 0.05 <= low <= high <= 1")
    if speed < 0 or pixel_noise < 0 or blotch_noise < 0:
        raise ValueError(f"speed={speed}, pixel_noise={pixel_noise} and "
                         f"blotch_noise={blotch_noise} must be >= 0")
    g = torch.Generator().manual_seed(seed)
    T, H = n_frames, image_size
    u01 = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731

    # objects: class, radius (units of half the side), colours with hues spread around the wheel
    kinds = torch.randperm(len(SHAPE_CLASSES), generator=g)[:n_objects]  # (n,) distinct shapes
    radius = size_range[0] + (size_range[1] - size_range[0]) * u01(n_objects)  # (n,)
    hues = (u01(1) + torch.arange(n_objects) / max(n_objects, 1)) % 1  # (n,)
    value = torch.where(torch.arange(n_objects) % 2 == 0, 0.95, 0.7)  # alternate brightness
    fg = hsv_to_rgb(hues, 0.55 + 0.3 * u01(n_objects), value)  # (n, 3)
    bg = torch.full((1, 3), 0.25) + 0.1 * u01(1, 3)  # (1, 3) dark, faintly tinted
    colours = torch.cat([bg, fg])  # (1 + n, 3)

    # straight-line motion: a random direction; the start is drawn so the end stays inside too
    step = speed * 2.0 / H  # pixels per frame -> image units (the side spans [-1, 1])
    direction = 2 * math.pi * u01(n_objects)  # (n,)
    velocity = step * torch.stack([torch.cos(direction), torch.sin(direction)], 1)  # (n, 2)
    room = (1 - radius)[:, None]  # (n, 1) the centre may go this far from the middle
    travel = velocity * (T - 1)  # (n, 2)
    travel = travel * torch.clamp(2 * room / travel.abs().clamp(min=1e-9), max=1.0)  # fits
    low, high = -room - travel.clamp(max=0), room - travel.clamp(min=0)  # (n, 2) start range
    start = low + (high - low) * u01(n_objects, 2)  # (n, 2)
    angle0 = 2 * math.pi * u01(n_objects)  # (n,)
    spin = (u01(n_objects) - 0.5) * 0.1  # (n,) radians per frame

    coords = (2 * torch.arange(H) + 1) / H - 1  # pixel centres in (-1, 1)
    v, u = torch.meshgrid(-coords, coords, indexing="ij")  # (H, W); u right, v up
    blotches = torch.randn(T, 1, 4, 4, generator=g)  # smooth noise, new every frame
    noise = blotch_noise * F.interpolate(blotches, size=(H, H), mode="bilinear",
                                         align_corners=False)  # (T, 1, H, W)
    noise = noise + pixel_noise * torch.randn(T, 1, H, H, generator=g)  # (T, 1, H, W)
    img = bg[0, :, None, None].expand(T, 3, H, H).clone()  # (T, 3, H, W)
    masks = torch.zeros(T, H, H, dtype=torch.int64)
    t = torch.arange(T, dtype=torch.float32)[:, None, None]  # (T, 1, 1)
    for k in range(n_objects):  # back to front
        r = radius[k].item()
        cu = start[k, 0] + (travel[k, 0] / max(T - 1, 1)) * t  # (T, 1, 1)
        cv = start[k, 1] + (travel[k, 1] / max(T - 1, 1)) * t  # (T, 1, 1)
        a = angle0[k] + spin[k] * t  # (T, 1, 1)
        du, dv = u - cu, v - cv  # (T, H, W)
        x = (torch.cos(a) * du + torch.sin(a) * dv) / r  # (T, H, W) in the shape's frame
        y = (torch.cos(a) * dv - torch.sin(a) * du) / r
        d = SHAPE_SDF[SHAPE_CLASSES[int(kinds[k])]](x, y) * r  # (T, H, W) distance in image units
        coverage = torch.clamp(0.5 - d / (2.0 / H), 0, 1)[:, None]  # (T, 1, H, W)
        img = img + coverage * (fg[k, :, None, None] - img)  # (T, 3, H, W)
        masks[d <= 0] = k + 1
    frames = (img + noise).mul_(255).clamp_(0, 255).round_().to(torch.uint8)  # (T, 3, H, W)
    return ShapesVideo(frames, masks, colours)


def load_davis(root: str | Path, sequence: str, resolution: str = "480p") -> tuple[Tensor, Tensor]:
    """Read one DAVIS-2017 sequence from disk; nothing is downloaded.

    Expects the benchmark's layout: root/JPEGImages/<resolution>/<sequence>/00000.jpg, ... and
    root/Annotations/<resolution>/<sequence>/00000.png, ..., where each annotation is a palette
    PNG whose pixel values are object ids (0 background, 1..n objects). Returns frames uint8
    (T, 3, H, W) and masks int64 (T, H, W), frames sorted by file name. Every frame needs its
    annotation (true of the train and val splits). The value 255 (void, used around some object
    edges) is read as background, as the official evaluation does.
    """
    root = Path(root).expanduser()
    frame_dir = root / "JPEGImages" / resolution / sequence
    mask_dir = root / "Annotations" / resolution / sequence
    for folder in (frame_dir, mask_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"DAVIS folder {str(folder)!r} not found. minidino does not "
                                    f"download DAVIS: get DAVIS-2017 (trainval, {resolution}) "
                                    f"from {DAVIS_URL} and pass the folder that holds "
                                    "JPEGImages/ and Annotations/ as root.")
    frame_files = sorted(frame_dir.glob("*.jpg"))
    if not frame_files:
        raise FileNotFoundError(f"no .jpg frames in {str(frame_dir)!r}")
    frames, masks = [], []
    for path in frame_files:
        mask_path = mask_dir / f"{path.stem}.png"
        if not mask_path.is_file():
            raise FileNotFoundError(f"frame {path.name} has no annotation {str(mask_path)!r}")
        with Image.open(path) as im:
            frames.append(torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1))
        with Image.open(mask_path) as im:
            if im.mode not in ("P", "L"):
                raise ValueError(f"{str(mask_path)!r} has mode {im.mode!r}: DAVIS annotations "
                                 "are palette ('P') PNGs whose values are object ids")
            ids = torch.from_numpy(np.array(im, dtype=np.int64))  # (H, W) the palette indices
        if ids.shape != frames[-1].shape[1:]:
            raise ValueError(f"{mask_path.name} is {tuple(ids.shape)} but its frame is "
                             f"{tuple(frames[-1].shape[1:])}")
        masks.append(torch.where(ids == 255, 0, ids))
    if len({f.shape for f in frames}) > 1:
        raise ValueError(f"the frames of {sequence!r} differ in size")
    return torch.stack(frames), torch.stack(masks)  # (T, 3, H, W), (T, H, W)


def check_video_size(n_frames: int, image_size: int) -> None:
    """A built-in video has at least one frame of at least 16 x 16 pixels."""
    if not isinstance(n_frames, int) or n_frames < 1:
        raise ValueError(f"n_frames={n_frames!r} must be a positive int")
    if not isinstance(image_size, int) or image_size < 16:
        raise ValueError(f"image_size={image_size!r} must be an int >= 16")
