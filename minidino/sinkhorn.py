"""Sinkhorn-Knopp centering (SwAV, DINOv2): balanced teacher targets by construction.

Why: DINO's center is a running mean that is subtracted from the teacher's logits so that no
prototype wins for every image. It only nudges the teacher, and a run can still drift into one of
the two collapses. DINOv2 replaces it with a few Sinkhorn-Knopp iterations over the batch: the
teacher's targets Q (B x K) are rescaled until every prototype receives the same total mass
(1/K of the batch) and every image's row sums to 1. One prototype cannot take every image, and a
uniform output is not a fixed point either, because each row keeps its sharpened shape.

How, with S = exp(teacher_out / teacher_temp) seen as a K x B matrix:

    Q = S / sum(S)
    repeat n_iters times:
        divide each row (prototype) by its sum, then by K    # every prototype gets 1/K
        divide each column (image) by its sum, then by B     # every image gets 1/B
    targets = B * Q, transposed back to (B, K)               # each row sums to 1

(The first normalisation of Q is left out below: the row step that follows undoes any scale.)

Under torch.distributed the sums run over every process's images, as in DINOv2.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _logsumexp_over_images(log_q: Tensor) -> Tensor:
    """log of each row's sum of exp, (K, B) -> (K, 1), over every process's images."""
    top = log_q.max(dim=1, keepdim=True).values  # (K, 1)
    if _distributed():
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
    total = (log_q - top).exp().sum(dim=1, keepdim=True)  # (K, 1)
    if _distributed():
        dist.all_reduce(total)
    return total.log() + top  # (K, 1)


@torch.no_grad()
def sinkhorn_knopp(teacher_out: Tensor, teacher_temp: float, n_iters: int = 3) -> Tensor:
    """teacher_out (B, K) logits -> (B, K) targets: rows sum to 1, columns to B / K each.

    teacher_temp: the sharpening temperature (> 0); n_iters: Sinkhorn iterations (>= 1).
    The iterations run on logarithms (divisions become subtractions), so a low temperature
    cannot overflow exp() or leave a prototype with a mass of exactly 0.
    """
    if not teacher_temp > 0:
        raise ValueError(f"teacher_temp={teacher_temp!r} must be > 0")
    if n_iters < 1:
        raise ValueError(f"n_iters={n_iters!r} must be >= 1")
    if teacher_out.ndim != 2:
        raise ValueError(f"teacher_out must be (B, K), got shape {tuple(teacher_out.shape)}")
    log_q = teacher_out.detach().float().T / teacher_temp  # (K, B) log of the unnormalised Q
    K, n_local = log_q.shape
    # images on all processes, as a tensor made on the device (no copy from the host)
    B = torch.full((), float(n_local), device=log_q.device)
    if _distributed():
        dist.all_reduce(B)
    log_K, log_B = math.log(K), B.log()
    for _ in range(n_iters):
        log_q = log_q - _logsumexp_over_images(log_q) - log_K  # each prototype: mass 1/K
        log_q = log_q - log_q.logsumexp(dim=0, keepdim=True) - log_B  # each image: mass 1/B
    return (log_q + log_B).exp().T  # (B, K), each row sums to 1
