"""The teacher: a slowly moving average of the student, and the schedules that drive training.

Why: DINO has no fixed target network. The teacher is a copy of the student whose weights follow
the student's with an exponential moving average (EMA, "momentum encoder"):

    teacher <- teacher_momentum * teacher + (1 - teacher_momentum) * student

It is never trained by gradients. Because it averages many past students it is a little better
and much steadier than any one of them, so it makes a good target. teacher_momentum starts near
0.996 and rises to 1 along a cosine, so the teacher freezes more and more as training ends.

How: ``build_teacher`` copies the student and switches off its gradients; ``ema_update_`` does
the update for all parameters at once with ``torch._foreach_*`` (one fused call instead of a
Python loop over hundreds of tensors); ``cosine_schedule`` precomputes one value per step for the
learning rate, weight decay and teacher momentum; ``cancel_last_layer_gradients`` keeps the
head's prototypes fixed during the first epoch, which DINO found stabilises the start.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn


def build_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of ``student`` with no gradients, in eval mode (so drop path is off)."""
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place: every teacher parameter <- momentum * teacher + (1 - momentum) * student.

    Parameters are matched in order, so a student wrapped in DistributedDataParallel (whose
    names start with ``module.``) pairs up with an unwrapped teacher.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum={momentum!r} must be in [0, 1]")
    teacher_params = list(teacher.parameters())
    student_params = [p.detach() for p in student.parameters()]
    if len(teacher_params) != len(student_params):
        raise ValueError(
            f"teacher has {len(teacher_params)} parameters but student has "
            f"{len(student_params)}; the teacher must be a copy of the student"
        )
    for i, (t, s) in enumerate(zip(teacher_params, student_params, strict=True)):
        if t.shape != s.shape:
            raise ValueError(
                f"parameter {i} has shape {tuple(t.shape)} in the teacher but "
                f"{tuple(s.shape)} in the student; the teacher must be a copy of the student"
            )
    torch._foreach_mul_(teacher_params, momentum)
    torch._foreach_add_(teacher_params, student_params, alpha=1.0 - momentum)


def cosine_schedule(
    base_value: float,
    final_value: float,
    total_steps: int,
    warmup_steps: int = 0,
    start_warmup_value: float = 0.0,
) -> Tensor:
    """One value per step, (total_steps,) float64: linear warm-up, then a cosine.

    The first ``warmup_steps`` values go linearly from ``start_warmup_value`` to ``base_value``
    (both included). The remaining n + 1 steps, i = 0..n, follow

        final_value + 0.5 * (base_value - final_value) * (1 + cos(pi * i / n))

    so they start at ``base_value`` and end exactly at ``final_value``. (DINO's cosine_scheduler
    divides by n + 1 instead and stops one step short of ``final_value``.)
    """
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps} must be >= 1")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must be in [0, total_steps={total_steps}]")
    warmup = torch.linspace(
        start_warmup_value, base_value, warmup_steps, dtype=torch.float64
    )  # (warmup_steps,)
    n_cosine = total_steps - warmup_steps
    i = torch.arange(n_cosine, dtype=torch.float64)  # (n_cosine,)
    progress = i / max(n_cosine - 1, 1)  # 0 -> 1
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + torch.cos(math.pi * progress))
    return torch.cat([warmup, cosine])  # (total_steps,)


def cancel_last_layer_gradients(
    model: nn.Module, epoch: int, freeze_last_layer_epochs: int
) -> None:
    """Drop the gradients of the head's ``last_layer`` while epoch < freeze_last_layer_epochs.

    Call between ``loss.backward()`` and ``optimizer.step()``: parameters whose grad is None are
    skipped by the optimizer, so the prototypes stay where they started.
    """
    if epoch >= freeze_last_layer_epochs:
        return
    for name, param in model.named_parameters():
        if "last_layer" in name:
            param.grad = None
