"""The lesson 08 checks accept the reference, fall back on stubs and reject the usual mistakes."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from minidino import attention, checks
from minidino.checks import CheckFailed


# ---------------------------------------------------------------- Exercise 8.1
def mass_mask_stub(attn: Tensor, keep: float = 0.6) -> Tensor:
    raise NotImplementedError("Exercise 8.1: the attention mass mask")


def mass_mask_by_hand(attn: Tensor, keep: float = 0.6) -> Tensor:
    """A learner's correct version: sort, cumulative share, cut value, compare."""
    values, _ = attn.sort(dim=-1, descending=True)  # (..., N)
    share = values.cumsum(-1) / attn.sum(-1, keepdim=True)  # (..., N)
    n_needed = (share < keep).sum(-1, keepdim=True)  # (..., 1)
    cut = values.gather(-1, n_needed.clamp(max=attn.shape[-1] - 1))  # (..., 1)
    return attn >= cut


def mass_mask_raw_threshold(attn: Tensor, keep: float = 0.6) -> Tensor:
    return attn >= keep  # thresholds the weights themselves, not their cumulative share


def mass_mask_lowest(attn: Tensor, keep: float = 0.6) -> Tensor:
    values, idx = attn.sort(dim=-1)  # ascending: the least attended patches go in first
    share = values.cumsum(-1) / attn.sum(-1, keepdim=True)
    kept = torch.cat([torch.ones_like(share[..., :1], dtype=torch.bool),
                      share[..., :-1] < keep], dim=-1)
    return torch.zeros_like(attn, dtype=torch.bool).scatter(-1, idx, kept)


def mass_mask_splits_ties(attn: Tensor, keep: float = 0.6) -> Tensor:
    values, idx = attn.sort(dim=-1, descending=True)
    share = values.cumsum(-1) / attn.sum(-1, keepdim=True)
    kept = torch.cat([torch.ones_like(share[..., :1], dtype=torch.bool),
                      share[..., :-1] < keep], dim=-1)  # exactly the patches needed, by rank
    return torch.zeros_like(attn, dtype=torch.bool).scatter(-1, idx, kept)


def mass_mask_unnormalised(attn: Tensor, keep: float = 0.6) -> Tensor:
    values, _ = attn.sort(dim=-1, descending=True)
    n_needed = (values.cumsum(-1) < keep).sum(-1, keepdim=True)  # forgets to divide by the sum
    cut = values.gather(-1, n_needed.clamp(max=attn.shape[-1] - 1))
    return attn >= cut


def mass_mask_stops_short(attn: Tensor, keep: float = 0.6) -> Tensor:
    values, _ = attn.sort(dim=-1, descending=True)
    share = values.cumsum(-1) / attn.sum(-1, keepdim=True)
    cut = values.gather(-1, ((share < keep).sum(-1, keepdim=True) - 1).clamp(min=0))
    return attn >= cut  # leaves out the patch that crosses keep


def test_mass_mask_reference_and_correct_version_pass() -> None:
    reference = attention.attention_mass_mask
    assert checks.attention_mass_mask(reference) is reference
    assert checks.attention_mass_mask(mass_mask_by_hand) is mass_mask_by_hand


def test_mass_mask_stub_falls_back_to_reference() -> None:
    assert checks.attention_mass_mask(mass_mask_stub) is attention.attention_mass_mask


@pytest.mark.parametrize("wrong, words", [
    (mass_mask_raw_threshold, "less than keep"),
    (mass_mask_lowest, "less attention is kept"),
    (mass_mask_splits_ties, "same attention are split"),
    (mass_mask_unnormalised, "are enough"),
    (mass_mask_stops_short, "less than keep"),
])
def test_mass_mask_rejects_typical_mistakes(wrong, words: str) -> None:
    with pytest.raises(CheckFailed, match=words):
        checks.attention_mass_mask(wrong)


def test_mass_mask_reference_properties() -> None:
    attn = torch.tensor([[0.3, 0.2, 0.2, 0.2, 0.1], [0.05, 0.05, 0.8, 0.05, 0.05]])
    mask = attention.attention_mass_mask(attn, 0.6)
    assert mask.tolist() == [[True, True, True, True, False], [False, False, True, False, False]]
    assert attention.attention_mass_mask(torch.full((16,), 2.0), 0.6).all()  # uniform: all tied
    with pytest.raises(ValueError):
        attention.attention_mass_mask(attn, 0.0)


# ---------------------------------------------------------------- Exercise 8.2
def iou_stub(pred: Tensor, target: Tensor) -> Tensor:
    raise NotImplementedError("Exercise 8.2: mask IoU")


def iou_by_hand(pred: Tensor, target: Tensor) -> Tensor:
    inter = (pred & target).sum(-1).float()
    union = (pred | target).sum(-1).float()
    return torch.where(union == 0, torch.ones_like(union), inter / union)


def iou_swapped(pred: Tensor, target: Tensor) -> Tensor:
    inter = (pred & target).sum(-1).float()
    union = (pred | target).sum(-1).float()
    return torch.where(inter == 0, torch.ones_like(union), union / inter)


def iou_nan_when_empty(pred: Tensor, target: Tensor) -> Tensor:
    return (pred & target).sum(-1).float() / (pred | target).sum(-1).float()


def iou_zero_when_empty(pred: Tensor, target: Tensor) -> Tensor:
    inter = (pred & target).sum(-1).float()
    return inter / (pred | target).sum(-1).float().clamp(min=1)


def iou_over_everything(pred: Tensor, target: Tensor) -> Tensor:
    return (pred & target).sum().float() / (pred | target).sum().float().clamp(min=1)


def test_iou_reference_and_correct_version_pass() -> None:
    assert checks.mask_iou(attention.mask_iou) is attention.mask_iou
    assert checks.mask_iou(iou_by_hand) is iou_by_hand


def test_iou_stub_falls_back_to_reference() -> None:
    assert checks.mask_iou(iou_stub) is attention.mask_iou


@pytest.mark.parametrize("wrong, words", [
    (iou_swapped, "outside \\[0, 1\\]"),
    (iou_nan_when_empty, "NaN"),
    (iou_zero_when_empty, "two empty masks"),
    (iou_over_everything, "shape"),
])
def test_iou_rejects_typical_mistakes(wrong, words: str) -> None:
    with pytest.raises(CheckFailed, match=words):
        checks.mask_iou(wrong)


def test_iou_reference_values() -> None:
    pred = torch.tensor([[True, True, False, False], [False, False, False, False]])
    target = torch.tensor([True, False, True, False])
    assert attention.mask_iou(pred, target).tolist() == pytest.approx([1 / 3, 0.0])
    empty = torch.zeros(4, dtype=torch.bool)
    assert attention.mask_iou(empty, empty).item() == 1.0


def test_patch_mask_iou_counts_each_patch_as_its_pixels() -> None:
    # a 2 x 2 grid over a 4 x 4 image: the left column of patches against an object that fills
    # the top-left patch and one more pixel: intersection 4, union 8 + 1 = 9
    keep = torch.tensor([[True, False], [True, False]]).view(1, 1, 2, 2)
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, :2, :2] = True
    masks[0, 0, 3] = True
    assert attention.patch_mask_iou(keep, masks).tolist() == [[pytest.approx(4 / 9)]]
    both = torch.cat([keep, ~keep], 1)  # (1, 2, 2, 2): two masks of the same image
    assert attention.patch_mask_iou(both, masks).shape == (1, 2)
    assert attention.patch_mask_iou(both, masks)[0, 1] == pytest.approx(1 / 12)  # 1 of 8 + 4


def test_grid_iou_ceiling_on_constructed_masks() -> None:
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, :2, :] = True  # the top row of patches exactly: a patch mask matches it
    masks[1, :2, :2] = True  # the top-left patch and one more pixel, as above: keeping only
    masks[1, 0, 3] = True  # that patch scores 4 / 5; adding the top-right one 5 / 8
    ceiling = attention.grid_iou_ceiling(masks, 2)  # the third mask is empty: IoU 1 by convention
    assert ceiling.tolist() == [1.0, pytest.approx(4 / 5), 1.0]


def test_enlarge_keeps_masks_blocky_and_flat_images_flat() -> None:
    masks = torch.tensor([[[True, False], [False, True]]])  # (1, 2, 2)
    images = torch.full((1, 3, 2, 2), 77, dtype=torch.uint8)
    big, big_masks = attention.enlarge(images, masks, 4)
    assert big.dtype == torch.uint8 and bool((big == 77).all())
    assert big_masks.dtype == torch.bool
    assert torch.equal(big_masks[0], masks[0].repeat_interleave(2, 0).repeat_interleave(2, 1))


def test_grid_iou_ceiling_beats_every_patch_mask() -> None:
    """On random masks of a 3 x 3 grid, the ceiling equals the best of all 512 patch sets."""
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(20, 6, 6, generator=g) < 0.3
    subsets = (torch.arange(512)[:, None] >> torch.arange(9)) & 1  # (512, 9) every patch set
    keep = subsets.bool().reshape(1, 512, 3, 3).expand(20, 512, 3, 3)
    best = attention.patch_mask_iou(keep, masks).amax(1)  # (20,)
    assert torch.allclose(attention.grid_iou_ceiling(masks, 2), best)
    with pytest.raises(ValueError, match="patches of 4 px"):
        attention.grid_iou_ceiling(masks, 4)
