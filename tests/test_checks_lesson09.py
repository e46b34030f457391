"""The lesson 09 checks accept correct answers and reject the mistakes the lesson warns about."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from minidino import checks
from minidino.checks import CheckFailed
from minidino.checks.lesson09_ibot import (
    reference_apply_mask_token,
    reference_block_mask,
    reference_ibot_loss,
)


def stub(*args: object) -> None:
    raise NotImplementedError("Exercise: not done yet")


# ------------------------------------------------------------------ Exercise 9.1
def make_block_mask(cap: bool = True, global_rng: bool = False) -> Callable[..., Tensor]:
    """A loop version of the block mask; each flag switches off one part of it."""

    def block_mask(h: int, w: int, n_target: int, generator: torch.Generator) -> Tensor:
        def rand() -> float:
            return float(torch.rand(1, generator=None if global_rng else generator))

        mask = torch.zeros(h, w, dtype=torch.bool)
        fails = 0
        while int(mask.sum()) < n_target and fails < 10:
            missing = n_target - int(mask.sum())
            area = 4 + (missing - 4) * rand()
            ratio = math.exp(math.log(0.3) + (math.log(1 / 0.3) - math.log(0.3)) * rand())
            bh, bw = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            top, left = int(rand() * (h - bh + 1)), int(rand() * (w - bw + 1))
            block = torch.zeros(h, w, dtype=torch.bool)
            block[top:top + bh, left:left + bw] = True
            new = int((block & ~mask).sum())
            if 0 < bh < h and 0 < bw < w and new > 0 and (new <= missing or not cap):
                mask |= block
                fails = 0
            else:
                fails += 1
        return mask

    return block_mask


def scattered(h: int, w: int, n_target: int, generator: torch.Generator) -> Tensor:
    chosen = torch.randperm(h * w, generator=generator)[:n_target]  # (n_target,)
    mask = torch.zeros(h * w, dtype=torch.bool)
    mask[chosen] = True
    return mask.view(h, w)


def one_block_too_many(h: int, w: int, n_target: int, generator: torch.Generator) -> Tensor:
    mask = reference_block_mask(h, w, n_target, generator)  # (h, w)
    if n_target:
        mask[: min(2, h), : min(2, w)] = True  # one more 2 x 2 block, past the target
    return mask


@pytest.mark.parametrize("right", [reference_block_mask, make_block_mask()])
def test_block_mask_correct_versions_pass(one_thread: None, right: Callable) -> None:
    assert checks.block_mask(right) is right


def test_block_mask_stub_falls_back_to_the_reference(one_thread: None) -> None:
    assert checks.block_mask(stub) is reference_block_mask


@pytest.mark.parametrize("wrong", [
    scattered,  # single patches, not blocks
    make_block_mask(cap=False),  # a block may go past the target
    one_block_too_many,
    make_block_mask(global_rng=True),  # ignores the generator: not reproducible
    lambda h, w, n, g: torch.zeros(h, w, dtype=torch.bool),  # nothing masked
])
def test_block_mask_mistakes_are_rejected(one_thread: None, wrong: Callable) -> None:
    with pytest.raises(CheckFailed):
        checks.block_mask(wrong)


def test_block_mask_scattered_names_the_blocks(one_thread: None) -> None:
    with pytest.raises(CheckFailed, match="rectangles"):
        checks.block_mask(scattered)


# ------------------------------------------------------------------ Exercise 9.2
def make_ibot_loss(all_tokens: bool = False, per_image: bool = True, detach: bool = True,
                   center: bool = True, by_masked_images: bool = False) -> Callable[..., Tensor]:
    """iBOT's own way: a loss at every token, zeroed where unmasked; flags switch on mistakes."""

    def ibot_loss(student_patches: Tensor, teacher_patches: Tensor, masks: Tensor,
                  center_: Tensor, student_temp: float, teacher_temp: float) -> Tensor:
        t = teacher_patches.detach() if detach else teacher_patches  # (B, N, K)
        p_t = F.softmax(((t - center_) if center else t) / teacher_temp, dim=-1)  # (B, N, K)
        log_p_s = F.log_softmax(student_patches / student_temp, dim=-1)  # (B, N, K)
        ce = -(p_t * log_p_s).sum(-1)  # (B, N)
        if all_tokens:
            return ce.mean()
        m = masks.float()  # (B, N)
        if not per_image:
            return (ce * m).sum() / m.sum().clamp(min=1)
        per = (ce * m).sum(-1) / m.sum(-1).clamp(min=1)  # (B,)
        if by_masked_images:
            return per.sum() / masks.any(-1).sum().clamp(min=1)
        return per.mean()

    return ibot_loss


def test_ibot_loss_reference_passes() -> None:
    assert checks.ibot_loss(reference_ibot_loss) is reference_ibot_loss


def test_ibot_loss_over_every_token_then_masked_passes() -> None:
    right = make_ibot_loss()
    assert checks.ibot_loss(right) is right


def test_ibot_loss_stub_falls_back_to_the_reference() -> None:
    assert checks.ibot_loss(stub) is reference_ibot_loss


@pytest.mark.parametrize("mistake", [
    {"all_tokens": True},  # the loss over every token, masked or not
    {"per_image": False},  # one mean over all masked tokens of the batch
    {"by_masked_images": True},  # images without a mask left out of the mean
    {"detach": False},  # no stop-gradient on the teacher
    {"center": False},  # the center not subtracted
])
def test_ibot_loss_mistakes_are_rejected(mistake: dict) -> None:
    with pytest.raises(CheckFailed):
        checks.ibot_loss(make_ibot_loss(**mistake))


def test_ibot_loss_without_detach_names_the_stop_gradient() -> None:
    with pytest.raises(CheckFailed, match="detach"):
        checks.ibot_loss(make_ibot_loss(detach=False))


# ------------------------------------------------------------------ Exercise 9.3
def mask_token_by_multiplying(patch_tokens: Tensor, masks: Tensor, mask_token: Tensor,
                              pos_embed: Tensor) -> Tensor:
    m = masks[..., None].to(patch_tokens.dtype)  # (B, N, 1)
    return patch_tokens * (1 - m) + mask_token * m + pos_embed  # (B, N, D)


def test_mask_token_correct_versions_pass() -> None:
    for right in (reference_apply_mask_token, mask_token_by_multiplying):
        assert checks.apply_mask_token(right) is right


def test_mask_token_stub_falls_back_to_the_reference() -> None:
    assert checks.apply_mask_token(stub) is reference_apply_mask_token


@pytest.mark.parametrize("wrong", [
    # adds the mask token instead of replacing the embedding
    lambda x, m, tok, pos: x + m[..., None] * tok + pos,
    # replaces after the position embedding: masked patches lose their position
    lambda x, m, tok, pos: torch.where(m[..., None], tok, x + pos),
    # masks the patches that should stay visible
    lambda x, m, tok, pos: torch.where(~m[..., None], tok, x) + pos,
    # a frozen mask token: no gradient reaches it
    lambda x, m, tok, pos: torch.where(m[..., None], tok.detach(), x) + pos,
])
def test_mask_token_mistakes_are_rejected(wrong: Callable) -> None:
    with pytest.raises(CheckFailed):
        checks.apply_mask_token(wrong)
