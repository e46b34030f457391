"""DINO, iBOT and a DINOv2-style recipe trained with the same budget on the built-in dataset.

    python -m tools.compare --epochs 3

Each recipe is the `cpu-demo` preset plus its own pieces, trained for the same number of steps
on the same images, then scored three ways (the random initialisation too, as a floor):

* kNN top-1 (k=20) of the teacher's CLS feature on held-out shapes;
* attention-mask IoU: the mean over held-out images of the best head's IoU between its
  60%-mass CLS attention mask (upsampled to pixels) and the object mask;
* propagation J: label propagation through the built-in moving-shapes video (mean J over
  frames 1 to T-1, `minidino.propagation.evaluate_propagation`).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from minidino.attention import best_head_iou
from minidino.config import TrainConfig
from minidino.data import load_splits
from minidino.held_out import knn_top1
from minidino.presets import get_preset
from minidino.pretrained import initial_backbone
from minidino.propagation import evaluate_propagation
from minidino.train import train
from minidino.video import make_video

RECIPES: dict[str, dict] = {
    "DINO": {},
    "DINO + iBOT": {"ibot": True},
    "DINOv2-style": {"ibot": True, "centering": "sinkhorn", "koleo_weight": 0.1,
                     "n_registers": 4, "layerscale": 1e-5},
}


def score(backbone: torch.nn.Module, cfg: TrainConfig, splits, video) -> dict[str, float]:
    train_split, test_split = splits
    backbone = backbone.eval()
    knn = knn_top1(backbone, train_split, test_split, cfg, torch.device("cpu"))
    n = min(500, test_split.images.shape[0])
    iou = best_head_iou(backbone, test_split.images[:n], test_split.masks[:n])
    j = evaluate_propagation(backbone, video[0], video[1])["J"]
    return {"knn_top1": knn["top1"], "attention_iou": iou, "propagation_j": j}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out-dir", default="runs/compare")
    args = parser.parse_args(argv)
    base = replace(get_preset("cpu-demo"), epochs=args.epochs, warmup_epochs=1,
                   out_dir=args.out_dir)
    splits = load_splits(base)
    video = make_video(n_frames=12, seed=0)[:2]  # frames (T, 3, H, W), masks (T, H, W)
    rows = [("random initialisation", score(initial_backbone(base), base, splits, video), 0.0)]
    for name, changes in RECIPES.items():
        cfg = replace(base, run_name=name.replace(" ", "").replace("+", "-").lower(), **changes)
        t0 = time.perf_counter()
        result = train(cfg, progress=False, train_split=splits[0])
        seconds = time.perf_counter() - t0
        rows.append((name, score(result["teacher"].backbone, cfg, splits, video), seconds))
    print(f"\ncpu-demo preset, {args.epochs} epochs each, built-in shapes; "
          "kNN k=20 on held-out images")
    print("| recipe | train s | kNN top-1 | attention IoU | propagation J |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, s, seconds in rows:
        print(f"| {name} | {seconds:.0f} | {s['knn_top1']:.1f}% | {s['attention_iou']:.3f} | "
              f"{s['propagation_j']:.3f} |")


if __name__ == "__main__":
    main()
