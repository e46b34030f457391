"""Checks for lesson 07: the weighted kNN vote and nearest-neighbour retrieval."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from minidino.checks._core import expect, expect_close, run_check
from minidino.evaluate import knn_predict as minidino_knn_predict

__all__ = ["knn_predict", "nearest_neighbours"]

EX71 = "Exercise 7.1 (knn_predict)"
EX72 = "Exercise 7.2 (nearest_neighbours)"


def reference_knn_predict(train_features: Tensor, train_labels: Tensor, test_features: Tensor,
                          n_classes: int, k: int = 20, T: float = 0.07) -> Tensor:
    """DINO's weighted kNN: class scores (M, n_classes) (see minidino.evaluate.knn_predict)."""
    return minidino_knn_predict(train_features, train_labels, test_features, n_classes, k=k, T=T)


def reference_nearest_neighbours(query_features: Tensor, bank_features: Tensor, k: int,
                                 exclude_self: bool = False) -> Tensor:
    """Indices (M, k) into the bank of each query's k most cosine-similar rows, best first.

    query_features (M, D), bank_features (N, D). Nothing is excluded unless `exclude_self`: then
    the queries ARE the bank (M == N, same order) and row i never returns index i.
    """
    sim = F.normalize(query_features.float(), dim=1) @ F.normalize(bank_features.float(), dim=1).T
    if exclude_self:  # sim is (N, N): the diagonal is each image compared with itself
        if sim.shape[0] != sim.shape[1]:
            raise ValueError("exclude_self=True needs the queries to be the bank itself (M == N)")
        sim.fill_diagonal_(float("-inf"))
    return sim.topk(k, dim=1).indices  # (M, k)


def _features(g: torch.Generator, n: int, d: int) -> Tensor:
    """(n, d) random directions with lengths from 0.1 to 10, so normalising matters."""
    lengths = torch.exp(torch.empty(n, 1).uniform_(-2.3, 2.3, generator=g))  # (n, 1)
    return torch.randn(n, d, generator=g) * lengths  # (n, d)


# ------------------------------------------------------------------ Exercise 7.1
def _unweighted(train_features: Tensor, train_labels: Tensor, test_features: Tensor,
                n_classes: int, k: int) -> Tensor:
    """Plain majority-vote counts (M, n_classes): what forgetting the weights gives."""
    idx = reference_nearest_neighbours(test_features, train_features, k)  # (M, k)
    counts = torch.zeros(len(test_features), n_classes)  # (M, n_classes)
    return counts.scatter_add_(1, train_labels[idx], torch.ones(idx.shape))


def _knn_trials(fn: Callable[..., Tensor]) -> int:
    g = torch.Generator().manual_seed(7)
    train_feats, test_feats = _features(g, 60, 16), _features(g, 12, 16)  # (60, 16), (12, 16)
    labels = torch.randint(0, 4, (60,), generator=g)  # (60,)
    copies = 3.0 * train_feats[:5]  # (5, 16): the direction of 5 training rows, longer
    cases = [  # (case, test features, n_classes, k, T)
        ("60 training and 12 test features of varied length, k=5, T=0.07", test_feats, 4, 5,
         0.07),
        ("k=1: the single most similar training feature decides", test_feats, 4, 1, 0.07),
        ("k=60 (every training feature votes), T=0.5", test_feats, 4, 60, 0.5),
        ("n_classes=6, but labels use only 0..3: two empty columns", test_feats, 6, 10, 0.1),
        ("test features point like training ones (cosine 1), k=3", copies, 4, 3, 0.07),
    ]
    for case, test, n_classes, k, T in cases:
        want = reference_knn_predict(train_feats, labels, test, n_classes, k=k, T=T)
        got = fn(train_feats.clone(), labels.clone(), test.clone(), n_classes, k, T)
        if isinstance(got, Tensor) and got.shape == want.shape:
            counts = _unweighted(train_feats, labels, test, n_classes, k)
            expect(EX71, case, not torch.allclose(got.float(), counts),
                   "the scores are plain vote counts",
                   "weight each neighbour's vote by exp(similarity / T), so that closer "
                   "neighbours count more; a class's score is the sum of its weights")
            expect(EX71, case, torch.isfinite(got).all(), "the scores contain inf or NaN",
                   "L2-normalise both feature sets first (F.normalize(x, dim=1)): unnormalised "
                   "dot products can be far above 1, and exp(dot / 0.07) overflows")
        expect_close(EX71, case, got, want,
                     "normalise train and test features (cosine similarity), keep each test "
                     "row's k most similar training rows (topk), weight each by "
                     "exp(sim / T) and add the weights per label (scatter_add_ or one_hot)",
                     atol=1e-4, rtol=1e-4)
    return len(cases)


def knn_predict(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Check Exercise 7.1: fn(train_features, train_labels, test_features, n_classes, k, T)
    -> class scores (M, n_classes)."""
    return run_check(EX71, fn, reference_knn_predict, _knn_trials)


# ------------------------------------------------------------------ Exercise 7.2
def _retrieval_trials(fn: Callable[..., Any]) -> int:
    g = torch.Generator().manual_seed(8)
    bank, queries = _features(g, 50, 8), _features(g, 7, 8)  # (50, 8), (7, 8)
    same_direction = 0.2 * bank[[3, 17, 42]]  # (3, 8): shorter copies of three bank rows
    cases = [  # (case, queries, k, exclude_self)
        ("7 held-out queries, a bank of 50 features of varied length, k=5", queries, 5, False),
        ("k=1", queries, 1, False),
        ("queries pointing exactly like bank rows 3, 17, 42 (cosine 1): they come first, "
         "nothing is excluded", same_direction, 4, False),
        ("the queries ARE the bank, exclude_self=False: each image finds itself first", bank,
         3, False),
        ("the queries ARE the bank, exclude_self=True", bank, 3, True),
    ]
    for case, query, k, exclude_self in cases:
        got = fn(query.clone(), bank.clone(), k, exclude_self=exclude_self)
        want = reference_nearest_neighbours(query, bank, k, exclude_self)  # (M, k)
        M = len(query)
        expect(EX72, case, isinstance(got, Tensor) and tuple(got.shape) == (M, k),
               f"expected a tensor of shape ({M}, {k}), got "
               f"{tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__}",
               "one row of k bank indices per query")
        expect(EX72, case, not got.dtype.is_floating_point and got.dtype != torch.bool,
               f"dtype {got.dtype}: expected integer indices into the bank",
               "return topk(...).indices, not the similarities")
        expect(EX72, case, bool(((got >= 0) & (got < len(bank))).all()),
               "some indices are outside the bank", "indices run over the bank's rows, 0..N-1")
        got = got.long()
        if exclude_self:
            selves = (got == torch.arange(M)[:, None]).any(dim=1).nonzero()  # (n_bad, 1)
            expect(EX72, case, len(selves) == 0,
                   f"query {int(selves[0]) if len(selves) else -1} got itself back",
                   "with exclude_self=True each image must not retrieve itself: set the "
                   "diagonal of the (N, N) similarity matrix to -inf before topk")
        sim = F.normalize(query, dim=1) @ F.normalize(bank, dim=1).T  # (M, N) cosine
        if exclude_self:
            sim.fill_diagonal_(float("-inf"))
        expect_close(EX72, f"{case}: cosine similarity of the neighbours returned, in order",
                     sim.gather(1, got), sim.gather(1, want),
                     "rank by cosine similarity (normalise queries and bank, then one matrix "
                     "product), most similar first; Euclidean distance on unnormalised features "
                     "prefers short vectors. Exclude nothing unless exclude_self=True",
                     atol=1e-5, rtol=1e-5)
    return len(cases)


def nearest_neighbours(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check Exercise 7.2: fn(query_features, bank_features, k, exclude_self=False) -> (M, k)."""
    return run_check(EX72, fn, reference_nearest_neighbours, _retrieval_trials)
