"""The lesson 03 checks accept correct answers and reject the mistakes the lesson warns about."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from minidino import checks
from minidino import collapse as metrics
from minidino.checks import CheckFailed
from minidino.checks.lesson03_loss import (
    reference_cross_view_pairs,
    reference_softmax_with_temperature,
)
from minidino.loss import dino_loss as reference_dino_loss


def stub(*args: object) -> None:
    raise NotImplementedError("Exercise: not done yet")


# ------------------------------------------------------------------ Exercise 3.1
def stable_softmax(logits: Tensor, temp: float) -> Tensor:
    z = logits / temp  # (..., K)
    e = torch.exp(z - z.max(dim=-1, keepdim=True).values)  # (..., K)
    return e / e.sum(dim=-1, keepdim=True)


def times_temp(logits: Tensor, temp: float) -> Tensor:
    return torch.softmax(logits * temp, dim=-1)  # multiplies instead of dividing


def naive_exp(logits: Tensor, temp: float) -> Tensor:
    e = torch.exp(logits / temp)  # overflows for logits / temp near 100
    return e / e.sum(dim=-1, keepdim=True)


def wrong_dim(logits: Tensor, temp: float) -> Tensor:
    return torch.softmax(logits / temp, dim=0)


@pytest.mark.parametrize("right", [reference_softmax_with_temperature, stable_softmax])
def test_softmax_correct_versions_pass(right: Callable) -> None:
    assert checks.softmax_with_temperature(right) is right


def test_softmax_stub_falls_back_to_the_reference() -> None:
    assert checks.softmax_with_temperature(stub) is reference_softmax_with_temperature


@pytest.mark.parametrize("wrong", [times_temp, naive_exp, wrong_dim])
def test_softmax_mistakes_are_rejected(wrong: Callable) -> None:
    with pytest.raises(CheckFailed):
        checks.softmax_with_temperature(wrong)


# ------------------------------------------------------------------ Exercise 3.2
def entropy_by_mask(p: Tensor) -> Tensor:
    logs = torch.where(p > 0, p.log(), torch.zeros_like(p))  # 0 log 0 = 0
    return -(p * logs).sum(-1)


@pytest.mark.parametrize("right", [metrics.entropy, entropy_by_mask])
def test_entropy_correct_versions_pass(right: Callable) -> None:
    assert checks.entropy(right) is right


def test_entropy_stub_falls_back_to_the_reference() -> None:
    assert checks.entropy(stub) is metrics.entropy


@pytest.mark.parametrize("wrong", [
    lambda p: -torch.xlogy(p, p).sum(-1) / math.log(2),  # bits instead of nats
    lambda p: torch.xlogy(p, p).sum(-1),  # sign
    lambda p: -(p * p.log()).sum(-1),  # 0 log 0 gives NaN
    lambda p: -(p * torch.log10(p.clamp_min(1e-12))).sum(-1),  # log base 10
    lambda p: -torch.xlogy(p, p).mean(-1),  # mean instead of sum
])
def test_entropy_mistakes_are_rejected(wrong: Callable) -> None:
    with pytest.raises(CheckFailed):
        checks.entropy(wrong)


# ------------------------------------------------------------------ Exercise 3.3
def test_pairs_reference_passes() -> None:
    assert checks.cross_view_pairs(reference_cross_view_pairs) is reference_cross_view_pairs


def test_pairs_stub_falls_back_to_the_reference() -> None:
    assert checks.cross_view_pairs(stub) is reference_cross_view_pairs


@pytest.mark.parametrize("wrong", [
    lambda G, V: [(iq, v) for iq in range(G) for v in range(V)],  # a crop with itself
    lambda G, V: [(iq, v) for iq in range(V) for v in range(V) if v != iq],  # teacher on locals
    lambda G, V: [(iq, v) for iq in range(G) for v in range(G, V)],  # no global student crops
    lambda G, V: [(iq, v) for iq in range(G) for v in range(V) if v > iq],  # only v > iq
])
def test_pairs_mistakes_are_rejected(wrong: Callable) -> None:
    with pytest.raises(CheckFailed):
        checks.cross_view_pairs(wrong)


# ------------------------------------------------------------------ Exercise 3.4
def make_loss(swap_temps: bool = False, self_pairs: bool = False, detach: bool = True,
              center_after: bool = False, times_temp: bool = False) -> Callable[..., Tensor]:
    """A loop-over-pairs DINO loss; each flag switches on one typical mistake."""

    def loss_fn(student_out: Tensor, teacher_out: Tensor, center: Tensor, student_temp: float,
                teacher_temp: float, n_global_crops: int = 2) -> Tensor:
        s_temp, t_temp = (teacher_temp, student_temp) if swap_temps else (student_temp,
                                                                          teacher_temp)
        t = teacher_out.detach() if detach else teacher_out  # (G * B, K)
        if center_after:
            p_t = F.softmax(t / t_temp, dim=-1) - center  # centred after the softmax
        elif times_temp:
            p_t = F.softmax((t - center) * t_temp, dim=-1)
        else:
            p_t = F.softmax((t - center) / t_temp, dim=-1)  # (G * B, K)
        log_p_s = F.log_softmax(student_out / s_temp, dim=-1)  # (n_crops * B, K)
        B = teacher_out.shape[0] // n_global_crops
        teacher_chunks = p_t.chunk(n_global_crops)  # G x (B, K)
        student_chunks = log_p_s.chunk(student_out.shape[0] // B)  # n_crops x (B, K)
        total, n_pairs = 0.0, 0
        for iq, q in enumerate(teacher_chunks):
            for v, log_p in enumerate(student_chunks):
                if v == iq and not self_pairs:
                    continue
                total = total + (-(q * log_p).sum(-1)).mean()
                n_pairs += 1
        return total / n_pairs

    return loss_fn


def test_loss_reference_passes() -> None:
    assert checks.dino_loss(reference_dino_loss) is reference_dino_loss


def test_loss_a_loop_over_pairs_passes() -> None:
    right = make_loss()
    assert checks.dino_loss(right) is right


def test_loss_stub_falls_back_to_the_reference() -> None:
    assert checks.dino_loss(stub) is reference_dino_loss


@pytest.mark.parametrize("mistake", [
    {"swap_temps": True},
    {"self_pairs": True},  # a teacher crop compared with itself
    {"detach": False},  # no stop-gradient on the teacher
    {"center_after": True},  # centering after the softmax
    {"times_temp": True},  # multiplies by the temperature
])
def test_loss_mistakes_are_rejected(mistake: dict) -> None:
    with pytest.raises(CheckFailed):
        checks.dino_loss(make_loss(**mistake))


def test_loss_without_detach_names_the_stop_gradient() -> None:
    with pytest.raises(CheckFailed, match="detach"):
        checks.dino_loss(make_loss(detach=False))
