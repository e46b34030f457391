"""KoLeo against a literal double loop, known geometric answers, and its gradient's direction."""

from __future__ import annotations

import math

import pytest
import torch

from minidino.koleo import koleo_loss


def koleo_by_loops(features: torch.Tensor, eps: float = 1e-8) -> float:
    """Every pair, one at a time, in float64: normalise, nearest other row, -mean log distance."""
    x = [row / row.norm() for row in features.double()]
    total = 0.0
    for i, xi in enumerate(x):
        nearest = min((xi - xj).norm().item() for j, xj in enumerate(x) if j != i)
        total += math.log(nearest + eps)
    return -total / len(x)


@pytest.mark.parametrize("B, D, seed", [(2, 3, 0), (5, 4, 1), (16, 8, 2), (33, 2, 3)])
def test_matches_double_loop(B: int, D: int, seed: int) -> None:
    features = torch.randn(B, D, generator=torch.Generator().manual_seed(seed))
    expected = koleo_by_loops(features)
    assert koleo_loss(features.double()).item() == pytest.approx(expected, rel=1e-10, abs=1e-10)
    assert koleo_loss(features).item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("D", [2, 5, 16])
def test_orthonormal_basis_and_antipodes(D: int) -> None:
    basis = torch.eye(D)  # every pair is sqrt(2) apart
    assert koleo_loss(basis).item() == pytest.approx(-math.log(math.sqrt(2)), abs=1e-6)
    both = torch.cat([basis, -basis])  # the cross-polytope: neighbours still sqrt(2) apart
    assert koleo_loss(both).item() == pytest.approx(-math.log(math.sqrt(2)), abs=1e-6)
    antipodes = torch.stack([basis[0], -basis[0]])  # two points as far apart as can be: 2
    assert koleo_loss(antipodes).item() == pytest.approx(-math.log(2.0), abs=1e-6)


def test_regular_simplex() -> None:
    """D + 1 points of a regular simplex: unit vectors with pairwise cosine -1 / D."""
    D = 4
    corners = torch.eye(D + 1) - 1.0 / (D + 1)  # centred basis of R^(D+1), spans a D-dim space
    distance = math.sqrt(2 + 2 / D)  # |a - b|^2 = 2 - 2 cos, cos = -1 / D
    assert koleo_loss(corners).item() == pytest.approx(-math.log(distance), abs=1e-6)


def test_scale_invariant_and_duplicates_finite() -> None:
    g = torch.Generator().manual_seed(4)
    features = torch.randn(12, 6, generator=g)
    scales = torch.rand(12, 1, generator=g) * 100 + 0.01  # a different scale for every row
    assert koleo_loss(features * scales).item() == pytest.approx(koleo_loss(features).item(),
                                                                 abs=1e-5)
    same = torch.ones(3, 4)  # all identical: distance 0, the loss is -log(eps), not inf
    assert koleo_loss(same).item() == pytest.approx(-math.log(1e-8), rel=1e-6)


def test_gradient_step_pushes_close_points_apart() -> None:
    g = torch.Generator().manual_seed(5)
    far = torch.randn(6, 8, generator=g)
    pair = torch.randn(1, 8, generator=g).repeat(2, 1) + 0.01 * torch.randn(2, 8, generator=g)
    features = torch.cat([pair, far]).requires_grad_()  # rows 0 and 1 nearly the same

    def gap(x: torch.Tensor) -> float:
        u = torch.nn.functional.normalize(x.detach(), dim=1)
        return (u[0] - u[1]).norm().item()

    loss = koleo_loss(features)
    loss.backward()
    assert torch.isfinite(features.grad).all()
    stepped = features - 1e-3 * features.grad
    assert gap(stepped) > gap(features)
    assert koleo_loss(stepped).item() < loss.item()


def test_bad_input_names_the_argument() -> None:
    with pytest.raises(ValueError, match="features.*B >= 2"):
        koleo_loss(torch.randn(1, 4))
    with pytest.raises(ValueError, match=r"features must be a 2-D tensor"):
        koleo_loss(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match=r"features must be a 2-D tensor"):
        koleo_loss(torch.randn(4))
    with pytest.raises(ValueError, match="features has dtype"):
        koleo_loss(torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="eps"):
        koleo_loss(torch.randn(3, 4), eps=0.0)
