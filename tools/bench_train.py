"""Training-step benchmarks: images/s, peak memory and (on CUDA) model FLOP utilisation.

Rows, each measured in the same process on the same model:
- model only: the step (forwards, loss, backward, AdamW, EMA) on crops made once in advance;
- end to end, device path: resident uint8 images, batched multi-crop on the device, the step;
- end to end, DataLoader path: per-image torchvision multi-crop in DataLoader workers, the step.
The ratio of the two end-to-end rows is the speed-up of the device path.
"""

from __future__ import annotations

import resource
import time
from dataclasses import replace
from typing import Any

import torch

from minidino.augment import crop_config
from minidino.batches import DeviceBatches, LoaderBatches
from minidino.config import TrainConfig
from minidino.data import TensorImageDataset
from minidino.step import build_parts, build_student, train_step

# Dense bf16 tensor-core peaks (FLOP/s) used for MFU; unknown GPUs report no MFU.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "T4": 65e12}


def training_flops_per_image(cfg: TrainConfig) -> float:
    """Matmul FLOPs of one image's training step: student forward+backward (3x forward) on every
    crop, teacher forward on the 2 global crops, heads included (see `forward_flops` in
    minidino/vit.py and `DINOHead.flops` in minidino/head.py)."""
    student = build_student(cfg)
    backbone, head = student.backbone, student.head
    glob = backbone.forward_flops(cfg.global_size) + head.flops()
    local = backbone.forward_flops(cfg.local_size) + head.flops()
    return 3 * (2 * glob + cfg.n_local_crops * local) + 2 * glob


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # whole process, KiB -> MiB


def _rate(cfg: TrainConfig, device: torch.device, make_crops: Any, steps: int, warmup: int
          ) -> float:
    parts = build_parts(cfg, steps_per_epoch=steps + warmup, device=device)
    it = make_crops()
    for i in range(warmup):
        train_step(parts, next(it), i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for i in range(steps):
        out = train_step(parts, next(it), warmup + i)
    float(out["loss"])  # waits for the device
    return steps * cfg.batch_size / (time.perf_counter() - start)


def bench_training(cfg: TrainConfig, device: torch.device, steps: int = 20, warmup: int = 3,
                   num_workers: int = 2, loader: bool = True) -> list[dict[str, Any]]:
    """Measure the three rows for `cfg` on `device` with random uint8 images."""
    cfg = replace(cfg, epochs=1, warmup_epochs=0, freeze_last_layer=0, device=device.type)
    n = cfg.batch_size * (steps + warmup + 1)
    g = torch.Generator().manual_seed(0)
    size = (n, 3, cfg.image_size, cfg.image_size)
    images = torch.randint(0, 256, size, dtype=torch.uint8, generator=g)  # (N, 3, H, W)
    device_batches = DeviceBatches(images, cfg.batch_size, crop_config(cfg), 0, device)
    fixed = next(device_batches.epoch(0))

    def repeat_fixed():
        while True:
            yield fixed

    def endless(batches):
        epoch = 0
        while True:
            yield from batches.epoch(epoch)
            epoch += 1

    rows = []
    cases = [("model only (crops made once)", repeat_fixed),
             ("end to end, device path", lambda: endless(device_batches))]
    if loader:
        loader_batches = LoaderBatches(TensorImageDataset(images, torch.zeros(n).long()),
                                       cfg.batch_size, crop_config(cfg), 0, device, num_workers)
        cases.append((f"end to end, DataLoader ({num_workers} workers)",
                      lambda: endless(loader_batches)))
    flops = training_flops_per_image(cfg)
    peak = next((v for k, v in PEAK_BF16.items()
                 if device.type == "cuda" and k in torch.cuda.get_device_name(device)), None)
    for name, make in cases:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        ips = _rate(cfg, device, make, steps, warmup)
        if cfg.compile:
            name += ", torch.compile"
        rows.append({"row": name, "images_per_s": ips, "peak_mb": _peak_memory_mb(device),
                     "mfu": ips * flops / peak if peak else None})
    return rows


def format_rows(title: str, rows: list[dict[str, Any]]) -> str:
    base = rows[-1]["images_per_s"]
    lines = [f"{title}", "| row | images/s | vs last row | peak memory (MiB) | MFU |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        lines.append(f"| {r['row']} | {r['images_per_s']:,.0f} | "
                     f"{r['images_per_s'] / base:.2f}x | {r['peak_mb']:,.0f} | {mfu} |")
    return "\n".join(lines)
