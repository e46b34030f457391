"""The built-in scenes and their video: what the generator promises, measured on what it draws."""

from __future__ import annotations

from dataclasses import replace

import matplotlib
import pytest
import torch
import torch.nn.functional as F

from minidino.config_checks import SCENE_STYLES, ConfigError
from minidino.data import load_dataset, load_splits
from minidino.presets import get_preset
from minidino.propagation import f_score, j_score, propagate_mask
from minidino.scene_paint import SceneObjects, paint_objects, radius_for_area
from minidino.scene_video import make_scene_video
from minidino.scenes import SCENE_CLASSES, SCENES_STYLES, ScenesStyle, make_scenes, plot_scenes
from minidino.shapes import make_shapes

matplotlib.use("Agg")
STYLE = ScenesStyle()


@pytest.fixture(scope="module", autouse=True)
def one_thread_here():
    """Small tensors: one thread is fastest, and many threads on a busy machine are very slow."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scenes32():
    return make_scenes(300, 32, seed=1)


def _per_object_pixels(instances: torch.Tensor, K: int) -> torch.Tensor:
    """Visible pixels of each slot: (n, H, W) ids -> (n, K)."""
    return (instances[:, None] == torch.arange(1, K + 1)[None, :, None, None]).sum((2, 3))


def test_format_and_determinism(scenes32) -> None:
    s = scenes32
    again = make_scenes(300, 32, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(s, again, strict=True))
    assert not torch.equal(s.images, make_scenes(300, 32, seed=2).images)
    K = STYLE.n_objects[1]
    assert s.images.shape == (300, 3, 32, 32) and s.images.dtype == torch.uint8
    assert s.instances.shape == (300, 32, 32) and s.instances.dtype == torch.int64
    assert s.classes.shape == s.areas.shape == (300, K)
    assert torch.bincount(s.labels).tolist() == [60] * len(SCENE_CLASSES)  # balanced
    count = (s.classes >= 0).sum(1)  # (n,)
    assert count.min() == STYLE.n_objects[0] and count.max() == K
    assert ((s.classes >= 0) == (s.areas > 0)).all()
    # ids name present slots only, and every present object is in view
    seen = _per_object_pixels(s.instances, K)  # (n, K)
    assert ((seen > 0) == (s.classes >= 0)).all() and s.instances.max() <= K
    # the label is the class of the largest object (pixel counts may swap near ties)
    largest = torch.where(s.classes == s.labels[:, None], s.areas, 0).amax(1)  # (n,)
    assert (largest >= 0.95 * s.areas.amax(1)).all()
    big = make_scenes(8, 64, seed=1)  # the same generator at 64 px
    assert big.images.shape == (8, 3, 64, 64) and big.instances.shape == (8, 64, 64)


def _one_object(kind: int, size: int) -> SceneObjects:
    classes = torch.tensor([[kind]])
    return SceneObjects(classes, radius_for_area(classes, torch.tensor([[0.15]])),
                        torch.tensor([[0.7]]), torch.tensor([[[0.1, -0.2]]]),
                        torch.tensor([[[0.3, 0.6]]]), torch.tensor([[False]]))


@pytest.mark.parametrize("kind", range(len(SCENE_CLASSES)))
def test_mask_is_exactly_the_pixels_the_object_covers(kind: int) -> None:
    """Paint one object over an all-dark and an all-light background: the difference of the two
    is 1 - the object's coverage, so the pixels it changed are known exactly."""
    objects, S = _one_object(kind, 48), 48
    dark, ids = paint_objects(torch.zeros(1, S, S), objects, STYLE.period)  # (1, H, W) each
    light, _ = paint_objects(torch.ones(1, S, S), objects, STYLE.period)
    coverage = 1 - (light - dark)[0]  # (H, W)
    clear = (coverage - 0.5).abs() > 1e-4  # pixels not exactly on the outline
    assert clear.float().mean() > 0.99
    assert torch.equal((ids[0] == 1)[clear], (coverage >= 0.5)[clear])
    near = F.max_pool2d((ids == 1).float()[None], 5, 1, 2)[0, 0].bool()  # within 2 pixels
    assert not (coverage > 0)[~near].any()  # farther out, the background is untouched
    assert abs((ids == 1).float().mean().item() - 0.15) < 0.015  # the area asked for
    inside = ids[0] == 1  # the texture is half light inside the object
    assert abs((dark[0][inside]).mean().item() - 0.5) < 0.12


def _alone(instances: torch.Tensor, K: int) -> torch.Tensor:
    """bool (n, K): slots whose visible pixels touch neither another object nor the border, so
    that nothing hides any part of them."""
    ids = torch.arange(1, K + 1)[None, :, None, None]  # (1, K, 1, 1)
    own = instances[:, None] == ids  # (n, K, H, W)
    near = F.max_pool2d(own.float(), 3, 1, 1).bool()  # (n, K, H, W) within a pixel
    other = (instances[:, None] > 0) & ~own  # (n, K, H, W)
    edge = torch.ones_like(instances[0], dtype=torch.bool)
    edge[1:-1, 1:-1] = False  # (H, W)
    return own.any((2, 3)) & ~(near & other).any((2, 3)) & ~(own & edge).any((2, 3))


def test_areas_and_partial_occlusion(scenes32) -> None:
    lo, hi = STYLE.area_range
    for s, slack in ((scenes32, 0.12), (make_scenes(150, 64, seed=3), 0.05)):
        n, H, W = s.instances.shape
        K = s.classes.shape[1]
        areas = s.areas[s.classes >= 0]  # whole areas, before anything hides a part
        assert areas.min() >= lo - 1e-6 and areas.max() <= hi + 1e-6
        whole = s.areas * H * W  # (n, K) pixels
        seen = _per_object_pixels(s.instances, K).float()  # (n, K)
        alone = _alone(s.instances, K)  # (n, K) objects nothing hides: their pixels, their area
        assert alone.sum() > 20 and ((seen - whole).abs() <= slack * whole)[alone].all()
        assert (seen >= STYLE.min_visible * (1 - slack) * whole).all()  # none hidden too much
        hidden = (seen < (1 - slack) * whole).any(1)  # (n,) some object partly hidden
        assert 0.3 < hidden.float().mean() < 1.0
        edge = torch.zeros(H, W, dtype=torch.bool)
        edge[[0, -1]], edge[:, [0, -1]] = True, True
        assert (s.instances[:, edge] > 0).any(1).float().mean() > 0.3  # the border cuts some


def test_objects_have_the_background_colours(scenes32) -> None:
    """Over 300 scenes, object and background pixels agree in mean colour to within 0.01 and
    in spread to within 0.05 (texture edges give objects a few more mid-tones at 32 px); within
    one image, the means differ by 0.05 or less on average (the built-in shapes: about 0.47)."""
    images = scenes32.images.float() / 255  # (n, 3, H, W)
    on = scenes32.instances > 0  # (n, H, W)
    obj, back = images.permute(1, 0, 2, 3)[:, on], images.permute(1, 0, 2, 3)[:, ~on]  # (3, P)
    assert (obj.mean(1) - back.mean(1)).abs().max() < 0.01
    assert (obj.std(1) - back.std(1)).abs().max() < 0.05
    grey, f = images.mean(1), on.float()  # (n, H, W) each
    gap = (grey * f).sum((1, 2)) / f.sum((1, 2)) - (grey * (1 - f)).sum((1, 2)) / (1 - f).sum(
        (1, 2))  # (n,)
    assert gap.abs().mean() < 0.05


def _colour_probe_gain(images: torch.Tensor, masks: torch.Tensor) -> float:
    """Fit, for each image separately, a logistic regression from a pixel's RGB to object or
    background, and score it on the very pixels it was fitted on (an optimistic upper bound);
    return the mean accuracy minus the mean majority rate."""
    x = images.float().flatten(2).transpose(1, 2) / 255  # (n, P, 3)
    x = (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-3)
    y = masks.flatten(1).float()  # (n, P)
    w = torch.zeros(x.shape[0], 3, requires_grad=True)
    b = torch.zeros(x.shape[0], 1, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.1)
    for _ in range(150):
        logits = torch.einsum("npc,nc->np", x, w) + b  # (n, P)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    accuracy = ((logits > 0).float() == y).float().mean(1)  # (n,)
    majority = torch.maximum(y.mean(1), 1 - y.mean(1))  # (n,)
    return float((accuracy - majority).mean())


def test_colour_alone_cannot_find_the_objects(scenes32) -> None:
    """The property that makes the scenes worth having: even a per-image linear probe on RGB
    does no better than calling every pixel background, while on the built-in shapes the same
    probe finds the shape almost perfectly."""
    assert _colour_probe_gain(scenes32.images[:100], scenes32.instances[:100] > 0) < 0.02
    images, _, masks = make_shapes(100, 32, seed=0)
    assert _colour_probe_gain(images, masks) > 0.15


def test_plain_style_is_grey_and_colour_still_cannot_find_the_objects() -> None:
    scenes = make_scenes(100, 32, style="plain", seed=0)
    assert torch.equal(scenes.images[:, 0], scenes.images[:, 1])  # grey: R = G = B
    assert torch.equal(scenes.images[:, 1], scenes.images[:, 2])
    assert (scenes.classes >= 0).sum(1).max() <= 3  # 1-3 objects
    assert _colour_probe_gain(scenes.images, scenes.instances > 0) < 0.02


def test_the_config_picks_the_scene_style() -> None:
    cfg = replace(get_preset("cpu-demo"), dataset="scenes", scene_style="plain")
    train, test = load_splits(cfg, progress=False)
    for split in (train, test):  # grey: the plain style, where the default one is tinted
        assert torch.equal(split.images[:, 0], split.images[:, 2])
    assert sorted(SCENES_STYLES) == sorted(SCENE_STYLES)  # the config knows every style
    with pytest.raises(ConfigError, match="scene_style"):
        replace(cfg, scene_style="fancy")


def test_load_dataset_exposes_scenes_and_masks() -> None:
    train = load_dataset("scenes", "train", n_images=20)
    test = load_dataset("scenes", "test", n_images=20)
    assert train.images.shape == (20, 3, 32, 32) and train.classes == list(SCENE_CLASSES)
    assert not torch.equal(train.images, test.images)  # the splits share no image
    assert torch.equal(train.masks, train.dataset.instances > 0)
    assert train.dataset.instances.dtype == torch.uint8
    image, label = train.dataset[3]
    assert torch.equal(image, train.images[3]) and label == int(train.labels[3])
    assert load_dataset("scenes", image_size=64, n_images=5).images.shape[-1] == 64
    with pytest.raises(ValueError, match="difficulty"):
        load_dataset("scenes", difficulty="hard")


def test_video_format_and_determinism() -> None:
    a = make_scene_video(n_frames=6, image_size=32, n_objects=3, seed=3)
    b = make_scene_video(n_frames=6, image_size=32, n_objects=3, seed=3)
    assert a.frames.shape == (6, 3, 32, 32) and a.frames.dtype == torch.uint8
    assert a.masks.shape == (6, 32, 32) and a.masks.dtype == torch.int64
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert len(set(a.classes.tolist())) == 3  # distinct classes
    for t in range(6):  # every object in view in every frame
        assert set(a.masks[t].unique().tolist()) == {0, 1, 2, 3}


def test_video_masks_move_smoothly_and_objects_occlude() -> None:
    speed = 2.0
    one = make_scene_video(n_frames=8, image_size=64, n_objects=1, seed=2, speed=speed)
    on = (one.masks == 1).float()  # (T, H, W)
    area = on.sum((1, 2))  # (T,)
    assert area.min() > 0.95 * area.max()  # one object: never hidden, never leaves the frame
    rows, cols = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    centre = torch.stack([(on * rows).sum((1, 2)), (on * cols).sum((1, 2))], 1) / area[:, None]
    step = (centre[1:] - centre[:-1]).norm(dim=1)  # (T - 1,) pixels per frame
    assert (step - speed).abs().max() < 1.0  # the object turns a little, the centroid wobbles
    hidden = 0
    for seed in range(4):
        video = make_scene_video(n_frames=8, image_size=64, n_objects=3, seed=seed)
        ids = torch.arange(1, 4)[:, None, None, None]  # (3, 1, 1, 1)
        m = video.masks[None] == ids  # (3, T, H, W)
        iou = (m[:, 1:] & m[:, :-1]).sum((2, 3)) / (m[:, 1:] | m[:, :-1]).sum((2, 3))
        assert iou.min() > 0.5  # each object's mask overlaps the last frame's
        seen = m.sum((2, 3)).float()  # (3, T)
        hidden += int((seen.amin(1) < 0.95 * seen.amax(1)).sum())
    assert hidden >= 2  # objects pass in front of one another


def test_video_at_the_pixel_scale_of_small_scenes() -> None:
    """scene_side=32 in a 96-px video: objects as many pixels wide as in 32-px scenes."""
    style = SCENES_STYLES["plain"]
    wide = make_scene_video(n_frames=4, image_size=96, n_objects=3, seed=0, style="plain",
                            scene_side=32)
    same = make_scene_video(n_frames=4, image_size=96, n_objects=3, seed=0, style="plain")
    for video, side in ((wide, 32), (same, 96)):
        px = torch.stack([(video.masks[0] == k).sum() for k in (1, 2, 3)]).float()  # (3,)
        lo, hi = style.area_range[0] * side ** 2, style.area_range[1] * side ** 2
        # hidden parts only shrink an object; min_visible bounds how much
        assert (px <= 1.05 * hi).all() and (px >= style.min_visible * 0.95 * lo).all()
    assert (wide.masks[0] > 0).float().mean() < 0.5 * (same.masks[0] > 0).float().mean()
    with pytest.raises(ValueError, match="scene_side=128"):
        make_scene_video(image_size=96, scene_side=128)


def test_propagation_of_mask_features_is_exact() -> None:
    """Give every pixel a one-hot feature of its object: propagation then cannot go wrong, and
    the metrics must say so (J = F = 1) on the scene video."""
    video = make_scene_video(n_frames=6, image_size=32, n_objects=3, seed=1, speed=1.0)
    features = F.one_hot(video.masks, 4).float()  # (T, H, W, C): one pixel, one "patch"
    pred = propagate_mask(features, video.masks[0], n_labels=4, radius=6)  # (T, H, W)
    assert j_score(pred[1:], video.masks[1:]) == 1.0
    assert f_score(pred[1:], video.masks[1:]) == 1.0


def test_plot_and_bad_arguments(scenes32) -> None:
    fig = plot_scenes(scenes32.images, scenes32.instances, scenes32.labels, n_images=3)
    assert len(fig.axes) == 6
    matplotlib.pyplot.close(fig)
    with pytest.raises(ValueError, match="area_range"):
        ScenesStyle(area_range=(0.3, 0.1))
    with pytest.raises(ValueError, match="n_objects"):
        ScenesStyle(n_objects=(0, 2))
    with pytest.raises(ValueError, match="style='busy'"):
        make_scenes(4, style="busy")
    with pytest.raises(ValueError, match="image_size=8"):
        make_scenes(4, image_size=8)
    with pytest.raises(ValueError, match="n_objects=6"):
        make_scene_video(n_objects=6)
