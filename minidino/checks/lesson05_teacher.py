"""Checks for lesson 05 (the EMA teacher).

* Exercise 5.1 `ema_update`: in place, teacher <- momentum * teacher + (1 - momentum) * student.
* Exercise 5.2 `momentum_schedule`: the cosine schedule of teacher_momentum from its base to 1.
* Exercise 5.3 `build_teacher`: a separate copy of the student that gradients never reach.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from minidino.checks._core import expect, expect_close, run_check
from minidino.schedules import cosine_schedule
from minidino.teacher import build_teacher as minidino_build_teacher
from minidino.teacher import ema_update_

__all__ = ["build_teacher", "ema_update", "momentum_schedule"]

EmaUpdate = Callable[[nn.Module, nn.Module, float], None]
MomentumSchedule = Callable[[float, int], Tensor]
BuildTeacher = Callable[[nn.Module], nn.Module]


def reference_momentum_schedule(base_momentum: float, total_steps: int) -> Tensor:
    """(total_steps,) float64: cosine from base_momentum (step 0) to exactly 1 (last step)."""
    return cosine_schedule(base_momentum, 1.0, total_steps)  # (total_steps,)


class _Block(nn.Module):
    """A nested toy network, (B, 6) -> (B, 4), with weights, biases and a LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.inner = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8), nn.GELU())
        self.out = nn.Linear(8, 4, bias=False)
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, 6) -> (B, 4)."""
        return self.out(self.inner(self.embed(x))) * self.scale  # (B, 4)


def _toy(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = _Block()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # no parameter keeps its default value (ones, zeros)
    return model


def ema_update(fn: EmaUpdate) -> EmaUpdate:
    """Exercise 5.1: check that `fn(teacher, student, momentum)` updates every teacher parameter."""
    exercise = "Exercise 5.1 (ema_update)"

    def trials(fn: EmaUpdate) -> int:
        cases = [(0.9, 1), (0.996, 2), (0.7, 3), (0.0, 4), (1.0, 5)]
        for momentum, seed in cases:
            student = _toy(seed)
            teacher = minidino_build_teacher(_toy(seed + 100))
            expected = copy.deepcopy(teacher)
            ema_update_(expected, student, momentum)
            before = [p.detach().clone() for p in student.parameters()]
            result = fn(teacher, student, momentum)
            case = f"momentum={momentum}"
            expect(exercise, case, result is None or result is teacher,
                   f"the function returned a {type(result).__name__}",
                   "update the teacher's parameters in place (p.mul_(...).add_(...), or "
                   "p.copy_(...)) and return nothing; the training loop keeps its teacher")
            for p, p0 in zip(student.parameters(), before, strict=True):
                expect(exercise, case, bool(torch.equal(p.detach(), p0)),
                       "the student's parameters changed", "only the teacher moves here")
            names = [n for n, _ in expected.named_parameters()]
            for name, got, want in zip(names, teacher.parameters(), expected.parameters(),
                                       strict=True):
                expect_close(exercise, f"{case}, parameter {name!r}", got, want,
                             "every teacher parameter (weights, biases, norms, at every depth: "
                             "use teacher.parameters()) becomes momentum * teacher + "
                             "(1 - momentum) * student; momentum is the weight of the TEACHER")
        return len(cases)

    return run_check(exercise, fn, ema_update_, trials)


def momentum_schedule(fn: MomentumSchedule) -> MomentumSchedule:
    """Exercise 5.2: check `fn(base_momentum, total_steps)` against `cosine_schedule`."""
    exercise = "Exercise 5.2 (momentum_schedule)"

    def trials(fn: MomentumSchedule) -> int:
        cases = [(0.996, 100), (0.9, 7), (0.5, 11), (0.97, 2), (0.8, 1)]
        for base, total in cases:
            case = f"base_momentum={base}, total_steps={total}"
            if total == 1:
                case += " (a single step: only step 0, base_momentum; avoid dividing by 0)"
            actual = fn(base, total)
            expected = reference_momentum_schedule(base, total)  # (total,)
            if isinstance(actual, Tensor) and actual.shape == expected.shape:
                expect(exercise, case, abs(float(actual[0]) - base) < 1e-6,
                       f"step 0 has momentum {float(actual[0]):.6f}, expected {base}",
                       "the schedule starts at base_momentum")
                expect(exercise, case, total == 1 or abs(float(actual[-1]) - 1.0) < 1e-6,
                       f"the last step has momentum {float(actual[-1]):.6f}, expected 1",
                       "the last step (i = total_steps - 1) must reach 1 exactly: the "
                       "progress i / (total_steps - 1) runs from 0 to 1")
            expect_close(exercise, case, actual, expected,
                         "momentum[i] = 1 - (1 - base) * (1 + cos(pi * i / (total_steps - 1))) "
                         "/ 2: a half cosine, slow at both ends, not a straight line",
                         atol=1e-6)
        return len(cases)

    return run_check(exercise, fn, reference_momentum_schedule, trials)


def build_teacher(fn: BuildTeacher) -> BuildTeacher:
    """Exercise 5.3: check that `fn(student)` is a separate, frozen copy of the student."""
    exercise = "Exercise 5.3 (build_teacher)"

    def trials(fn: BuildTeacher) -> int:
        seeds = (1, 2, 3)
        for seed in seeds:
            student = _toy(seed)
            state = {k: v.clone() for k, v in student.state_dict().items()}
            case = f"toy network {seed}"
            teacher = fn(student)
            expect(exercise, case, isinstance(teacher, nn.Module),
                   f"expected an nn.Module, got {type(teacher).__name__}")
            expect(exercise, case, teacher is not student,
                   "the teacher is the student itself",
                   "make a copy: copy.deepcopy(student)")
            s_params, t_params = list(student.parameters()), list(teacher.parameters())
            expect(exercise, case, len(s_params) == len(t_params),
                   f"the teacher has {len(t_params)} parameters, the student {len(s_params)}")
            shared = [i for i, (s, t) in enumerate(zip(s_params, t_params, strict=True))
                      if s is t or s.data_ptr() == t.data_ptr()]
            expect(exercise, case, not shared,
                   f"{len(shared)} parameter(s) share memory with the student",
                   "a shallow copy (copy.copy) keeps the same tensors; copy.deepcopy copies them")
            expect(exercise, case, all(p.requires_grad for p in s_params),
                   "the student's parameters no longer require gradients",
                   "switch gradients off on the copy only: the student is the one that trains")
            trainable = [n for n, p in teacher.named_parameters() if p.requires_grad]
            expect(exercise, case, not trainable,
                   f"teacher parameters still require gradients: {trainable[:3]}",
                   "stop-gradient: teacher.requires_grad_(False), so that no gradient and no "
                   "optimizer ever touches the teacher")
            for name, value in teacher.state_dict().items():
                expect(exercise, case, name in state and torch.equal(value, state[name]),
                       f"the teacher's {name!r} differs from the student's",
                       "the teacher starts as an exact copy of the student's weights")
        return len(seeds)

    return run_check(exercise, fn, minidino_build_teacher, trials)
