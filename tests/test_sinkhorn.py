"""Sinkhorn-Knopp centering against a literal transcription of DINOv2's algorithm."""

from __future__ import annotations

import math

import pytest
import torch

from minidino.loss import DINOLoss, cross_view_loss, dino_loss
from minidino.sinkhorn import sinkhorn_knopp


def sinkhorn_as_written(teacher_output: torch.Tensor, teacher_temp: float,
                        n_iterations: int = 3) -> torch.Tensor:
    """DINOv2's `sinkhorn_knopp_teacher` (one process), transcribed step by step."""
    Q = torch.exp(teacher_output.double() / teacher_temp).t()  # float64: exp(100) fits
    B = Q.shape[1]
    K = Q.shape[0]
    Q /= torch.sum(Q)
    for _ in range(n_iterations):
        Q /= torch.sum(Q, dim=1, keepdim=True)
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


@pytest.mark.parametrize("B, K, temp, n_iters", [(16, 32, 0.07, 3), (64, 1024, 0.04, 3),
                                                   (8, 4, 1.0, 1), (32, 16, 0.1, 10)])
def test_matches_the_literal_transcription(B: int, K: int, temp: float, n_iters: int) -> None:
    logits = torch.randn(B, K, generator=torch.Generator().manual_seed(B + K))  # (B, K)
    ours = sinkhorn_knopp(logits, temp, n_iters)
    torch.testing.assert_close(ours, sinkhorn_as_written(logits, temp, n_iters).float(),
                               rtol=1e-4, atol=1e-6)


def test_rows_sum_to_one_and_prototypes_share_the_mass() -> None:
    logits = torch.randn(128, 64, generator=torch.Generator().manual_seed(0))  # (B, K)
    q = sinkhorn_knopp(logits, 0.5, n_iters=50)  # (B, K)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(128))
    torch.testing.assert_close(q.sum(dim=0), torch.full((64,), 128 / 64), rtol=1e-3, atol=1e-3)


def test_a_collapsed_teacher_gets_balanced_targets() -> None:
    # every image's logits favour prototype 0: softmax targets send every image there,
    # Sinkhorn-Knopp spreads the batch over all prototypes
    g = torch.Generator().manual_seed(1)
    logits = 0.1 * torch.randn(64, 16, generator=g)  # (B, K)
    logits[:, 0] += 5.0
    softmax_mass = torch.softmax(logits / 0.1, dim=1).sum(dim=0)  # (K,)
    assert softmax_mass[0] > 0.99 * 64
    q = sinkhorn_knopp(logits, 0.1, n_iters=20)  # (B, K)
    assert q.sum(dim=0).max() < 1.1 * 64 / 16


def test_shift_invariant_and_stable_at_low_temperature() -> None:
    logits = torch.randn(32, 8, generator=torch.Generator().manual_seed(2))  # (B, K)
    torch.testing.assert_close(sinkhorn_knopp(logits + 1.0, 0.05), sinkhorn_knopp(logits, 0.05))
    sharp = sinkhorn_knopp(logits * 50, 0.01)  # exp(5000) is never formed
    assert torch.isfinite(sharp).all()
    torch.testing.assert_close(sharp.sum(dim=1), torch.ones(32))


@pytest.mark.parametrize("kwargs, words", [({"teacher_temp": 0.0}, "teacher_temp=0.0"),
                                           ({"n_iters": 0}, "n_iters=0")])
def test_bad_arguments_are_named(kwargs: dict, words: str) -> None:
    args = {"teacher_out": torch.randn(4, 3), "teacher_temp": 0.1, **kwargs}
    with pytest.raises(ValueError, match=words):
        sinkhorn_knopp(**args)


def test_dino_loss_with_sinkhorn_centering_uses_those_targets() -> None:
    g = torch.Generator().manual_seed(3)
    B, K, n_crops = 8, 32, 4
    student_out = torch.randn(n_crops * B, K, generator=g, requires_grad=True)  # (V*B, K)
    teacher_out = torch.randn(2 * B, K, generator=g)  # (2*B, K)
    loss_fn = DINOLoss(K, n_crops, student_temp=0.1, centering="sinkhorn")
    loss = loss_fn(student_out, teacher_out, teacher_temp=0.05)
    expected = cross_view_loss(student_out, sinkhorn_as_written(teacher_out, 0.05).float(), 0.1)
    torch.testing.assert_close(loss, expected)
    # with softmax targets instead, cross_view_loss is exactly the DINO loss
    center = torch.randn(1, K, generator=g)
    p_t = torch.softmax((teacher_out - center) / 0.05, dim=1)
    torch.testing.assert_close(cross_view_loss(student_out, p_t, 0.1),
                               dino_loss(student_out, teacher_out, center, 0.1, 0.05))
    loss.backward()
    assert student_out.grad is not None and math.isfinite(loss.detach().item())
    with pytest.raises(ValueError, match="centering='mean'"):
        DINOLoss(K, n_crops, centering="mean")
