"""Images read from disk, decoded once into memory: one uint8 tensor (N, 3, S, S).

A folder or ImageNette is read lazily, one file at a time. When the decoded split fits in memory
(`minidino.batches.choose_data_mode` decides), `make_resident` decodes it once, with one process
per CPU core, so that training can crop whole batches on the device instead of decoding every
image again each epoch. A worker that dies or hangs raises a `DataLoaderWorkerError` that says
what to try, and a folder's unreadable files are dropped with a warning each.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2.functional import center_crop, pil_to_tensor, resize
from tqdm.auto import tqdm

from minidino.folder import ImageFolderDataset

if TYPE_CHECKING:
    from minidino.data import DatasetSplit

LOAD_BATCH = 256  # images per task of a loading process (one message each, not one per image)
LOAD_PARALLEL_FROM = 2000  # images from which `to_tensor_images` starts worker processes
WORKER_TIMEOUT_S = 300.0  # no batch from the DataLoader workers for this long: they are stuck


class ResizeCrop:
    """Resize the shorter side to `size`, then crop the centre `size` x `size`.
    PIL image -> PIL image, or uint8 tensor (3, h, w) -> (3, size, size)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Image.Image | Tensor) -> Image.Image | Tensor:
        return center_crop(resize(image, self.size, antialias=True), [self.size, self.size])


def cpu_cores() -> int:
    """The CPU cores this process may use (its affinity, as in a container or under `taskset`),
    shared equally among the processes torchrun starts on this machine (LOCAL_WORLD_SIZE)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def to_tensor_images(dataset: Dataset, image_size: int, num_workers: int | None = None,
                     progress: bool = True) -> Tensor:
    """Load every image of `dataset` (items (PIL image or uint8 tensor, label)), resize its
    shorter side to `image_size`, centre-crop, and stack: uint8 (N, 3, image_size, image_size).

    num_workers: processes that decode the images, in batches of LOAD_BATCH; None: one per CPU
    core for LOAD_PARALLEL_FROM images or more, else none (starting processes costs more than
    decoding a few images). A worker that dies raises DataLoaderWorkerError. A folder's
    unreadable files are flagged (`dataset.bad`) and their places hold a neighbour's image:
    `make_resident` drops them, as `scan()` does.
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size={image_size!r} must be a positive int")
    n = len(dataset)  # type: ignore[arg-type]
    if num_workers is None:
        num_workers = cpu_cores() if n >= LOAD_PARALLEL_FROM and cpu_cores() > 1 else 0
    out = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    loader = DataLoader(_AsTensor(dataset, image_size), batch_size=LOAD_BATCH,
                        num_workers=num_workers, timeout=WORKER_TIMEOUT_S if num_workers else 0)
    first = 0
    with tqdm(total=n, desc="loading images into memory", unit="img", disable=not progress) as bar:
        try:
            for batch in loader:  # (b, 3, S, S)
                out[first:first + len(batch)] = batch
                first += len(batch)
                bar.update(len(batch))
        except Exception as err:
            if not num_workers or isinstance(err, DataLoaderWorkerError):
                raise
            raise DataLoaderWorkerError(worker_failure_message(err)) from err
    return out


class DataLoaderWorkerError(RuntimeError):
    """A DataLoader worker process died, failed or got stuck; the message says what to try."""


def worker_failure_message(err: BaseException) -> str:
    """One line: what happened to the worker, what usually causes it, what to try. (An error
    raised in a worker arrives with the worker's whole traceback: its last line is the error.)"""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    what = lines[-1] if lines else type(err).__name__
    return (f"a data-loading worker died or failed ({what}); the usual causes are too little "
            "memory (RAM, or shared memory: see df -h /dev/shm, and Docker's --shm-size) or an "
            "image file that crashes the decoder; try --num-workers 0 or --data-mode device, "
            "and continue from the checkpoint of the last completed epoch with --resume auto")


def make_resident(split: DatasetSplit, image_size: int, progress: bool = True,
                  num_workers: int | None = None) -> DatasetSplit:
    """Decode every image of a split read from disk once, at `image_size`, into `split.images`
    (uint8 (N, 3, S, S)), with several processes when the CPU has them. A folder's unreadable
    files are reported once each and dropped from its samples and `labels`. Returns `split`."""
    images = to_tensor_images(split.dataset, image_size, num_workers, progress)
    if isinstance(split.dataset, ImageFolderDataset) and split.dataset.bad:
        keep = split.dataset.drop_bad()  # (N,) bool
        images, split.labels = images[keep], split.labels[keep]
    split.images = images
    return split


class _AsTensor(Dataset):
    """The images of `dataset` as uint8 tensors (3, size, size), for `to_tensor_images`."""

    def __init__(self, dataset: Dataset, size: int) -> None:
        self.dataset, self.size, self.resize_crop = dataset, size, ResizeCrop(size)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Tensor:
        image = self.dataset[i][0]
        if isinstance(image, Image.Image):
            image = pil_to_tensor(image.convert("RGB"))  # (3, h, w) uint8
        if image.shape[-2:] != (self.size, self.size):
            image = self.resize_crop(image)
        return image  # (3, size, size) uint8
