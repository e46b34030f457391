"""The built-in moving-shapes video and the DAVIS-2017 reader (on a fixture in the real format)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from minidino.video import load_davis, make_video


def test_shapes_dtypes_and_determinism() -> None:
    a = make_video(n_frames=6, image_size=48, n_objects=3, seed=3)
    b = make_video(n_frames=6, image_size=48, n_objects=3, seed=3)
    assert a.frames.shape == (6, 3, 48, 48) and a.frames.dtype == torch.uint8
    assert a.masks.shape == (6, 48, 48) and a.masks.dtype == torch.int64
    assert a.colours.shape == (4, 3)
    assert torch.equal(a.frames, b.frames) and torch.equal(a.masks, b.masks)
    c = make_video(n_frames=6, image_size=48, n_objects=3, seed=4)
    assert not torch.equal(a.frames, c.frames)
    assert set(a.masks.unique().tolist()) <= {0, 1, 2, 3}
    assert set(a.masks[0].unique().tolist()) == {0, 1, 2, 3}  # every object is in view


def test_masks_are_where_the_object_colours_are() -> None:
    video = make_video(n_frames=5, image_size=64, n_objects=3, seed=1, pixel_noise=0.0,
                       blotch_noise=0.0)
    pixels = video.frames.permute(0, 2, 3, 1).float() / 255  # (T, H, W, 3)
    palette = video.colours  # (1 + n, 3)
    nearest = torch.cdist(pixels.reshape(-1, 3), palette).argmin(1).reshape(video.masks.shape)
    assert (nearest == video.masks).float().mean() > 0.97  # all but anti-aliased edge pixels
    # away from edges (all pixels within 2 share the id) the colour is exactly the palette's
    m = video.masks[:, None].float()  # (T, 1, H, W)
    pool = torch.nn.functional.max_pool2d
    same = (pool(m, 5, 1, 2) == -pool(-m, 5, 1, 2))[:, 0]  # (T, H, W)
    exact = (pixels - palette[video.masks]).abs().amax(-1) <= 0.5 / 255 + 1e-6  # (T, H, W)
    assert same.float().mean() > 0.7 and exact[same].all()


def test_motion_is_linear_and_stays_in_frame() -> None:
    speed = 2.0
    video = make_video(n_frames=10, image_size=64, n_objects=1, seed=2, speed=speed)
    area = (video.masks == 1).sum((1, 2)).float()  # (T,)
    assert area.min() > 0.9 * area.max()  # the object never leaves the frame
    rows, cols = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    on = (video.masks == 1).float()  # (T, H, W)
    centre = torch.stack([(on * rows).sum((1, 2)), (on * cols).sum((1, 2))], 1) / area[:, None]
    shift = (centre[1:] - centre[:-1]).norm(dim=1)  # (T - 1,) pixels per frame
    # shapes spin a little, so the centroid wobbles around the centre's straight path
    assert (shift - speed).abs().max() < 1.0
    still = make_video(n_frames=4, image_size=64, n_objects=1, seed=2, speed=0.0)
    assert (still.masks[0] == 1).sum() > 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_frames"):
        make_video(n_frames=0)
    with pytest.raises(ValueError, match="image_size"):
        make_video(image_size=8)
    with pytest.raises(ValueError, match="n_objects"):
        make_video(n_objects=11)
    with pytest.raises(ValueError, match="size_range"):
        make_video(size_range=(0.5, 0.2))


def _palette_png(ids: np.ndarray, path) -> None:
    im = Image.fromarray(ids.astype(np.uint8), mode="P")
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (256 - 4) * 3
    palette[255 * 3: 255 * 3 + 3] = [224, 224, 192]  # DAVIS's void colour
    im.putpalette(palette)
    im.save(path)


@pytest.fixture
def davis_root(tmp_path):
    """Three 24 x 40 frames of sequence 'toy' written as DAVIS-2017 does: JPEGs and palette PNGs."""
    frames_dir = tmp_path / "JPEGImages" / "480p" / "toy"
    masks_dir = tmp_path / "Annotations" / "480p" / "toy"
    frames_dir.mkdir(parents=True)
    masks_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for t in range(3):
        rgb = np.full((24, 40, 3), 60, np.uint8)
        ids = np.zeros((24, 40), np.uint8)
        ids[4:12, 5 + 2 * t:15 + 2 * t] = 1
        ids[14:22, 20:30] = 2
        ids[14, 20:30] = 255  # a void line on an object's edge
        rgb[ids == 1] = (200, 40, 40)
        rgb[ids == 2] = (40, 200, 40)
        rgb = np.clip(rgb + rng.integers(-3, 4, rgb.shape), 0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(frames_dir / f"{t:05d}.jpg", quality=95)
        _palette_png(ids, masks_dir / f"{t:05d}.png")
    return tmp_path


def test_load_davis_fixture(davis_root) -> None:
    frames, masks = load_davis(davis_root, "toy")
    assert frames.shape == (3, 3, 24, 40) and frames.dtype == torch.uint8
    assert masks.shape == (3, 24, 40) and masks.dtype == torch.int64
    assert set(masks.unique().tolist()) == {0, 1, 2}  # void (255) read as background
    assert (masks[:, 14, 20:30] == 0).all()
    assert (masks[1, 4:12, 7:17] == 1).all() and (masks[1, :, 5:7] == 0).all()  # frame order
    red = frames[:, 0].float()  # JPEG is lossy, but the objects keep their colours
    assert red[masks == 1].mean() > 170 and red[masks == 0].mean() < 90


def test_load_davis_errors(davis_root, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"JPEGImages.480p.nope.*not found.*download"):
        load_davis(davis_root, "nope")
    (davis_root / "Annotations" / "480p" / "toy" / "00002.png").unlink()
    with pytest.raises(FileNotFoundError, match="00002.jpg has no annotation"):
        load_davis(davis_root, "toy")
    Image.new("RGB", (40, 24)).save(davis_root / "Annotations" / "480p" / "toy" / "00002.png")
    with pytest.raises(ValueError, match="palette"):
        load_davis(davis_root, "toy")
    with pytest.raises(FileNotFoundError, match="Annotations"):
        (tmp_path / "other" / "JPEGImages" / "480p" / "toy").mkdir(parents=True)
        load_davis(tmp_path / "other", "toy")
