"""Checks for lesson 08: masks that keep 60% of the attention, and their IoU with object masks.

References: `minidino.attention.attention_mass_mask` and `minidino.attention.mask_iou`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from minidino.attention import attention_mass_mask as _mass_mask_ref
from minidino.attention import mask_iou as _mask_iou_ref
from minidino.checks._core import expect, expect_close, run_check

__all__ = ["attention_mass_mask", "mask_iou"]

MassMaskFn = Callable[[Tensor, float], Tensor]
IoUFn = Callable[[Tensor, Tensor], Tensor]


def _mass_mask_cases() -> list[tuple[str, Tensor, float]]:
    """(case, attn (..., N), keep): softmax maps, unnormalised maps, peaks and ties."""
    g = torch.Generator().manual_seed(8)
    logits = lambda *shape: 2.0 * torch.randn(*shape, generator=g)  # noqa: E731
    return [
        ("3 heads x 16 patches, keep=0.6", logits(3, 16).softmax(-1), 0.6),
        ("3 heads x 64 patches, keep=0.6", logits(3, 64).softmax(-1), 0.6),
        ("a batch (B=2, h=3, N=16), keep=0.6", logits(2, 3, 16).softmax(-1), 0.6),
        ("3 heads x 16 patches, keep=0.3", logits(3, 16).softmax(-1), 0.3),
        ("3 heads x 16 patches, keep=0.9", logits(3, 16).softmax(-1), 0.9),
        ("weights summing to 0.7, not 1 (the CLS token's attention to itself left out)",
         0.7 * logits(3, 16).softmax(-1), 0.6),
        ("one patch holds 80% of the attention",
         torch.tensor([[0.8, 0.05, 0.05, 0.04, 0.03, 0.03]]), 0.6),
        ("uniform attention (every patch tied)", torch.full((2, 16), 1 / 16), 0.6),
        ("a tie at the cut: [0.3, 0.2, 0.2, 0.2, 0.1]",
         torch.tensor([[0.3, 0.2, 0.2, 0.2, 0.1], [0.1, 0.2, 0.3, 0.2, 0.2]]), 0.6),
    ]


def _mass_mask_trials(fn: MassMaskFn) -> int:
    exercise = "Exercise 8.1 (attention_mass_mask)"
    cases = _mass_mask_cases()
    for case, attn, keep in cases:
        out = fn(attn.clone(), keep)
        expected = _mass_mask_ref(attn, keep)  # (..., N)
        expect(exercise, case, isinstance(out, Tensor) and out.dtype == torch.bool,
               f"expected a bool tensor, got {getattr(out, 'dtype', type(out).__name__)}",
               "return a comparison such as `attn >= cut`, which is already bool")
        expect(exercise, case, tuple(out.shape) == tuple(attn.shape),
               f"shape {tuple(out.shape)}, expected {tuple(attn.shape)}",
               "one True/False per patch, same shape as attn; work along the last dim")
        share = (attn * out).sum(-1) / attn.sum(-1)  # (...,) share of attention kept
        expect(exercise, case, bool((share >= keep - 1e-5).all()),
               f"the kept patches hold only {share.min():.3f} of the attention, less than "
               f"keep={keep}",
               "keep adding patches until their share of the total reaches keep, including the "
               "patch that crosses it; thresholding the raw weights at keep is not the same")
        kept_min = torch.where(out, attn, torch.inf).min(-1).values  # (...,)
        dropped_max = torch.where(out, -torch.inf, attn).max(-1).values  # (...,)
        expect(exercise, case, bool((kept_min >= dropped_max).all()),
               "a patch with less attention is kept while one with more is dropped",
               "sort in descending order: the patches with the most attention go in first")
        tied = (kept_min == dropped_max).any().item()
        expect(exercise, case, not tied,
               "patches with the same attention are split: some kept, some dropped",
               "keep every patch whose weight equals the last one you needed, e.g. find the "
               "smallest kept weight `cut` and return `attn >= cut`")
        expect(exercise, case, int(out.sum()) <= int(expected.sum()),
               f"{int(out.sum())} patches kept in all rows together, where "
               f"{int(expected.sum())} are enough for each row to hold keep",
               "compare keep with the cumulative share of the TOTAL attention (divide by its "
               "sum: the weights over patches need not add up to 1), and stop at the first "
               "patch that reaches it")
        expect_close(exercise, case, out, expected)
    return len(cases)


def attention_mass_mask(fn: MassMaskFn) -> MassMaskFn:
    """Check Exercise 8.1 against `minidino.attention.attention_mass_mask`."""
    return run_check("Exercise 8.1 (attention_mass_mask)", fn, _mass_mask_ref, _mass_mask_trials)


def _iou_cases() -> list[tuple[str, Tensor, Tensor]]:
    """(case, pred, target): random masks per head, broadcasting, and empty masks."""
    g = torch.Generator().manual_seed(80)
    rand_mask = lambda *shape, p=0.4: torch.rand(*shape, generator=g) < p  # noqa: E731
    a = rand_mask(4, 64)
    return [
        ("4 heads x 64 patches against 4 targets", a, rand_mask(4, 64, p=0.3)),
        ("3 heads (3, 256) against one target (256,)", rand_mask(3, 256), rand_mask(256)),
        ("a batch (B=5, h=3, N=64) against targets (5, 1, 64)", rand_mask(5, 3, 64),
         rand_mask(5, 1, 64, p=0.25)),
        ("identical masks", a, a.clone()),
        ("disjoint masks", torch.tensor([[True, True, False, False]]),
         torch.tensor([[False, False, True, True]])),
        ("one mask empty", torch.zeros(2, 8, dtype=torch.bool), rand_mask(2, 8, p=0.9)),
        ("both masks empty", torch.zeros(3, 16, dtype=torch.bool),
         torch.zeros(16, dtype=torch.bool)),
    ]


def _iou_trials(fn: IoUFn) -> int:
    exercise = "Exercise 8.2 (mask_iou)"
    cases = _iou_cases()
    for case, pred, target in cases:
        out = fn(pred.clone(), target.clone())
        expected = _mask_iou_ref(pred, target)  # (...,)
        expect(exercise, case, isinstance(out, Tensor), f"expected a tensor, got "
               f"{type(out).__name__}", "return torch tensors, not Python numbers")
        expect(exercise, case, tuple(out.shape) == tuple(expected.shape),
               f"shape {tuple(out.shape)}, expected {tuple(expected.shape)}",
               "sum over the last dim only (the patches or pixels), one IoU per head/image")
        out_f = out.double()
        if case == "both masks empty":
            expect(exercise, case, bool(torch.isfinite(out_f).all()),
                   "two empty masks give NaN (0 / 0)",
                   "when the union is empty the masks agree perfectly: return 1 there "
                   "(torch.where(union > 0, inter / union, 1))")
            expect(exercise, case, bool((out_f == 1).all()), f"got {out_f.flatten()[:3].tolist()}"
                   " for two empty masks", "two empty masks agree: their IoU is defined as 1")
        expect(exercise, case, bool((out_f <= 1 + 1e-6).all() & (out_f >= -1e-6).all()),
               f"IoU outside [0, 1]: {out_f.min():.3f} .. {out_f.max():.3f}",
               "intersection (a & b) goes on top, union (a | b) below; did you swap them?")
        expect_close(exercise, case, out.float(), expected,
                     hint="IoU = (pred & target).sum(-1) / (pred | target).sum(-1), as floats")
    return len(cases)


def mask_iou(fn: IoUFn) -> IoUFn:
    """Check Exercise 8.2 against `minidino.attention.mask_iou`."""
    return run_check("Exercise 8.2 (mask_iou)", fn, _mask_iou_ref, _iou_trials)
