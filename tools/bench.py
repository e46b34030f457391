"""Benchmarks that print a table: `python -m tools.bench <subcommand>`.

Each subcommand measures a speed against a baseline run in the same process on the same input,
and prints the ratio, because on a shared machine absolute numbers move by +-20% from run to
run while a ratio measured within one run moves much less.

Subcommands:
  augment    multi-crop augmentation: per-image torchvision pipeline vs batched tensor ops.
  train      the training step per preset: model only, end to end on the device path and on
             the DataLoader path (`bench_training` in tools/bench_train.py).
  fast-path  the fast path's full training report, per batch size: the per-image DataLoader
             path (the baseline), the device path eager, compiled and on the fast path, and
             `train` itself, each with images/s, the ratio to the baseline, MFU and peak memory;
             the fast path's first losses against the eager path's; on CUDA the host syncs per
             step. The same as `python -m tools.bench_train`, whose options it takes
             (`python -m tools.bench fast-path --help`). On a GPU it runs the `cifar10` preset
             at batches 512 and 1,024; on a CPU only a short smoke test of the script.

  checkpoint a training checkpoint of a preset's run (student, teacher, AdamW's state):
             how long training stops for it, written in place vs in the background
             (`CheckpointWriter`), and how long until it is on disk.

Add a subcommand by writing `bench_<name>(args)` and registering it in `build_parser`.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from minidino.augment import BatchedMultiCrop, PerImageMultiCrop, small_image_config


def _seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of fn() over `repeats` runs (warm up before calling this)."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _thread_counts(spec: str) -> list[int]:
    default = torch.get_num_threads()
    counts = [default if s.strip() == "default" else int(s) for s in spec.split(",")]
    if any(c < 1 for c in counts):
        raise ValueError(f"--threads={spec!r}: each entry must be a positive integer or 'default'")
    return list(dict.fromkeys(counts))  # unique, in order


def bench_augment(args: argparse.Namespace) -> None:
    """Images/s of PerImageMultiCrop (a) and BatchedMultiCrop (b) on the same uint8 images."""
    cfg = small_image_config(args.image_size, n_local_crops=args.n_local_crops)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    size = (args.n_images, 3, args.image_size, args.image_size)
    images = torch.randint(0, 256, size, dtype=torch.uint8, generator=g)  # (N, 3, H, W)
    on_device = images.to(device)
    per_image, batched = PerImageMultiCrop(cfg), BatchedMultiCrop(cfg)
    thread_counts = _thread_counts(args.threads)

    print(f"torch {torch.__version__}, {platform.machine()} CPU, "
          f"default threads {torch.get_num_threads()}, batched on {device}")
    print(f"crops: 2 x {cfg.global_size} px + {cfg.n_local_crops} x {cfg.local_size} px, "
          f"{args.n_images} images of {args.image_size} x {args.image_size}, uint8")
    print()
    print("| implementation | device | threads | images/s | ratio (b)/(a) |")
    print("| --- | --- | ---: | ---: | ---: |")
    default_threads = torch.get_num_threads()
    for threads in thread_counts:
        torch.set_num_threads(threads)
        [per_image(img) for img in images[:8]], batched(on_device)  # warm up
        t_a = _seconds(lambda: [per_image(img) for img in images], 1, torch.device("cpu"))
        t_b = _seconds(lambda: batched(on_device), args.repeats, device)
        rate_a, rate_b = args.n_images / t_a, args.n_images / t_b
        print(f"| (a) per image, torchvision v2 | cpu | {threads} | {rate_a:,.0f} | |")
        print(f"| (b) batched tensor ops | {device.type} | {threads} | {rate_b:,.0f} "
              f"| {rate_b / rate_a:,.1f} |")
    torch.set_num_threads(default_threads)


def bench_train(args: argparse.Namespace) -> None:
    """images/s of the training step for each preset: model only, device path, DataLoader."""
    from dataclasses import replace

    from minidino.device import pick_device
    from minidino.presets import get_preset
    from tools.bench_train import bench_training, format_rows

    device = pick_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    print(f"torch {torch.__version__}, device {device} ({name}), threads {torch.get_num_threads()}")
    for preset in args.preset.split(","):
        cfg = get_preset(preset.strip())
        if args.batch_size:
            cfg = replace(cfg, batch_size=args.batch_size)
        rows = bench_training(cfg, device, steps=args.steps, num_workers=args.workers,
                              loader=not args.no_loader)
        title = (f"\n{preset}: {cfg.arch}/{cfg.patch_size}, batch {cfg.batch_size}, "
                 f"2 x {cfg.global_size} + {cfg.n_local_crops} x {cfg.local_size} px, "
                 f"K={cfg.out_dim}")
        print(format_rows(title, rows), flush=True)


def bench_fast_path(args: argparse.Namespace) -> None:
    """The report of tools/bench_train.py, with the options that follow `fast-path`."""
    from tools.bench_train import main as bench_train_main

    bench_train_main(args.options)


def bench_checkpoint(args: argparse.Namespace) -> None:
    """Write a preset's training checkpoint in place and in the background, in turns."""
    import tempfile
    from dataclasses import replace

    from minidino.checkpoint import CheckpointWriter
    from minidino.device import pick_device
    from minidino.presets import get_preset
    from minidino.step import build_parts

    device = pick_device(args.device)
    parts = build_parts(replace(get_preset(args.preset), device=device.type), 10, device)
    for p in parts.student.parameters():  # one optimizer step, so that AdamW has its state
        p.grad = torch.zeros_like(p)
    parts.optimizer.step()
    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = f"{folder}/checkpoint.pt"
        for _ in range(args.rounds):
            for background in (False, True):
                writer = CheckpointWriter(background)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                writer.save({"student": parts.student.state_dict(),
                             "teacher": parts.teacher.state_dict(),
                             "optimizer": parts.optimizer.state_dict()}, path, keep_previous=True)
                stopped = time.perf_counter() - start
                writer.wait()
                times[background].append((stopped, time.perf_counter() - start))
        megabytes = Path(path).stat().st_size / 2**20
    print(f"torch {torch.__version__}, {device}, {platform.machine()}; {args.preset}: "
          f"{megabytes:.0f} MiB per checkpoint, median of {args.rounds} rounds")
    print("| written | training stops for (ms) | on disk after (ms) |\n| --- | ---: | ---: |")
    for background, rows in times.items():
        stopped, done = (statistics.median(r[i] for r in rows) * 1e3 for i in (0, 1))
        print(f"| {'in the background' if background else 'in place'} | {stopped:.0f} | "
              f"{done:.0f} |")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("augment", help="per-image vs batched multi-crop augmentation")
    p.add_argument("--n-images", type=int, default=512)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--n-local-crops", type=int, default=6)
    p.add_argument("--repeats", type=int, default=5, help="timed runs of (b); median reported")
    p.add_argument("--device", default="cpu", help="device for (b); (a) always runs on the CPU")
    p.add_argument("--threads", default="1",
                   help="comma-separated torch thread counts to run both at, e.g. '1,default' "
                        "('default' = torch's); 1 compares per core, as a DataLoader worker runs")
    p.set_defaults(func=bench_augment)
    p = sub.add_parser("train", help="training step per preset: model only, device path, "
                       "DataLoader path (the fast path's full report: fast-path)")
    p.add_argument("--preset", default="cpu-demo,cifar10",
                   help="comma-separated presets to measure")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=20, help="timed steps per row")
    p.add_argument("--batch-size", type=int, default=None, help="override the preset's batch")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for its row")
    p.add_argument("--no-loader", action="store_true", help="skip the DataLoader row")
    p.set_defaults(func=bench_train)
    # its options are tools/bench_train.py's and pass through unparsed (see `main`)
    p = sub.add_parser("fast-path", add_help=False,
                       help="the fast path's report: DataLoader baseline, device path eager, "
                            "compiled and fast, train() itself; MFU, peak memory "
                            "(tools/bench_train.py; `fast-path --help` for its options)")
    p.set_defaults(func=bench_fast_path)
    p = sub.add_parser("checkpoint", help="a training checkpoint: in place vs in the background")
    p.add_argument("--preset", default="cifar10")
    p.add_argument("--device", default="auto")
    p.add_argument("--rounds", type=int, default=5, help="saves of each kind, taken in turns")
    p.add_argument("--dir", default=None, help="where to write (default: the temporary folder)")
    p.set_defaults(func=bench_checkpoint)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "fast-path":
        args.options = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.func(args)


if __name__ == "__main__":
    main()
