"""A folder of your own images, one sub-folder per class, as a dataset.

Photos from the wild are messy: a stray text file, a half-downloaded JPEG. Each such file is named
and skipped (reported once), or, with `on_bad_file="error"`, stops the run with its name, instead
of a bare stack trace from inside PIL.

"Once" holds across DataLoader workers too: each worker process has its own copy of the dataset,
so the record of which files were found bad lives in a shared-memory tensor that every copy
reads and writes. The first process to meet a bad file reports it; the others skip it silently.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

SPLITS: tuple[str, ...] = ("train", "val", "test")  # "val" and "test" both mean held-out


class BadImageWarning(UserWarning):
    """A file in an image folder that cannot be read as an image; it is skipped."""


class ImageFolderDataset(Dataset):
    """Images laid out one folder per class, `root/<class>/**/<file>`, as (PIL RGB image, label).

    Unlike torchvision's ImageFolder, every non-hidden file is a candidate, and one that cannot be
    read as an image (a text file, a corrupt or truncated JPEG) is named in a `BadImageWarning`,
    once, and skipped: `__getitem__` returns the next readable sample instead. With
    on_bad_file="error" it raises a ValueError naming the file. `scan()` checks every file up
    front and drops the bad ones. `bad` is the set of files in `samples` found unreadable so far,
    by this process or by any DataLoader worker (none after `scan()`, which drops them).
    """

    def __init__(self, root: str | Path, transform: Any = None, on_bad_file: str = "skip",
                 samples: list[tuple[Path, int]] | None = None) -> None:
        if on_bad_file not in ("skip", "error"):
            raise ValueError(f"on_bad_file={on_bad_file!r} must be 'skip' or 'error'")
        self.root, self.transform, self.on_bad_file = Path(root), transform, on_bad_file
        self.classes = _class_folders(self.root)
        self.samples = samples if samples is not None else _list_files(self.root, self.classes)
        if not self.samples:
            raise ValueError(f"no files found in the class folders of {str(self.root)!r}")
        self._reset_bad_flags()

    def _reset_bad_flags(self) -> None:
        # (len(samples),) uint8 in shared memory: 1 = found unreadable and reported
        self._bad_flags = torch.zeros(len(self.samples), dtype=torch.uint8).share_memory_()

    @property
    def bad(self) -> set[Path]:
        """The files found unreadable so far (each reported once), in any worker process."""
        return {self.samples[j][0] for j in self._bad_flags.nonzero().flatten().tolist()}

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def _open(self, j: int) -> Image.Image | None:
        """The image of sample `j`, or None (reported once) when it cannot be read."""
        if self._bad_flags[j]:
            return None
        path = self.samples[j][0]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")  # decodes every pixel: finds truncated files too
        except Exception as err:  # PIL raises OSError mostly, but a plugin may raise anything
            reason = f"{type(err).__name__}: {err}"
            if self.on_bad_file == "error":
                raise ValueError(f"cannot read {str(path)!r} as an image ({reason}); remove the "
                                 "file or pass on_bad_file='skip'") from err
            if self._bad_flags[j]:  # another worker reported it meanwhile
                return None
            self._bad_flags[j] = 1
            warnings.warn(f"skipping {str(path)!r}: not a readable image ({reason})",
                          BadImageWarning, stacklevel=3)
            return None

    def __getitem__(self, i: int) -> tuple[Any, int]:
        for k in range(len(self.samples)):
            j = (i + k) % len(self.samples)
            image = self._open(j)
            if image is not None:
                return (self.transform(image) if self.transform else image), self.samples[j][1]
        raise ValueError(f"no file under {str(self.root)!r} could be read as an image")

    def scan(self, progress: bool = False) -> list[Path]:
        """Open every file now; drop and return the unreadable ones (each reported once)."""
        for j in tqdm(range(len(self.samples)), desc="scanning", disable=not progress):
            self._open(j)
        dropped = [self.samples[j][0] for j in self._bad_flags.nonzero().flatten().tolist()]
        self.drop_bad()
        return dropped

    def drop_bad(self) -> torch.Tensor:
        """Drop the samples found unreadable so far; return which of them were kept, bool (N,)."""
        keep = self._bad_flags == 0  # (N,)
        if not keep.any():
            raise ValueError(f"no file under {str(self.root)!r} could be read as an image")
        self.samples = [s for s, good in zip(self.samples, keep.tolist(), strict=True) if good]
        self._reset_bad_flags()  # the kept files are all readable
        return keep


def _class_folders(root: Path) -> list[str]:
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"{str(root)!r} has no class folders: expected root/<class>/<image>")
    return classes


def _list_files(root: Path, classes: list[str]) -> list[tuple[Path, int]]:
    samples = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
            if path.is_file() and not hidden:
                samples.append((path, label))
    return samples


def load_folder(path: str | Path | None, split: str, on_bad_file: str, scan: bool = False,
                 holdout: float = 0.1) -> ImageFolderDataset:
    """`path/<split>/<class>/...` when `path` has split folders; otherwise `path/<class>/...`
    is split here: every (1 / holdout)-th file of each class, in name order, is held out."""
    if path is None:
        raise ValueError("dataset 'folder' needs path=<folder with one sub-folder per class>")
    root = Path(path).expanduser()
    _class_folders(root)  # exists and has sub-folders
    present = [s for s in SPLITS if (root / s).is_dir()]
    if present:
        wanted = [split] if split == "train" else [split, "test" if split == "val" else "val"]
        found = [s for s in wanted if s in present]
        if not found:
            raise ValueError(f"split={split!r}: {str(root)!r} has split folders {present} but "
                             f"no {' or '.join(wanted)!r}; point path at a folder of class "
                             "folders to hold out part of it instead")
        dataset = ImageFolderDataset(root / found[0], on_bad_file=on_bad_file)
    else:
        if not 0.0 < holdout < 1.0:
            raise ValueError(f"holdout={holdout} must be in (0, 1)")
        full = ImageFolderDataset(root, on_bad_file=on_bad_file)
        per_class: dict[int, int] = {}
        samples = []
        for p, y in full.samples:
            i = per_class[y] = per_class.get(y, -1) + 1
            held_out = int((i + 1) * holdout) > int(i * holdout)
            if held_out == (split != "train"):
                samples.append((p, y))
        if not samples:
            raise ValueError(f"split={split!r}: holdout={holdout} leaves no files for it in "
                             f"{str(root)!r} (each class needs at least {round(1 / holdout)})")
        dataset = ImageFolderDataset(root, on_bad_file=on_bad_file, samples=samples)
    if scan:
        dataset.scan(progress=True)
    return dataset
