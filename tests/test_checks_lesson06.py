"""The lesson 06 checks accept correct answers and reject the mistakes the lesson warns about."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from minidino import checks
from minidino.checks import CheckFailed
from minidino.checks.lesson06_loop import reference_clip_gradients_, reference_lr_schedule
from minidino.head import cancel_last_layer_gradients as reference_cancel
from minidino.step import train_step as reference_train_step
from minidino.teacher import ema_update_


def stub(*args: object) -> None:
    raise NotImplementedError("Exercise: not done yet")


# ------------------------------------------------------------------ Exercise 6.1
def loop_lr(peak_lr: float, min_lr: float, total_steps: int, warmup_steps: int) -> Tensor:
    values = [peak_lr * i / (warmup_steps - 1) for i in range(warmup_steps)]
    n = total_steps - warmup_steps
    values += [min_lr + 0.5 * (peak_lr - min_lr) * (1 + math.cos(math.pi * i / (n - 1)))
               for i in range(n)]
    return torch.tensor(values, dtype=torch.float32)  # float32 is precise enough


def no_warmup(peak_lr: float, min_lr: float, total_steps: int, warmup_steps: int) -> Tensor:
    i = torch.arange(total_steps, dtype=torch.float64)
    return min_lr + 0.5 * (peak_lr - min_lr) * (1 + torch.cos(math.pi * i / (total_steps - 1)))


def stops_short(peak_lr: float, min_lr: float, total_steps: int, warmup_steps: int) -> Tensor:
    warmup = torch.linspace(0, peak_lr, warmup_steps, dtype=torch.float64)
    n = total_steps - warmup_steps
    i = torch.arange(n, dtype=torch.float64)
    cosine = min_lr + 0.5 * (peak_lr - min_lr) * (1 + torch.cos(math.pi * i / n))  # / n
    return torch.cat([warmup, cosine])


def warmup_misses_peak(peak_lr: float, min_lr: float, total_steps: int, warmup_steps: int
                       ) -> Tensor:
    warmup = peak_lr * torch.arange(warmup_steps, dtype=torch.float64) / max(warmup_steps, 1)
    return torch.cat([warmup, reference_lr_schedule(peak_lr, min_lr, total_steps,
                                                    warmup_steps)[warmup_steps:]])


@pytest.mark.parametrize("right", [reference_lr_schedule, loop_lr])
def test_lr_schedule_correct_versions_pass(right: Callable) -> None:
    assert checks.lr_schedule(right) is right


def test_lr_schedule_stub_falls_back_to_the_reference() -> None:
    assert checks.lr_schedule(stub) is reference_lr_schedule


@pytest.mark.parametrize("wrong", [no_warmup, stops_short, warmup_misses_peak])
def test_lr_schedule_mistakes_are_rejected(wrong: Callable) -> None:
    with pytest.raises(CheckFailed):
        checks.lr_schedule(wrong)


# ------------------------------------------------------------------ Exercise 6.2
def loop_clip(parameters: list[Tensor], max_norm: float) -> Tensor:
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.sqrt(sum((g.detach() ** 2).sum() for g in grads))
    if total > max_norm:
        for g in grads:
            g.mul_(max_norm / (total + 1e-6))
    return total


def per_tensor_clip(parameters: list[Tensor], max_norm: float) -> Tensor:
    """The official DINO code's variant: each tensor clipped on its own."""
    norms = []
    for p in parameters:
        if p.grad is not None:
            norm = p.grad.norm()
            norms.append(norm)
            if norm > max_norm:
                p.grad.mul_(max_norm / (norm + 1e-6))
    return torch.stack(norms).norm()


def clips_weights(parameters: list[Tensor], max_norm: float) -> Tensor:
    """Rescales the parameters instead of their gradients."""
    total = torch.stack([p.detach().norm() for p in parameters]).norm()
    with torch.no_grad():
        for p in parameters:
            p.mul_(min(1.0, max_norm / float(total)))
    return total


def clamps_values(parameters: list[Tensor], max_norm: float) -> Tensor:
    total = torch.stack([p.grad.norm() for p in parameters if p.grad is not None]).norm()
    nn.utils.clip_grad_value_(parameters, max_norm)
    return total


def returns_norm_after(parameters: list[Tensor], max_norm: float) -> Tensor:
    nn.utils.clip_grad_norm_(parameters, max_norm)
    return torch.stack([p.grad.norm() for p in parameters if p.grad is not None]).norm()


@pytest.mark.parametrize("right", [reference_clip_gradients_, loop_clip])
def test_clip_correct_versions_pass(right: Callable) -> None:
    assert checks.clip_gradients_(right) is right


def test_clip_stub_falls_back_to_the_reference() -> None:
    assert checks.clip_gradients_(stub) is reference_clip_gradients_


@pytest.mark.parametrize("wrong", [per_tensor_clip, clips_weights, clamps_values,
                                   returns_norm_after])
def test_clip_mistakes_are_rejected(wrong: Callable) -> None:
    with pytest.raises(CheckFailed):
        checks.clip_gradients_(wrong)


# ------------------------------------------------------------------ Exercise 6.3
def loop_cancel(model: nn.Module, epoch: int, freeze_last_layer_epochs: int) -> None:
    if epoch < freeze_last_layer_epochs:
        for p in model.head.last_layer.parameters():
            p.grad = None


def freezes_whole_head(model: nn.Module, epoch: int, freeze_last_layer_epochs: int) -> None:
    if epoch < freeze_last_layer_epochs:
        for p in model.head.parameters():
            p.grad = None


def freezes_forever(model: nn.Module, epoch: int, freeze_last_layer_epochs: int) -> None:
    for p in model.head.last_layer.parameters():
        p.grad = None


def zeroes_instead(model: nn.Module, epoch: int, freeze_last_layer_epochs: int) -> None:
    if epoch < freeze_last_layer_epochs:
        for p in model.head.last_layer.parameters():
            if p.grad is not None:
                p.grad.zero_()


def off_by_one(model: nn.Module, epoch: int, freeze_last_layer_epochs: int) -> None:
    if epoch <= freeze_last_layer_epochs:
        for p in model.head.last_layer.parameters():
            p.grad = None


@pytest.mark.parametrize("right", [reference_cancel, loop_cancel])
def test_cancel_correct_versions_pass(right: Callable) -> None:
    assert checks.cancel_last_layer_gradients(right) is right


def test_cancel_stub_falls_back_to_the_reference() -> None:
    assert checks.cancel_last_layer_gradients(stub) is reference_cancel


@pytest.mark.parametrize("wrong", [freezes_whole_head, freezes_forever, zeroes_instead,
                                   off_by_one])
def test_cancel_mistakes_are_rejected(wrong: Callable) -> None:
    with pytest.raises(CheckFailed):
        checks.cancel_last_layer_gradients(wrong)


# ------------------------------------------------------------------ Exercise 6.4
def make_step(*, ema: str = "after", teacher_crops: str = "global", zero_grad: bool = True,
              clip: bool = True, freeze: bool = True, decay_all: bool = False) -> Callable:
    """A hand-written train step with one deliberate change (all defaults: correct)."""

    def step_fn(parts: Any, crops: list[Tensor], step: int) -> dict[str, Any]:
        sched, optimizer = parts.schedules, parts.optimizer
        for i, group in enumerate(optimizer.param_groups):
            group["lr"] = float(sched.lr[step])
            if i == 0 or decay_all:
                group["weight_decay"] = float(sched.weight_decay[step])
        teacher_temp = float(sched.teacher_temp[step])
        momentum = float(sched.teacher_momentum[step])
        teacher_out = parts.teacher(crops[:2] if teacher_crops == "global" else crops)
        student_out = parts.student(crops)
        loss = parts.loss_fn(student_out, teacher_out, teacher_temp)
        if zero_grad:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(parts.student.parameters(), parts.cfg.clip_grad)
        if freeze:
            reference_cancel(parts.student, step // parts.steps_per_epoch,
                             parts.cfg.freeze_last_layer)
        if ema == "before":
            ema_update_(parts.teacher, parts.student, momentum)
        optimizer.step()
        if ema == "after":
            ema_update_(parts.teacher, parts.student, momentum)
        return {"loss": loss.detach(), "student_out": student_out.detach(),
                "teacher_out": teacher_out.detach(), "teacher_temp": teacher_temp}

    return step_fn


def test_train_step_reference_and_a_hand_written_step_pass() -> None:
    assert checks.train_step(reference_train_step) is reference_train_step
    right = make_step()
    assert checks.train_step(right) is right


def test_train_step_stub_falls_back_to_the_reference() -> None:
    assert checks.train_step(stub) is reference_train_step


@pytest.mark.parametrize("mistake", [
    {"ema": "none"},  # the teacher never moves
    {"ema": "before"},  # the teacher follows the student of the previous step
    {"teacher_crops": "all"},  # the teacher sees the local crops too
    {"zero_grad": False},  # gradients pile up across steps
    {"clip": False},
    {"freeze": False},
    {"decay_all": True},  # weight decay on biases and norms too
])
def test_train_step_mistakes_are_rejected(mistake: dict[str, Any]) -> None:
    with pytest.raises(CheckFailed):
        checks.train_step(make_step(**mistake))


def test_checks_leave_the_global_random_state_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    checks.train_step(reference_train_step)
    checks.cancel_last_layer_gradients(reference_cancel)
    assert torch.equal(torch.rand(3), expected)
