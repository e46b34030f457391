"""The lesson 05 checks accept minidino's answers and reject the usual mistakes."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor, nn

from minidino import checks
from minidino.checks import CheckFailed
from minidino.checks.lesson05_teacher import reference_momentum_schedule
from minidino.teacher import build_teacher, ema_update_


def _not_done(*args: object) -> None:
    raise NotImplementedError("Exercise: not done yet")


# ------------------------------------------------------------------ Exercise 5.1
def test_ema_update_accepts_the_reference() -> None:
    assert checks.ema_update(ema_update_) is ema_update_


def test_ema_update_accepts_a_plain_loop() -> None:
    @torch.no_grad()
    def mine(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
        for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
            t.mul_(momentum).add_((1 - momentum) * s.detach())

    assert checks.ema_update(mine) is mine


def test_ema_update_not_done_falls_back() -> None:
    assert checks.ema_update(_not_done) is ema_update_


@torch.no_grad()
def _reversed(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.copy_((1 - momentum) * t + momentum * s)


@torch.no_grad()
def _weights_only(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    for (name, t), s in zip(teacher.named_parameters(), student.parameters(), strict=True):
        if name.endswith("weight"):
            t.copy_(momentum * t + (1 - momentum) * s)


@torch.no_grad()
def _top_level_only(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    for t, s in zip(teacher.parameters(recurse=False), student.parameters(recurse=False),
                    strict=True):
        t.copy_(momentum * t + (1 - momentum) * s)


@torch.no_grad()
def _returns_a_new_teacher(teacher: nn.Module, student: nn.Module, momentum: float) -> nn.Module:
    new = copy.deepcopy(teacher)
    for t, s in zip(new.parameters(), student.parameters(), strict=True):
        t.copy_(momentum * t + (1 - momentum) * s)
    return new


@torch.no_grad()
def _moves_the_student(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        s.copy_(momentum * s + (1 - momentum) * t)


@pytest.mark.parametrize("wrong", [_reversed, _weights_only, _top_level_only,
                                   _returns_a_new_teacher, _moves_the_student])
def test_ema_update_rejects(wrong) -> None:
    with pytest.raises(CheckFailed):
        checks.ema_update(wrong)


# ------------------------------------------------------------------ Exercise 5.2
def test_momentum_schedule_accepts_the_reference() -> None:
    assert checks.momentum_schedule(reference_momentum_schedule) is reference_momentum_schedule


def test_momentum_schedule_accepts_a_float32_loop() -> None:
    def mine(base_momentum: float, total_steps: int) -> Tensor:
        n = max(total_steps - 1, 1)
        return torch.tensor([1 - (1 - base_momentum) * (1 + math.cos(math.pi * i / n)) / 2
                             for i in range(total_steps)])

    assert checks.momentum_schedule(mine) is mine


def test_momentum_schedule_not_done_falls_back() -> None:
    assert checks.momentum_schedule(_not_done) is reference_momentum_schedule


def _linear(base_momentum: float, total_steps: int) -> Tensor:
    return torch.linspace(base_momentum, 1.0, total_steps, dtype=torch.float64)


def _divides_by_total(base_momentum: float, total_steps: int) -> Tensor:
    i = torch.arange(total_steps, dtype=torch.float64)
    return 1 - (1 - base_momentum) * (1 + torch.cos(math.pi * i / total_steps)) / 2


def _one_step_too_far(base_momentum: float, total_steps: int) -> Tensor:
    i = torch.arange(1, total_steps + 1, dtype=torch.float64)
    return 1 - (1 - base_momentum) * (1 + torch.cos(math.pi * i / total_steps)) / 2


def _upside_down(base_momentum: float, total_steps: int) -> Tensor:
    return reference_momentum_schedule(base_momentum, total_steps).flip(0)


@pytest.mark.parametrize("wrong", [_linear, _divides_by_total, _one_step_too_far, _upside_down])
def test_momentum_schedule_rejects(wrong) -> None:
    with pytest.raises(CheckFailed):
        checks.momentum_schedule(wrong)


# ------------------------------------------------------------------ Exercise 5.3
def test_build_teacher_accepts_the_reference() -> None:
    assert checks.build_teacher(build_teacher) is build_teacher


def test_build_teacher_accepts_a_loop_over_parameters() -> None:
    def mine(student: nn.Module) -> nn.Module:
        teacher = copy.deepcopy(student)
        for p in teacher.parameters():
            p.requires_grad = False
        return teacher

    assert checks.build_teacher(mine) is mine


def test_build_teacher_not_done_falls_back() -> None:
    assert checks.build_teacher(_not_done) is build_teacher


def _no_stop_gradient(student: nn.Module) -> nn.Module:
    return copy.deepcopy(student)


def _same_object(student: nn.Module) -> nn.Module:
    return student.requires_grad_(False)


def _shallow_copy(student: nn.Module) -> nn.Module:
    teacher = copy.copy(student)
    return teacher


def _freezes_the_student(student: nn.Module) -> nn.Module:
    student.requires_grad_(False)
    return copy.deepcopy(student)


def _fresh_weights(student: nn.Module) -> nn.Module:
    teacher = copy.deepcopy(student)
    for module in teacher.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return teacher.requires_grad_(False)


@pytest.mark.parametrize("wrong", [_no_stop_gradient, _same_object, _shallow_copy,
                                   _freezes_the_student, _fresh_weights])
def test_build_teacher_rejects(wrong) -> None:
    with pytest.raises(CheckFailed):
        checks.build_teacher(wrong)


def test_build_teacher_names_the_missing_stop_gradient() -> None:
    with pytest.raises(CheckFailed, match="require gradients"):
        checks.build_teacher(_no_stop_gradient)
