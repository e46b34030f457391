"""Feeding multi-crop batches to the training loop, two ways.

- Device path: a dataset small enough to fit (the built-in shapes, CIFAR) lives on the training
  device as one uint8 tensor; each step indexes a batch and `BatchedMultiCrop` makes every crop of
  every image in a few tensor operations. No workers, no copies, no per-image Python.
- Loader path: larger folder datasets go through a `DataLoader` whose workers run the per-image
  `PerImageMultiCrop` pipeline.

Both yield, for every step, a list of `2 + n_local_crops` tensors `(B, 3, S, S)`: the global crops
first, then the local crops. The order of images in an epoch depends only on `(seed, epoch)`, so a
resumed run sees the same batches as an uninterrupted one.

Under torchrun (see `minidino.distributed`) `batch_size` is the global batch: every rank walks the
same permutation and takes its own slice of each global batch, `batch_size / world_size` images.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from minidino.augment import BatchedMultiCrop, MultiCropConfig, PerImageMultiCrop, collate_crops
from minidino.distributed import per_rank_batch, rank_seed


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The shuffled order of `n` images in `epoch`: a function of (seed, epoch) only.  (n,)"""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def rank_slice(order: Tensor, it: int, batch_size: int, rank: int, world: int) -> Tensor:
    """This rank's share of global batch `it` of the epoch order `order` (n,).  (B / world,)"""
    local = batch_size // world
    first = it * batch_size + rank * local
    return order[first:first + local]


class DeviceBatches:
    """Device-resident uint8 images, shuffled and augmented on the device in batches.

    With `world` processes, rank `rank` yields its `batch_size / world` images of each global
    batch and draws its augmentations from its own seed.
    """

    def __init__(self, images: Tensor, batch_size: int, crops: MultiCropConfig, seed: int,
                 device: torch.device, rank: int = 0, world: int = 1) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 tensor (N, 3, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        if batch_size > images.shape[0]:
            raise ValueError(f"batch_size={batch_size} is larger than the dataset "
                             f"({images.shape[0]} images)")
        self.local_batch = per_rank_batch(batch_size, world)
        self.images = images.to(device)  # (N, 3, H, W) uint8
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.seed = seed
        self.augment = BatchedMultiCrop(crops)
        self.generator = torch.Generator(device=device).manual_seed(rank_seed(seed, rank))
        self.steps_per_epoch = images.shape[0] // batch_size  # the last partial batch is dropped

    def epoch(self, epoch: int, start: int = 0) -> Iterator[list[Tensor]]:
        """Yield the crops of each step of `epoch`, starting at step `start` within it."""
        order = epoch_permutation(self.images.shape[0], self.seed, epoch).to(self.images.device)
        for it in range(start, self.steps_per_epoch):
            idx = rank_slice(order, it, self.batch_size, self.rank, self.world)  # (B / world,)
            yield self.augment(self.images[idx], generator=self.generator)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class _Transformed(Dataset):
    """A dataset whose images go through `transform`; labels pass unchanged."""

    def __init__(self, dataset: Dataset, transform: Any) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        image, label = self.dataset[i]
        return self.transform(image), label


class _EpochSampler(torch.utils.data.Sampler[int]):
    """This rank's images of every full global batch of the epoch, in order."""

    def __init__(self, n: int, seed: int, batch_size: int, rank: int, world: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.steps = n // batch_size

    def __iter__(self) -> Iterator[int]:
        order = epoch_permutation(self.n, self.seed, self.epoch)  # (n,)
        return iter(torch.cat([rank_slice(order, it, self.batch_size, self.rank, self.world)
                               for it in range(self.steps)]).tolist())

    def __len__(self) -> int:
        return self.steps * (self.batch_size // self.world)


class LoaderBatches:
    """A DataLoader whose workers run the per-image multi-crop pipeline (this rank's share)."""

    def __init__(self, dataset: Dataset, batch_size: int, crops: MultiCropConfig, seed: int,
                 device: torch.device, num_workers: int = 2, rank: int = 0,
                 world: int = 1) -> None:
        n = len(dataset)  # type: ignore[arg-type]
        if batch_size > n:
            raise ValueError(f"batch_size={batch_size} is larger than the dataset ({n} images)")
        self.local_batch = per_rank_batch(batch_size, world)
        self.sampler = _EpochSampler(n, seed, batch_size, rank, world)
        self.device = device
        self.loader = DataLoader(
            _Transformed(dataset, PerImageMultiCrop(crops)), batch_size=self.local_batch,
            sampler=self.sampler, num_workers=num_workers, collate_fn=collate_crops,
            drop_last=True, pin_memory=device.type == "cuda",
            persistent_workers=num_workers > 0,
        )
        self.steps_per_epoch = n // batch_size

    def epoch(self, epoch: int, start: int = 0) -> Iterator[list[Tensor]]:
        self.sampler.epoch = epoch
        for crops, _labels in itertools.islice(self.loader, start, None):
            yield [c.to(self.device, non_blocking=True) for c in crops]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
