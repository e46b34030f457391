"""The lesson 10 checks accept minidino's answers and reject the usual mistakes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from minidino import checks, koleo, sinkhorn
from minidino.checks import CheckFailed
from minidino.checks.lesson10_dinov2 import reference_split_tokens


def _not_done(*args: object) -> Tensor:
    raise NotImplementedError("Exercise: not done yet")


# ------------------------------------------------------------------ Exercise 10.1
def test_koleo_loss_accepts_the_reference() -> None:
    assert checks.koleo_loss(koleo.koleo_loss) is koleo.koleo_loss


def test_koleo_loss_accepts_a_cdist_version() -> None:
    def mine(features: Tensor, eps: float = 1e-8) -> Tensor:
        x = F.normalize(features, dim=1)  # (B, D)
        d = torch.cdist(x, x) + torch.diag(torch.full((len(x),), float("inf")))  # (B, B)
        return -torch.log(d.min(dim=1).values + eps).mean()

    assert checks.koleo_loss(mine) is mine


def test_koleo_loss_not_done_falls_back() -> None:
    assert checks.koleo_loss(_not_done) is koleo.koleo_loss


def _includes_self(features: Tensor, eps: float = 1e-8) -> Tensor:
    x = F.normalize(features, dim=1)
    return -torch.log(torch.cdist(x, x).min(dim=1).values + eps).mean()


def _not_normalised(features: Tensor, eps: float = 1e-8) -> Tensor:
    d = torch.cdist(features, features) + torch.diag(torch.full((len(features),), float("inf")))
    return -torch.log(d.min(dim=1).values + eps).mean()


def _squared_distance(features: Tensor, eps: float = 1e-8) -> Tensor:
    x = F.normalize(features, dim=1)
    d = torch.cdist(x, x).pow(2) + torch.diag(torch.full((len(x),), float("inf")))
    return -torch.log(d.min(dim=1).values + eps).mean()


@pytest.mark.parametrize("wrong", [_includes_self, _not_normalised, _squared_distance])
def test_koleo_loss_rejects(wrong) -> None:
    with pytest.raises(CheckFailed):
        checks.koleo_loss(wrong)


def test_koleo_loss_names_the_mistakes() -> None:
    with pytest.raises(CheckFailed, match="own nearest neighbour"):
        checks.koleo_loss(_includes_self)
    with pytest.raises(CheckFailed, match="SQUARED"):
        checks.koleo_loss(_squared_distance)
    with pytest.raises(CheckFailed, match="normalised"):
        checks.koleo_loss(_not_normalised)


# ------------------------------------------------------------------ Exercise 10.2
def test_sinkhorn_knopp_accepts_the_reference() -> None:
    assert checks.sinkhorn_knopp(sinkhorn.sinkhorn_knopp) is sinkhorn.sinkhorn_knopp


def _dinov2(teacher_out: Tensor, teacher_temp: float, n_iters: int = 3) -> Tensor:
    """DINOv2's own version (plain exp, first normalisation kept)."""
    Q = torch.exp(teacher_out / teacher_temp).t()  # (K, B)
    K, B = Q.shape
    Q = Q / Q.sum()
    for _ in range(n_iters):
        Q = Q / Q.sum(dim=1, keepdim=True) / K
        Q = Q / Q.sum(dim=0, keepdim=True) / B
    return (Q * B).t()  # (B, K)


def test_sinkhorn_knopp_accepts_dinov2s_version() -> None:
    assert checks.sinkhorn_knopp(_dinov2) is _dinov2


def test_sinkhorn_knopp_not_done_falls_back() -> None:
    assert checks.sinkhorn_knopp(_not_done) is sinkhorn.sinkhorn_knopp


def _roles_swapped(teacher_out: Tensor, teacher_temp: float, n_iters: int = 3) -> Tensor:
    Q = torch.exp(teacher_out / teacher_temp).t()  # (K, B)
    K, B = Q.shape
    for _ in range(n_iters):
        Q = Q / Q.sum(dim=0, keepdim=True) / B  # images first ...
        Q = Q / Q.sum(dim=1, keepdim=True) / K  # ... prototypes last
    return (Q * B).t()


def _one_step_only(teacher_out: Tensor, teacher_temp: float, n_iters: int = 3) -> Tensor:
    Q = torch.exp(teacher_out / teacher_temp).t()  # (K, B)
    K, B = Q.shape
    for _ in range(n_iters):
        Q = Q / Q.sum(dim=0, keepdim=True) / B  # only the images are normalised
    return (Q * B).t()


def _no_temperature(teacher_out: Tensor, teacher_temp: float, n_iters: int = 3) -> Tensor:
    return _dinov2(teacher_out, 1.0, n_iters)


def _not_transposed_back(teacher_out: Tensor, teacher_temp: float, n_iters: int = 3) -> Tensor:
    return _dinov2(teacher_out, teacher_temp, n_iters).t()


@pytest.mark.parametrize("wrong", [_roles_swapped, _one_step_only, _no_temperature,
                                   _not_transposed_back])
def test_sinkhorn_knopp_rejects(wrong) -> None:
    with pytest.raises(CheckFailed):
        checks.sinkhorn_knopp(wrong)


def test_sinkhorn_knopp_explains_swapped_roles() -> None:
    with pytest.raises(CheckFailed, match="sum to"):
        checks.sinkhorn_knopp(_roles_swapped)


# ------------------------------------------------------------------ Exercise 10.3
def test_split_tokens_accepts_the_reference() -> None:
    assert checks.split_tokens(reference_split_tokens) is reference_split_tokens


def test_split_tokens_accepts_another_correct_version() -> None:
    def mine(tokens: Tensor, n_registers: int) -> tuple[Tensor, Tensor, Tensor]:
        cls, registers, patches = tokens.split([1, n_registers, tokens.shape[1] - 1 - n_registers],
                                               dim=1)
        return cls.squeeze(1), registers, patches

    assert checks.split_tokens(mine) is mine


def test_split_tokens_not_done_falls_back() -> None:
    assert checks.split_tokens(_not_done) is reference_split_tokens


def _registers_as_patches(tokens: Tensor, n_registers: int) -> tuple[Tensor, Tensor, Tensor]:
    return tokens[:, 0], tokens[:, 1 : 1 + n_registers], tokens[:, 1:]


def _registers_at_the_end(tokens: Tensor, n_registers: int) -> tuple[Tensor, Tensor, Tensor]:
    T = tokens.shape[1]
    return tokens[:, 0], tokens[:, T - n_registers :], tokens[:, 1 : T - n_registers]


def _cls_keeps_its_axis(tokens: Tensor, n_registers: int) -> tuple[Tensor, Tensor, Tensor]:
    return tokens[:, :1], tokens[:, 1 : 1 + n_registers], tokens[:, 1 + n_registers :]


@pytest.mark.parametrize("wrong", [_registers_as_patches, _registers_at_the_end,
                                   _cls_keeps_its_axis])
def test_split_tokens_rejects(wrong) -> None:
    with pytest.raises(CheckFailed):
        checks.split_tokens(wrong)


def test_split_tokens_names_registers_as_patches() -> None:
    with pytest.raises(CheckFailed, match="registers are not patches"):
        checks.split_tokens(_registers_as_patches)
