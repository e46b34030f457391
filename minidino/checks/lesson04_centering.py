"""Checks for lesson 04 (centering, sharpening and the two collapses).

* Exercise 4.1 `teacher_probs`: the teacher's target,
  softmax((teacher_out - center) / teacher_temp).
* Exercise 4.2 `update_center`: the center's EMA over the batch mean of the teacher's logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from minidino.checks._core import expect, expect_close, run_check
from minidino.loss import DINOLoss

__all__ = ["teacher_probs", "update_center"]

TeacherProbs = Callable[[Tensor, Tensor, float], Tensor]
UpdateCenter = Callable[[Tensor, Tensor, Tensor, float], Tensor]


def reference_teacher_probs(teacher_out: Tensor, center: Tensor, teacher_temp: float) -> Tensor:
    """teacher_out (rows, K), center (1, K) -> (rows, K) probabilities, as in `dino_loss`."""
    logits = (teacher_out.float() - center.float()) / teacher_temp  # (rows, K)
    return F.softmax(logits, dim=-1)  # (rows, K)


def reference_update_center(center: Tensor, teacher_out: Tensor, student_out: Tensor,
                            center_momentum: float) -> Tensor:
    """The new center (1, K), computed by `DINOLoss.update_center` (student_out is not used)."""
    K = teacher_out.shape[1]
    loss_fn = DINOLoss(out_dim=K, n_crops=2, center_momentum=center_momentum)
    loss_fn.center.copy_(center.reshape(1, K))  # (1, K)
    loss_fn.update_center(teacher_out)
    return loss_fn.center.clone()  # (1, K)


def _logits(g: torch.Generator, rows: int, K: int, scale: float = 1.0) -> Tensor:
    """Random logits with a per-dimension offset, so that the mean over rows is far from 0."""
    offset = 2.0 * torch.randn(1, K, generator=g)  # (1, K)
    return scale * torch.randn(rows, K, generator=g) + offset  # (rows, K)


def teacher_probs(fn: TeacherProbs) -> TeacherProbs:
    """Exercise 4.1: check `fn(teacher_out, center, teacher_temp)` against the reference."""
    exercise = "Exercise 4.1 (teacher_probs)"

    def trials(fn: TeacherProbs) -> int:
        g = torch.Generator().manual_seed(41)
        cases: list[tuple[str, Tensor, Tensor, float]] = []
        for rows, K, temp in ((8, 16, 0.04), (6, 5, 0.1), (3, 32, 1.0)):
            teacher_out = _logits(g, rows, K)  # (rows, K)
            center = teacher_out.mean(0, keepdim=True) + 0.3 * torch.randn(1, K, generator=g)
            cases.append((f"rows={rows}, K={K}, teacher_temp={temp}", teacher_out, center, temp))
        teacher_out = _logits(g, 4, 10, scale=8.0)  # (4, 10), large logits
        cases.append(("large logits with teacher_temp=0.01 (needs a stable softmax)",
                      teacher_out, torch.zeros(1, 10), 0.01))
        teacher_out = torch.randn(5, 7, generator=g)  # (5, 7)
        dominant = torch.zeros(1, 7)
        dominant[0, 2] = 5.0  # one dimension that every row favours
        cases.append(("one dominant dimension, center equal to it",
                      teacher_out + dominant, dominant.clone(), 0.1))
        for case, teacher_out, center, temp in cases:
            actual = fn(teacher_out.clone(), center.clone(), temp)
            expected = reference_teacher_probs(teacher_out, center, temp)  # (rows, K)
            if isinstance(actual, Tensor) and actual.shape == expected.shape:
                rows_sum = actual.detach().double().sum(-1)  # (rows,)
                expect(exercise, case, bool(torch.allclose(rows_sum, torch.ones_like(rows_sum),
                                                           atol=1e-4)),
                       "the rows do not sum to 1, so they are not probability distributions",
                       "subtract the center from the logits first, then divide by teacher_temp, "
                       "and take the softmax last (over the K dimension, dim=-1); anything done "
                       "after the softmax breaks the distribution")
            expect_close(exercise, case, actual, expected,
                         "p_t = softmax((teacher_out - center) / teacher_temp, dim=-1): is the "
                         "center subtracted, and subtracted before the division and the softmax?",
                         atol=1e-5)
        return len(cases)

    return run_check(exercise, fn, reference_teacher_probs, trials)


def update_center(fn: UpdateCenter) -> UpdateCenter:
    """Exercise 4.2: check `fn(center, teacher_out, student_out, center_momentum)`."""
    exercise = "Exercise 4.2 (update_center)"

    def trials(fn: UpdateCenter) -> int:
        g = torch.Generator().manual_seed(42)
        cases: list[tuple[str, Tensor, Tensor, Tensor, float]] = []
        for B, K, n_crops, m in ((4, 8, 4, 0.9), (3, 5, 6, 0.7), (6, 12, 2, 0.99)):
            teacher_out = _logits(g, 2 * B, K)  # (2*B, K)
            student_out = _logits(g, n_crops * B, K)  # (n_crops*B, K), a different mean
            center = torch.randn(1, K, generator=g)  # (1, K)
            cases.append((f"B={B}, K={K}, n_crops={n_crops}, center_momentum={m}",
                          center, teacher_out, student_out, m))
        teacher_out, student_out = _logits(g, 6, 9), _logits(g, 12, 9)
        cases.append(("center_momentum=0: the center becomes the batch mean",
                      torch.randn(1, 9, generator=g), teacher_out, student_out, 0.0))
        cases.append(("center_momentum=1: the center does not move",
                      torch.randn(1, 9, generator=g), teacher_out, student_out, 1.0))
        for case, center, teacher_out, student_out, m in cases:
            actual = fn(center.clone(), teacher_out.clone(), student_out.clone(), m)
            expected = reference_update_center(center, teacher_out, student_out, m)  # (1, K)
            from_student = reference_update_center(center, student_out, teacher_out, m)
            if isinstance(actual, Tensor) and actual.shape == expected.shape and m < 1:
                same = torch.allclose(actual.detach().float(), from_student, atol=1e-5)
                expect(exercise, case, not same,
                       "the center follows the student's outputs",
                       "the center is a running mean of the TEACHER's logits (teacher_out); "
                       "student_out is passed in only so that you can choose the right one")
            expect_close(exercise, case, actual, expected,
                         "center = center * center_momentum + teacher_out.mean(dim=0, "
                         "keepdim=True) * (1 - center_momentum): the old center keeps the weight "
                         "center_momentum, the mean is over the rows (the batch), shape (1, K)")
        return len(cases)

    return run_check(exercise, fn, reference_update_center, trials)
