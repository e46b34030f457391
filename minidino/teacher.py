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
``TeacherEMA`` is the same update for a training loop: it pairs and checks the parameters once,
not at every step.
"""

from __future__ import annotations

import copy

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
    _check_momentum(momentum)
    teacher_params, student_params = paired_parameters(teacher, student)
    torch._foreach_mul_(teacher_params, momentum)
    torch._foreach_add_(teacher_params, student_params, alpha=1.0 - momentum)


def paired_parameters(teacher: nn.Module, student: nn.Module) -> tuple[list[Tensor],
                                                                        list[Tensor]]:
    """The teacher's and the student's parameters, in order, checked to pair up (use them under
    torch.no_grad)."""
    teacher_params, student_params = list(teacher.parameters()), list(student.parameters())
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
    return teacher_params, student_params


class TeacherEMA:
    """``ema_update_`` for one (teacher, student) pair, for a training loop: the parameters are
    listed and checked once here, not at every step (a few hundred tensors' worth of Python per
    step). The arithmetic is the same, so the teacher is the same to the last bit.

    The lists hold the parameter objects: loading a state dict or moving a model keeps them
    valid; replacing a model (or one of its parameters) needs a new TeacherEMA.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module) -> None:
        self.teacher_params, self.student_params = paired_parameters(teacher, student)

    @torch.no_grad()
    def update_(self, momentum: float) -> None:
        """In place: teacher <- momentum * teacher + (1 - momentum) * student."""
        _check_momentum(momentum)
        torch._foreach_mul_(self.teacher_params, momentum)
        torch._foreach_add_(self.teacher_params, self.student_params, alpha=1.0 - momentum)


def _check_momentum(momentum: float) -> None:
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum={momentum!r} must be in [0, 1]")
