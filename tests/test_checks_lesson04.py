"""The lesson 04 checks accept minidino's answers and reject the usual mistakes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from minidino import checks
from minidino.checks import CheckFailed
from minidino.checks.lesson04_centering import reference_teacher_probs, reference_update_center


def _not_done(*args: object) -> Tensor:
    raise NotImplementedError("Exercise: not done yet")


# ------------------------------------------------------------------ Exercise 4.1
def test_teacher_probs_accepts_the_reference() -> None:
    assert checks.teacher_probs(reference_teacher_probs) is reference_teacher_probs


def test_teacher_probs_accepts_another_correct_version() -> None:
    def mine(teacher_out: Tensor, center: Tensor, teacher_temp: float) -> Tensor:
        return ((teacher_out - center) / teacher_temp).softmax(dim=1)  # (rows, K)

    assert checks.teacher_probs(mine) is mine


def test_teacher_probs_not_done_falls_back() -> None:
    assert checks.teacher_probs(_not_done) is reference_teacher_probs


def _centred_after_softmax(teacher_out: Tensor, center: Tensor, teacher_temp: float) -> Tensor:
    return F.softmax(teacher_out / teacher_temp, dim=-1) - center


def _no_center(teacher_out: Tensor, center: Tensor, teacher_temp: float) -> Tensor:
    return F.softmax(teacher_out / teacher_temp, dim=-1)


def _center_not_divided(teacher_out: Tensor, center: Tensor, teacher_temp: float) -> Tensor:
    return F.softmax(teacher_out / teacher_temp - center, dim=-1)


def _softmax_over_batch(teacher_out: Tensor, center: Tensor, teacher_temp: float) -> Tensor:
    return F.softmax((teacher_out - center) / teacher_temp, dim=0)


def _unstable_softmax(teacher_out: Tensor, center: Tensor, teacher_temp: float) -> Tensor:
    e = torch.exp((teacher_out - center) / teacher_temp)  # overflows for sharp temperatures
    return e / e.sum(-1, keepdim=True)


@pytest.mark.parametrize("wrong", [_centred_after_softmax, _no_center, _center_not_divided,
                                   _softmax_over_batch, _unstable_softmax])
def test_teacher_probs_rejects(wrong) -> None:
    with pytest.raises(CheckFailed):
        checks.teacher_probs(wrong)


def test_teacher_probs_explains_centering_after_softmax() -> None:
    with pytest.raises(CheckFailed, match="sum to 1"):
        checks.teacher_probs(_centred_after_softmax)


# ------------------------------------------------------------------ Exercise 4.2
def test_update_center_accepts_the_reference() -> None:
    assert checks.update_center(reference_update_center) is reference_update_center


def test_update_center_accepts_another_correct_version() -> None:
    def mine(center: Tensor, teacher_out: Tensor, student_out: Tensor, m: float) -> Tensor:
        return m * center + (1 - m) * teacher_out.sum(0, keepdim=True) / len(teacher_out)

    assert checks.update_center(mine) is mine


def test_update_center_not_done_falls_back() -> None:
    assert checks.update_center(_not_done) is reference_update_center


def _from_student(center: Tensor, teacher_out: Tensor, student_out: Tensor, m: float) -> Tensor:
    return center * m + student_out.mean(0, keepdim=True) * (1 - m)


def _momentum_reversed(center: Tensor, teacher_out: Tensor, student_out: Tensor,
                       m: float) -> Tensor:
    return center * (1 - m) + teacher_out.mean(0, keepdim=True) * m


def _mean_over_k(center: Tensor, teacher_out: Tensor, student_out: Tensor, m: float) -> Tensor:
    return center * m + teacher_out.mean(1, keepdim=True).mean(0, keepdim=True) * (1 - m)


def _no_ema(center: Tensor, teacher_out: Tensor, student_out: Tensor, m: float) -> Tensor:
    return teacher_out.mean(0, keepdim=True)


@pytest.mark.parametrize("wrong", [_from_student, _momentum_reversed, _mean_over_k, _no_ema])
def test_update_center_rejects(wrong) -> None:
    with pytest.raises(CheckFailed):
        checks.update_center(wrong)


def test_update_center_names_the_student_mistake() -> None:
    with pytest.raises(CheckFailed, match="student"):
        checks.update_center(_from_student)
