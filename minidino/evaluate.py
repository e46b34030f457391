"""Frozen-feature evaluation: how good is what the backbone learned, without any labels in training?

DINO never sees a label. To score its features we freeze the backbone, turn every image into one
feature vector (the CLS token) and ask two cheap questions, as the DINO paper does:

1. weighted k-nearest neighbours: label a test image by a vote of its k most similar training images
   (cosine similarity), each vote weighted by exp(similarity / T). No training at all.
2. linear probe: train only a linear classifier on the frozen features.

Both read features, never pixels: once features are extracted, scoring takes seconds.
`minidino.held_out` applies them to a training run's own images (its memory bank and queries).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from minidino.augment_batched import IMAGENET_MEAN, IMAGENET_STD, normalize


def _cls_feature(out: Tensor) -> Tensor:
    """A backbone may return the CLS feature (B, D) or all tokens (B, N, D) with CLS first."""
    if out.ndim == 2:
        return out  # (B, D)
    if out.ndim == 3:
        return out[:, 0]  # (B, D)
    raise ValueError(f"backbone output must have shape (B, D) or (B, N, D), got {tuple(out.shape)}")


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images: Tensor | DataLoader,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    progress: bool = True,
) -> Tensor:
    """Run a frozen backbone over a dataset and collect one feature per image.

    images: a uint8 tensor (N, C, H, W), normalised here with `mean` and `std`, or a DataLoader
    that yields already-normalised float batches, either bare or as (images, labels).
    device: where the forward passes run; None means the device of the backbone's parameters.
    Returns (N, D) float32 features on the CPU, in the order of `images`. The backbone is put in
    eval mode for the pass (so dropout and drop-path are off) and every submodule's previous mode
    is restored afterwards. On CUDA the forward runs under bf16 autocast.
    """
    if isinstance(images, Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be a uint8 tensor (N, C, H, W) or a DataLoader, "
                f"got dtype={images.dtype} shape={tuple(images.shape)}"
            )
        if images.shape[1] != len(mean) or len(mean) != len(std):
            raise ValueError(
                f"images has {images.shape[1]} channels but mean={mean} and std={std}; "
                f"they must have one value per channel"
            )
    elif not isinstance(images, DataLoader):
        raise ValueError(f"images must be a uint8 tensor or a DataLoader, got {type(images)}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if device is None:
        device = next(backbone.parameters(), torch.empty(0)).device
    device = torch.device(device)

    if isinstance(images, Tensor):
        batches = (images[i : i + batch_size] for i in range(0, len(images), batch_size))
        n_batches = math.ceil(len(images) / batch_size)
    else:
        batches = (b[0] if isinstance(b, (tuple, list)) else b for b in images)
        n_batches = len(images)

    modes = [m.training for m in backbone.modules()]  # restored in `finally`
    backbone.eval()
    features = []
    try:
        for x in tqdm(batches, total=n_batches, desc="features", disable=not progress):
            x = x.to(device, non_blocking=True)  # (B, C, H, W)
            if x.dtype == torch.uint8:
                x = normalize(x, mean, std)  # (B, C, H, W) float
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out = backbone(x)  # (B, D) or (B, N, D)
            features.append(_cls_feature(out).float().cpu())  # (B, D)
    finally:
        for m, mode in zip(backbone.modules(), modes, strict=True):
            m.training = mode
    if not features:
        raise ValueError("images must hold at least one image, got none")
    return torch.cat(features)  # (N, D)


def _check_labelled(name: str, features: Tensor, labels_name: str, labels: Tensor,
                    n_classes: int) -> None:
    """features (N, D) float and labels (N,) integer in [0, n_classes), or a ValueError."""
    if features.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got {tuple(features.shape)}")
    if labels.ndim != 1 or len(labels) != len(features):
        raise ValueError(
            f"{labels_name} must have shape (N,) with N={len(features)} like {name}, "
            f"got {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"{labels_name} must hold integer class ids, got dtype={labels.dtype}")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"{labels_name} must lie in [0, n_classes={n_classes}), "
            f"got values from {labels.min().item()} to {labels.max().item()}"
        )


def _check_pair(train_features: Tensor, test_features: Tensor, n_classes: int) -> None:
    if n_classes < 1:
        raise ValueError(f"n_classes={n_classes} must be >= 1")
    if test_features.ndim != 2:
        raise ValueError(f"test_features must have shape (M, D), got {tuple(test_features.shape)}")
    if train_features.ndim == 2 and test_features.shape[1] != train_features.shape[1]:
        raise ValueError(
            f"test_features has D={test_features.shape[1]} but train_features has "
            f"D={train_features.shape[1]}; they must match"
        )


@torch.no_grad()
def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    n_classes: int,
    k: int = 20,
    T: float = 0.07,
    chunk_size: int = 1024,
) -> Tensor:
    """DINO's weighted kNN classifier; returns class scores (M, n_classes).

    train_features (N, D), train_labels (N,), test_features (M, D). Features are L2-normalised, so
    similarity is the cosine. Each test row keeps its k most similar training rows; neighbour j
    votes for its label with weight exp(sim_j / T), and a class's score is the sum of its votes.
    k must be between 1 and N (it is not clamped: asking for more neighbours than exist is an
    error). Test rows are processed `chunk_size` at a time so the (M, N) similarity matrix never
    has to fit in memory at once. Scores are float32: T much below 0.012 overflows exp(1/T).
    """
    _check_pair(train_features, test_features, n_classes)
    _check_labelled("train_features", train_features, "train_labels", train_labels, n_classes)
    if not 1 <= k <= len(train_features):
        raise ValueError(f"k={k} must be between 1 and the number of train samples "
                         f"({len(train_features)})")
    if not T > 0:
        raise ValueError(f"T={T} must be > 0")
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1")

    device = train_features.device
    train = F.normalize(train_features.float(), dim=1)  # (N, D)
    train_labels = train_labels.to(device)
    scores = []
    for start in range(0, len(test_features), chunk_size):
        test = test_features[start : start + chunk_size].to(device).float()  # (c, D)
        sim = F.normalize(test, dim=1) @ train.T  # (c, N) cosine similarities
        top_sim, top_idx = sim.topk(k, dim=1)  # (c, k), (c, k)
        weights = (top_sim / T).exp()  # (c, k)
        votes = train_labels[top_idx]  # (c, k) labels of the neighbours
        chunk = torch.zeros(len(test), n_classes, device=device)  # (c, n_classes)
        scores.append(chunk.scatter_add_(1, votes, weights))  # sum of weights per class
    if not scores:
        return torch.zeros(0, n_classes, device=device)
    return torch.cat(scores)  # (M, n_classes)


def _topk_accuracy(scores: Tensor, labels: Tensor) -> dict[str, float]:
    """scores (M, C), labels (M,) -> {"top1", "top5"} in percent; top5 is top-min(5, C)."""
    labels = labels.to(scores.device)
    top = scores.topk(min(5, scores.shape[1]), dim=1).indices  # (M, min(5, C))
    hits = top == labels[:, None]  # (M, min(5, C))
    return {
        "top1": 100.0 * hits[:, 0].float().mean().item(),
        "top5": 100.0 * hits.any(dim=1).float().mean().item(),
    }


@torch.no_grad()
def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    n_classes: int,
    k: int = 20,
    T: float = 0.07,
) -> dict[str, float]:
    """Weighted kNN accuracy in percent: {"top1", "top5"}.

    Shapes as in `knn_predict`, plus test_labels (M,). With fewer than 5 classes "top5" is the
    top-n_classes accuracy, which is always 100.
    """
    _check_pair(train_features, test_features, n_classes)
    _check_labelled("test_features", test_features, "test_labels", test_labels, n_classes)
    scores = knn_predict(train_features, train_labels, test_features, n_classes, k=k, T=T)
    return _topk_accuracy(scores, test_labels)


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    n_classes: int,
    epochs: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Train a linear classifier on frozen features; return test accuracy {"top1", "top5"} in %.

    train_features (N, D), train_labels (N,), test_features (M, D), test_labels (M,). Features
    are standardised with the training set's per-dimension mean and std (instead of a BatchNorm),
    the layer starts at zero and is trained with AdamW and a cosine learning-rate schedule,
    shuffling with a generator seeded by `seed` (the global RNG is left alone).
    """
    _check_pair(train_features, test_features, n_classes)
    _check_labelled("train_features", train_features, "train_labels", train_labels, n_classes)
    _check_labelled("test_features", test_features, "test_labels", test_labels, n_classes)
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name}={value} must be >= 1")
    if not lr > 0:
        raise ValueError(f"lr={lr} must be > 0")
    if len(train_features) < 1:
        raise ValueError("train_features must hold at least one sample, got 0")

    device = train_features.device
    x_train = train_features.float()  # (N, D)
    mu = x_train.mean(0)  # (D,)
    sigma = x_train.std(0, correction=0) + 1e-6  # (D,)
    x_train = (x_train - mu) / sigma  # (N, D)
    x_test = (test_features.to(device).float() - mu) / sigma  # (M, D)
    y_train = train_labels.to(device).long()  # (N,)

    # skip_init: no random init (that would consume the global RNG); start from zero instead
    classifier = nn.utils.skip_init(nn.Linear, x_train.shape[1], n_classes, device=device)
    nn.init.zeros_(classifier.weight)
    nn.init.zeros_(classifier.bias)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)

    for _ in tqdm(range(epochs), desc="linear probe", disable=not progress):
        order = torch.randperm(len(x_train), generator=generator).to(device)  # (N,)
        for start in range(0, len(x_train), batch_size):
            idx = order[start : start + batch_size]  # (b,)
            loss = F.cross_entropy(classifier(x_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()

    with torch.no_grad():
        scores = classifier(x_test)  # (M, n_classes)
    return _topk_accuracy(scores, test_labels)


def evaluate_backbone(
    backbone: nn.Module,
    train_images: Tensor | DataLoader,
    train_labels: Tensor,
    test_images: Tensor | DataLoader,
    test_labels: Tensor,
    n_classes: int,
    k: int = 20,
    T: float = 0.07,
    linear: bool = False,
    linear_epochs: int = 100,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Extract frozen features and score them: {"knn_top1", "knn_top5"} (+ "linear_top1/5").

    Images are uint8 (N, C, H, W) tensors or unshuffled DataLoaders (see `extract_features`);
    labels (N,) and (M,) must follow the same order. Accuracies are in percent.
    """
    train = extract_features(backbone, train_images, batch_size, device, progress=progress)
    test = extract_features(backbone, test_images, batch_size, device, progress=progress)
    knn = knn_accuracy(train, train_labels.cpu(), test, test_labels.cpu(), n_classes, k=k, T=T)
    results = {"knn_top1": knn["top1"], "knn_top5": knn["top5"]}
    if linear:
        probe = linear_probe(train, train_labels.cpu(), test, test_labels.cpu(), n_classes,
                             epochs=linear_epochs, progress=progress)
        results |= {"linear_top1": probe["top1"], "linear_top5": probe["top5"]}
    return results
