"""Training-step benchmarks: images/s, peak memory and (on CUDA) model FLOP utilisation.

`bench_training` (used by `python -m tools.bench train` and tools/gpu_check.py) measures, in the
same process on the same model:
- model only: the step (forwards, loss, backward, AdamW, EMA) on crops made once in advance;
- end to end, device path: resident uint8 images, batched multi-crop on the device, the step;
- end to end, DataLoader path: per-image torchvision multi-crop in DataLoader workers, the step.
The ratio of the two end-to-end rows is the speed-up of the device path.

`python -m tools.bench_train`, the fast path's report, measures per batch size, end to end: the
per-image DataLoader path (the baseline), the device path eager, compiled, and on the fast path
(compiled with CUDA graphs, `--compile-mode`; see minidino/step.py), and what `train` itself
sustains in a short real run on the fast path; each with images/s, the ratio to the baseline, MFU
and peak memory. It also compares the first losses of the fast path with the eager path's on the
same crops and, on CUDA, counts the host synchronisations per step. On a GPU its defaults are the
`cifar10` preset at batches 512 and 1,024; on a CPU, a shrunk preset at small batches, as a smoke
test of the script.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import platform
import resource
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from minidino.augment import crop_config
from minidino.batches import DeviceBatches, LoaderBatches, default_num_workers
from minidino.config import TrainConfig, fast_config
from minidino.config_checks import COMPILE_MODES
from minidino.data import DatasetSplit, TensorImageDataset
from minidino.device import pick_device
from minidino.presets import get_preset
from minidino.resident import cpu_cores
from minidino.step import build_parts, build_student, train_step
from minidino.train import train

TRAIN_IMAGES = 45_000  # `train`'s row on CUDA: CIFAR-10's 50,000 less the held-out tenth
# Dense bf16 tensor-core peaks (FLOP/s) by a part of the device name, for MFU (the first key
# found in the name counts, so the PCIe and NVL H100s come before "H100", the SXM part); T4:
# fp16, it has no bf16. Unknown GPUs and CPUs report no MFU.
PEAK_BF16 = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200": 989e12,
             "A100": 312e12, "L4": 121e12, "T4": 65e12}


def peak_flops(device: torch.device) -> float | None:
    """The dense bf16 peak of `device` from PEAK_BF16, or None (a CPU, an unknown GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


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
    if cfg.compile:
        torch._dynamo.reset()  # each compiled row compiles its own step, at its own batch size
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
    images = random_images(n, cfg.image_size)  # (N, 3, H, W)
    device_batches = DeviceBatches(images, cfg.batch_size, crop_config(cfg), 0, device)
    fixed = next(device_batches.epoch(0))

    def repeat_fixed():
        while True:
            yield fixed

    rows = []
    cases = [("model only (crops made once)", repeat_fixed),
             ("end to end, device path", lambda: endless(device_batches))]
    if loader:
        loader_batches = LoaderBatches(TensorImageDataset(images, torch.zeros(n).long()),
                                       cfg.batch_size, crop_config(cfg), 0, device, num_workers)
        cases.append((f"end to end, DataLoader ({num_workers} workers)",
                      lambda: endless(loader_batches)))
    flops, peak = training_flops_per_image(cfg), peak_flops(device)
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


# ------------------------------------------------------------------------ the fast path
def bench_fast_path(cfg: TrainConfig, device: torch.device, batch_sizes: list[int],
                    steps: int, warmup: int, num_workers: int, fast_mode: str,
                    train_steps: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows per batch size: the per-image DataLoader baseline, the device path eager, compiled
    and on the fast path, and `train` on the fast path; and notes (losses, syncs, whole run)."""
    rows, notes = [], []
    flops, peak = training_flops_per_image(cfg), peak_flops(device)
    for batch in batch_sizes:
        c = replace(cfg, batch_size=batch, epochs=1, warmup_epochs=0, freeze_last_layer=0,
                    device=device.type, n_train=None, compile=False, compile_mode="default")
        fast = replace(c, compile=True, compile_mode=fast_mode)
        images = random_images(batch * (steps + warmup + 1), c.image_size)
        on_device = DeviceBatches(images, batch, crop_config(c), 0, device)
        per_image = LoaderBatches(TensorImageDataset(images, torch.zeros(len(images)).long()),
                                  batch, crop_config(c), 0, device, num_workers)
        workers = f"{num_workers} worker{'' if num_workers == 1 else 's'}"
        cases = [(f"per-image DataLoader ({workers}), eager", c, per_image),
                 ("device path, eager", c, on_device),
                 ("device path, torch.compile", replace(c, compile=True), on_device),
                 (f"fast path: device path, compile mode {fast_mode}", fast, on_device)]
        first = len(rows)
        for name, case_cfg, batches in cases:
            _reset_peak(device)
            ips = _rate(case_cfg, device, lambda b=batches: endless(b), steps, warmup)
            rows.append(_row(batch, name, ips, device, flops, peak))
        _reset_peak(device)
        ips, whole = _train_rate(fast, device, train_steps)
        rows.append(_row(batch, "train() on the fast path, steady state", ips, device, flops,
                         peak))
        for r in rows[first:]:
            r["vs_baseline"] = r["images_per_s"] / rows[first]["images_per_s"]
        notes.append(f"batch {batch}: train() on the fast path, whole run of {train_steps} "
                     f"steps with its compilation: {whole:,.0f} images/s")
        crops = next(on_device.epoch(0))
        notes.append(f"batch {batch}: " + _compare_losses(c, fast, device, crops))
        if device.type == "cuda":
            notes.append(f"batch {batch}: " + _count_syncs(c, device, on_device))
    return rows, notes


def random_images(n: int, size: int) -> torch.Tensor:
    """`n` random uint8 images (n, 3, size, size), the same ones every call (seed 0)."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def endless(batches: Any) -> Any:
    """The crops of `batches` (DeviceBatches or LoaderBatches), epoch after epoch, for ever."""
    epoch = 0
    while True:
        yield from batches.epoch(epoch)
        epoch += 1


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _row(batch: int, name: str, ips: float, device: torch.device, flops: float,
         peak: float | None) -> dict[str, Any]:
    return {"batch": batch, "row": name, "images_per_s": ips, "peak_mb": _peak_memory_mb(device),
            "mfu": ips * flops / peak if peak else None}


def _train_rate(cfg: TrainConfig, device: torch.device, steps: int) -> tuple[float, float]:
    """images/s of `train` itself on random images: steady (from its first log step, after the
    compilation, to its last, as metrics.jsonl times them) and over the whole run. On CUDA the
    images are as many as CIFAR-10's training split less a held-out tenth, so that the epochs,
    and the checkpoint written after each, come as often as in a real run; elsewhere an epoch is
    4 steps."""
    n_images = TRAIN_IMAGES if device.type == "cuda" else 4 * cfg.batch_size
    images = random_images(n_images, cfg.image_size)
    split = DatasetSplit(images, torch.zeros(len(images)).long(), ["none"],
                         TensorImageDataset(images, torch.zeros(len(images)).long()))
    log_every = max(1, steps // 6)
    torch._dynamo.reset()
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        run = replace(cfg, out_dir=out, run_name="bench", data_mode="device", knn_every=0,
                      log_every=log_every, max_steps=steps,
                      epochs=math.ceil(steps / (n_images // cfg.batch_size)))
        result = train(run, progress=False, train_split=split)
        lines = (Path(out) / "bench" / "metrics.jsonl").read_text().splitlines()
    logged = [r for r in map(json.loads, lines) if "teacher_entropy" in r]  # the log steps
    (s0, t0), (s1, t1) = [(r["step"], r["time"]) for r in (logged[0], logged[-1])]
    return (s1 - s0) * cfg.batch_size / max(t1 - t0, 1e-9), result["images_per_s"]


def _compare_losses(plain: TrainConfig, fast: TrainConfig, device: torch.device,
                    crops: list[torch.Tensor], n: int = 5) -> str:
    """The first `n` losses of the eager and the fast path from the same seed on `crops`,
    without drop path (compiled code draws its random numbers its own way)."""
    losses = []
    for cfg in (plain, fast):
        torch._dynamo.reset()
        parts = build_parts(replace(cfg, drop_path=0.0), steps_per_epoch=n, device=device)
        losses.append(torch.stack([train_step(parts, crops, i)["loss"] for i in range(n)]))
    eager, compiled = (x.double() for x in losses)
    rel = ((compiled - eager).abs() / eager.abs().clamp_min(1e-12)).max().item()
    return (f"first {n} losses (no drop path), eager {[round(v, 5) for v in eager.tolist()]}, "
            f"fast path {[round(v, 5) for v in compiled.tolist()]}: largest relative "
            f"difference {rel:.1e}")


def _count_syncs(cfg: TrainConfig, device: torch.device, batches: DeviceBatches,
                 steps: int = 3) -> str:
    """Host synchronisations per step of the eager device path (crops and step), counted by
    CUDA's sync debug mode, with the lines that cause them."""
    parts, crops = build_parts(cfg, steps_per_epoch=steps + 1, device=device), endless(batches)
    train_step(parts, next(crops), 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for i in range(steps):
                train_step(parts, next(crops), i + 1)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    where = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught
                    if "synchroniz" in str(w.message))
    listed = ", ".join(f"{k} x{v / steps:g}" for k, v in where.most_common())
    return f"host syncs per step (eager device path): {sum(where.values()) / steps:g} ({listed})"


def format_fast_path(title: str, rows: list[dict[str, Any]], notes: list[str]) -> str:
    lines = [title, "| batch | row | images/s | vs baseline | MFU | peak memory (MiB) |",
             "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        lines.append(f"| {r['batch']} | {r['row']} | {r['images_per_s']:,.0f} | "
                     f"{r['vs_baseline']:.2f}x | {mfu} | {r['peak_mb']:,.0f} |")
    return "\n".join(lines + [""] + notes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--preset", default=None,
                        help="default: cifar10 on CUDA; elsewhere cpu-demo, shrunk (fast mode)")
    parser.add_argument("--batch-sizes", default=None, help="default: 512,1024 on CUDA; 16,32")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row (30; 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (5; 2)")
    parser.add_argument("--train-steps", type=int, default=None, help="steps of train() (60; 12)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers of the "
                        "baseline; default: one per CPU core, less one (at most 16)")
    parser.add_argument("--fast-mode", default="reduce-overhead", choices=COMPILE_MODES[1:],
                        help="the compile mode of the fast path")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    gpu = device.type == "cuda"
    cfg = get_preset(args.preset or "cifar10") if gpu else \
        (get_preset(args.preset) if args.preset else fast_config(get_preset("cpu-demo")))
    sizes = [int(b) for b in (args.batch_sizes or ("512,1024" if gpu else "16,32")).split(",")]
    workers = default_num_workers() if args.workers is None else args.workers
    name = torch.cuda.get_device_name(device) if gpu else platform.machine()
    print(f"torch {torch.__version__}, device {device} ({name}), {cpu_cores()} CPU cores, "
          f"{time.strftime('%Y-%m-%d')}", flush=True)
    title = (f"\n{args.preset or ('cifar10' if gpu else 'cpu-demo (fast mode)')}: "
             f"{cfg.arch}/{cfg.patch_size}, 2 x {cfg.global_size} + {cfg.n_local_crops} x "
             f"{cfg.local_size} px, K={cfg.out_dim}, end to end")
    for batch in sizes:  # one table per batch size, printed as soon as it is measured
        rows, notes = bench_fast_path(cfg, device, [batch], args.steps or (30 if gpu else 3),
                                      args.warmup or (5 if gpu else 2), workers, args.fast_mode,
                                      args.train_steps or (60 if gpu else 12))
        print(format_fast_path(title, rows, notes), flush=True)


if __name__ == "__main__":
    main()
