"""A folder dataset with a few bad files trains to the end, and each bad file is reported once.

The folder: 4 classes of 24 small images each (PNG and JPEG, in RGB, grayscale, RGBA, palette
and CMYK modes, of assorted sizes), plus a truncated JPEG and a text file named like a JPEG:
2 bad files in 98. Both data modes are trained on it: "device" (every image decoded and
resized once at the start, bad files dropped then) and "loader" (a DataLoader reads images
lazily; a bad file is met, reported and replaced by the next image). With DataLoader workers,
"once" must hold across the worker processes too.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minidino.config import fast_config
from minidino.folder import BadImageWarning, ImageFolderDataset
from minidino.presets import get_preset
from minidino.train import train

CLASSES = ("circle", "square", "star", "triangle")
BAD = ("broken.jpg", "notes.jpg")
MODES = ("RGB", "L", "RGBA", "P", "CMYK")


pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(24):
            h, w = rng.integers(12, 48, size=2)
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8) // 2 + 40 * c
            image = Image.fromarray(pixels).convert(MODES[i % len(MODES)])
            jpeg_ok = image.mode == "CMYK" or (image.mode in ("RGB", "L") and i % 2 == 0)
            fmt = "JPEG" if jpeg_ok else "PNG"
            image.save(root / name / f"{name}_{i:02d}.{fmt.lower()}", format=fmt)
    jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    # the names sort last in their class, so the 10% hold-out leaves them in the training split
    (root / "circle" / BAD[0]).write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (root / "square" / BAD[1]).write_text("shopping list: milk, eggs\n")
    return root


def folder_config(photos: Path, tmp_path: Path, **changes):
    # 24 of each class minus 2 held out = 22, + 1 bad file in two classes: 90 training files
    return replace(fast_config(get_preset("cpu-demo")), dataset="folder", data_path=str(photos),
                   n_train=None, batch_size=30, epochs=2, depth=1, out_dir=str(tmp_path),
                   **changes)


def reported(records: list[warnings.WarningMessage]) -> list[str]:
    """The names of the files that BadImageWarnings name, one entry per warning."""
    return sorted(Path(str(r.message).split("'")[1]).name for r in records
                  if issubclass(r.category, BadImageWarning))


@pytest.mark.parametrize("data_mode", ["device", "loader"])
def test_a_folder_with_bad_files_trains_to_the_end(photos, tmp_path, data_mode):
    cfg = folder_config(photos, tmp_path, data_mode=data_mode, num_workers=0)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        result = train(cfg, progress=False)
    steps_per_epoch = (90 - 2 * (data_mode == "device")) // 30  # device mode drops them first
    assert result["steps"] == cfg.epochs * steps_per_epoch
    assert (result["run_dir"] / "checkpoint.pt").exists()
    assert reported(records) == sorted(BAD)  # each once, though the run saw every file twice
    messages = [str(r.message) for r in records if issubclass(r.category, BadImageWarning)]
    assert any("image file is truncated" in m for m in messages)  # the reason is given
    assert any("cannot identify image file" in m for m in messages)


def _open_in_child(dataset: ImageFolderDataset, index: int) -> None:
    """Read one sample in a separate process; exit with the number of files it reported."""
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        dataset[index]
    sys.exit(len(reported(records)))


def test_workers_share_what_was_reported(photos):
    """Two processes (as two DataLoader workers would) meet the same bad file: one reports it."""
    dataset = ImageFolderDataset(photos)
    index = [p.name for p, _ in dataset.samples].index(BAD[0])
    context = multiprocessing.get_context("fork")
    exit_codes = []
    for _ in range(2):
        child = context.Process(target=_open_in_child, args=(dataset, index))
        child.start()
        child.join(timeout=60)
        exit_codes.append(child.exitcode)
    assert exit_codes == [1, 0]
    assert [p.name for p in dataset.bad] == [BAD[0]]  # the parent sees it too


def test_loader_workers_report_each_bad_file_once_in_a_real_run(photos, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "minidino", "train", "--fast", "--dataset", "folder",
         "--data-path", str(photos), "--data-mode", "loader", "--num-workers", "2",
         "--n-train", "none", "--batch-size", "30", "--epochs", "3", "--depth", "1",
         "--out-dir", str(tmp_path), "--no-progress"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    warned = [line for line in done.stderr.splitlines() if "BadImageWarning: skipping" in line]
    assert sorted(Path(line.split("'")[1]).name for line in warned) == sorted(BAD), done.stderr
