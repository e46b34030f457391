"""Collapse diagnostics: is the teacher still telling the student anything?

Self-distillation has two trivial solutions (DINO paper, section 5.3 and Fig. 7):

- one-prototype collapse: every image goes to the same output dimension. The teacher's output
  is one-hot, its entropy is 0. Centering (subtracting a running mean of the teacher's logits)
  fights this.
- uniform collapse: the teacher's output is flat for every image, entropy log K. Sharpening
  (a low teacher_temp) fights this.

Either way the student can copy the teacher perfectly, so the KL divergence between them drops to
0 and the loss stops carrying information. Healthy training keeps the teacher's per-image entropy
well between 0 and log K, and a KL above 0. A third number separates the two collapses from a
healthy run: the entropy of the *batch-averaged* teacher distribution stays high only when
different images pick different prototypes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from minidino.loss import check_temperature


def entropy(p: Tensor, dim: int = -1) -> Tensor:
    """Shannon entropy in nats, -sum p log p along `dim`, with 0 log 0 = 0.

    p: probabilities, e.g. (B, K) -> returns (B,). Zeros give 0, never NaN.
    """
    return -torch.xlogy(p, p).sum(dim)


@torch.no_grad()
def collapse_metrics(
    teacher_out: Tensor,
    student_out: Tensor,
    center: Tensor,
    teacher_temp: float,
    student_temp: float,
    n_global_crops: int = 2,
) -> dict[str, float]:
    """Entropy and KL numbers that reveal collapse, from one step's logits.

    teacher_out: (n_global_crops * B, K) teacher logits on the global crops.
    student_out: (n_crops * B, K) student logits, global crops first (the order DINO uses), so its
        first n_global_crops * B rows see the same crops as the teacher.
    center: (K,) or (1, K), the running center subtracted from the teacher's logits.
    The teacher's distribution is p_t = softmax((teacher_out - center) / teacher_temp) and the
    student's p_s = softmax(student_out / student_temp), both over K prototypes.

    Returns floats:
        teacher_entropy     mean over rows of H(p_t), nats; 0 = one prototype dominates
        kl_teacher_student  mean over rows of KL(p_t || p_s) on the same crops; 0 = nothing to learn
        mean_entropy        H(mean over rows of p_t); near 0 when every image picks one prototype
        prototypes_used     number of distinct argmax(p_t) across the rows
        max_entropy         log K, the entropy of the uniform distribution
    """
    if teacher_out.ndim != 2 or student_out.ndim != 2:
        raise ValueError(
            f"teacher_out and student_out must have shape (rows, K), got "
            f"teacher_out={tuple(teacher_out.shape)} student_out={tuple(student_out.shape)}"
        )
    K = teacher_out.shape[1]
    if student_out.shape[1] != K:
        raise ValueError(f"student_out has K={student_out.shape[1]} but teacher_out has K={K}")
    if center.shape not in ((K,), (1, K)):
        raise ValueError(f"center must have shape ({K},) or (1, {K}), got {tuple(center.shape)}")
    if n_global_crops < 1 or len(teacher_out) == 0 or len(teacher_out) % n_global_crops:
        raise ValueError(
            f"teacher_out has {len(teacher_out)} rows; it must be a positive multiple of "
            f"n_global_crops={n_global_crops} (n_global_crops >= 1)"
        )
    B = len(teacher_out) // n_global_crops
    if len(student_out) < len(teacher_out) or len(student_out) % B:
        raise ValueError(
            f"student_out has {len(student_out)} rows; it must be a multiple of B={B} and at "
            f"least the {len(teacher_out)} rows of teacher_out"
        )
    check_temperature("teacher_temp", teacher_temp)
    check_temperature("student_temp", student_temp)

    t = (teacher_out.float() - center.float().reshape(1, K)) / teacher_temp  # (n_global*B, K)
    s = student_out[: len(teacher_out)].float() / student_temp  # (n_global*B, K)
    log_p_t = F.log_softmax(t, dim=-1)  # (n_global*B, K)
    log_p_s = F.log_softmax(s, dim=-1)  # (n_global*B, K)
    p_t = log_p_t.exp()  # (n_global*B, K)

    kl = (p_t * (log_p_t - log_p_s)).sum(-1)  # (n_global*B,)
    return {
        "teacher_entropy": entropy(p_t).mean().item(),
        "kl_teacher_student": kl.mean().item(),
        "mean_entropy": entropy(p_t.mean(0)).item(),
        "prototypes_used": p_t.argmax(-1).unique().numel(),
        "max_entropy": math.log(K),
    }


def collapse_mode(teacher_entropy: float, out_dim: int, tol: float = 0.05) -> str | None:
    """Name the collapse that a teacher entropy points to, or None when it looks healthy.

    "one-prototype" when teacher_entropy < tol * log(out_dim) (outputs nearly one-hot),
    "uniform" when teacher_entropy > (1 - tol) * log(out_dim) (outputs nearly flat).
    """
    if out_dim < 2:
        raise ValueError(f"out_dim={out_dim} must be >= 2")
    if not 0 < tol < 0.5:
        raise ValueError(f"tol={tol} must lie in (0, 0.5)")
    max_entropy = math.log(out_dim)
    if teacher_entropy < tol * max_entropy:
        return "one-prototype"
    if teacher_entropy > (1 - tol) * max_entropy:
        return "uniform"
    return None
