"""The lesson 11 checks accept the reference, fall back on stubs and reject the usual mistakes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from minidino import checks
from minidino.checks import CheckFailed
from minidino.checks.lesson11_propagation import reference_propagate_step
from minidino.propagation import j_score, propagate_labels


# ---------------------------------------------------------------- Exercise 11.1
def frame_j_stub(pred: Tensor, gt: Tensor) -> float:
    raise NotImplementedError("Exercise 11.1: J of one frame")


def _ious(pred: Tensor, gt: Tensor, ids: range) -> list[tuple[float, float]]:
    """(intersection, union) of each id, skipping ids absent from both."""
    out = []
    for i in ids:
        p, g = pred == i, gt == i
        inter, union = float((p & g).sum()), float((p | g).sum())
        if union > 0:
            out.append((inter, union))
    return out


def frame_j_by_hand(pred: Tensor, gt: Tensor) -> float:
    """A learner's correct version: a Python loop over the ids 1..n."""
    pairs = _ious(pred, gt, range(1, int(max(pred.max(), gt.max())) + 1))
    return sum(i / u for i, u in pairs) / len(pairs) if pairs else math.nan


def frame_j_swapped(pred: Tensor, gt: Tensor) -> float:
    pairs = _ious(pred, gt, range(1, int(max(pred.max(), gt.max())) + 1))
    return sum(u / max(i, 1) for i, u in pairs) / len(pairs) if pairs else math.nan


def frame_j_with_background(pred: Tensor, gt: Tensor) -> float:
    pairs = _ious(pred, gt, range(0, int(max(pred.max(), gt.max())) + 1))
    return sum(i / u for i, u in pairs) / len(pairs)


def frame_j_size_weighted(pred: Tensor, gt: Tensor) -> float:
    pairs = _ious(pred, gt, range(1, int(max(pred.max(), gt.max())) + 1))
    return sum(i for i, _ in pairs) / sum(u for _, u in pairs) if pairs else math.nan


def frame_j_absent_as_zero(pred: Tensor, gt: Tensor) -> float:
    n = int(max(pred.max(), gt.max()))
    pairs = _ious(pred, gt, range(1, n + 1))
    return sum(i / u for i, u in pairs) / n if n else math.nan


def frame_j_gt_ids_only(pred: Tensor, gt: Tensor) -> float:
    pairs = _ious(pred, gt, range(1, int(gt.max()) + 1))
    return sum(i / u for i, u in pairs) / len(pairs) if pairs else math.nan


def frame_j_divides_by_zero(pred: Tensor, gt: Tensor) -> float:
    pairs = _ious(pred, gt, range(1, int(max(pred.max(), gt.max())) + 1))
    return sum(i / u for i, u in pairs) / len(pairs)


def test_frame_j_reference_and_correct_version_pass() -> None:
    assert checks.frame_j_score(j_score) is j_score
    assert checks.frame_j_score(frame_j_by_hand) is frame_j_by_hand


def test_frame_j_stub_falls_back_to_reference() -> None:
    assert checks.frame_j_score(frame_j_stub) is j_score


@pytest.mark.parametrize("wrong, words", [
    (frame_j_swapped, "swap"),
    (frame_j_with_background, "background \\(id 0\\) is scored"),
    (frame_j_size_weighted, "weighted by their size"),
    (frame_j_absent_as_zero, "absent from both maps counts as 0"),
    (frame_j_gt_ids_only, "only the ids of the ground truth"),
    (frame_j_divides_by_zero, "nothing to average"),
])
def test_frame_j_rejects_typical_mistakes(wrong, words: str) -> None:
    with pytest.raises(CheckFailed, match=words):
        checks.frame_j_score(wrong)


# ---------------------------------------------------------------- Exercise 11.2
def step_stub(context_features, context_labels, target_features, topk, temperature, radius,
              grid) -> Tensor:
    raise NotImplementedError("Exercise 11.2: one propagation step")


def _step(context_features: Tensor, context_labels: Tensor, target_features: Tensor, topk: int,
          temperature: float, radius: int | None, grid: tuple[int, int], window: bool = True,
          weighted: bool = True, normalise: bool = True, dim: int = 1) -> Tensor:
    """A learner's version written independently (loops over target patches), with switches
    that turn it into the usual mistakes."""
    C, N, D = context_features.shape
    h, w = grid
    keys, queries = context_features, target_features
    if normalise:
        keys, queries = F.normalize(keys, dim=-1), F.normalize(queries, dim=-1)
    rows, cols = torch.arange(N) // w, torch.arange(N) % w  # (N,)
    scores = torch.einsum("nd,cmd->ncm", queries, keys)  # (N, C, N)
    if window and radius is not None:
        far = ((rows[:, None] - rows[None]).abs() > radius) | (
            (cols[:, None] - cols[None]).abs() > radius)  # (N, N)
        scores = scores.masked_fill(far[:, None], -1e9)
    best, idx = scores.reshape(N, C * N).topk(min(topk, C * N), dim=1)  # (N, k)
    if weighted:
        weights = torch.softmax(best / temperature, dim=dim)
    else:
        weights = (best > -1e8).float()
        weights = weights / weights.sum(1, keepdim=True)
    return torch.einsum("nk,nkl->nl", weights, context_labels.reshape(C * N, -1)[idx])


def step_by_hand(context_features, context_labels, target_features, topk, temperature, radius,
                 grid) -> Tensor:
    return _step(context_features, context_labels, target_features, topk, temperature, radius,
                 grid)


def step_no_window(*args) -> Tensor:
    return _step(*args, window=False)


def step_unweighted(*args) -> Tensor:
    return _step(*args, weighted=False)


def step_softmax_over_targets(*args) -> Tensor:
    return _step(*args, dim=0)


def step_unnormalised(*args) -> Tensor:
    return _step(*args, normalise=False)


def _positional(fn):
    def call(context_features, context_labels, target_features, topk, temperature, radius, grid):
        return fn(context_features, context_labels, target_features, topk, temperature, radius,
                  grid)
    return call


def test_step_reference_and_correct_version_pass() -> None:
    assert checks.propagate_step(reference_propagate_step) is reference_propagate_step
    assert checks.propagate_step(step_by_hand) is step_by_hand


def test_step_stub_falls_back_to_reference() -> None:
    assert checks.propagate_step(step_stub) is reference_propagate_step


@pytest.mark.parametrize("wrong, words", [
    (step_no_window, "window is ignored"),
    (step_unweighted, "equal weights"),
    (step_softmax_over_targets, "softmax runs over the target patches"),
    (step_unnormalised, "unnormalised features"),
])
def test_step_rejects_typical_mistakes(wrong, words: str) -> None:
    with pytest.raises(CheckFailed, match=words):
        checks.propagate_step(_positional(wrong))


@pytest.mark.parametrize("radius, n_context", [(None, 7), (1, 2), (2, 3), (0, 1)])
def test_reference_step_is_one_frame_of_propagate_labels(radius: int | None,
                                                         n_context: int) -> None:
    """Frame by frame, the step on the same context reproduces minidino's propagate_labels."""
    T, h, w, D, C = 7, 4, 5, 12, 3
    g = torch.Generator().manual_seed(3)
    features = F.normalize(torch.randn(T, h, w, D, generator=g), dim=-1)  # (T, h, w, D)
    first = torch.softmax(2 * torch.randn(C, h, w, generator=g), dim=0)  # (C, h, w)
    out = propagate_labels(features, first, n_context=n_context, topk=4, temperature=0.1,
                           radius=radius)  # (T, C, h, w)
    feats = features.reshape(T, h * w, D)  # (T, N, D)
    labels = out.reshape(T, C, h * w).transpose(1, 2)  # (T, N, C)
    for t in range(1, T):
        ctx = [0] + list(range(max(1, t - n_context), t))
        step = reference_propagate_step(feats[ctx], labels[ctx], feats[t], 4, 0.1, radius, (h, w))
        assert torch.allclose(step, labels[t], atol=1e-5), t
