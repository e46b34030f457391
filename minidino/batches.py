"""Feeding multi-crop batches to the training loop, two ways.

- Device path: a dataset small enough to fit (the built-in shapes, CIFAR) lives on the training
  device as one uint8 tensor; each step indexes a batch and `BatchedMultiCrop` makes every crop of
  every image in a few tensor operations. No workers, no copies, no per-image Python.
- Loader path: larger folder datasets go through a `DataLoader` whose workers run the per-image
  `PerImageMultiCrop` pipeline.

`choose_data_mode` picks one for data_mode="auto": the device path whenever the images fit
comfortably in memory as uint8 (a quarter of the free RAM, and of the GPU's on CUDA), which is
every dataset of CIFAR's size and most folders of small images. The loader path never hangs: a
worker that dies (killed, out of memory, a crash in a transform) or sends nothing for
WORKER_TIMEOUT_S stops the run at once with a `DataLoaderWorkerError` that says what to try.

Both yield, for every step, a list of `2 + n_local_crops` tensors `(B, 3, S, S)`: the global crops
first, then the local crops. The order of images in an epoch depends only on `(seed, epoch)`, so a
resumed run sees the same batches as an uninterrupted one.

Under torchrun (see `minidino.distributed`) `batch_size` is the global batch: every rank walks the
same permutation and takes its own slice of each global batch, `batch_size / world_size` images.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from minidino.augment import (
    BatchedMultiCrop,
    MultiCropConfig,
    PerImageMultiCrop,
    collate_crops,
    crop_config,
)
from minidino.config import TrainConfig
from minidino.data import DatasetSplit, subset_indices
from minidino.distributed import (
    broadcast_object,
    is_main,
    per_rank_batch,
    rank,
    rank_seed,
    world_size,
)
from minidino.resident import (
    WORKER_TIMEOUT_S,
    DataLoaderWorkerError,
    cpu_cores,
    make_resident,
    worker_failure_message,
)

MEMORY_SHARE = 0.25  # "auto": the device path when the images take at most this much free memory
MAX_WORKERS = 16  # num_workers=None: one DataLoader worker per CPU core, at most this many


def free_ram() -> int:
    """Bytes of RAM this process can still take: Linux's MemAvailable, capped by a container's
    memory limit (cgroup v2); elsewhere, half the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) * 1024 for line in f
                        if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
        except (AttributeError, ValueError, OSError):  # no sysconf (Windows)
            return 4 * 2**30
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            free = min(free, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return free


def free_memory(device: torch.device, in_ram: bool = False) -> dict[str, int]:
    """Free bytes of each memory the device path would fill: RAM (this process's share when
    torchrun starts several on the machine), unless the images are in RAM already, and the
    GPU's memory on CUDA."""
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    free = {} if in_ram else {"RAM": free_ram() // local_processes}
    if device.type == "cuda":
        free["GPU memory"] = torch.cuda.mem_get_info(device)[0]
    return free


def choose_data_mode(n_images: int, image_size: int, free: dict[str, int]) -> tuple[str, str]:
    """The path for data_mode="auto", and why in words: "device" when `n_images` uint8 images
    (3, image_size, image_size) take at most MEMORY_SHARE of each memory in `free` (its free
    bytes, see `free_memory`), else "loader"."""
    need = n_images * 3 * image_size**2
    size = f"{n_images:,} images of 3x{image_size}x{image_size} uint8 take {_bytes(need)}"
    for where, nbytes in free.items():
        if need > MEMORY_SHARE * nbytes:
            return "loader", (f"{size}, over {MEMORY_SHARE:.0%} of the free {where} "
                              f"({_bytes(nbytes)})")
    if not free:
        return "device", f"{size} and are in memory already"
    within = " and of the free ".join(f"{where} ({_bytes(b)})" for where, b in free.items())
    return "device", f"{size}, under {MEMORY_SHARE:.0%} of the free {within}"


def _bytes(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


def default_num_workers() -> int:
    """DataLoader workers when num_workers is None: one per CPU core of this process (see
    `cpu_cores`), less one for the training loop itself, at most MAX_WORKERS."""
    return min(MAX_WORKERS, cpu_cores() - 1)


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
        self.generator.set_state(state["generator"].cpu())  # a state is a CPU byte tensor


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
    """This rank's images of every full global batch of the epoch from step `start`, in order."""

    def __init__(self, n: int, seed: int, batch_size: int, rank: int, world: int) -> None:
        self.n, self.seed, self.epoch, self.start = n, seed, 0, 0
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.steps = n // batch_size

    def __iter__(self) -> Iterator[int]:
        order = epoch_permutation(self.n, self.seed, self.epoch)  # (n,)
        shares = [rank_slice(order, it, self.batch_size, self.rank, self.world)
                  for it in range(self.start, self.steps)]  # each (B / world,)
        return iter([i for share in shares for i in share.tolist()])

    def __len__(self) -> int:
        return (self.steps - self.start) * (self.batch_size // self.world)


def _explain_worker_deaths() -> None:
    """Make the error for a dead worker say what to try, wherever it is raised.

    A DataLoader with workers installs a SIGCHLD handler (once per process) that raises a
    RuntimeError in the main thread, wherever it is, as soon as a worker dies. Wrap it, once.
    """
    if not hasattr(signal, "SIGCHLD") or threading.current_thread() is not threading.main_thread():
        return  # no SIGCHLD (Windows), or not the main thread: errors still reach `epoch`
    torch_handler = signal.getsignal(signal.SIGCHLD)
    if not callable(torch_handler) or getattr(torch_handler, "explains_worker_deaths", False):
        return

    def handler(signum: int, frame: Any) -> None:
        try:
            torch_handler(signum, frame)
        except RuntimeError as err:
            raise DataLoaderWorkerError(worker_failure_message(err)) from err

    handler.explains_worker_deaths = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGCHLD, handler)


class LoaderBatches:
    """A DataLoader whose workers run the per-image multi-crop pipeline (this rank's share).

    num_workers: worker processes; None: `default_num_workers()`. They live as long as the
    run (persistent), and batches are pinned on CUDA for a faster, asynchronous copy.
    """

    def __init__(self, dataset: Dataset, batch_size: int, crops: MultiCropConfig, seed: int,
                 device: torch.device, num_workers: int | None = None, rank: int = 0,
                 world: int = 1) -> None:
        n = len(dataset)  # type: ignore[arg-type]
        if batch_size > n:
            raise ValueError(f"batch_size={batch_size} is larger than the dataset ({n} images)")
        if num_workers is not None and num_workers < 0:
            raise ValueError(f"num_workers={num_workers} must be >= 0, or None for one per core")
        self.local_batch = per_rank_batch(batch_size, world)
        self.sampler = _EpochSampler(n, seed, batch_size, rank, world)
        self.device = device
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.loader = DataLoader(
            _Transformed(dataset, PerImageMultiCrop(crops)), batch_size=self.local_batch,
            sampler=self.sampler, num_workers=self.num_workers, collate_fn=collate_crops,
            drop_last=True, pin_memory=device.type == "cuda",
            persistent_workers=self.num_workers > 0,
            timeout=WORKER_TIMEOUT_S if self.num_workers > 0 else 0,  # every wait is bounded
        )
        self.steps_per_epoch = n // batch_size

    def epoch(self, epoch: int, start: int = 0) -> Iterator[list[Tensor]]:
        """Yield the crops of each step of `epoch`, starting at step `start` within it. A worker
        that dies, fails or sends nothing for WORKER_TIMEOUT_S raises DataLoaderWorkerError."""
        self.sampler.epoch, self.sampler.start = epoch, start
        batches = None
        while True:
            try:
                if batches is None:  # persistent workers: iter() waits for them to restart
                    batches = iter(self.loader)
                    if self.num_workers > 0:
                        _explain_worker_deaths()  # torch's SIGCHLD handler is in place now
                crops, _labels = next(batches)
            except StopIteration:
                return
            except Exception as err:  # from a worker: a RuntimeError, or OSError, EOFError, ...
                if self.num_workers == 0:
                    raise  # the dataset's own error, raised in this process
                self._stop_workers(batches)
                if isinstance(err, DataLoaderWorkerError):
                    raise
                raise DataLoaderWorkerError(worker_failure_message(err)) from err
            yield [c.to(self.device, non_blocking=True) for c in crops]

    def _stop_workers(self, batches: Any) -> None:
        """End the remaining workers now, not at exit; a next epoch would start new ones."""
        iterator = batches if batches is not None else self.loader._iterator
        shutdown = getattr(iterator, "_shutdown_workers", None)  # what torch calls on cleanup
        if shutdown is not None:
            shutdown()
        self.loader._iterator = None  # the persistent iterator, now without workers

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


# --------------------------------------------------------------------------- a run's batches
def make_batches(cfg: TrainConfig, train: DatasetSplit, device: torch.device,
                 progress: bool = True) -> DeviceBatches | LoaderBatches:
    """The batches of a run on `train`: `DeviceBatches` (images held on the device, crops made
    there in batches) or `LoaderBatches` (a DataLoader's workers crop image by image).

    data_mode="auto" takes the device path when the images fit comfortably in memory
    (`choose_data_mode`), decoding a split read from disk into `train.images` first (once, by
    `cfg.num_workers` processes, a progress bar unless `progress` is False), and prints which
    path it took and why. Under torchrun every rank takes rank 0's choice."""
    mode = cfg.data_mode
    if mode == "auto":
        free = free_memory(device, in_ram=train.images is not None)
        mode, why = broadcast_object(choose_data_mode(len(train), cfg.image_size, free))
    if mode == "device" and train.images is None:
        make_resident(train, cfg.image_size, progress, cfg.num_workers)  # drops bad files
    crops = crop_config(cfg)
    chosen = subset_indices(len(train.labels), cfg.n_train, cfg.seed)  # (N,)
    if mode == "device":
        batches: DeviceBatches | LoaderBatches = DeviceBatches(
            train.images[chosen], cfg.batch_size, crops, cfg.seed, device, rank(), world_size())
    else:
        dataset = train.dataset
        if cfg.n_train is not None:
            dataset = torch.utils.data.Subset(dataset, chosen.tolist())
        batches = LoaderBatches(dataset, cfg.batch_size, crops, cfg.seed, device,
                                cfg.num_workers, rank(), world_size())
    if cfg.data_mode == "auto" and is_main():
        if isinstance(batches, DeviceBatches):
            path = "the device path"
        else:
            n = batches.num_workers
            path = f"the DataLoader path with {n} worker{'' if n == 1 else 's'}"
        print(f"minidino: data_mode='auto' took {path}: {why}")
    return batches
