"""Schedules: one precomputed value per training step for everything that changes.

Why precompute: DINO changes five numbers during training (learning rate, weight decay, teacher
momentum, teacher temperature, and iBOT's patch temperature). Computing every value once, as a
tensor indexed by the step, keeps the training step free of schedule logic and makes a resumed
run continue with exactly the values it would have had.

- ``cosine_schedule``: a linear warm-up, then half a cosine from a base value to a final one
  (learning rate 5e-4 * B / 256 -> 1e-6, weight decay 0.04 -> 0.4, teacher momentum 0.996 -> 1).
- ``teacher_temp_schedule``: a linear warm-up of the teacher temperature, then constant.
- ``Schedules``: all of them for one run, built from its config; ``Schedules.at(step)`` gives
  one step's values as Python floats (what the training step sets). The tensors live on the
  CPU, so reading them never waits for a GPU, and a lesson may swap one for another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from minidino.config import TrainConfig
from minidino.loss import check_temperature


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


def teacher_temp_schedule(
    warmup_teacher_temp: float,
    teacher_temp: float,
    warmup_steps: int,
    total_steps: int,
) -> Tensor:
    """Teacher temperature per step, (total_steps,) float64.

    Linear from ``warmup_teacher_temp`` to ``teacher_temp`` over the first ``warmup_steps``
    steps (both ends included), then constant ``teacher_temp``. DINO starts sharp and softens,
    0.04 -> 0.07 over 30 epochs when training long. The official code gives the reason: a
    temperature that is too high at the start makes training unstable (a soft teacher lets the
    centering pull every output to uniform), and above about 0.07 most runs are unstable.
    """
    check_temperature("warmup_teacher_temp", warmup_teacher_temp)
    check_temperature("teacher_temp", teacher_temp)
    # a "cosine" from teacher_temp to itself is constant: only the linear warm-up remains
    return cosine_schedule(teacher_temp, teacher_temp, total_steps, warmup_steps,
                           start_warmup_value=warmup_teacher_temp)  # (total_steps,)


class StepValues(NamedTuple):
    """One step's values of every schedule, as Python floats."""

    lr: float
    weight_decay: float
    teacher_momentum: float
    teacher_temp: float
    ibot_teacher_temp: float


@dataclass
class Schedules:
    """Per-step values of everything that changes during training (tensors on the CPU)."""

    lr: Tensor  # (total_steps,)
    weight_decay: Tensor
    teacher_momentum: Tensor
    teacher_temp: Tensor
    ibot_teacher_temp: Tensor  # the patch loss's, with the same warm-up

    def at(self, step: int) -> StepValues:
        """The values of step `step` as floats: `sched.at(step).lr == float(sched.lr[step])`."""
        return StepValues(*(float(getattr(self, name)[step]) for name in StepValues._fields))

    @classmethod
    def build(cls, cfg: TrainConfig, steps_per_epoch: int) -> Schedules:
        total = cfg.epochs * steps_per_epoch
        peak_lr = cfg.lr * cfg.batch_size / 256  # the linear scaling rule
        return cls(
            lr=cosine_schedule(peak_lr, cfg.min_lr, total, cfg.warmup_epochs * steps_per_epoch),
            weight_decay=cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, total),
            teacher_momentum=cosine_schedule(cfg.teacher_momentum, 1.0, total),
            teacher_temp=teacher_temp_schedule(cfg.warmup_teacher_temp, cfg.teacher_temp,
                                               cfg.warmup_teacher_temp_epochs * steps_per_epoch,
                                               total),
            ibot_teacher_temp=teacher_temp_schedule(
                cfg.warmup_teacher_temp, cfg.ibot_teacher_temp,
                cfg.warmup_teacher_temp_epochs * steps_per_epoch, total),
        )
