"""The teacher: a slowly moving average of the student.

Why: DINO has no fixed target network. The teacher is a copy of the student whose weights follow
the student's with an exponential moving average (EMA, "momentum encoder"):

    teacher <- teacher_momentum * teacher + (1 - teacher_momentum) * student

It is never trained by gradients. Because it averages many past students it is a little better
and much steadier than any one of them, so it makes a good target. teacher_momentum starts near
0.996 and rises to 1 along a cosine, so the teacher freezes more and more as training ends.

How: ``build_teacher`` copies the student and switches off its gradients; ``ema_update_`` does
the update for all parameters at once with ``torch._foreach_*`` (one fused call instead of a
Python loop over hundreds of tensors). The momentum's schedule is in minidino/schedules.py.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


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
