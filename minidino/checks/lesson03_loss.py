"""Checks for lesson 03: softmax with temperature, entropy, the cross-view pairs, the DINO loss."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from minidino import collapse as metrics
from minidino import loss as minidino_loss
from minidino.checks._core import expect, expect_close, fail, run_check

__all__ = ["softmax_with_temperature", "entropy", "cross_view_pairs", "dino_loss"]

EX31 = "Exercise 3.1 (softmax_with_temperature)"
EX32 = "Exercise 3.2 (entropy)"
EX33 = "Exercise 3.3 (cross_view_pairs)"
EX34 = "Exercise 3.4 (dino_loss)"


def reference_softmax_with_temperature(logits: Tensor, temp: float) -> Tensor:
    """softmax(logits / temp) over the last dim: (..., K) -> (..., K), rows sum to 1."""
    return torch.softmax(logits / temp, dim=-1)  # (..., K)


def reference_cross_view_pairs(n_global_crops: int, n_crops: int) -> list[tuple[int, int]]:
    """(teacher crop, student crop) pairs of the DINO loss: every global crop iq the teacher sees
    with every crop v the student sees, except v == iq (the very same view)."""
    return [(iq, v) for iq in range(n_global_crops) for v in range(n_crops) if v != iq]


# ------------------------------------------------------------------ Exercise 3.1
def _softmax_trials(fn: Callable[..., Tensor]) -> int:
    g = torch.Generator().manual_seed(0)
    cases = [
        ("random logits (4, 16), temp 1", torch.randn(4, 16, generator=g), 1.0),
        ("random logits (4, 16), temp 0.1 (sharper)", torch.randn(4, 16, generator=g), 0.1),
        ("random logits (3, 8), temp 4 (flatter)", torch.randn(3, 8, generator=g), 4.0),
        ("random logits (2, 5, 32), temp 0.5", torch.randn(2, 5, 32, generator=g), 0.5),
        ("cosine logits in [-1, 1], temp 0.01 (values of 100 before the softmax)",
         2 * torch.rand(4, 64, generator=g) - 1, 0.01),
        ("a single logit vector (16,), temp 0.04", torch.randn(16, generator=g), 0.04),
    ]
    for case, logits, temp in cases:
        out = fn(logits.clone(), temp)
        expect_close(EX31, case, out, reference_softmax_with_temperature(logits, temp),
                     "divide the logits by the temperature before the softmax (a small "
                     "temperature sharpens); take the softmax over the last dim. For large "
                     "values subtract each row's max first, or use torch.softmax, so exp "
                     "does not overflow", atol=1e-5, rtol=1e-4)
    return len(cases)


def softmax_with_temperature(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Check Exercise 3.1: fn(logits (..., K), temp) -> softmax(logits / temp) (..., K)."""
    return run_check(EX31, fn, reference_softmax_with_temperature, _softmax_trials)


# ------------------------------------------------------------------ Exercise 3.2
def _entropy_trials(fn: Callable[..., Tensor]) -> int:
    g = torch.Generator().manual_seed(1)
    K = 16
    one_hot = torch.zeros(3, K)
    one_hot[torch.arange(3), torch.tensor([0, 5, 15])] = 1.0  # (3, K)
    half = torch.zeros(2, 4)
    half[:, :2] = 0.5  # (2, 4) two classes at 0.5, two at exactly 0
    cases = [
        ("random distributions (5, 16)", torch.softmax(torch.randn(5, K, generator=g), -1)),
        ("sharp distributions (4, 16)",
         torch.softmax(torch.randn(4, K, generator=g) / 0.05, -1)),
        ("uniform distributions (2, 16): entropy log 16", torch.full((2, K), 1.0 / K)),
        ("one-hot distributions (3, 16): entropy 0, and 0 log 0 = 0", one_hot),
        ("two classes at 0.5, two at 0: entropy log 2", half),
        ("one distribution (10,)", torch.softmax(torch.randn(10, generator=g), -1)),
        ("a batch (2, 3, 8)", torch.softmax(torch.randn(2, 3, 8, generator=g), -1)),
    ]
    for case, p in cases:
        expect_close(EX32, case, fn(p.clone()), metrics.entropy(p),
                     "entropy is -sum_k p_k log p_k over the last dim, in nats (natural log, "
                     "torch.log, not log2), so it lies between 0 and log K. Treat 0 log 0 as 0: "
                     "torch.xlogy(p, p) does, torch.log(0) alone gives -inf and NaN",
                     atol=1e-5, rtol=1e-4)
    return len(cases)


def entropy(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Check Exercise 3.2: fn(p (..., K)) -> entropy in nats (...)."""
    return run_check(EX32, fn, metrics.entropy, _entropy_trials)


# ------------------------------------------------------------------ Exercise 3.3
def _pairs_trials(fn: Callable[..., Any]) -> int:
    cases = [(2, 8), (2, 2), (2, 4), (1, 3), (3, 5)]
    for n_global_crops, n_crops in cases:
        case = f"n_global_crops={n_global_crops}, n_crops={n_crops}"
        out = fn(n_global_crops, n_crops)
        try:
            pairs = [(int(iq), int(v)) for iq, v in out]
        except (TypeError, ValueError):
            fail(EX33, case, f"expected a list of (teacher crop, student crop) pairs, got {out!r}")
        want = reference_cross_view_pairs(n_global_crops, n_crops)
        same = [p for p in pairs if p[0] == p[1]]
        expect(EX33, case, not same, f"the pairs include {same}: a crop compared with itself",
               "skip v == iq: the student must predict the teacher's output on a DIFFERENT "
               "view, otherwise matching is trivial and teaches nothing")
        expect(EX33, case, all(iq < n_global_crops for iq, _ in pairs),
               f"the teacher crop index reaches {max(iq for iq, _ in pairs)}",
               "the teacher sees only the global crops: iq runs over range(n_global_crops)")
        expect(EX33, case, len(pairs) == len(set(pairs)), "some pairs appear twice",
               "each (iq, v) pair appears once")
        missing = sorted(set(want) - set(pairs))
        expect(EX33, case, not missing, f"missing pairs {missing}; expected {want}",
               "the student sees every crop, the global ones too: v runs over range(n_crops), "
               "only v == iq is left out")
        expect(EX33, case, len(pairs) == n_global_crops * (n_crops - 1),
               f"got {len(pairs)} pairs, expected n_global_crops * (n_crops - 1) = "
               f"{n_global_crops * (n_crops - 1)}")
    return len(cases)


def cross_view_pairs(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check Exercise 3.3: fn(n_global_crops, n_crops) -> [(iq, v), ...]."""
    return run_check(EX33, fn, reference_cross_view_pairs, _pairs_trials)


# ------------------------------------------------------------------ Exercise 3.4
def _loss_cases() -> list[tuple[str, dict[str, Any]]]:
    g = torch.Generator().manual_seed(2)
    cases = []
    for B, K, n_crops, G, s_temp, t_temp in ((4, 16, 6, 2, 0.1, 0.04), (3, 32, 2, 2, 0.1, 0.04),
                                             (2, 8, 5, 1, 0.2, 0.07), (5, 10, 4, 2, 0.5, 0.3)):
        case = (f"B={B}, K={K}, n_crops={n_crops}, n_global_crops={G}, "
                f"student_temp={s_temp}, teacher_temp={t_temp}, random center")
        cases.append((case, dict(
            student_out=torch.randn(n_crops * B, K, generator=g),  # (n_crops * B, K)
            teacher_out=torch.randn(G * B, K, generator=g),  # (G * B, K)
            center=0.5 * torch.randn(1, K, generator=g),  # (1, K)
            student_temp=s_temp, teacher_temp=t_temp, n_global_crops=G)))
    # the teacher agrees with the student on the same crop: only the cross-view pairs separate
    student_out = torch.randn(4 * 3, 12, generator=g)  # (n_crops * B, K), 4 crops of B = 3
    cases.append(("teacher_out equal to the student's global rows, zero center", dict(
        student_out=student_out, teacher_out=student_out[:6].clone(), center=torch.zeros(1, 12),
        student_temp=0.1, teacher_temp=0.1, n_global_crops=2)))
    return cases


def _loss_trials(fn: Callable[..., Tensor]) -> int:
    cases = _loss_cases()
    for case, kwargs in cases:
        student_out = kwargs["student_out"].clone().requires_grad_(True)
        teacher_out = kwargs["teacher_out"].clone().requires_grad_(True)
        center = kwargs["center"].clone()
        args = (student_out, teacher_out, center, kwargs["student_temp"],
                kwargs["teacher_temp"])
        out = fn(*args) if kwargs["n_global_crops"] == 2 else fn(*args, kwargs["n_global_crops"])
        s_ref = kwargs["student_out"].clone().requires_grad_(True)
        want = minidino_loss.dino_loss(s_ref, kwargs["teacher_out"], kwargs["center"],
                                       kwargs["student_temp"], kwargs["teacher_temp"],
                                       kwargs["n_global_crops"])
        expect_close(EX34, case, out, want,
                     "p_t = softmax((teacher_out - center) / teacher_temp) (center BEFORE the "
                     "softmax), log p_s = log_softmax(student_out / student_temp); "
                     "average -sum_k p_t log p_s over the B images and over every pair "
                     "(iq, v) with v != iq (Exercise 3.3); check which temperature goes with "
                     "which network", atol=1e-4, rtol=1e-4)
        expect(EX34, case, out.requires_grad,
               "the loss carries no gradient to student_out",
               "compute the loss from student_out itself, without .detach() or torch.no_grad()")
        out.backward()
        want.backward()
        expect(EX34, case, teacher_out.grad is None or not teacher_out.grad.any(),
               "after loss.backward(), teacher_out received a gradient",
               "the teacher is a target, not something to train: use teacher_out.detach() "
               "(stop-gradient), so no gradient flows into the teacher")
        expect(EX34, case, student_out.grad is not None,
               "after loss.backward(), student_out has no gradient")
        expect_close(EX34, case + " (gradient w.r.t. student_out)", student_out.grad, s_ref.grad,
                     "the gradient with respect to student_out differs although the value "
                     "may match: use log_softmax on student_out / student_temp", atol=1e-4,
                     rtol=1e-3)
    return len(cases)


def dino_loss(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Check Exercise 3.4: fn(student_out, teacher_out, center, student_temp, teacher_temp,
    n_global_crops=2) -> scalar, the same signature as minidino.loss.dino_loss."""
    return run_check(EX34, fn, minidino_loss.dino_loss, _loss_trials)

