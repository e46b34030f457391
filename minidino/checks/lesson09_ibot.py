"""Checks for lesson 09: a block mask for one image, the iBOT patch loss, the mask token."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from minidino.checks._core import expect, expect_close, fail, run_check
from minidino.ibot import block_masks, ibot_patch_loss
from minidino.vit import VisionTransformer

__all__ = ["block_mask", "ibot_loss", "apply_mask_token"]

EX91 = "Exercise 9.1 (block_mask)"
EX92 = "Exercise 9.2 (ibot_loss)"
EX93 = "Exercise 9.3 (apply_mask_token)"


def reference_block_mask(h: int, w: int, n_target: int, generator: torch.Generator) -> Tensor:
    """A block-wise mask of one h x w grid with at most n_target patches masked: (h, w) bool.

    minidino's `block_masks` for a single image whose target ratio is n_target / (h * w).
    """
    ratio = n_target / (h * w)
    return block_masks(1, (h, w), (ratio, ratio), mask_prob=1.0, generator=generator)[0]


def reference_ibot_loss(student_patches: Tensor, teacher_patches: Tensor, masks: Tensor,
                        center: Tensor, student_temp: float, teacher_temp: float) -> Tensor:
    """The iBOT patch loss from the logits of every patch token.

    student_patches, teacher_patches: (B, N, K); masks: (B, N) bool; center: (1, K) -> scalar.
    Teacher: softmax((logits - center) / teacher_temp), no gradient; each image's masked tokens
    are averaged, then the B images (an image without a mask adds 0).
    """
    teacher_probs = F.softmax((teacher_patches[masks].detach() - center) / teacher_temp,
                              dim=-1)  # (M, K)
    return ibot_patch_loss(student_patches[masks], teacher_probs, masks, student_temp)


def reference_apply_mask_token(patch_tokens: Tensor, masks: Tensor, mask_token: Tensor,
                               pos_embed: Tensor) -> Tensor:
    """patch_tokens (B, N, D), masks (B, N) bool, mask_token (1, D), pos_embed (1, N, D)
    -> (B, N, D): the mask token replaces each masked embedding, then positions are added."""
    tokens = torch.where(masks[..., None], mask_token, patch_tokens)  # (B, N, D)
    return tokens + pos_embed  # (B, N, D)


# ------------------------------------------------------------------ Exercise 9.1
def _neighbour_share(masks: list[Tensor]) -> float:
    """Share of the masked patches (over all masks) with a masked neighbour left/right/up/down."""
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    with_neighbour, total = 0, 0
    for m in masks:
        near = F.conv2d(m.float()[None, None], kernel, padding=1)[0, 0]  # (h, w)
        with_neighbour += int(((near > 0) & m).sum())
        total += int(m.sum())
    return with_neighbour / max(total, 1)


def _block_trials(fn: Callable[..., Tensor]) -> int:
    cases = [(8, 8, 12), (8, 8, 32), (14, 14, 40), (6, 10, 15), (4, 4, 8), (8, 8, 4), (5, 7, 0)]
    n_seeds = 20
    for h, w, n_target in cases:
        case = f"h={h}, w={w}, n_target={n_target}"
        slack = max(2, n_target // 10)
        masks = []
        for seed in range(n_seeds):
            torch.manual_seed(1000 + seed)  # the global generator must not matter
            m = fn(h, w, n_target, torch.Generator().manual_seed(seed))
            if not isinstance(m, Tensor) or m.dtype != torch.bool or tuple(m.shape) != (h, w):
                got = (f"{m.dtype} {tuple(m.shape)}" if isinstance(m, Tensor)
                       else type(m).__name__)
                fail(EX91, case, f"expected a bool tensor of shape ({h}, {w}), got {got}")
            count = int(m.sum())
            expect(EX91, f"{case}, seed {seed}", count <= n_target,
                   f"{count} patches masked, more than n_target={n_target}",
                   "keep a block only if the patches it adds (those not masked yet) are no more "
                   "than the patches still missing; otherwise throw it away and draw again")
            expect(EX91, f"{case}, seed {seed}", count >= n_target - slack,
                   f"only {count} patches masked, the target is {n_target}",
                   "keep drawing blocks while fewer than n_target patches are masked; give up "
                   "only after several failed draws in a row (10, say)")
            masks.append(m)
        torch.manual_seed(0)
        again = fn(h, w, n_target, torch.Generator().manual_seed(0))
        expect(EX91, case + ", seed 0 twice", torch.equal(again, masks[0]),
               "the same seed gave two different masks",
               "draw every random number from `generator` (torch.rand(..., generator=generator),"
               " torch.randint(..., generator=generator)), never from torch's global generator "
               "or Python's random module")
        if n_target >= 4:
            expect(EX91, case, any(not torch.equal(m, masks[0]) for m in masks[1:]),
                   f"{n_seeds} seeds all gave the same mask", "the blocks must be random: "
                   "their area, aspect ratio and place come from the generator")
        if 0 < n_target <= h * w // 4:
            share = _neighbour_share(masks)
            expect(EX91, case, share >= 0.9,
                   f"only {share:.0%} of the masked patches touch another masked patch",
                   "mask rectangles of several patches (area >= 4, aspect ratio in (0.3, 1/0.3))"
                   ", not patches picked one at a time: a scattered patch is easy to fill in "
                   "from its visible neighbours")
    return len(cases)


def block_mask(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Check Exercise 9.1: fn(h, w, n_target, generator) -> (h, w) bool mask made of blocks."""
    return run_check(EX91, fn, reference_block_mask, _block_trials)


# ------------------------------------------------------------------ Exercise 9.2
def _loss_cases() -> list[tuple[str, dict[str, Any]]]:
    g = torch.Generator().manual_seed(9)
    cases = []
    for B, N, K, s_temp, t_temp in ((4, 16, 32, 0.1, 0.04), (6, 9, 8, 0.1, 0.07),
                                     (3, 25, 64, 0.2, 0.04)):
        masks = torch.rand(B, N, generator=g) < torch.linspace(0.1, 0.6, B)[:, None]  # (B, N)
        masks[0] = False  # an image without a mask
        masks[1, :3] = True  # and one with a few masked tokens at least
        cases.append((f"B={B}, N={N}, K={K}, student_temp={s_temp}, teacher_temp={t_temp}, "
                      f"{int(masks.sum(1).ne(0).sum())} of {B} images masked, random center",
                      dict(student_patches=torch.randn(B, N, K, generator=g),
                           teacher_patches=torch.randn(B, N, K, generator=g),
                           masks=masks, center=torch.randn(1, K, generator=g),
                           student_temp=s_temp, teacher_temp=t_temp)))
    B, N, K = 2, 4, 6
    cases.append(("no token masked at all (the loss is 0)", dict(
        student_patches=torch.randn(B, N, K, generator=g),
        teacher_patches=torch.randn(B, N, K, generator=g),
        masks=torch.zeros(B, N, dtype=torch.bool), center=torch.zeros(1, K),
        student_temp=0.1, teacher_temp=0.04)))
    return cases


def _loss_trials(fn: Callable[..., Tensor]) -> int:
    cases = _loss_cases()
    for case, kw in cases:
        student = kw["student_patches"].clone().requires_grad_(True)
        teacher = kw["teacher_patches"].clone().requires_grad_(True)
        out = fn(student, teacher, kw["masks"].clone(), kw["center"].clone(),
                 kw["student_temp"], kw["teacher_temp"])
        s_ref = kw["student_patches"].clone().requires_grad_(True)
        want = reference_ibot_loss(s_ref, kw["teacher_patches"], kw["masks"], kw["center"],
                                   kw["student_temp"], kw["teacher_temp"])
        expect_close(EX92, case, out, want,
                     "only the masked tokens count: select them with masks. Teacher: "
                     "softmax((teacher - center) / teacher_temp), center subtracted before the "
                     "softmax; student: log_softmax(student / student_temp). Average the "
                     "cross-entropy over each image's masked tokens first, then over all B "
                     "images (an image with no mask adds 0 but still counts in B)",
                     atol=1e-4, rtol=1e-4)
        expect(EX92, case, out.requires_grad or not kw["masks"].any(),
               "the loss carries no gradient to student_patches",
               "compute the loss from student_patches itself, without .detach()")
        if not out.requires_grad:
            continue
        out.backward()
        want.backward()
        expect(EX92, case, teacher.grad is None or not teacher.grad.any(),
               "after loss.backward(), teacher_patches received a gradient",
               "the teacher's patch tokens are targets: use teacher_patches.detach() "
               "(stop-gradient)")
        expect(EX92, case, student.grad is not None,
               "after loss.backward(), student_patches has no gradient")
        expect_close(EX92, case + " (gradient w.r.t. student_patches)", student.grad, s_ref.grad,
                     "the gradient differs although the value may match: unmasked tokens must "
                     "get no gradient", atol=1e-4, rtol=1e-3)
    return len(cases)


def ibot_loss(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Check Exercise 9.2: fn(student_patches (B, N, K), teacher_patches (B, N, K),
    masks (B, N), center (1, K), student_temp, teacher_temp) -> scalar."""
    return run_check(EX92, fn, reference_ibot_loss, _loss_trials)


# ------------------------------------------------------------------ Exercise 9.3
def _token_trials(fn: Callable[..., Tensor]) -> int:
    g = torch.Generator().manual_seed(93)
    torch.manual_seed(93)
    vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=12, depth=1, num_heads=2,
                            mask_token=True)  # (1, D) mask token, 4 x 4 patches
    with torch.no_grad():
        vit.mask_token.normal_(generator=g)  # starts at 0: adding would look like replacing
    B, N = 3, 16
    random_masks = torch.rand(B, N, generator=g) < 0.4  # (B, N)
    random_masks[0, 0] = True
    cases = [("random masks", random_masks),
             ("no patch masked", torch.zeros(B, N, dtype=torch.bool)),
             ("every patch masked", torch.ones(B, N, dtype=torch.bool))]
    for case, masks in cases:
        images = torch.randn(B, 3, 16, 16, generator=g)  # (B, 3, H, W)
        with torch.no_grad():
            patch_tokens = vit.patch_embed(images)  # (B, N, D)
            pos_embed = vit.pos_embed[:, 1:].clone()  # (1, N, D)
            want = vit.prepare_tokens(images, masks)[:, 1:]  # (B, N, D)
        token = vit.mask_token.detach().clone().requires_grad_(True)  # (1, D)
        out = fn(patch_tokens.clone(), masks.clone(), token, pos_embed.clone())
        expect_close(EX93, case + " (compared with VisionTransformer.prepare_tokens)", out, want,
                     "where masks is True the mask token REPLACES the patch embedding (do not "
                     "add it); then the position embedding is added to every token, masked or "
                     "not, so the model still knows where each masked patch was",
                     atol=1e-5, rtol=1e-4)
        if masks.any():
            if out.requires_grad:
                out.sum().backward()
            expect(EX93, case, token.grad is not None and bool(token.grad.abs().sum() > 0),
                   "the mask token gets no gradient", "the mask token is learned: use it "
                   "as given, without .detach() or torch.no_grad()")
    return len(cases)


def apply_mask_token(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Check Exercise 9.3: fn(patch_tokens (B, N, D), masks (B, N), mask_token (1, D),
    pos_embed (1, N, D)) -> (B, N, D)."""
    return run_check(EX93, fn, reference_apply_mask_token, _token_trials)
