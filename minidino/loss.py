"""The DINO loss: the student learns to predict the teacher's (centred, sharpened) distribution.

Why: DINO has no labels. For each image the teacher sees the global crops and the student sees
every crop; the student is trained so that, from *any* crop, it predicts the teacher's output on
a *different* crop of the same image. Matching across views forces features that ignore what the
augmentations change.

How (DINO paper, Algorithm 1), with K prototypes:

    p_t = softmax((teacher_out - center) / teacher_temp)      # target, no gradient
    log p_s = log_softmax(student_out / student_temp)
    H(p_t, p_s) = - sum_k p_t[k] * log p_s[k]
    loss = mean over (teacher global crop iq, student crop v) pairs with v != iq,
           and over the B images, of H(p_t, p_s)

Two tricks stop the trivial solutions (collapse):
* sharpening: a low teacher_temp (0.04) makes the target peaky, pushing away from "uniform";
* centering: subtracting ``center``, a running mean of the teacher's logits, stops one
  prototype from winning for every image. ``center`` is updated with an EMA after each step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from minidino.sinkhorn import sinkhorn_knopp

CENTERINGS = ("center", "sinkhorn")


def dino_loss(
    student_out: Tensor,
    teacher_out: Tensor,
    center: Tensor,
    student_temp: float,
    teacher_temp: float,
    n_global_crops: int = 2,
) -> Tensor:
    """Cross-entropy between teacher and student over every pair of different crops.

    Args:
        student_out: (n_crops * B, K) student logits, crops in order (global crops first).
        teacher_out: (n_global_crops * B, K) teacher logits on the global crops.
        center: (1, K) running mean of teacher logits.
        student_temp, teacher_temp: softmax temperatures (> 0).
        n_global_crops: how many of the crops the teacher sees (they come first).

    Returns:
        scalar loss (float32); no gradient flows into ``teacher_out``.
    """
    check_temperature("student_temp", student_temp)
    check_temperature("teacher_temp", teacher_temp)
    _check_shapes(student_out, teacher_out, center, n_global_crops)
    return cross_view_loss(student_out, centred_targets(teacher_out, center, teacher_temp),
                           student_temp, n_global_crops)


def centred_targets(teacher_out: Tensor, center: Tensor, teacher_temp: float) -> Tensor:
    """The teacher's targets: softmax((teacher_out - center) / teacher_temp), no gradient.

    teacher_out: (G * B, K) logits; center: (1, K). Returns (G * B, K) float32 probabilities.
    """
    teacher_logits = (teacher_out.detach().float() - center.float()) / teacher_temp
    return F.softmax(teacher_logits, dim=-1)  # (G * B, K)


def cross_view_loss(student_out: Tensor, teacher_probs: Tensor, student_temp: float,
                    n_global_crops: int = 2) -> Tensor:
    """The cross-entropy part of the DINO loss, given the teacher's target probabilities.

    student_out: (n_crops * B, K) logits; teacher_probs: (n_global_crops * B, K), rows sum to 1
    (centred-and-sharpened softmax, or Sinkhorn-Knopp targets). Returns a float32 scalar.
    Shapes are not checked here: `dino_loss` and `DINOLoss` check them once.
    """
    G, K = n_global_crops, teacher_probs.shape[1]
    B = teacher_probs.shape[0] // G
    n_crops = student_out.shape[0] // B
    # Softmax and log over K classes lose precision in bf16: do the loss in float32.
    with torch.autocast(device_type=student_out.device.type, enabled=False):
        p_t = teacher_probs.detach().float().reshape(G, B, K)  # (G, B, K), the targets
        student_logits = student_out.float() / student_temp
        log_p_s = F.log_softmax(student_logits, dim=-1).reshape(n_crops, B, K)  # (V, B, K)

        # Cross-entropy for every (teacher crop iq, student crop v) pair, averaged over B.
        ce = -torch.einsum("gbk,vbk->gv", p_t, log_p_s) / B  # (G, V)
        # Leave out the pairs where the student sees the very crop the teacher saw (v == iq):
        # they sit on the diagonal ce[iq, iq]. G * (V - 1) pairs remain.
        n_pairs = G * (n_crops - 1)
        return (ce.sum() - ce.diagonal().sum()) / n_pairs


class DINOLoss(nn.Module):
    """``dino_loss`` plus the teacher ``center`` it needs, updated after every call.

    Args:
        out_dim: number of prototypes K.
        n_crops: crops the student sees per image (global + local).
        student_temp: student softmax temperature (DINO: 0.1).
        center_momentum: EMA momentum of the center (DINO: 0.9).
        n_global_crops: crops the teacher sees per image (DINO: 2).
        centering: "center" (DINO: subtract the running mean, then softmax) or "sinkhorn"
            (DINOv2: Sinkhorn-Knopp targets, see `minidino.sinkhorn`; the running center is
            still kept, for the diagnostics).
    """

    center: Tensor

    def __init__(
        self,
        out_dim: int,
        n_crops: int,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        n_global_crops: int = 2,
        centering: str = "center",
    ) -> None:
        super().__init__()
        _check_arguments(out_dim, n_crops, student_temp, center_momentum, n_global_crops,
                         centering)
        self.out_dim = out_dim
        self.n_crops = n_crops
        self.n_global_crops = n_global_crops
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.centering = centering
        self.register_buffer("center", torch.zeros(1, out_dim))  # (1, K)

    def forward(self, student_out: Tensor, teacher_out: Tensor, teacher_temp: float) -> Tensor:
        """student_out (n_crops * B, K), teacher_out (n_global_crops * B, K) -> scalar loss.

        The loss uses the current center; the center is then updated with this batch.
        """
        _, n_crops = _check_shapes(student_out, teacher_out, self.center, self.n_global_crops)
        if n_crops != self.n_crops:
            raise ValueError(
                f"student_out holds {n_crops} crops per image but this DINOLoss was built with "
                f"n_crops={self.n_crops}; expected shape (n_crops * B, K) = "
                f"({self.n_crops * teacher_out.shape[0] // self.n_global_crops}, {self.out_dim})"
            )
        check_temperature("teacher_temp", teacher_temp)
        if self.centering == "sinkhorn":
            targets = sinkhorn_knopp(teacher_out, teacher_temp)  # (G * B, K)
        else:
            targets = centred_targets(teacher_out, self.center, teacher_temp)  # (G * B, K)
        loss = cross_view_loss(student_out, targets, self.student_temp, self.n_global_crops)
        self._update_center(teacher_out)  # shapes checked above
        return loss

    def update_center(self, teacher_out: Tensor) -> None:
        """center <- m * center + (1 - m) * mean of teacher_out rows (over all processes).

        teacher_out: (rows, K). Under torch.distributed the mean covers every process's batch.
        """
        if teacher_out.ndim != 2 or teacher_out.shape[1] != self.out_dim:
            raise ValueError(
                f"teacher_out has shape {tuple(teacher_out.shape)}; expected "
                f"(rows, out_dim={self.out_dim})"
            )
        self._update_center(teacher_out)

    @torch.no_grad()
    def _update_center(self, teacher_out: Tensor) -> None:
        batch_sum = teacher_out.float().sum(dim=0, keepdim=True)  # (1, K)
        n_rows = teacher_out.shape[0]
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_sum)
            n_rows *= dist.get_world_size()
        batch_center = batch_sum / n_rows  # (1, K)
        m = self.center_momentum
        self.center.mul_(m).add_(batch_center, alpha=1.0 - m)  # (1, K)


# ------------------------------------------------------------------------ input checks
def check_temperature(name: str, value: float) -> None:
    """A softmax temperature must be > 0 (it divides the logits)."""
    if not value > 0:
        raise ValueError(f"{name}={value!r} must be > 0")


def _check_arguments(out_dim: int, n_crops: int, student_temp: float, center_momentum: float,
                     n_global_crops: int, centering: str) -> None:
    """The arguments of `DINOLoss`."""
    if centering not in CENTERINGS:
        raise ValueError(f"centering={centering!r} is not one of {CENTERINGS}")
    if out_dim < 2:
        raise ValueError(f"out_dim (K)={out_dim} must be >= 2")
    if n_global_crops < 1:
        raise ValueError(f"n_global_crops={n_global_crops} must be >= 1")
    if n_crops < max(n_global_crops, 2):
        raise ValueError(f"n_crops={n_crops} must be >= n_global_crops={n_global_crops} "
                         "and >= 2 (the loss compares two different crops)")
    check_temperature("student_temp", student_temp)
    if not 0.0 <= center_momentum <= 1.0:
        raise ValueError(f"center_momentum={center_momentum!r} must be in [0, 1]")


def _check_shapes(
    student_out: Tensor, teacher_out: Tensor, center: Tensor, n_global_crops: int
) -> tuple[int, int]:
    """Check the three inputs agree; return (B, n_crops)."""
    if n_global_crops < 1:
        raise ValueError(f"n_global_crops={n_global_crops} must be >= 1")
    if teacher_out.ndim != 2:
        raise ValueError(
            f"teacher_out has shape {tuple(teacher_out.shape)}; expected (n_global_crops * B, K)"
        )
    G, K = n_global_crops, teacher_out.shape[1]
    if K < 2:
        raise ValueError(f"out_dim (K)={K} must be >= 2")
    if teacher_out.shape[0] == 0 or teacher_out.shape[0] % G != 0:
        raise ValueError(
            f"teacher_out has {teacher_out.shape[0]} rows; expected "
            f"n_global_crops * B = {G} * B with B >= 1"
        )
    B = teacher_out.shape[0] // G
    if student_out.ndim != 2 or student_out.shape[1] != K or student_out.shape[0] % B != 0:
        raise ValueError(
            f"student_out has shape {tuple(student_out.shape)}; expected "
            f"(n_crops * B, K) with B={B}, K={K} (from teacher_out)"
        )
    n_crops = student_out.shape[0] // B
    if n_crops < max(G, 2):
        raise ValueError(
            f"student_out holds n_crops={n_crops} crops of B={B}; it needs at "
            f"least max(n_global_crops={G}, 2): the student sees the global crops "
            "too, and the loss compares two different crops"
        )
    if tuple(center.shape) not in ((1, K), (K,)):
        raise ValueError(f"center has shape {tuple(center.shape)}; expected (1, K) = (1, {K})")
    return B, n_crops
