"""kNN, linear probe and feature extraction against constructed cases with known answers."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from minidino.evaluate import (
    evaluate_backbone,
    extract_features,
    knn_accuracy,
    knn_predict,
    linear_probe,
)

# Published ImageNet channel statistics, written out independently of the package.
MEAN = torch.tensor([0.485, 0.456, 0.406])
STD = torch.tensor([0.229, 0.224, 0.225])


def clusters(n_per_class: int, centres: torch.Tensor, spread: float, g: torch.Generator):
    """Gaussian blobs around the rows of centres (C, dim): features (n, dim), labels (n,)."""
    labels = torch.arange(len(centres)).repeat_interleave(n_per_class)  # (n,)
    noise = spread * torch.randn(len(labels), centres.shape[1], generator=g)  # (n, dim)
    return centres[labels] + noise, labels


def random_centres(n_classes: int, dim: int, g: torch.Generator) -> torch.Tensor:
    return 5.0 * torch.randn(n_classes, dim, generator=g)  # (C, dim), far apart for spread ~1


# ---------------------------------------------------------------- kNN


def test_knn_separated_clusters_are_perfect():
    g = torch.Generator().manual_seed(0)
    centres = random_centres(6, 16, g)
    train_x, train_y = clusters(30, centres, 0.3, g)
    test_x, test_y = clusters(10, centres, 0.3, g)
    acc = knn_accuracy(train_x, train_y, test_x, test_y, n_classes=6, k=20, T=0.07)
    assert acc == {"top1": 100.0, "top5": 100.0}


def test_knn_k1_returns_label_of_identical_training_point():
    g = torch.Generator().manual_seed(1)
    train_x = torch.randn(50, 16, generator=g)  # (50, 16)
    train_y = torch.randint(0, 10, (50,), generator=g)
    rows = torch.tensor([0, 7, 13, 42, 49])
    scores = knn_predict(train_x, train_y, train_x[rows], n_classes=10, k=1)
    assert torch.equal(scores.argmax(1), train_y[rows])
    # a lone neighbour with cosine 1 votes exp(1 / T) for its class and nothing else
    assert scores.max(1).values == pytest.approx([math.exp(1 / 0.07)] * 5, rel=1e-4)


def test_knn_hand_computed_weighted_vote():
    # query (1, 0); cosines: a=(1,0) -> 1, b=(0,1) -> 0, c=(3,3) -> 1/sqrt(2), d=(-1,0) -> -1
    train_x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0], [-1.0, 0.0]])
    train_y = torch.tensor([0, 1, 1, 2])
    T = 0.5
    scores = knn_predict(train_x, train_y, torch.tensor([[2.0, 0.0]]), n_classes=3, k=3, T=T)
    # k=3 keeps a, c, b; d (cosine -1) is left out, so class 2 gets nothing
    expected = [math.exp(1 / T), math.exp(0 / T) + math.exp((1 / math.sqrt(2)) / T), 0.0]
    assert scores[0].tolist() == pytest.approx(expected, rel=1e-5)
    # with k=4, d votes exp(-1 / T) for class 2
    scores = knn_predict(train_x, train_y, torch.tensor([[2.0, 0.0]]), n_classes=3, k=4, T=T)
    assert scores[0, 2].item() == pytest.approx(math.exp(-1 / T), rel=1e-5)


def _knn_loop(train_x, train_y, test_x, n_classes, k, T):
    """Literal per-query version: sort cosines, take the k largest, add exp(cos / T) per label."""
    out = []
    for q in test_x.tolist():
        cos = []
        for x, y in zip(train_x.tolist(), train_y.tolist(), strict=True):
            dot = sum(a * b for a, b in zip(q, x, strict=True))
            norm = math.sqrt(sum(a * a for a in q)) * math.sqrt(sum(b * b for b in x))
            cos.append((dot / norm, y))
        row = [0.0] * n_classes
        for c, y in sorted(cos, reverse=True)[:k]:
            row[y] += math.exp(c / T)
        out.append(row)
    return out


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 30), st.integers(1, 6), st.floats(0.05, 1.0), st.integers(0, 10_000))
def test_knn_matches_literal_loop(k, chunk_size, T, seed):
    g = torch.Generator().manual_seed(seed)
    train_x = torch.randn(30, 5, generator=g, dtype=torch.float64)
    train_y = torch.randint(0, 4, (30,), generator=g)
    test_x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    scores = knn_predict(train_x, train_y, test_x, n_classes=4, k=k, T=T, chunk_size=chunk_size)
    expected = _knn_loop(train_x, train_y, test_x, 4, k, T)
    assert scores.tolist() == [pytest.approx(r, rel=1e-4) for r in expected]


def test_knn_chunked_equals_unchunked():
    g = torch.Generator().manual_seed(2)
    train_x, train_y = torch.randn(200, 32, generator=g), torch.randint(0, 10, (200,), generator=g)
    test_x = torch.randn(53, 32, generator=g)
    whole = knn_predict(train_x, train_y, test_x, 10, k=20, chunk_size=1024)
    chunked = knn_predict(train_x, train_y, test_x, 10, k=20, chunk_size=7)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=0)  # matmul blocking may differ


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 40), st.integers(2, 12), st.integers(0, 10_000))
def test_knn_top5_at_least_top1(k, n_classes, seed):
    g = torch.Generator().manual_seed(seed)
    train_x, test_x = torch.randn(40, 8, generator=g), torch.randn(25, 8, generator=g)
    train_y = torch.randint(0, n_classes, (40,), generator=g)
    test_y = torch.randint(0, n_classes, (25,), generator=g)
    acc = knn_accuracy(train_x, train_y, test_x, test_y, n_classes, k=k)
    assert 0.0 <= acc["top1"] <= acc["top5"] <= 100.0
    if n_classes <= 5:  # top-5 over at most 5 classes always hits
        assert acc["top5"] == 100.0


def _knn_args(**overrides):
    args = {"train_features": torch.randn(10, 4), "train_labels": torch.arange(10) % 3,
            "test_features": torch.randn(5, 4), "test_labels": torch.arange(5) % 3,
            "n_classes": 3, "k": 3, "T": 0.07}
    return args | overrides


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"k": 0}, "k=0"),
        ({"k": 11}, "k=11"),
        ({"T": 0.0}, "T=0"),
        ({"T": -1.0}, "T=-1"),
        ({"train_features": torch.randn(10)}, "train_features"),
        ({"train_labels": torch.zeros(9, dtype=torch.long)}, "train_labels"),
        ({"train_labels": torch.zeros(10, 1, dtype=torch.long)}, "train_labels"),
        ({"train_labels": torch.zeros(10)}, "train_labels"),
        ({"train_labels": torch.full((10,), 3)}, "train_labels"),
        ({"train_labels": torch.full((10,), -1)}, "train_labels"),
        ({"test_features": torch.randn(5, 6)}, "test_features"),
        ({"test_features": torch.randn(5)}, "test_features"),
        ({"test_labels": torch.zeros(4, dtype=torch.long)}, "test_labels"),
        ({"test_labels": torch.full((5,), 7)}, "test_labels"),
        ({"n_classes": 0}, "n_classes"),
    ],
)
def test_knn_bad_inputs(overrides, name):
    with pytest.raises(ValueError, match=name):
        knn_accuracy(**_knn_args(**overrides))


def test_knn_predict_bad_chunk_size():
    a = _knn_args()
    with pytest.raises(ValueError, match="chunk_size"):
        knn_predict(a["train_features"], a["train_labels"], a["test_features"], 3, k=3,
                    chunk_size=0)


# ---------------------------------------------------------------- linear probe


def test_linear_probe_separable_data_is_near_perfect():
    g = torch.Generator().manual_seed(3)
    centres = random_centres(4, 16, g)
    train_x, train_y = clusters(100, centres, 1.0, g)
    test_x, test_y = clusters(50, centres, 1.0, g)
    acc = linear_probe(train_x, train_y, test_x, test_y, n_classes=4, epochs=30, progress=False)
    assert acc["top1"] >= 98.0


def test_linear_probe_random_labels_is_chance():
    g = torch.Generator().manual_seed(4)
    train_x, test_x = torch.randn(600, 16, generator=g), torch.randn(1000, 16, generator=g)
    train_y = torch.randint(0, 4, (600,), generator=g)
    test_y = torch.randint(0, 4, (1000,), generator=g)
    acc = linear_probe(train_x, train_y, test_x, test_y, n_classes=4, epochs=30, progress=False)
    assert 17.0 <= acc["top1"] <= 33.0  # chance is 25%, std of the estimate ~1.4%
    assert acc["top5"] == 100.0  # only 4 classes


def test_linear_probe_is_seeded_and_leaves_global_rng_alone():
    g = torch.Generator().manual_seed(5)
    x, y = clusters(20, random_centres(3, 8, g), 3.0, g)
    state = torch.get_rng_state()
    a = linear_probe(x, y, x, y, 3, epochs=3, batch_size=16, seed=7, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    b = linear_probe(x, y, x, y, 3, epochs=3, batch_size=16, seed=7, progress=False)
    assert a == b


@pytest.mark.parametrize(
    ("overrides", "name"),
    [({"epochs": 0}, "epochs"), ({"lr": 0.0}, "lr"), ({"batch_size": 0}, "batch_size"),
     ({"train_labels": torch.full((10,), 5)}, "train_labels"),
     ({"test_features": torch.randn(5, 2)}, "test_features")],
)
def test_linear_probe_bad_inputs(overrides, name):
    args = _knn_args() | overrides
    del args["k"], args["T"]
    with pytest.raises(ValueError, match=name):
        linear_probe(**args, progress=False)


# ---------------------------------------------------------------- feature extraction


class ChannelMean(nn.Module):
    """Stand-in backbone whose feature is the per-channel mean of its input: (B, C, H, W) -> (B, C).

    It remembers the mode it ran in, and has a dropout child to check per-module modes.
    """

    def __init__(self, tokens: bool = False):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.drop = nn.Dropout(0.5)
        self.tokens = tokens
        self.ran_in_training_mode: list[bool] = []

    def forward(self, x):
        self.ran_in_training_mode.append(self.training)
        feat = self.drop(x.mean(dim=(2, 3))) * self.scale  # (B, C)
        if self.tokens:  # (B, N=2, C): CLS first, then a token that must be ignored
            return torch.stack([feat, torch.full_like(feat, 99.0)], dim=1)
        return feat


def test_extract_features_normalises_uint8_exactly():
    values = torch.tensor([51, 102, 204], dtype=torch.uint8)
    images = values.view(1, 3, 1, 1).expand(5, 3, 4, 4).contiguous()  # (5, 3, 4, 4) constant
    feats = extract_features(ChannelMean(), images, batch_size=2, progress=False)
    expected = (values.float() / 255 - MEAN) / STD  # (3,)
    assert feats.shape == (5, 3) and feats.dtype == torch.float32
    torch.testing.assert_close(feats, expected.expand(5, 3))


def test_extract_features_random_images_in_order():
    images = torch.randint(0, 256, (11, 3, 6, 5), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    feats = extract_features(ChannelMean(), images, batch_size=4, progress=False)
    expected = ((images.double() / 255).mean(dim=(2, 3)) - MEAN.double()) / STD.double()
    torch.testing.assert_close(feats, expected.float())


def test_extract_features_custom_mean_std_and_token_output():
    images = torch.full((3, 3, 2, 2), 255, dtype=torch.uint8)
    feats = extract_features(ChannelMean(tokens=True), images, mean=(0.5, 0.5, 0.5),
                             std=(0.5, 0.25, 1.0), progress=False)
    torch.testing.assert_close(feats, torch.tensor([[1.0, 2.0, 0.5]]).expand(3, 3))


def test_extract_features_from_dataloader():
    x = torch.randn(10, 3, 4, 4)  # already normalised floats
    y = torch.arange(10)
    for loader in (DataLoader(TensorDataset(x, y), batch_size=3), DataLoader(x, batch_size=4)):
        feats = extract_features(ChannelMean(), loader, progress=False)
        torch.testing.assert_close(feats, x.mean(dim=(2, 3)))


def test_extract_features_uses_eval_mode_and_restores_modes():
    backbone = ChannelMean()
    backbone.train()
    backbone.drop.eval()  # a mixed state that a plain .train() would not restore
    images = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    extract_features(backbone, images, batch_size=2, progress=False)
    assert backbone.ran_in_training_mode == [False, False, False]
    assert backbone.training and not backbone.drop.training

    class Broken(ChannelMean):
        def forward(self, x):
            raise RuntimeError("boom")

    broken = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        extract_features(broken, images, progress=False)
    assert broken.training and broken.drop.training


@pytest.mark.parametrize(
    ("images", "kwargs", "name"),
    [
        (torch.rand(2, 3, 4, 4), {}, "images"),
        (torch.zeros(3, 4, 4, dtype=torch.uint8), {}, "images"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), {}, "images"),
        ([torch.zeros(3, 4, 4)], {}, "images"),
        (torch.zeros(0, 3, 4, 4, dtype=torch.uint8), {}, "images"),
        (torch.zeros(2, 3, 4, 4, dtype=torch.uint8), {"batch_size": 0}, "batch_size"),
    ],
)
def test_extract_features_bad_inputs(images, kwargs, name):
    with pytest.raises(ValueError, match=name):
        extract_features(ChannelMean(), images, progress=False, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_extract_features_cuda_bf16_matches_cpu():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    cpu = extract_features(net, images, batch_size=8, progress=False)
    gpu = extract_features(net.cuda(), images, batch_size=8, progress=False)
    assert gpu.device.type == "cpu" and gpu.dtype == torch.float32
    torch.testing.assert_close(gpu, cpu, atol=0.05, rtol=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_knn_and_linear_probe_on_cuda_match_cpu():
    g = torch.Generator().manual_seed(7)
    centres = random_centres(5, 16, g)
    train_x, train_y = clusters(40, centres, 2.0, g)
    test_x, test_y = clusters(20, centres, 2.0, g)
    cpu = knn_predict(train_x, train_y, test_x, 5, k=10)
    gpu = knn_predict(train_x.cuda(), train_y.cuda(), test_x.cuda(), 5, k=10, chunk_size=16)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=0)
    acc_gpu = linear_probe(train_x.cuda(), train_y.cuda(), test_x.cuda(), test_y.cpu(), 5,
                           epochs=10, progress=False)
    acc_cpu = linear_probe(train_x, train_y, test_x, test_y, 5, epochs=10, progress=False)
    assert acc_gpu["top1"] == pytest.approx(acc_cpu["top1"], abs=1.0)  # at most 1 of 100 differs


# ---------------------------------------------------------------- end to end


def test_evaluate_backbone_on_colour_coded_images():
    g = torch.Generator().manual_seed(6)
    labels = torch.arange(3).repeat(20)  # (60,): class c has a bright channel c
    images = torch.randint(0, 60, (60, 3, 8, 8), dtype=torch.uint8, generator=g)
    images[torch.arange(60), labels] += 150
    train_x, train_y, test_x, test_y = images[:45], labels[:45], images[45:], labels[45:]
    res = evaluate_backbone(ChannelMean(), train_x, train_y, test_x, test_y, n_classes=3, k=5,
                            linear=True, linear_epochs=20, progress=False)
    assert res == {"knn_top1": 100.0, "knn_top5": 100.0,
                   "linear_top1": 100.0, "linear_top5": 100.0}
