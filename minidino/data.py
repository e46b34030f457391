"""Datasets behind one entry point: `load_dataset(name, split)`.

Why one entry point: the training loop only needs images and labels. Whether they come from the
built-in shapes, CIFAR, ImageNette or a folder of your own photos should be one string.

What you get back is a `DatasetSplit`:
- small datasets (shapes, CIFAR) are held in memory as one uint8 tensor `images` (N, 3, H, W), so
  training can keep them on the GPU and augment whole batches there;
- larger ones (ImageNette, a folder) are read lazily from disk through `dataset`, which returns
  (PIL image, label); `make_resident` (minidino/resident.py) decodes such a split once into
  `images` when it fits.

CIFAR and ImageNette come from `torchvision.datasets`, the same download code everyone uses. When
a dataset is missing, the error says where it looked and the one command that downloads it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision.datasets as tvd
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2.functional import resize

from minidino.config import TrainConfig
from minidino.config_checks import DATASETS
from minidino.folder import SPLITS, BadImageWarning, ImageFolderDataset, load_folder
from minidino.resident import ResizeCrop, make_resident
from minidino.scenes import ScenesDataset
from minidino.shapes import ShapesDataset

__all__ = ["DATASETS", "SPLITS", "BadImageWarning", "DatasetSplit", "ImageFolderDataset",
           "TensorImageDataset", "download", "load_dataset", "make_resident", "subset_indices"]

_EXTRA_KWARGS = {"shapes": {"difficulty", "n_images", "seed"}, "cifar10": set(), "cifar100": set(),
                 "imagenette": {"size", "resident"}, "folder": {"scan", "holdout", "resident"},
                 "scenes": {"style", "n_images", "seed"}}
_TORCHVISION = {"cifar10": ("CIFAR10", "cifar-10-batches-py", "170 MB"),
                "cifar100": ("CIFAR100", "cifar-100-python", "170 MB"),
                "imagenette": ("Imagenette", "imagenette2-160", "100 MB")}


@dataclass
class DatasetSplit:
    """One split of a dataset.

    images: uint8 (N, 3, H, W) when the whole split is held in memory, else None
    labels: int64 (N,) class indices into `classes`
    dataset: a torch Dataset whose items are (PIL image or uint8 tensor (3, H, W), label)
    masks: bool (N, H, W) object masks (the built-in shapes and scenes), else None; a scene's
        instance ids are in `dataset.instances` (uint8 (N, H, W), 0 = background)
    """

    images: Tensor | None
    labels: Tensor
    classes: list[str]
    dataset: Dataset
    masks: Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class TensorImageDataset(Dataset):
    """In-memory uint8 images (N, 3, H, W) as a Dataset of (image (3, H, W), label)."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Any = None) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Any, int]:
        image = self.images[i]  # (3, H, W) uint8
        return (self.transform(image) if self.transform else image), int(self.labels[i])


# ---------------------------------------------------------------- torchvision datasets
def _download_command(name: str, root: str | Path) -> str:
    return f"python -m minidino download {name} --root {shlex.quote(str(root))}"


def _torchvision(name: str, split: str, root: Path, download: bool, size: str = "160px") -> Any:
    """Build the torchvision dataset, turning its errors into ones that say what to do."""
    cls_name, folder, megabytes = _TORCHVISION[name]
    if name == "imagenette":
        folder = f"imagenette2-{size}" if size != "full" else "imagenette2"
        kwargs: dict[str, Any] = {"split": "train" if split == "train" else "val", "size": size}
    else:
        kwargs = {"train": split == "train"}
    where = root / folder
    try:
        return getattr(tvd, cls_name)(str(root), download=download, **kwargs)
    except (OSError, RuntimeError) as err:
        command = _download_command(name, root)
        if not download and not where.exists():
            raise FileNotFoundError(f"{name} not found: looked for {str(where)!r} (download=False)."
                                    f" Download it (about {megabytes}) with:\n    {command}\n"
                                    "or pass download=True.") from err
        if not download:
            raise RuntimeError(f"{name} in {str(where)!r} is incomplete or corrupted ({err}). "
                               f"Delete that folder and download again with:\n    {command}"
                               ) from err
        raise RuntimeError(f"could not download {name} into {str(root)!r}: {type(err).__name__}: "
                           f"{err}. Check the network connection, or run on a machine with "
                           f"network:\n    {command}\nand copy the folder {folder!r} into "
                           f"{str(root)!r}.") from err


def download(name: str, root: str | Path = "data") -> None:
    """Download dataset `name` into `root` (both splits). The built-in shapes and scenes need
    nothing."""
    if name not in DATASETS:
        raise ValueError(f"name={name!r} is not a dataset; available: {', '.join(DATASETS)}")
    if name == "folder":
        raise ValueError("name='folder' is your own images: there is nothing to download")
    if name not in ("shapes", "scenes"):
        for split in ("train", "test"):
            _torchvision(name, split, Path(root).expanduser(), download=True)


def load_dataset(name: str, split: str = "train", root: str | Path = "data",
                 download: bool = True, image_size: int | None = None,
                 path: str | Path | None = None, on_bad_file: str = "skip",
                 progress: bool = True, **kwargs: Any) -> DatasetSplit:
    """Load one split of dataset `name` (one of DATASETS).

    split: "train", or "test"/"val" for the held-out split (ImageNette calls it "val").
    root: where torchvision datasets live or are downloaded to. image_size: the built-in shapes
    are drawn at this size (default 32); CIFAR is resized to it; ImageNette and folder images are
    resized (shorter side) and centre-cropped to it when read. path: the image folder for "folder".
    kwargs: shapes: difficulty, n_images, seed; imagenette: size ("160px", "320px", "full"),
    resident; folder: scan (check every file now), holdout (fraction held out when the folder
    has no train/val/test sub-folders, default 0.1), resident. resident=True loads a lazy split
    into `images` with `make_resident` (needs image_size; a progress bar unless `progress` is
    False). The built-in scenes (`minidino.scenes`, drawn at image_size like the shapes) take
    style, n_images, seed.
    """
    if name not in DATASETS:
        raise ValueError(f"name={name!r} is not a dataset; available: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {', '.join(SPLITS)}")
    unknown = set(kwargs) - _EXTRA_KWARGS[name]
    if unknown:
        raise ValueError(f"unknown argument(s) {sorted(unknown)} for dataset {name!r}; it takes "
                         f"{sorted(_EXTRA_KWARGS[name]) or 'none'}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size={image_size!r} must be a positive int or None")
    if on_bad_file not in ("skip", "error"):
        raise ValueError(f"on_bad_file={on_bad_file!r} must be 'skip' or 'error'")
    if path is not None and name != "folder":
        raise ValueError(f"path={str(path)!r} is for dataset 'folder'; {name!r} lives in root")
    root = Path(root).expanduser()
    held_out = "train" if split == "train" else "test"

    if name == "shapes":
        shapes = ShapesDataset(held_out, image_size=image_size or 32, **kwargs)
        return DatasetSplit(shapes.images, shapes.labels, shapes.classes, shapes, shapes.masks)
    if name == "scenes":
        scenes = ScenesDataset(held_out, image_size=image_size or 32, **kwargs)
        return DatasetSplit(scenes.images, scenes.labels, scenes.classes, scenes, scenes.masks)

    if name in ("cifar10", "cifar100"):
        tv = _torchvision(name, split, root, download)
        images = torch.from_numpy(tv.data).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32)
        if image_size is not None and image_size != images.shape[-1]:
            images = resize(images, [image_size, image_size], antialias=True)  # (N, 3, S, S)
        labels = torch.as_tensor(tv.targets, dtype=torch.int64)
        return DatasetSplit(images, labels, list(tv.classes), TensorImageDataset(images, labels))

    resident = kwargs.pop("resident", False)
    if resident and image_size is None:
        raise ValueError("resident=True needs image_size: the images are stacked at one size")
    transform = ResizeCrop(image_size) if image_size is not None else None
    if name == "imagenette":
        tv = _torchvision(name, split, root, download, size=kwargs.get("size", "160px"))
        tv.transform = transform
        # torchvision keeps the (path, label) list in `_samples`; labels need no image decoding
        labels = torch.tensor([label for _, label in tv._samples], dtype=torch.int64)
        classes = [names[0] for names in tv.classes]  # each class is a tuple of synonyms
        dataset: Dataset = tv
    else:
        dataset = load_folder(path, split, on_bad_file, **kwargs)
        dataset.transform = transform
        labels = torch.tensor(dataset.targets, dtype=torch.int64)
        classes = dataset.classes
    loaded = DatasetSplit(None, labels, classes, dataset)
    return make_resident(loaded, image_size, progress) if resident else loaded


def subset_indices(n_total: int, n: int | None, seed: int = 0) -> Tensor:
    """A fixed random subset of `n` of `range(n_total)`, sorted: (min(n, n_total),) int64.

    Folder datasets list their files class by class, so "the first n" would hold only the first
    classes; a seeded random subset keeps every class. `n=None` means all of them.
    """
    if n is None or n >= n_total:
        return torch.arange(n_total)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=g)[:n].sort().values


# --------------------------------------------------------------------------- a run's splits
def load_splits(cfg: TrainConfig, progress: bool = True) -> tuple[DatasetSplit, DatasetSplit]:
    """The training split and the held-out split used for kNN evaluation. With
    data_mode="device", images read from disk (a folder, ImageNette) are decoded once into
    memory by `cfg.num_workers` processes (a progress bar unless `progress` is False); with
    "auto", `make_batches` decides."""
    kwargs: dict[str, Any] = {"root": cfg.data_root, "image_size": cfg.image_size}
    if cfg.dataset == "shapes":
        kwargs["difficulty"] = cfg.difficulty
    if cfg.dataset == "scenes":
        kwargs["style"] = cfg.scene_style
    if cfg.dataset == "folder":
        kwargs["path"] = cfg.data_path
    train = load_dataset(cfg.dataset, split="train", **kwargs)
    test = load_dataset(cfg.dataset, split="test", **kwargs)
    if cfg.data_mode == "device":
        for split in (train, test):
            if split.images is None:  # decoded once, kept as uint8
                make_resident(split, cfg.image_size, progress, cfg.num_workers)
    return train, test
