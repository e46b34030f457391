"""Tests for the EMA teacher, the cosine schedule and the last-layer freeze."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from minidino.head import cancel_last_layer_gradients
from minidino.schedules import cosine_schedule
from minidino.teacher import build_teacher, ema_update_

SETTINGS = settings(max_examples=20, deadline=None)


class TinyHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Linear(6, 4)
        self.last_layer = nn.Linear(4, 5, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.mlp(x))


class TinyModel(nn.Module):
    """Backbone with dropout (train/eval differ) and a head with a `last_layer`."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(3, 6), nn.Dropout(0.5), nn.LayerNorm(6))
        self.head = TinyHead()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class Wrapped(nn.Module):
    """Stands in for DistributedDataParallel: parameter names gain a `module.` prefix."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """A student and a teacher with different weights."""
    torch.manual_seed(seed)
    student = TinyModel()
    teacher = build_teacher(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    return student, teacher


# ---- build_teacher ---------------------------------------------------------------------------


def test_build_teacher_copies_without_gradients_in_eval_mode() -> None:
    student = TinyModel()
    teacher = build_teacher(student)
    assert student.training  # the student is left alone
    assert all(p.requires_grad for p in student.parameters())
    assert not teacher.training
    assert all(not m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    for (name_t, t), (name_s, s) in zip(
        teacher.named_parameters(), student.named_parameters(), strict=True
    ):
        assert name_t == name_s and torch.equal(t, s)
        assert t.data_ptr() != s.data_ptr()  # its own storage
    x = torch.randn(4, 3)
    torch.testing.assert_close(teacher(x), teacher(x))  # eval: dropout is off


# ---- ema_update_ -----------------------------------------------------------------------------


def test_momentum_one_leaves_teacher_unchanged() -> None:
    student, teacher = pair()
    before = [p.clone() for p in teacher.parameters()]
    ema_update_(teacher, student, momentum=1.0)
    for p, q in zip(teacher.parameters(), before, strict=True):
        assert torch.equal(p, q)


def test_momentum_zero_copies_the_student() -> None:
    student, teacher = pair()
    ema_update_(teacher, student, momentum=0.0)
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        assert torch.equal(t, s)


@SETTINGS
@given(st.floats(0.0, 1.0), st.integers(0, 1000))
def test_general_momentum_matches_per_parameter_formula(momentum: float, seed: int) -> None:
    student, teacher = pair(seed)
    expected = [
        momentum * t + (1 - momentum) * s
        for t, s in zip(teacher.parameters(), student.parameters(), strict=True)
    ]
    student_before = [p.clone() for p in student.parameters()]
    ema_update_(teacher, student, momentum)
    for t, e in zip(teacher.parameters(), expected, strict=True):
        torch.testing.assert_close(t, e)
    for s, b in zip(student.parameters(), student_before, strict=True):
        assert torch.equal(s, b)  # the student is not touched


def test_wrapped_student_is_matched_in_order() -> None:
    student, teacher = pair()
    wrapped = Wrapped(student)
    assert next(iter(dict(wrapped.named_parameters()))).startswith("module.")
    ema_update_(teacher, wrapped, momentum=0.5)
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        assert not torch.equal(t, s)
    ema_update_(teacher, wrapped, momentum=0.0)
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        assert torch.equal(t, s)


def test_ema_keeps_teacher_without_gradients() -> None:
    student, teacher = pair()
    ema_update_(teacher, student, momentum=0.9)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("momentum", [-0.1, 1.01, float("nan")])
def test_momentum_outside_unit_interval_raises(momentum: float) -> None:
    student, teacher = pair()
    with pytest.raises(ValueError, match="momentum"):
        ema_update_(teacher, student, momentum)


def test_mismatched_models_raise() -> None:
    student, teacher = pair()
    with pytest.raises(ValueError, match="parameters"):
        ema_update_(teacher, student.head, momentum=0.9)
    other = TinyModel()
    other.head.last_layer = nn.Linear(4, 7, bias=False)
    with pytest.raises(ValueError, match="shape"):
        ema_update_(teacher, other, momentum=0.9)


# ---- cosine_schedule -------------------------------------------------------------------------


def literal_cosine(base: float, final: float, total: int, warmup: int, start: float) -> list:
    """DINO's schedule written out: linear warm-up, then 0.5*(base-final)*(1+cos(pi*i/n))+final
    for i = 0..n, where n + 1 is the number of cosine steps."""
    values = []
    for i in range(warmup):
        values.append(start if warmup == 1 else start + (base - start) * i / (warmup - 1))
    n = total - warmup - 1
    for i in range(n + 1):
        values.append(0.5 * (base - final) * (1 + math.cos(math.pi * i / n)) + final)
    return values


@SETTINGS
@given(
    st.floats(-2.0, 2.0),
    st.floats(-2.0, 2.0),
    st.integers(2, 60),
    st.data(),
    st.floats(-1.0, 1.0),
)
def test_cosine_schedule_matches_literal_formula(base, final, total, data, start) -> None:
    warmup = data.draw(st.integers(0, total - 2))  # at least 2 cosine steps
    schedule = cosine_schedule(base, final, total, warmup, start)
    assert schedule.shape == (total,) and schedule.dtype == torch.float64
    expected = torch.tensor(literal_cosine(base, final, total, warmup, start), dtype=torch.float64)
    torch.testing.assert_close(schedule, expected)
    assert schedule[-1].item() == pytest.approx(final)
    assert schedule[0].item() == pytest.approx(start if warmup > 0 else base)


def test_teacher_momentum_schedule_rises_to_one() -> None:
    schedule = cosine_schedule(0.996, 1.0, total_steps=500)  # DINO's teacher_momentum
    assert schedule[0].item() == pytest.approx(0.996)
    assert schedule[-1].item() == 1.0
    assert torch.all(torch.diff(schedule) >= 0)  # monotone for base < final
    assert torch.all(torch.diff(schedule[1:-1]) > 0)


def test_warmup_is_linear_then_cosine_decreases() -> None:
    schedule = cosine_schedule(1e-3, 1e-6, total_steps=100, warmup_steps=10)
    torch.testing.assert_close(schedule[:10], torch.linspace(0, 1e-3, 10, dtype=torch.float64))
    assert schedule[10].item() == pytest.approx(1e-3)
    assert torch.all(torch.diff(schedule[10:]) <= 0)
    assert schedule[-1].item() == pytest.approx(1e-6)


def test_single_step_schedules() -> None:
    assert cosine_schedule(0.5, 0.1, total_steps=1).tolist() == [0.5]
    assert cosine_schedule(0.5, 0.1, total_steps=1, warmup_steps=1).tolist() == [0.0]
    assert cosine_schedule(
        0.5, 0.1, total_steps=2, warmup_steps=1, start_warmup_value=0.2
    ).tolist() == [0.2, 0.5]


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(total_steps=0), "total_steps"),
        (dict(total_steps=10, warmup_steps=11), "warmup_steps"),
        (dict(total_steps=10, warmup_steps=-1), "warmup_steps"),
    ],
)
def test_cosine_schedule_bad_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        cosine_schedule(0.1, 0.0, **kwargs)


# ---- cancel_last_layer_gradients -------------------------------------------------------------


def model_with_grads() -> nn.Module:
    model = TinyModel()
    model(torch.randn(4, 3)).pow(2).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    return model


@pytest.mark.parametrize("epoch, cleared", [(0, True), (1, True), (2, False), (5, False)])
def test_cancel_last_layer_gradients(epoch: int, cleared: bool) -> None:
    model = model_with_grads()
    cancel_last_layer_gradients(model, epoch, freeze_last_layer_epochs=2)
    for name, p in model.named_parameters():
        if name == "head.last_layer.weight":
            assert (p.grad is None) is cleared
        else:
            assert p.grad is not None, name


def test_cancel_last_layer_gradients_through_wrapper() -> None:
    wrapped = Wrapped(model_with_grads())
    cancel_last_layer_gradients(wrapped, epoch=0, freeze_last_layer_epochs=1)
    grads = {name: p.grad for name, p in wrapped.named_parameters()}
    assert grads.pop("module.head.last_layer.weight") is None
    assert all(g is not None for g in grads.values())
