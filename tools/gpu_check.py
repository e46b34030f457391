"""A prepared GPU check: benchmarks, then a short CIFAR-10 training sized to a time budget.

    python -m tools.gpu_check --data-path cifar10/train --train-seconds 240

1. multi-crop images/s on the GPU (batched) against the per-image pipeline on one CPU core;
2. the training step for `cpu-demo` and `cifar10`: model only, device path, DataLoader path,
   with peak memory and an MFU estimate;
3. `cifar10` on a folder copy of CIFAR-10 (one folder per class; every 10th image of each class
   held out), with the number of epochs chosen from the measured speed so that training takes
   about `--train-seconds`; then kNN top-1 of the teacher on the held-out images.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from minidino.data import load_splits
from minidino.held_out import knn_top1
from minidino.presets import get_preset
from minidino.train import train
from tools.bench import main as bench_main
from tools.bench_train import bench_training, format_rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-path", required=True, help="CIFAR-10 as one folder per class")
    parser.add_argument("--train-seconds", type=float, default=240.0)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--out-dir", default="runs")
    parser.add_argument("--device", default="cuda", help="cpu only for a dry run of the script")
    parser.add_argument("--bench-steps", type=int, default=20)
    parser.add_argument("--bench-presets", default="cpu-demo,cifar10",
                        help="comma-separated presets for the training-step benchmark")
    parser.add_argument("--compile", action="store_true",
                        help="also benchmark cifar10 with torch.compile, and train with it")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check needs a CUDA GPU (or --device cpu for a dry run)")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}, torch {torch.__version__}", flush=True)

    bench_main(["augment", "--device", args.device, "--n-images", "4096"])
    rates = {}
    for preset in args.bench_presets.split(","):
        cfg = get_preset(preset)
        if preset == "cifar10":
            cfg = replace(cfg, batch_size=args.batch_size)
        rows = bench_training(cfg, device, steps=args.bench_steps, num_workers=args.workers)
        if args.compile and preset == "cifar10":  # compiled rows first; same DataLoader baseline
            rows = bench_training(replace(cfg, compile=True), device, steps=args.bench_steps,
                                  loader=False) + rows
        print(format_rows(f"\n{preset} ({cfg.arch}/{cfg.patch_size}, batch {cfg.batch_size})",
                          rows), flush=True)
        rates[preset] = rows[1]["images_per_s"]

    cfg = replace(get_preset("cifar10"), dataset="folder", data_path=args.data_path,
                  data_mode="device", batch_size=args.batch_size, out_dir=args.out_dir,
                  run_name="gpu-check", device=args.device, n_eval=None, log_every=50,
                  compile=args.compile)
    t0 = time.perf_counter()
    train_split, test_split = load_splits(cfg)
    n_train = train_split.images.shape[0]
    print(f"\nloaded {n_train} training and {test_split.images.shape[0]} held-out images "
          f"in {time.perf_counter() - t0:.0f} s", flush=True)
    epochs = max(2, int(args.train_seconds * rates["cifar10"] / n_train))
    cfg = replace(cfg, epochs=epochs, warmup_epochs=max(1, epochs // 10),
                  teacher_momentum=0.99 if epochs < 50 else 0.996)
    print(f"training cifar10 for {epochs} epochs (about {args.train_seconds:.0f} s at "
          f"{rates['cifar10']:,.0f} images/s)", flush=True)
    result = train(cfg, progress=False, train_split=train_split)
    knn = knn_top1(result["teacher"].backbone, train_split, test_split, cfg, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    print(f"\ncifar10 on {name}: {epochs} epochs, "
          f"{result['steps']} steps in {result['seconds']:.0f} s "
          f"({result['images_per_s']:,.0f} images/s end to end, peak {peak:.1f} GiB); "
          f"teacher kNN top-1 {knn['top1']:.1f}%, top-5 {knn['top5']:.1f}% "
          f"on {test_split.images.shape[0]} held-out images")


if __name__ == "__main__":
    main()
