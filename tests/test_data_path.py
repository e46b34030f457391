"""The two data paths: which one data_mode="auto" takes and why, loading a folder into memory,
and the DataLoader path's workers: how many, and what happens when one dies, fails or hangs.

A dying worker in a real training run (a killed process, `--resume auto` after it, torchrun) is
in tests/test_fault_tolerance.py and tests/test_distributed.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

import minidino.batches as batches_module
from minidino.augment import small_image_config
from minidino.batches import (
    WORKER_TIMEOUT_S,
    DataLoaderWorkerError,
    DeviceBatches,
    LoaderBatches,
    choose_data_mode,
    default_num_workers,
    free_memory,
    make_batches,
)
from minidino.config import TrainConfig, fast_config
from minidino.config_checks import ConfigError
from minidino.data import BadImageWarning, load_dataset
from minidino.presets import get_preset
from minidino.resident import make_resident, to_tensor_images

GB = 2**30
CROPS = small_image_config(16, n_local_crops=1)


def test_auto_takes_the_device_path_when_the_images_fit_in_a_quarter_of_the_free_memory():
    mode, why = choose_data_mode(50_000, 32, {"RAM": 8 * GB})  # CIFAR-10: 147 MB
    assert mode == "device"
    assert why == ("50,000 images of 3x32x32 uint8 take 146.5 MB, under 25% of the free RAM "
                   "(8.0 GB)")
    mode, why = choose_data_mode(1_281_167, 224, {"RAM": 64 * GB})  # ImageNet: 180 GB
    assert mode == "loader" and why.endswith("take 179.6 GB, over 25% of the free RAM (64.0 GB)")
    mode, why = choose_data_mode(50_000, 32, {"RAM": 64 * GB, "GPU memory": GB // 2})
    assert mode == "loader" and "over 25% of the free GPU memory (512.0 MB)" in why
    need = 1000 * 3 * 32 * 32
    assert choose_data_mode(1000, 32, {"RAM": 4 * need})[0] == "device"  # exactly a quarter
    assert choose_data_mode(1000, 32, {"RAM": 4 * need - 1})[0] == "loader"
    assert choose_data_mode(1000, 32, {}) == (
        "device", "1,000 images of 3x32x32 uint8 take 2.9 MB and are in memory already")


def test_free_memory_shares_the_ram_among_the_processes_of_the_machine(monkeypatch):
    assert batches_module.free_ram() > 0
    monkeypatch.setattr(batches_module, "free_ram", lambda: 8 * GB)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun's processes on this machine
    assert free_memory(torch.device("cpu")) == {"RAM": 2 * GB}
    assert free_memory(torch.device("cpu"), in_ram=True) == {}  # nothing more to hold


def test_default_num_workers_follow_the_cores_of_this_process(monkeypatch):
    for cores, local, workers in ((1, 1, 0), (2, 1, 1), (16, 1, 15), (96, 1, 16), (16, 4, 3)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local))
        assert default_num_workers() == workers, (cores, local)
    assert TrainConfig().num_workers is None  # the default: derived from the cores
    with pytest.raises(ConfigError, match=r"num_workers=-1 is not allowed: must be >= 0"):
        TrainConfig(num_workers=-1)


def test_the_loader_path_bounds_every_wait_on_its_workers_and_keeps_them():
    images = torch.zeros(8, 3, 16, 16, dtype=torch.uint8)
    dataset = torch.utils.data.TensorDataset(images, torch.zeros(8))
    loader = LoaderBatches(dataset, 4, CROPS, 0, torch.device("cpu"), num_workers=None).loader
    assert loader.num_workers == default_num_workers()
    loader = LoaderBatches(dataset, 4, CROPS, 0, torch.device("cpu"), num_workers=2).loader
    assert loader.timeout == WORKER_TIMEOUT_S and loader.persistent_workers
    assert not loader.pin_memory  # pinned only for a copy to CUDA
    loader = LoaderBatches(dataset, 4, CROPS, 0, torch.device("cpu"), num_workers=0).loader
    assert loader.timeout == 0  # no workers: nothing to wait for


class _Faulty(Dataset):
    """Images whose 6th item fails in the way `fault` names, inside a DataLoader worker."""

    def __init__(self, fault: str) -> None:
        self.fault = fault

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if i == 5 and self.fault == "raise":
            raise ValueError("the transform met a pixel it cannot handle")
        if i == 5 and self.fault == "kill":  # as the kernel's out-of-memory killer does
            os.kill(os.getpid(), signal.SIGKILL)
        if i == 5 and self.fault == "hang":
            time.sleep(60)
        return torch.zeros(3, 16, 16, dtype=torch.uint8), 0


@pytest.mark.parametrize("fault, what", [
    ("raise", "ValueError: the transform met a pixel it cannot handle"),
    ("kill", "killed by signal: Killed|exited unexpectedly"),
    ("hang", "DataLoader timed out after 1.0 seconds"),
])
def test_a_worker_that_fails_dies_or_hangs_stops_the_epoch_with_one_line(monkeypatch, fault,
                                                                        what):
    monkeypatch.setattr(batches_module, "WORKER_TIMEOUT_S", 1.0)
    batches = LoaderBatches(_Faulty(fault), 4, CROPS, 0, torch.device("cpu"), num_workers=2)
    t0 = time.perf_counter()
    with pytest.raises(DataLoaderWorkerError) as caught:
        for _ in batches.epoch(0):
            pass
    assert time.perf_counter() - t0 < 20  # no hang (a stuck worker is terminated)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("a data-loading worker died or failed (")
    assert re.search(what, message), message
    for advice in ("/dev/shm", "--num-workers 0", "--data-mode device", "--resume auto"):
        assert advice in message
    assert batches.loader._iterator is None  # its workers are gone; a next epoch starts anew


def test_a_worker_that_fails_while_images_are_loaded_into_memory_gives_the_same_line():
    with pytest.raises(DataLoaderWorkerError, match=r"^a data-loading worker died or failed "
                       r"\(ValueError: the transform met a pixel it cannot handle\); [^\n]*$"):
        to_tensor_images(_Faulty("raise"), 16, num_workers=2, progress=False)


def _write_folder(root: Path, n_per_class: int = 20) -> Path:
    """Two classes of small PNG and JPEG images of assorted sizes, and one unreadable file."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("ants", "bees")):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            h, w = rng.integers(20, 40, size=2)
            pixels = rng.integers(0, 128, (h, w, 3), dtype=np.uint8) + 100 * c
            fmt = "PNG" if i % 2 else "JPEG"
            Image.fromarray(pixels).save(root / name / f"{i:02d}.{fmt.lower()}", format=fmt)
    (root / "bees" / "zz_notes.jpg").write_text("not an image\n")  # sorts last: in "train"
    return root


def test_loading_a_folder_in_worker_processes_gives_what_one_process_gives(tmp_path):
    root = _write_folder(tmp_path / "insects")
    splits, reported = {}, {}
    for workers in (0, 2):
        split = load_dataset("folder", path=root, image_size=16)
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            splits[workers] = make_resident(split, 16, progress=False, num_workers=workers)
        reported[workers] = [r for r in records if issubclass(r.category, BadImageWarning)]
    assert len(reported[0]) == 1  # (a worker process reports it on its own stderr)
    one, many = splits[0], splits[2]
    assert one.images.shape == (36, 3, 16, 16) and one.labels.shape == (36,)  # 37 files - 1
    assert torch.equal(one.images, many.images) and torch.equal(one.labels, many.labels)
    assert "zz_notes.jpg" not in {p.name for p, _ in many.dataset.samples}  # dropped
    assert many.labels.tolist() == many.dataset.targets


def test_make_batches_says_which_path_auto_took_and_why(tmp_path, monkeypatch, capsys):
    cfg = replace(fast_config(get_preset("cpu-demo")), dataset="folder", data_mode="auto",
                  data_path=str(_write_folder(tmp_path / "insects")), n_train=None,
                  batch_size=8, num_workers=0)
    split = load_dataset("folder", path=cfg.data_path, image_size=32)
    monkeypatch.setattr(batches_module, "free_memory", lambda device, in_ram: {"RAM": 1000})
    batches = make_batches(cfg, split, torch.device("cpu"), progress=False)
    assert isinstance(batches, LoaderBatches) and split.images is None  # still read from disk
    assert capsys.readouterr().out == (
        "minidino: data_mode='auto' took the DataLoader path with 0 workers: 37 images of "
        "3x32x32 uint8 take 0.1 MB, over 25% of the free RAM (0.0 MB)\n")
    monkeypatch.setattr(batches_module, "free_memory", lambda device, in_ram: {"RAM": 8 * GB})
    with pytest.warns(BadImageWarning):
        batches = make_batches(cfg, split, torch.device("cpu"), progress=False)
    assert isinstance(batches, DeviceBatches) and split.images.shape == (36, 3, 32, 32)
    assert "took the device path: 37 images" in capsys.readouterr().out


def test_a_real_run_on_a_small_folder_takes_the_device_path_and_says_so(tmp_path):
    root = _write_folder(tmp_path / "insects")
    done = subprocess.run(
        [sys.executable, "-m", "minidino", "train", "--fast", "--no-progress", "--dataset",
         "folder", "--data-path", str(root), "--data-mode", "auto", "--n-train", "none",
         "--batch-size", "12", "--depth", "1", "--epochs", "1", "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    chosen = [line for line in done.stdout.splitlines() if "data_mode='auto'" in line]
    assert len(chosen) == 1 and chosen[0].startswith(
        "minidino: data_mode='auto' took the device path: 37 images of 3x32x32 uint8 take")
    # 37 files of the 40 + 1 are in "train" (a tenth held out); the unreadable one is dropped
    assert (tmp_path / "cifar10" / "checkpoint.pt").exists()
    metrics = (tmp_path / "cifar10" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 3  # 36 images // 12 per step, one epoch
