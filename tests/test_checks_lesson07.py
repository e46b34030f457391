"""The lesson 07 checks accept correct answers and reject the mistakes the lesson warns about."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from minidino import checks
from minidino.checks import CheckFailed
from minidino.checks.lesson07_eval import reference_knn_predict, reference_nearest_neighbours


def stub(*args: object, **kwargs: object) -> None:
    raise NotImplementedError("Exercise: not done yet")


# ------------------------------------------------------------------ Exercise 7.1
def one_hot_knn(train_features: Tensor, train_labels: Tensor, test_features: Tensor,
                n_classes: int, k: int, T: float) -> Tensor:
    sim = F.normalize(test_features, dim=1) @ F.normalize(train_features, dim=1).T  # (M, N)
    top_sim, top_idx = sim.topk(k, dim=1)  # (M, k)
    votes = F.one_hot(train_labels[top_idx], n_classes).float()  # (M, k, C)
    return (votes * (top_sim / T).exp()[..., None]).sum(1)  # (M, C)


def majority_vote(train_features: Tensor, train_labels: Tensor, test_features: Tensor,
                  n_classes: int, k: int, T: float) -> Tensor:
    sim = F.normalize(test_features, dim=1) @ F.normalize(train_features, dim=1).T
    top_idx = sim.topk(k, dim=1).indices
    return F.one_hot(train_labels[top_idx], n_classes).float().sum(1)  # counts, no weights


def not_normalised(train_features: Tensor, train_labels: Tensor, test_features: Tensor,
                   n_classes: int, k: int, T: float) -> Tensor:
    sim = test_features @ train_features.T  # dot products, not cosines
    top_sim, top_idx = sim.topk(k, dim=1)
    votes = F.one_hot(train_labels[top_idx], n_classes).float()
    return (votes * (top_sim / T).exp()[..., None]).sum(1)


def normalised_but_times_t(train_features: Tensor, train_labels: Tensor,
                           test_features: Tensor, n_classes: int, k: int, T: float) -> Tensor:
    sim = F.normalize(test_features, dim=1) @ F.normalize(train_features, dim=1).T
    top_sim, top_idx = sim.topk(k, dim=1)
    votes = F.one_hot(train_labels[top_idx], n_classes).float()
    return (votes * (top_sim * T).exp()[..., None]).sum(1)  # multiplies by T


def only_train_normalised(train_features: Tensor, train_labels: Tensor,
                          test_features: Tensor, n_classes: int, k: int, T: float) -> Tensor:
    sim = test_features @ F.normalize(train_features, dim=1).T  # the test side unnormalised
    top_sim, top_idx = sim.topk(k, dim=1)
    votes = F.one_hot(train_labels[top_idx], n_classes).float()
    return (votes * (top_sim / T).exp()[..., None]).sum(1)


@pytest.mark.parametrize("right", [reference_knn_predict, one_hot_knn])
def test_knn_correct_versions_pass(right: Callable) -> None:
    assert checks.knn_predict(right) is right


def test_knn_stub_falls_back_to_the_reference() -> None:
    assert checks.knn_predict(stub) is reference_knn_predict


@pytest.mark.parametrize("wrong", [majority_vote, not_normalised, normalised_but_times_t,
                                   only_train_normalised])
def test_knn_mistakes_are_rejected(wrong: Callable) -> None:
    with pytest.raises(CheckFailed):
        checks.knn_predict(wrong)


# ------------------------------------------------------------------ Exercise 7.2
def loop_neighbours(query_features: Tensor, bank_features: Tensor, k: int,
                    exclude_self: bool = False) -> Tensor:
    bank = F.normalize(bank_features, dim=1)  # (N, D)
    rows = []
    for i, q in enumerate(F.normalize(query_features, dim=1)):
        sim = bank @ q  # (N,)
        if exclude_self:
            sim[i] = -2.0  # below any cosine
        rows.append(sim.argsort(descending=True)[:k])
    return torch.stack(rows)  # (M, k)


def euclidean(query_features: Tensor, bank_features: Tensor, k: int,
              exclude_self: bool = False) -> Tensor:
    dist = torch.cdist(query_features, bank_features)  # (M, N) on unnormalised features
    if exclude_self:
        dist.fill_diagonal_(float("inf"))
    return dist.topk(k, dim=1, largest=False).indices


def ignores_exclude_self(query_features: Tensor, bank_features: Tensor, k: int,
                         exclude_self: bool = False) -> Tensor:
    return reference_nearest_neighbours(query_features, bank_features, k)  # returns itself


def always_drops_first(query_features: Tensor, bank_features: Tensor, k: int,
                       exclude_self: bool = False) -> Tensor:
    sim = F.normalize(query_features, dim=1) @ F.normalize(bank_features, dim=1).T
    return sim.topk(k + 1, dim=1).indices[:, 1:]  # "the first hit is the query itself"


def least_similar(query_features: Tensor, bank_features: Tensor, k: int,
                  exclude_self: bool = False) -> Tensor:
    sim = F.normalize(query_features, dim=1) @ F.normalize(bank_features, dim=1).T
    if exclude_self:
        sim.fill_diagonal_(float("inf"))
    return sim.topk(k, dim=1, largest=False).indices


def returns_similarities(query_features: Tensor, bank_features: Tensor, k: int,
                         exclude_self: bool = False) -> Tensor:
    sim = F.normalize(query_features, dim=1) @ F.normalize(bank_features, dim=1).T
    if exclude_self:
        sim.fill_diagonal_(float("-inf"))
    return sim.topk(k, dim=1).values


@pytest.mark.parametrize("right", [reference_nearest_neighbours, loop_neighbours])
def test_retrieval_correct_versions_pass(right: Callable) -> None:
    assert checks.nearest_neighbours(right) is right


def test_retrieval_stub_falls_back_to_the_reference() -> None:
    assert checks.nearest_neighbours(stub) is reference_nearest_neighbours


@pytest.mark.parametrize("wrong", [euclidean, ignores_exclude_self, always_drops_first,
                                   least_similar, returns_similarities])
def test_retrieval_mistakes_are_rejected(wrong: Callable) -> None:
    with pytest.raises(CheckFailed):
        checks.nearest_neighbours(wrong)
