"""Label propagation and the J / F scores: constructed cases with known answers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from minidino.pretrained import load_pretrained
from minidino.propagation import (
    _boundary,
    evaluate_propagation,
    f_score,
    j_score,
    mask_to_patches,
    patch_features,
    propagate_labels,
    propagate_mask,
    stretch_labels,
)
from minidino.video import make_video
from minidino.vit import vit_nano


def _box(H: int, W: int, rows: slice, cols: slice, value: int = 1) -> torch.Tensor:
    mask = torch.zeros(H, W, dtype=torch.int64)
    mask[rows, cols] = value
    return mask


# ---------------------------------------------------------------- J
def test_j_known_answers() -> None:
    gt = _box(8, 8, slice(0, 4), slice(0, 4))  # 16 pixels
    assert j_score(gt, gt) == 1.0
    half = _box(8, 8, slice(0, 4), slice(2, 6))  # shares 8 of 16: IoU 8 / 24
    assert j_score(half, gt) == pytest.approx(1 / 3)
    assert j_score(_box(8, 8, slice(4, 8), slice(4, 8)), gt) == 0.0
    # two objects, one perfect and one half-overlapping: their mean
    gt2 = gt + _box(8, 8, slice(5, 8), slice(0, 8), 2)
    pred2 = half + _box(8, 8, slice(5, 8), slice(0, 8), 2)
    assert j_score(pred2, gt2) == pytest.approx((1 / 3 + 1) / 2)


def test_j_skips_objects_absent_from_both_and_averages_frames() -> None:
    one, two = _box(8, 8, slice(0, 4), slice(0, 4)), _box(8, 8, slice(6, 8), slice(6, 8), 2)
    gt = torch.stack([one + two, one])  # object 2 only in frame 0
    pred = torch.stack([gt[0], _box(8, 8, slice(0, 4), slice(2, 6))])
    assert j_score(pred, gt) == pytest.approx((1.0 + 1 / 3) / 2)  # frame 1 scores object 1 only
    pred[1, 7, 7] = 2  # an object predicted where there is none scores 0
    assert j_score(pred, gt) == pytest.approx((1.0 + (1 / 3 + 0) / 2) / 2)
    empty = torch.zeros(2, 8, 8, dtype=torch.int64)
    assert math.isnan(j_score(empty, empty))  # nothing to score
    with pytest.raises(ValueError, match="same shape"):
        j_score(empty, empty[0])


# ---------------------------------------------------------------- F
def _f_by_distances(pred: torch.Tensor, gt: torch.Tensor, r: int) -> float:
    """One object, one frame: boundary pixels matched by their Chebyshev distance (cdist)."""
    pb, gb = _boundary(pred == 1).nonzero().float(), _boundary(gt == 1).nonzero().float()
    d = torch.cdist(pb, gb, p=math.inf)  # (n_pred, n_gt)
    precision = (d.min(1).values <= r).float().mean().item()
    recall = (d.min(0).values <= r).float().mean().item()
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def test_f_known_answers() -> None:
    gt = _box(30, 30, slice(10, 20), slice(10, 20))  # a 10 x 10 square: 36 boundary pixels
    assert _boundary(gt == 1).sum() == 36
    assert f_score(gt, gt, tolerance=1) == 1.0
    assert f_score(gt.roll(1, 1), gt, tolerance=1) == 1.0  # one pixel off: within tolerance
    # 5 pixels right: 2 x 6 pixels of the top and bottom rows and 2 of the near column are within
    # one pixel of the other square's boundary, in both directions: F = 14 / 36
    assert f_score(gt.roll(5, 1), gt, tolerance=1) == pytest.approx(14 / 36)
    full = torch.ones(30, 30, dtype=torch.int64)  # fills the frame: no edge in either
    assert f_score(full, full) == 1.0 and f_score(full, gt) == 0.0


@pytest.mark.parametrize("seed, tolerance, r", [(0, 1, 1), (1, 2, 2), (2, 0.008, 1), (3, 0.07, 3)])
def test_f_matches_brute_force(seed: int, tolerance: float, r: int) -> None:
    """tolerance >= 1 is in pixels; below 1 a fraction of the diagonal (34 pixels), rounded up."""
    g = torch.Generator().manual_seed(seed)
    blobs = F.interpolate(torch.randn(2, 1, 5, 5, generator=g), size=(24, 24), mode="bilinear")
    pred, gt = (blobs[:, 0] > 0.2).long()  # two random blobby masks (24, 24)
    assert f_score(pred, gt, tolerance) == pytest.approx(_f_by_distances(pred, gt, r), abs=1e-6)


# ---------------------------------------------------------------- propagation
def test_mask_to_patches_is_area_share() -> None:
    mask = _box(8, 8, slice(0, 2), slice(0, 8))  # top quarter: half of each top patch
    soft = mask_to_patches(mask, 2, (2, 2))  # (2, 2, 2)
    assert torch.allclose(soft.sum(0), torch.ones(2, 2))
    assert torch.allclose(soft[1], torch.tensor([[0.5, 0.5], [0.0, 0.0]]))


@pytest.mark.parametrize("value, n_labels", [(0, 1), (0, 3), (1, 2), (2, 3)])
def test_constant_mask_propagates_exactly(value: int, n_labels: int) -> None:
    features = F.normalize(torch.randn(6, 3, 4, 8, generator=torch.Generator().manual_seed(0)),
                           dim=-1)  # (T, h, w, D) random
    first = torch.full((12, 16), value, dtype=torch.int64)  # patches of 4 pixels
    pred = propagate_mask(features, first, n_labels=n_labels, n_context=2, radius=1)
    assert pred.shape == (6, 12, 16) and (pred == value).all()


@pytest.mark.parametrize("radius, n_context", [(None, 7), (1, 2), (0, 0)])
def test_identity_features_reproduce_the_first_mask(radius: int | None, n_context: int) -> None:
    h, w, p, T = 4, 5, 4, 5
    identity = torch.eye(h * w).reshape(1, h, w, h * w).expand(T, -1, -1, -1)  # (T, h, w, hw)
    g = torch.Generator().manual_seed(1)
    patch_ids = torch.randint(0, 3, (h, w), generator=g)  # one label per patch
    first = patch_ids.repeat_interleave(p, 0).repeat_interleave(p, 1)  # (h p, w p)
    pred = propagate_mask(identity, first, n_context=n_context, radius=radius, topk=5)
    assert torch.equal(pred[0], first)
    # every later frame gets the first frame's labels back; upsampling them bilinearly rounds
    # the corners where three patches of another label meet, exactly as for the first frame
    soft = mask_to_patches(first, 3, (h, w))[None]  # (1, 3, h, w)
    upsampled = F.interpolate(soft, size=first.shape, mode="bilinear").argmax(1)[0]  # (H, W)
    assert (upsampled == first).float().mean() > 0.9
    assert torch.equal(pred[1:], upsampled.expand(T - 1, -1, -1))


def _dino_norm_mask(mask: torch.Tensor) -> torch.Tensor:
    """DINO's norm_mask (eval_video_segmentation.py), transcribed: (C, H, W), label by label."""
    mask = mask.clone()
    for c in range(mask.shape[0]):
        m = mask[c]
        if m.max() > 0:
            m = m - m.min()
            mask[c] = m / m.max()
    return mask


def test_stretch_labels_is_dinos_norm_mask() -> None:
    scores = torch.rand(3, 4, 10, 12, generator=torch.Generator().manual_seed(0))  # (T, C, H, W)
    scores[1, 2] = 0.0  # a label absent from a frame: DINO leaves it, and so do we
    expected = torch.stack([_dino_norm_mask(frame) for frame in scores])
    assert torch.allclose(stretch_labels(scores), expected, atol=1e-6)
    constant = torch.full((1, 2, 4, 4), 0.5)  # constant maps are kept (DINO would divide by 0)
    assert torch.equal(stretch_labels(constant), constant)


def test_stretch_finds_a_small_object_that_never_beats_the_background() -> None:
    """Features that copy frame 0's soft labels to frame 1, where the object holds a quarter of
    each of its two patches: the plain arg max loses it; stretched, it is found in those
    patches, all of its pixels among them."""
    h = w = 4
    identity = torch.eye(h * w).reshape(1, h, w, h * w).expand(2, -1, -1, -1)  # (2, h, w, hw)
    first = torch.zeros(16, 16, dtype=torch.int64)
    first[6:8, 6:10] = 1  # 8 pixels, 4 in each of the patches (1, 1) and (1, 2)
    soft = mask_to_patches(first, 2, (h, w))  # the object's share: 0.25 in two patches
    assert soft[1].max() < 0.5
    plain = propagate_mask(identity, first, stretch=False, topk=1)
    stretched = propagate_mask(identity, first, topk=1)
    assert (plain[1] == 1).sum() == 0  # lost
    found = stretched[1] == 1
    patches = torch.zeros_like(found)
    patches[4:8, 4:12] = True  # the two patches that hold the object
    assert (found[first == 1]).all() and not (found & ~patches).any()


def test_window_excludes_a_better_match_outside_it() -> None:
    """Frame 1, patch 0 looks most like frame 0's patch 5 (label 2), 5 patches away, and less
    like frame 0's patch 0 (label 1). Unrestricted, it copies label 2; with radius 1, label 1."""
    w = 6
    frame0 = torch.eye(w)  # (w, D): every patch its own direction
    frame1 = torch.eye(w)
    frame1[0] = F.normalize(torch.eye(w)[5] + 0.5 * torch.eye(w)[0], dim=0)  # cos 0.89 and 0.45
    features = torch.stack([frame0, frame1])[:, None]  # (2, 1, w, D)
    first = F.one_hot(torch.tensor([1, 0, 0, 0, 0, 2]), 3).T.float()[:, None]  # (3, 1, w)
    free = propagate_labels(features, first, topk=1, radius=None)  # (2, 3, 1, w)
    assert free[1, :, 0, 0].argmax() == 2
    near = propagate_labels(features, first, topk=1, radius=1)
    assert torch.equal(near[1, :, 0, 0], torch.tensor([0.0, 1.0, 0.0]))
    assert torch.equal(near[1, :, 0, 1:], first[:, 0, 1:])  # the other patches match themselves
    chunked = propagate_labels(features, first, topk=1, radius=1, chunk=2)
    assert torch.equal(chunked, near)


def test_bad_inputs() -> None:
    features = torch.randn(3, 2, 2, 4)
    with pytest.raises(ValueError, match="first_labels"):
        propagate_labels(features, torch.ones(2, 3, 3))
    with pytest.raises(ValueError, match="features"):
        propagate_labels(torch.randn(3, 4, 4), torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match="first_mask"):
        propagate_mask(features, torch.ones(8, 8))  # float, not ids
    with pytest.raises(ValueError, match="frames"):
        patch_features(vit_nano(), torch.zeros(2, 1, 32, 32, dtype=torch.uint8))


# ---------------------------------------------------------------- a real backbone
def test_pretrained_backbone_on_the_built_in_video(one_thread) -> None:
    video = make_video(n_frames=6, seed=0)
    pretrained = load_pretrained()
    features = patch_features(pretrained, video.frames)
    assert features.shape == (6, 12, 12, pretrained.embed_dim)
    assert torch.allclose(features.norm(dim=-1), torch.ones(6, 12, 12), atol=1e-5)
    scores = evaluate_propagation(pretrained, video.frames, video.masks)
    for name in ("J", "F", "J&F"):
        assert math.isfinite(scores[name]) and 0.0 <= scores[name] <= 1.0, (name, scores)
    odd = make_video(n_frames=3, image_size=52, seed=1)  # 52 is no multiple of the patch (8)
    assert math.isfinite(evaluate_propagation(pretrained, odd.frames, odd.masks)["J"])
