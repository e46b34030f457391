"""The main job: train a DINO ViT without labels, then show in numbers and pictures what it learned.

`python -m minidino demo` (or `make demo`) trains the `cpu-demo` preset on the built-in shapes
dataset, then measures kNN top-1 on held-out images for the trained teacher and for the very same
architecture at its random initialisation, and draws the training curves and attention maps.
"""

from __future__ import annotations

import time
from typing import Any

from minidino.config import TrainConfig
from minidino.data import load_splits
from minidino.device import pick_device
from minidino.held_out import knn_top1
from minidino.pretrained import initial_backbone
from minidino.train import train
from minidino.viz import plot_attention_maps, plot_training_curves


def run_demo(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train `cfg`, evaluate trained vs random initialisation, write figures; return the numbers."""
    start = time.perf_counter()
    train_split, test_split = load_splits(cfg)
    result = train(cfg, progress=progress, train_split=train_split)
    device = pick_device(cfg.device)

    random_backbone = initial_backbone(cfg).to(device)
    teacher_backbone = result["teacher"].backbone
    trained = knn_top1(teacher_backbone, train_split, test_split, cfg, device, progress=progress)
    random_init = knn_top1(random_backbone, train_split, test_split, cfg, device,
                           progress=progress)

    run_dir = result["run_dir"]
    curves = plot_training_curves(run_dir / "metrics.jsonl", cfg.out_dim)
    curves.savefig(run_dir / "curves.png", dpi=120)
    images = test_split.images[:6]
    attention = plot_attention_maps(teacher_backbone, images)
    attention.savefig(run_dir / "attention.png", dpi=120)
    seconds = time.perf_counter() - start

    gain = trained["top1"] - random_init["top1"]
    print(f"\nminidino demo: {result['steps']} steps in {result['seconds']:.0f} s "
          f"({result['images_per_s']:.0f} images/s), {seconds:.0f} s in all")
    print(f"{'kNN on held-out images (k=20)':<36}{'top-1':>8}{'top-5':>8}")
    print(f"{'random initialisation':<36}{random_init['top1']:>7.1f}%{random_init['top5']:>7.1f}%")
    print(f"{'trained teacher':<36}{trained['top1']:>7.1f}%{trained['top5']:>7.1f}%")
    print(f"gain: {gain:+.1f} points of top-1")
    print(f"figures: {run_dir / 'curves.png'}, {run_dir / 'attention.png'}")
    return {"trained": trained, "random_init": random_init, "gain": gain, "seconds": seconds,
            "train_seconds": result["seconds"], "steps": result["steps"], "run_dir": run_dir}




