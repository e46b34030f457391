"""A run's held-out evaluation: score a backbone the way its training run sees the data.

`minidino.evaluate` holds the methods (features, weighted kNN, the linear probe) for any images
and labels. This module applies them to a run: its memory bank is `cfg.n_train` of the training
images the run used, its queries `cfg.n_eval` held-out images, both drawn with `cfg.seed`. The
training loop calls `knn_top1` every `knn_every` epochs; `python -m minidino eval` calls
`evaluate_checkpoint`.
"""

from __future__ import annotations

import torch

from minidino.config import TrainConfig
from minidino.data import DatasetSplit, load_splits, subset_indices
from minidino.device import pick_device
from minidino.evaluate import extract_features, knn_accuracy, linear_probe
from minidino.pretrained import backbone_from
from minidino.resident import make_resident


def _eval_images(train_split: DatasetSplit, test_split: DatasetSplit, cfg: TrainConfig,
                 progress: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The memory bank (the training images the run used) and `cfg.n_eval` held-out queries,
    each as uint8 images (N, 3, H, W) with their labels (N,). Folder datasets are loaded here,
    with a progress bar unless `progress` is False."""
    for split in (train_split, test_split):
        if split.images is None:  # decoded once (unreadable folder files dropped), kept
            make_resident(split, cfg.image_size, progress, cfg.num_workers)
    bank = subset_indices(train_split.images.shape[0], cfg.n_train, cfg.seed)  # (N,)
    queries = subset_indices(test_split.images.shape[0], cfg.n_eval, cfg.seed)  # (M,)
    return (train_split.images[bank], train_split.labels[bank],
            test_split.images[queries], test_split.labels[queries])


def eval_features(backbone: torch.nn.Module, train_split: DatasetSplit, test_split: DatasetSplit,
                  cfg: TrainConfig, device: torch.device, progress: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CLS features (N, D) of the memory bank and (M, D) of the queries, with their labels."""
    bank, bank_labels, queries, query_labels = _eval_images(train_split, test_split, cfg,
                                                            progress)
    kwargs = {"device": device, "progress": False,
              "batch_size": 1024 if device.type == "cuda" else 256}
    bank_features = extract_features(backbone, bank, **kwargs)  # (N, D)
    query_features = extract_features(backbone, queries, **kwargs)  # (M, D)
    return bank_features, bank_labels, query_features, query_labels


def knn_top1(backbone: torch.nn.Module, train_split: DatasetSplit, test_split: DatasetSplit,
             cfg: TrainConfig, device: torch.device, k: int = 20, progress: bool = True
             ) -> dict[str, float]:
    """Weighted kNN (T=0.07) accuracy of a backbone's CLS features: training images as the
    memory bank, `cfg.n_eval` held-out images as queries."""
    features = eval_features(backbone, train_split, test_split, cfg, device, progress)
    return knn_accuracy(*features, n_classes=len(train_split.classes), k=k)


def evaluate_checkpoint(path: str, which: str = "teacher", linear: bool = False, k: int = 20
                        ) -> dict[str, dict[str, float]]:
    """kNN (and optionally a linear probe) of the backbone saved in a training checkpoint."""
    backbone, cfg, _ = backbone_from(path, which)
    device = pick_device(cfg.device)
    backbone = backbone.to(device)
    train_split, test_split = load_splits(cfg)
    features = eval_features(backbone, train_split, test_split, cfg, device)  # computed once
    n_classes = len(train_split.classes)
    results = {"knn": knn_accuracy(*features, n_classes=n_classes, k=k)}
    if linear:
        results["linear"] = linear_probe(*features, n_classes=n_classes)
    for name, r in results.items():
        print(f"{which} {name}: top-1 {r['top1']:.1f}%, top-5 {r['top5']:.1f}%")
    return results
